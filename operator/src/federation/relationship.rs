//! A ClusterFederatedTrustDomain's spec parsed into the federation relationship it
//! declares, and the comparison with a relationship the server lists. Pure.

use prost::Message as _;
use sha2::{Digest, Sha256};

use super::bundle;
use crate::crd::{BundleEndpointProfileType, ClusterFederatedTrustDomainSpec};
use crate::render::SpecError;
use crate::spire::SpiffeId;
use crate::spire::api::types;

/// How the bundle endpoint authenticates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// A Web PKI certificate.
    HttpsWeb,
    /// An X.509-SVID with this SPIFFE ID.
    HttpsSpiffe(SpiffeId),
}

/// The bundle a resource declares (`spec.trustDomainBundle`), in API form, with a digest
/// of that form: reformatting the JSON changes nothing, a key added or removed does.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredBundle {
    /// The bundle as the SPIRE API carries it.
    pub api: types::Bundle,
    /// Hex SHA-256 of the bundle's protobuf encoding.
    pub digest: String,
}

/// A federation relationship as a ClusterFederatedTrustDomain declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relationship {
    /// The federated trust domain's name, e.g. `partner.example` (never `spiffe://...`).
    pub trust_domain: String,
    /// Where its bundle is fetched.
    pub bundle_endpoint_url: String,
    /// How that endpoint authenticates.
    pub profile: Profile,
    /// The bundle to start from, if declared.
    pub bundle: Option<DeclaredBundle>,
}

/// Which fields of a listed relationship differ from the declared one. The listed
/// bundle is never compared: the server replaces it with every fetch from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Differences {
    /// `bundleEndpointURL`.
    pub url: bool,
    /// The profile or its endpoint SPIFFE ID.
    pub profile: bool,
}

impl Differences {
    /// Whether nothing differs.
    pub fn none(&self) -> bool {
        !self.url && !self.profile
    }
}

impl Relationship {
    /// Parses `spec` as spire-controller-manager does (its webhook's checks), naming the
    /// field that is wrong. `own_trust_domain` is the SPIRE server's, which SPIRE refuses
    /// to federate with.
    pub fn parse(
        spec: &ClusterFederatedTrustDomainSpec,
        own_trust_domain: &str,
    ) -> Result<Self, SpecError> {
        let trust_domain = trust_domain_name(&spec.trust_domain)?;
        if trust_domain == own_trust_domain {
            return Err(error(
                "spec.trustDomain",
                format!("{trust_domain:?} is the SPIRE server's own trust domain"),
            ));
        }
        check_url(&spec.bundle_endpoint_url)?;
        let endpoint_id = spec.bundle_endpoint_profile.endpoint_spiffe_id.as_deref();
        let profile = match spec.bundle_endpoint_profile.type_ {
            BundleEndpointProfileType::HttpsWeb => {
                if endpoint_id.is_some_and(|id| !id.is_empty()) {
                    return Err(error(
                        "spec.bundleEndpointProfile.endpointSPIFFEID",
                        "not applicable to the \"https_web\" profile",
                    ));
                }
                Profile::HttpsWeb
            }
            BundleEndpointProfileType::HttpsSpiffe => {
                let id = endpoint_id.unwrap_or_default();
                Profile::HttpsSpiffe(
                    id.parse()
                        .map_err(|e| error("spec.bundleEndpointProfile.endpointSPIFFEID", e))?,
                )
            }
        };
        let bundle = match spec.trust_domain_bundle.as_deref() {
            None | Some("") => None,
            Some(json) => {
                let api = bundle::parse(&trust_domain, json)
                    .map_err(|e| error("spec.trustDomainBundle", e))?;
                let digest = hex::encode(Sha256::digest(api.encode_to_vec()));
                Some(DeclaredBundle { api, digest })
            }
        };
        Ok(Self {
            trust_domain,
            bundle_endpoint_url: spec.bundle_endpoint_url.clone(),
            profile,
            bundle,
        })
    }

    /// The API form; the bundle goes along only with `with_bundle`.
    pub fn to_api(&self, with_bundle: bool) -> types::FederationRelationship {
        use types::federation_relationship::BundleEndpointProfile as Api;
        let profile = match &self.profile {
            Profile::HttpsWeb => Api::HttpsWeb(types::HttpsWebProfile {}),
            Profile::HttpsSpiffe(id) => Api::HttpsSpiffe(types::HttpsspiffeProfile {
                endpoint_spiffe_id: id.to_string(),
            }),
        };
        types::FederationRelationship {
            trust_domain: self.trust_domain.clone(),
            bundle_endpoint_url: self.bundle_endpoint_url.clone(),
            bundle_endpoint_profile: Some(profile),
            trust_domain_bundle: if with_bundle {
                self.bundle.as_ref().map(|b| b.api.clone())
            } else {
                None
            },
        }
    }

    /// What differs between this declaration and `listed`, bundle aside.
    pub fn differences(&self, listed: &types::FederationRelationship) -> Differences {
        use types::federation_relationship::BundleEndpointProfile as Api;
        let profile_matches = match (&self.profile, &listed.bundle_endpoint_profile) {
            (Profile::HttpsWeb, Some(Api::HttpsWeb(_))) => true,
            (Profile::HttpsSpiffe(id), Some(Api::HttpsSpiffe(listed))) => {
                listed.endpoint_spiffe_id.parse::<SpiffeId>().ok().as_ref() == Some(id)
            }
            _ => false,
        };
        Differences {
            url: self.bundle_endpoint_url != listed.bundle_endpoint_url,
            profile: !profile_matches,
        }
    }
}

/// A trust domain name written bare (`partner.example`) or as a SPIFFE ID without a
/// path (`spiffe://partner.example`), as go-spiffe's `TrustDomainFromString` reads it.
fn trust_domain_name(written: &str) -> Result<String, SpecError> {
    let field = "spec.trustDomain";
    let name = match written.strip_prefix("spiffe://") {
        Some(rest) => {
            let id: SpiffeId = written.parse().map_err(|e| error(field, e))?;
            if !id.path().is_empty() {
                return Err(error(
                    field,
                    format!("{written:?} is a SPIFFE ID with a path, not a trust domain"),
                ));
            }
            rest.to_owned()
        }
        None => written.to_owned(),
    };
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if name.is_empty() || name.len() > 255 || !name.chars().all(allowed) {
        return Err(error(
            field,
            format!(
                "{written:?} is not a trust domain name (1 to 255 lowercase letters, digits, '.', '-', '_')"
            ),
        ));
    }
    Ok(name)
}

/// spire-controller-manager's `ValidateBundleEndpointURL`: https, a host, no user info.
fn check_url(url: &str) -> Result<(), SpecError> {
    let field = "spec.bundleEndpointURL";
    if url.is_empty() {
        return Err(error(field, "is missing"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| error(field, format!("{url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(error(field, format!("{url:?}: the scheme must be https")));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if authority.contains('@') {
        return Err(error(field, format!("{url:?}: cannot contain user info")));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(error(field, format!("{url:?}: a host must be given")));
    }
    Ok(())
}

fn error(field: &str, message: impl ToString) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BundleEndpointProfile;

    fn spec(
        td: &str,
        url: &str,
        kind: BundleEndpointProfileType,
        id: Option<&str>,
    ) -> ClusterFederatedTrustDomainSpec {
        ClusterFederatedTrustDomainSpec {
            trust_domain: td.into(),
            bundle_endpoint_url: url.into(),
            bundle_endpoint_profile: BundleEndpointProfile {
                type_: kind,
                endpoint_spiffe_id: id.map(str::to_owned),
            },
            trust_domain_bundle: None,
            class_name: None,
        }
    }

    const SPIFFE: BundleEndpointProfileType = BundleEndpointProfileType::HttpsSpiffe;
    const WEB: BundleEndpointProfileType = BundleEndpointProfileType::HttpsWeb;

    #[test]
    fn valid_specs_parse_with_trust_domains_in_both_forms() {
        for td in ["partner.example", "spiffe://partner.example"] {
            let parsed = Relationship::parse(
                &spec(
                    td,
                    "https://b.example:8443/x",
                    SPIFFE,
                    Some("spiffe://partner.example/spire/server"),
                ),
                "own.example",
            )
            .unwrap();
            assert_eq!(parsed.trust_domain, "partner.example");
            assert_eq!(
                parsed.profile,
                Profile::HttpsSpiffe("spiffe://partner.example/spire/server".parse().unwrap())
            );
        }
        let web =
            Relationship::parse(&spec("p.example", "https://p.example", WEB, None), "own").unwrap();
        assert_eq!(web.profile, Profile::HttpsWeb);
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cases = [
            (spec("Partner", "https://p", WEB, None), "spec.trustDomain"),
            (
                spec("spiffe://p/x", "https://p", WEB, None),
                "spec.trustDomain",
            ),
            (
                spec("own.example", "https://p", WEB, None),
                "spec.trustDomain",
            ),
            (spec("p", "http://p", WEB, None), "spec.bundleEndpointURL"),
            (
                spec("p", "https://u:pw@p/", WEB, None),
                "spec.bundleEndpointURL",
            ),
            (spec("p", "", WEB, None), "spec.bundleEndpointURL"),
            (
                spec("p", "https://p", WEB, Some("spiffe://p/s")),
                "spec.bundleEndpointProfile.endpointSPIFFEID",
            ),
            (
                spec("p", "https://p", SPIFFE, None),
                "spec.bundleEndpointProfile.endpointSPIFFEID",
            ),
            (
                spec("p", "https://p", SPIFFE, Some("p/s")),
                "spec.bundleEndpointProfile.endpointSPIFFEID",
            ),
        ];
        for (spec, field) in cases {
            let err = Relationship::parse(&spec, "own.example").unwrap_err();
            assert_eq!(err.field, field, "{spec:?}: {err}");
        }
        let mut bad_bundle = spec("p", "https://p", WEB, None);
        bad_bundle.trust_domain_bundle = Some("{\"keys\": 1}".into());
        let err = Relationship::parse(&bad_bundle, "own").unwrap_err();
        assert_eq!(err.field, "spec.trustDomainBundle");
    }

    #[test]
    fn differences_ignore_the_listed_bundle() {
        let declared = Relationship::parse(
            &spec("p", "https://p:1/", SPIFFE, Some("spiffe://p/spire/server")),
            "own",
        )
        .unwrap();
        let mut listed = declared.to_api(false);
        listed.trust_domain_bundle = Some(types::Bundle {
            trust_domain: "p".into(),
            ..Default::default()
        });
        assert!(declared.differences(&listed).none());
        listed.bundle_endpoint_url = "https://p:2/".into();
        assert_eq!(
            declared.differences(&listed),
            Differences {
                url: true,
                profile: false
            }
        );
        let web = Relationship::parse(&spec("p", "https://p:2/", WEB, None), "own").unwrap();
        assert_eq!(
            web.differences(&listed),
            Differences {
                url: false,
                profile: true
            }
        );
        let other_id = Relationship::parse(
            &spec("p", "https://p:2/", SPIFFE, Some("spiffe://p/other")),
            "own",
        )
        .unwrap();
        assert!(other_id.differences(&listed).profile);
    }
}
