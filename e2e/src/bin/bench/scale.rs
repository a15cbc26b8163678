//! Scenario 6, the scale check: how many pods this machine's single etcd and
//! kube-apiserver hold, and where they, not the operator, become the limit.
//!
//! Pods are added in steps (`--scale-steps`). At each step: how fast the API server took
//! the new pods (16 creates in flight), a bare client's paginated LIST of every pod (what
//! any controller does when it starts; pages of 500, the body not decoded), the resident
//! memory of kube-apiserver and etcd and the size of etcd's database; then ours, started
//! on a fresh SPIRE server: the time until its caches hold every pod (its
//! `spire_operator_caches_synced` gauge), until the server holds every entry, its CPU
//! seconds and peak RSS. A step that fails ends the check, and its error is printed.

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::world::World;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::probe::{self, Reader, spire_rpcs};
use crate::{Args, Running, Setup, TRUST_DOMAIN};

/// The figures of one step.
#[derive(Debug, Default, serde::Serialize)]
struct Step {
    pods: usize,
    entries: usize,
    /// Pods the API server created per second while this step's pods were added.
    creates_per_second: f64,
    /// A bare client's LIST of every pod: seconds and MiB of JSON.
    list_seconds: f64,
    list_mib: f64,
    apiserver_rss_mib: f64,
    etcd_rss_mib: f64,
    etcd_db_mib: f64,
    /// Ours: start to caches synced, start to every entry on the server.
    ours_synced_seconds: f64,
    ours_converged_seconds: f64,
    ours_cpu_seconds: f64,
    ours_peak_rss_mib: f64,
}

/// Runs the scale check and prints its table; returns its JSON.
pub async fn run(args: &Args) -> anyhow::Result<Value> {
    let mut steps: Vec<usize> = args.scale_steps.clone();
    steps.sort_unstable();
    steps.dedup();
    let world = World::start(TRUST_DOMAIN).await?;
    for n in 0..args.nodes {
        world.node(&format!("node-{n}")).await?;
    }
    for c in 0..args.csids {
        let setup = Setup {
            pods: 0,
            nodes: args.nodes,
            csids: args.csids,
        };
        world
            .apply_csid(&Setup::csid_name(c), setup.csid_spec(c, ""))
            .await?;
    }
    let mut done: Vec<Step> = Vec::new();
    let mut failure = None;
    let mut have = 0;
    for &pods in &steps {
        match step(args, &world, have, pods).await {
            Ok(figures) => {
                eprintln!("[bench] scale {pods} pods: {}", json!(figures));
                done.push(figures);
                have = pods;
            }
            Err(e) => {
                eprintln!("[bench] scale {pods} pods failed: {e:#}");
                failure = Some(format!("{pods} pods: {e:#}"));
                break;
            }
        }
    }
    print_table(args, &done, failure.as_deref());
    Ok(json!({"steps": done, "failure": failure}))
}

/// Grows the cluster from `have` to `pods` pods and measures.
async fn step(args: &Args, world: &World, have: usize, pods: usize) -> anyhow::Result<Step> {
    let setup = Setup {
        pods,
        nodes: args.nodes,
        csids: args.csids,
    };
    for ns in have.div_ceil(100)..pods.div_ceil(100) {
        world
            .namespace(&format!("ns-{ns}"), &[("bench", "yes")])
            .await?;
    }
    let creates_per_second = crate::create_pods(world, &setup, have..pods).await?;

    let (list_seconds, list_bytes) = list_all_pods(&world.control_plane.client()).await?;
    let control_plane = &world.control_plane;
    let db = control_plane.etcd_data_dir().join("member/snap/db");
    let etcd_db_mib = std::fs::metadata(&db)
        .with_context(|| format!("reading {}", db.display()))?
        .len() as f64
        / MIB;

    let (spire, prometheus, _datastore) = crate::fresh_spire(args).await?;
    let reader = Reader::new(spire.client());
    let rpcs_before = spire_rpcs(&prometheus).await?;
    let own_before = reader.own_calls();
    let started = Instant::now();
    let operator = crate::start_ours(args, control_plane, &spire).await?;
    e2e::wait::until(
        "the operator's caches to sync",
        Duration::from_secs(600),
        Duration::from_millis(50),
        || async {
            let metrics = operator.metrics().await?;
            Ok((metrics.value("spire_operator_caches_synced", &[]) >= 1.0).then_some(()))
        },
    )
    .await?;
    let ours_synced_seconds = started.elapsed().as_secs_f64();
    let tool = Running::Ours(operator);
    let cold = crate::scenarios::cold(
        &setup,
        &tool,
        &reader,
        &prometheus,
        started,
        &rpcs_before,
        own_before,
    )
    .await?;
    let number = |key: &str| cold.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
    Ok(Step {
        pods,
        entries: setup.entries(),
        creates_per_second,
        list_seconds,
        list_mib: list_bytes as f64 / MIB,
        apiserver_rss_mib: probe::rss_mib(control_plane.apiserver_pid()),
        etcd_rss_mib: probe::rss_mib(control_plane.etcd_pid()),
        etcd_db_mib,
        ours_synced_seconds,
        ours_converged_seconds: number("seconds"),
        ours_cpu_seconds: number("cpu_seconds"),
        ours_peak_rss_mib: number("peak_rss_mib"),
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// Lists every pod in pages of 500 as raw JSON: (seconds, bytes).
async fn list_all_pods(client: &kube::Client) -> anyhow::Result<(f64, usize)> {
    #[derive(Deserialize)]
    struct Page {
        metadata: PageMeta,
    }
    #[derive(Deserialize)]
    struct PageMeta {
        #[serde(rename = "continue")]
        token: Option<String>,
    }
    let started = Instant::now();
    let mut bytes = 0;
    let mut token: Option<String> = None;
    loop {
        let mut uri = "/api/v1/pods?limit=500".to_owned();
        if let Some(token) = &token {
            uri.push_str("&continue=");
            uri.push_str(&percent_encode(token));
        }
        let request = http::Request::get(uri).body(Vec::new())?;
        let text = client.request_text(request).await.context("listing pods")?;
        bytes += text.len();
        let page: Page = serde_json::from_str(&text).context("a page of pods")?;
        match page.metadata.token.filter(|t| !t.is_empty()) {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    Ok((started.elapsed().as_secs_f64(), bytes))
}

/// Query-string encoding: everything but unreserved characters as %XX.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_table(args: &Args, steps: &[Step], failure: Option<&str>) {
    println!("### Scale check: one etcd and one kube-apiserver on this machine\n");
    println!(
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "- {} nodes, {} ClusterSPIFFEIDs; ours on a fresh SPIRE server per step (datastore {:?})",
        args.nodes, args.csids, args.datastore
    );
    if let Some(failure) = failure {
        println!("- stopped at {failure}");
    }
    println!();
    println!(
        "| pods | entries | API creates/s | LIST all pods, s | LIST, MiB | kube-apiserver RSS, MiB | etcd RSS, MiB | etcd db, MiB | ours: caches synced, s | ours: converged, s | ours: CPU, s | ours: peak RSS, MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in steps {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {:.2} | {:.0} |",
            s.pods,
            s.entries,
            s.creates_per_second,
            s.list_seconds,
            s.list_mib,
            s.apiserver_rss_mib,
            s.etcd_rss_mib,
            s.etcd_db_mib,
            s.ours_synced_seconds,
            s.ours_converged_seconds,
            s.ours_cpu_seconds,
            s.ours_peak_rss_mib
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_are_encoded_for_a_query() {
        assert_eq!(percent_encode("eyJ2Ijoi+/=a-_.~"), "eyJ2Ijoi%2B%2F%3Da-_.~");
    }
}
