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

use std::collections::BTreeMap;
use std::sync::Arc;

use gotmpl::{MissingKey, Value};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use go_data::{Root, to_go_value};

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
        Ok(Self {
            name: name.to_owned(),
            inner,
        })
    }

    /// Renders with `data`.
    pub fn render(&self, data: &TemplateData) -> Result<String, TemplateError> {
        let rendered = self.inner.execute_to_string(&data.value())?;
        if rendered.contains(NO_VALUE) {
            return Err(TemplateError::MissingValue {
                name: self.name.clone(),
                rendered,
            });
        }
        Ok(rendered)
    }
}

/// The values templates see. Build it once per node and per pod; cloning is cheap.
#[derive(Clone, Debug)]
pub struct TemplateData {
    fields: BTreeMap<Arc<str>, Value>,
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
            fields.insert(Arc::from(key), Value::String(Arc::from(value)));
        }
        Self { fields }
    }

    fn set(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(Arc::from(key), value);
        self
    }

    /// Adds `.NodeMeta` and `.NodeSpec`.
    pub fn with_node(self, node: &Node) -> Self {
        let spec = serde_json::to_value(&node.spec).unwrap_or_default();
        self.set("NodeMeta", meta(&node.metadata))
            .set("NodeSpec", to_go_value(Root::NodeSpec, &spec))
    }

    /// Adds `.PodMeta` and `.PodSpec`.
    pub fn with_pod(self, pod: &Pod) -> Self {
        let spec = serde_json::to_value(&pod.spec).unwrap_or_default();
        self.set("PodMeta", meta(&pod.metadata))
            .set("PodSpec", to_go_value(Root::PodSpec, &spec))
    }

    /// Adds `.NamespaceMeta` (an addition to spire-controller-manager's data).
    pub fn with_namespace(self, namespace: &Namespace) -> Self {
        self.set("NamespaceMeta", meta(&namespace.metadata))
    }

    /// Adds `.ServiceAccountMeta` (an addition to spire-controller-manager's data).
    pub fn with_service_account(self, service_account: &ServiceAccount) -> Self {
        self.set("ServiceAccountMeta", meta(&service_account.metadata))
    }

    fn value(&self) -> Value {
        Value::Map(Arc::new(self.fields.clone()))
    }
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

fn meta(metadata: &ObjectMeta) -> Value {
    // ObjectMeta serializes infallibly: strings, maps and lists of them.
    to_go_value(
        Root::ObjectMeta,
        &serde_json::to_value(metadata).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;

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
}
