//! `spire-operator run` in static mode (`staticManifestPath`): no Kubernetes client at
//! all; manifests from files, the same reconcilers, the metrics and health servers.

use std::sync::Arc;

use anyhow::Context as _;
use spire_operator::config::{Config, StaticMode};
use spire_operator::federation::{FederationContext, FederationReconciler};
use spire_operator::http::Health;
use spire_operator::metrics::Metrics;
use spire_operator::reconcile::dirty::DirtySet;
use spire_operator::reconcile::runner::{Context, Reconciler};
use spire_operator::static_mode::StaticSource;
use spire_operator::webhook::Validator;
use tokio::sync::Notify;

use crate::run::{RunArgs, connect_spire, spawn_http_servers, spire_address, terminated};

pub async fn run(args: RunArgs, config: Config, mode: StaticMode) -> anyhow::Result<()> {
    tracing::info!(
        trust_domain = %config.trust_domain,
        manifests = %mode.manifest_path.display(),
        expand_env = mode.expand_env,
        poll_interval = ?args.static_poll_interval,
        "starting in static mode: no Kubernetes API, no webhook, no leader election; statuses and events are logged"
    );
    if args.state_dir.is_none() && config.reconcile.cluster_federated_trust_domains {
        tracing::warn!(
            "static mode without --state-dir: the federation relationships this run creates are remembered in memory only, so after a restart they count as foreign (left alone, not updated or deleted) unless their manifest is annotated spire.spiffe.io/adopt-federation-relationship: \"true\""
        );
    }
    if args.kubeconfig.is_some() {
        tracing::warn!("--kubeconfig is ignored in static mode");
    }
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let shutdown = Arc::new(Notify::new());
    let servers = spawn_http_servers(&config, &metrics, &health, &shutdown);
    let validator = Validator {
        trust_domain: config.trust_domain.clone(),
        class_name: config.class_name.clone(),
    };
    let (source, stores) =
        StaticSource::start(&mode, validator, metrics.clone(), args.state_dir.as_deref())
            .with_context(|| format!("creating --state-dir {:?}", args.state_dir))?;
    metrics.caches_synced.set(1);
    // Bad files are reported at once, before waiting for the server.
    let address = spire_address(&config, &metrics).await?;
    let spire = connect_spire(address, &config, args.spire_timeout, &metrics).await;
    // One replica, always the writer: static mode has no Lease.
    metrics.leader.set(1);
    let dirty = Arc::new(DirtySet::default());
    let federation_dirty = Arc::new(DirtySet::default());
    let federation = if config.reconcile.cluster_federated_trust_domains {
        let context = FederationContext {
            config: config.clone(),
            namespace: String::new(),
            kube: None,
            spire: spire.clone(),
            store: stores.cluster_federated_trust_domains.clone(),
            dirty: federation_dirty.clone(),
            metrics: metrics.clone(),
            recorder: None,
            state_dir: args.state_dir.clone(),
        };
        Some(FederationReconciler::new(context).await?)
    } else {
        None
    };
    let reconciler = Reconciler::new(Context {
        config: config.clone(),
        cluster_domain: String::new(),
        namespace: String::new(),
        kube: None,
        spire,
        stores,
        dirty: dirty.clone(),
        metrics: metrics.clone(),
        recorder: None,
        state_dir: args.state_dir.clone(),
        entry_resync_interval: args.entry_resync_interval,
        write_concurrency: args.spire_write_concurrency,
    })
    .await
    .context("starting the entry reconciler")?;
    let federation = async move {
        match federation {
            Some(federation) => federation.run().await,
            None => std::future::pending().await,
        }
    };
    let watcher = {
        let alive = health.task_alive("static manifest watcher");
        let poll = source.run(args.static_poll_interval, dirty, federation_dirty);
        async move {
            poll.await;
            alive.ended();
        }
    };
    tokio::select! {
        () = reconciler.run() => {}
        () = federation => {}
        () = watcher => {}
        () = terminated() => {}
    }
    shutdown.notify_waiters();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        for server in servers.into_iter().flatten() {
            let _ = server.await;
        }
    })
    .await;
    Ok(())
}
