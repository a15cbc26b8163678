//! Go `text/template` rendering with spire-controller-manager's template data.
//!
//! Data: `.TrustDomain`, `.ClusterName`, `.ClusterDomain`, `.PodMeta`, `.PodSpec`,
//! `.NodeMeta`, `.NodeSpec` with Go field names, as spire-controller-manager provides,
//! plus `.NamespaceMeta` and `.ServiceAccountMeta`. A missing map key is nil, as with Go's
//! default, so guards work as there (`{{ or .PodMeta.Labels.app "web" }}`,
//! `{{ if .PodMeta.Labels.tier }}...{{ end }}`, `with ... else`), and
//! `{{ index .PodMeta.Labels "app" }}` yields "". One deliberate difference: where Go
//! would print `<no value>` into the rendered ID or DNS name (a missing key used
//! unguarded, or a misspelled field), rendering fails, naming the template. Go structs
//! are maps here, so a misspelled field inside a guard is not caught, where Go fails.

mod go_data;
mod needs;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use gotmpl::{MissingKey, Value};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use go_data::{Root, to_go_value};
use go_data::{decode_pod, to_go_value_pruned};
use needs::{Need, Needs};

/// A template failed to parse or to render.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The Go template engine refused it.
    #[error("{0}")]
    Go(#[from] gotmpl::TemplateError),
    /// It printed Go's `<no value>`: a key or field it reads unguarded is missing.
    #[error(
        "template {name:?} printed <no value> in {rendered:?}: a key or field it reads is missing (check the spelling, or guard it with `or`, `if` or `with`, or use `index`)"
    )]
    MissingValue {
        /// The template's name (its field path).
        name: String,
        /// What it rendered.
        rendered: String,
    },
}

/// Go's rendering of a missing value.
const NO_VALUE: &str = "<no value>";

/// A parsed template, ready to render many times.
#[derive(Clone)]
pub struct Template {
    name: String,
    inner: gotmpl::Template,
    /// What it reads of its data: only that is built for each rendering.
    needs: Arc<Needs>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").finish_non_exhaustive()
    }
}

impl Template {
    /// Parses `source`; `name` appears in error messages (use the field path, e.g.
    /// `spec.dnsNameTemplates[1]`).
    pub fn parse(name: &str, source: &str) -> Result<Self, TemplateError> {
        let inner = gotmpl::Template::new(name)
            .missing_key(MissingKey::Invalid)
            .func("index", go_index)
            .parse(source)?;
        let needs = Arc::new(Needs::of(&inner));
        Ok(Self {
            name: name.to_owned(),
            inner,
            needs,
        })
    }

    /// Renders with `data`.
    pub fn render(&self, data: &TemplateData) -> Result<String, TemplateError> {
        self.render_value(&data.value(&self.needs))
    }

    fn render_value(&self, data: &Value) -> Result<String, TemplateError> {
        let rendered = self.inner.execute_to_string(data)?;
        if rendered.contains(NO_VALUE) {
            return Err(TemplateError::MissingValue {
                name: self.name.clone(),
                rendered,
            });
        }
        Ok(rendered)
    }
}

/// What rendering a set of templates reads of a pod, so that only that is decoded from
/// the pod's JSON (a pod is mostly containers, volumes and probes no template reads),
/// or kept of it at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFields(Needs);

impl PodFields {
    /// The whole pod.
    pub fn everything() -> Self {
        let mut needs = Needs::default();
        needs.add(&[] as &[&str]);
        Self(needs)
    }

    /// Whether this is the whole pod.
    pub fn is_everything(&self) -> bool {
        self.0.is_all()
    }

    /// Whether every field `other` names is named here too.
    pub fn covers(&self, other: &PodFields) -> bool {
        self.0.covers(&other.0)
    }

    /// The fields either names.
    pub fn union(&self, other: &PodFields) -> Self {
        let mut needs = self.0.clone();
        needs.merge(&other.0);
        Self(needs)
    }

    /// A pod's JSON (an object with `metadata` and `spec`) with only these fields, as
    /// JSON again: [`Self::decode`] of it, with these fields or fewer, gives what it
    /// gives of the whole pod.
    pub fn prune(&self, pod_json: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
        let (metadata, spec) = self.decode(pod_json)?;
        serde_json::to_vec(&serde_json::json!({"metadata": metadata, "spec": spec}))
    }

    /// The fields `templates` read, and the UID (the `k8s:pod-uid` selector).
    pub fn of<'a>(templates: impl IntoIterator<Item = &'a Template>) -> Self {
        let mut needs = Needs::default();
        needs.add(&["PodMeta", "UID"]);
        for template in templates {
            needs.merge(&template.needs);
        }
        // What is read outside the pod is no field of it: compared with a cache's.
        needs.retain_keys(&["PodMeta", "PodSpec"]);
        Self(needs)
    }

    /// Decodes a pod's JSON (an object with `metadata` and `spec`) into its metadata and
    /// spec, as [`TemplateData::with_pod_json`] takes them, keeping what is read.
    pub fn decode(
        &self,
        pod_json: &[u8],
    ) -> Result<(serde_json::Value, serde_json::Value), serde_json::Error> {
        decode_pod(pod_json, self.0.key("PodMeta"), self.0.key("PodSpec"))
    }
}

/// One value of the template data.
#[derive(Clone, Debug)]
enum Slot {
    /// Ready as it is (the strings).
    Ready(Value),
    /// A Kubernetes struct, converted to its Go form as far as a template reads it.
    Go(Arc<GoStruct>),
}

#[derive(Debug)]
struct GoStruct {
    root: Root,
    json: serde_json::Value,
    /// The whole conversion, made once for templates that read all of it.
    whole: OnceLock<Value>,
}

impl GoStruct {
    fn value(&self, need: &Need) -> Value {
        match need {
            Need::Whole => self
                .whole
                .get_or_init(|| to_go_value(self.root, &self.json))
                .clone(),
            Need::Fields(fields) => to_go_value_pruned(self.root, &self.json, fields),
        }
    }
}

/// An object's metadata as templates see it, built once for the many pods that share
/// the object (their Namespace or ServiceAccount); cloning is cheap.
#[derive(Clone, Debug)]
pub struct ObjectData(Slot);

impl ObjectData {
    /// The template form of `meta`.
    pub fn of(meta: &ObjectMeta) -> Self {
        Self(Slot::Go(Arc::new(GoStruct {
            root: Root::ObjectMeta,
            json: to_json(meta),
            whole: OnceLock::new(),
        })))
    }
}

/// The values templates see. Build it once per node and per pod; cloning is cheap.
#[derive(Clone, Debug)]
pub struct TemplateData {
    fields: BTreeMap<Arc<str>, Slot>,
}

impl TemplateData {
    /// Data with the cluster-wide values only, as the parent ID template sees before a
    /// node is known.
    pub fn new(trust_domain: &str, cluster_name: &str, cluster_domain: &str) -> Self {
        let mut fields = BTreeMap::new();
        for (key, value) in [
            ("TrustDomain", trust_domain),
            ("ClusterName", cluster_name),
            ("ClusterDomain", cluster_domain),
        ] {
            fields.insert(Arc::from(key), Slot::Ready(Value::String(Arc::from(value))));
        }
        Self { fields }
    }

    fn set(mut self, key: &str, root: Root, json: serde_json::Value) -> Self {
        let go = GoStruct {
            root,
            json,
            whole: OnceLock::new(),
        };
        self.fields.insert(Arc::from(key), Slot::Go(Arc::new(go)));
        self
    }

    /// Adds `.NodeMeta` and `.NodeSpec`.
    pub fn with_node(self, node: &Node) -> Self {
        self.set("NodeMeta", Root::ObjectMeta, to_json(&node.metadata))
            .set("NodeSpec", Root::NodeSpec, to_json(&node.spec))
    }

    /// Adds `.PodMeta` and `.PodSpec`.
    pub fn with_pod(self, pod: &Pod) -> Self {
        self.with_pod_json(to_json(&pod.metadata), to_json(&pod.spec))
    }

    /// Adds `.PodMeta` and `.PodSpec` from the pod's JSON `metadata` and `spec`.
    pub fn with_pod_json(self, metadata: serde_json::Value, spec: serde_json::Value) -> Self {
        self.set("PodMeta", Root::ObjectMeta, metadata)
            .set("PodSpec", Root::PodSpec, spec)
    }

    /// Adds `.NamespaceMeta` (an addition to spire-controller-manager's data).
    pub fn with_namespace(self, namespace: &Namespace) -> Self {
        self.with_namespace_meta(ObjectData::of(&namespace.metadata))
    }

    /// Adds `.NamespaceMeta` built earlier.
    pub fn with_namespace_meta(mut self, meta: ObjectData) -> Self {
        self.fields.insert(Arc::from("NamespaceMeta"), meta.0);
        self
    }

    /// Adds `.ServiceAccountMeta` (an addition to spire-controller-manager's data).
    pub fn with_service_account(self, service_account: &ServiceAccount) -> Self {
        self.with_service_account_meta(ObjectData::of(&service_account.metadata))
    }

    /// Adds `.ServiceAccountMeta` built earlier.
    pub fn with_service_account_meta(mut self, meta: ObjectData) -> Self {
        self.fields.insert(Arc::from("ServiceAccountMeta"), meta.0);
        self
    }

    /// The data as a template that reads `needs` sees it.
    fn value(&self, needs: &Needs) -> Value {
        let mut map = BTreeMap::new();
        for (key, slot) in &self.fields {
            let value = match slot {
                Slot::Ready(value) => value.clone(),
                Slot::Go(go) => match needs.key(key) {
                    Some(need) => go.value(need),
                    None => continue,
                },
            };
            map.insert(key.clone(), value);
        }
        Value::Map(Arc::new(map))
    }
}

/// Kubernetes API types serialize infallibly (strings, numbers, maps and lists).
fn to_json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// Go's `index` on a typed map yields the element's zero value for a missing key; the
/// maps templates index (labels, annotations, node selectors) are all `map[string]string`,
/// so a missing key is "". The builtin, not knowing the element type, yields nil.
fn go_index(args: &[Value]) -> gotmpl::Result<Value> {
    let Some((item, keys)) = args.split_first().filter(|(_, keys)| !keys.is_empty()) else {
        return Err(gotmpl::TemplateError::Exec(format!(
            "wrong number of args for index: want at least 2 got {}",
            args.len()
        )));
    };
    let mut value = item.clone();
    for key in keys {
        value = match (&value, key) {
            (Value::Map(map), Value::String(k)) if !map.contains_key(k) => {
                Value::String(Arc::from(""))
            }
            _ => value.index(key)?,
        };
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                uid: Some("0b5c-11".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some("frontend".into()),
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

    fn render(source: &str) -> Result<String, TemplateError> {
        let data = TemplateData::new("example.org", "prod", "cluster.local")
            .with_node(&node())
            .with_pod(&pod());
        Template::parse("test", source)?.render(&data)
    }

    #[test]
    fn renders_spire_controller_manager_templates() {
        let cases = [
            (
                "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
                "spiffe://example.org/ns/shop/sa/frontend",
            ),
            (
                "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}",
                "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid",
            ),
            (
                "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}",
                "web-0.shop.svc.cluster.local",
            ),
            ("{{ index .PodMeta.Labels \"app\" }}", "web"),
            ("{{ index .PodMeta.Labels \"missing\" }}", ""),
            ("k8s:pod-uid:{{ .PodMeta.UID }}", "k8s:pod-uid:0b5c-11"),
            ("[{{ .PodSpec.NodeName }}]", "[]"),
            (
                "{{ if .PodSpec.HostNetwork }}host{{ else }}pod{{ end }}",
                "pod",
            ),
        ];
        for (source, want) in cases {
            assert_eq!(render(source).unwrap(), want, "{source}");
        }
    }

    #[test]
    fn guarded_missing_keys_render_as_in_go() {
        for (source, want) in [
            ("{{ or .PodMeta.Labels.missing \"dflt\" }}", "dflt"),
            ("{{ or .PodMeta.Labels.app \"dflt\" }}", "web"),
            (
                "{{ if .PodMeta.Labels.missing }}set{{ else }}unset{{ end }}",
                "unset",
            ),
            (
                "{{ with .PodMeta.Labels.missing }}{{ . }}{{ else }}none{{ end }}",
                "none",
            ),
        ] {
            assert_eq!(render(source).unwrap(), want, "{source}");
        }
    }

    #[test]
    fn an_unguarded_missing_value_names_the_template() {
        let err = render("spiffe://example.org/{{ .PodMeta.Labels.missing }}").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("<no value>") && text.contains("test"),
            "{text}"
        );
    }

    #[test]
    fn mistakes_are_errors() {
        for source in [
            "{{ .PodMeta.Namespce }}",
            "{{ .PodMeta.Labels.missing }}",
            "{{ .PodMeta.Name ",
            "{{ .NoSuchRoot }}",
            "{{ index .PodSpec.Containers 3 }}",
            "{{ index .PodMeta.Labels }}",
        ] {
            assert!(render(source).is_err(), "{source} should fail");
        }
    }

    #[test]
    fn parent_template_without_node_data_fails_on_node_fields() {
        let data = TemplateData::new("example.org", "prod", "cluster.local");
        let template = Template::parse("parentIDTemplate", "{{ .NodeMeta.UID }}").unwrap();
        assert!(template.render(&data).is_err());
    }

    /// Rendering with only what a template reads (built from the whole pod, or decoded
    /// alone from its JSON) gives what rendering with all the data gives: the same
    /// text, or an error in both.
    #[test]
    fn pruned_data_renders_as_the_whole_data() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1",
                         "labels": {"app": "web", "tier": "front"},
                         "annotations": {"note": "x"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web", "uid": "rs-1"}]},
            "spec": {"serviceAccountName": "frontend", "nodeName": "n1",
                     "hostNetwork": true,
                     "nodeSelector": {"disk": "ssd"},
                     "securityContext": {"runAsUser": 1000},
                     "containers": [{"name": "app", "image": "img:1",
                                     "ports": [{"containerPort": 8080}]},
                                    {"name": "side", "image": "img:2"}]}
        }))
        .unwrap();
        let mut node = node();
        node.spec =
            Some(serde_json::from_value(serde_json::json!({"podCIDR": "10.0.0.0/24"})).unwrap());
        let data = TemplateData::new("example.org", "prod", "cluster.local")
            .with_node(&node)
            .with_pod(&pod);
        let sources = [
            "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
            "{{ .NodeMeta.UID }}/{{ .NodeSpec.PodCIDR }}/{{ .NodeSpec.Unschedulable }}",
            "{{ .PodMeta.Labels.app }}-{{ index .PodMeta.Labels \"tier\" }}",
            "{{ .PodSpec.SecurityContext.RunAsUser }}",
            "{{ .PodSpec.SecurityContext.RunAsGroup }}",
            "{{ .PodSpec.DNSConfig }}",
            "{{ .PodSpec.DNSConfig.Nameservers }}",
            "{{ .PodSpec.HostNetwork }}{{ .PodSpec.HostPID }}",
            "{{ .PodSpec }}",
            "{{ len .PodSpec.Containers }}",
            "{{ range .PodSpec.Containers }}{{ .Name }}={{ .Image }};{{ end }}",
            "{{ range $i, $c := .PodSpec.Containers }}{{ $i }}{{ $c.Name }}{{ $.PodMeta.Name }}{{ end }}",
            "{{ with .PodSpec.Containers }}{{ (index . 0).Name }}{{ end }}",
            "{{ (index .PodSpec.Containers 0).Ports }}",
            "{{ with .PodMeta }}{{ .Name }}.{{ $.PodSpec.NodeName }}{{ end }}",
            "{{ with .PodMeta.Labels.missing }}{{ . }}{{ else }}{{ .PodMeta.UID }}{{ end }}",
            "{{ $m := .PodMeta }}{{ $m.OwnerReferences }}",
            "{{ $s := .PodSpec }}{{ $s.NodeSelector.disk }}",
            "{{ define \"n\" }}{{ .Name }}{{ end }}{{ template \"n\" .PodMeta }}",
            "{{ define \"n\" }}{{ .PodMeta.Name }}{{ end }}{{ template \"n\" . }}",
            "{{ if .PodSpec.HostNetwork }}host{{ else }}{{ .PodSpec.NodeName }}{{ end }}",
            "{{ printf \"%s/%s\" .PodMeta.Namespace .PodMeta.Name }}",
            "{{ eq .PodSpec.ServiceAccountName \"frontend\" }}",
            "{{ (.PodMeta).Name }}",
            "{{ .PodMeta.Nmae }}",
            "{{ .PodSpec.Containers.Name }}",
            "{{ .NoSuchRoot.Field }}",
            "{{ .NamespaceMeta.Name }}",
            "{{ . }}",
            "{{ $ }}",
        ];
        let pod_json = serde_json::to_vec(&pod).unwrap();
        for source in sources {
            let template = Template::parse("t", source).unwrap();
            let whole = template
                .render_value(&data.value(&Needs::everything()))
                .map_err(|e| e.to_string());
            let pruned = template.render(&data).map_err(|e| e.to_string());
            // And with only the pod fields it reads decoded from the pod's JSON, whole
            // or as the pod cache keeps it (pruned to the fields all templates read).
            let fields = PodFields::of([&template]);
            let render_from = |json: &[u8]| {
                let (meta, spec) = fields.decode(json).unwrap();
                let data = TemplateData::new("example.org", "prod", "cluster.local")
                    .with_node(&node)
                    .with_pod_json(meta, spec);
                template.render(&data).map_err(|e| e.to_string())
            };
            let decoded = render_from(&pod_json);
            let kept = render_from(&fields.prune(&pod_json).unwrap());
            for other in [&pruned, &decoded, &kept] {
                match (&whole, other) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{source}"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{source}: whole data {whole:?}, pruned {other:?}"),
                }
            }
        }
    }

    #[test]
    fn pod_fields_name_pod_fields_only() {
        let fields = |source: &str| PodFields::of([&Template::parse("t", source).unwrap()]);
        let with_node = fields("{{ .TrustDomain }}/{{ .NodeMeta.Name }}/{{ .PodMeta.Name }}");
        let pod_only = fields("{{ .PodMeta.Name }}");
        assert_eq!(
            with_node, pod_only,
            "cluster and node data are no pod field"
        );
        assert!(pod_only.covers(&with_node));
        assert!(!pod_only.covers(&fields("{{ .PodSpec.NodeName }}")));
    }
}
