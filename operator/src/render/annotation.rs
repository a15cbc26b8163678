//! Entries that a pod or its ServiceAccount asks for with an annotation, and the policy
//! the cluster admin sets on them (`annotationIdentities` in the config). Pure.
//!
//! The value is untrusted: anyone who may edit a pod in a namespace writes it. It must
//! be a SPIFFE ID of this trust domain, short, without control characters, and its
//! path must equal one of the allowed templates as rendered for the pod, or lie under
//! one that ends in `/*`. The default template, `/ns/{{ .PodMeta.Namespace }}/*`, keeps
//! every namespace inside its own part of the trust domain.

use std::fmt;

use super::in_trust_domain;
use crate::config::AnnotationIdentities;
use crate::spire::{EntryKey, EntrySpec, SpiffeId};
use crate::template::TemplateData;

/// The longest annotated SPIFFE ID accepted, in bytes (the SPIFFE standard's limit for
/// the URI).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The most DNS names one annotation may list.
pub const MAX_DNS_NAMES: usize = 64;

/// The object whose annotation asks for the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnotatedBy {
    /// The pod itself.
    Pod,
    /// The pod's ServiceAccount, by name.
    ServiceAccount(String),
}

/// What a pod asks for: the SPIFFE ID annotation and the DNS names annotation of the
/// pod, or else of its ServiceAccount (never a mix of both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationRequest {
    /// Whose annotations these are.
    pub by: AnnotatedBy,
    /// The SPIFFE ID annotation's value, as written.
    pub spiffe_id: String,
    /// The DNS names annotation's value, if any.
    pub dns_names: Option<String>,
}

/// Why an annotation is refused (the `reason` label of
/// `spire_operator_annotations_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// Not a SPIFFE ID: control characters, too long, bad syntax.
    InvalidSpiffeId,
    /// A SPIFFE ID of another trust domain.
    OtherTrustDomain,
    /// Outside every allowed template.
    NotAllowed,
    /// The pod's namespace is not selected by `namespaceSelector`.
    NamespaceNotSelected,
    /// The DNS names annotation lists something that is not a DNS name.
    InvalidDnsNames,
}

impl RefusalReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidSpiffeId => "invalid_spiffe_id",
            Self::OtherTrustDomain => "other_trust_domain",
            Self::NotAllowed => "not_allowed",
            Self::NamespaceNotSelected => "namespace_not_selected",
            Self::InvalidDnsNames => "invalid_dns_names",
        }
    }
}

/// A refused annotation: why, and the rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The kind of refusal.
    pub reason: RefusalReason,
    /// The annotation refused and the value, the rule and why, in one sentence.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Everything the policy reads about one pod.
pub struct AnnotationInput<'a> {
    /// The pod's template data (pod, node, namespace, ServiceAccount).
    pub data: &'a TemplateData,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The namespace's labels (for `namespaceSelector`).
    pub namespace_labels: Option<&'a std::collections::BTreeMap<String, String>>,
    /// The pod's UID.
    pub pod_uid: &'a str,
    /// The pod's parent ID, as for ClusterSPIFFEID entries.
    pub parent_id: &'a SpiffeId,
}

/// The entry `request` asks for, or why it is refused.
pub fn annotated_entry(
    settings: &AnnotationIdentities,
    trust_domain: &str,
    request: &AnnotationRequest,
    input: &AnnotationInput<'_>,
) -> Result<EntrySpec, Refusal> {
    let subject = subject(settings, request, input.namespace);
    let refuse = |reason, why: String| Refusal {
        reason,
        message: format!("{subject} refused: {why}"),
    };
    if !settings.namespaces.matches(input.namespace_labels) {
        return Err(refuse(
            RefusalReason::NamespaceNotSelected,
            format!(
                "namespace {} is not selected by annotationIdentities.namespaceSelector",
                input.namespace
            ),
        ));
    }
    let spiffe_id = parse_spiffe_id(&request.spiffe_id, trust_domain)
        .map_err(|(reason, why)| refuse(reason, why))?;
    let mut rules = Vec::with_capacity(settings.allowed.len());
    let allowed = settings.allowed.iter().any(|template| {
        match template.render(input.data) {
            Ok(rule) => {
                let ok = path_allowed(spiffe_id.path(), &rule);
                rules.push(format!("{rule:?}"));
                ok
            }
            // A template this pod cannot fill (a missing label) allows nothing for it.
            Err(e) => {
                rules.push(format!("<{e}>"));
                false
            }
        }
    });
    if !allowed {
        return Err(refuse(
            RefusalReason::NotAllowed,
            format!(
                "path {:?} is outside annotationIdentities.allowedSPIFFEIDTemplates, which allow here: {}",
                spiffe_id.path(),
                rules.join(", ")
            ),
        ));
    }
    let dns_names = match &request.dns_names {
        None => Vec::new(),
        Some(value) => parse_dns_names(value).map_err(|why| {
            refuse(
                RefusalReason::InvalidDnsNames,
                format!("{}={}: {why}", settings.dns_names_annotation, shown(value)),
            )
        })?,
    };
    Ok(EntrySpec {
        key: EntryKey {
            spiffe_id,
            parent_id: input.parent_id.clone(),
            selectors: [format!("k8s:pod-uid:{}", input.pod_uid)].into(),
        },
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        federates_with: Default::default(),
        admin: false,
        downstream: false,
        dns_names,
        hint: String::new(),
        store_svid: false,
    })
}

/// "annotation spiffe.io/spiffe-id="..." on ServiceAccount shop/web".
fn subject(
    settings: &AnnotationIdentities,
    request: &AnnotationRequest,
    namespace: &str,
) -> String {
    let on = match &request.by {
        AnnotatedBy::Pod => "the pod".to_owned(),
        AnnotatedBy::ServiceAccount(name) => format!("ServiceAccount {namespace}/{name}"),
    };
    format!(
        "annotation {}={} on {on}",
        settings.spiffe_id_annotation,
        shown(&request.spiffe_id)
    )
}

/// A value as messages show it: quoted with escapes (a newline shows as `\n`), cut to
/// 100 characters so a hostile value cannot flood an event.
fn shown(value: &str) -> String {
    const LIMIT: usize = 100;
    if value.chars().count() <= LIMIT {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(LIMIT).collect();
        format!("{head:?}... ({} bytes)", value.len())
    }
}

/// The annotated SPIFFE ID, checked for what no policy may allow.
fn parse_spiffe_id(value: &str, trust_domain: &str) -> Result<SpiffeId, (RefusalReason, String)> {
    let invalid = |why: String| (RefusalReason::InvalidSpiffeId, why);
    if value.len() > MAX_SPIFFE_ID_LEN {
        return Err(invalid(format!(
            "{} bytes is longer than a SPIFFE ID may be ({MAX_SPIFFE_ID_LEN})",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            "contains control characters (newline, NUL, ...)".into(),
        ));
    }
    let id: SpiffeId = value
        .parse()
        .map_err(|e| invalid(format!("not a SPIFFE ID: {e}")))?;
    if id.path().is_empty() {
        return Err(invalid(
            "the trust domain's own ID (no path) cannot be a workload's".into(),
        ));
    }
    in_trust_domain("", value, trust_domain).map_err(|_| {
        (
            RefusalReason::OtherTrustDomain,
            format!(
                "trust domain {:?} is not this cluster's {trust_domain:?}",
                id.trust_domain()
            ),
        )
    })
}

/// Whether `path` is allowed by the rendered template `rule`: equal to it, or, when the
/// rule ends in `/*`, below the part before the `*` (at least one more segment).
fn path_allowed(path: &str, rule: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') => {
            path.len() > prefix.len() && path.starts_with(prefix)
        }
        _ => path == rule,
    }
}

/// The DNS names annotation: comma-separated, blanks around names ignored, empty items
/// skipped, duplicates dropped. Each must be a DNS name (a leading `*.` allowed).
pub fn parse_dns_names(value: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for (i, name) in value.split(',').map(str::trim).enumerate() {
        if name.is_empty() {
            continue;
        }
        if !is_dns_name(name) {
            return Err(format!(
                "item {i}, {}, is not a DNS name (labels of letters, digits and '-', at most 63 characters each and 253 in all; '*.' only in front)",
                shown(name)
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    if names.len() > MAX_DNS_NAMES {
        return Err(format!(
            "{} names are more than the {MAX_DNS_NAMES} allowed",
            names.len()
        ));
    }
    Ok(names)
}

fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests;
