use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::crd::{ClusterSPIFFEIDSpec, ClusterStaticEntrySpec};

const TD: &str = "example.org";

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-0".into()),
            namespace: Some("shop".into()),
            uid: Some("pod-uid-1".into()),
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some("frontend".into()),
            node_name: Some("n1".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node() -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            uid: Some("node-uid".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn identity(spec: ClusterSPIFFEIDSpec) -> Result<PodIdentity, SpecError> {
    PodIdentity::parse(&ClusterSPIFFEID {
        metadata: ObjectMeta {
            name: Some("test".into()),
            ..Default::default()
        },
        spec,
        status: None,
    })
}

fn ns_sa() -> ClusterSPIFFEIDSpec {
    ClusterSPIFFEIDSpec {
        spiffe_id_template: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}".into(),
        ..Default::default()
    }
}

fn render(spec: ClusterSPIFFEIDSpec, services: &[String]) -> Result<EntrySpec, SpecError> {
    let node_data = TemplateData::new(TD, "prod", "cluster.local").with_node(&node());
    let parent = ParentTemplate::parse(None)
        .unwrap()
        .render(&node_data, TD)
        .unwrap();
    let data = node_data.with_pod(&pod());
    let input = PodInput {
        data: &data,
        pod_uid: "pod-uid-1",
        parent_id: &parent,
        service_dns_names: services,
    };
    identity(spec)?.render(&input, TD)
}

#[test]
fn renders_a_pod_entry_like_spire_controller_manager() {
    let entry = render(
        ClusterSPIFFEIDSpec {
            dns_name_templates: vec![
                "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}".into(),
                "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}".into(),
            ],
            workload_selector_templates: vec!["k8s:sa:{{ .PodSpec.ServiceAccountName }}".into()],
            federates_with: vec!["partner.org".into()],
            ttl: Some("1h30m".parse().unwrap()),
            jwt_ttl: Some("5m".parse().unwrap()),
            admin: true,
            hint: Some("web".into()),
            ..ns_sa()
        },
        &[],
    )
    .unwrap();
    assert_eq!(
        entry.key.spiffe_id.to_string(),
        "spiffe://example.org/ns/shop/sa/frontend"
    );
    assert_eq!(
        entry.key.parent_id.to_string(),
        "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid"
    );
    assert_eq!(
        entry.key.selectors.iter().collect::<Vec<_>>(),
        ["k8s:pod-uid:pod-uid-1", "k8s:sa:frontend"]
    );
    assert_eq!(entry.dns_names, ["web-0.shop"]);
    assert_eq!((entry.x509_svid_ttl, entry.jwt_svid_ttl), (5400, 300));
    assert!(entry.admin && !entry.downstream);
    assert_eq!(entry.hint, "web");
    assert_eq!(
        entry.federates_with.iter().collect::<Vec<_>>(),
        ["partner.org"]
    );
}

#[test]
fn federates_with_takes_names_and_spiffe_ids_like_spire_controller_manager() {
    let entry = render(
        ClusterSPIFFEIDSpec {
            federates_with: vec![
                "spiffe://partner.org".into(),
                "other.org".into(),
                "spiffe://third.org/any/path".into(),
                "partner.org".into(),
            ],
            ..ns_sa()
        },
        &[],
    )
    .unwrap();
    assert_eq!(
        entry.federates_with.iter().collect::<Vec<_>>(),
        ["other.org", "partner.org", "third.org"]
    );
}

#[test]
fn service_names_follow_template_names_without_duplicates() {
    let services = service_dns_names("web", "shop", "cluster.local");
    let entry = render(
        ClusterSPIFFEIDSpec {
            dns_name_templates: vec!["web".into(), "a.example".into()],
            auto_populate_dns_names: true,
            ..ns_sa()
        },
        &services,
    )
    .unwrap();
    assert_eq!(
        entry.dns_names,
        [
            "web",
            "a.example",
            "web.shop",
            "web.shop.svc",
            "web.shop.svc.cluster.local"
        ]
    );
    assert_eq!(
        service_dns_names("web", "shop", ""),
        ["web", "web.shop", "web.shop.svc"]
    );
}

#[test]
fn errors_name_the_field() {
    let cases: Vec<(&str, ClusterSPIFFEIDSpec)> = vec![
        (
            "spec.spiffeIDTemplate",
            ClusterSPIFFEIDSpec {
                spiffe_id_template: "spiffe://other.org/x".into(),
                ..Default::default()
            },
        ),
        (
            "spec.spiffeIDTemplate",
            ClusterSPIFFEIDSpec {
                spiffe_id_template: "spiffe://{{ .TrustDomain }}/{{ .PodMeta.Nme }}".into(),
                ..Default::default()
            },
        ),
        (
            "spec.workloadSelectorTemplates[0]",
            ClusterSPIFFEIDSpec {
                workload_selector_templates: vec!["k8s".into()],
                ..ns_sa()
            },
        ),
        (
            "spec.workloadSelectorTemplates[0]",
            ClusterSPIFFEIDSpec {
                workload_selector_templates: vec!["{{ .PodMeta.Name ".into()],
                ..ns_sa()
            },
        ),
        (
            "spec.dnsNameTemplates[1]",
            ClusterSPIFFEIDSpec {
                dns_name_templates: vec!["ok".into(), "{{ .Nope }}".into()],
                ..ns_sa()
            },
        ),
        (
            "spec.federatesWith[0]",
            ClusterSPIFFEIDSpec {
                federates_with: vec!["Partner.org".into()],
                ..ns_sa()
            },
        ),
        (
            "spec.federatesWith[1]",
            ClusterSPIFFEIDSpec {
                federates_with: vec!["a.org".into(), "https://partner.org".into()],
                ..ns_sa()
            },
        ),
        (
            "spec.ttl",
            ClusterSPIFFEIDSpec {
                ttl: Some("-5m".parse().unwrap()),
                ..ns_sa()
            },
        ),
    ];
    for (field, spec) in cases {
        let err = render(spec, &[]).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
}

#[test]
fn parent_template_sees_node_but_not_pod_and_stays_in_the_trust_domain() {
    let node_data = TemplateData::new(TD, "prod", "cluster.local").with_node(&node());
    let by_name = ParentTemplate::parse(Some(
        "spiffe://{{ .TrustDomain }}/agent/{{ .NodeMeta.Name }}",
    ))
    .unwrap();
    assert_eq!(
        by_name.render(&node_data, TD).unwrap().to_string(),
        "spiffe://example.org/agent/n1"
    );
    let by_pod =
        ParentTemplate::parse(Some("spiffe://{{ .TrustDomain }}/{{ .PodMeta.Name }}")).unwrap();
    assert!(by_pod.render(&node_data, TD).is_err());
    let elsewhere = ParentTemplate::parse(Some("spiffe://other.org/agent")).unwrap();
    assert_eq!(
        elsewhere.render(&node_data, TD).unwrap_err().field,
        "parentIDTemplate"
    );
}

#[test]
fn static_entries_parse_and_name_bad_fields() {
    let good = ClusterStaticEntry {
        metadata: ObjectMeta {
            name: Some("db".into()),
            ..Default::default()
        },
        spec: ClusterStaticEntrySpec {
            spiffe_id: "spiffe://example.org/db".into(),
            parent_id: "spiffe://example.org/spire/agent/x509pop/host".into(),
            selectors: vec!["unix:uid:1000".into()],
            store_svid: true,
            dns_names: vec!["db.b".into(), "db.a".into(), "db.b".into()],
            federates_with: vec!["spiffe://partner.org".into()],
            ..Default::default()
        },
        status: None,
    };
    let parsed = StaticEntry::parse(&good).unwrap();
    assert!(parsed.entry.store_svid);
    assert_eq!(parsed.entry.key.selectors.len(), 1);
    // dnsNames as written (spire-controller-manager passes them through unchanged).
    assert_eq!(parsed.entry.dns_names, ["db.b", "db.a", "db.b"]);
    assert_eq!(
        parsed.entry.federates_with.iter().collect::<Vec<_>>(),
        ["partner.org"]
    );

    let mut bad = good.clone();
    bad.spec.selectors = vec!["unix:uid:1000".into(), "nocolon".into()];
    assert_eq!(
        StaticEntry::parse(&bad).unwrap_err().field,
        "spec.selectors[1]"
    );
    let mut bad = good;
    bad.spec.parent_id = "example.org/agent".into();
    assert_eq!(StaticEntry::parse(&bad).unwrap_err().field, "spec.parentID");
}

#[test]
fn masking_order_is_creation_then_not_deleting_then_uid() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let at = |seconds: i64| {
        Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap(),
        ))
    };
    let meta = |created: i64, deleting: bool, uid: &str| ObjectMeta {
        creation_timestamp: at(created),
        deletion_timestamp: if deleting { at(created + 1) } else { None },
        uid: Some(uid.into()),
        ..ObjectMeta::default()
    };
    let older_deleting = Age::of(&meta(100, true, "z"));
    let newer = Age::of(&meta(200, false, "a"));
    assert!(older_deleting < newer, "creation time first");
    let same_time_live = Age::of(&meta(100, false, "z"));
    let same_time_deleting = Age::of(&meta(100, true, "a"));
    assert!(
        same_time_live < same_time_deleting,
        "then not being deleted"
    );
    assert!(
        Age::of(&meta(100, false, "a")) < same_time_live,
        "then the UID"
    );
}

/// Selector and DNS-name injection: newlines, NUL, other control characters and
/// over-long values are refused naming the field, whether they come from the template
/// itself or from pod data it renders.
#[test]
fn control_characters_and_over_long_values_are_refused_in_selectors_and_dns_names() {
    let long = "x".repeat(MAX_SELECTOR_LEN);
    let cases: Vec<(&str, ClusterSPIFFEIDSpec, &str)> = vec![
        (
            "spec.workloadSelectorTemplates[0]",
            ClusterSPIFFEIDSpec {
                workload_selector_templates: vec!["k8s:ns:shop\nunix:uid:0".into()],
                ..ns_sa()
            },
            "contains the control character '\\n'",
        ),
        (
            "spec.workloadSelectorTemplates[0]",
            ClusterSPIFFEIDSpec {
                workload_selector_templates: vec!["k8s:ns:{{ .PodMeta.Namespace }}\0".into()],
                ..ns_sa()
            },
            "contains the control character '\\0'",
        ),
        (
            "spec.workloadSelectorTemplates[0]",
            ClusterSPIFFEIDSpec {
                workload_selector_templates: vec![format!("k8s:pod-label:{long}")],
                ..ns_sa()
            },
            "bytes long; selectors are limited to 1024",
        ),
        (
            "spec.dnsNameTemplates[0]",
            ClusterSPIFFEIDSpec {
                dns_name_templates: vec!["web.shop.svc\r\nevil.example".into()],
                ..ns_sa()
            },
            "is not a DNS name: it contains '\\r'",
        ),
        (
            "spec.dnsNameTemplates[0]",
            ClusterSPIFFEIDSpec {
                dns_name_templates: vec!["{{ .PodMeta.Name }} evil.example".into()],
                ..ns_sa()
            },
            "is not a DNS name: it contains ' '",
        ),
        (
            "spec.dnsNameTemplates[0]",
            ClusterSPIFFEIDSpec {
                dns_name_templates: vec![format!("{}.example", "a".repeat(250))],
                ..ns_sa()
            },
            "bytes long; DNS names are limited to 253",
        ),
        (
            "spec.dnsNameTemplates[0]",
            ClusterSPIFFEIDSpec {
                dns_name_templates: vec!["{{ if .PodMeta.Labels.nope }}x{{ end }}".into()],
                ..ns_sa()
            },
            "is empty",
        ),
    ];
    for (field, spec, want) in cases {
        let err = render(spec, &[]).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().contains(want), "{err}");
        assert!(
            err.to_string().len() < 400,
            "message quotes too much: {err}"
        );
    }

    // The same from pod data: a label value cannot hold a newline in Kubernetes, but an
    // annotation can.
    let mut injected = pod();
    injected.metadata.annotations =
        Some([("dns".to_string(), "web\nevil.example".to_string())].into());
    let node_data = TemplateData::new(TD, "prod", "cluster.local").with_node(&node());
    let parent = ParentTemplate::parse(None)
        .unwrap()
        .render(&node_data, TD)
        .unwrap();
    let data = node_data.with_pod(&injected);
    let input = PodInput {
        data: &data,
        pod_uid: "pod-uid-1",
        parent_id: &parent,
        service_dns_names: &[],
    };
    for spec in [
        ClusterSPIFFEIDSpec {
            dns_name_templates: vec!["{{ .PodMeta.Annotations.dns }}".into()],
            ..ns_sa()
        },
        ClusterSPIFFEIDSpec {
            workload_selector_templates: vec![
                "k8s:pod-label:{{ .PodMeta.Annotations.dns }}".into(),
            ],
            ..ns_sa()
        },
    ] {
        let err = identity(spec).unwrap().render(&input, TD).unwrap_err();
        assert!(err.to_string().contains("'\\n'"), "{err}");
    }
}

/// A pod cannot move its identity out of the trust domain through data the template
/// reads, nor walk the path with `..`.
#[test]
fn pod_data_cannot_move_the_id_out_of_the_trust_domain() {
    let mut hostile = pod();
    hostile.metadata.annotations = Some(
        [
            ("td".to_string(), "evil.org".to_string()),
            ("path".to_string(), "../../spire/agent/x".to_string()),
            ("at".to_string(), "@evil.org".to_string()),
        ]
        .into(),
    );
    let node_data = TemplateData::new(TD, "prod", "cluster.local").with_node(&node());
    let parent = ParentTemplate::parse(None)
        .unwrap()
        .render(&node_data, TD)
        .unwrap();
    let data = node_data.with_pod(&hostile);
    let input = PodInput {
        data: &data,
        pod_uid: "pod-uid-1",
        parent_id: &parent,
        service_dns_names: &[],
    };
    for (template, want) in [
        (
            "spiffe://{{ .PodMeta.Annotations.td }}/x",
            "\"spiffe://evil.org/x\" is not in trust domain \"example.org\"",
        ),
        (
            "spiffe://{{ .TrustDomain }}/{{ .PodMeta.Annotations.path }}",
            "invalid path",
        ),
        (
            "spiffe://{{ .TrustDomain }}{{ .PodMeta.Annotations.at }}/x",
            "trust domain",
        ),
    ] {
        let spec = ClusterSPIFFEIDSpec {
            spiffe_id_template: template.into(),
            ..Default::default()
        };
        let err = identity(spec).unwrap().render(&input, TD).unwrap_err();
        assert_eq!(err.field, "spec.spiffeIDTemplate", "{template}: {err}");
        assert!(err.to_string().contains(want), "{template}: {err}");
    }
}

#[test]
fn static_entries_refuse_injected_selectors_and_dns_names() {
    let entry = |selectors: Vec<String>, dns_names: Vec<String>| ClusterStaticEntry {
        metadata: ObjectMeta {
            name: Some("db".into()),
            ..Default::default()
        },
        spec: ClusterStaticEntrySpec {
            spiffe_id: "spiffe://example.org/db".into(),
            parent_id: "spiffe://example.org/host".into(),
            selectors,
            dns_names,
            ..Default::default()
        },
        status: None,
    };
    let ok = || vec!["unix:uid:0".to_string()];
    for (resource, field) in [
        (
            entry(vec!["unix:uid:0\nunix:uid:1".into()], vec![]),
            "spec.selectors[0]",
        ),
        (
            entry(vec!["unix:uid:0\0".into()], vec![]),
            "spec.selectors[0]",
        ),
        (
            entry(vec![format!("unix:user:{}", "u".repeat(1100))], vec![]),
            "spec.selectors[0]",
        ),
        (
            entry(ok(), vec!["db".into(), "db\nevil".into()]),
            "spec.dnsNames[1]",
        ),
        (entry(ok(), vec!["".into()]), "spec.dnsNames[0]"),
        (entry(ok(), vec!["d".repeat(254)]), "spec.dnsNames[0]"),
    ] {
        let err = StaticEntry::parse(&resource).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
}

/// Inputs `make fuzz` (target `template`) found accepted before selectors and DNS names
/// were checked: DEL, STX, DLE and NUL went into entries unrefused.
#[test]
fn fuzz_found_control_characters_are_refused() {
    let cases: Vec<(ClusterSPIFFEIDSpec, &str)> = vec![
        (
            ClusterSPIFFEIDSpec {
                dns_name_templates: vec!["web-0.shop.s\u{7f}c".into()],
                ..ns_sa()
            },
            "spec.dnsNameTemplates[0]",
        ),
        (
            ClusterSPIFFEIDSpec {
                dns_name_templates: vec!["web-0.shop.svc\u{2}k8s:pontainer-name:app".into()],
                ..ns_sa()
            },
            "spec.dnsNameTemplates[0]",
        ),
        (
            ClusterSPIFFEIDSpec {
                workload_selector_templates: vec!["k8s:con\u{7f}ainname:app".into()],
                ..ns_sa()
            },
            "spec.workloadSelectorTemplates[0]",
        ),
        (
            ClusterSPIFFEIDSpec {
                workload_selector_templates: vec![
                    "\u{10}\0\0espace }}.svc\0k8s:container-name:app".into(),
                ],
                ..ns_sa()
            },
            "spec.workloadSelectorTemplates[0]",
        ),
    ];
    for (spec, field) in cases {
        let err = render(spec, &[]).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(
            err.to_string().contains("control character")
                || err.to_string().contains("is not a DNS name"),
            "{err}"
        );
    }
}
