//! The CSI node plugin: ours vs the Go spiffe-csi-driver (the pinned reference build),
//! each in its own private mount namespace, sent the requests kubelet sends for
//! `--csi-volumes` pods: publish every volume one after the other, republish them all
//! (kubelet does so on every pod sync, `requiresRepublish`), then unpublish them. Both
//! get the Go driver's flags, as a DaemonSet written for it passes them.
//!
//! Per driver: latency of each call (p50, p99, max), its RSS idle, with every volume
//! published, and at peak, and the mounts it holds after the republish and at the end
//! (a driver that stacks a mount per republish shows it there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use e2e::WorkDir;
use e2e::csi::{Driver, PodVolume, our_driver};
use serde_json::{Value, json};
use spiffe_csi_driver::csi::v1::node_client::NodeClient;
use tonic::transport::Channel;

use crate::probe::{median, peak_rss_mib, quantile, rss_mib};

/// Which driver.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Ours,
    Go,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Go => "go",
        }
    }
}

/// One driver's run: figure name -> value.
pub type CsiFigures = BTreeMap<String, f64>;

/// Runs every driver `runs` times, alternating, with `volumes` volumes each.
pub async fn compare(
    drivers: &[DriverKind],
    runs: usize,
    volumes: usize,
) -> anyhow::Result<BTreeMap<&'static str, Vec<CsiFigures>>> {
    let mut out: BTreeMap<&'static str, Vec<CsiFigures>> = BTreeMap::new();
    for run in 0..runs {
        for &kind in drivers {
            let figures = one_run(kind, volumes)
                .await
                .with_context(|| format!("CSI run {run} of {}", kind.name()))?;
            eprintln!("[bench] CSI run {run} {}: {}", kind.name(), json!(figures));
            out.entry(kind.name()).or_default().push(figures);
        }
    }
    Ok(out)
}

async fn one_run(kind: DriverKind, volumes: usize) -> anyhow::Result<CsiFigures> {
    let work = WorkDir::new(&format!("bench-csi-{}", kind.name()))?;
    let pods = work.join("pods");
    let agent = work.join("agent");
    let csi_dir = work.join("csi");
    for dir in [&pods, &agent, &csi_dir] {
        std::fs::create_dir_all(dir)?;
    }
    // A listening socket in the agent's directory, so that a readiness probe that looks
    // for one is satisfied.
    let _agent = std::os::unix::net::UnixListener::bind(agent.join("spire-agent.sock"))?;
    let socket = csi_dir.join("csi.sock");
    let binary = match kind {
        DriverKind::Ours => our_driver()?,
        DriverKind::Go => e2e::tools::tool("spiffe-csi-driver")?,
    };
    let args = vec![
        format!("-csi-socket-path={}", socket.display()),
        format!("-workload-api-socket-dir={}", agent.display()),
    ];
    let driver = Driver::start(
        &format!("bench-csi-{}", kind.name()),
        &binary,
        &args,
        &socket,
        &work.join("driver.log"),
    )
    .await?;
    let pid = driver.process.id();
    let mut client = NodeClient::new(driver.channel().await?);
    let mut figures = CsiFigures::new();
    figures.insert("rss_idle_mib".into(), rss_mib(pid));

    let names: Vec<(String, String)> = (0..volumes)
        .map(|i| {
            (
                format!("web-{i}"),
                format!("{i:08x}-0000-4000-8000-{i:012x}"),
            )
        })
        .collect();
    for n in &names {
        let (_, target) = pod_volume(&pods, n);
        std::fs::create_dir_all(target.parent().context("target parent")?)?;
    }

    let mut publish = Vec::with_capacity(volumes);
    for n in &names {
        let (pod, target) = pod_volume(&pods, n);
        publish.push(timed_publish(&mut client, &pod, &target).await?);
    }
    figures.insert("mounts_published".into(), mounts_under(pid, &pods)? as f64);
    figures.insert("rss_mib".into(), rss_mib(pid));
    let mut republish = Vec::with_capacity(volumes);
    for n in &names {
        let (pod, target) = pod_volume(&pods, n);
        republish.push(timed_publish(&mut client, &pod, &target).await?);
    }
    figures.insert(
        "mounts_republished".into(),
        mounts_under(pid, &pods)? as f64,
    );
    // A failed unpublish is counted, not fatal: kubelet would retry it, and a driver
    // that stacked mounts on republish cannot remove the target after one unmount.
    let mut unpublish = Vec::with_capacity(volumes);
    let mut unpublish_failures = 0;
    for n in &names {
        let (pod, target) = pod_volume(&pods, n);
        let started = Instant::now();
        let result = client
            .node_unpublish_volume(pod.unpublish_request(&target))
            .await;
        unpublish.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Err(status) = result {
            if unpublish_failures == 0 {
                eprintln!(
                    "[bench] {} NodeUnpublishVolume failed: {}",
                    kind.name(),
                    status.message()
                );
            }
            unpublish_failures += 1;
        }
    }
    figures.insert("unpublish_failures".into(), f64::from(unpublish_failures));
    figures.insert("mounts_left".into(), mounts_under(pid, &pods)? as f64);
    figures.insert("peak_rss_mib".into(), peak_rss_mib(pid));
    for (call, mut ms) in [
        ("publish", publish),
        ("republish", republish),
        ("unpublish", unpublish),
    ] {
        ms.sort_by(f64::total_cmp);
        figures.insert(format!("{call}_p50_ms"), quantile(&ms, 0.5));
        figures.insert(format!("{call}_p99_ms"), quantile(&ms, 0.99));
        figures.insert(
            format!("{call}_max_ms"),
            ms.last().copied().unwrap_or(f64::NAN),
        );
    }
    Ok(figures)
}

/// Pod `name`'s volume and its target path under `pods`, as kubelet lays it out.
fn pod_volume<'a>(pods: &Path, (name, uid): &'a (String, String)) -> (PodVolume<'a>, PathBuf) {
    let pod = PodVolume {
        pod: name,
        namespace: "bench",
        uid,
        service_account: "default",
        volume: "spiffe",
    };
    let target = pods.join(format!("{uid}/volumes/kubernetes.io~csi/spiffe/mount"));
    (pod, target)
}

async fn timed_publish(
    client: &mut NodeClient<Channel>,
    pod: &PodVolume<'_>,
    target: &Path,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    client
        .node_publish_volume(pod.publish_request(target))
        .await
        .with_context(|| format!("NodePublishVolume {}", target.display()))?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Mount points below `dir` in the mount namespace of process `pid`.
fn mounts_under(pid: u32, dir: &Path) -> anyhow::Result<usize> {
    let prefix = dir.to_str().context("non-UTF-8 path")?;
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|mount_point| mount_point.starts_with(prefix))
        .count())
}

/// What the CSI table shows: (label, figure).
const ROWS: &[(&str, &str)] = &[
    ("publish p50, ms", "publish_p50_ms"),
    ("publish p99, ms", "publish_p99_ms"),
    ("publish max, ms", "publish_max_ms"),
    ("republish p50, ms", "republish_p50_ms"),
    ("republish p99, ms", "republish_p99_ms"),
    ("unpublish p50, ms", "unpublish_p50_ms"),
    ("unpublish p99, ms", "unpublish_p99_ms"),
    ("unpublish max, ms", "unpublish_max_ms"),
    ("RSS idle, MiB", "rss_idle_mib"),
    ("RSS with every volume published, MiB", "rss_mib"),
    ("peak RSS, MiB", "peak_rss_mib"),
    ("mounts after publish", "mounts_published"),
    ("mounts after republish", "mounts_republished"),
    ("failed unpublishes", "unpublish_failures"),
    ("mounts left after unpublish", "mounts_left"),
];

/// Prints the CSI table and returns its medians as JSON.
pub fn print_table(runs: &BTreeMap<&'static str, Vec<CsiFigures>>, volumes: usize) -> Value {
    println!(
        "\n### spiffe-csi-driver: ours vs the Go driver ({volumes} volumes published, republished, unpublished, one call at a time)\n"
    );
    print_rows(runs, ROWS)
}

/// Prints one table row per `(label, figure)` of `rows` (each run, the medians and
/// ours/Go); returns the medians as JSON.
pub fn print_rows(runs: &BTreeMap<&'static str, Vec<CsiFigures>>, rows: &[(&str, &str)]) -> Value {
    println!("| figure | ours (runs) | ours median | Go (runs) | Go median | ours/Go |");
    println!("|---|---|---|---|---|---|");
    let mut medians = serde_json::Map::new();
    for (label, key) in rows {
        let values = |driver: &str| -> Vec<f64> {
            runs.get(driver)
                .into_iter()
                .flatten()
                .filter_map(|f| f.get(*key).copied())
                .collect()
        };
        let (ours, go) = (values("ours"), values("go"));
        let (mo, mg) = (median(&ours), median(&go));
        let ratio = if mg > 0.0 && mo.is_finite() {
            format!("{:.2}", mo / mg)
        } else {
            "-".to_owned()
        };
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {label} | {} | {mo:.2} | {} | {mg:.2} | {ratio} |",
            list(&ours),
            list(&go)
        );
        medians.insert((*label).to_owned(), json!({"ours": mo, "go": mg}));
    }
    Value::Object(medians)
}
