//! The reconcile loop's failure paths against an in-process fake SPIRE server
//! ([`crate::spire::fake`]) and a fake Kubernetes API that records status patches and
//! events: SPIRE unreachable, per-entry write failures, failed status patches, a
//! join-token entry holding a desired key, fields an older server drops, and drift
//! between the incremental state and the caches.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use super::dirty::DirtySet;
use super::pod_cache::{CachedPod, PodCache};
use super::runner::{Context, Reconciler};
use super::state::Source;
use super::watch::{Dirty, Stores};
use super::watched_pod::WatchedPod;
use crate::config::Config;
use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry};
use crate::metrics::Metrics;
use crate::spire::api::types;
use crate::spire::fake::{FakeSpire, FakeState};
use crate::spire::{ClientOptions, SpireAddress, SpireClient};
use crate::template::{PodFields, Template};

mod event_sequences;
mod hostile;

/// What the fake API server saw, and whether it fails status patches.
#[derive(Default)]
struct KubeLog {
    status_patches: Vec<(String, Value)>,
    events: Vec<Value>,
    fail_status: bool,
}

async fn fake_kube(log: Arc<Mutex<KubeLog>>) -> kube::Client {
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let log = log.clone();
        async move {
            let path = uri.path().to_owned();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut log = log.lock().unwrap();
            if method == Method::GET {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "not found", "reason": "NotFound", "code": 404});
                return (StatusCode::NOT_FOUND, status.to_string()).into_response();
            }
            if path.ends_with("/status") {
                if log.fail_status {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "etcd is having a bad day", "reason": "InternalError", "code": 500});
                    return (StatusCode::INTERNAL_SERVER_ERROR, status.to_string()).into_response();
                }
                log.status_patches.push((path.clone(), body.clone()));
                let name = path.rsplit('/').nth(1).unwrap_or_default();
                let kind = if path.contains("clusterspiffeids") {
                    json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
                        "metadata": {"name": name}, "spec": {"spiffeIDTemplate": "x"}})
                } else {
                    json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterStaticEntry",
                        "metadata": {"name": name}, "spec": {"spiffeID": "spiffe://td/x",
                        "parentID": "spiffe://td/y", "selectors": ["unix:uid:0"]}})
                };
                return (StatusCode::OK, kind.to_string()).into_response();
            }
            if path.contains("/events") {
                log.events.push(body.clone());
            }
            (StatusCode::OK, body.to_string()).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

struct Harness {
    reconciler: Reconciler,
    dirty: Arc<DirtySet<Dirty>>,
    metrics: Arc<Metrics>,
    spire: Arc<Mutex<FakeState>>,
    server: Option<FakeSpire>,
    kube: Arc<Mutex<KubeLog>>,
    pods: Arc<PodCache>,
    nodes: Writer<Node>,
    csids: Writer<ClusterSPIFFEID>,
    statics: Writer<ClusterStaticEntry>,
    _namespaces: Writer<Namespace>,
    dir: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness {
    async fn new(name: &str, state: FakeState) -> Self {
        let dir =
            std::env::temp_dir().join(format!("spire-operator-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let spire = Arc::new(Mutex::new(state));
        let server = FakeSpire::start(&socket, spire.clone()).await;
        let client = SpireClient::connect_with(
            SpireAddress::Unix(socket),
            &ClientOptions {
                timeout: Duration::from_secs(2),
                ..ClientOptions::default()
            },
        )
        .await
        .unwrap();
        let kube_log = Arc::new(Mutex::new(KubeLog::default()));
        let kube = fake_kube(kube_log.clone()).await;
        let (nodes_store, nodes) = reflector::store();
        let (namespaces_store, namespaces) = reflector::store();
        let (csid_store, csids) = reflector::store();
        let (static_store, statics) = reflector::store();
        let pods = Arc::new(PodCache::default());
        let stores = Stores {
            pods: pods.clone(),
            nodes: nodes_store,
            namespaces: namespaces_store,
            service_accounts: reflector::store().0,
            cluster_spiffe_ids: csid_store,
            cluster_static_entries: static_store,
            cluster_federated_trust_domains: reflector::store().0,
            services: Arc::default(),
        };
        let dirty = Arc::new(DirtySet::default());
        let metrics = Arc::new(Metrics::new());
        let config =
            Config::from_yaml("trustDomain: td\nclusterName: c\ngcInterval: 1h\n").unwrap();
        let reconciler = Reconciler::new(Context {
            config: Arc::new(config),
            cluster_domain: "cluster.local".into(),
            namespace: "spire-system".into(),
            kube: Some(kube.clone()),
            spire: client,
            stores,
            dirty: dirty.clone(),
            metrics: metrics.clone(),
            recorder: Some(Recorder::new(
                kube,
                Reporter {
                    controller: "spire-operator".into(),
                    instance: None,
                },
            )),
            state_dir: None,
            entry_resync_interval: Duration::ZERO,
            write_concurrency: super::concurrency::WriteConcurrency::Auto,
        })
        .await
        .unwrap();
        Self {
            reconciler,
            dirty,
            metrics,
            spire,
            server: Some(server),
            kube: kube_log,
            pods,
            nodes,
            csids,
            statics,
            _namespaces: namespaces,
            dir,
        }
    }

    fn add_workload(&mut self) {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "uid": "node-uid"}
        }))
        .unwrap();
        self.nodes.apply_watcher_event(&Event::Apply(node));
        let csid: ClusterSPIFFEID = serde_json::from_value(json!({
            "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
            "metadata": {"name": "web", "uid": "csid-uid", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}"}
        }))
        .unwrap();
        self.csids.apply_watcher_event(&Event::Apply(csid));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "pod-uid"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}]}
        }))
        .unwrap();
        self.pods.insert(CachedPod::from_pod(&pod).unwrap());
    }

    fn add_static(&mut self, name: &str, spec: Value) {
        self.add_static_created(name, "2026-01-01T00:00:00Z", spec);
    }

    fn add_static_created(&mut self, name: &str, created: &str, spec: Value) {
        let entry: ClusterStaticEntry = serde_json::from_value(json!({
            "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterStaticEntry",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": created},
            "spec": spec,
        }))
        .unwrap();
        self.statics.apply_watcher_event(&Event::Apply(entry));
    }

    async fn pass(&mut self, marks: &[Dirty]) {
        self.reconciler.pass(marks.to_vec()).await;
    }

    /// Runs passes as the loop would for `period`; returns the marks it drained.
    async fn run_for(&mut self, period: Duration) -> Vec<Dirty> {
        let deadline = Instant::now() + period;
        let mut drained = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(batch) = tokio::time::timeout(left, self.dirty.drain()).await else {
                break;
            };
            drained.extend(batch.iter().cloned());
            self.reconciler.pass(batch).await;
        }
        drained
    }

    fn entries(&self) -> Vec<types::Entry> {
        self.spire
            .lock()
            .unwrap()
            .entries
            .values()
            .cloned()
            .collect()
    }

    /// The last status patched on `name`.
    fn last_status(&self, name: &str) -> Value {
        let log = self.kube.lock().unwrap();
        log.status_patches
            .iter()
            .rev()
            .find(|(path, _)| path.contains(&format!("/{name}/status")))
            .map(|(_, patch)| patch["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// The reason of the Ready condition in the last status patch of `name`.
    fn last_reason(&self, name: &str) -> Option<String> {
        let log = self.kube.lock().unwrap();
        let (_, patch) = log
            .status_patches
            .iter()
            .rev()
            .find(|(path, _)| path.contains(&format!("/{name}/status")))?;
        patch["status"]["conditions"][0]["reason"]
            .as_str()
            .map(str::to_owned)
    }
}

fn spiffe_id(path: &str) -> types::Spiffeid {
    types::Spiffeid {
        trust_domain: "td".into(),
        path: path.into(),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_listed_again_with_growing_delays() {
    let mut h = Harness::new("unreachable", FakeState::default()).await;
    h.pass(&[Dirty::Resync]).await;
    assert_eq!(h.spire.lock().unwrap().list_calls, 1);
    h.server.take().unwrap().stop().await;
    h.dirty.mark(Dirty::Resync);
    let drained = h.run_for(Duration::from_secs(6)).await;
    let resyncs = drained.iter().filter(|m| **m == Dirty::Resync).count();
    // Delays of 1-1.5 s, 2-3 s, 4-6 s: at most four attempts in six seconds (a fixed
    // ~0.6 s retry made ten).
    assert!(
        (2..=4).contains(&resyncs),
        "{resyncs} listing attempts in 6 s"
    );
    assert_eq!(h.metrics.spire_reachable.get(), 0);
}

#[tokio::test]
async fn a_failed_write_is_retried_and_the_status_recovers() {
    let state = FakeState {
        fail_writes_for: ["spiffe://td/ns/shop/web-0".to_string()].into(),
        ..Default::default()
    };
    let mut h = Harness::new("write-failure", state).await;
    h.add_workload();
    h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds]).await;
    assert!(h.entries().is_empty());
    assert_eq!(h.last_reason("web").as_deref(), Some("EntryWriteFailed"));
    let events = h.kube.lock().unwrap().events.clone();
    assert!(
        events.iter().any(|e| e["reason"] == "EntryWriteFailed"),
        "{events:?}"
    );

    // The pod keeps changing (status updates, say) while the server keeps failing:
    // only the backoff retries the write, not every event.
    let churn = tokio::spawn({
        let dirty = h.dirty.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                dirty.mark(Dirty::Pod("shop".into(), "web-0".into()));
            }
        }
    });
    h.run_for(Duration::from_secs(3)).await;
    churn.abort();
    let attempts = h.spire.lock().unwrap().create_attempts;
    assert!(attempts <= 4, "{attempts} create attempts in 3 s of churn");

    h.spire.lock().unwrap().fail_writes_for.clear();
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(h.entries().len(), 1, "the retry created the entry");
    assert_eq!(h.last_reason("web").as_deref(), Some("Reconciled"));
    assert!(h.reconciler.failed_writes.is_empty());
}

#[tokio::test]
async fn failures_of_keys_no_longer_desired_are_forgotten() {
    let state = FakeState {
        fail_writes_for: ["spiffe://td/ns/shop/web-0".to_string()].into(),
        ..Default::default()
    };
    let mut h = Harness::new("forget", state).await;
    h.add_workload();
    h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds]).await;
    assert_eq!(h.reconciler.failed_writes.len(), 1);
    assert!(!h.reconciler.announced.is_empty());
    h.pods.remove("shop", "web-0");
    h.pass(&[Dirty::Pod("shop".into(), "web-0".into())]).await;
    assert!(h.reconciler.failed_writes.is_empty());
    h.pass(&[Dirty::Resync]).await;
    assert!(
        h.reconciler.announced.is_empty(),
        "{:?}",
        h.reconciler.announced
    );
}

#[tokio::test]
async fn a_failed_status_patch_is_retried() {
    let mut h = Harness::new("status-retry", FakeState::default()).await;
    h.add_workload();
    h.kube.lock().unwrap().fail_status = true;
    h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds]).await;
    assert_eq!(h.entries().len(), 1);
    assert_eq!(h.last_reason("web"), None);
    h.kube.lock().unwrap().fail_status = false;
    h.run_for(Duration::from_secs(3)).await;
    assert_eq!(h.last_reason("web").as_deref(), Some("Reconciled"));
    assert!(h.metrics.report_failures.get() >= 1);
}

#[tokio::test]
async fn a_desired_key_held_by_a_join_token_entry_does_not_loop() {
    let join_token = types::Entry {
        id: "agent-entry".into(),
        spiffe_id: Some(spiffe_id("/node")),
        parent_id: Some(spiffe_id("/spire/agent/join_token/abc")),
        selectors: vec![types::Selector {
            r#type: "spiffe_id".into(),
            value: "spiffe://td/spire/agent/join_token/abc".into(),
        }],
        ..Default::default()
    };
    let state = FakeState {
        entries: [("agent-entry".to_string(), join_token)].into(),
        ..Default::default()
    };
    let mut h = Harness::new("join-token", state).await;
    h.add_static(
        "node",
        json!({"spiffeID": "spiffe://td/node", "parentID": "spiffe://td/spire/agent/join_token/abc",
               "selectors": ["spiffe_id:spiffe://td/spire/agent/join_token/abc"]}),
    );
    h.pass(&[Dirty::Resync, Dirty::ClusterStaticEntries]).await;
    h.run_for(Duration::from_secs(4)).await;
    let lists = h.spire.lock().unwrap().list_calls;
    assert!(lists <= 2, "{lists} listings in 4 s");
    assert_eq!(h.entries().len(), 1, "the agent entry is left alone");
}

#[tokio::test]
async fn fields_found_unsupported_are_checked_again_later() {
    let state = FakeState {
        drops_hint: true,
        ..Default::default()
    };
    let mut h = Harness::new("mask", state).await;
    h.add_static(
        "db",
        json!({"spiffeID": "spiffe://td/db", "parentID": "spiffe://td/host",
               "selectors": ["unix:uid:1"], "hint": "db"}),
    );
    h.pass(&[Dirty::Resync, Dirty::ClusterStaticEntries]).await;
    assert!(!h.reconciler.mask().hint, "the dropped hint left the mask");
    h.pass(&[Dirty::Resync]).await;
    assert_eq!(h.spire.lock().unwrap().updated, 0, "no update loop");
    // The server is upgraded; ten minutes later the hint is compared again.
    h.spire.lock().unwrap().drops_hint = false;
    h.reconciler.age_mask_check(Duration::from_secs(601));
    h.pass(&[Dirty::Resync]).await;
    assert!(h.reconciler.mask().hint);
    assert_eq!(h.entries()[0].hint, "db");
}

#[tokio::test]
async fn a_resync_repairs_and_counts_drift_instead_of_deleting() {
    let mut h = Harness::new("drift", FakeState::default()).await;
    h.add_workload();
    h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds]).await;
    assert_eq!(h.entries().len(), 1);
    // A change the watches lost: the incremental state forgets the pod's entry.
    let source = Source::Pod(("shop".into(), "web-0".into()));
    h.reconciler
        .desired
        .set(source, Vec::new(), &mut Default::default());
    h.pass(&[Dirty::Resync]).await;
    assert_eq!(h.entries().len(), 1, "the entry was not deleted");
    assert_eq!(h.metrics.desired_drift.get(), 1);
    h.pass(&[Dirty::Resync]).await;
    assert_eq!(
        h.metrics.desired_drift.get(),
        1,
        "no drift when nothing was lost"
    );
}

#[tokio::test]
async fn a_full_pass_renders_each_pod_once() {
    let mut h = Harness::new("renders", FakeState::default()).await;
    h.add_workload();
    // The first pass: the listing, the ClusterSPIFFEIDs and the pod all marked.
    let pod = Dirty::Pod("shop".into(), "web-0".into());
    h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds, pod.clone()])
        .await;
    assert_eq!(h.entries().len(), 1);
    assert_eq!(
        h.metrics.pod_renders.get(),
        1,
        "the drift check skips what the pass just rendered"
    );
    // A timed resync alone: the drift check renders every pod.
    h.pass(&[Dirty::Resync]).await;
    assert_eq!(h.metrics.pod_renders.get(), 2);
    assert_eq!(h.metrics.desired_drift.get(), 0);
}

#[tokio::test]
async fn pods_lacking_a_field_a_template_reads_wait_for_a_listing_with_it() {
    let mut h = Harness::new("fields", FakeState::default()).await;
    h.add_workload();
    // Cached as the watch caches it: with the fields the workload's template reads.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "pod-uid",
                     "labels": {"team": "blue"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "app"}]}
    }))
    .unwrap();
    let watched = WatchedPod::from_pod(&pod).unwrap();
    let read = |source: &str| PodFields::of([&Template::parse("t", source).unwrap()]);
    let narrow = read("{{ .PodMeta.Namespace }}{{ .PodMeta.Name }}");
    let cache = h.pods.clone();
    let cache_with = |fields: Arc<PodFields>| {
        let cached = CachedPod::new(&watched, &fields).unwrap();
        let pods = HashMap::from([(("shop".into(), "web-0".into()), Arc::new(cached))]);
        cache.replace(pods, fields)
    };
    cache_with(Arc::new(narrow));
    let pod_mark = Dirty::Pod("shop".into(), "web-0".into());
    h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds, pod_mark.clone()])
        .await;
    let paths = |h: &Harness| -> Vec<String> {
        h.entries()
            .iter()
            .filter_map(|e| e.spiffe_id.as_ref().map(|id| id.path.clone()))
            .collect()
    };
    assert_eq!(paths(&h), ["/ns/shop/web-0"]);

    // The template now reads a label: the cached pod does not hold labels.
    let team = "spiffe://{{ .TrustDomain }}/team/{{ .PodMeta.Labels.team }}/{{ .PodMeta.Name }}";
    let csid: ClusterSPIFFEID = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "metadata": {"name": "web", "uid": "csid-uid", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"spiffeIDTemplate": team}
    }))
    .unwrap();
    h.csids.apply_watcher_event(&Event::Apply(csid));
    h.pass(&[Dirty::ClusterSpiffeIds]).await;
    assert_eq!(
        paths(&h),
        ["/ns/shop/web-0"],
        "left as it was, not rendered without the label (a render failure withdraws it)"
    );
    assert!(
        h.pods.wanted().covers(&read(team)),
        "the pods are wanted with it"
    );

    // The watch's listing with the wider fields marks the pod; it renders with them.
    let changed = cache_with(h.pods.wanted());
    assert_eq!(changed, [("shop".to_string(), "web-0".to_string())]);
    h.pass(&[pod_mark]).await;
    assert_eq!(paths(&h), ["/team/blue/web-0"]);
}

/// The pod entry the workload's ClusterSPIFFEID (created 2026-01-01) renders, as a
/// ClusterStaticEntry spec.
fn same_key_as_the_pod_entry() -> Value {
    json!({"spiffeID": "spiffe://td/ns/shop/web-0",
           "parentID": "spiffe://td/spire/agent/k8s_psat/c/node-uid",
           "selectors": ["k8s:pod-uid:pod-uid"], "hint": "static"})
}

#[tokio::test]
async fn a_younger_static_entry_is_masked_by_an_older_cluster_spiffe_id() {
    let mut h = Harness::new("mask-static", FakeState::default()).await;
    h.add_workload();
    h.add_static_created("late", "2026-06-01T00:00:00Z", same_key_as_the_pod_entry());
    h.pass(&[
        Dirty::Resync,
        Dirty::ClusterSpiffeIds,
        Dirty::ClusterStaticEntries,
    ])
    .await;
    let entries = h.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].hint, "",
        "the ClusterSPIFFEID's entry is the one written"
    );
    let late = h.last_status("late");
    assert_eq!(
        (&late["masked"], &late["set"]),
        (&json!(true), &json!(false)),
        "{late}"
    );
    let web = h.last_status("web");
    assert_eq!(web["stats"]["entriesToSet"], 1, "{web}");
    assert_eq!(web["stats"]["entriesMasked"], 0, "{web}");
}

#[tokio::test]
async fn an_older_static_entry_masks_the_pod_entry_which_is_not_counted_as_set() {
    let mut h = Harness::new("mask-pod", FakeState::default()).await;
    h.add_workload();
    h.add_static_created("early", "2025-06-01T00:00:00Z", same_key_as_the_pod_entry());
    h.pass(&[
        Dirty::Resync,
        Dirty::ClusterSpiffeIds,
        Dirty::ClusterStaticEntries,
    ])
    .await;
    let entries = h.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].hint, "static");
    let early = h.last_status("early");
    assert_eq!(
        (&early["masked"], &early["set"]),
        (&json!(false), &json!(true)),
        "{early}"
    );
    let web = h.last_status("web");
    assert_eq!(web["stats"]["entriesToSet"], 0, "{web}");
    assert_eq!(web["stats"]["entriesMasked"], 1, "{web}");

    // The static entry goes: the pod entry takes the key and its owner's status says so.
    let gone: ClusterStaticEntry = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterStaticEntry",
        "metadata": {"name": "early"}, "spec": same_key_as_the_pod_entry(),
    }))
    .unwrap();
    h.statics.apply_watcher_event(&Event::Delete(gone));
    h.pass(&[Dirty::ClusterStaticEntries]).await;
    let web = h.last_status("web");
    assert_eq!(web["stats"]["entriesToSet"], 1, "{web}");
    assert_eq!(web["stats"]["entriesMasked"], 0, "{web}");
    assert_eq!(h.entries()[0].hint, "", "the pod entry's fields now");
}

#[tokio::test]
async fn a_pod_on_an_unknown_node_is_a_render_failure() {
    let mut h = Harness::new("ghost-node", FakeState::default()).await;
    h.add_workload();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "pod-uid-1"},
        "spec": {"nodeName": "ghost", "containers": [{"name": "app"}]}
    }))
    .unwrap();
    h.pods.insert(CachedPod::from_pod(&pod).unwrap());
    h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds]).await;
    assert_eq!(h.entries().len(), 1, "only the pod on a known node");
    assert_eq!(h.last_reason("web").as_deref(), Some("RenderFailed"));
    let web = h.last_status("web");
    assert_eq!(web["stats"]["podEntryRenderFailures"], 1, "{web}");
    assert_eq!(h.metrics.pods_render_failed.get(), 1);
    assert_eq!(h.metrics.pods_unscheduled.get(), 0);
}

/// Marks drained while the server cannot be listed are kept for the first pass that
/// lists it. They were dropped: the first resync then planned against an empty desired
/// state and deleted every owned entry (now the drift check repairs that, counting it).
#[tokio::test]
async fn marks_made_before_the_first_listing_wait_for_it() {
    let mut h = Harness::new("first-listing", FakeState::default()).await;
    h.add_workload();
    h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds]).await;
    assert_eq!(h.entries().len(), 1);

    // A restarted operator finds SPIRE down at its first pass.
    let mut h2 = Harness::new("first-listing-2", FakeState::default()).await;
    h2.server.take().unwrap().stop().await;
    h2.add_workload();
    h2.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds]).await;
    // SPIRE comes back (with the entry the first operator made) where h2 dials.
    let state = h.spire.clone();
    let h2_socket = h2.dir.join("api.sock");
    h.server.take().unwrap().stop().await;
    let server = FakeSpire::start(&h2_socket, state.clone()).await;
    h2.spire = state;
    h2.server = Some(server);
    h2.run_for(Duration::from_secs(3)).await;
    assert_eq!(h2.entries().len(), 1, "the entry was kept");
    assert_eq!(h2.spire.lock().unwrap().deleted, 0);
    assert_eq!(h2.spire.lock().unwrap().created, 1, "nothing re-created");
    assert_eq!(h2.metrics.desired_drift.get(), 0, "no mark was lost");
}
