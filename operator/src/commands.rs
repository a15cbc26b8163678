//! The subcommands for an operator outside the SPIRE server's pod: `bootstrap-entry`
//! (run in the server's pod) and the TCP half of `check-spire`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use spire_operator::spire::{SpiffeId, SpireAddress, SpireClient};

use crate::parse_duration;

/// Arguments of `bootstrap-entry`.
#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {
    /// Path of the SPIRE server's admin API Unix socket.
    #[arg(
        long,
        env = "SPIRE_SERVER_SOCKET_PATH",
        default_value = "/spire-server/api.sock"
    )]
    pub spire_server_socket_path: PathBuf,
    /// The trust domain.
    #[arg(long, env = "SPIRE_TRUST_DOMAIN")]
    pub trust_domain: String,
    /// The cluster name the agents attest with (k8s_psat).
    #[arg(long, env = "SPIRE_CLUSTER_NAME")]
    pub cluster_name: String,
    /// The operator's SPIFFE ID (the server's admin_ids must list it).
    #[arg(long, env = "SPIRE_OPERATOR_SPIFFE_ID")]
    pub spiffe_id: SpiffeId,
    /// The operator pod's namespace.
    #[arg(long, env = "SPIRE_OPERATOR_NAMESPACE")]
    pub operator_namespace: String,
    /// The operator pod's ServiceAccount.
    #[arg(long, env = "SPIRE_OPERATOR_SERVICE_ACCOUNT")]
    pub operator_service_account: String,
    /// Lifetime of the operator's X.509-SVIDs; 0s keeps the server's default.
    #[arg(long, env = "SPIRE_OPERATOR_SVID_TTL", default_value = "0s", value_parser = parse_duration)]
    pub svid_ttl: Duration,
    /// How often the entries are checked again (a deleted one comes back).
    #[arg(long, env = "SPIRE_OPERATOR_BOOTSTRAP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub interval: Duration,
}

/// The TCP address for `check-spire`: our SVID from the Workload API first.
pub async fn tcp_address(
    address: String,
    server_id: Option<SpiffeId>,
    workload_api: Option<String>,
    timeout: Duration,
) -> anyhow::Result<SpireAddress> {
    use spire_operator::workload_api::{X509Source, socket_from_address};
    let workload_api = workload_api
        .context("--spire-server-address needs --workload-api-address or SPIFFE_ENDPOINT_SOCKET")?;
    let socket = socket_from_address(&workload_api)
        .map_err(|e| anyhow::anyhow!("--workload-api-address: {e}"))?;
    let source = X509Source::start(socket);
    let identity = source.ready(timeout).await?;
    println!("our X.509-SVID:      {}", identity.spiffe_id);
    let server_id = match server_id {
        Some(id) => id,
        None => format!(
            "spiffe://{}/spire/server",
            identity.spiffe_id.trust_domain()
        )
        .parse()?,
    };
    Ok(SpireAddress::Tcp {
        address,
        server_id,
        source,
    })
}

/// `spire-operator bootstrap-entry`: ensures the entries, then again every interval.
pub async fn bootstrap_entry(args: BootstrapArgs) -> anyhow::Result<()> {
    use spire_operator::spire::bootstrap;
    let identity = bootstrap::OperatorIdentity {
        spiffe_id: args.spiffe_id,
        trust_domain: args.trust_domain,
        cluster_name: args.cluster_name,
        namespace: args.operator_namespace,
        service_account: args.operator_service_account,
        x509_svid_ttl: args.svid_ttl,
    };
    let entries = identity.entries()?;
    let address = SpireAddress::Unix(args.spire_server_socket_path);
    loop {
        let outcome = async {
            let client = SpireClient::connect(address.clone(), Duration::from_secs(30)).await?;
            anyhow::Ok(bootstrap::ensure(&client, entries.clone()).await?)
        }
        .await;
        match outcome {
            Ok(ensured) => {
                tracing::info!(spiffe_id = %identity.spiffe_id, created = ensured.created, existing = ensured.existing, "operator entries in place")
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not ensure the operator's entries; retrying in 10s"
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
                continue;
            }
        }
        tokio::time::sleep(args.interval).await;
    }
}
