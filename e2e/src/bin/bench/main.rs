//! `make bench`: spire-operator (ours) and spire-controller-manager (SCM, the pinned
//! reference build) side by side on one control plane, each run on a fresh SPIRE server.
//!
//! One control plane holds `--nodes` nodes and `--pods` pods (Pod objects bound to a
//! node; nothing runs them) in namespaces of 100, and `--csids` ClusterSPIFFEIDs that
//! each select every pod, one entry per pod each (with a DNS name template). Then, for
//! `--runs` rounds, each tool in turn (ours, SCM, ours, SCM, ...) on a fresh SPIRE server
//! (sqlite on tmpfs or disk, or PostgreSQL): the SPIRE write floor for the same number of entries, then
//! the tool's cold convergence, idle cost, a template change and churn at each rate.
//! Prints a markdown table (per-run figures, medians, ours/SCM) and writes it as JSON
//! to `--out`. The CSI suites then compare our spiffe-csi-driver with the Go one, called
//! directly (`csi.rs`) and through a real kubelet (`kubelet.rs`). See docs/benchmarks.md
//! for what each scenario measures and what bounds it.

mod csi;
mod kubelet;
mod probe;
mod report;
mod scale;
mod scenarios;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use e2e::world::World;
use e2e::{Spire, SpireOptions};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types::{Entry, Selector};

use crate::probe::{Reader, spire_rpcs};
use crate::scenarios::Figures;

const TRUST_DOMAIN: &str = "bench.test";
const CLUSTER: &str = "bench";

/// Ours vs spire-controller-manager: cold convergence, idle, template change, churn.
#[derive(Parser, Debug, Clone)]
#[command(about)]
pub struct Args {
    /// Pods (each selected by every ClusterSPIFFEID).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Nodes the pods are spread over.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// ClusterSPIFFEIDs; entries = pods x csids.
    #[arg(long, default_value_t = 3)]
    csids: usize,
    /// Runs per tool (alternating ours, SCM).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tools to run.
    #[arg(long, value_delimiter = ',', default_value = "ours,scm")]
    tools: Vec<ToolKind>,
    /// Scenarios after cold convergence, which always runs (`--scenarios cold`: only it).
    #[arg(long, value_delimiter = ',', default_value = "idle,template,churn")]
    scenarios: Vec<Scenario>,
    /// SPIRE's datastore: sqlite on tmpfs or disk, or PostgreSQL.
    #[arg(long, value_enum, default_value_t = Datastore::Tmpfs)]
    datastore: Datastore,
    /// How the SPIRE server keeps its authorized-entry cache (what agents are served).
    #[arg(long, value_enum, default_value_t = SpireCache::Full)]
    spire_cache: SpireCache,
    /// Idle scenario length, seconds.
    #[arg(long, default_value_t = 300)]
    idle_secs: u64,
    /// How long the idle scenario then watches the SPIRE server with the tool stopped
    /// (at most the idle length; the figure is scaled to it). As long as the idle
    /// length, the "caused" figure compares equal windows.
    #[arg(long, default_value_t = 60)]
    idle_baseline_secs: u64,
    /// Churn rates, pods created (and deleted) per second.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    churn_rates: Vec<u32>,
    /// Churn length at each rate, seconds.
    #[arg(long, default_value_t = 60)]
    churn_secs: u64,
    /// How long a churned pod lives (from its creation, or until its entries exist).
    #[arg(long, default_value_t = 5)]
    churn_lifetime_secs: u64,
    /// How often churn looks at the server for the pending pods' entries, milliseconds
    /// (the latencies' resolution; each look is one filtered ListEntries per 200 pods).
    #[arg(long, default_value_t = 25)]
    churn_poll_ms: u64,
    /// `gcInterval` given to both tools, seconds (the hardened chart renders 10 s).
    #[arg(long, default_value_t = 10)]
    gc_interval_secs: u64,
    /// Ours' `--entry-resync-interval` (e.g. `0s`: a full listing every `gcInterval`,
    /// as SCM). Default: the operator's own default.
    #[arg(long)]
    entry_resync_interval: Option<String>,
    /// Skip the SPIRE write floor.
    #[arg(long)]
    no_floor: bool,
    /// What to compare: the operators, the CSI drivers called directly, the CSI drivers
    /// through a real kubelet, the scale check.
    #[arg(long, value_delimiter = ',', default_value = "operator,csi,kubelet")]
    suites: Vec<Suite>,
    /// CSI drivers to run (alternating), in the csi and kubelet suites.
    #[arg(long, value_delimiter = ',', default_value = "ours,go")]
    csi_drivers: Vec<csi::DriverKind>,
    /// Volumes each CSI driver publishes, republishes and unpublishes per run.
    #[arg(long, default_value_t = 200)]
    csi_volumes: usize,
    /// Pods created (then deleted) at once per run of the kubelet suite.
    #[arg(long, default_value_t = 30)]
    kubelet_pods: usize,
    /// Ours' `csiDriver.requiresRepublish` in the kubelet suite (the chart's default,
    /// true: kubelet calls NodePublishVolume again on every pod sync); `false` shows what
    /// that costs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    kubelet_republish: bool,
    /// Pod counts the scale check (`--suites scale`) grows the cluster to, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,25000,50000,100000"
    )]
    scale_steps: Vec<usize>,
    /// Directory for the JSON result.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    Ours,
    Scm,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// spire-operator vs spire-controller-manager.
    Operator,
    /// spiffe-csi-driver: ours vs the Go driver.
    Csi,
    /// The CSI drivers through a real kubelet (containerd, a real node): pods with the
    /// inline volume created and deleted.
    Kubelet,
    /// The scale check: pods in steps up to `--scale-steps`, where the API server (and
    /// not the operator) becomes the limit. Not in the default run.
    Scale,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Only cold convergence.
    Cold,
    Idle,
    Template,
    Churn,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datastore {
    /// sqlite on /dev/shm: the disk's variance out of the way.
    Tmpfs,
    /// sqlite in the server's data directory under $TMPDIR.
    Disk,
    /// PostgreSQL (Debian's server, started per run, data on /dev/shm, Unix socket), as
    /// production servers run.
    Postgres,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpireCache {
    /// SPIRE's default: every entry and agent read again from the datastore every 5 s.
    Full,
    /// `experimental.events_based_cache`: only what changed, from the datastore's events.
    Events,
}

/// What must outlive a fresh SPIRE server: its datastore's directory or database.
enum DatastoreGuard {
    Tmpfs(tempfile::TempDir),
    Disk,
    // Held for its Drop: the database stops with it.
    Postgres(#[allow(dead_code)] Box<e2e::postgres::Postgres>),
}

/// The objects every run sees.
pub struct Setup {
    pub pods: usize,
    pub nodes: usize,
    pub csids: usize,
}

impl Setup {
    pub fn entries(&self) -> usize {
        self.pods * self.csids
    }

    pub fn csid_name(i: usize) -> String {
        format!("csid-{i}")
    }

    /// ClusterSPIFFEID `i`'s spec; `variant` names the template edit ("" = original).
    pub fn csid_spec(&self, i: usize, variant: &str) -> Value {
        let path = if variant.is_empty() {
            format!("c{i}")
        } else {
            format!("c{i}-{variant}")
        };
        json!({
            "spiffeIDTemplate": format!(
                "spiffe://{{{{ .TrustDomain }}}}/{path}/ns/{{{{ .PodMeta.Namespace }}}}/sa/{{{{ .PodSpec.ServiceAccountName }}}}/{{{{ .PodMeta.Name }}}}"
            ),
            "namespaceSelector": {"matchLabels": {"bench": "yes"}},
            "podSelector": {"matchLabels": {"app": "bench"}},
            "dnsNameTemplates": ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc"],
        })
    }

    /// A pod every ClusterSPIFFEID selects, bound to a node by `i`.
    pub fn pod(&self, namespace: &str, name: &str, i: usize) -> Pod {
        e2e::kube_util::scheduled_pod(
            namespace,
            name,
            "default",
            &format!("node-{}", i % self.nodes),
            &[("app", "bench")],
        )
    }
}

/// One tool, running.
pub enum Running {
    Ours(Operator),
    Scm(ReferenceControllerManager),
}

impl Running {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ours(_) => "ours",
            Self::Scm(_) => "scm",
        }
    }

    pub fn pid(&self) -> u32 {
        match self {
            Self::Ours(o) => o.pid(),
            Self::Scm(s) => s.pid(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.pods > 0 && args.nodes > 0 && args.csids > 0 && args.runs > 0,
        "--pods, --nodes, --csids and --runs must be > 0"
    );
    let setup = Setup {
        pods: args.pods,
        nodes: args.nodes,
        csids: args.csids,
    };
    // Built (if stale) now, so that the build is not timed.
    let operator_binary = if args.suites.contains(&Suite::Operator) {
        Some(Operator::binary()?)
    } else {
        None
    };
    let mut report = report::Report::new(&args, operator_binary.as_deref());
    if args.suites.contains(&Suite::Operator) {
        operators(&args, &setup, &mut report).await?;
    }
    if args.suites.contains(&Suite::Csi) {
        e2e::csi::our_driver()?;
        report.csi = csi::compare(&args.csi_drivers, args.runs, args.csi_volumes).await?;
    }
    if args.suites.contains(&Suite::Kubelet) {
        report.kubelet = kubelet::compare(
            &args.csi_drivers,
            args.runs,
            args.kubelet_pods,
            args.kubelet_republish,
        )
        .await?;
    }
    if args.suites.iter().any(|s| *s != Suite::Scale) {
        report.finish(&args)?;
    }
    if args.suites.contains(&Suite::Scale) {
        let scale = scale::run(&args).await?;
        println!("JSON: {}", write_json(&args, "scale", &scale)?.display());
    }
    Ok(())
}

/// The operator suite: every run of every tool on one populated control plane.
async fn operators(args: &Args, setup: &Setup, report: &mut report::Report) -> anyhow::Result<()> {
    let world = populate(setup).await?;
    for run in 0..args.runs {
        if !args.no_floor {
            let floor = floor(setup, args).await?;
            eprintln!("[bench] run {run}: write floor {floor:.2} s");
            report.floor.push(floor);
        }
        for &kind in &args.tools {
            let figures = one_run(args, setup, &world, kind, run)
                .await
                .with_context(|| format!("run {run} of {kind:?}"))?;
            eprintln!("[bench] run {run} {kind:?}: {}", json!(figures));
            report.push(kind, figures);
        }
    }
    Ok(())
}

/// Starts the control plane and creates the nodes, namespaces, pods and ClusterSPIFFEIDs.
async fn populate(setup: &Setup) -> anyhow::Result<World> {
    let started = Instant::now();
    let world = World::start(TRUST_DOMAIN).await?;
    for n in 0..setup.nodes {
        world.node(&format!("node-{n}")).await?;
    }
    for ns in 0..setup.pods.div_ceil(100) {
        world
            .namespace(&format!("ns-{ns}"), &[("bench", "yes")])
            .await?;
    }
    for c in 0..setup.csids {
        world
            .apply_csid(&Setup::csid_name(c), setup.csid_spec(c, ""))
            .await?;
    }
    create_pods(&world, setup, 0..setup.pods).await?;
    eprintln!(
        "[bench] {} pods, {} nodes, {} ClusterSPIFFEIDs ({} entries) set up in {:.1} s",
        setup.pods,
        setup.nodes,
        setup.csids,
        setup.entries(),
        started.elapsed().as_secs_f64()
    );
    Ok(world)
}

/// A fresh SPIRE server with its datastore and entry cache as `args` say and its
/// telemetry on. Returns the server, the telemetry address and what its datastore needs
/// kept.
async fn fresh_spire(args: &Args) -> anyhow::Result<(Spire, String, DatastoreGuard)> {
    let guard = match args.datastore {
        Datastore::Tmpfs => DatastoreGuard::Tmpfs(
            tempfile::Builder::new()
                .prefix("spire-rs-bench-")
                .tempdir_in("/dev/shm")
                .context("creating the datastore directory on /dev/shm")?,
        ),
        Datastore::Disk => DatastoreGuard::Disk,
        Datastore::Postgres => {
            DatastoreGuard::Postgres(Box::new(e2e::postgres::Postgres::start().await?))
        }
    };
    let port = e2e::ports::free_port()?;
    let (datastore_dir, postgres) = match &guard {
        DatastoreGuard::Tmpfs(dir) => (Some(dir.path().to_path_buf()), None),
        DatastoreGuard::Disk => (None, None),
        DatastoreGuard::Postgres(pg) => (None, Some(pg.connection_string())),
    };
    let spire = Spire::start_with(
        TRUST_DOMAIN,
        SpireOptions {
            datastore_dir,
            postgres,
            prometheus_port: Some(port),
            events_based_cache: args.spire_cache == SpireCache::Events,
            ..Default::default()
        },
    )
    .await?;
    let addr = format!("127.0.0.1:{port}");
    e2e::wait::until(
        "SPIRE server telemetry",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let addr = addr.clone();
            async move { Ok(spire_rpcs(&addr).await.ok().map(|_| ())) }
        },
    )
    .await?;
    Ok((spire, addr, guard))
}

/// The ControllerManagerConfig both tools get.
fn tool_config(args: &Args) -> String {
    format!(
        "ignoreNamespaces: [kube-system]\ngcInterval: {}\n",
        args.gc_interval_secs * 1_000_000_000
    )
}

/// Starts ours with [`tool_config`] and `--entry-resync-interval` as asked.
async fn start_ours(
    args: &Args,
    control_plane: &e2e::control_plane::ControlPlane,
    spire: &Spire,
) -> anyhow::Result<Operator> {
    // Empty: unset, the operator's default (the harness would set 0s otherwise).
    let resync = args.entry_resync_interval.as_deref().unwrap_or("");
    Operator::start_with_env(
        control_plane,
        spire,
        CLUSTER,
        &tool_config(args),
        &[(e2e::operator::ENTRY_RESYNC_INTERVAL, resync)],
    )
    .await
}

/// Creates pods `range` (16 creates in flight); how many per second the API server took.
async fn create_pods(
    world: &World,
    setup: &Setup,
    range: std::ops::Range<usize>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let count = range.len();
    futures::stream::iter(range)
        .map(|p| async move {
            world
                .create_pod(setup.pod(&format!("ns-{}", p / 100), &format!("pod-{p}"), p))
                .await
                .with_context(|| format!("creating pod {p}"))
        })
        .buffer_unordered(16)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Writes `value` to `<--out>/<prefix>-<unix time>.json`; returns the path.
pub fn write_json(args: &Args, prefix: &str, value: &Value) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = args.out.join(format!("{prefix}-{stamp}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

/// One tool's run on a fresh server: cold convergence, then the chosen scenarios.
async fn one_run(
    args: &Args,
    setup: &Setup,
    world: &World,
    kind: ToolKind,
    run: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, Value>> {
    let (spire, prometheus, _datastore) = fresh_spire(args).await?;
    let reader = Reader::new(spire.client());
    let rpcs_before = spire_rpcs(&prometheus).await?;
    let own_before = reader.own_calls();
    let started = Instant::now();
    let tool = match kind {
        ToolKind::Ours => Running::Ours(start_ours(args, &world.control_plane, &spire).await?),
        ToolKind::Scm => Running::Scm(
            ReferenceControllerManager::start(
                &world.control_plane,
                &spire,
                CLUSTER,
                &tool_config(args),
            )
            .await?,
        ),
    };
    let mut out = std::collections::BTreeMap::new();
    let cold = scenarios::cold(
        setup,
        &tool,
        &reader,
        &prometheus,
        started,
        &rpcs_before,
        own_before,
    )
    .await?;
    out.insert("cold".to_owned(), figures(cold));
    if args.scenarios.contains(&Scenario::Idle) {
        let idle = scenarios::idle(
            &tool,
            spire.server_pid(),
            &prometheus,
            Duration::from_secs(args.idle_secs),
            Duration::from_secs(args.idle_baseline_secs),
        )
        .await?;
        out.insert("idle".to_owned(), figures(idle));
    }
    if args.scenarios.contains(&Scenario::Churn) {
        for &rate in &args.churn_rates {
            let churn = scenarios::churn(
                setup,
                world,
                &reader,
                args,
                rate,
                &format!("{run}-{}-{rate}", tool.name()),
            )
            .await?;
            out.insert(format!("churn{rate}"), figures(churn));
        }
    }
    if args.scenarios.contains(&Scenario::Template) {
        let template = scenarios::template_change(setup, world, &tool, &reader, &prometheus).await;
        // Restored whatever happened, so that the next run starts from the same objects.
        drop(tool);
        world
            .apply_csid(&Setup::csid_name(0), setup.csid_spec(0, ""))
            .await?;
        out.insert("template".to_owned(), figures(template?));
    }
    Ok(out)
}

fn figures(f: Figures) -> Value {
    Value::Object(f.into_iter().collect())
}

/// The SPIRE write floor: how long a fresh server of the same datastore takes to create
/// entries of the shape the operators write, from a minimal client (batches of 50, as
/// spire-controller-manager sends, 4 in flight): one per pod and ClusterSPIFFEID, each
/// pod's entries sharing its `k8s:pod-uid` selector and its node's parent ID, created
/// node by node. The parents are nodes no agent attested (as in the operator runs):
/// entries parented to the server's one agent were also synchronised to that agent
/// while they were written, which cost the server more than the writes (15000 entries:
/// 99.9 to 102 s, against 18.5 to 25.0 s in this shape).
async fn floor(setup: &Setup, args: &Args) -> anyhow::Result<f64> {
    let (spire, _, _datastore) = fresh_spire(args).await?;
    let client = spire.client();
    let entries = floor_entries(setup)?;
    let started = Instant::now();
    let chunks: Vec<Vec<Entry>> = entries.chunks(50).map(<[Entry]>::to_vec).collect();
    futures::stream::iter(chunks)
        .map(|chunk| {
            let client = client.clone();
            async move {
                let results = client.batch_create_entries(chunk).await?;
                anyhow::ensure!(
                    results
                        .iter()
                        .all(|r| r.status.as_ref().is_some_and(|s| s.code == 0)),
                    "the floor's BatchCreateEntry failed for some entries"
                );
                Ok(())
            }
        })
        .buffer_unordered(4)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The floor's entries, in the order the operator creates them (parent ID, then
/// selectors, then SPIFFE ID: `creation_order` in operator/src/reconcile/diff.rs).
fn floor_entries(setup: &Setup) -> anyhow::Result<Vec<Entry>> {
    let mut keyed = Vec::with_capacity(setup.entries());
    for pod in 0..setup.pods {
        let node = pod % setup.nodes;
        // UUID-shaped, spread like the API server's random ones.
        let uid = format!(
            "{:08x}-0000-4000-8000-{pod:012x}",
            (pod as u32).wrapping_mul(2_654_435_761)
        );
        for csid in 0..setup.csids {
            let spiffe_id = format!(
                "spiffe://{TRUST_DOMAIN}/c{csid}/ns/ns-{}/sa/default/pod-{pod}",
                pod / 100
            );
            keyed.push((node, uid.clone(), spiffe_id, pod));
        }
    }
    keyed.sort();
    keyed
        .into_iter()
        .map(|(node, uid, spiffe_id, pod)| {
            let id: SpiffeId = spiffe_id.parse()?;
            let parent: SpiffeId =
                format!("spiffe://{TRUST_DOMAIN}/spire/agent/k8s_psat/bench/node-{node}")
                    .parse()?;
            Ok(Entry {
                spiffe_id: Some(id.to_api()),
                parent_id: Some(parent.to_api()),
                selectors: vec![Selector {
                    r#type: "k8s".into(),
                    value: format!("pod-uid:{uid}"),
                }],
                dns_names: vec![format!("pod-{pod}.ns-{}.svc", pod / 100)],
                ..Default::default()
            })
        })
        .collect()
}
