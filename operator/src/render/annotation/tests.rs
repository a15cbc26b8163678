use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::config::Config;

fn settings(block: &str) -> AnnotationIdentities {
    Config::from_yaml(&format!(
        "trustDomain: td\nclusterName: c\nannotationIdentities:\n  enabled: true\n{block}"
    ))
    .unwrap()
    .annotation_identities
}

fn pod_data() -> TemplateData {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}]}
    }))
    .unwrap();
    TemplateData::new("td", "c", "cluster.local").with_pod(&pod)
}

fn check(
    settings: &AnnotationIdentities,
    value: &str,
    dns: Option<&str>,
    labels: &[(&str, &str)],
) -> Result<EntrySpec, Refusal> {
    let data = pod_data();
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let parent: SpiffeId = "spiffe://td/spire/agent/k8s_psat/c/n1".parse().unwrap();
    annotated_entry(
        settings,
        "td",
        &AnnotationRequest {
            by: AnnotatedBy::Pod,
            spiffe_id: value.into(),
            dns_names: dns.map(Into::into),
        },
        &AnnotationInput {
            data: &data,
            namespace: "shop",
            namespace_labels: Some(&labels),
            pod_uid: "u1",
            parent_id: &parent,
        },
    )
}

#[test]
fn an_id_under_the_pods_namespace_gets_an_entry_like_a_cluster_spiffe_id_one() {
    let entry = check(
        &settings(""),
        "spiffe://td/ns/shop/web",
        Some(" web.shop.svc , web,,web "),
        &[],
    )
    .unwrap();
    assert_eq!(entry.key.spiffe_id.to_string(), "spiffe://td/ns/shop/web");
    assert_eq!(
        entry.key.parent_id.to_string(),
        "spiffe://td/spire/agent/k8s_psat/c/n1"
    );
    assert_eq!(
        entry.key.selectors.iter().collect::<Vec<_>>(),
        ["k8s:pod-uid:u1"]
    );
    assert_eq!(entry.dns_names, ["web.shop.svc", "web"]);
}

#[test]
fn the_default_policy_keeps_each_namespace_in_its_own_subtree() {
    let settings = settings("");
    for (value, reason, needle) in [
        (
            "spiffe://td/ns/bank/admin",
            RefusalReason::NotAllowed,
            "path \"/ns/bank/admin\" is outside annotationIdentities.allowedSPIFFEIDTemplates, which allow here: \"/ns/shop/*\"",
        ),
        // Prefix matching is by segment: shop is not shopping.
        (
            "spiffe://td/ns/shopping/x",
            RefusalReason::NotAllowed,
            "outside",
        ),
        ("spiffe://td/ns/shop", RefusalReason::NotAllowed, "outside"),
        (
            "spiffe://other.org/ns/shop/web",
            RefusalReason::OtherTrustDomain,
            "trust domain \"other.org\" is not this cluster's \"td\"",
        ),
        (
            "spiffe://td/ns/shop/web\nspiffe://td/ns/bank/x",
            RefusalReason::InvalidSpiffeId,
            "\"spiffe://td/ns/shop/web\\nspiffe://td/ns/bank/x\" on the pod refused: contains control characters",
        ),
        (
            "spiffe://td/ns/shop/a\0",
            RefusalReason::InvalidSpiffeId,
            "control characters",
        ),
        (
            "spiffe://td/ns/shop/../bank/x",
            RefusalReason::InvalidSpiffeId,
            "not a SPIFFE ID",
        ),
        ("web", RefusalReason::InvalidSpiffeId, "not a SPIFFE ID"),
        (
            " spiffe://td/ns/shop/web",
            RefusalReason::InvalidSpiffeId,
            "not a SPIFFE ID",
        ),
        ("spiffe://td", RefusalReason::InvalidSpiffeId, "no path"),
    ] {
        let refusal = check(&settings, value, None, &[]).unwrap_err();
        assert_eq!(refusal.reason, reason, "{value:?}: {refusal}");
        assert!(refusal.message.contains(needle), "{value:?}: {refusal}");
        assert!(
            refusal
                .message
                .starts_with("annotation spiffe.io/spiffe-id="),
            "{refusal}"
        );
    }
}

#[test]
fn over_long_values_are_refused_and_shown_cut() {
    let value = format!("spiffe://td/ns/shop/{}", "a".repeat(3000));
    let refusal = check(&settings(""), &value, None, &[]).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::InvalidSpiffeId);
    assert!(
        refusal.message.contains("3020 bytes is longer"),
        "{refusal}"
    );
    assert!(refusal.message.len() < 400, "{}", refusal.message.len());
}

#[test]
fn configured_templates_render_with_the_pods_data() {
    let settings = settings(
        "  allowedSPIFFEIDTemplates: ['/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}/*', '/shared/{{ .PodMeta.Labels.app }}', '/x/{{ .PodMeta.Labels.missing }}/*']\n",
    );
    assert!(check(&settings, "spiffe://td/ns/shop/sa/web/v1", None, &[]).is_ok());
    assert!(check(&settings, "spiffe://td/shared/web", None, &[]).is_ok());
    let refusal = check(&settings, "spiffe://td/ns/shop/other", None, &[]).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::NotAllowed);
    assert!(
        refusal
            .message
            .contains("\"/ns/shop/sa/web/*\", \"/shared/web\", <"),
        "{refusal}"
    );
    assert!(check(&settings, "spiffe://td/shared/web/deeper", None, &[]).is_err());
}

#[test]
fn namespaces_opt_in_by_label() {
    let settings = settings("  namespaceSelector:\n    matchLabels: {spiffe: annotations}\n");
    let refusal = check(&settings, "spiffe://td/ns/shop/web", None, &[]).unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::NamespaceNotSelected);
    assert!(
        refusal
            .message
            .contains("namespace shop is not selected by annotationIdentities.namespaceSelector"),
        "{refusal}"
    );
    assert!(
        check(
            &settings,
            "spiffe://td/ns/shop/web",
            None,
            &[("spiffe", "annotations")]
        )
        .is_ok()
    );
}

#[test]
fn dns_names_must_be_dns_names() {
    for (value, needle) in [
        ("web,bad name", "item 1, \"bad name\", is not a DNS name"),
        ("web\nevil.example", "\"web\\nevil.example\""),
        ("-web", "is not a DNS name"),
        ("web.*.svc", "is not a DNS name"),
    ] {
        let refusal =
            check(&settings(""), "spiffe://td/ns/shop/web", Some(value), &[]).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::InvalidDnsNames, "{value:?}");
        assert!(
            refusal.message.contains("spiffe.io/dns-names="),
            "{refusal}"
        );
        assert!(refusal.message.contains(needle), "{value:?}: {refusal}");
    }
    assert_eq!(
        parse_dns_names("*.web.shop, web").unwrap(),
        ["*.web.shop", "web"]
    );
    let many: Vec<String> = (0..65).map(|i| format!("n{i}")).collect();
    assert!(
        parse_dns_names(&many.join(","))
            .unwrap_err()
            .contains("65 names")
    );
}
