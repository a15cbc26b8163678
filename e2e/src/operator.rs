//! Our operator, `spire-operator run`, reconciling into a [`Spire`] server from a
//! [`ControlPlane`]: started from the binary cargo builds, configured with the same
//! ControllerManagerConfig file spire-controller-manager takes, observed through its
//! readiness endpoint and Prometheus metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_norway::{Mapping, Value};

use crate::control_plane::ControlPlane;
use crate::ports::free_port;
use crate::process::{self, Process};
use crate::spire::Spire;
use crate::workdir::WorkDir;
use crate::{http, kube_util, wait};

mod deployed;
mod static_mode;
pub use deployed::{Deployment, Listen};

/// The operator's own namespace (`--namespace`): it keeps its ConfigMap and, with leader
/// election, its Lease there.
pub const OPERATOR_NAMESPACE: &str = "spire-system";

/// How long [`Operator::start`] waits for readiness, and [`Operator::wait_initial_sync`]
/// for the first full reconcile. Generous: tests share two cores.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts tried when a listener fails to bind its port.
const BIND_ATTEMPTS: u32 = 3;

/// The operator's `--entry-resync-interval` variable. The harness sets it to `0s`, so
/// the timed full listing runs every `gcInterval` as with spire-controller-manager:
/// the scenarios written against the Go tool's cadence (a resync that repairs or
/// changes nothing, `gcInterval: 1s`) keep it. Passing it with an empty value in `env`
/// leaves it unset, for the operator's own default (the benchmark, the default-cadence
/// scenario).
pub const ENTRY_RESYNC_INTERVAL: &str = "SPIRE_OPERATOR_ENTRY_RESYNC_INTERVAL";

/// A running `spire-operator run`. Dropping it stops the process; its directory (config
/// and `operator.log`) is kept when the test fails.
pub struct Operator {
    // Drops first: the process stops before its directory goes.
    process: Process,
    metrics_addr: String,
    health_addr: String,
    webhook_port: u16,
    readiness_path: String,
    identity: String,
    config_path: PathBuf,
    log_path: PathBuf,
    dir: WorkDir,
}

impl Operator {
    /// The `spire-operator` binary, built if stale (once per test process). `CARGO_BIN_EXE_*`
    /// only exists for binaries of the tested package, so cargo is asked to build it into
    /// the target directory the running test binary came from. `SPIRE_OPERATOR_BIN`
    /// overrides this with a prebuilt binary.
    pub fn binary() -> anyhow::Result<PathBuf> {
        static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        BINARY
            .get_or_init(|| build_binary().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// Starts the operator for `cluster_name` with `spire`'s trust domain and server
    /// socket, and returns once its readiness endpoint answers 200.
    ///
    /// `extra_config` is YAML merged into the generated ControllerManagerConfig: its
    /// mappings merge key by key (so `health: {readinessEndpointName: /ready}` keeps the
    /// generated probe address), other values replace the generated ones, and a
    /// `leaderElection` mapping replaces the generated `leaderElection: {leaderElect:
    /// false}` as a whole. Each start has its own directory and ports, so an operator
    /// can be stopped and another started on the same control plane.
    ///
    /// Its ports are found free by binding and releasing them, so another process may
    /// take one first: a start whose listener fails to bind is retried with new ports.
    pub async fn start(
        control_plane: &ControlPlane,
        spire: &Spire,
        cluster_name: &str,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        Self::start_as(
            control_plane,
            spire,
            cluster_name,
            extra_config,
            control_plane.kubeconfig(),
        )
        .await
    }

    /// Like [`Operator::start`] without waiting for readiness: for replicas that are
    /// expected not to become ready, or whose start-up is itself under test.
    pub async fn spawn(
        control_plane: &ControlPlane,
        spire: &Spire,
        cluster_name: &str,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(
            control_plane,
            spire,
            cluster_name,
            extra_config,
            control_plane.kubeconfig(),
            &[],
        )
        .await
    }

    /// Like [`Operator::start`], with the Kubernetes credentials in `kubeconfig` instead
    /// of the control plane's admin: to prove what a ServiceAccount's RBAC allows.
    pub async fn start_as(
        control_plane: &ControlPlane,
        spire: &Spire,
        cluster_name: &str,
        extra_config: &str,
        kubeconfig: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_inner(
            control_plane,
            spire,
            cluster_name,
            extra_config,
            kubeconfig,
            &[],
        )
        .await
    }

    /// Like [`Operator::start`], with `env` added to the process environment (e.g.
    /// `SPIRE_OPERATOR_WEBHOOK_CERTIFICATE_TTL`).
    pub async fn start_with_env(
        control_plane: &ControlPlane,
        spire: &Spire,
        cluster_name: &str,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let kubeconfig = control_plane.kubeconfig();
        Self::start_inner(
            control_plane,
            spire,
            cluster_name,
            extra_config,
            kubeconfig,
            env,
        )
        .await
    }

    async fn start_inner(
        control_plane: &ControlPlane,
        spire: &Spire,
        cluster_name: &str,
        extra_config: &str,
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::until_serving(|| {
            Self::spawn_with(
                control_plane,
                spire,
                cluster_name,
                extra_config,
                kubeconfig,
                env,
            )
        })
        .await
    }

    /// Spawns with `spawn` until the operator serves its readiness endpoint: ports are
    /// found free by binding and releasing them, so another process may take one first,
    /// and a start whose listener fails to bind is retried with new ports.
    async fn until_serving<F, Fut>(mut spawn: F) -> anyhow::Result<Self>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Self>>,
    {
        let mut attempt = 1;
        loop {
            let mut operator = spawn().await?;
            match operator.wait_serving(READY_TIMEOUT).await {
                Ok(()) => return Ok(operator),
                Err(e) if attempt < BIND_ATTEMPTS && operator.bind_failed() => {
                    eprintln!("spire-operator could not bind a port (attempt {attempt}): {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a listener of the operator failed (a port taken since it was found free).
    fn bind_failed(&self) -> bool {
        self.log_tail(200).contains("server failed")
    }

    /// Waits until the readiness endpoint answers 200 and the metrics endpoint serves;
    /// fails at once if a listener could not bind or the process exits.
    async fn wait_serving(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_ready(timeout).await?;
        let (addr, log_path) = (self.metrics_addr.clone(), self.log_path.clone());
        let process = &mut self.process;
        let result = wait::until(
            &format!("spire-operator /metrics on {addr}"),
            timeout,
            Duration::from_millis(200),
            || {
                let running = process.ensure_running();
                let bind_failed = std::fs::read_to_string(&log_path)
                    .is_ok_and(|log| log.contains("server failed"));
                let addr = addr.clone();
                async move {
                    running?;
                    if bind_failed {
                        bail!("a listener failed to bind");
                    }
                    Ok(scrape(&addr).await.ok().map(|_| ()))
                }
            },
        )
        .await;
        result.with_context(|| self.log_context())
    }

    async fn spawn_with(
        control_plane: &ControlPlane,
        spire: &Spire,
        cluster_name: &str,
        extra_config: &str,
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let binary = Self::binary()?;
        let dir = WorkDir::new("operator")?;
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let health_addr = format!("127.0.0.1:{}", free_port()?);
        let config = config_yaml(
            &metrics_addr,
            &health_addr,
            free_port()?,
            cluster_name,
            spire.trust_domain(),
            spire.server_socket(),
            extra_config,
        )?;
        let readiness_path = config
            .get("health")
            .and_then(|h| h.get("readinessEndpointName"))
            .and_then(Value::as_str)
            .map(|p| format!("/{}", p.trim_start_matches('/')))
            .unwrap_or_else(|| "/readyz".into());
        let webhook_port = config
            .get("webhook")
            .and_then(|w| w.get("port"))
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(9443);

        let mut namespaces = vec![OPERATOR_NAMESPACE.to_owned()];
        if let Some(ns) = config
            .get("leaderElection")
            .and_then(|l| l.get("resourceNamespace"))
            .and_then(Value::as_str)
        {
            namespaces.push(ns.to_owned());
        }
        for ns in &namespaces {
            kube_util::ensure_namespace(&control_plane.client(), ns).await?;
        }

        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, serde_norway::to_string(&config)?)?;
        let log_path = dir.join("operator.log");
        // Unique per start: two replicas on one host must not share a leader identity.
        let identity = format!(
            "spire-operator-{}",
            health_addr.rsplit(':').next().unwrap_or("0")
        );
        let mut command = Command::new(&binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--namespace")
            .arg(OPERATOR_NAMESPACE)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", &identity)
            .env("RUST_BACKTRACE", "1")
            .env(ENTRY_RESYNC_INTERVAL, "0s")
            .envs(env.iter().copied());
        if env.contains(&(ENTRY_RESYNC_INTERVAL, "")) {
            command.env_remove(ENTRY_RESYNC_INTERVAL);
        }
        let process = Process::spawn("spire-operator", command, &log_path)?;
        Ok(Self {
            process,
            metrics_addr,
            health_addr,
            webhook_port,
            readiness_path,
            identity,
            config_path,
            log_path,
            dir,
        })
    }

    /// Waits until the readiness endpoint answers 200; fails at once, with the end of
    /// the log, if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let health_addr = self.health_addr.clone();
        let path = self.readiness_path.clone();
        let log_path = self.log_path.clone();
        let process = &mut self.process;
        let result = wait::until(
            &format!("spire-operator {path} on {health_addr}"),
            timeout,
            Duration::from_millis(200),
            || {
                let running = process.ensure_running();
                let bind_failed = std::fs::read_to_string(&log_path)
                    .is_ok_and(|log| log.contains("server failed"));
                let (addr, path) = (health_addr.clone(), path.clone());
                async move {
                    running?;
                    if bind_failed {
                        bail!("a listener failed to bind");
                    }
                    Ok(match http::get(&addr, &path).await? {
                        (200, _) => Some(()),
                        (status, body) => {
                            // Kept as the error, so a timeout says why it never got ready.
                            bail!("{path} answered {status}: {}", body.trim())
                        }
                    })
                }
            },
        )
        .await;
        result.with_context(|| self.log_context())
    }

    /// Waits until `spire_operator_initial_sync_complete` is 1: the first full
    /// reconcile after start is done.
    pub async fn wait_initial_sync(&mut self) -> anyhow::Result<()> {
        self.wait_metric(
            "spire_operator_initial_sync_complete",
            &[],
            READY_TIMEOUT,
            |v| v == 1.0,
        )
        .await
        .map(|_| ())
    }

    /// Scrapes the metrics until the sum of `name`'s samples carrying `labels` satisfies
    /// `predicate`; returns that value. Fails at once if the process exits.
    pub async fn wait_metric(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        predicate: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let addr = self.metrics_addr.clone();
        let process = &mut self.process;
        let predicate = &predicate;
        let last = std::cell::Cell::new(None);
        let last_ref = &last;
        let result = wait::until(
            &format!("metric {name}{labels:?}"),
            timeout,
            Duration::from_millis(200),
            || {
                let running = process.ensure_running();
                let addr = addr.clone();
                async move {
                    running?;
                    let value = scrape(&addr).await?.value(name, labels);
                    last_ref.set(Some(value));
                    Ok(predicate(value).then_some(value))
                }
            },
        )
        .await;
        result.with_context(|| {
            format!(
                "last value of {name}: {:?}; {}",
                last.get(),
                self.log_context()
            )
        })
    }

    /// Waits until two more full resyncs have started (so one ran from start to end,
    /// writes included) and returns how many entry writes (any operation, any result)
    /// happened meanwhile: for "rewrites nothing" checks, which must span a resync.
    pub async fn writes_across_a_resync(&mut self, timeout: Duration) -> anyhow::Result<f64> {
        let before = self.metrics().await?;
        let lists = before.value("spire_operator_entry_lists_total", &[]);
        let writes = before.value("spire_operator_entry_writes_total", &[]);
        self.wait_metric("spire_operator_entry_lists_total", &[], timeout, |v| {
            v >= lists + 2.0
        })
        .await?;
        let after = self.metrics().await?;
        Ok(after.value("spire_operator_entry_writes_total", &[]) - writes)
    }

    /// One scrape of `GET /metrics`.
    pub async fn metrics(&self) -> anyhow::Result<MetricsSnapshot> {
        scrape(&self.metrics_addr).await
    }

    /// Fails, with the end of the log, if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The operator's log file (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::tail(&self.log_path, lines)
    }

    /// The config file it was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `host:port` of the metrics endpoint.
    pub fn metrics_addr(&self) -> &str {
        &self.metrics_addr
    }

    /// `host:port` of the health probe endpoints.
    pub fn health_addr(&self) -> &str {
        &self.health_addr
    }

    /// The port the webhook server listens on (`webhook.port`; by default a free port
    /// on 127.0.0.1, so parallel operators never contend for 9443).
    pub fn webhook_port(&self) -> u16 {
        self.webhook_port
    }

    /// The identity it runs as (`POD_NAME`), e.g. the Lease holder under leader election.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Stops the process (SIGTERM, then SIGKILL after a grace period). Idempotent.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Kills the process at once (SIGKILL): no lease release, no graceful shutdown, as a
    /// crashed or OOM-killed container goes.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Peak resident set size (`VmHWM` in `/proc/<pid>/status`), in KiB; `None` once the
    /// process is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        crate::process::status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident set size (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::process::status_kib(self.pid(), "VmRSS:")
    }

    fn log_context(&self) -> String {
        format!(
            "spire-operator log {}, last lines:\n{}",
            self.log_path.display(),
            self.log_tail(40)
        )
    }
}

/// Creates ServiceAccount `spire-system/<name>` bound to a ClusterRole granting exactly
/// `rules` (RBAC PolicyRule objects), and writes a kubeconfig authenticating as it to
/// `path`: for running the operator with less than admin rights.
pub async fn restricted_kubeconfig(
    control_plane: &ControlPlane,
    name: &str,
    rules: serde_json::Value,
    path: &Path,
) -> anyhow::Result<()> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::Api;
    use kube::api::PostParams;

    let client = control_plane.client();
    kube_util::ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    kube_util::ensure_service_account(&client, OPERATOR_NAMESPACE, name).await?;
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "rules": rules,
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .with_context(|| format!("creating ClusterRole {name}"))?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": OPERATOR_NAMESPACE}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .with_context(|| format!("creating ClusterRoleBinding {name}"))?;
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))?;
    let token = Api::<ServiceAccount>::namespaced(client, OPERATOR_NAMESPACE)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {OPERATOR_NAMESPACE}/{name}"))?
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("TokenRequest answered without a token")?;
    control_plane.token_kubeconfig(&token, path).await?;
    Ok(())
}

fn build_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SPIRE_OPERATOR_BIN") {
        return Ok(path.into());
    }
    crate::tools::workspace_binary("spire-operator", "spire-operator")
}

/// The generated config with `extra` merged in (see [`Operator::start`]).
fn config_yaml(
    metrics_addr: &str,
    health_addr: &str,
    webhook_port: u16,
    cluster_name: &str,
    trust_domain: &str,
    socket: &Path,
    extra: &str,
) -> anyhow::Result<Value> {
    let base = format!(
        "apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metrics:
  bindAddress: {metrics_addr}
health:
  healthProbeBindAddress: {health_addr}
webhook:
  host: 127.0.0.1
  port: {webhook_port}
leaderElection:
  leaderElect: false
clusterName: {cluster_name}
trustDomain: {trust_domain}
spireServerSocketPath: {socket}
",
        socket = socket.display(),
    );
    let mut config: Value = serde_norway::from_str(&base)?;
    let extra: Value = serde_norway::from_str(extra)
        .with_context(|| format!("extra operator config is not YAML:\n{extra}"))?;
    match extra {
        Value::Null => {}
        Value::Mapping(extra) => {
            let Value::Mapping(config) = &mut config else {
                unreachable!("the base config is a mapping")
            };
            for (key, value) in extra {
                if key.as_str() == Some("leaderElection") {
                    config.insert(key, value);
                } else {
                    merge_into(config, key, value);
                }
            }
        }
        other => bail!("extra operator config must be a YAML mapping, not {other:?}"),
    }
    Ok(config)
}

fn merge_into(target: &mut Mapping, key: Value, value: Value) {
    match (target.get_mut(&key), value) {
        (Some(Value::Mapping(existing)), Value::Mapping(incoming)) => {
            for (k, v) in incoming {
                merge_into(existing, k, v);
            }
        }
        (_, value) => {
            target.insert(key, value);
        }
    }
}

async fn scrape(addr: &str) -> anyhow::Result<MetricsSnapshot> {
    let (status, body) = http::get(addr, "/metrics").await?;
    anyhow::ensure!(
        status == 200,
        "GET {addr}/metrics answered {status}: {body}"
    );
    MetricsSnapshot::parse(&body)
}

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample name as exposed, e.g. `spire_operator_passes_total`.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed Prometheus text (or OpenMetrics text) exposition.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    samples: Vec<Sample>,
}

impl MetricsSnapshot {
    /// Parses the exposition text. Comments (`# HELP`, `# TYPE`, `# EOF`), timestamps
    /// and exemplars are skipped.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| parse_sample(line).with_context(|| format!("metrics line {line:?}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { samples })
    }

    /// The sum of the samples named `name` whose labels include every pair of `labels`;
    /// 0 when there are none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample named `name` with `labels` exists.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    /// Every sample.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        loop {
            // Skip separators before a label name (or the closing brace).
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some((start, c)) = chars.next() else {
                bail!("unterminated label set");
            };
            if c == '}' {
                rest = &after_brace[start + 1..];
                break;
            }
            let mut key = String::from(c);
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, c)) => key.push(c),
                    None => bail!("label {key:?} has no value"),
                }
            }
            anyhow::ensure!(
                matches!(chars.next(), Some((_, '"'))),
                "label {key:?} value is not quoted"
            );
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated escape in label {key:?}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated value of label {key:?}"),
                }
            }
            labels.insert(key.trim().to_owned(), value);
        }
    }
    // OpenMetrics exemplars follow " # ".
    let rest = rest.split(" # ").next().unwrap_or(rest);
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = r#"# HELP spire_operator_entry_writes Entry writes.
# TYPE spire_operator_entry_writes counter
spire_operator_entry_writes_total{operation="create",result="success"} 3
spire_operator_entry_writes_total{result="failure",operation="create"} 1
spire_operator_entry_writes_total{operation="delete",result="success"} 2
# HELP spire_operator_entries_foreign Foreign entries.
# TYPE spire_operator_entries_foreign gauge
spire_operator_entries_foreign 2
spire_operator_pass_duration_seconds_bucket{le="+Inf"} 7
spire_operator_pass_duration_seconds_sum 0.125
odd{path="a \"quoted\" \\ value, with } and ,",x="1"} 1.5e3 1700000000
with_exemplar_total 4 # {trace_id="abc"} 1.0
# EOF
"#;

    #[test]
    fn sums_samples_whose_labels_include_the_given_pairs() {
        let m = MetricsSnapshot::parse(OPENMETRICS).unwrap();
        let writes = "spire_operator_entry_writes_total";
        assert_eq!(m.value(writes, &[]), 6.0);
        assert_eq!(m.value(writes, &[("operation", "create")]), 4.0);
        assert_eq!(
            m.value(writes, &[("result", "failure"), ("operation", "create")]),
            1.0,
            "label order does not matter"
        );
        assert_eq!(m.value(writes, &[("operation", "update")]), 0.0);
        assert_eq!(m.value("spire_operator_entries_foreign", &[]), 2.0);
        assert_eq!(
            m.value("spire_operator_pass_duration_seconds_sum", &[]),
            0.125
        );
    }

    #[test]
    fn absent_metrics_are_zero() {
        let m = MetricsSnapshot::parse(OPENMETRICS).unwrap();
        assert_eq!(m.value("spire_operator_nothing", &[]), 0.0);
        assert!(!m.has("spire_operator_nothing", &[]));
        assert!(m.has("spire_operator_entries_foreign", &[]));
    }

    #[test]
    fn parses_escapes_infinity_timestamps_and_exemplars() {
        let m = MetricsSnapshot::parse(OPENMETRICS).unwrap();
        assert_eq!(
            m.value("odd", &[("path", "a \"quoted\" \\ value, with } and ,")]),
            1500.0
        );
        assert_eq!(m.value("odd", &[("x", "1")]), 1500.0);
        assert_eq!(m.value("with_exemplar_total", &[]), 4.0);
        let inf = m
            .samples()
            .iter()
            .find(|s| s.name == "spire_operator_pass_duration_seconds_bucket")
            .unwrap();
        assert_eq!(inf.labels["le"], "+Inf");
        assert_eq!(inf.value, 7.0);
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(MetricsSnapshot::parse("name{a=\"1\" 2").is_err());
        assert!(MetricsSnapshot::parse("name{a=1} 2").is_err());
        assert!(MetricsSnapshot::parse("name notanumber").is_err());
        assert!(MetricsSnapshot::parse("lonely").is_err());
    }

    #[test]
    fn extra_config_merges_mappings_and_replaces_leader_election() {
        let config = config_yaml(
            "127.0.0.1:1",
            "127.0.0.1:2",
            3,
            "c",
            "td.test",
            Path::new("/s.sock"),
            "gcInterval: 1s\nhealth:\n  readinessEndpointName: /ready\nleaderElection:\n  leaderElect: true\n  resourceNamespace: other\n",
        )
        .unwrap();
        assert_eq!(config["gcInterval"].as_str(), Some("1s"));
        assert_eq!(
            config["health"]["healthProbeBindAddress"].as_str(),
            Some("127.0.0.1:2")
        );
        assert_eq!(
            config["health"]["readinessEndpointName"].as_str(),
            Some("/ready")
        );
        assert_eq!(
            config["leaderElection"]["leaderElect"].as_bool(),
            Some(true)
        );
        assert_eq!(config["trustDomain"].as_str(), Some("td.test"));
        assert_eq!(config["webhook"]["port"].as_u64(), Some(3));

        let plain = config_yaml(
            "a:1",
            "b:2",
            3,
            "c",
            "td",
            Path::new("/s"),
            "# only a comment\n",
        )
        .unwrap();
        assert_eq!(
            plain["leaderElection"]["leaderElect"].as_bool(),
            Some(false)
        );
        assert!(config_yaml("a:1", "b:2", 3, "c", "td", Path::new("/s"), "- a list").is_err());
    }
}
