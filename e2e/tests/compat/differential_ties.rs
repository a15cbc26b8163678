//! Differential, on masking between two ClusterSPIFFEIDs created in the same second
//! (creation timestamps have one-second resolution): the reference orders owners by
//! creation time, then those not being deleted first, then UID
//! (`objectCmp` in its `pkg/spireentry/reconciler.go`). A resource held by a finalizer
//! after its deletion still renders in both; with a tie on creation time it must lose to
//! the one not being deleted.
//!
//! Both agree, tie broken by UID and by deletion. (Ours ordered by creation time then UID
//! until `render::Age` took the deletion timestamp into account; this test found it.)

use std::time::Duration;

use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use spire_operator::crd::ClusterSPIFFEID;

use crate::diff::{Pair, by_path};

const TRUST_DOMAIN: &str = "difft.test";
const CLUSTER: &str = "difft";
const HOLD: &str = "e2e.test/hold";

fn tied_spec(hint: &str) -> serde_json::Value {
    json!({
        "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/tied/{{ .PodMeta.Name }}",
        "podSelector": { "matchLabels": { "app": "tied" } },
        "hint": hint,
    })
}

/// Creates ClusterSPIFFEIDs `tie-a` and `tie-b` (same entry, hints `a` and `b`) until
/// both carry the same creation timestamp; returns them ordered by UID.
async fn create_tied(pair: &Pair) -> anyhow::Result<(ClusterSPIFFEID, ClusterSPIFFEID)> {
    let api = Api::<ClusterSPIFFEID>::all(pair.world.client.clone());
    for _attempt in 0..10 {
        pair.world.apply_csid("tie-a", tied_spec("a")).await?;
        pair.world.apply_csid("tie-b", tied_spec("b")).await?;
        let (a, b) = (api.get("tie-a").await?, api.get("tie-b").await?);
        if a.metadata.creation_timestamp == b.metadata.creation_timestamp {
            return Ok(if a.uid() < b.uid() { (a, b) } else { (b, a) });
        }
        for name in ["tie-a", "tie-b"] {
            api.delete(name, &DeleteParams::default()).await?;
        }
        e2e::wait::until(
            "the untied ClusterSPIFFEIDs are gone",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let left = api.list(&Default::default()).await?.items.len();
                Ok((left == 0).then_some(()))
            },
        )
        .await?;
    }
    anyhow::bail!("could not create two ClusterSPIFFEIDs within one second in 10 attempts")
}

#[tokio::test]
async fn creation_time_ties_break_on_deletion_then_uid() -> anyhow::Result<()> {
    let pair = Pair::start(TRUST_DOMAIN).await?;
    let world = &pair.world;
    world.node("node-a").await?;
    world.namespace("app", &[]).await?;
    world
        .pod("app", "tied-0", "default", "node-a", &[("app", "tied")])
        .await?;
    let (first, second) = create_tied(&pair).await?;
    let hint = |csid: &ClusterSPIFFEID| csid.spec.hint.clone().unwrap_or_default();

    let config = "clusterDomain: cluster.local\n";
    let _reference = ReferenceControllerManager::start(
        &world.control_plane,
        &pair.reference,
        CLUSTER,
        &format!("{config}gcInterval: 1000000000\n"),
    )
    .await?;
    let _ours = Operator::start(&world.control_plane, &world.spire, CLUSTER, config).await?;

    // Same creation time, neither deleting: the lower UID wins in both.
    let expected = hint(&first);
    let entries = pair
        .converge("a creation-time tie", |e| {
            e.len() == 1 && e[0].hint == expected
        })
        .await?;
    assert_eq!(by_path(&entries, "/tied/tied-0")?.hint, hint(&first));

    // The winner is deleted but held by a finalizer: it still renders, and loses the tie.
    let api = Api::<ClusterSPIFFEID>::all(world.client.clone());
    api.patch(
        &first.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": [HOLD] } })),
    )
    .await?;
    api.delete(&first.name_any(), &DeleteParams::default())
        .await?;
    let expected = hint(&second);
    // The reference first: it is the behaviour to match.
    e2e::entries::wait_for_within(
        &pair.reference,
        "the reference: the tie's winner is being deleted",
        Duration::from_secs(60),
        |e| e.len() == 1 && e[0].hint == expected,
    )
    .await?;
    pair.converge("the tie's winner is being deleted", |e| {
        e.len() == 1 && e[0].hint == expected
    })
    .await?;
    Ok(())
}
