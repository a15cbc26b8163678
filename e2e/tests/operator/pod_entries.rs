//! Scenarios 1, 2 and 6: one entry per selected, scheduled pod with every field
//! rendered; entries follow pods, pod labels and namespace labels; an entry made with
//! the SPIRE CLI is never touched.

use std::collections::BTreeSet;

use e2e::entries::{self, EntryView};
use e2e::operator::{Operator, READY_TIMEOUT};
use e2e::world::World;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::json;

const TRUST_DOMAIN: &str = "pods.test";
const CLUSTER: &str = "east";

/// Our pod entries (the foreign CLI entry excluded), sorted by SPIFFE ID.
fn pod_entries(all: &[EntryView]) -> Vec<EntryView> {
    entries::pod_entries_of(all)
}

fn expected_entry(pod: &Pod, node_uid: &str, service_account: &str) -> entries::EntryFields {
    let namespace = pod.namespace().unwrap();
    entries::EntryFields {
        spiffe_id: format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"),
        parent_id: format!("spiffe://{TRUST_DOMAIN}/spire/agent/k8s_psat/{CLUSTER}/{node_uid}"),
        selectors: BTreeSet::from([
            format!("k8s:pod-uid:{}", pod.uid().unwrap()),
            format!("k8s:ns:{namespace}"),
            format!("k8s:sa:{service_account}"),
        ]),
        dns_names: vec![
            format!("{}.{namespace}.svc.cluster.local", pod.name_any()),
            format!("{service_account}.{namespace}"),
        ],
        x509_svid_ttl: 5400,
        jwt_svid_ttl: 300,
        federates_with: BTreeSet::from(["partner.test".to_owned()]),
        admin: true,
        downstream: true,
        hint: "web".into(),
        store_svid: false,
    }
}

#[tokio::test]
async fn entries_follow_pods_labels_and_namespaces_and_leave_foreign_entries_alone()
-> anyhow::Result<()> {
    let world = World::start(TRUST_DOMAIN).await?;
    world.federated_bundle("partner.test")?;
    let foreign = world
        .cli_entry(
            &format!("spiffe://{TRUST_DOMAIN}/admin/backup"),
            &format!("spiffe://{TRUST_DOMAIN}/spire/agent/elsewhere"),
            "unix:uid:1000",
        )
        .await?;
    let node_a = world.node("node-a").await?.uid().unwrap();
    let node_b = world.node("node-b").await?.uid().unwrap();
    world.namespace("shop", &[("mesh", "on")]).await?;
    world.namespace("shop2", &[("mesh", "on")]).await?;
    world.namespace("plain", &[]).await?;
    world.service_account("shop", "web-sa").await?;
    world.service_account("shop2", "web-sa").await?;

    world
        .apply_csid(
            "web",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
                "podSelector": { "matchLabels": { "app": "web" } },
                "namespaceSelector": { "matchLabels": { "mesh": "on" } },
                "dnsNameTemplates": [
                    "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}",
                    "{{ .PodSpec.ServiceAccountName }}.{{ .PodMeta.Namespace }}",
                    "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}",
                ],
                "workloadSelectorTemplates": [
                    "k8s:ns:{{ .PodMeta.Namespace }}",
                    "k8s:sa:{{ .PodSpec.ServiceAccountName }}",
                ],
                "federatesWith": ["partner.test"],
                "ttl": "1h30m",
                "jwtTtl": "5m",
                "admin": true,
                "downstream": true,
                "hint": "web",
            }),
        )
        .await?;

    let web = [("app", "web")];
    let web_0 = world.pod("shop", "web-0", "web-sa", "node-a", &web).await?;
    let web_1 = world.pod("shop", "web-1", "web-sa", "node-b", &web).await?;
    let other = world
        .pod("shop2", "web-2", "web-sa", "node-a", &web)
        .await?;
    // Not selected: wrong pod labels, unlabelled namespace.
    world
        .pod("shop", "db-0", "web-sa", "node-a", &[("app", "db")])
        .await?;
    world
        .pod("plain", "web-9", "default", "node-a", &web)
        .await?;
    // Selected but not scheduled: no entry, no error, counted in a metric.
    let mut pending = e2e::kube_util::scheduled_pod("shop", "web-pending", "web-sa", "", &web);
    pending.spec.as_mut().unwrap().node_name = None;
    world.create_pod(pending).await?;

    let mut operator = Operator::start(
        &world.control_plane,
        &world.spire,
        CLUSTER,
        "clusterDomain: cluster.local\n",
    )
    .await?;

    let all = entries::wait_for(&world.spire, "three pod entries", |e| {
        pod_entries(e).len() == 3
    })
    .await?;
    let mut got: Vec<_> = pod_entries(&all).iter().map(EntryView::fields).collect();
    got.sort();
    let mut want = vec![
        expected_entry(&web_0, &node_a, "web-sa"),
        expected_entry(&web_1, &node_b, "web-sa"),
        expected_entry(&other, &node_a, "web-sa"),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(all.contains(&foreign), "{}", entries::describe(&all));

    let status = world
        .wait_csid_status("web", "counts the selected pods", |s| {
            s.stats.entries_to_set == 3
        })
        .await?;
    assert_eq!(status.stats.namespaces_selected, 2, "{status:?}");
    assert_eq!(status.stats.pods_selected, 3, "{status:?}");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
    // Gauges settle with the pass that wrote the status; wait rather than scrape once.
    operator
        .wait_metric("spire_operator_pods_unscheduled", &[], READY_TIMEOUT, |v| {
            v == 1.0
        })
        .await?;
    operator
        .wait_metric("spire_operator_entries_foreign", &[], READY_TIMEOUT, |v| {
            v == 1.0
        })
        .await?;

    // A deleted pod loses its entry.
    world.delete_pod("shop", "web-0").await?;
    entries::wait_for(&world.spire, "web-0's entry is gone", |e| {
        let pods = pod_entries(e);
        pods.len() == 2 && entries::for_pod(&pods, &web_0.uid().unwrap()).is_empty()
    })
    .await?;

    // A pod relabelled out of podSelector loses its entry; relabelled back, gets it again.
    world
        .label_pod("shop", "web-1", json!({ "app": "web-old" }))
        .await?;
    entries::wait_for(&world.spire, "web-1 relabelled out", |e| {
        let pods = pod_entries(e);
        pods.len() == 1 && entries::for_pod(&pods, &other.uid().unwrap()).len() == 1
    })
    .await?;
    world
        .label_pod("shop", "web-1", json!({ "app": "web" }))
        .await?;
    entries::wait_for(&world.spire, "web-1 relabelled back in", |e| {
        pod_entries(e).len() == 2
    })
    .await?;

    // A namespace relabelled out of namespaceSelector takes its pods' entries along.
    world
        .label_namespace("shop2", json!({ "mesh": null }))
        .await?;
    let all = entries::wait_for(&world.spire, "shop2 relabelled out", |e| {
        let pods = pod_entries(e);
        pods.len() == 1 && entries::for_pod(&pods, &web_1.uid().unwrap()).len() == 1
    })
    .await?;
    assert!(all.contains(&foreign), "{}", entries::describe(&all));

    // Nothing selected at all: every pod entry goes, the foreign entry stays, unchanged.
    world
        .label_namespace("shop", json!({ "mesh": "off" }))
        .await?;
    let all = entries::wait_for(&world.spire, "no pod selected", |e| {
        pod_entries(e).is_empty()
    })
    .await?;
    assert_eq!(all, vec![foreign]);
    Ok(())
}
