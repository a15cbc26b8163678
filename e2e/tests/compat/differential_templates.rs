//! Differential, on what templates can do besides naming a field: the builtins of Go's
//! text/template (`printf`, `print`, `index`, `len`, `slice`, `eq`, `lt`, `not`, `or`,
//! `if`/`else`, `with`, `range`), pipelines, variables, trim markers, annotations, node
//! labels and pod spec fields. Each ClusterSPIFFEID puts one construct in the path of its
//! own SPIFFE ID, so a construct one tool renders differently shows as its own entry.

use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::diff::{Pair, paths};

const TRUST_DOMAIN: &str = "difftpl.test";
const CLUSTER: &str = "difftpl";
const CONFIG: &str = "clusterDomain: cluster.local\n";

/// (name, path template, the path both render).
const TEMPLATES: Cases = &[
    (
        "printf",
        r#"{{ printf "%s-%s" .PodMeta.Namespace .PodMeta.Name }}"#,
        "app-tpl-0",
    ),
    ("printf-pad", r#"{{ printf "%03d" 7 }}"#, "007"),
    ("print", r#"{{ print .PodMeta.Name "-" 7 }}"#, "tpl-0-7"),
    (
        "index",
        r#"{{ index .PodMeta.Labels "app.kubernetes.io/name" }}"#,
        "shop",
    ),
    ("len", "{{ len .PodSpec.Containers }}", "1"),
    ("slice", "{{ slice .PodMeta.Name 0 3 }}", "tpl"),
    (
        "eq",
        r#"{{ if eq .PodMeta.Namespace "app" }}yes{{ else }}no{{ end }}"#,
        "yes",
    ),
    (
        "lt",
        "{{ if lt (len .PodMeta.Name) 10 }}short{{ end }}",
        "short",
    ),
    (
        "if-empty",
        "{{ if .PodMeta.Labels.tier }}tiered{{ else }}flat{{ end }}",
        "flat",
    ),
    (
        "not",
        "{{ if not .PodMeta.Labels.tier }}untiered{{ end }}",
        "untiered",
    ),
    ("or", r#"{{ or .PodMeta.Labels.tier "dflt" }}"#, "dflt"),
    (
        "with",
        "{{ with .NodeMeta.Labels.zone }}{{ . }}{{ end }}",
        "z1",
    ),
    (
        "range",
        "{{ range .PodSpec.Containers }}{{ .Name }}{{ end }}",
        "app",
    ),
    (
        "pipeline",
        r#"{{ .PodMeta.Name | printf "%s.x" }}"#,
        "tpl-0.x",
    ),
    (
        "variable",
        "{{ $ns := .PodMeta.Namespace }}{{ $ns }}",
        "app",
    ),
    ("trim", "{{- .PodMeta.Name -}}", "tpl-0"),
    ("annotation", "{{ .PodMeta.Annotations.team }}", "blue"),
    ("node-name", "{{ .PodSpec.NodeName }}", "node-a"),
];

/// Tests: (name, path template, the path the reference renders).
type Cases = &'static [(&'static str, &'static str, &'static str)];

/// A missing map key inside a condition or a default is not printed, so the reference
/// (text/template's default `missingkey`) renders a valid ID.
const MISSING_KEY_CONDITIONS: Cases = &[
    (
        "or-missing",
        r#"{{ or .PodMeta.Labels.missing "dflt" }}"#,
        "dflt",
    ),
    (
        "if-missing",
        "{{ if .PodMeta.Labels.missing }}set{{ else }}unset{{ end }}",
        "unset",
    ),
    (
        "with-missing",
        "{{ with .PodMeta.Labels.missing }}{{ . }}{{ else }}none{{ end }}",
        "none",
    ),
];

/// One pod (with labels, an annotation, a node with a label) and one ClusterSPIFFEID per
/// case, reconciled by both tools; returns once ours holds the expected paths and the
/// reference the same entries. With `reference_first`, waits for the reference to
/// render them first (the behaviour to match, when ours is known not to).
async fn render_alike(
    trust_domain: &str,
    cases: Cases,
    reference_first: bool,
) -> anyhow::Result<()> {
    let pair = Pair::start(trust_domain).await?;
    let world = &pair.world;
    world.node("node-a").await?;
    Api::<Node>::all(world.client.clone())
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "zone": "z1" } } })),
        )
        .await?;
    world.namespace("app", &[]).await?;
    let mut pod = e2e::kube_util::scheduled_pod(
        "app",
        "tpl-0",
        "default",
        "node-a",
        &[
            ("app", "tpl"),
            ("app.kubernetes.io/name", "shop"),
            ("tier", ""),
        ],
    );
    pod.metadata.annotations = Some([("team".to_owned(), "blue".to_owned())].into());
    world.create_pod(pod).await?;
    for (name, template, _) in cases {
        world
            .apply_csid(
                name,
                json!({
                    "spiffeIDTemplate": format!("spiffe://{{{{ .TrustDomain }}}}/{name}/{template}"),
                    "podSelector": { "matchLabels": { "app": "tpl" } },
                }),
            )
            .await?;
    }

    let _reference = ReferenceControllerManager::start(
        &world.control_plane,
        &pair.reference,
        CLUSTER,
        &format!("{CONFIG}gcInterval: 1000000000\n"),
    )
    .await?;
    let _ours = Operator::start(&world.control_plane, &world.spire, CLUSTER, CONFIG).await?;

    let mut expected: Vec<String> = cases
        .iter()
        .map(|(name, _, rendered)| format!("/{name}/{rendered}"))
        .collect();
    expected.sort();
    if reference_first {
        e2e::entries::wait_for_within(
            &pair.reference,
            "the reference renders every case",
            std::time::Duration::from_secs(60),
            |e| paths(e) == expected,
        )
        .await?;
    }
    pair.converge("every case rendered", |e| paths(e) == expected)
        .await?;
    Ok(())
}

#[tokio::test]
async fn template_builtins_render_alike() -> anyhow::Result<()> {
    render_alike(TRUST_DOMAIN, TEMPLATES, false).await
}

/// A missing map key inside `or`/`if`/`with` renders as in Go (ours refused these until
/// its templates took Go's default for missing keys; only `<no value>` printed into an ID
/// stays an error).
#[tokio::test]
async fn missing_keys_in_conditions_render_alike() -> anyhow::Result<()> {
    render_alike("difftpm.test", MISSING_KEY_CONDITIONS, true).await
}
