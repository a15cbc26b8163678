//! The pod cache keeps only the pod fields the ClusterSPIFFEIDs' templates read. A
//! template edited to read a field the cached pods do not hold has the operator list
//! every pod again with it, and the entries then carry the field's values.

use e2e::entries;
use e2e::operator::Operator;
use e2e::world::World;
use serde_json::{Value, json};

fn csid(template: &str) -> Value {
    json!({
        "spiffeIDTemplate": template,
        "podSelector": { "matchLabels": { "app": "web" } },
    })
}

#[tokio::test]
async fn a_template_reading_a_new_pod_field_gets_it() -> anyhow::Result<()> {
    let world = World::start("fields.test").await?;
    world.node("node-a").await?;
    world.namespace("app", &[]).await?;
    for (name, team) in [("web-0", "blue"), ("web-1", "green")] {
        world
            .pod(
                "app",
                name,
                "default",
                "node-a",
                &[("app", "web"), ("team", team)],
            )
            .await?;
    }
    // Reads the pod's name only: the cache holds the name (and UID) of each pod.
    world
        .apply_csid(
            "a",
            csid("spiffe://{{ .TrustDomain }}/name/{{ .PodMeta.Name }}"),
        )
        .await?;
    let operator = Operator::start(&world.control_plane, &world.spire, "fields", "").await?;
    let before = entries::wait_for(&world.spire, "two entries by name", |e| {
        entries::pod_entry_ids(e).into_keys().collect::<Vec<_>>()
            == [
                "spiffe://fields.test/name/web-0",
                "spiffe://fields.test/name/web-1",
            ]
    })
    .await?;
    let before = entries::pod_entry_ids(&before);

    // Now the labels: not cached until the pods are listed again.
    world
        .apply_csid(
            "a",
            csid("spiffe://{{ .TrustDomain }}/team/{{ .PodMeta.Labels.team }}/{{ .PodMeta.Name }}"),
        )
        .await?;
    let after = entries::wait_for(&world.spire, "the entries carry each pod's team", |e| {
        entries::pod_entry_ids(e).into_keys().collect::<Vec<_>>()
            == [
                "spiffe://fields.test/team/blue/web-0",
                "spiffe://fields.test/team/green/web-1",
            ]
    })
    .await?;
    let after = entries::pod_entry_ids(&after);
    assert_eq!(
        after["spiffe://fields.test/team/blue/web-0"], before["spiffe://fields.test/name/web-0"],
        "renamed in place, not re-created"
    );

    // The watch that listed them again follows new pods.
    world
        .pod(
            "app",
            "web-2",
            "default",
            "node-a",
            &[("app", "web"), ("team", "red")],
        )
        .await?;
    entries::wait_for(&world.spire, "web-2's entry with its team", |e| {
        entries::pod_entry_ids(e).contains_key("spiffe://fields.test/team/red/web-2")
    })
    .await?;

    let log = std::fs::read_to_string(operator.log_path())?;
    assert!(
        log.contains("listing every pod again"),
        "the operator says it listed the pods again:\n{log}"
    );
    assert!(
        !log.contains("<no value>"),
        "no rendering without the field:\n{log}"
    );
    Ok(())
}
