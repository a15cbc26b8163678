//! `ClusterSPIFFEID`: a template that gives every selected pod a SPIRE entry.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{GoDuration, is_false};

/// Describes the SPIFFE ID, selectors and SVID options of the SPIRE registration
/// entries created for the pods this resource selects: one entry per selected,
/// scheduled pod. Same fields and meaning as spire-controller-manager's ClusterSPIFFEID.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterSPIFFEID",
    plural = "clusterspiffeids",
    singular = "clusterspiffeid",
    shortname = "csid",
    status = "ClusterSPIFFEIDStatus",
    doc = "Gives every pod selected by podSelector and namespaceSelector a SPIRE registration entry whose SPIFFE ID, selectors and DNS names are rendered from Go templates.",
    printcolumn = r#"{"name":"SPIFFE ID Template","type":"string","jsonPath":".spec.spiffeIDTemplate"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.stats.podsSelected"}"#,
    printcolumn = r#"{"name":"Entries","type":"integer","jsonPath":".status.stats.entriesToSet"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSPIFFEIDSpec {
    /// Go text/template rendering the SPIFFE ID of each selected pod's entry. Required.
    /// The result must be a SPIFFE ID in the operator's trust domain. Templates see
    /// .TrustDomain, .ClusterName, .ClusterDomain, .PodMeta, .PodSpec, .NodeMeta and
    /// .NodeSpec (Go field names). Example:
    /// "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}".
    #[serde(rename = "spiffeIDTemplate")]
    pub spiffe_id_template: String,

    /// Selects the pods, by their labels, that get an entry. Default: every pod in the
    /// selected namespaces. Example: {matchLabels: {app: backend}}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// Selects the namespaces, by their labels, whose pods are considered. Default:
    /// every namespace not ignored by the operator configuration (ignoreNamespaces).
    /// Example: {matchLabels: {backend: "true"}}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Go templates rendering extra DNS names for the SVIDs of each pod; duplicates
    /// are dropped. Default: none. Example:
    /// ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_name_templates: Vec<String>,

    /// Go templates rendering extra workload selectors of the form type:value (the
    /// value may itself contain colons) that a workload must also match. Every entry
    /// always carries k8s:pod-uid:<uid> in addition. Default: none. Example:
    /// ["k8s:container-name:app"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_selector_templates: Vec<String>,

    /// Trust domain names whose bundles workloads with this identity receive, for
    /// federation. Default: none. Example: ["partner.example"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<String>,

    /// Upper bound on the lifetime of X.509-SVIDs minted for these entries, as a Go
    /// duration. Default: unset or 0, the SPIRE server's default. Example: "1h30m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<GoDuration>,

    /// Upper bound on the lifetime of JWT-SVIDs minted for these entries, as a Go
    /// duration. Default: unset or 0, the SPIRE server's default. Example: "5m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_ttl: Option<GoDuration>,

    /// Whether the SVIDs may call the SPIRE server's administrative APIs. Give it only
    /// to admin workloads. Default: false. Example: true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,

    /// Whether the entries describe downstream SPIRE servers (nested SPIRE). Default:
    /// false. Example: true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub downstream: bool,

    /// Whether to add the DNS names of the Services whose endpoints include the pod:
    /// svc, svc.ns, svc.ns.svc and svc.ns.svc.<clusterDomain>. Default: false.
    /// Example: true.
    #[serde(
        rename = "autoPopulateDNSNames",
        default,
        skip_serializing_if = "is_false"
    )]
    pub auto_populate_dns_names: bool,

    /// The controller class that handles this resource; an operator acts on it only
    /// when its configured className matches, or when this is empty and the operator
    /// watches classless resources. Default: empty. Example: "cluster-a".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,

    /// Whether this is a fallback: it applies to a pod only when no other, non-fallback
    /// ClusterSPIFFEID selects that pod. Default: false. Example: true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fallback: bool,

    /// Opaque hint handed to the workload with its SVID, telling it how the SVID is
    /// meant to be used. Default: empty. Example: "external".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// What the operator observed the last time it reconciled a ClusterSPIFFEID.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSPIFFEIDStatus {
    /// Counts from the last reconciliation of this resource.
    #[serde(default)]
    pub stats: ClusterSPIFFEIDStats,

    /// Current state of this resource; type Ready is True when every selected pod has
    /// its entry on the SPIRE server, otherwise False with a reason and a message
    /// naming the failing field or pod. Example: [{type: Ready, status: "True"}].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The metadata.generation of the spec these stats and conditions describe.
    /// Example: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Counters of spire-controller-manager's ClusterSPIFFEID status, same names and meaning.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSPIFFEIDStats {
    /// Namespaces matched by namespaceSelector. Example: 4.
    #[serde(default)]
    pub namespaces_selected: i64,
    /// Of the selected namespaces, those skipped because the operator configuration
    /// ignores them (ignoreNamespaces). Example: 1.
    #[serde(default)]
    pub namespaces_ignored: i64,
    /// Pods matched by podSelector in the selected, non-ignored namespaces. Example: 12.
    #[serde(default)]
    pub pods_selected: i64,
    /// Selected pods whose entry could not be rendered, from a bad template or pod
    /// data that renders an invalid value. Example: 0.
    #[serde(default)]
    pub pod_entry_render_failures: i64,
    /// Entries identical (same SPIFFE ID, parent ID and selectors) to one declared by
    /// an older resource, which owns them instead. Example: 0.
    #[serde(default)]
    pub entries_masked: i64,
    /// Entries this resource owns and keeps on the SPIRE server: normally podsSelected
    /// minus render failures and masked entries. Example: 12.
    #[serde(default)]
    pub entries_to_set: i64,
    /// Entries the SPIRE server failed to create or update. Example: 0.
    #[serde(default)]
    pub entry_failures: i64,
}
