//! Two costs the operator avoids on the real SPIRE server: a template edit renames the
//! entries it changes in place (SPIRE's BatchUpdateEntry with the SPIFFE ID in the
//! mask) instead of deleting and re-creating them, and with the default
//! `--entry-resync-interval` a short `gcInterval` no longer re-lists the whole server
//! while events keep the entries current.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::entries;
use e2e::operator::{ENTRY_RESYNC_INTERVAL, Operator};
use e2e::world::World;
use serde_json::{Value, json};

fn csid(path: &str) -> Value {
    json!({
        "spiffeIDTemplate": format!("spiffe://{{{{ .TrustDomain }}}}/{path}/{{{{ .PodMeta.Name }}}}"),
        "podSelector": { "matchLabels": { "app": "web" } },
        "dnsNameTemplates": ["{{ .PodMeta.Name }}.app.svc"],
    })
}

#[tokio::test]
async fn a_template_edit_renames_the_entries_in_place() -> anyhow::Result<()> {
    let world = World::start("renames.test").await?;
    world.node("node-a").await?;
    world.namespace("app", &[]).await?;
    for i in 0..3 {
        world
            .pod(
                "app",
                &format!("web-{i}"),
                "default",
                "node-a",
                &[("app", "web")],
            )
            .await?;
    }
    world.apply_csid("a", csid("a")).await?;
    world.apply_csid("b", csid("b")).await?;
    let operator = Operator::start(&world.control_plane, &world.spire, "renames", "").await?;
    let before = entries::wait_for(&world.spire, "six pod entries", |e| {
        entries::pod_entries_of(e).len() == 6
    })
    .await?;
    let before = entries::pod_entry_ids(&before);

    world.apply_csid("a", csid("a-v2")).await?;
    let after = entries::wait_for(&world.spire, "a's entries carry the new path", |e| {
        let paths: Vec<String> = entries::pod_entry_ids(e).into_keys().collect();
        paths.len() == 6
            && paths.iter().filter(|p| p.contains("/a-v2/")).count() == 3
            && !paths.iter().any(|p| p.contains("/a/"))
    })
    .await?;
    let after = entries::pod_entry_ids(&after);

    // Every entry kept its ID: a's three under their new SPIFFE IDs, b's untouched.
    for i in 0..3 {
        let old = format!("spiffe://renames.test/a/web-{i}");
        let new = format!("spiffe://renames.test/a-v2/web-{i}");
        assert_eq!(after[&new], before[&old], "{new} is {old} renamed");
        let b = format!("spiffe://renames.test/b/web-{i}");
        assert_eq!(after[&b], before[&b]);
    }
    let before_ids: BTreeSet<&String> = before.values().collect();
    let after_ids: BTreeSet<&String> = after.values().collect();
    assert_eq!(before_ids, after_ids);

    let metrics = operator.metrics().await?;
    let writes = |operation: &str| {
        metrics.value(
            "spire_operator_entry_writes_total",
            &[("operation", operation), ("result", "success")],
        )
    };
    assert_eq!(
        (writes("create"), writes("update"), writes("delete")),
        (6.0, 3.0, 0.0),
        "creates, updates, deletes"
    );
    Ok(())
}

#[tokio::test]
async fn the_default_entry_resync_interval_lists_once_and_events_still_land() -> anyhow::Result<()>
{
    let world = World::start("cadence.test").await?;
    world.node("node-a").await?;
    world.namespace("app", &[]).await?;
    world
        .pod("app", "web-0", "default", "node-a", &[("app", "web")])
        .await?;
    world.apply_csid("a", csid("a")).await?;
    // gcInterval 1 s, as a user might set it; the variable left unset: the default.
    let mut operator = Operator::start_with_env(
        &world.control_plane,
        &world.spire,
        "cadence",
        "gcInterval: 1s\n",
        &[(ENTRY_RESYNC_INTERVAL, "")],
    )
    .await?;
    entries::wait_for(&world.spire, "web-0's entry", |e| {
        entries::pod_entries_of(e).len() == 1
    })
    .await?;

    // Events are followed between listings: a new pod gets its entry, a deleted one
    // loses it.
    world
        .pod("app", "web-1", "default", "node-a", &[("app", "web")])
        .await?;
    world.delete_pod("app", "web-0").await?;
    entries::wait_for(&world.spire, "web-1's entry only", |e| {
        let paths: Vec<String> = entries::pod_entry_ids(e).into_keys().collect();
        paths == ["spiffe://cadence.test/a/web-1"]
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lists = operator
        .metrics()
        .await?
        .value("spire_operator_entry_lists_total", &[]);
    assert_eq!(
        lists, 1.0,
        "one listing at start, none at the 1 s gcInterval (the default floor is 5 minutes)"
    );
    let log = std::fs::read_to_string(operator.log_path())?;
    assert!(
        log.contains("entries are fully re-listed on a timer every=300s"),
        "the start-up log says the cadence:\n{log}"
    );
    operator.stop();
    Ok(())
}
