//! Annotation identities (`annotationIdentities`): a pod's or its ServiceAccount's
//! `spiffe.io/spiffe-id` annotation becomes an entry on the real SPIRE server when the
//! policy allows it, a Warning event and a metric when it does not; removing the
//! annotation or the pod removes the entry; with the feature off nothing happens.

use std::time::{Duration, Instant};

use e2e::entries::{self, EntryView};
use e2e::kube_util::scheduled_pod;
use e2e::operator::{Operator, restricted_kubeconfig};
use e2e::workdir::WorkDir;
use e2e::world::World;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const TRUST_DOMAIN: &str = "annotations.test";
const ID_ANNOTATION: &str = "spiffe.io/spiffe-id";
const DNS_ANNOTATION: &str = "spiffe.io/dns-names";

fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

/// The entries of the pod with `uid`, by SPIFFE ID.
fn ids_of(all: &[EntryView], uid: &str) -> Vec<String> {
    let mut ids: Vec<String> = entries::for_pod(all, uid)
        .iter()
        .map(|e| e.spiffe_id.clone())
        .collect();
    ids.sort();
    ids
}

async fn annotated_pod(
    world: &World,
    name: &str,
    service_account: &str,
    annotations: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut pod = scheduled_pod("shop", name, service_account, "node-a", &[]);
    pod.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    let pod = world.create_pod(pod).await?;
    Ok(pod.metadata.uid.unwrap_or_default())
}

async fn annotate<K>(api: &Api<K>, name: &str, annotations: Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": annotations } })),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn annotations_become_entries_under_the_policy_and_go_with_the_annotation()
-> anyhow::Result<()> {
    let world = World::start(TRUST_DOMAIN).await?;
    let node = world.node("node-a").await?;
    world.namespace("shop", &[]).await?;
    world.service_account("shop", "web").await?;
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), "shop");
    let accounts: Api<ServiceAccount> = Api::namespaced(world.client.clone(), "shop");

    // Feature off (the default): an annotation is ignored, no event.
    let ignored = annotated_pod(
        &world,
        "ignored",
        "default",
        &[(ID_ANNOTATION, &id("/ns/shop/ignored"))],
    )
    .await?;
    let forbidden_while_off = annotated_pod(
        &world,
        "off-bank",
        "default",
        &[(ID_ANNOTATION, &id("/ns/bank/admin"))],
    )
    .await?;
    let mut operator = Operator::start(&world.control_plane, &world.spire, "annot", "").await?;
    operator.wait_initial_sync().await?;
    entries::holds_for(
        &world.spire,
        "no entry from annotations while the feature is off",
        Duration::from_secs(3),
        |all| ids_of(all, &ignored).is_empty() && ids_of(all, &forbidden_while_off).is_empty(),
    )
    .await?;
    assert!(
        world.events_for("Pod", "off-bank").await?.is_empty(),
        "no event while the feature is off"
    );
    operator.stop();

    let mut operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "annot",
        "gcInterval: 2s\nannotationIdentities:\n  enabled: true\n  namespaceSelector:\n    matchExpressions: [{key: annotations, operator: NotIn, values: [off]}]\n",
    )
    .await?;
    operator.wait_initial_sync().await?;

    // The annotated pod that waited gets its entry, with the ClusterSPIFFEID rules for
    // parent ID and selectors.
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    let all = entries::wait_for(&world.spire, "the annotated pod's entry", |all| {
        ids_of(all, &ignored) == [id("/ns/shop/ignored")]
    })
    .await?;
    let entry = entries::for_pod(&all, &ignored)[0].clone();
    assert_eq!(
        entry.parent_id,
        id(&format!("/spire/agent/k8s_psat/annot/{node_uid}"))
    );
    assert_eq!(
        entry.selectors.iter().collect::<Vec<_>>(),
        [&format!("k8s:pod-uid:{ignored}")]
    );

    // Annotating a running pod: the time until its entry is on the server.
    let late = annotated_pod(&world, "late", "default", &[]).await?;
    let started = Instant::now();
    annotate(
        &pods,
        "late",
        json!({ ID_ANNOTATION: id("/ns/shop/late"), DNS_ANNOTATION: "late.shop.svc, late" }),
    )
    .await?;
    let all = loop {
        let all = entries::list(&world.spire).await?;
        if !ids_of(&all, &late).is_empty() || started.elapsed() > Duration::from_secs(30) {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "annotation -> entry on the SPIRE server: {:?}",
        started.elapsed()
    );
    assert_eq!(ids_of(&all, &late), [id("/ns/shop/late")]);
    assert_eq!(
        entries::for_pod(&all, &late)[0].dns_names,
        ["late.shop.svc", "late"]
    );

    // Another namespace's identity, and a hostile value: refused with an event naming
    // annotation, value and rule; counted; never an entry.
    let evil = annotated_pod(
        &world,
        "evil",
        "default",
        &[(ID_ANNOTATION, &id("/ns/bank/admin"))],
    )
    .await?;
    let event = world.wait_event("Pod", "evil", "AnnotationRefused").await?;
    let note = event.message.unwrap_or_default();
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    for needle in [
        "annotation spiffe.io/spiffe-id=\"spiffe://annotations.test/ns/bank/admin\"",
        "outside annotationIdentities.allowedSPIFFEIDTemplates",
        "\"/ns/shop/*\"",
    ] {
        assert!(note.contains(needle), "{needle} in {note}");
    }
    let hostile = annotated_pod(
        &world,
        "hostile",
        "default",
        &[(
            ID_ANNOTATION,
            &format!("{}\n{}", id("/ns/shop/x"), id("/ns/bank/y")),
        )],
    )
    .await?;
    let event = world
        .wait_event("Pod", "hostile", "AnnotationRefused")
        .await?;
    assert!(
        event
            .message
            .unwrap_or_default()
            .contains("control characters"),
        "the hostile value's event says why"
    );
    operator
        .wait_metric(
            "spire_operator_annotations_refused_total",
            &[("reason", "not_allowed")],
            Duration::from_secs(10),
            |v| v >= 2.0,
        )
        .await?;
    operator
        .wait_metric(
            "spire_operator_annotations_refused_total",
            &[("reason", "invalid_spiffe_id")],
            Duration::from_secs(10),
            |v| v >= 1.0,
        )
        .await?;
    // Across resyncs: no entry, and the refusal is counted once, not at every pass.
    entries::holds_for(
        &world.spire,
        "no entry for refused annotations",
        Duration::from_secs(5),
        |all| ids_of(all, &evil).is_empty() && ids_of(all, &hostile).is_empty(),
    )
    .await?;
    // Two refused values of this kind so far: "evil" and "off-bank" (refused once the
    // feature is on), each counted once.
    let metrics = operator.metrics().await?;
    assert_eq!(
        metrics.value(
            "spire_operator_annotations_refused_total",
            &[("reason", "not_allowed")]
        ),
        2.0
    );
    assert_eq!(
        world.events_for("Pod", "evil").await?.len(),
        1,
        "one event per refusal"
    );

    // A ServiceAccount's annotation applies to all its pods; a pod's own one wins.
    let w0 = annotated_pod(&world, "w-0", "web", &[]).await?;
    let w1 = annotated_pod(&world, "w-1", "web", &[]).await?;
    let own = annotated_pod(
        &world,
        "w-own",
        "web",
        &[(ID_ANNOTATION, &id("/ns/shop/own"))],
    )
    .await?;
    annotate(
        &accounts,
        "web",
        json!({ ID_ANNOTATION: id("/ns/shop/sa/web"), DNS_ANNOTATION: "web.shop.svc" }),
    )
    .await?;
    let all = entries::wait_for(&world.spire, "the ServiceAccount's ID on its pods", |all| {
        ids_of(all, &w0) == [id("/ns/shop/sa/web")] && ids_of(all, &w1) == [id("/ns/shop/sa/web")]
    })
    .await?;
    assert_eq!(entries::for_pod(&all, &w0)[0].dns_names, ["web.shop.svc"]);
    assert_eq!(
        ids_of(&all, &own),
        [id("/ns/shop/own")],
        "the pod's annotation wins"
    );

    // Removing the annotation (pod or ServiceAccount) or the pod removes the entry.
    annotate(&pods, "late", json!({ ID_ANNOTATION: null })).await?;
    annotate(&accounts, "web", json!({ ID_ANNOTATION: null })).await?;
    world.delete_pod("shop", "w-own").await?;
    entries::wait_for(
        &world.spire,
        "annotation entries gone with their annotations",
        |all| {
            ids_of(all, &late).is_empty()
                && ids_of(all, &w0).is_empty()
                && ids_of(all, &w1).is_empty()
                && ids_of(all, &own).is_empty()
        },
    )
    .await?;
    // Namespaces opt in by label: refused while the namespace is not selected, an entry
    // as soon as it is.
    world.namespace("closed", &[("annotations", "off")]).await?;
    let mut pod = scheduled_pod("closed", "c-0", "default", "node-a", &[]);
    pod.metadata.annotations = Some([(ID_ANNOTATION.to_owned(), id("/ns/closed/c-0"))].into());
    let closed = world
        .create_pod(pod)
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    let event = world.wait_event("Pod", "c-0", "AnnotationRefused").await?;
    assert!(
        event
            .message
            .unwrap_or_default()
            .contains("namespace closed is not selected by annotationIdentities.namespaceSelector"),
        "the event names the rule"
    );
    let opened = Instant::now();
    world
        .label_namespace("closed", json!({ "annotations": "on" }))
        .await?;
    entries::wait_for(
        &world.spire,
        "the entry once the namespace opts in",
        |all| ids_of(all, &closed) == [id("/ns/closed/c-0")],
    )
    .await?;
    eprintln!(
        "namespace label -> entry on the SPIRE server: {:?}",
        opened.elapsed()
    );

    // The pod whose annotation stays keeps its entry.
    let all = entries::list(&world.spire).await?;
    assert_eq!(ids_of(&all, &ignored), [id("/ns/shop/ignored")]);
    Ok(())
}

/// Annotations alone (no ClusterSPIFFEIDs reconciled, no CRDs installed) with RBAC that
/// allows no ServiceAccounts: pods, nodes and namespaces are still watched, a pod's
/// annotation still gets its entry, and ServiceAccount annotations are not read.
#[tokio::test]
async fn pod_annotations_work_without_cluster_spiffe_ids_or_service_account_rbac()
-> anyhow::Result<()> {
    let world = World::start_without_crds(TRUST_DOMAIN).await?;
    world.node("node-a").await?;
    world.namespace("shop", &[]).await?;
    world.service_account("shop", "web").await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(world.client.clone(), "shop");
    annotate(
        &accounts,
        "web",
        json!({ ID_ANNOTATION: id("/ns/shop/sa/web") }),
    )
    .await?;
    let dir = WorkDir::new("annotations-only")?;
    let kubeconfig = dir.join("kubeconfig");
    restricted_kubeconfig(
        &world.control_plane,
        "annotations-only",
        json!([
            {"apiGroups": [""], "resources": ["pods", "nodes", "namespaces"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"],
             "verbs": ["get", "create", "patch", "update"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
             "verbs": ["create", "patch"]},
        ]),
        &kubeconfig,
    )
    .await?;
    let mut operator = Operator::start_as(
        &world.control_plane,
        &world.spire,
        "annot",
        "reconcile:\n  clusterStaticEntries: false\nannotationIdentities:\n  enabled: true\n",
        &kubeconfig,
    )
    .await?;
    operator.wait_initial_sync().await?;
    let own = annotated_pod(
        &world,
        "own",
        "web",
        &[(ID_ANNOTATION, &id("/ns/shop/own"))],
    )
    .await?;
    let via_sa = annotated_pod(&world, "via-sa", "web", &[]).await?;
    entries::wait_for(&world.spire, "the pod annotation's entry", |all| {
        ids_of(all, &own) == [id("/ns/shop/own")]
    })
    .await?;
    entries::holds_for(
        &world.spire,
        "no entry from the unreadable ServiceAccount's annotation",
        Duration::from_secs(3),
        |all| ids_of(all, &via_sa).is_empty(),
    )
    .await?;
    operator.ensure_running()?;
    assert!(
        std::fs::read_to_string(operator.log_path())?
            .contains("ServiceAccount annotations are not read"),
        "the start-up warning says what is lost"
    );
    Ok(())
}
