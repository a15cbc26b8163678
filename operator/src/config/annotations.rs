//! `annotationIdentities`: SPIFFE IDs that pods and ServiceAccounts ask for with an
//! annotation, and the policy the cluster admin sets on them. Not a
//! spire-controller-manager key (it has no such feature); off by default.
//!
//! ```yaml
//! annotationIdentities:
//!   enabled: true
//!   spiffeIDAnnotation: spiffe.io/spiffe-id     # default
//!   dnsNamesAnnotation: spiffe.io/dns-names     # default; comma-separated names
//!   allowedSPIFFEIDTemplates:                   # default: the pod's namespace only
//!     - /ns/{{ .PodMeta.Namespace }}/*
//!   namespaceSelector:                          # default: every namespace
//!     matchLabels: { spiffe.io/annotations: enabled }
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::label_selector::Selector;
use crate::template::Template;

/// The annotation naming the SPIFFE ID by default.
pub const DEFAULT_SPIFFE_ID_ANNOTATION: &str = "spiffe.io/spiffe-id";
/// The annotation listing DNS names by default.
pub const DEFAULT_DNS_NAMES_ANNOTATION: &str = "spiffe.io/dns-names";
/// The allowed-ID template when none is configured: one namespace cannot claim another's
/// identity.
pub const DEFAULT_ALLOWED_TEMPLATE: &str = "/ns/{{ .PodMeta.Namespace }}/*";

/// `annotationIdentities.*` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawAnnotationIdentities {
    pub enabled: Option<bool>,
    #[serde(rename = "spiffeIDAnnotation")]
    pub spiffe_id_annotation: Option<String>,
    pub dns_names_annotation: Option<String>,
    #[serde(rename = "allowedSPIFFEIDTemplates")]
    pub allowed_spiffe_id_templates: Option<Vec<String>>,
    pub namespace_selector: Option<LabelSelector>,
}

/// `annotationIdentities`: the effective settings, templates parsed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnotationIdentities {
    /// `annotationIdentities.enabled`. Default: false.
    pub enabled: bool,
    /// `annotationIdentities.spiffeIDAnnotation`. Default: `spiffe.io/spiffe-id`.
    #[serde(rename = "spiffeIDAnnotation")]
    pub spiffe_id_annotation: String,
    /// `annotationIdentities.dnsNamesAnnotation`. Default: `spiffe.io/dns-names`.
    pub dns_names_annotation: String,
    /// `annotationIdentities.allowedSPIFFEIDTemplates`: SPIFFE ID paths (templates with
    /// the ClusterSPIFFEID data) an annotated ID must equal, or lie under when the path
    /// ends in `/*`. Default: `/ns/{{ .PodMeta.Namespace }}/*`.
    #[serde(rename = "allowedSPIFFEIDTemplates")]
    pub allowed_templates: Vec<String>,
    /// The parsed templates, in the same order.
    #[serde(skip)]
    pub allowed: Vec<Template>,
    /// `annotationIdentities.namespaceSelector`: only pods of matching namespaces may
    /// use annotations. Default: every namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The parsed selector.
    #[serde(skip)]
    pub namespaces: Selector,
}

impl Default for AnnotationIdentities {
    fn default() -> Self {
        Self {
            enabled: false,
            spiffe_id_annotation: DEFAULT_SPIFFE_ID_ANNOTATION.into(),
            dns_names_annotation: DEFAULT_DNS_NAMES_ANNOTATION.into(),
            allowed_templates: vec![DEFAULT_ALLOWED_TEMPLATE.into()],
            allowed: vec![
                Template::parse(DEFAULT_ALLOWED_TEMPLATE, DEFAULT_ALLOWED_TEMPLATE)
                    .unwrap_or_else(|e| panic!("constant template: {e}")),
            ],
            namespace_selector: None,
            namespaces: Selector::everything(),
        }
    }
}

const KEY: &str = "annotationIdentities";

/// Checks and compiles the block; every error names the key and the value.
pub(super) fn parse(
    raw: Option<RawAnnotationIdentities>,
) -> Result<AnnotationIdentities, ConfigError> {
    let mut settings = AnnotationIdentities::default();
    let Some(raw) = raw else {
        return Ok(settings);
    };
    let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
    settings.enabled = raw.enabled.unwrap_or(false);
    for (field, value, slot) in [
        (
            "spiffeIDAnnotation",
            raw.spiffe_id_annotation,
            &mut settings.spiffe_id_annotation,
        ),
        (
            "dnsNamesAnnotation",
            raw.dns_names_annotation,
            &mut settings.dns_names_annotation,
        ),
    ] {
        if let Some(name) = value {
            check_annotation_name(&name)
                .map_err(|message| invalid(format!("{KEY}.{field}"), message))?;
            *slot = name;
        }
    }
    if settings.spiffe_id_annotation == settings.dns_names_annotation {
        return Err(invalid(
            format!("{KEY}.dnsNamesAnnotation"),
            format!(
                "{:?} must differ from spiffeIDAnnotation",
                settings.dns_names_annotation
            ),
        ));
    }
    if let Some(templates) = raw.allowed_spiffe_id_templates {
        if templates.is_empty() {
            return Err(invalid(
                format!("{KEY}.allowedSPIFFEIDTemplates"),
                "is empty: no annotated ID could ever be allowed; leave it out for the default (the pod's namespace) or set enabled: false".into(),
            ));
        }
        settings.allowed = Vec::with_capacity(templates.len());
        for (i, source) in templates.iter().enumerate() {
            let key = format!("{KEY}.allowedSPIFFEIDTemplates[{i}]");
            check_allowed_template(source).map_err(|m| invalid(key.clone(), m))?;
            let template = Template::parse(&key, source)
                .map_err(|e| invalid(key.clone(), format!("{source:?}: {e}")))?;
            settings.allowed.push(template);
        }
        settings.allowed_templates = templates;
    }
    if let Some(selector) = raw.namespace_selector {
        settings.namespaces = Selector::parse(Some(&selector))
            .map_err(|e| invalid(format!("{KEY}.namespaceSelector"), e.to_string()))?;
        settings.namespace_selector = Some(selector);
    }
    Ok(settings)
}

/// A path template: starts with `/`, and a `*` may only be the whole last segment.
fn check_allowed_template(source: &str) -> Result<(), String> {
    if !source.starts_with('/') {
        return Err(format!(
            "{source:?} must be a SPIFFE ID path starting with / (the trust domain is always this cluster's)"
        ));
    }
    let star = source.find('*');
    if star.is_some_and(|at| at != source.len() - 1 || !source.ends_with("/*")) {
        return Err(format!(
            "{source:?}: '*' is only allowed as the whole last segment (/ns/x/*)"
        ));
    }
    if source.chars().any(char::is_control) {
        return Err(format!("{source:?} contains control characters"));
    }
    Ok(())
}

/// Kubernetes' rule for annotation keys: an optional DNS-subdomain prefix and `/`, then
/// a name of at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn check_annotation_name(name: &str) -> Result<(), String> {
    let (prefix, local) = match name.split_once('/') {
        Some((prefix, local)) => (Some(prefix), local),
        None => (None, name),
    };
    let alnum_ends = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let local_ok = !local.is_empty()
        && local.len() <= 63
        && alnum_ends(local)
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && alnum_ends(label)
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    if local_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an annotation name ([prefix/]name: a DNS subdomain prefix, a name of up to 63 letters, digits, '.', '-', '_')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(block: &str) -> Result<Config, String> {
        Config::from_yaml(&format!(
            "trustDomain: td\nclusterName: c\nannotationIdentities:\n{block}"
        ))
        .map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message += &format!(": {s}");
                source = s.source();
            }
            message
        })
    }

    #[test]
    fn off_by_default_with_the_namespace_rule() {
        let config = Config::from_yaml("trustDomain: td\nclusterName: c\n").unwrap();
        let settings = &config.annotation_identities;
        assert!(!settings.enabled);
        assert_eq!(settings.spiffe_id_annotation, "spiffe.io/spiffe-id");
        assert_eq!(settings.dns_names_annotation, "spiffe.io/dns-names");
        assert_eq!(
            settings.allowed_templates,
            ["/ns/{{ .PodMeta.Namespace }}/*"]
        );
        assert!(config.notes.is_empty(), "{:?}", config.notes);
    }

    #[test]
    fn every_key_is_read() {
        let config = load(
            "  enabled: true\n  spiffeIDAnnotation: example.com/id\n  dnsNamesAnnotation: example.com/dns\n  allowedSPIFFEIDTemplates: ['/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}/*', /shared/db]\n  namespaceSelector:\n    matchLabels: {annotations: on}\n",
        )
        .unwrap();
        let settings = &config.annotation_identities;
        assert!(settings.enabled);
        assert_eq!(settings.spiffe_id_annotation, "example.com/id");
        assert_eq!(settings.dns_names_annotation, "example.com/dns");
        assert_eq!(settings.allowed.len(), 2);
        let on = [("annotations".to_string(), "on".to_string())].into();
        assert!(settings.namespaces.matches(Some(&on)));
        assert!(!settings.namespaces.matches(None));
        assert!(config.notes.is_empty(), "{:?}", config.notes);
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        for (block, needle) in [
            (
                "  spiffeIDAnnotation: 'bad name/x'\n",
                "annotationIdentities.spiffeIDAnnotation\": \"bad name/x\" is not an annotation name",
            ),
            (
                "  dnsNamesAnnotation: spiffe.io/spiffe-id\n",
                "annotationIdentities.dnsNamesAnnotation\": \"spiffe.io/spiffe-id\" must differ",
            ),
            (
                "  allowedSPIFFEIDTemplates: []\n",
                "annotationIdentities.allowedSPIFFEIDTemplates\": is empty",
            ),
            (
                "  allowedSPIFFEIDTemplates: [/ok/*, 'spiffe://td/x']\n",
                "allowedSPIFFEIDTemplates[1]\": \"spiffe://td/x\" must be a SPIFFE ID path",
            ),
            (
                "  allowedSPIFFEIDTemplates: ['/a/*/b']\n",
                "allowedSPIFFEIDTemplates[0]\": \"/a/*/b\": '*' is only allowed",
            ),
            (
                "  allowedSPIFFEIDTemplates: ['/ns/{{ .PodMeta.Namespace']\n",
                "allowedSPIFFEIDTemplates[0]\": \"/ns/{{ .PodMeta.Namespace\":",
            ),
            (
                "  namespaceSelector:\n    matchExpressions: [{key: a, operator: Near}]\n",
                "annotationIdentities.namespaceSelector\": matchExpressions[0].operator",
            ),
            ("  enabled: maybe\n", "annotationIdentities.enabled"),
        ] {
            let err = load(block).unwrap_err();
            assert!(err.contains(needle), "{block}: {err}");
        }
    }
}
