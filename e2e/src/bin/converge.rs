//! Cold convergence, ours and spire-controller-manager side by side: a quick figure, not
//! the full benchmark.
//!
//! `cargo run --release -p e2e --bin converge -- [PODS [NODES [CSIDS]]]` (defaults 1000,
//! 10, 3) starts one control plane, creates NODES nodes and PODS scheduled pods, and
//! CSIDS ClusterSPIFFEIDs that each select every pod (so PODS x CSIDS entries). Then, for
//! each tool in turn, on a fresh SPIRE server: start the tool, wait until every entry is
//! on the server, and print the time from the start and the tool's peak RSS. The tools
//! run one after the other, so neither shares the 2 cores with the other.

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::Spire;
use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use e2e::world::World;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

const TRUST_DOMAIN: &str = "converge.test";
const CLUSTER: &str = "bench";

/// Both tools get the same config apart from the resync interval's spelling.
const CONFIG: &str = "ignoreNamespaces: [kube-system]\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        std::env::args().nth(i).map_or(Ok(default), |a| {
            a.parse().with_context(|| format!("argument {i}: {a:?}"))
        })
    };
    let (pods, nodes, csids) = (arg(1, 1000)?, arg(2, 10)?, arg(3, 3)?);
    anyhow::ensure!(
        pods > 0 && nodes > 0 && csids > 0,
        "PODS, NODES and CSIDS must be > 0"
    );
    let want = pods * csids;

    // Built (if stale) now, so that the build is not timed.
    Operator::binary()?;
    let setup = Instant::now();
    let world = World::start(TRUST_DOMAIN).await?;
    for n in 0..nodes {
        world.node(&format!("node-{n}")).await?;
    }
    let namespaces = pods.div_ceil(100);
    for ns in 0..namespaces {
        world
            .namespace(&format!("ns-{ns}"), &[("bench", "yes")])
            .await?;
    }
    for c in 0..csids {
        world
            .apply_csid(
                &format!("csid-{c}"),
                json!({
                    "spiffeIDTemplate": format!(
                        "spiffe://{{{{ .TrustDomain }}}}/c{c}/ns/{{{{ .PodMeta.Namespace }}}}/sa/{{{{ .PodSpec.ServiceAccountName }}}}/{{{{ .PodMeta.Name }}}}"
                    ),
                    "namespaceSelector": {"matchLabels": {"bench": "yes"}},
                    "podSelector": {"matchLabels": {"app": "bench"}},
                    "dnsNameTemplates": ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc"],
                }),
            )
            .await?;
    }
    let world = &world;
    futures::stream::iter(0..pods)
        .map(|p| async move {
            world
                .pod(
                    &format!("ns-{}", p / 100),
                    &format!("pod-{p}"),
                    "default",
                    &format!("node-{}", p % nodes),
                    &[("app", "bench")],
                )
                .await
        })
        .buffer_unordered(16)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    println!(
        "{pods} pods on {nodes} nodes in {namespaces} namespaces, {csids} ClusterSPIFFEIDs: {want} entries (set up in {:.1} s)",
        setup.elapsed().as_secs_f64()
    );
    println!("| tool | cold convergence | peak RSS |");
    println!("|---|---|---|");

    let (ours_time, operator, spire) = measure(want, async |spire| {
        let config = format!("{CONFIG}gcInterval: 10m\n");
        Operator::start(&world.control_plane, spire, CLUSTER, &config).await
    })
    .await?;
    let ours_rss = operator.peak_rss_kib();
    row("spire-operator (ours)", ours_time, ours_rss);
    print_write_counters(&operator).await?;
    drop((operator, spire));

    let reference = measure(want, async |spire| {
        let config = format!("{CONFIG}gcInterval: 10000000000\n");
        ReferenceControllerManager::start(&world.control_plane, spire, CLUSTER, &config).await
    })
    .await
    .map(|(took, scm, spire)| {
        let rss = scm.peak_rss_kib();
        drop((scm, spire));
        (took, rss)
    });
    match reference {
        Ok((took, rss)) => {
            row("spire-controller-manager v0.6.4", took, rss);
            println!(
                "ratios ours/reference: time {:.2}, peak RSS {}",
                ours_time.as_secs_f64() / took.as_secs_f64(),
                match (ours_rss, rss) {
                    (Some(a), Some(b)) => format!("{:.2}", a as f64 / b as f64),
                    _ => "-".into(),
                }
            );
        }
        Err(e) => println!("| spire-controller-manager | could not run: {e:#} | |"),
    }
    Ok(())
}

fn row(tool: &str, took: Duration, rss_kib: Option<u64>) {
    println!(
        "| {tool} | {:.1} s | {} |",
        took.as_secs_f64(),
        rss_kib.map_or("-".into(), |k| format!("{} MiB", k / 1024))
    );
}

/// Starts a fresh SPIRE server, then the tool with `start`, and waits until the server
/// holds `want` entries. Returns the time from the tool's start, the tool, and the server
/// (in that order, so that the tool stops before its server).
async fn measure<T>(
    want: usize,
    start: impl AsyncFnOnce(&Spire) -> anyhow::Result<T>,
) -> anyhow::Result<(Duration, T, Spire)> {
    let spire = Spire::start(TRUST_DOMAIN).await?;
    let started = Instant::now();
    let tool = start(&spire).await?;
    let took = converge(&spire, want, started).await?;
    Ok((took, tool, spire))
}

/// The operator's write and SPIRE RPC counters: how the time was spent.
async fn print_write_counters(operator: &Operator) -> anyhow::Result<()> {
    let metrics = operator.metrics().await?;
    let mut lines: Vec<String> = metrics
        .samples()
        .iter()
        .filter(|s| {
            s.value > 0.0
                && (s.name == "spire_operator_entry_writes_total"
                    || s.name == "spire_operator_spire_rpc_duration_seconds_count"
                    || s.name == "spire_operator_spire_rpc_duration_seconds_sum")
        })
        .map(|s| format!("{}{:?} = {}", s.name, s.labels, s.value))
        .collect();
    lines.sort();
    eprintln!(
        "operator counters after convergence:\n  {}",
        lines.join("\n  ")
    );
    Ok(())
}

/// Waits until the server holds `want` entries; the time since `started`.
async fn converge(spire: &Spire, want: usize, started: Instant) -> anyhow::Result<Duration> {
    let client = spire.client();
    loop {
        let have = client.count_entries().await?;
        if have >= want {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "only {have} of {want} entries after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
