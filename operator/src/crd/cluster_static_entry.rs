//! `ClusterStaticEntry`: one SPIRE registration entry, written out in full.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{GoDuration, is_false};

/// One SPIRE registration entry declared literally, for workloads outside the cluster,
/// node aliases or downstream servers. Same fields and meaning as
/// spire-controller-manager's ClusterStaticEntry.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterStaticEntry",
    plural = "clusterstaticentries",
    singular = "clusterstaticentry",
    shortname = "cse",
    status = "ClusterStaticEntryStatus",
    doc = "Declares one SPIRE registration entry literally: for workloads outside the cluster, node aliases or downstream SPIRE servers.",
    printcolumn = r#"{"name":"SPIFFE ID","type":"string","jsonPath":".spec.spiffeID"}"#,
    printcolumn = r#"{"name":"Parent","type":"string","jsonPath":".spec.parentID"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStaticEntrySpec {
    /// SPIFFE ID of the workload or node alias. Required.
    /// Example: "spiffe://example.org/db-backup".
    #[serde(rename = "spiffeID")]
    pub spiffe_id: String,

    /// SPIFFE ID of the agent (or node alias) allowed to obtain this identity, or the
    /// SPIRE server's ID when declaring a node alias. Required.
    /// Example: "spiffe://example.org/spire/agent/x509pop/host-1".
    #[serde(rename = "parentID")]
    pub parent_id: String,

    /// Workload selectors (or node selectors for a node alias) as type:value; a
    /// workload must match all of them. Required. Example: ["unix:uid:1000"].
    pub selectors: Vec<String>,

    /// Trust domain names whose bundles the workload receives, for federation.
    /// Default: none. Example: ["partner.example"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<String>,

    /// Upper bound on the lifetime of X.509-SVIDs for this entry, as a Go duration.
    /// Default: unset or 0, the SPIRE server's default. Example: "2h".
    #[serde(
        rename = "x509SVIDTTL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub x509_svid_ttl: Option<GoDuration>,

    /// Upper bound on the lifetime of JWT-SVIDs for this entry, as a Go duration.
    /// Default: unset or 0, the SPIRE server's default. Example: "5m".
    #[serde(
        rename = "jwtSVIDTTL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub jwt_svid_ttl: Option<GoDuration>,

    /// DNS names put into the X.509-SVID. Default: none. Example: ["db.example.org"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,

    /// Opaque hint handed to the workload with its SVID, telling it how the SVID is
    /// meant to be used. Default: empty. Example: "external".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,

    /// Whether the SVID may call the SPIRE server's administrative APIs. Default:
    /// false. Example: true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,

    /// Whether the entry describes a downstream SPIRE server (nested SPIRE). Default:
    /// false. Example: true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub downstream: bool,

    /// Whether the SVID is stored through an SVIDStore plugin of the agent rather than
    /// served over the Workload API. Default: false. Example: true.
    #[serde(rename = "storeSVID", default, skip_serializing_if = "is_false")]
    pub store_svid: bool,

    /// The controller class that handles this resource; an operator acts on it only
    /// when its configured className matches, or when this is empty and the operator
    /// watches classless resources. Default: empty. Example: "cluster-a".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
}

/// What the operator observed the last time it reconciled a ClusterStaticEntry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStaticEntryStatus {
    /// Whether the spec was turned into a valid entry. Example: true.
    #[serde(default)]
    pub rendered: bool,

    /// Whether an identical entry declared by an older resource owns it instead.
    /// Example: false.
    #[serde(default)]
    pub masked: bool,

    /// Whether the entry is present on the SPIRE server as declared (created, updated
    /// or already equal). Unlike spire-controller-manager, it stays true on later
    /// passes. Example: true.
    #[serde(default)]
    pub set: bool,

    /// Current state of this resource; type Ready is True when the entry is on the
    /// SPIRE server as declared, otherwise False with a reason and a message.
    /// Example: [{type: Ready, status: "True"}].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The metadata.generation of the spec this status describes. Example: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
