//! A CustomResourceDefinition is served and a custom object round-trips through kube-rs.

use std::time::Duration;

use e2e::kube_util::apply_crd_objects;
use e2e::{ControlPlane, wait};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A cluster-scoped test kind shaped like the resources the operator will serve.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "e2e.spire-rs.invalid",
    version = "v1",
    kind = "Probe",
    status = "ProbeStatus"
)]
#[serde(rename_all = "camelCase")]
struct ProbeSpec {
    spiffe_id_template: String,
    dns_names: Vec<String>,
    ttl_seconds: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ProbeStatus {
    entries: u32,
}

#[tokio::test]
async fn custom_object_round_trips() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();

    apply_crd_objects(&client, &[Probe::crd()]).await?;

    let probes: Api<Probe> = Api::all(client);
    let spec = ProbeSpec {
        spiffe_id_template: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}".into(),
        dns_names: vec!["a.example".into(), "b.example".into()],
        ttl_seconds: Some(3600),
    };
    // Discovery of a just-established kind can lag a moment behind the condition.
    let created = wait::until(
        "create Probe",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let probes = probes.clone();
            let probe = Probe::new("round-trip", spec.clone());
            async move { Ok(probes.create(&PostParams::default(), &probe).await.ok()) }
        },
    )
    .await?;
    assert_eq!(created.spec, spec);

    let fetched = probes.get("round-trip").await?;
    assert_eq!(fetched.spec, spec);
    assert_eq!(fetched.uid(), created.uid());

    let status = serde_json::json!({ "status": { "entries": 2 } });
    probes
        .patch_status(
            "round-trip",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    let listed = probes.list(&ListParams::default()).await?;
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].status, Some(ProbeStatus { entries: 2 }));
    assert_eq!(
        listed.items[0].spec, spec,
        "a status patch leaves the spec alone"
    );
    Ok(())
}
