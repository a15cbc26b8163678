//! From a ClusterFederatedTrustDomain to the federation relationship it declares: the
//! trust domain, the bundle endpoint URL and profile, and the optional initial bundle,
//! checked as spire-controller-manager's `ParseClusterFederatedTrustDomainSpec` checks
//! them. Pure: values in, values out.

use crate::crd::{BundleEndpointProfileType, ClusterFederatedTrustDomain};
use crate::spire::SpiffeId;

use super::{SpecError, trust_domain_name};

/// How the bundle endpoint authenticates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// A Web PKI certificate.
    HttpsWeb,
    /// An X.509-SVID with this SPIFFE ID.
    HttpsSpiffe(SpiffeId),
}

/// A ClusterFederatedTrustDomain whose spec parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRelationship {
    /// The resource name.
    pub name: String,
    /// The federated trust domain's name (a `spiffe://` form reduced to the name).
    pub trust_domain: String,
    /// `spec.bundleEndpointURL`, as written.
    pub bundle_endpoint_url: String,
    /// `spec.bundleEndpointProfile`.
    pub profile: EndpointProfile,
    /// `spec.trustDomainBundle`, as written (checked to be a SPIFFE bundle document).
    pub trust_domain_bundle: Option<String>,
}

impl FederationRelationship {
    /// Parses a ClusterFederatedTrustDomain for a server of `own_trust_domain`; the
    /// error names the first unusable field and its value.
    pub fn parse(
        resource: &ClusterFederatedTrustDomain,
        own_trust_domain: &str,
    ) -> Result<Self, SpecError> {
        let spec = &resource.spec;
        let trust_domain = trust_domain_name("spec.trustDomain", &spec.trust_domain)?;
        if trust_domain == own_trust_domain {
            return Err(SpecError::new(
                "spec.trustDomain",
                format!(
                    "{:?} is this SPIRE server's own trust domain; a server cannot federate with itself",
                    spec.trust_domain
                ),
            ));
        }
        check_bundle_endpoint_url(&spec.bundle_endpoint_url)?;
        let endpoint_id = spec.bundle_endpoint_profile.endpoint_spiffe_id.as_deref();
        let field = "spec.bundleEndpointProfile.endpointSPIFFEID";
        let profile = match (spec.bundle_endpoint_profile.type_, endpoint_id) {
            (BundleEndpointProfileType::HttpsWeb, None | Some("")) => EndpointProfile::HttpsWeb,
            (BundleEndpointProfileType::HttpsWeb, Some(id)) => {
                return Err(SpecError::new(
                    field,
                    format!("{id:?} is not allowed with type https_web (only with https_spiffe)"),
                ));
            }
            (BundleEndpointProfileType::HttpsSpiffe, None | Some("")) => {
                return Err(SpecError::new(field, "is required with type https_spiffe"));
            }
            (BundleEndpointProfileType::HttpsSpiffe, Some(id)) => {
                EndpointProfile::HttpsSpiffe(id.parse().map_err(|e| SpecError::new(field, e))?)
            }
        };
        let trust_domain_bundle = spec
            .trust_domain_bundle
            .clone()
            .filter(|bundle| !bundle.is_empty());
        if let Some(bundle) = &trust_domain_bundle {
            check_bundle_document(bundle)?;
        }
        Ok(Self {
            name: resource.metadata.name.clone().unwrap_or_default(),
            trust_domain,
            bundle_endpoint_url: spec.bundle_endpoint_url.clone(),
            profile,
            trust_domain_bundle,
        })
    }
}

/// https, a host, no user info: what SPIRE's bundle client can fetch from.
fn check_bundle_endpoint_url(url: &str) -> Result<(), SpecError> {
    let invalid = |why: &str| {
        SpecError::new(
            "spec.bundleEndpointURL",
            format!("{url:?} is not a bundle endpoint URL: {why}"),
        )
    };
    if url.is_empty() {
        return Err(SpecError::new("spec.bundleEndpointURL", "is required"));
    }
    let uri: http::Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(invalid("the scheme must be https"));
    }
    let authority = uri.authority().ok_or_else(|| invalid("it has no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("it must not contain user info"));
    }
    if authority.host().is_empty() {
        return Err(invalid("it has no host"));
    }
    Ok(())
}

/// A SPIFFE bundle (JWKS) document as go-spiffe's `spiffebundle.Read` accepts it: a JSON
/// object with a `keys` array, each `x509-svid` key carrying exactly one certificate in
/// `x5c`, each `jwt-svid` key a non-empty `kid`.
fn check_bundle_document(text: &str) -> Result<(), SpecError> {
    const FIELD: &str = "spec.trustDomainBundle";
    let document: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| SpecError::new(FIELD, format!("is not JSON: {e}")))?;
    let keys = document
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| {
            SpecError::new(
                FIELD,
                "is not a SPIFFE bundle: no \"keys\" array (expected {\"keys\": [...]})",
            )
        })?;
    for (i, key) in keys.iter().enumerate() {
        let key_use = key.get("use").and_then(serde_json::Value::as_str);
        match key_use {
            Some("x509-svid") => {
                let count = key
                    .get("x5c")
                    .and_then(serde_json::Value::as_array)
                    .map_or(0, Vec::len);
                if count != 1 {
                    return Err(SpecError::new(
                        format!("{FIELD}: keys[{i}].x5c"),
                        format!("an x509-svid key needs exactly one certificate, found {count}"),
                    ));
                }
            }
            Some("jwt-svid") => {
                if key
                    .get("kid")
                    .and_then(serde_json::Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(SpecError::new(
                        format!("{FIELD}: keys[{i}].kid"),
                        "a jwt-svid key needs a non-empty kid",
                    ));
                }
            }
            other => {
                return Err(SpecError::new(
                    format!("{FIELD}: keys[{i}].use"),
                    format!("{other:?} is not x509-svid or jwt-svid"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BundleEndpointProfile, ClusterFederatedTrustDomainSpec};

    fn resource(
        td: &str,
        url: &str,
        type_: BundleEndpointProfileType,
        id: Option<&str>,
    ) -> ClusterFederatedTrustDomain {
        ClusterFederatedTrustDomain::new(
            "partner",
            ClusterFederatedTrustDomainSpec {
                trust_domain: td.into(),
                bundle_endpoint_url: url.into(),
                bundle_endpoint_profile: BundleEndpointProfile {
                    type_,
                    endpoint_spiffe_id: id.map(str::to_owned),
                },
                trust_domain_bundle: None,
                class_name: None,
            },
        )
    }

    const WEB: BundleEndpointProfileType = BundleEndpointProfileType::HttpsWeb;
    const SPIFFE: BundleEndpointProfileType = BundleEndpointProfileType::HttpsSpiffe;

    #[test]
    fn both_profiles_and_both_trust_domain_forms_parse() {
        let web = FederationRelationship::parse(
            &resource("partner.org", "https://partner.org/bundle", WEB, None),
            "example.org",
        )
        .unwrap();
        assert_eq!(web.trust_domain, "partner.org");
        assert_eq!(web.profile, EndpointProfile::HttpsWeb);
        let spiffe = FederationRelationship::parse(
            &resource(
                "spiffe://partner.org",
                "https://10.0.0.1:8443",
                SPIFFE,
                Some("spiffe://partner.org/spire/server"),
            ),
            "example.org",
        )
        .unwrap();
        assert_eq!(spiffe.trust_domain, "partner.org");
        assert!(matches!(spiffe.profile, EndpointProfile::HttpsSpiffe(_)));
    }

    #[test]
    fn each_bad_field_is_named_with_its_value() {
        let cases = [
            (
                resource("Partner", "https://p.org", WEB, None),
                "spec.trustDomain",
                "\"Partner\"",
            ),
            (
                resource("example.org", "https://p.org", WEB, None),
                "spec.trustDomain",
                "own trust domain",
            ),
            (
                resource("p.org", "http://p.org", WEB, None),
                "spec.bundleEndpointURL",
                "scheme must be https",
            ),
            (
                resource("p.org", "https://u:pw@p.org", WEB, None),
                "spec.bundleEndpointURL",
                "user info",
            ),
            (
                resource("p.org", "", WEB, None),
                "spec.bundleEndpointURL",
                "required",
            ),
            (
                resource("p.org", "not a url", WEB, None),
                "spec.bundleEndpointURL",
                "\"not a url\"",
            ),
            (
                resource("p.org", "https://p.org", WEB, Some("spiffe://p.org/s")),
                "spec.bundleEndpointProfile.endpointSPIFFEID",
                "not allowed with type https_web",
            ),
            (
                resource("p.org", "https://p.org", SPIFFE, None),
                "spec.bundleEndpointProfile.endpointSPIFFEID",
                "required",
            ),
            (
                resource("p.org", "https://p.org", SPIFFE, Some("p.org/server")),
                "spec.bundleEndpointProfile.endpointSPIFFEID",
                "\"p.org/server\"",
            ),
        ];
        for (resource, field, needle) in cases {
            let err = FederationRelationship::parse(&resource, "example.org").unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn bundle_documents_are_checked() {
        let mut r = resource("p.org", "https://p.org", WEB, None);
        for (bundle, needle) in [
            ("{", "is not JSON"),
            ("{\"x\": 1}", "no \"keys\" array"),
            (r#"{"keys":[{"use":"x509-svid","x5c":[]}]}"#, "keys[0].x5c"),
            (r#"{"keys":[{"use":"jwt-svid"}]}"#, "keys[0].kid"),
            (r#"{"keys":[{"use":"tls"}]}"#, "keys[0].use"),
        ] {
            r.spec.trust_domain_bundle = Some(bundle.into());
            let err = FederationRelationship::parse(&r, "example.org").unwrap_err();
            assert!(err.to_string().contains(needle), "{bundle}: {err}");
            assert!(
                err.to_string().starts_with("spec.trustDomainBundle"),
                "{err}"
            );
        }
        r.spec.trust_domain_bundle =
            Some(r#"{"keys":[{"use":"x509-svid","x5c":["MII="]},{"use":"jwt-svid","kid":"k1"}],"spiffe_sequence":1}"#.into());
        FederationRelationship::parse(&r, "example.org").unwrap();
    }
}
