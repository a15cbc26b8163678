//! What each fuzz target does with its input. Kept in a library so the targets' logic
//! can be run without AFL (the `seeds` binary and `cargo test` here use it), and so a
//! crash reproduces with a plain call.
//!
//! Every target feeds untrusted bytes to the code that parses them in production and
//! then checks invariants that must hold for whatever was accepted: an identity never
//! leaves the trust domain, a selector or DNS name never carries a control character, a
//! target path accepted is exactly kubelet's shape. A panic or a failed invariant is a
//! crash for AFL.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use prost::Message;
use spiffe_csi_driver::csi::v1::NodePublishVolumeRequest;
use spiffe_csi_driver::node::Publish;
use spiffe_csi_driver::target_path::KubeletTarget;
use spire_operator::config::Config;
use spire_operator::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};
use spire_operator::config::AnnotationIdentities;
use spire_operator::render::{
    AnnotatedBy, AnnotationInput, AnnotationRequest, FederationRelationship, MAX_DNS_NAMES,
    ParentTemplate, PodIdentity, PodInput, StaticEntry, annotated_entry,
    check_spiffe_id_template, parse_dns_names,
};
use spire_operator::spire::{EntrySpec, SpiffeId};
use spire_operator::template::{Template, TemplateData};
use spire_operator::webhook::review::Validator;

/// The trust domain every target renders in.
pub const TRUST_DOMAIN: &str = "td";

struct Fixture {
    data: TemplateData,
    node_data: TemplateData,
    parent: SpiffeId,
}

/// A pod on a node in a namespace, with labels and annotations templates may read.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "uid": "node-uid", "labels": {"zone": "z1"}},
            "spec": {"podCIDR": "10.0.0.0/24"}
        }))
        .unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "pod-uid",
                "labels": {"app": "web", "tier": "front"}, "annotations": {"a": "b"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "web",
                "containers": [{"name": "app", "image": "web:1", "ports": [{"containerPort": 80}]}]}
        }))
        .unwrap();
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {"team": "t1"}}
        }))
        .unwrap();
        let node_data = TemplateData::new(TRUST_DOMAIN, "c", "cluster.local").with_node(&node);
        Fixture {
            data: node_data.clone().with_pod(&pod).with_namespace(&namespace),
            node_data,
            parent: "spiffe://td/spire/agent/k8s_psat/c/node-uid"
                .parse()
                .unwrap(),
        }
    })
}

/// Whatever reaches SPIRE: in the trust domain, and no control character in any
/// selector or DNS name (a newline or NUL there is an injection attempt).
fn check_entry(entry: &EntrySpec, what: &str) {
    let clean = |s: &str| !s.chars().any(char::is_control);
    for selector in &entry.key.selectors {
        assert!(clean(selector), "{what}: selector {selector:?} accepted");
    }
    for name in &entry.dns_names {
        assert!(clean(name), "{what}: DNS name {name:?} accepted");
    }
    let id = entry.key.spiffe_id.to_string();
    assert!(clean(&id), "{what}: SPIFFE ID {id:?}");
    // The API form must round-trip: what we send is what we compare with next pass.
    let api = entry.to_api("id".into());
    let (_, back) = EntrySpec::from_api(api).expect("our own entry parses back");
    assert_eq!(&back, entry, "{what}: entry changed through the API form");
}

/// Template rendering. The input is up to three NUL-separated templates: a
/// `spiffeIDTemplate`, a `dnsNameTemplates` item and a `workloadSelectorTemplates` item,
/// rendered for a fixed pod as a ClusterSPIFFEID would.
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let id = parts.next().unwrap_or_default();
    let dns: Vec<String> = parts.next().map(str::to_owned).into_iter().collect();
    let selectors: Vec<String> = parts.next().map(str::to_owned).into_iter().collect();
    let fixture = fixture();

    // The raw engine, as any template field uses it.
    if let Ok(t) = Template::parse("fuzz", id) {
        let _ = t.render(&fixture.data);
    }
    // The webhook's early check and the parent template (rendered with node data only).
    let early = check_spiffe_id_template(id, TRUST_DOMAIN);
    if let Ok(parent) = ParentTemplate::parse(Some(id))
        && let Ok(rendered) = parent.render(&fixture.node_data, TRUST_DOMAIN)
    {
        assert_eq!(rendered.trust_domain(), TRUST_DOMAIN, "parent {id:?}");
    }

    let resource = ClusterSPIFFEID {
        metadata: Default::default(),
        spec: spire_operator::crd::ClusterSPIFFEIDSpec {
            spiffe_id_template: id.to_owned(),
            dns_name_templates: dns,
            workload_selector_templates: selectors,
            ..Default::default()
        },
        status: None,
    };
    let Ok(identity) = PodIdentity::parse(&resource) else {
        return;
    };
    let input = PodInput {
        data: &fixture.data,
        pod_uid: "pod-uid",
        parent_id: &fixture.parent,
        service_dns_names: &[],
    };
    if let Ok(entry) = identity.render(&input, TRUST_DOMAIN) {
        assert!(
            early.is_ok(),
            "{id:?} rendered {:?} though the webhook refused it: {early:?}",
            entry.key.spiffe_id.to_string()
        );
        assert_eq!(entry.key.spiffe_id.trust_domain(), TRUST_DOMAIN, "{id:?}");
        assert!(
            entry
                .key
                .selectors
                .iter()
                .any(|s| s == "k8s:pod-uid:pod-uid")
        );
        check_entry(&entry, "ClusterSPIFFEID");
    }
}

/// Config parsing: the input is a ControllerManagerConfig file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_yaml(text) {
        // What the operator does with a parsed config before any API call.
        let _ = ParentTemplate::parse(config.parent_id_template.as_deref());
        let _ = config.is_namespace_ignored("kube-system");
        let _ = config.watches_namespace("shop");
    }
    let expanded =
        spire_operator::config::expand::expand_env(text, |name| Some(format!("<{name}>")));
    let _ = Config::from_yaml(&expanded);
}

/// CRD specs: the input is JSON, read as each custom resource kind (and as an
/// AdmissionReview, which is how the webhook receives them), then parsed and rendered
/// into what the reconciler writes.
pub fn crd(data: &[u8]) {
    let fixture = fixture();
    let validator = Validator {
        trust_domain: TRUST_DOMAIN.into(),
        class_name: None,
    };
    let _ = validator.review(data);

    if let Ok(resource) = serde_json::from_slice::<ClusterSPIFFEID>(data)
        && let Ok(identity) = PodIdentity::parse(&resource)
    {
        let _ = identity.namespace_selector.matches(None);
        let _ = identity.pod_selector.matches(None);
        let input = PodInput {
            data: &fixture.data,
            pod_uid: "pod-uid",
            parent_id: &fixture.parent,
            service_dns_names: &["web.shop.svc".into()],
        };
        if let Ok(entry) = identity.render(&input, TRUST_DOMAIN) {
            assert_eq!(entry.key.spiffe_id.trust_domain(), TRUST_DOMAIN);
            check_entry(&entry, "ClusterSPIFFEID");
        }
    }
    if let Ok(resource) = serde_json::from_slice::<ClusterStaticEntry>(data)
        && let Ok(parsed) = StaticEntry::parse(&resource)
    {
        check_entry(&parsed.entry, "ClusterStaticEntry");
    }
    if let Ok(resource) = serde_json::from_slice::<ClusterFederatedTrustDomain>(data)
        && let Ok(relationship) = FederationRelationship::parse(&resource, TRUST_DOMAIN)
    {
        assert_ne!(
            relationship.trust_domain, TRUST_DOMAIN,
            "federates with itself"
        );
    }
}

/// Annotation identities: the input is a pod's `spiffe.io/spiffe-id` value, its
/// `spiffe.io/dns-names` value and optionally an `allowedSPIFFEIDTemplates` item,
/// NUL-separated. Whatever the policy accepts stays in the trust domain, inside the
/// allowed path, with DNS names that are DNS names; what it refuses is explained in a
/// message safe to put in an event.
pub fn annotation(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let spiffe_id = parts.next().unwrap_or_default().to_owned();
    let dns_names = parts.next().map(str::to_owned);
    let fixture = fixture();
    let mut settings = AnnotationIdentities {
        enabled: true,
        ..Default::default()
    };
    if let Some(source) = parts.next() {
        let Ok(template) = Template::parse("allowed", source) else {
            return;
        };
        settings.allowed_templates = vec![source.to_owned()];
        settings.allowed = vec![template];
    }
    let labels = [("team".to_owned(), "t1".to_owned())].into();
    let input = AnnotationInput {
        data: &fixture.data,
        namespace: "shop",
        namespace_labels: Some(&labels),
        pod_uid: "pod-uid",
        parent_id: &fixture.parent,
    };
    for by in [AnnotatedBy::Pod, AnnotatedBy::ServiceAccount("web".into())] {
        let request = AnnotationRequest {
            by,
            spiffe_id: spiffe_id.clone(),
            dns_names: dns_names.clone(),
        };
        match annotated_entry(&settings, TRUST_DOMAIN, &request, &input) {
            Ok(entry) => check_annotated(&settings, &entry, &request),
            Err(refusal) => assert!(
                !refusal.message.chars().any(char::is_control),
                "refusal message with a control character: {:?}",
                refusal.message
            ),
        }
    }
    if let Some(value) = &dns_names
        && let Ok(names) = parse_dns_names(value)
    {
        check_dns_names(&names, value);
    }
}

fn check_annotated(settings: &AnnotationIdentities, entry: &EntrySpec, request: &AnnotationRequest) {
    let id = &entry.key.spiffe_id;
    assert_eq!(id.to_string(), request.spiffe_id, "the ID is the one asked for");
    assert_eq!(id.trust_domain(), TRUST_DOMAIN, "{:?}", request.spiffe_id);
    assert_eq!(&entry.key.parent_id, &fixture().parent);
    assert_eq!(
        entry.key.selectors.iter().collect::<Vec<_>>(),
        ["k8s:pod-uid:pod-uid"],
        "selectors of {:?}",
        request.spiffe_id
    );
    let path = id.path();
    let inside = settings.allowed.iter().any(|t| {
        let rule = t.render(&fixture().data).expect("it allowed, so it renders");
        match rule.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') => {
                path.starts_with(prefix) && path.len() > prefix.len()
            }
            _ => path == rule,
        }
    });
    assert!(inside, "{path:?} accepted outside {:?}", settings.allowed_templates);
    if settings.allowed_templates == AnnotationIdentities::default().allowed_templates {
        assert!(path.starts_with("/ns/shop/"), "{path:?} left its namespace");
    }
    check_dns_names(&entry.dns_names, request.dns_names.as_deref().unwrap_or(""));
    check_entry(entry, "annotation");
}

fn check_dns_names(names: &[String], value: &str) {
    assert!(names.len() <= MAX_DNS_NAMES, "{} names from {value:?}", names.len());
    for (i, name) in names.iter().enumerate() {
        let bare = name.strip_prefix("*.").unwrap_or(name);
        assert!(
            !bare.is_empty()
                && bare.len() <= 253
                && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "DNS name {name:?} accepted from {value:?}"
        );
        assert!(!names[..i].contains(name), "duplicate {name:?} from {value:?}");
    }
}

/// CSI NodePublishVolume validation: the input is the request's protobuf encoding, as
/// it arrives over the driver's socket. Everything up to opening the target is run.
pub fn csi_publish(data: &[u8]) {
    let Ok(request) = NodePublishVolumeRequest::decode(data) else {
        return;
    };
    let readonly = request.readonly;
    let Ok(publish) = Publish::parse(request) else {
        return;
    };
    assert!(readonly, "a writable publish was accepted");
    assert!(
        publish.context.is_ephemeral(),
        "a non-ephemeral publish was accepted"
    );
    if let Ok(target) = KubeletTarget::parse(&publish.target_path) {
        check_target(&target);
        let _ = target.check_pod_uid(publish.context.pod_uid.as_deref());
    }
}

/// Target path parsing: the input is a target path.
pub fn target_path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = KubeletTarget::parse(raw) {
        check_target(&target);
    }
}

/// An accepted target path is exactly `<pods dir>/<uid>/volumes/kubernetes.io~csi/<volume>/mount`,
/// with nothing that could walk out of the pods directory.
fn check_target(target: &KubeletTarget) {
    let rebuilt: PathBuf = target
        .pods_dir
        .join(&target.pod_uid)
        .join("volumes/kubernetes.io~csi")
        .join(&target.volume)
        .join("mount");
    assert_eq!(Path::new(&target.raw), rebuilt, "{:?}", target.raw);
    assert_eq!(
        rebuilt.to_str(),
        Some(target.raw.as_str()),
        "{:?}",
        target.raw
    );
    for component in Path::new(&target.raw).components() {
        assert!(
            matches!(component, Component::RootDir | Component::Normal(_)),
            "{:?}",
            target.raw
        );
    }
    for part in [&target.pod_uid, &target.volume] {
        assert!(
            !part.is_empty() && !part.contains('/') && part != ".." && part != ".",
            "{:?}",
            target.raw
        );
    }
    assert!(target.kubelet_volume_id().starts_with("csi-"));
}
