//! `spire-operator run`: wiring of the watches, the reconcile loop, leader election and
//! the metrics / health servers.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use kube::runtime::events::{Recorder, Reporter};
use spire_operator::config::Config;
use spire_operator::federation::{FederationContext, FederationReconciler};
use spire_operator::http::{self, Health};
use spire_operator::leader::{self, LeaderConfig};
use spire_operator::metrics::Metrics;
use spire_operator::reconcile::access;
use spire_operator::reconcile::dirty::DirtySet;
use spire_operator::reconcile::runner::{Context, Reconciler};
use spire_operator::reconcile::watch::{self, WatchOptions};
use spire_operator::spire::{ClientOptions, SpireAddress, SpireClient};
use spire_operator::webhook::{self, Validator};
use tokio::sync::Notify;

/// Arguments of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// spire-controller-manager `ControllerManagerConfig` file.
    #[arg(long, env = "SPIRE_OPERATOR_CONFIG")]
    pub config: PathBuf,
    /// Replace $VAR and ${VAR} in the config file from the environment first.
    #[arg(long, env = "SPIRE_OPERATOR_EXPAND_ENV")]
    pub expand_env: bool,
    /// The operator's own namespace: the adopted-entries ConfigMap and, by default, the
    /// leader election Lease live there. Default: the namespace of the pod's service
    /// account (as controller-runtime finds it), else `spire-system`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// This replica's identity for leader election and events. Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Upper bound on any single SPIRE API call (batch calls get less, sized per batch).
    #[arg(long, env = "SPIRE_API_TIMEOUT", default_value = "60s", value_parser = crate::parse_duration)]
    pub spire_timeout: Duration,
    /// Kubeconfig file to use instead of the in-cluster service account (controller-runtime's
    /// flag). Default: in-cluster, else `$KUBECONFIG`, else `~/.kube/config`.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Deprecated spire-controller-manager flag: the SPIRE server socket, overriding the
    /// config file's `spireServerSocketPath`.
    #[arg(long)]
    pub spire_api_socket: Option<PathBuf>,
    /// spire-controller-manager's switch for the validating webhook: `false` turns the
    /// webhook server and its certificate off; any other value keeps them on.
    #[arg(long, env = "ENABLE_WEBHOOKS", default_value = "true")]
    pub enable_webhooks: String,
    /// Lifetime asked of SPIRE for the webhook's serving certificate (the server may cap
    /// it); each replica renews its certificate at half the lifetime.
    #[arg(long, env = "SPIRE_OPERATOR_WEBHOOK_CERTIFICATE_TTL", default_value = "24h", value_parser = crate::parse_duration)]
    pub webhook_certificate_ttl: Duration,
    /// Static mode only: how often the `staticManifestPath` directory is read for
    /// changes.
    #[arg(long, env = "SPIRE_OPERATOR_STATIC_POLL_INTERVAL", default_value = "1s", value_parser = crate::parse_duration)]
    pub static_poll_interval: Duration,
    /// Static mode only: a directory where the operator keeps, across restarts, the IDs
    /// of entries it adopted and the federation relationships it owns (what the
    /// ConfigMaps hold with the API). Default: none, kept in memory only.
    #[arg(long, env = "SPIRE_OPERATOR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The shortest time between two full listings of the SPIRE server's entries. Between
    /// them the operator works from watch events and its own writes; a listing only
    /// repairs changes made behind its back (an entry deleted or edited with the CLI).
    /// The resync runs every `gcInterval` or every this, whichever is longer; `0s` lists
    /// at every `gcInterval`, as spire-controller-manager does.
    #[arg(long, env = "SPIRE_OPERATOR_ENTRY_RESYNC_INTERVAL", default_value = "5m", value_parser = crate::parse_duration)]
    pub entry_resync_interval: Duration,
    /// Entry write batches (BatchCreateEntry, BatchUpdateEntry, BatchDeleteEntry) in
    /// flight at once: `auto` (measure: one at a time, then 2, 4 and 8 while each step
    /// writes a quarter faster or more; sqlite stays at one, PostgreSQL reaches four) or
    /// a fixed number from 1 to 64.
    #[arg(
        long,
        env = "SPIRE_OPERATOR_SPIRE_WRITE_CONCURRENCY",
        default_value = "auto"
    )]
    pub spire_write_concurrency: spire_operator::reconcile::concurrency::WriteConcurrency,
}

/// Where a pod's service account token mount says which namespace the pod runs in.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// `--namespace`, else the service account's namespace file, else `spire-system`.
/// spire-controller-manager's Deployments set no namespace variable, so the file is what
/// makes an image swap keep the operator's ConfigMap in the namespace its Role covers.
fn operator_namespace(flag: Option<String>, service_account_file: &std::path::Path) -> String {
    flag.filter(|ns| !ns.is_empty())
        .or_else(|| {
            std::fs::read_to_string(service_account_file)
                .ok()
                .map(|ns| ns.trim().to_owned())
                .filter(|ns| !ns.is_empty())
        })
        .unwrap_or_else(|| "spire-system".into())
}

pub async fn run(mut args: RunArgs, config: Config) -> anyhow::Result<()> {
    let namespace = operator_namespace(
        args.namespace.take(),
        std::path::Path::new(SERVICE_ACCOUNT_NAMESPACE),
    );
    let config = Arc::new(config);
    let kube = match &args.kubeconfig {
        None => kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?,
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            let options = kube::config::KubeConfigOptions::default();
            let client_config = kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?;
            kube::Client::try_from(client_config).context("creating the Kubernetes client")?
        }
    };
    let identity = args
        .identity
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "spire-operator".into());
    let cluster_domain = match &config.cluster_domain {
        Some(domain) => domain.clone(),
        None => detect_cluster_domain().unwrap_or_default(),
    };
    tracing::info!(
        trust_domain = %config.trust_domain,
        cluster_name = %config.cluster_name,
        cluster_domain = %cluster_domain,
        namespace = %namespace,
        "starting"
    );

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let shutdown = Arc::new(Notify::new());
    let stopped = {
        let shutdown = shutdown.clone();
        move || {
            let shutdown = shutdown.clone();
            async move { shutdown.notified().await }
        }
    };
    let [metrics_server, health_server] = spawn_http_servers(&config, &metrics, &health, &shutdown);

    // Bound before SPIRE is reached, so a taken port fails the start at once; TLS
    // handshakes fail until the certificate manager below has minted a certificate.
    let webhook = if args.enable_webhooks == "false" {
        tracing::info!("ENABLE_WEBHOOKS=false: no validating webhook is served");
        None
    } else {
        let validator = Validator {
            trust_domain: config.trust_domain.clone(),
            class_name: config.class_name.clone(),
        };
        let (store, handle) = webhook::spawn_server(
            config.webhook.address(),
            validator,
            metrics.clone(),
            stopped(),
        )
        .context("configuring TLS for the webhook server")?;
        Some((store, handle))
    };

    let address = spire_address(&config, &metrics).await?;
    let spire = connect_spire(address, &config, args.spire_timeout, &metrics).await;

    if let Some((store, _)) = &webhook {
        let manager = webhook::ManagerConfig {
            trust_domain: config.trust_domain.clone(),
            configuration_name: config.validating_webhook_configuration_name.clone(),
            certificate_ttl: args.webhook_certificate_ttl,
        };
        let (kube, spire, store, metrics) =
            (kube.clone(), spire.clone(), store.clone(), metrics.clone());
        let alive = health.task_alive("webhook certificate manager");
        tokio::spawn(async move {
            webhook::manager::run(kube, spire, manager, store, metrics).await;
            alive.ended();
        });
    }

    // Watches run on every replica, so a new leader starts with warm caches. Every kind's
    // first listing must be complete before the first pass: deciding on a partial view
    // would delete entries of pods not listed yet.
    let mut watch_options = WatchOptions::from_config(&config);
    if watch_options.watches_pods() {
        watch_options.access = access::probe(&kube).await;
    }
    let watched_kinds = watch_options.kinds().len();
    let dirty = Arc::new(DirtySet::default());
    let federation_dirty = Arc::new(DirtySet::default());
    let synced_kinds = Arc::new(Mutex::new(BTreeSet::new()));
    let all_synced = Arc::new(Notify::new());
    let on_synced = {
        let synced_kinds = synced_kinds.clone();
        let all_synced = all_synced.clone();
        let metrics = metrics.clone();
        Arc::new(move |kind: &'static str| {
            let mut kinds = synced_kinds.lock().unwrap_or_else(|e| e.into_inner());
            kinds.insert(kind);
            tracing::debug!(kind, "watch synced");
            if kinds.len() == watched_kinds {
                metrics.caches_synced.set(1);
                all_synced.notify_one();
            }
        })
    };
    let watches = watch::spawn(
        kube.clone(),
        config.clone(),
        watch_options,
        dirty.clone(),
        federation_dirty.clone(),
        health.clone(),
        on_synced,
    );
    if watched_kinds > 0 {
        all_synced.notified().await;
    }
    tracing::info!("caches synced");

    let mut leading = if config.leader_election.leader_elect {
        let election = &config.leader_election;
        let (rx, _task) = leader::spawn(
            kube.clone(),
            LeaderConfig {
                namespace: election
                    .resource_namespace
                    .clone()
                    .unwrap_or_else(|| namespace.clone()),
                lease_name: election.resource_name.clone().unwrap_or_default(),
                identity: identity.clone(),
                lease_duration: election.lease_duration,
                renew_deadline: election.renew_deadline,
                retry_period: election.retry_period,
            },
            stopped(),
        );
        rx
    } else {
        leader::always_leader()
    };
    tokio::select! {
        result = leading.wait_for(|leader| *leader) => { result.context("leader election stopped")?; }
        () = terminated() => { shutdown.notify_waiters(); return Ok(()); }
    }
    metrics.leader.set(1);
    tracing::info!(identity = %identity, "leading; reconciling");

    let recorder = Recorder::new(
        kube.clone(),
        Reporter {
            controller: "spire-operator".into(),
            instance: Some(identity),
        },
    );
    let federation = if config.reconcile.cluster_federated_trust_domains {
        let context = FederationContext {
            config: config.clone(),
            namespace: namespace.clone(),
            kube: Some(kube.clone()),
            spire: spire.clone(),
            store: watches.stores.cluster_federated_trust_domains.clone(),
            dirty: federation_dirty,
            metrics: metrics.clone(),
            recorder: Some(recorder.clone()),
            state_dir: None,
        };
        Some(FederationReconciler::new(context).await?)
    } else {
        None
    };
    let reconciler = Reconciler::new(Context {
        config: config.clone(),
        cluster_domain,
        namespace: namespace.clone(),
        kube: Some(kube),
        spire,
        stores: watches.stores,
        dirty,
        metrics: metrics.clone(),
        recorder: Some(recorder),
        state_dir: None,
        entry_resync_interval: args.entry_resync_interval,
        write_concurrency: args.spire_write_concurrency,
    })
    .await?;
    let federation = async move {
        match federation {
            Some(federation) => federation.run().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = reconciler.run() => Ok(()),
        () = federation => Ok(()),
        result = leading.wait_for(|leader| !*leader) => {
            metrics.leader.set(0);
            // Like controller-runtime: a replica that lost the lease exits and restarts as
            // a follower, so two writers never overlap.
            result.map_or(Ok(()), |_| Err(anyhow::anyhow!("lost the leader election lease")))
        }
        () = terminated() => Ok(()),
    };
    shutdown.notify_waiters();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let webhook_server = webhook.map(|(_, handle)| handle);
        for server in [metrics_server, health_server, webhook_server]
            .into_iter()
            .flatten()
        {
            let _ = server.await;
        }
    })
    .await;
    outcome
}

/// The metrics and health servers (each off when its bind address is `"0"`); they stop
/// when `shutdown` is notified.
pub(crate) fn spawn_http_servers(
    config: &Config,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    shutdown: &Arc<Notify>,
) -> [Option<tokio::task::JoinHandle<()>>; 2] {
    let stopped = || {
        let shutdown = shutdown.clone();
        async move { shutdown.notified().await }
    };
    let liveness = config
        .health
        .liveness_endpoint_name
        .clone()
        .unwrap_or_else(|| "/healthz".into());
    let readiness = config
        .health
        .readiness_endpoint_name
        .clone()
        .unwrap_or_else(|| "/readyz".into());
    // A bind address of "0" turns a server off (controller-runtime's convention).
    let metrics_server = config.metrics.address().map(str::to_owned).map(|address| {
        let (metrics, stopped) = (metrics.clone(), stopped());
        tokio::spawn(async move {
            if let Err(e) = http::serve_metrics(&address, metrics, stopped).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        })
    });
    let health_server = config.health.address().map(str::to_owned).map(|address| {
        let (health, stopped) = (health.clone(), stopped());
        tokio::spawn(async move {
            if let Err(e) =
                http::serve_health(&address, health, &liveness, &readiness, stopped).await
            {
                tracing::error!(error = %e, "health server failed");
            }
        })
    });

    [metrics_server, health_server]
}

/// Where the SPIRE server API is: its admin socket, or over TCP+mTLS with our own
/// SVID from the Workload API (`spireServerAddress`).
pub(crate) async fn spire_address(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<SpireAddress> {
    Ok(match &config.spire_server_tcp {
        None => SpireAddress::Unix(config.spire_server_socket_path.clone()),
        Some(tcp) => spire_operator::spire::tcp::address(tcp, metrics.clone()).await?,
    })
}

/// Waits for the SPIRE server (it may start after us, e.g. as a sibling container).
pub(crate) async fn connect_spire(
    address: SpireAddress,
    config: &Config,
    timeout: Duration,
    metrics: &Metrics,
) -> SpireClient {
    let defaults = ClientOptions::default();
    let options = ClientOptions {
        timeout,
        max_receive_message_size: config
            .grpc_max_call_recv_msg_size
            .unwrap_or(defaults.max_receive_message_size),
        ..defaults
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match SpireClient::connect_with(address.clone(), &options).await {
            Ok(client) => {
                metrics.spire_reachable.set(1);
                return client;
            }
            Err(e) => {
                metrics.spire_reachable.set(0);
                tracing::warn!(error = %spire_operator::spire::error_chain(&e), retry_in = ?delay, "SPIRE server not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The cluster domain from the pod's DNS search list (`<ns>.svc.<domain> svc.<domain>
/// <domain>`), as spire-controller-manager derives it from `kubernetes.default.svc`.
fn detect_cluster_domain() -> Option<String> {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let domain = cluster_domain_from_resolv(&resolv);
    match &domain {
        Some(d) => {
            tracing::info!(cluster_domain = %d, "detected the cluster domain from /etc/resolv.conf")
        }
        None => tracing::warn!(
            "clusterDomain is not set and could not be detected; .ClusterDomain renders empty and service DNS names get no cluster-domain form"
        ),
    }
    domain
}

/// The `<domain>` of the first `svc.<domain>` in the `search` line(s) of a resolv.conf.
fn cluster_domain_from_resolv(resolv: &str) -> Option<String> {
    resolv
        .lines()
        .map(str::split_whitespace)
        .filter_map(|mut words| (words.next() == Some("search")).then_some(words))
        .flatten()
        .find_map(|d| d.strip_prefix("svc.").map(str::to_owned))
}

pub(crate) async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_comes_from_the_flag_then_the_service_account() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("namespace");
        assert_eq!(operator_namespace(None, &file), "spire-system");
        std::fs::write(&file, "spire-server\n").unwrap();
        assert_eq!(operator_namespace(None, &file), "spire-server");
        assert_eq!(operator_namespace(Some("mine".into()), &file), "mine");
        assert_eq!(
            operator_namespace(Some(String::new()), &file),
            "spire-server"
        );
    }

    #[test]
    fn the_cluster_domain_comes_from_the_search_line_only() {
        let pod = "nameserver 10.96.0.10\nsearch spire-system.svc.corp.example svc.corp.example corp.example\noptions ndots:5\n";
        assert_eq!(
            cluster_domain_from_resolv(pod).as_deref(),
            Some("corp.example")
        );
        assert_eq!(cluster_domain_from_resolv("nameserver 1.1.1.1\n"), None);
        // Another keyword that merely starts with "search" is not a search line.
        assert_eq!(
            cluster_domain_from_resolv("searchlist svc.evil\nsearch svc.cluster.local\n")
                .as_deref(),
            Some("cluster.local")
        );
    }
}
