//! `ClusterFederatedTrustDomain`: a federation relationship with another trust domain.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A federation relationship between the SPIRE server and another trust domain: where
/// to fetch that domain's bundle and how to authenticate the endpoint. Same fields and
/// meaning as spire-controller-manager's ClusterFederatedTrustDomain.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterFederatedTrustDomain",
    plural = "clusterfederatedtrustdomains",
    singular = "clusterfederatedtrustdomain",
    shortname = "cftd",
    status = "ClusterFederatedTrustDomainStatus",
    doc = "Federates the SPIRE server with another trust domain, whose bundle is fetched from a SPIFFE bundle endpoint. spire-operator manages only relationships it created; the annotation spire.spiffe.io/adopt-federation-relationship=\"true\" lets it take over one that exists already.",
    printcolumn = r#"{"name":"Trust Domain","type":"string","jsonPath":".spec.trustDomain"}"#,
    printcolumn = r#"{"name":"Endpoint URL","type":"string","jsonPath":".spec.bundleEndpointURL"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFederatedTrustDomainSpec {
    /// Name of the trust domain to federate with (lowercase letters, digits, '.', '_'
    /// and '-'). Required. Example: "partner.example".
    #[schemars(extend("pattern" = "[a-z0-9._-]{1,255}"))]
    pub trust_domain: String,

    /// URL of that trust domain's SPIFFE bundle endpoint: https, with a host and no
    /// user info. Required. Example: "https://partner.example:8443/bundle".
    #[serde(rename = "bundleEndpointURL")]
    pub bundle_endpoint_url: String,

    /// How the bundle endpoint authenticates itself. Required.
    /// Example: {type: https_spiffe, endpointSPIFFEID: "spiffe://partner.example/spire/server"}.
    pub bundle_endpoint_profile: BundleEndpointProfile,

    /// The trust domain's bundle in SPIFFE bundle (JWKS) JSON, to authenticate an
    /// https_spiffe endpoint before the first fetch. Default: empty (the server has
    /// to obtain it otherwise). Example: "{\"keys\": [...]}".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain_bundle: Option<String>,

    /// The controller class that handles this resource; an operator acts on it only
    /// when its configured className matches, or when this is empty and the operator
    /// watches classless resources. Default: empty. Example: "cluster-a".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
}

/// How a SPIFFE bundle endpoint authenticates itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct BundleEndpointProfile {
    /// The endpoint profile: https_web (Web PKI certificate) or https_spiffe (an SVID
    /// of the federated trust domain). Required. Example: https_spiffe.
    #[serde(rename = "type")]
    pub type_: BundleEndpointProfileType,

    /// SPIFFE ID the bundle endpoint's server presents. Required for https_spiffe,
    /// not allowed for https_web. Default: empty.
    /// Example: "spiffe://partner.example/spire/server".
    #[serde(
        rename = "endpointSPIFFEID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_spiffe_id: Option<String>,
}

/// The SPIFFE federation profiles a bundle endpoint can use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleEndpointProfileType {
    /// The endpoint presents a certificate trusted by the Web PKI.
    #[serde(rename = "https_web")]
    HttpsWeb,
    /// The endpoint presents an X.509-SVID of the federated trust domain.
    #[serde(rename = "https_spiffe")]
    HttpsSpiffe,
}

// A plain string enum: a derived schema would describe each documented variant with
// oneOf/const, which is not what kubectl explain should show.
impl JsonSchema for BundleEndpointProfileType {
    fn schema_name() -> Cow<'static, str> {
        "BundleEndpointProfileType".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "enum": ["https_spiffe", "https_web"] })
    }
}

/// What the operator observed the last time it reconciled a ClusterFederatedTrustDomain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFederatedTrustDomainStatus {
    /// Current state of this resource; type Ready is True when the federation
    /// relationship is on the SPIRE server as declared, otherwise False with a reason
    /// and a message. Example: [{type: Ready, status: "True"}].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The metadata.generation of the spec this status describes. Example: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
