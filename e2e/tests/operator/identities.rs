//! Scenarios 3, 4 and 9: ClusterSPIFFEID changes and deletion, masking, fallback,
//! className, and invalid templates.

use std::time::Duration;

/// How long two resyncs (gcInterval 2 s) may take on a loaded machine.
const RESYNCS: Duration = Duration::from_secs(30);

use e2e::entries::{self, EntryView};
use e2e::operator::Operator;
use e2e::world::World;
use serde_json::json;

const TRUST_DOMAIN: &str = "ids.test";

/// The SPIFFE ID paths of the pod entries, sorted (pods are told apart by path here).
fn paths(all: &[EntryView]) -> Vec<String> {
    let prefix = format!("spiffe://{TRUST_DOMAIN}");
    let mut paths: Vec<String> = entries::pod_entries_of(all)
        .iter()
        .map(|e| e.spiffe_id.trim_start_matches(&prefix).to_owned())
        .collect();
    paths.sort();
    paths
}

fn ready(status: &spire_operator::crd::ClusterSPIFFEIDStatus) -> (String, String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn identities_change_mask_fall_back_filter_by_class_and_report_invalid_templates()
-> anyhow::Result<()> {
    let world = World::start(TRUST_DOMAIN).await?;
    world.node("node-a").await?;
    world.namespace("apps", &[]).await?;
    world
        .pod("apps", "a-0", "default", "node-a", &[("app", "a")])
        .await?;
    world
        .pod(
            "apps",
            "a-1",
            "default",
            "node-a",
            &[("app", "a"), ("team", "x")],
        )
        .await?;
    world
        .pod("apps", "b-0", "default", "node-a", &[("app", "b")])
        .await?;
    // A short resync, so that "writes nothing" checks can span full resyncs.
    let mut operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "ids",
        "className: blue\nwatchClassless: true\ngcInterval: 2s\n",
    )
    .await?;

    // Two resources declaring the same entry for a-1: the older one owns it.
    let per_pod = "spiffe://{{ .TrustDomain }}/{{ .PodMeta.Labels.app }}/{{ .PodMeta.Name }}";
    world
        .apply_csid(
            "first",
            json!({ "spiffeIDTemplate": per_pod, "podSelector": { "matchLabels": { "app": "a" } } }),
        )
        .await?;
    entries::wait_for(&world.spire, "first's two entries", |e| {
        paths(e) == ["/a/a-0", "/a/a-1"]
    })
    .await?;
    // Creation timestamps have one-second resolution: make "second" clearly younger.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world
        .apply_csid(
            "second",
            json!({
                "spiffeIDTemplate": per_pod,
                "podSelector": { "matchLabels": { "app": "a", "team": "x" } },
            }),
        )
        .await?;
    let second = world
        .wait_csid_status("second", "masked by first", |s| s.stats.entries_masked == 1)
        .await?;
    assert_eq!(second.stats.entries_to_set, 0, "{second:?}");
    let first = world
        .wait_csid_status("first", "owns both", |s| s.stats.entries_to_set == 2)
        .await?;
    assert_eq!(first.stats.entries_masked, 0, "{first:?}");
    let writes = operator.writes_across_a_resync(RESYNCS).await?;
    assert_eq!(writes, 0.0, "masking rewrote entries across a resync");
    entries::holds_for(
        &world.spire,
        "still one entry per pod",
        Duration::from_millis(500),
        |e| paths(e) == ["/a/a-0", "/a/a-1"],
    )
    .await?;

    // A fallback applies only to pods no other resource selects.
    world
        .apply_csid(
            "catch-all",
            json!({ "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/fallback/{{ .PodMeta.Name }}", "fallback": true }),
        )
        .await?;
    entries::wait_for(&world.spire, "b-0 gets the fallback", |e| {
        paths(e) == ["/a/a-0", "/a/a-1", "/fallback/b-0"]
    })
    .await?;

    // className: another class is not ours; our class is, and it displaces the fallback.
    world
        .apply_csid(
            "red",
            json!({ "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/red/{{ .PodMeta.Name }}", "className": "red" }),
        )
        .await?;
    world
        .apply_csid(
            "blue",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/blue/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "b" } },
                "className": "blue",
            }),
        )
        .await?;
    entries::wait_for(&world.spire, "blue replaces the fallback for b-0", |e| {
        paths(e) == ["/a/a-0", "/a/a-1", "/blue/b-0"]
    })
    .await?;
    let red = kube::Api::<spire_operator::crd::ClusterSPIFFEID>::all(world.client.clone())
        .get("red")
        .await?;
    assert_eq!(
        red.status, None,
        "another class's resource is left to its operator"
    );

    // A changed template replaces the entries; the masked resource now owns its own.
    world
        .apply_csid(
            "first",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/v2/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "a" } },
            }),
        )
        .await?;
    entries::wait_for(&world.spire, "first's entries replaced", |e| {
        paths(e) == ["/a/a-1", "/blue/b-0", "/v2/a-0", "/v2/a-1"]
    })
    .await?;
    world
        .wait_csid_status("second", "no longer masked", |s| {
            s.stats.entries_to_set == 1 && s.stats.entries_masked == 0
        })
        .await?;

    // Invalid templates: Ready=False naming the field, no entry, everything else intact.
    world
        .apply_csid(
            "unparsable",
            json!({ "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/x/{{ .PodMeta.Name " }),
        )
        .await?;
    world
        .apply_csid(
            "unrenderable",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/y/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "b" } },
                "dnsNameTemplates": ["{{ .PodMeta.Labels.missing }}.example"],
            }),
        )
        .await?;
    let unparsable = world
        .wait_csid_status("unparsable", "reported invalid", |s| {
            !s.conditions.is_empty()
        })
        .await?;
    let (status, reason, message) = ready(&unparsable);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidSpec"),
        "{message}"
    );
    assert!(message.contains("spiffeIDTemplate"), "{message}");
    let event = world
        .wait_event("ClusterSPIFFEID", "unparsable", "InvalidSpec")
        .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    let unrenderable = world
        .wait_csid_status("unrenderable", "reported failing", |s| {
            s.stats.pod_entry_render_failures == 1
        })
        .await?;
    let (status, reason, message) = ready(&unrenderable);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RenderFailed"),
        "{message}"
    );
    assert!(message.contains("apps/b-0"), "{message}");
    assert!(message.contains("dnsNameTemplates"), "{message}");
    let event = world.wait_event("Pod", "b-0", "RenderFailed").await?;
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("unrenderable"),
        "{event:?}"
    );
    assert_eq!(event.involved_object.namespace.as_deref(), Some("apps"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let writes = operator.writes_across_a_resync(RESYNCS).await?;
    assert_eq!(
        writes, 0.0,
        "invalid resources caused writes across a resync"
    );
    entries::holds_for(
        &world.spire,
        "invalid resources write nothing",
        Duration::from_millis(500),
        |e| paths(e) == ["/a/a-1", "/blue/b-0", "/v2/a-0", "/v2/a-1"],
    )
    .await?;
    let (status, _, message) = ready(
        &world
            .wait_csid_status("blue", "still ready", |s| s.stats.entries_to_set == 1)
            .await?,
    );
    assert_eq!(status, "True", "{message}");

    // Deleting a resource removes its entries; the masked one took over a-1 already.
    world.delete_csid("first").await?;
    entries::wait_for(&world.spire, "first's entries gone", |e| {
        paths(e) == ["/a/a-1", "/blue/b-0", "/fallback/a-0"]
    })
    .await?;
    world.delete_csid("second").await?;
    entries::wait_for(&world.spire, "second's entry gone", |e| {
        paths(e) == ["/blue/b-0", "/fallback/a-0", "/fallback/a-1"]
    })
    .await?;
    // The resyncs found nothing the watches had missed.
    let metrics = operator.metrics().await?;
    assert_eq!(
        metrics.value("spire_operator_desired_drift_total", &[]),
        0.0
    );
    Ok(())
}
