//! The measured scenarios. Each takes a converged (or, for cold convergence, empty) SPIRE
//! server with one tool running against it and returns its figures as named numbers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::world::World;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use spire_operator::spire::api::types;
use tokio::sync::oneshot;

use crate::probe::{self, Reader, cpu_seconds, rpc_delta, spire_rpcs};
use crate::{Args, Running, Setup};

/// How often the benchmark looks at the server while it waits for an outcome.
const POLL: Duration = Duration::from_millis(25);
/// Template change polls list every entry, so less often.
const LIST_POLL: Duration = Duration::from_millis(100);

/// Figures of one scenario in one run.
pub type Figures = BTreeMap<String, Value>;

/// Writes RPCs (batch create, update, delete) in a delta.
fn writes(delta: &BTreeMap<String, u64>) -> u64 {
    delta
        .iter()
        .filter(|(k, _)| k.starts_with("batch_"))
        .map(|(_, v)| v)
        .sum()
}

/// Tool RPCs: the delta without the benchmark's own list and count calls.
fn tool_rpcs(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    own: ((u64, u64), (u64, u64)),
) -> BTreeMap<String, u64> {
    let mut delta = rpc_delta(before, after);
    let ((l0, c0), (l1, c1)) = own;
    for (method, mine) in [("list_entries", l1 - l0), ("count_entries", c1 - c0)] {
        if let Some(v) = delta.get_mut(method) {
            *v = v.saturating_sub(mine);
        }
    }
    delta.retain(|_, v| *v > 0);
    delta
}

/// Cold convergence: from the tool's start (`started`) until the server holds exactly
/// `want` entries.
pub async fn cold(
    setup: &Setup,
    tool: &Running,
    reader: &Reader,
    prometheus: &str,
    started: Instant,
    rpcs_before: &BTreeMap<String, f64>,
    own_before: (u64, u64),
) -> anyhow::Result<Figures> {
    let want = setup.entries();
    let mut last_change = (0, Instant::now());
    loop {
        // The server's counters until they reach `want`, then a count to confirm: a
        // CountEntries reads every entry inside SPIRE and would compete with the writes
        // being timed (the floor, timed by its own client, pays no such cost).
        let balance = probe::entry_balance(prometheus).await?;
        let mut pause = POLL;
        if balance >= want as i64 {
            let looked = Instant::now();
            if reader.count().await? == want {
                break;
            }
            pause = next_look(POLL, looked.elapsed());
        }
        if balance != last_change.0 {
            last_change = (balance, Instant::now());
        }
        anyhow::ensure!(
            last_change.1.elapsed() < Duration::from_secs(300),
            "{} stuck at {balance} of {want} entries created for 5 minutes",
            tool.name()
        );
        tokio::time::sleep(pause).await;
    }
    let took = started.elapsed().as_secs_f64();
    let rpcs = tool_rpcs(
        rpcs_before,
        &spire_rpcs(prometheus).await?,
        (own_before, reader.own_calls()),
    );
    Ok(Figures::from([
        ("seconds".into(), json!(took)),
        ("cpu_seconds".into(), json!(cpu_seconds(tool.pid()))),
        (
            "peak_rss_mib".into(),
            json!(probe::peak_rss_mib(tool.pid())),
        ),
        ("write_rpcs".into(), json!(writes(&rpcs))),
        ("rpcs".into(), json!(rpcs)),
    ]))
}

/// Idle: nothing changes for `duration`; what the tool and the server spend meanwhile.
pub async fn idle(
    tool: &Running,
    server_pid: u32,
    prometheus: &str,
    duration: Duration,
    baseline_window: Duration,
) -> anyhow::Result<Figures> {
    let rpcs_before = spire_rpcs(prometheus).await?;
    let (tool_cpu, server_cpu) = (cpu_seconds(tool.pid()), cpu_seconds(server_pid));
    tokio::time::sleep(duration).await;
    let tool_cpu = cpu_seconds(tool.pid()) - tool_cpu;
    let server_cpu = cpu_seconds(server_pid) - server_cpu;
    let rpcs = rpc_delta(&rpcs_before, &spire_rpcs(prometheus).await?);
    // What the server spends on its own (its entry cache, its CA) with this many
    // entries: the same server with the tool stopped, scaled to `duration`.
    let window = duration.min(baseline_window).max(Duration::from_secs(1));
    let baseline = {
        let _stopped = Stopped::new(tool.pid())?;
        let before = cpu_seconds(server_pid);
        tokio::time::sleep(window).await;
        (cpu_seconds(server_pid) - before) * duration.as_secs_f64() / window.as_secs_f64()
    };
    Ok(Figures::from([
        ("seconds".into(), json!(duration.as_secs_f64())),
        ("cpu_seconds".into(), json!(tool_cpu)),
        ("server_cpu_seconds".into(), json!(server_cpu)),
        ("server_baseline_cpu_seconds".into(), json!(baseline)),
        (
            "server_cpu_caused_seconds".into(),
            json!((server_cpu - baseline).max(0.0)),
        ),
        ("rss_mib".into(), json!(probe::rss_mib(tool.pid()))),
        (
            "list_entries".into(),
            json!(rpcs.get("list_entries").copied().unwrap_or(0)),
        ),
        ("write_rpcs".into(), json!(writes(&rpcs))),
        ("rpcs".into(), json!(rpcs)),
    ]))
}

/// A process stopped with SIGSTOP until this is dropped.
struct Stopped(rustix::process::Pid);

impl Stopped {
    fn new(pid: u32) -> anyhow::Result<Self> {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("no such pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::STOP)
            .with_context(|| format!("stopping pid {pid:?}"))?;
        Ok(Self(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, rustix::process::Signal::CONT);
    }
}

/// How long to wait before looking at the server again after a look that took `took`:
/// at least `floor`, and long enough that the benchmark's own full reads (a CountEntries
/// is a full listing inside SPIRE) take at most a tenth of the server's time at large
/// sizes, instead of competing with the writes being timed.
fn next_look(floor: Duration, took: Duration) -> Duration {
    floor.max(took * 9)
}

/// Template change: edit the first ClusterSPIFFEID's spiffeIDTemplate; time until every
/// one of its entries carries the new ID and no entry the old one.
pub async fn template_change(
    setup: &Setup,
    world: &World,
    tool: &Running,
    reader: &Reader,
    prometheus: &str,
) -> anyhow::Result<Figures> {
    let rpcs_before = spire_rpcs(prometheus).await?;
    let own_before = reader.own_calls();
    let cpu_before = cpu_seconds(tool.pid());
    let started = Instant::now();
    world
        .apply_csid(&Setup::csid_name(0), setup.csid_spec(0, "v2"))
        .await?;
    let (new_path, old_path) = ("/c0-v2/", "/c0/");
    loop {
        let looked = Instant::now();
        let entries = reader.list().await?;
        let took = looked.elapsed();
        let ids = entries
            .iter()
            .filter_map(|e| e.spiffe_id.as_ref().map(|id| id.path.as_str()));
        let (mut new, mut old) = (0, 0);
        for path in ids {
            new += usize::from(path.starts_with(new_path));
            old += usize::from(path.starts_with(old_path));
        }
        if new == setup.pods && old == 0 && entries.len() == setup.entries() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{}: after 10 minutes {new} of {} entries renamed, {old} old ones left",
            tool.name(),
            setup.pods
        );
        // Short enough to resolve a change that takes under a second at 1000 pods,
        // while the benchmark's listing takes at most a quarter of the server's time.
        tokio::time::sleep(LIST_POLL.max(took * 3)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(tool.pid()) - cpu_before;
    let rpcs = tool_rpcs(
        &rpcs_before,
        &spire_rpcs(prometheus).await?,
        (own_before, reader.own_calls()),
    );
    Ok(Figures::from([
        ("seconds".into(), json!(took)),
        ("cpu_seconds".into(), json!(cpu)),
        ("write_rpcs".into(), json!(writes(&rpcs))),
        ("rpcs".into(), json!(rpcs)),
    ]))
}

/// What a churned pod waits for.
enum Awaited {
    Created(oneshot::Sender<Instant>),
    Gone(oneshot::Sender<Instant>),
}

type Pending = Arc<Mutex<HashMap<String, Awaited>>>;

/// Churn: pods created at `rate` per second for `duration`, each deleted `lifetime`
/// after its creation (or once its entries exist, if later). Per pod, the latency from
/// the API server's answer to the write until its entries all exist (and are all gone).
pub async fn churn(
    setup: &Setup,
    world: &World,
    reader: &Reader,
    args: &Args,
    rate: u32,
    tag: &str,
) -> anyhow::Result<Figures> {
    let duration = Duration::from_secs(args.churn_secs);
    let lifetime = Duration::from_secs(args.churn_lifetime_secs);
    let poll = Duration::from_millis(args.churn_poll_ms.max(1));
    let pending: Pending = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn({
        let reader = reader.clone();
        watch(
            move |uids: Vec<String>| {
                let reader = reader.clone();
                async move { reader.for_pods(&uids).await }
            },
            pending.clone(),
            setup.csids,
            poll,
            failures.clone(),
        )
    });
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (duration.as_secs_f64() * f64::from(rate)).round() as usize;
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        ticker.tick().await;
        let (client, pending) = (world.client.clone(), pending.clone());
        let name = format!("churn-{tag}-{i}");
        let pod = setup.pod("ns-0", &name, i);
        tasks.spawn(async move { one_pod(client, pending, pod, lifetime).await });
    }
    let (mut create, mut delete, mut lost) = (Vec::new(), Vec::new(), 0usize);
    while let Some(result) = tasks.join_next().await {
        match result.context("churn task panicked")?? {
            (Some(c), Some(d)) => {
                create.push(c);
                delete.push(d);
            }
            (c, d) => {
                create.extend(c);
                delete.extend(d);
                lost += 1;
            }
        }
    }
    watcher.abort();
    let stats = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        json!({
            "p50": probe::quantile(&v, 0.5),
            "p99": probe::quantile(&v, 0.99),
            "max": v.last().copied().unwrap_or(f64::NAN),
            "n": v.len(),
        })
    };
    Ok(Figures::from([
        ("rate".into(), json!(rate)),
        ("pods".into(), json!(total)),
        ("timed_out".into(), json!(lost)),
        (
            "observer_errors".into(),
            json!(failures.load(Ordering::Relaxed)),
        ),
        ("create".into(), stats(create)),
        ("delete".into(), stats(delete)),
    ]))
}

/// How long a churned pod's entries may take to appear or go before it counts as lost.
const CHURN_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates one pod, waits for its entries, deletes it, waits for them to go.
async fn one_pod(
    client: kube::Client,
    pending: Pending,
    pod: Pod,
    lifetime: Duration,
) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {namespace}/{name}"))?;
    let written = Instant::now();
    let uid = created.uid().context("created pod without uid")?;
    let (tx, rx) = oneshot::channel();
    pending
        .lock()
        .expect("pending lock")
        .insert(uid.clone(), Awaited::Created(tx));
    let create = tokio::time::timeout(CHURN_TIMEOUT, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .map(|seen| seen.duration_since(written).as_secs_f64());
    pending.lock().expect("pending lock").remove(&uid);
    tokio::time::sleep(lifetime.saturating_sub(written.elapsed())).await;
    // At once: no kubelet is there to finish a graceful deletion.
    pods.delete(
        &name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("deleting pod {namespace}/{name}"))?;
    let deleted = Instant::now();
    let (tx, rx) = oneshot::channel();
    pending
        .lock()
        .expect("pending lock")
        .insert(uid.clone(), Awaited::Gone(tx));
    let delete = tokio::time::timeout(CHURN_TIMEOUT, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .map(|seen| seen.duration_since(deleted).as_secs_f64());
    pending.lock().expect("pending lock").remove(&uid);
    Ok((create, delete))
}

/// Every `poll`, one look (`list`: the filtered ListEntries of [`Reader::for_pods`]) for
/// all pods awaited; resolves the waits that are met. A listing that fails (the server busy past the client's timeout)
/// is counted in `failures` and tried again at the next poll: the waits stay open, so a
/// failed look delays what it would have seen instead of losing every later pod.
async fn watch<F, Fut>(
    list: F,
    pending: Pending,
    per_pod: usize,
    poll: Duration,
    failures: Arc<AtomicU64>,
) where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<types::Entry>>>,
{
    loop {
        tokio::time::sleep(poll).await;
        let uids: Vec<String> = pending
            .lock()
            .expect("pending lock")
            .keys()
            .cloned()
            .collect();
        if uids.is_empty() {
            continue;
        }
        let entries = match list(uids.clone()).await {
            Ok(entries) => entries,
            Err(e) => {
                if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!(
                        "[bench] churn: listing the pending pods' entries failed (retrying; counted as observer_errors): {e:#}"
                    );
                }
                continue;
            }
        };
        let seen = Instant::now();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for entry in &entries {
            if let Some(uid) = probe::pod_uid(entry) {
                *counts.entry(uid).or_default() += 1;
            }
        }
        let mut pending = pending.lock().expect("pending lock");
        for uid in uids {
            let have = counts.get(uid.as_str()).copied().unwrap_or(0);
            let met = match pending.get(&uid) {
                Some(Awaited::Created(_)) => have >= per_pod,
                Some(Awaited::Gone(_)) => have == 0,
                None => false,
            };
            if met {
                match pending.remove(&uid) {
                    Some(Awaited::Created(tx) | Awaited::Gone(tx)) => {
                        let _ = tx.send(seen);
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_of(uid: &str) -> types::Entry {
        types::Entry {
            selectors: vec![types::Selector {
                r#type: "k8s".into(),
                value: format!("pod-uid:{uid}"),
            }],
            ..Default::default()
        }
    }

    /// A listing that fails once does not end the watch: the pod awaited is still seen
    /// when its entries are there (before, the first error ended the watch and every
    /// later pod counted as timed out).
    #[tokio::test]
    async fn a_failed_listing_is_tried_again() {
        let pending: Pending = Arc::default();
        let (tx, rx) = oneshot::channel();
        pending
            .lock()
            .unwrap()
            .insert("u-1".into(), Awaited::Created(tx));
        let calls = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let list = {
            let calls = calls.clone();
            move |uids: Vec<String>| {
                let call = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    anyhow::ensure!(call > 0, "deadline exceeded");
                    Ok(uids
                        .iter()
                        .flat_map(|u| [entry_of(u), entry_of(u)])
                        .collect())
                }
            }
        };
        let watcher = tokio::spawn(watch(list, pending.clone(), 2, POLL, failures.clone()));
        let seen = tokio::time::timeout(Duration::from_secs(5), rx).await;
        watcher.abort();
        assert!(matches!(seen, Ok(Ok(_))), "the pod was not seen: {seen:?}");
        assert_eq!(failures.load(Ordering::Relaxed), 1);
        assert!(pending.lock().unwrap().is_empty());
    }
}
