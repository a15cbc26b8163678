//! A real SPIRE deployment on loopback: one server (sqlite, or PostgreSQL shared with
//! other servers for HA) and one agent attested by a join token, with the unix workload
//! attestor.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use spire_operator::spire::{SpiffeId, SpireAddress, SpireClient};

use crate::ports::{free_port, retry_on_port_clash};
use crate::process::Process;
use crate::tools::tool;
use crate::wait;
use crate::workdir::WorkDir;

/// How long a harness SPIRE API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Additions to the default server and agent configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Give the agent the k8s workload attestor, asking a kubelet read-only port on
    /// 127.0.0.1 at this port (a stand-in kubelet, since none runs here).
    pub kubelet_read_only_port: Option<u16>,
    /// The server's `jwt_issuer` (the `iss` claim of JWT-SVIDs).
    pub jwt_issuer: Option<String>,
    /// Serve this server's SPIFFE bundle endpoint (`federation.bundle_endpoint`) on
    /// 127.0.0.1, with this profile; see [`Spire::bundle_endpoint_url`].
    pub bundle_endpoint: Option<BundleEndpoint>,
    /// Extra environment of the server process, e.g. `SSL_CERT_FILE` so that its
    /// https_web federation client trusts a test CA as it would the Web PKI.
    pub server_env: Vec<(String, String)>,
    /// Directory for the server's sqlite datastore instead of its data directory: e.g. a
    /// tmpfs, so that benchmarks measure the server rather than the disk.
    pub datastore_dir: Option<PathBuf>,
    /// Serve the server's telemetry (RPC counters by method) in Prometheus format on
    /// 127.0.0.1 at this port.
    pub prometheus_port: Option<u16>,
    /// Keep the datastore in PostgreSQL with this libpq connection string (see
    /// [`crate::postgres::Postgres::connection_string`]) instead of sqlite. Servers of one
    /// trust domain given the same database run as SPIRE's HA does: one shared datastore
    /// (entries, bundle, agents), each server with its own CA keys (`KeyManager "memory"`
    /// here, `disk` in the charts), which it publishes into the shared bundle.
    pub postgres: Option<String>,
    /// Run the server with `-expandEnv`, so that `${VAR}` in its configuration (e.g. a
    /// connection string the chart leaves to a Secret) is taken from [`Options::server_env`].
    pub expand_env: bool,
    /// The server's `admin_ids`: SPIFFE IDs whose X.509-SVIDs may call the admin APIs
    /// on its TCP address ([`Spire::server_address`]), as an operator outside the
    /// server's pod does.
    pub admin_ids: Vec<String>,
    /// Keep the server's authorized-entry cache current from datastore events
    /// (`experimental.events_based_cache`) instead of SPIRE's default, reading every
    /// entry and agent again every 5 seconds.
    pub events_based_cache: bool,
}

/// How a server's bundle endpoint authenticates itself.
#[derive(Debug, Clone)]
pub enum BundleEndpoint {
    /// With the server's own X.509-SVID (`spiffe://<td>/spire/server`).
    HttpsSpiffe,
    /// With this certificate (for 127.0.0.1), as a Web PKI server would.
    HttpsWeb(crate::pki::CertAndKey),
}

/// The node name the agent's k8s workload attestor reports (`k8s:node-name`).
pub const KUBELET_NODE: &str = "node-a";

/// spire-server + spire-agent. Fields drop in declaration order: the agent stops
/// first, then the server, then the directory is removed.
pub struct Spire {
    agent: Process,
    // Stops after the agent.
    server: Process,
    server_env: Vec<(String, String)>,
    expand_env: bool,
    client: SpireClient,
    trust_domain: String,
    agent_id: SpiffeId,
    server_socket: PathBuf,
    workload_socket: PathBuf,
    bundle_endpoint_port: Option<u16>,
    port: u16,
    dir: WorkDir,
}

impl Spire {
    /// Starts a server for `trust_domain` and an agent attested to it, and waits until
    /// the agent is attested and serves the Workload API.
    pub async fn start(trust_domain: &str) -> anyhow::Result<Self> {
        Self::start_with(trust_domain, Options::default()).await
    }

    /// Like [`Spire::start`], with the additions in `options`.
    pub async fn start_with(trust_domain: &str, options: Options) -> anyhow::Result<Self> {
        retry_on_port_clash("SPIRE", || Self::try_start(trust_domain, options.clone())).await
    }

    async fn try_start(trust_domain: &str, options: Options) -> anyhow::Result<Self> {
        let dir = WorkDir::new("spire")?;
        // Short names: these sockets must fit in sun_path (108 bytes).
        let server_socket = dir.join("server/api.sock");
        let workload_socket = dir.join("agent-sockets/spire-agent.sock");
        for d in ["server", "server-data", "agent-data", "agent-sockets"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let port = free_port()?;
        let bundle_endpoint_port = match &options.bundle_endpoint {
            Some(_) => Some(free_port()?),
            None => None,
        };

        let server_conf = dir.join("server.conf");
        std::fs::write(
            &server_conf,
            server_config(
                trust_domain,
                port,
                &server_socket,
                &dir.join("server-data"),
                &options,
                bundle_endpoint_port.map(|p| (p, dir.path())),
            )?,
        )?;
        let (mut server, client) = spawn_server(
            &server_conf,
            &server_socket,
            &options.server_env,
            options.expand_env,
            &dir,
        )
        .await?;

        let bundle = client.get_bundle().await?;
        let bundle_pem: String = bundle
            .x509_authorities
            .iter()
            .map(|ca| pem::encode(&pem::Pem::new("CERTIFICATE", ca.asn1.clone())))
            .collect();
        let bundle_file = dir.join("bundle.pem");
        std::fs::write(&bundle_file, bundle_pem)?;

        let token = client
            .create_join_token(Duration::from_secs(600))
            .await?
            .value;
        let agent_id: SpiffeId =
            format!("spiffe://{trust_domain}/spire/agent/join_token/{token}").parse()?;
        let agent_conf = dir.join("agent.conf");
        std::fs::write(
            &agent_conf,
            agent_config(
                trust_domain,
                port,
                &token,
                &workload_socket,
                &bundle_file,
                &dir.join("agent-data"),
                &options,
            ),
        )?;
        let mut agent = Command::new(tool("spire-agent")?);
        agent.arg("run").arg("-config").arg(&agent_conf);
        let mut agent = Process::spawn("spire-agent", agent, &dir.join("spire-agent.log"))?;

        wait::until(
            "spire-agent attestation",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let running = server
                    .ensure_running()
                    .and_then(|()| agent.ensure_running());
                let client = client.clone();
                let agent_id = agent_id.clone();
                let socket_exists = workload_socket.exists();
                async move {
                    running?;
                    let attested = client.list_agents().await?.iter().any(|a| {
                        a.id.as_ref()
                            .and_then(|id| SpiffeId::from_api(id).ok())
                            .as_ref()
                            == Some(&agent_id)
                    });
                    Ok((attested && socket_exists).then_some(()))
                }
            },
        )
        .await
        .context("waiting for the agent to attest with its join token")?;

        Ok(Self {
            agent,
            server,
            server_env: options.server_env,
            expand_env: options.expand_env,
            client,
            trust_domain: trust_domain.to_owned(),
            agent_id,
            server_socket,
            workload_socket,
            bundle_endpoint_port,
            port,
            dir,
        })
    }

    /// `127.0.0.1:<port>`: the server's TCP API (agents attest there; admin calls need
    /// a caller listed in [`Options::admin_ids`]).
    pub fn server_address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:<port>`, where the bundle endpoint serves (with
    /// [`Options::bundle_endpoint`]).
    pub fn bundle_endpoint_url(&self) -> Option<String> {
        self.bundle_endpoint_port
            .map(|port| format!("https://127.0.0.1:{port}"))
    }

    /// The server's own bundle in SPIFFE bundle JSON (`bundle show -format spiffe`),
    /// what a ClusterFederatedTrustDomain's `trustDomainBundle` holds.
    pub fn bundle_json(&self) -> anyhow::Result<String> {
        self.server_cli(&["bundle", "show", "-format", "spiffe"])
    }

    /// The server's process ID (for its CPU time and RSS).
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    /// A client on the server's admin socket.
    pub fn client(&self) -> SpireClient {
        self.client.clone()
    }

    /// The trust domain name.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The agent's SPIFFE ID (`spiffe://<td>/spire/agent/join_token/<token>`): the
    /// parent ID of entries for workloads on this "node".
    pub fn agent_id(&self) -> &SpiffeId {
        &self.agent_id
    }

    /// The server's admin API socket.
    pub fn server_socket(&self) -> &Path {
        &self.server_socket
    }

    /// The agent's Workload API socket.
    pub fn workload_socket(&self) -> &Path {
        &self.workload_socket
    }

    /// `unix://<workload socket>`, the form `SPIFFE_ENDPOINT_SOCKET` takes.
    pub fn workload_endpoint(&self) -> String {
        format!("unix://{}", self.workload_socket.display())
    }

    /// Runs `spire-server <subcommand> <args> -socketPath <server socket>`, as an operator
    /// at the server would (e.g. `["entry", "create", "-spiffeID", ...]`), and returns
    /// its standard output; a non-zero exit is an error carrying its output.
    pub fn server_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(tool("spire-server")?)
            .args(args)
            .arg("-socketPath")
            .arg(&self.server_socket)
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            anyhow::bail!(
                "spire-server {} failed ({}):\n{stdout}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }

    /// Gives the server a bundle (a fresh CA) for `trust_domain` with the CLI, so that
    /// entries may federate with it.
    pub fn set_federated_bundle(&self, trust_domain: &str) -> anyhow::Result<()> {
        let ca = crate::pki::Ca::new(&format!("{trust_domain} CA"))?;
        let path = self.dir().join(format!("{trust_domain}.pem"));
        std::fs::write(&path, ca.cert_pem())?;
        self.server_cli(&[
            "bundle",
            "set",
            "-format",
            "pem",
            "-id",
            &format!("spiffe://{trust_domain}"),
            "-path",
            &path.to_string_lossy(),
        ])?;
        Ok(())
    }

    /// The working directory (configs, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server at once (SIGKILL), as a crash or the OOM killer would; the agent
    /// keeps running. [`Spire::start_server`] brings it back.
    pub fn kill_server(&mut self) {
        self.server.kill();
    }

    /// Starts the server again with the same configuration and datastore, after
    /// [`Spire::kill_server`]; returns once its API answers. The server's CA keys are in
    /// memory, so it comes back with new ones, as a restarted pod with `KeyManager
    /// "memory"` does.
    pub async fn start_server(&mut self) -> anyhow::Result<()> {
        self.server.kill();
        let (server, client) = spawn_server(
            &self.dir.join("server.conf"),
            &self.server_socket,
            &self.server_env,
            self.expand_env,
            &self.dir,
        )
        .await?;
        self.server = server;
        self.client = client;
        Ok(())
    }

    /// Stops the agent and starts it again with the same configuration, as a node agent
    /// restart would; it keeps its identity (SVID and key are on disk, the join token is
    /// not needed again). Returns once the Workload API socket is back.
    pub async fn restart_agent(&mut self) -> anyhow::Result<()> {
        self.agent.stop();
        // A socket left by the old process would make the wait below pass too early.
        match std::fs::remove_file(&self.workload_socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut agent = Command::new(tool("spire-agent")?);
        agent
            .arg("run")
            .arg("-config")
            .arg(self.dir.join("agent.conf"));
        self.agent = Process::spawn("spire-agent", agent, &self.dir.join("spire-agent.log"))?;
        let socket = self.workload_socket.clone();
        let agent = &mut self.agent;
        wait::until(
            "restarted spire-agent Workload API socket",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let running = agent.ensure_running();
                let exists = socket.exists();
                async move {
                    running?;
                    Ok(exists.then_some(()))
                }
            },
        )
        .await
    }
}

/// Starts `spire-server run` on `conf` and waits until its API answers on `socket`.
async fn spawn_server(
    conf: &Path,
    socket: &Path,
    env: &[(String, String)],
    expand_env: bool,
    dir: &WorkDir,
) -> anyhow::Result<(Process, SpireClient)> {
    // A socket left by a killed server would make the wait below dial a dead one.
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut server = Command::new(tool("spire-server")?);
    server.arg("run").arg("-config").arg(conf);
    if expand_env {
        server.arg("-expandEnv");
    }
    server.envs(env.iter().map(|(k, v)| (k, v)));
    let mut server = Process::spawn("spire-server", server, &dir.join("spire-server.log"))?;
    let address = SpireAddress::Unix(socket.to_path_buf());
    let client = wait::until(
        "spire-server API",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let running = server.ensure_running();
            let address = address.clone();
            let socket_exists = socket.exists();
            async move {
                running?;
                if !socket_exists {
                    return Ok(None);
                }
                let client = SpireClient::connect(address, API_TIMEOUT).await?;
                client.get_bundle().await?;
                Ok(Some(client))
            }
        },
    )
    .await?;
    Ok((server, client))
}

fn server_config(
    trust_domain: &str,
    port: u16,
    socket: &Path,
    data: &Path,
    options: &Options,
    bundle_endpoint: Option<(u16, &Path)>,
) -> anyhow::Result<String> {
    let jwt_issuer = options
        .jwt_issuer
        .as_ref()
        .map(|issuer| format!("jwt_issuer = \"{issuer}\""))
        .unwrap_or_default();
    let (database_type, datastore) = match &options.postgres {
        Some(connection) => ("postgres", connection.clone()),
        None => (
            "sqlite3",
            options
                .datastore_dir
                .as_deref()
                .unwrap_or(data)
                .join("datastore.sqlite3")
                .display()
                .to_string(),
        ),
    };
    let telemetry = options
        .prometheus_port
        .map(|port| {
            format!(
                r#"telemetry {{
    Prometheus {{
        host = "127.0.0.1"
        port = {port}
    }}
}}"#
            )
        })
        .unwrap_or_default();
    let federation = match (&options.bundle_endpoint, bundle_endpoint) {
        (Some(profile), Some((port, dir))) => {
            let profile = match profile {
                BundleEndpoint::HttpsSpiffe => r#"profile "https_spiffe" {}"#.to_owned(),
                BundleEndpoint::HttpsWeb(cert) => {
                    let (cert_path, key_path) = (
                        dir.join("bundle-endpoint.crt"),
                        dir.join("bundle-endpoint.key"),
                    );
                    std::fs::write(&cert_path, &cert.cert_pem)?;
                    std::fs::write(&key_path, &cert.key_pem)?;
                    format!(
                        r#"profile "https_web" {{
                serving_cert_file {{
                    cert_file_path = "{}"
                    key_file_path = "{}"
                    file_sync_interval = "1h"
                }}
            }}"#,
                        cert_path.display(),
                        key_path.display()
                    )
                }
            };
            format!(
                r#"federation {{
        bundle_endpoint {{
            address = "127.0.0.1"
            port = {port}
            {profile}
        }}
    }}"#
            )
        }
        _ => String::new(),
    };
    let admin_ids = if options.admin_ids.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = options
            .admin_ids
            .iter()
            .map(|id| format!("{id:?}"))
            .collect();
        format!("admin_ids = [{}]", quoted.join(", "))
    };
    let experimental = if options.events_based_cache {
        "experimental {\n        events_based_cache = true\n    }"
    } else {
        ""
    };
    Ok(format!(
        r#"server {{
    {admin_ids}
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "{trust_domain}"
    data_dir = "{data}"
    log_level = "DEBUG"
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
    default_jwt_svid_ttl = "5m"
    {jwt_issuer}
    {federation}
    {experimental}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "{database_type}"
            connection_string = "{datastore}"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
}}

{telemetry}
"#,
        socket = socket.display(),
        data = data.display(),
    ))
}

fn agent_config(
    trust_domain: &str,
    port: u16,
    token: &str,
    socket: &Path,
    bundle: &Path,
    data: &Path,
    options: &Options,
) -> String {
    // The k8s attestor asks the kubelet's read-only port which pod a process is in.
    let k8s_attestor = options
        .kubelet_read_only_port
        .map(|port| {
            format!(
                r#"WorkloadAttestor "k8s" {{
        plugin_data {{
            kubelet_read_only_port = {port}
            node_name = "{KUBELET_NODE}"
            max_poll_attempts = 20
            poll_retry_interval = "250ms"
        }}
    }}"#
            )
        })
        .unwrap_or_default();
    format!(
        r#"agent {{
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{socket}"
    trust_bundle_path = "{bundle}"
    trust_domain = "{trust_domain}"
    data_dir = "{data}"
    join_token = "{token}"
    log_level = "DEBUG"
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    # On disk so that a restarted agent keeps its identity (join tokens are single-use).
    KeyManager "disk" {{
        plugin_data {{
            directory = "{data}"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
    {k8s_attestor}
}}
"#,
        socket = socket.display(),
        bundle = bundle.display(),
        data = data.display(),
    )
}
