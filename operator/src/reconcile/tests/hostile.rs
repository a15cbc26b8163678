//! Hostile pod data and hostile specs against the reconciler and a fake SPIRE server:
//! each is refused with a message naming the field and the value, and nothing reaches
//! the server.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;

/// A node, a ClusterSPIFFEID with `spec` and a pod carrying `annotations`.
fn workload(h: &mut Harness, spec: Value, annotations: Value) {
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": "n1", "uid": "node-uid"}})).unwrap();
    h.nodes.apply_watcher_event(&Event::Apply(node));
    let csid: ClusterSPIFFEID = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "metadata": {"name": "web", "uid": "csid-uid", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }))
    .unwrap();
    h.csids.apply_watcher_event(&Event::Apply(csid));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "pod-uid",
            "annotations": annotations},
        "spec": {"nodeName": "n1", "containers": [{"name": "app"}]}
    }))
    .unwrap();
    h.pods.insert(CachedPod::from_pod(&pod).unwrap());
}

#[tokio::test]
async fn hostile_pod_data_is_a_render_failure_and_writes_nothing() {
    let cases = [
        (
            json!({"spiffeIDTemplate": "spiffe://{{ .PodMeta.Annotations.td }}/x"}),
            json!({"td": "evil.org"}),
            "spec.spiffeIDTemplate: \"spiffe://evil.org/x\" is not in trust domain \"td\"",
        ),
        (
            json!({"spiffeIDTemplate": "spiffe://td/{{ .PodMeta.Annotations.p }}"}),
            json!({"p": "../spire/server"}),
            "spec.spiffeIDTemplate: \"spiffe://td/../spire/server\" has an invalid path",
        ),
        (
            json!({"spiffeIDTemplate": "spiffe://td/web",
                   "workloadSelectorTemplates": ["k8s:pod-label:{{ .PodMeta.Annotations.s }}"]}),
            json!({"s": "x\nunix:uid:0"}),
            "spec.workloadSelectorTemplates[0]: \"k8s:pod-label:x\\nunix:uid:0\" contains the control character '\\n'",
        ),
        (
            json!({"spiffeIDTemplate": "spiffe://td/web",
                   "dnsNameTemplates": ["{{ .PodMeta.Annotations.d }}"]}),
            json!({"d": "web\u{0}.evil.org"}),
            "spec.dnsNameTemplates[0]: \"web\\0.evil.org\" is not a DNS name: it contains '\\0'",
        ),
    ];
    for (i, (spec, annotations, want)) in cases.into_iter().enumerate() {
        let mut h = Harness::new(&format!("hostile-{i}"), FakeState::default()).await;
        workload(&mut h, spec, annotations);
        h.pass(&[Dirty::Resync, Dirty::ClusterSpiffeIds]).await;
        assert!(h.entries().is_empty(), "{want}: {:?}", h.entries());
        assert_eq!(h.spire.lock().unwrap().create_attempts, 0, "{want}");
        assert_eq!(
            h.last_reason("web").as_deref(),
            Some("RenderFailed"),
            "{want}"
        );
        let status = h.last_status("web");
        let message = status["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains(want), "want {want:?} in {message:?}");
    }
}

#[tokio::test]
async fn a_static_entry_with_an_injected_selector_writes_nothing() {
    let mut h = Harness::new("hostile-static", FakeState::default()).await;
    h.add_static(
        "db",
        json!({"spiffeID": "spiffe://td/db", "parentID": "spiffe://td/host",
               "selectors": ["unix:uid:1000\nunix:uid:0"]}),
    );
    h.pass(&[Dirty::Resync, Dirty::ClusterStaticEntries]).await;
    assert!(h.entries().is_empty());
    assert_eq!(h.spire.lock().unwrap().create_attempts, 0);
    let status = h.last_status("db");
    assert!(
        status.to_string().contains("spec.selectors[0]")
            && status.to_string().contains("control character"),
        "{status}"
    );
}
