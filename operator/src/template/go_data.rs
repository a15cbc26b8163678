//! Kubernetes objects as Go `text/template` sees them.
//!
//! spire-controller-manager hands its templates Go structs (`*metav1.ObjectMeta`,
//! `*corev1.PodSpec`, ...), so templates use Go field names (`.PodMeta.UID`,
//! `.PodSpec.ServiceAccountName`) and every field exists, holding its zero value when
//! unset. We hold the same objects as JSON (camelCase, empty fields omitted). This module
//! converts one into the other with a table of every Go field reachable from the types
//! templates see, generated from the Go types themselves by `e2e/tools/gofields`:
//!
//! ```text
//! cd e2e/tools/gofields && go run . > ../../../operator/src/template/go_fields.json
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock};

use gotmpl::Value;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value as Json;

use super::needs::Need;

/// The root Go types of the template data, by template field name.
#[derive(Debug, Clone, Copy)]
pub enum Root {
    /// `metav1.ObjectMeta`
    ObjectMeta,
    /// `corev1.PodSpec`
    PodSpec,
    /// `corev1.NodeSpec`
    NodeSpec,
}

#[derive(Deserialize)]
struct Table {
    roots: HashMap<String, String>,
    types: HashMap<String, Vec<Field>>,
}

#[derive(Deserialize)]
struct Field {
    json: String,
    go: String,
    kind: Kind,
    #[serde(rename = "type")]
    struct_type: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    String,
    Bool,
    Int,
    Uint,
    Float,
    /// A pointer or interface: nil when unset.
    Nil,
    Slice,
    Map,
    Struct,
    /// A struct that marshals to a JSON string (time, quantity, int-or-string).
    Scalar,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    // The table is generated and checked in; a parse failure is a build defect that
    // the unit tests catch, never a runtime input.
    serde_json::from_str(include_str!("go_fields.json"))
        .unwrap_or_else(|e| panic!("go_fields.json: {e}"))
});

fn root_type(root: Root) -> &'static str {
    let key = match root {
        Root::ObjectMeta => "PodMeta",
        Root::PodSpec => "PodSpec",
        Root::NodeSpec => "NodeSpec",
    };
    TABLE.roots.get(key).map(String::as_str).unwrap_or_default()
}

/// Converts a JSON object of the given root type into its Go template form.
pub fn to_go_value(root: Root, json: &Json) -> Value {
    go_struct(root_type(root), json)
}

fn go_struct(type_name: &str, json: &Json) -> Value {
    let empty = serde_json::Map::new();
    let object = json.as_object().unwrap_or(&empty);
    let mut out = BTreeMap::new();
    let fields = TABLE
        .types
        .get(type_name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for field in fields {
        let value = match object.get(&field.json) {
            Some(v) if !v.is_null() => go_field(field, v),
            _ => zero(field),
        };
        out.insert(Arc::from(field.go.as_str()), value);
    }
    // Fields newer than the table (an apiserver ahead of the generator) stay reachable
    // under the usual Go name: the JSON name with its first letter upper-cased.
    for (name, value) in object {
        if !fields.iter().any(|f| &f.json == name) {
            out.entry(Arc::from(exported(name).as_str()))
                .or_insert_with(|| plain(value));
        }
    }
    Value::Map(Arc::new(out))
}

/// Converts a JSON object of the given root type into its Go template form, keeping
/// only the fields `fields` names (what templates read, see [`super::needs`]); each
/// field holds what [`to_go_value`] gives it.
pub fn to_go_value_pruned(root: Root, json: &Json, fields: &BTreeMap<String, Need>) -> Value {
    go_struct_pruned(root_type(root), json, fields)
}

fn go_struct_pruned(type_name: &str, json: &Json, needed: &BTreeMap<String, Need>) -> Value {
    let empty = serde_json::Map::new();
    let object = json.as_object().unwrap_or(&empty);
    let fields = TABLE
        .types
        .get(type_name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for (go_name, need) in needed {
        let value = if let Some(field) = fields.iter().find(|f| &f.go == go_name) {
            let json = object.get(&field.json).filter(|v| !v.is_null());
            match (need, field.kind, field.struct_type.as_deref(), json) {
                (Need::Fields(sub), Kind::Struct, Some(t), json) => {
                    go_struct_pruned(t, json.unwrap_or(&Json::Null), sub)
                }
                (Need::Fields(sub), Kind::Nil, Some(t), Some(json)) => {
                    go_struct_pruned(t, json, sub)
                }
                (_, _, _, Some(json)) => go_field(field, json),
                (_, _, _, None) => zero(field),
            }
        } else {
            // As in go_struct: a field newer than the table, under its exported name.
            let newer = object.iter().find(|(name, _)| {
                !fields.iter().any(|f| &f.json == *name) && exported(name) == *go_name
            });
            match newer {
                Some((_, value)) => plain(value),
                None => continue,
            }
        };
        out.insert(Arc::from(go_name.as_str()), value);
    }
    Value::Map(Arc::new(out))
}

/// Decodes a pod's JSON (`{"metadata": ..., "spec": ...}`) into its metadata and spec,
/// each holding only the fields `meta` and `spec` name (`None`: null), so that the rest
/// of the pod is skipped, never built. A field [`to_go_value_pruned`] descends into
/// (a struct, or a pointer to one) is pruned the same way; any other needed field is
/// kept whole. Pruned data therefore converts to what the whole pod converts to.
pub fn decode_pod(
    json: &[u8],
    meta: Option<&Need>,
    spec: Option<&Need>,
) -> Result<(Json, Json), serde_json::Error> {
    let seed = PodSeed {
        meta: meta.map(|need| Pruned {
            type_name: root_type(Root::ObjectMeta),
            need,
        }),
        spec: spec.map(|need| Pruned {
            type_name: root_type(Root::PodSpec),
            need,
        }),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let decoded = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(decoded)
}

/// The top level of a pod: `metadata` and `spec`, as far as needed.
struct PodSeed<'a> {
    meta: Option<Pruned<'a>>,
    spec: Option<Pruned<'a>>,
}

impl<'de> DeserializeSeed<'de> for PodSeed<'_> {
    type Value = (Json, Json);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PodSeed<'_> {
    type Value = (Json, Json);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a pod as a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut meta, mut spec) = (Json::Null, Json::Null);
        while let Some(Key(key)) = map.next_key()? {
            match (key.as_ref(), self.meta, self.spec) {
                ("metadata", Some(seed), _) => meta = map.next_value_seed(seed)?,
                ("spec", _, Some(seed)) => spec = map.next_value_seed(seed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((meta, spec))
    }
}

/// One value of Go type `type_name`, keeping what `need` names.
#[derive(Clone, Copy)]
struct Pruned<'a> {
    type_name: &'a str,
    need: &'a Need,
}

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        match self.need {
            Need::Whole => Json::deserialize(deserializer),
            Need::Fields(_) => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a JSON object or null ({})", self.type_name)
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let Need::Fields(needed) = self.need else {
            unreachable!("a whole value is decoded as JSON, not visited")
        };
        let fields = TABLE
            .types
            .get(self.type_name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut out = serde_json::Map::new();
        while let Some(Key(key)) = map.next_key()? {
            let (need, descend) = match fields.iter().find(|f| f.json == key) {
                Some(field) => (needed.get(&field.go), descends(field)),
                // A field newer than the table, under its exported name (as go_struct).
                None => (needed.get(&exported(&key)), None),
            };
            match (need, descend) {
                (Some(need), Some(type_name)) => {
                    let value = map.next_value_seed(Pruned { type_name, need })?;
                    out.insert(key.into_owned(), value);
                }
                (Some(_), None) => {
                    let value = map.next_value::<Json>()?;
                    out.insert(key.into_owned(), value);
                }
                (None, _) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Json::Object(out))
    }
}

/// The struct type [`go_struct_pruned`] descends into for this field, if any.
fn descends(field: &Field) -> Option<&str> {
    match field.kind {
        Kind::Struct | Kind::Nil => field.struct_type.as_deref(),
        _ => None,
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

fn go_field(field: &Field, json: &Json) -> Value {
    let Some(struct_type) = field.struct_type.as_deref() else {
        return plain(json);
    };
    match field.kind {
        Kind::Slice => Value::List(
            json.as_array()
                .into_iter()
                .flatten()
                .map(|v| go_struct(struct_type, v))
                .collect(),
        ),
        Kind::Map => Value::Map(Arc::new(
            json.as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (Arc::from(k.as_str()), go_struct(struct_type, v)))
                .collect(),
        )),
        _ => go_struct(struct_type, json),
    }
}

fn zero(field: &Field) -> Value {
    match field.kind {
        Kind::String | Kind::Scalar => Value::String(Arc::from("")),
        Kind::Bool => Value::Bool(false),
        Kind::Int => Value::Int(0),
        Kind::Uint => Value::Uint(0),
        Kind::Float => Value::Float(0.0),
        Kind::Nil => Value::Nil,
        Kind::Slice => Value::List(Arc::from([])),
        Kind::Map => Value::Map(Arc::default()),
        Kind::Struct => go_struct(
            field.struct_type.as_deref().unwrap_or_default(),
            &Json::Null,
        ),
    }
}

/// JSON without a Go type behind it (map values, list items of scalars).
fn plain(json: &Json) -> Value {
    match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::Uint(u),
            _ => Value::Float(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => Value::String(Arc::from(s.as_str())),
        Json::Array(items) => Value::List(items.iter().map(plain).collect()),
        Json::Object(map) => Value::Map(Arc::new(
            map.iter()
                .map(|(k, v)| (Arc::from(k.as_str()), plain(v)))
                .collect(),
        )),
    }
}

fn exported(json_name: &str) -> String {
    let mut chars = json_name.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_has_the_roots() {
        for root in [Root::ObjectMeta, Root::PodSpec, Root::NodeSpec] {
            assert!(TABLE.types.contains_key(root_type(root)), "{root:?}");
        }
    }

    #[test]
    fn a_pod_decodes_to_the_needed_fields_only() {
        let pod = br#"{"apiVersion":"v1","kind":"Pod",
            "metadata":{"name":"web-0","uid":"u-1","labels":{"app":"web"},"newField":1,
                        "managedFields":[{"manager":"kubectl"}]},
            "spec":{"serviceAccountName":"sa","containers":[{"name":"app"}],
                    "securityContext":{"runAsUser":1000,"runAsGroup":2000},
                    "dnsConfig":null}}"#;
        let need = |fields: &[(&str, Need)]| {
            Need::Fields(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            )
        };
        let meta = need(&[
            ("UID", Need::Whole),
            ("Labels", need(&[("app", Need::Whole)])),
            ("NewField", Need::Whole),
        ]);
        let spec = need(&[
            ("SecurityContext", need(&[("RunAsUser", Need::Whole)])),
            ("DNSConfig", need(&[("Nameservers", Need::Whole)])),
        ]);
        let (m, s) = decode_pod(pod, Some(&meta), Some(&spec)).unwrap();
        assert_eq!(
            m,
            serde_json::json!({"uid": "u-1", "labels": {"app": "web"}, "newField": 1}),
            "a map is kept whole; unread fields are skipped"
        );
        assert_eq!(
            s,
            serde_json::json!({"securityContext": {"runAsUser": 1000}, "dnsConfig": null}),
            "a struct is pruned as deep as it is read"
        );
        let (m, s) = decode_pod(pod, None, Some(&Need::Whole)).unwrap();
        assert_eq!(m, Json::Null);
        assert_eq!(s["containers"][0]["name"], "app");
        assert!(decode_pod(b"{\"spec\":{}} trailing", None, None).is_err());
    }

    #[test]
    fn go_names_and_zero_values() {
        let meta = to_go_value(
            Root::ObjectMeta,
            &serde_json::json!({"name": "web-0", "uid": "1234"}),
        );
        let Value::Map(meta) = meta else {
            panic!("a struct is a map")
        };
        assert_eq!(meta.get("UID"), Some(&Value::String(Arc::from("1234"))));
        assert_eq!(meta.get("Name"), Some(&Value::String(Arc::from("web-0"))));
        assert_eq!(
            meta.get("Namespace"),
            Some(&Value::String(Arc::from(""))),
            "unset strings are empty"
        );
        assert_eq!(
            meta.get("Labels"),
            Some(&Value::Map(Arc::default())),
            "unset maps are empty"
        );
        assert_eq!(
            meta.get("DeletionTimestamp"),
            Some(&Value::Nil),
            "unset pointers are nil"
        );
        assert!(
            !meta.contains_key("uid"),
            "JSON names are not template names"
        );

        let spec = to_go_value(
            Root::PodSpec,
            &serde_json::json!({"serviceAccountName": "sa", "serviceAccount": "sa"}),
        );
        let Value::Map(spec) = spec else {
            panic!("a struct is a map")
        };
        assert_eq!(
            spec.get("DeprecatedServiceAccount"),
            Some(&Value::String(Arc::from("sa")))
        );
        assert_eq!(spec.get("DNSPolicy"), Some(&Value::String(Arc::from(""))));
        assert_eq!(spec.get("HostIPC"), Some(&Value::Bool(false)));
    }

    #[test]
    fn nested_structs_lists_and_unknown_fields() {
        let spec = to_go_value(
            Root::PodSpec,
            &serde_json::json!({
                "containers": [{"name": "app", "image": "img:1", "ports": [{"containerPort": 8080}]}],
                "fieldFromTheFuture": "x",
            }),
        );
        let Value::Map(spec) = spec else {
            panic!("a struct is a map")
        };
        let Some(Value::List(containers)) = spec.get("Containers") else {
            panic!("containers")
        };
        let Value::Map(app) = &containers[0] else {
            panic!("a container is a struct")
        };
        assert_eq!(app.get("Image"), Some(&Value::String(Arc::from("img:1"))));
        assert_eq!(app.get("TTY"), Some(&Value::Bool(false)));
        let Some(Value::List(ports)) = app.get("Ports") else {
            panic!("ports")
        };
        let Value::Map(port) = &ports[0] else {
            panic!("a port is a struct")
        };
        assert_eq!(port.get("ContainerPort"), Some(&Value::Int(8080)));
        assert_eq!(
            spec.get("FieldFromTheFuture"),
            Some(&Value::String(Arc::from("x")))
        );
    }
}
