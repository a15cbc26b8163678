//! csi-sanity v5.4.0 against our driver and against the Go reference spiffe-csi-driver
//! v0.2.6, side by side. Both results are asserted exactly: our pass count (a regression
//! that loses specs fails), and the Go driver's known failures, so the comparison the
//! README prints is a tested fact. A Go driver that cannot be run fails the test.

use std::path::Path;
use std::process::Command;

use e2e::WorkDir;
use e2e::tools::tool;

use e2e::csi::Driver;

use crate::driver::{our_driver, spawn_controller_stand_in};

/// Specs csi-sanity cannot run against a node-only plugin, and why:
/// - `Controller Server`: every spec tagged so exercises the Controller service
///   (CreateVolume, ListVolumes, snapshots, expansion, ...), which we do not offer.
/// - `GroupController`: the volume group snapshot service, a controller-side service
///   neither driver offers. Unskipped, its first spec skips itself after asking the
///   driver for its capabilities, which made it the one spec that fails when the first
///   connection of a run is slow (seen twice under a loaded `make test`, Go driver only).
/// - `should remove target path`, `does not exist on the specified path`: these Node
///   specs first create a volume with the Controller's CreateVolume.
const SKIP: &str = "Controller Server|GroupController|should remove target path|does not exist on the specified path";

/// What csi-sanity v5.4.0 reports for our driver with [`SKIP`]: every runnable spec
/// passes. (passed, failed, skipped, pending)
const OURS: (u32, u32, u32, u32) = (13, 0, 78, 1);

/// The Go driver v0.2.6 with the same skips: NodeGetVolumeStats validates nothing and
/// never answers NotFound, so these three specs fail.
const GO: (u32, u32, u32, u32) = (10, 3, 78, 1);
const GO_FAILURES: [&str; 3] = [
    "Node Service NodeGetVolumeStats [It] should fail when no volume id is provided",
    "Node Service NodeGetVolumeStats [It] should fail when no volume path is provided",
    "Node Service NodeGetVolumeStats [It] should fail when volume is not found",
];

/// One csi-sanity run: the ginkgo summary counts and the names of failed specs.
#[derive(Debug, Default)]
struct Summary {
    passed: u32,
    failed: u32,
    skipped: u32,
    pending: u32,
    failures: Vec<String>,
}

impl Summary {
    fn parse(output: &str) -> anyhow::Result<Self> {
        // "FAIL! -- 3 Passed | 82 Failed | 1 Pending | 6 Skipped" (or "SUCCESS! -- ...")
        let line = output
            .lines()
            .find(|l| l.contains(" Passed | ") && l.contains(" Skipped"))
            .ok_or_else(|| anyhow::anyhow!("no ginkgo summary in csi-sanity output:\n{output}"))?;
        let mut summary = Summary::default();
        for part in line.split(['|', '-']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse() else { continue };
            match kind {
                "Passed" => summary.passed = n,
                "Failed" => summary.failed = n,
                "Skipped" => summary.skipped = n,
                "Pending" => summary.pending = n,
                _ => {}
            }
        }
        summary.failures = output
            .lines()
            .filter_map(|l| l.trim().strip_prefix("[FAIL] "))
            .map(str::to_owned)
            .collect();
        Ok(summary)
    }
}

/// Runs csi-sanity on `socket`, with mount and staging dirs under `pods`.
async fn csi_sanity(
    socket: &Path,
    controller: &Path,
    pods: &Path,
) -> anyhow::Result<(Summary, String)> {
    let mut cmd = Command::new(tool("csi-sanity")?);
    cmd.arg(format!("--csi.endpoint=unix://{}", socket.display()))
        .arg(format!(
            "--csi.controllerendpoint=unix://{}",
            controller.display()
        ))
        .arg(format!(
            "--csi.mountdir={}",
            pods.join("sanity-mount").display()
        ))
        .arg(format!(
            "--csi.stagingdir={}",
            pods.join("sanity-staging").display()
        ))
        .arg("--csi.testvolumeaccesstype=mount")
        .arg(format!("--ginkgo.skip={SKIP}"))
        .arg("--ginkgo.no-color");
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((Summary::parse(&text)?, text))
}

struct Run {
    summary: Summary,
    output: String,
    rss_kib: Option<u64>,
}

async fn run_against(
    name: &str,
    binary: &Path,
    args: impl Fn(&Path, &Path, &Path) -> Vec<String>,
) -> anyhow::Result<Run> {
    let work = WorkDir::new(name)?;
    let pods = work.join("pods");
    let agent = work.join("agent");
    std::fs::create_dir_all(&pods)?;
    std::fs::create_dir_all(&agent)?;
    // The Go driver does not create the socket's directory.
    std::fs::create_dir_all(work.join("csi"))?;
    std::fs::write(agent.join("spire-agent.sock"), "")?;
    let socket = work.join("csi/csi.sock");
    let driver = Driver::start(
        name,
        binary,
        &args(&socket, &agent, &pods),
        &socket,
        &work.join("driver.log"),
    )
    .await?;
    let controller_socket = work.join("controller.sock");
    let controller = spawn_controller_stand_in(&controller_socket, &driver).await?;
    let (summary, output) = csi_sanity(&driver.socket, &controller_socket, &pods).await?;
    controller.abort();
    let rss_kib = driver.rss_kib();
    Ok(Run {
        summary,
        output,
        rss_kib,
    })
}

fn print_row(name: &str, run: &Run) {
    let s = &run.summary;
    println!(
        "| {name:<28} | {:>6} | {:>6} | {:>7} | {:>7} | {:>9} |",
        s.passed,
        s.failed,
        s.skipped,
        s.pending,
        run.rss_kib.map_or("-".into(), |k| format!("{k} KiB"))
    );
    for f in &s.failures {
        println!("|   failed: {f}");
    }
}

/// Under a loaded `make test`, csi-sanity's first connection (its first spec's
/// BeforeEach dials the driver and the controller stand-in this process serves) has
/// timed out after 60 s a few times, with the Go driver and once with ours, while every
/// later spec of the same run connected at once. Such a run is repeated once, saying so;
/// a second timeout, and any other failure, stays a failure.
async fn run_once_more_on_timeout(
    name: &str,
    binary: &Path,
    args: impl Fn(&Path, &Path, &Path) -> Vec<String>,
) -> anyhow::Result<Run> {
    let run = run_against(name, binary, &args).await?;
    if !run.output.contains("Connection timed out") {
        return Ok(run);
    }
    println!("{name}: csi-sanity's first connection timed out; running it again");
    run_against(name, binary, &args).await
}

// Two workers: the controller stand-in csi-sanity dials is served by this process, and
// must not wait for the test task to yield (on a loaded machine a current-thread runtime
// once left csi-sanity's first connection unanswered for its whole 60 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_every_spec_against_ours_and_fails_the_go_driver_on_volume_stats()
-> anyhow::Result<()> {
    // Ours gets the Go driver's own flag spelling (single dash, node id from
    // $MY_NODE_NAME): its DaemonSet args must work unchanged with our image.
    let ours_args = |socket: &Path, agent: &Path, pods: &Path| {
        vec![
            format!("-csi-socket-path={}", socket.display()),
            "-workload-api-socket-dir".into(),
            agent.display().to_string(),
            "-plugin-name=csi.spiffe.io".into(),
            format!("--kubelet-pods-dir={}", pods.display()),
        ]
    };
    let ours = run_once_more_on_timeout("csi-sanity-ours", &our_driver()?, ours_args).await?;
    let go_args = |socket: &Path, agent: &Path, _: &Path| {
        vec![
            format!("-csi-socket-path={}", socket.display()),
            format!("-workload-api-socket-dir={}", agent.display()),
        ]
    };
    let go_driver = tool("spiffe-csi-driver")?;
    let go = run_once_more_on_timeout("csi-sanity-go", &go_driver, go_args).await?;

    println!("csi-sanity v5.4.0, --ginkgo.skip='{SKIP}'");
    println!("| driver                       | passed | failed | skipped | pending | RSS after |");
    print_row("spiffe-csi-driver (Rust)", &ours);
    print_row("spiffe-csi v0.2.6 (Go)", &go);
    let counts = |s: &Summary| (s.passed, s.failed, s.skipped, s.pending);
    assert_eq!(
        counts(&ours.summary),
        OURS,
        "csi-sanity against our driver (passed, failed, skipped, pending):\n{}",
        ours.output
    );
    assert_eq!(
        counts(&go.summary),
        GO,
        "csi-sanity against the Go driver (passed, failed, skipped, pending):\n{}",
        go.output
    );
    let mut failures = go.summary.failures.clone();
    failures.sort();
    assert_eq!(
        failures, GO_FAILURES,
        "the Go driver's failures:\n{}",
        go.output
    );
    Ok(())
}
