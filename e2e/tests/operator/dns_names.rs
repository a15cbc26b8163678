//! Scenario 5: autoPopulateDNSNames adds the names of the Services whose
//! EndpointSlices list the pod, and follows the slices as they change.

use e2e::entries;
use e2e::operator::Operator;
use e2e::world::World;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams};
use serde_json::json;

#[tokio::test]
async fn service_names_come_from_endpoint_slices() -> anyhow::Result<()> {
    let world = World::start("dns.test").await?;
    world.node("node-a").await?;
    world.namespace("web", &[]).await?;
    let front = world
        .pod("web", "front-0", "default", "node-a", &[("app", "front")])
        .await?;
    world
        .pod("web", "lonely-0", "default", "node-a", &[("app", "front")])
        .await?;
    world.endpoint_slice("web", "frontend", &[&front]).await?;
    world
        .apply_csid(
            "front",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "front" } },
                "dnsNameTemplates": ["{{ .PodMeta.Name }}.example"],
                "autoPopulateDNSNames": true,
            }),
        )
        .await?;
    let _operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "dns",
        "clusterDomain: cluster.example\n",
    )
    .await?;

    let dns_of = |all: &[entries::EntryView], pod: &str| -> Option<Vec<String>> {
        let id = format!("spiffe://dns.test/{pod}");
        all.iter()
            .find(|e| e.spiffe_id == id)
            .map(|e| e.dns_names.clone())
    };
    let all = entries::wait_for(&world.spire, "both pods have entries", |e| {
        entries::pod_entries_of(e).len() == 2
    })
    .await?;
    assert_eq!(
        dns_of(&all, "front-0").unwrap(),
        [
            "front-0.example",
            "frontend",
            "frontend.web",
            "frontend.web.svc",
            "frontend.web.svc.cluster.example",
        ]
    );
    assert_eq!(dns_of(&all, "lonely-0").unwrap(), ["lonely-0.example"]);

    // The Service goes away: so do its names.
    Api::<EndpointSlice>::namespaced(world.client.clone(), "web")
        .delete("frontend-slice", &DeleteParams::default())
        .await?;
    entries::wait_for(&world.spire, "the service names are dropped", |e| {
        dns_of(e, "front-0").as_deref() == Some(&["front-0.example".to_owned()][..])
    })
    .await?;
    Ok(())
}
