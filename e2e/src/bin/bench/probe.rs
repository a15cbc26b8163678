//! What the benchmark reads off the processes and the SPIRE server: CPU time and RSS
//! from `/proc`, the server's RPC counters from its Prometheus telemetry, and entries
//! through the admin socket (counting its own calls, so that they can be told apart
//! from the tool's).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use e2e::operator::MetricsSnapshot;
use spire_operator::spire::SpireClient;
use spire_operator::spire::api::{entry, types};

/// Linux reports `/proc/<pid>/stat` times in USER_HZ ticks, 100 per second on every
/// architecture the kernel exposes to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds a process has used so far; 0 once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) / TICKS_PER_SECOND,
        _ => 0.0,
    }
}

/// Peak RSS (`VmHWM`) in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    e2e::process::status_kib(pid, "VmHWM:").map_or(0.0, |k| k as f64 / 1024.0)
}

/// Current RSS (`VmRSS`) in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    e2e::process::status_kib(pid, "VmRSS:").map_or(0.0, |k| k as f64 / 1024.0)
}

/// The SPIRE server's RPC counters by method (`batch_create_entry`, `list_entries`,
/// ...), all statuses summed.
pub async fn spire_rpcs(prometheus_addr: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let snapshot = server_metrics(prometheus_addr).await?;
    let mut rpcs = BTreeMap::new();
    for sample in snapshot.samples() {
        let Some(rest) = sample.name.strip_prefix("spire_server_rpc_") else {
            continue;
        };
        if rest.contains("elapsed_time") {
            continue;
        }
        // spire_server_rpc_entry_v1_entry_list_entries -> list_entries
        let method = rest
            .split_once("_v1_")
            .and_then(|(_, m)| m.split_once('_'))
            .map_or(rest, |(_, m)| m);
        *rpcs.entry(method.to_owned()).or_insert(0.0) += sample.value;
    }
    Ok(rpcs)
}

/// Entries the SPIRE server's datastore has created minus those it has deleted, from its
/// telemetry counters (`spire_server_datastore_registration_entry_create` and `_delete`,
/// status OK). Unlike CountEntries, which reads every entry, this costs the server
/// nothing; a create that returned an existing entry counts too, so a balance that
/// reaches a figure is a reason to count, not the count.
pub async fn entry_balance(prometheus_addr: &str) -> anyhow::Result<i64> {
    let snapshot = server_metrics(prometheus_addr).await?;
    let ok = |name: &str| -> i64 {
        snapshot
            .samples()
            .iter()
            .filter(|s| s.name == name && s.labels.get("status").map(String::as_str) == Some("OK"))
            .map(|s| s.value as i64)
            .sum()
    };
    Ok(ok("spire_server_datastore_registration_entry_create")
        - ok("spire_server_datastore_registration_entry_delete"))
}

/// The SPIRE server's telemetry, as its Prometheus endpoint serves it now.
async fn server_metrics(prometheus_addr: &str) -> anyhow::Result<MetricsSnapshot> {
    let (status, body) = e2e::http::get(prometheus_addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "SPIRE telemetry answered {status}");
    MetricsSnapshot::parse(&body).context("SPIRE server telemetry")
}

/// `after - before` per method, without the zero differences.
pub fn rpc_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)).round(),
            )
        })
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| (k, v as u64))
        .collect()
}

/// Reads entries for the benchmark and counts its own calls.
#[derive(Clone)]
pub struct Reader {
    client: SpireClient,
    lists: Arc<AtomicU64>,
    counts: Arc<AtomicU64>,
}

impl Reader {
    pub fn new(client: SpireClient) -> Self {
        Self {
            client,
            lists: Arc::default(),
            counts: Arc::default(),
        }
    }

    /// ListEntries and CountEntries calls made so far by the benchmark itself.
    pub fn own_calls(&self) -> (u64, u64) {
        (
            self.lists.load(Ordering::Relaxed),
            self.counts.load(Ordering::Relaxed),
        )
    }

    pub async fn count(&self) -> anyhow::Result<usize> {
        self.counts.fetch_add(1, Ordering::Relaxed);
        Ok(self.client.count_entries().await?)
    }

    pub async fn list(&self) -> anyhow::Result<Vec<types::Entry>> {
        let entries = self.client.list_entries().await?;
        self.lists
            .fetch_add(pages(entries.len()), Ordering::Relaxed);
        Ok(entries)
    }

    /// Entries holding any of the `k8s:pod-uid:<uid>` selectors of `uids`, asked
    /// [`SELECTORS_PER_LIST`] selectors at a time.
    pub async fn for_pods(&self, uids: &[String]) -> anyhow::Result<Vec<types::Entry>> {
        let mut entries = Vec::new();
        for filter in pod_filters(uids) {
            let found = self.client.list_entries_matching(filter).await?;
            self.lists.fetch_add(pages(found.len()), Ordering::Relaxed);
            entries.extend(found);
        }
        Ok(entries)
    }
}

/// Selectors in one filtered ListEntries. SPIRE's SQL datastore queries one SELECT per
/// selector, joined into one compound SELECT, and SQLite refuses more than 500 terms
/// ("too many terms in compound SELECT"): with more pods pending than that, every look
/// failed.
const SELECTORS_PER_LIST: usize = 200;

/// The filters that together match any of the `k8s:pod-uid:<uid>` selectors of `uids`.
fn pod_filters(uids: &[String]) -> Vec<entry::EntryFilter> {
    uids.chunks(SELECTORS_PER_LIST)
        .map(|chunk| entry::EntryFilter {
            by_selectors: Some(types::SelectorMatch {
                selectors: chunk
                    .iter()
                    .map(|uid| types::Selector {
                        r#type: "k8s".into(),
                        value: format!("pod-uid:{uid}"),
                    })
                    .collect(),
                r#match: types::selector_match::MatchBehavior::MatchAny as i32,
            }),
            ..Default::default()
        })
        .collect()
}

/// ListEntries calls the client made for `n` entries: SPIRE hands out a next-page
/// token with every non-empty page, so the last call is an empty page.
fn pages(n: usize) -> u64 {
    let page = usize::try_from(spire_operator::spire::DEFAULT_LIST_PAGE_SIZE).unwrap_or(1000);
    n.div_ceil(page) as u64 + 1
}

/// The pod UID of an entry's `k8s:pod-uid:` selector.
pub fn pod_uid(entry: &types::Entry) -> Option<&str> {
    entry
        .selectors
        .iter()
        .find(|s| s.r#type == "k8s")
        .and_then(|s| s.value.strip_prefix("pod-uid:"))
}

/// The value at quantile `q` (0..=1) of sorted `values` (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The median of `values` (any order); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's default limit on the terms of one compound SELECT.
    const SQLITE_MAX_COMPOUND_SELECT: usize = 500;

    #[test]
    fn pod_filters_stay_within_sqlite_compound_select_limit() {
        let uids: Vec<String> = (0..1201).map(|i| format!("uid-{i}")).collect();
        let filters = pod_filters(&uids);
        let mut asked = Vec::new();
        for filter in &filters {
            let selectors = &filter.by_selectors.as_ref().unwrap().selectors;
            assert!(selectors.len() <= SQLITE_MAX_COMPOUND_SELECT);
            asked.extend(selectors.iter().map(|s| s.value.clone()));
        }
        let wanted: Vec<String> = uids.iter().map(|u| format!("pod-uid:{u}")).collect();
        assert_eq!(asked, wanted, "every pod asked for once, in order");
        assert!(pod_filters(&[]).is_empty());
    }

    /// Against a real SPIRE server (sqlite): 600 pods pending at once, more than one
    /// filtered ListEntries may ask for, are all found; the single call the benchmark made
    /// before is refused.
    #[tokio::test]
    async fn for_pods_finds_more_pods_than_one_sqlite_query_may_ask_for() -> anyhow::Result<()> {
        let spire = e2e::Spire::start("bench.test").await?;
        let client = spire.client();
        let uids: Vec<String> = (0..600)
            .map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
            .collect();
        let entries: Vec<types::Entry> = uids
            .iter()
            .enumerate()
            .map(|(i, uid)| types::Entry {
                spiffe_id: Some(types::Spiffeid {
                    trust_domain: "bench.test".into(),
                    path: format!("/pod-{i}"),
                }),
                parent_id: Some(types::Spiffeid {
                    trust_domain: "bench.test".into(),
                    path: "/spire/agent/k8s_psat/bench/node-0".into(),
                }),
                selectors: vec![types::Selector {
                    r#type: "k8s".into(),
                    value: format!("pod-uid:{uid}"),
                }],
                ..Default::default()
            })
            .collect();
        for chunk in entries.chunks(50) {
            let results = client.batch_create_entries(chunk.to_vec()).await?;
            assert!(
                results
                    .iter()
                    .all(|r| r.status.as_ref().is_some_and(|s| s.code == 0)),
                "BatchCreateEntry: {results:?}"
            );
        }

        let found = Reader::new(client.clone()).for_pods(&uids).await?;
        let mut found: Vec<&str> = found.iter().filter_map(pod_uid).collect();
        found.sort_unstable();
        assert_eq!(found, uids, "every pending pod's entry found once");

        let all_at_once = entry::EntryFilter {
            by_selectors: pod_filters(&uids)
                .into_iter()
                .filter_map(|f| f.by_selectors)
                .reduce(|mut all, more| {
                    all.selectors.extend(more.selectors);
                    all
                }),
            ..Default::default()
        };
        let refused = client.list_entries_matching(all_at_once).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| format!("{e:?}").contains("too many terms in compound SELECT")),
            "one ListEntries with 600 selectors: {:?}",
            refused.map(|e| e.len())
        );
        Ok(())
    }
}
