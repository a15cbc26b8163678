use serde_json::{Value, json};

use super::*;

fn validator() -> Validator {
    Validator {
        trust_domain: "example.org".into(),
        class_name: None,
    }
}

fn review(kind: &str, operation: &str, spec: Value, old_spec: Option<Value>) -> Value {
    let object = |spec: Value| {
        json!({
            "apiVersion": "spire.spiffe.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": "r1"},
            "spec": spec,
        })
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "uid-1",
            "kind": {"group": "spire.spiffe.io", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "spire.spiffe.io", "version": "v1alpha1", "resource": "x"},
            "operation": operation,
            "name": "r1",
            "object": if operation == "DELETE" { Value::Null } else { object(spec) },
            "oldObject": old_spec.map(object),
        }
    })
}

fn decide(v: &Validator, kind: &str, operation: &str, spec: Value, old: Option<Value>) -> Value {
    let body = serde_json::to_vec(&review(kind, operation, spec, old)).unwrap();
    let reviewed = v.review(&body).unwrap();
    assert_eq!(reviewed.response["response"]["uid"], "uid-1");
    assert_eq!(reviewed.response["apiVersion"], "admission.k8s.io/v1");
    reviewed.response["response"].clone()
}

fn denial(kind: &str, spec: Value) -> String {
    let response = decide(&validator(), kind, "CREATE", spec.clone(), None);
    assert_eq!(response["allowed"], false, "{spec}: {response}");
    assert_eq!(response["status"]["code"], 403);
    response["status"]["message"].as_str().unwrap().to_owned()
}

fn csid(extra: Value) -> Value {
    let mut spec = json!({"spiffeIDTemplate": "spiffe://example.org/ns/{{ .PodMeta.Namespace }}"});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

#[test]
fn each_bad_clusterspiffeid_field_is_named_with_its_value() {
    let cases = [
        (
            json!({"spiffeIDTemplate": ""}),
            "spec.spiffeIDTemplate: is required",
        ),
        (
            json!({"spiffeIDTemplate": "spiffe://example.org/{{ .PodMeta.Name"}),
            "spec.spiffeIDTemplate",
        ),
        (
            json!({"spiffeIDTemplate": "spiffe://other.org/{{ .PodMeta.Name }}"}),
            "spec.spiffeIDTemplate: \"spiffe://other.org/{{ .PodMeta.Name }}\" renders IDs in trust domain \"other.org\"",
        ),
        (
            json!({"spiffeIDTemplate": "https://example.org/{{ .PodMeta.Name }}"}),
            "must start with spiffe://",
        ),
        (
            csid(json!({"dnsNameTemplates": ["ok", "{{ .PodMeta.Name "]})),
            "spec.dnsNameTemplates[1]",
        ),
        (
            csid(json!({"workloadSelectorTemplates": ["k8s:pod-uid:{{ .PodMeta.UID"]})),
            "spec.workloadSelectorTemplates[0]",
        ),
        (
            csid(json!({"federatesWith": ["Partner.org"]})),
            "spec.federatesWith[0]: \"Partner.org\" is not a trust domain name",
        ),
        (csid(json!({"ttl": "-1h"})), "spec.ttl"),
        (csid(json!({"jwtTtl": "1000000h"})), "spec.jwtTtl"),
        (
            csid(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}})),
            "spec.podSelector: matchExpressions[0].operator: \"Near\"",
        ),
        (
            csid(
                json!({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
            ),
            "spec.namespaceSelector: matchExpressions[0].values",
        ),
    ];
    for (spec, needle) in cases {
        let message = denial("ClusterSPIFFEID", spec.clone());
        assert!(message.starts_with("ClusterSPIFFEID \"r1\": "), "{message}");
        assert!(message.contains(needle), "{spec}: {message}");
    }
}

#[test]
fn valid_clusterspiffeids_are_admitted() {
    for spec in [
        csid(json!({})),
        json!({"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}"}),
        json!({"spiffeIDTemplate": "{{ printf \"spiffe://%s/x\" .TrustDomain }}"}),
        json!({"spiffeIDTemplate": "spiffe://example.org"}),
        csid(
            json!({"federatesWith": ["partner.org", "spiffe://other.org"], "ttl": "1h", "dnsNameTemplates": ["{{ .PodMeta.Name }}.svc"]}),
        ),
    ] {
        let response = decide(
            &validator(),
            "ClusterSPIFFEID",
            "CREATE",
            spec.clone(),
            None,
        );
        assert_eq!(response["allowed"], true, "{spec}: {response}");
        assert!(response.get("status").is_none());
    }
}

#[test]
fn another_class_skips_the_trust_domain_checks_only() {
    let spec = json!({"className": "other", "spiffeIDTemplate": "spiffe://other.org/x"});
    let response = decide(&validator(), "ClusterSPIFFEID", "CREATE", spec, None);
    assert_eq!(response["allowed"], true);
    let spec = json!({"className": "other", "spiffeIDTemplate": "spiffe://other.org/{{"});
    let response = decide(&validator(), "ClusterSPIFFEID", "CREATE", spec, None);
    assert_eq!(response["allowed"], false);
    let mine = Validator {
        class_name: Some("mine".into()),
        ..validator()
    };
    let spec = json!({"className": "mine", "spiffeIDTemplate": "spiffe://other.org/x"});
    let response = decide(&mine, "ClusterSPIFFEID", "CREATE", spec, None);
    assert_eq!(response["allowed"], false);
}

fn static_entry(extra: Value) -> Value {
    let mut spec = json!({
        "spiffeID": "spiffe://example.org/db",
        "parentID": "spiffe://example.org/spire/agent/x",
        "selectors": ["unix:uid:1000"],
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

#[test]
fn each_bad_clusterstaticentry_field_is_named_with_its_value() {
    let cases = [
        (
            static_entry(json!({"spiffeID": "example.org/db"})),
            "spec.spiffeID: \"example.org/db\" does not start with spiffe://",
        ),
        (
            static_entry(json!({"spiffeID": "spiffe://other.org/db"})),
            "spec.spiffeID: \"spiffe://other.org/db\" is not in trust domain \"example.org\"",
        ),
        (
            static_entry(json!({"parentID": "spiffe://other.org/agent"})),
            "spec.parentID: \"spiffe://other.org/agent\" is not in trust domain",
        ),
        (
            static_entry(json!({"selectors": []})),
            "spec.selectors: at least one selector",
        ),
        (
            static_entry(json!({"selectors": ["unix:uid:1", "nocolon"]})),
            "spec.selectors[1]: \"nocolon\"",
        ),
        (
            static_entry(json!({"federatesWith": ["bad td"]})),
            "spec.federatesWith[0]",
        ),
        (static_entry(json!({"x509SVIDTTL": "forever"})), "spec"),
        (
            static_entry(json!({"jwtSVIDTTL": "-5m"})),
            "spec.jwtSVIDTTL",
        ),
    ];
    for (spec, needle) in cases {
        let message = denial("ClusterStaticEntry", spec.clone());
        assert!(
            message.starts_with("ClusterStaticEntry \"r1\": "),
            "{message}"
        );
        assert!(message.contains(needle), "{spec}: {message}");
    }
    let response = decide(
        &validator(),
        "ClusterStaticEntry",
        "CREATE",
        static_entry(json!({})),
        None,
    );
    assert_eq!(response["allowed"], true, "{response}");
}

#[test]
fn each_bad_clusterfederatedtrustdomain_field_is_named_with_its_value() {
    let cftd = |extra: Value| {
        let mut spec = json!({
            "trustDomain": "partner.org",
            "bundleEndpointURL": "https://partner.org:8443",
            "bundleEndpointProfile": {"type": "https_web"},
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    let cases = [
        (
            cftd(json!({"trustDomain": "Partner"})),
            "spec.trustDomain: \"Partner\"",
        ),
        (
            cftd(json!({"trustDomain": "example.org"})),
            "spec.trustDomain: \"example.org\" is this SPIRE server's own trust domain",
        ),
        (
            cftd(json!({"bundleEndpointURL": "http://partner.org"})),
            "spec.bundleEndpointURL: \"http://partner.org\"",
        ),
        (
            cftd(json!({"bundleEndpointProfile": {"type": "https_spiffe"}})),
            "spec.bundleEndpointProfile.endpointSPIFFEID: is required",
        ),
        (
            cftd(
                json!({"bundleEndpointProfile": {"type": "https_web", "endpointSPIFFEID": "spiffe://partner.org/s"}}),
            ),
            "not allowed with type https_web",
        ),
        (
            cftd(json!({"bundleEndpointProfile": {"type": "mtls"}})),
            "spec: cannot be read",
        ),
        (
            cftd(json!({"trustDomainBundle": "{}"})),
            "spec.trustDomainBundle",
        ),
    ];
    for (spec, needle) in cases {
        let message = denial("ClusterFederatedTrustDomain", spec.clone());
        assert!(message.contains(needle), "{spec}: {message}");
    }
    let response = decide(
        &validator(),
        "ClusterFederatedTrustDomain",
        "CREATE",
        cftd(json!({})),
        None,
    );
    assert_eq!(response["allowed"], true, "{response}");
}

#[test]
fn an_object_stored_invalid_can_be_fixed_relabelled_or_deleted() {
    let bad = json!({"spiffeIDTemplate": "spiffe://example.org/{{"});
    let good = csid(json!({}));
    let v = validator();
    // The same invalid spec again (a label or finalizer change): allowed.
    let response = decide(
        &v,
        "ClusterSPIFFEID",
        "UPDATE",
        bad.clone(),
        Some(bad.clone()),
    );
    assert_eq!(response["allowed"], true);
    // Fixed: allowed.
    let response = decide(
        &v,
        "ClusterSPIFFEID",
        "UPDATE",
        good.clone(),
        Some(bad.clone()),
    );
    assert_eq!(response["allowed"], true);
    // Changed but still invalid: refused.
    let worse = json!({"spiffeIDTemplate": "spiffe://example.org/{{ end"});
    let response = decide(&v, "ClusterSPIFFEID", "UPDATE", worse, Some(bad.clone()));
    assert_eq!(response["allowed"], false);
    // Broken by an update: refused.
    let response = decide(&v, "ClusterSPIFFEID", "UPDATE", bad.clone(), Some(good));
    assert_eq!(response["allowed"], false);
    let response = decide(&v, "ClusterSPIFFEID", "DELETE", Value::Null, Some(bad));
    assert_eq!(response["allowed"], true);
}

#[test]
fn other_kinds_and_garbage_are_refused() {
    let message = denial("Pod", json!({}));
    assert!(message.contains("is not validated here"), "{message}");
    assert!(validator().review(b"not json").is_err());
    assert!(
        validator()
            .review(b"{\"kind\": \"AdmissionReview\"}")
            .is_err()
    );
}

/// Injection attempts are denied at admission, naming the field and the value; bytes
/// that are not UTF-8 are not a review at all.
#[test]
fn injected_selectors_and_dns_names_are_denied_and_non_utf8_is_not_a_review() {
    let static_entry = |selectors: Value, dns: Value| {
        json!({"spiffeID": "spiffe://example.org/db", "parentID": "spiffe://example.org/host",
               "selectors": selectors, "dnsNames": dns})
    };
    for (kind, spec, want) in [
        (
            "ClusterStaticEntry",
            static_entry(json!(["unix:uid:0\nunix:uid:1"]), json!([])),
            "spec.selectors[0]: \"unix:uid:0\\nunix:uid:1\" contains the control character '\\n'",
        ),
        (
            "ClusterStaticEntry",
            static_entry(json!(["unix:uid:0"]), json!(["db\u{0}.evil.org"])),
            "spec.dnsNames[0]: \"db\\0.evil.org\" is not a DNS name",
        ),
        (
            "ClusterStaticEntry",
            static_entry(
                json!([format!("unix:user:{}", "u".repeat(2000))]),
                json!([]),
            ),
            "bytes long; selectors are limited to 1024",
        ),
    ] {
        let message = denial(kind, spec);
        assert!(message.contains(want), "want {want:?} in {message:?}");
        assert!(message.len() < 500, "{message}");
    }

    let mut body = serde_json::to_vec(&review(
        "ClusterStaticEntry",
        "CREATE",
        static_entry(json!(["unix:uid:0"]), json!([])),
        None,
    ))
    .unwrap();
    let at = body.windows(3).position(|w| w == b"uid").unwrap();
    body[at] = 0xff;
    let err = validator().review(&body).unwrap_err();
    assert!(
        err.to_string()
            .contains("not an admission.k8s.io/v1 AdmissionReview"),
        "{err}"
    );
}
