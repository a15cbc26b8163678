//! Differential, under configuration the first scenario leaves at its defaults: a
//! `parentIDTemplate`, an `entryIDPrefix` (with an entry made at the server that both
//! must leave alone), regex `ignoreNamespaces`, and selectors with `matchExpressions`
//! (`In`, `NotIn`, `Exists`, `DoesNotExist`) on pods and namespaces.
//!
//! The ignore patterns are chosen so that anchored (ours) and unanchored (the
//! reference) matching agree, except for one namespace, `my-team-7`, kept out of the
//! comparison: it documents the deliberate difference (README "Deliberate differences").

use e2e::entries;
use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use serde_json::json;

use crate::diff::{Pair, by_path, converge_where, paths};

const TRUST_DOMAIN: &str = "diffc.test";
const CLUSTER: &str = "diffc";
const ID_PREFIX: &str = "diffp.";
const CONFIG: &str = r#"clusterDomain: cluster.local
parentIDTemplate: "spiffe://{{ .TrustDomain }}/agent/{{ .ClusterName }}/{{ .NodeMeta.Name }}"
entryIDPrefix: diffp
ignoreNamespaces: ["kube-.*", "spire-system", "team-[0-9]+"]
"#;
/// Unanchored, `team-[0-9]+` matches inside this name; anchored, it does not.
const ANCHORING_DIFFERS: &str = "my-team-7";
/// The entry an administrator made at each server with the CLI.
const MANUAL_ID: &str = "spiffe://diffc.test/made-by-hand";

fn outside_the_documented_difference(spiffe_id: &str) -> bool {
    !spiffe_id.contains(&format!("/{ANCHORING_DIFFERS}/"))
}

#[tokio::test]
async fn parent_template_id_prefix_regex_ignores_and_match_expressions_agree() -> anyhow::Result<()>
{
    let pair = Pair::start(TRUST_DOMAIN).await?;
    let world = &pair.world;
    for spire in [&world.spire, &pair.reference] {
        spire.server_cli(&[
            "entry",
            "create",
            "-spiffeID",
            MANUAL_ID,
            "-parentID",
            "spiffe://diffc.test/spire/agent/x509pop/admin",
            "-selector",
            "unix:uid:1000",
        ])?;
    }

    world.node("node-a").await?;
    world.node("node-b").await?;
    world
        .namespace("dev", &[("env", "dev"), ("team", "a")])
        .await?;
    world.namespace("prod", &[("env", "prod")]).await?;
    world.namespace("teams", &[]).await?;
    world.namespace("team-7", &[]).await?;
    world.namespace(ANCHORING_DIFFERS, &[]).await?;
    world.namespace("kube-system", &[]).await?;
    let front = [("tier", "front")];
    for (namespace, pod, node, labels) in [
        ("dev", "front-0", "node-a", &front[..]),
        (
            "dev",
            "back-0",
            "node-b",
            &[("tier", "back"), ("legacy", "yes")],
        ),
        ("dev", "mid-0", "node-a", &[("tier", "mid")]),
        ("prod", "front-1", "node-b", &front),
        // No env label: NotIn selects it.
        ("teams", "front-2", "node-a", &front),
        ("team-7", "front-3", "node-a", &front),
        ("kube-system", "front-4", "node-a", &front),
        (ANCHORING_DIFFERS, "front-5", "node-b", &front),
        // Exists holds for an empty value.
        ("dev", "canary-0", "node-b", &[("canary", "")]),
        ("teams", "canary-1", "node-a", &[("canary", "yes")]),
    ] {
        world.pod(namespace, pod, "default", node, labels).await?;
    }

    world
        .apply_csid(
            "tier",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/tier/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}",
                "podSelector": { "matchExpressions": [
                    { "key": "tier", "operator": "In", "values": ["front", "back"] },
                    { "key": "legacy", "operator": "DoesNotExist" },
                ] },
                "namespaceSelector": { "matchExpressions": [
                    { "key": "env", "operator": "NotIn", "values": ["prod"] },
                ] },
                "workloadSelectorTemplates": ["k8s:ns:{{ .PodMeta.Namespace }}"],
            }),
        )
        .await?;
    world
        .apply_csid(
            "canary",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/canary/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}",
                "podSelector": { "matchExpressions": [
                    { "key": "canary", "operator": "Exists" },
                ] },
                "namespaceSelector": {
                    "matchLabels": { "env": "dev" },
                    "matchExpressions": [{ "key": "team", "operator": "Exists" }],
                },
            }),
        )
        .await?;

    let _reference = ReferenceControllerManager::start(
        &world.control_plane,
        &pair.reference,
        CLUSTER,
        &format!("{CONFIG}gcInterval: 1000000000\n"),
    )
    .await?;
    let _ours = Operator::start(&world.control_plane, &world.spire, CLUSTER, CONFIG).await?;

    let converge = |what: &'static str, expected: Vec<&'static str>| {
        converge_where(
            &world.spire,
            &pair.reference,
            what,
            |f| outside_the_documented_difference(&f.spiffe_id),
            move |e| paths(e) == expected,
        )
    };
    let ours = converge(
        "the initial state",
        vec![
            "/canary/dev/canary-0",
            "/made-by-hand",
            "/tier/dev/front-0",
            "/tier/my-team-7/front-5",
            "/tier/teams/front-2",
        ],
    )
    .await?;

    let parent = &by_path(&ours, "/tier/dev/front-0")?.parent_id;
    assert_eq!(parent, "spiffe://diffc.test/agent/diffc/node-a");
    // Each tool's own entries carry the prefix; the CLI's entry is left alone by both.
    for (who, entries) in [
        ("ours", ours.clone()),
        ("the reference", entries::list(&pair.reference).await?),
    ] {
        for entry in &entries {
            let manual = entry.spiffe_id == MANUAL_ID;
            anyhow::ensure!(
                manual != entry.id.starts_with(ID_PREFIX),
                "{who}: entry {entry}: an ID with {ID_PREFIX:?} is expected exactly for the tool's own entries"
            );
        }
    }
    // The documented difference: the reference's unanchored `team-[0-9]+` ignores
    // my-team-7, ours (anchored, whole name) does not.
    let reference_paths = paths(&entries::list(&pair.reference).await?);
    assert!(
        !reference_paths
            .iter()
            .any(|p| p.contains(ANCHORING_DIFFERS)),
        "the reference ignores {ANCHORING_DIFFERS} (unanchored match): {reference_paths:?}"
    );

    // back-0 loses the label DoesNotExist excludes; prod is renamed to staging, leaving
    // NotIn [prod]; canary-1's namespace gains env=dev but not team.
    world
        .label_pod("dev", "back-0", json!({ "legacy": null }))
        .await?;
    world
        .label_namespace("prod", json!({ "env": "staging" }))
        .await?;
    world
        .label_namespace("teams", json!({ "env": "dev" }))
        .await?;
    converge(
        "relabelled",
        vec![
            "/canary/dev/canary-0",
            "/made-by-hand",
            "/tier/dev/back-0",
            "/tier/dev/front-0",
            "/tier/my-team-7/front-5",
            "/tier/prod/front-1",
            "/tier/teams/front-2",
        ],
    )
    .await?;
    Ok(())
}
