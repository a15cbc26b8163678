//! From resources to entries: parsing ClusterSPIFFEID / ClusterStaticEntry specs and
//! rendering the entries they declare. Pure: values in, values out.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use regex::Regex;

use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry, GoDuration};
use crate::label_selector::Selector;
use crate::spire::{EntryKey, EntrySpec, SpiffeId};
use crate::template::{Template, TemplateData};

mod annotation;
mod federation;

pub use annotation::{
    AnnotatedBy, AnnotationInput, AnnotationRequest, MAX_DNS_NAMES, Refusal, RefusalReason,
    annotated_entry, parse_dns_names,
};
pub use federation::{EndpointProfile, FederationRelationship};

/// The parent ID template spire-controller-manager uses when `parentIDTemplate` is unset:
/// the k8s_psat agent on the pod's node.
pub const DEFAULT_PARENT_ID_TEMPLATE: &str =
    "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}";

static TRUST_DOMAIN_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9._-]{1,255}$").unwrap_or_else(|e| panic!("constant regex: {e}"))
});

/// A field of a resource's spec that cannot be used, named by its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field, e.g. `spec.dnsNameTemplates[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl ToString) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// Who wins when two resources declare the same entry, in spire-controller-manager's
/// order: the older by creation time, then one not being deleted, then the lower UID.
/// (The field order is the comparison order.) An entry asked for by an annotation
/// loses to any resource's (ClusterSPIFFEID, ClusterStaticEntry), whatever the ages.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Age {
    annotation: bool,
    created: Option<k8s_openapi::jiff::Timestamp>,
    deleting: bool,
    /// Shared: every entry an object declares holds its age.
    uid: Arc<str>,
}

impl Age {
    /// The age of the object `meta` describes.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self {
            annotation: false,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            deleting: meta.deletion_timestamp.is_some(),
            uid: meta.uid.as_deref().unwrap_or_default().into(),
        }
    }

    /// The age of an entry asked for by an annotation of the object `meta` describes
    /// (the pod or its ServiceAccount): after every resource's.
    pub fn of_annotation(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Self {
        Self {
            annotation: true,
            ..Self::of(meta)
        }
    }
}

/// A ClusterSPIFFEID whose spec parsed: templates compiled, selectors and durations checked.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    /// The resource name (shared by the records of every pod it selects).
    pub name: Arc<str>,
    /// Age, for masking.
    pub age: Age,
    /// `spec.fallback`.
    pub fallback: bool,
    /// `spec.autoPopulateDNSNames`.
    pub auto_populate_dns_names: bool,
    /// `spec.podSelector`.
    pub pod_selector: Selector,
    /// `spec.namespaceSelector`.
    pub namespace_selector: Selector,
    spiffe_id: Template,
    dns_names: Vec<Template>,
    selectors: Vec<Template>,
    federates_with: BTreeSet<String>,
    x509_svid_ttl: i32,
    jwt_svid_ttl: i32,
    admin: bool,
    downstream: bool,
    hint: String,
}

/// What a pod entry is rendered from besides the ClusterSPIFFEID.
#[derive(Debug, Clone)]
pub struct PodInput<'a> {
    /// Template data with the node, pod, namespace and service account added.
    pub data: &'a TemplateData,
    /// The pod's UID (its `k8s:pod-uid` selector).
    pub pod_uid: &'a str,
    /// The rendered parent ID of the pod's node.
    pub parent_id: &'a SpiffeId,
    /// DNS names from the Services whose endpoints include the pod, already expanded
    /// and sorted (used when `autoPopulateDNSNames` is set).
    pub service_dns_names: &'a [String],
}

impl PodIdentity {
    /// Parses a ClusterSPIFFEID; the error names the first unusable field.
    pub fn parse(resource: &ClusterSPIFFEID) -> Result<Self, SpecError> {
        let spec = &resource.spec;
        let template = |field: String, source: &str| {
            Template::parse(&field, source).map_err(|e| SpecError::new(field, e))
        };
        Ok(Self {
            name: resource.metadata.name.as_deref().unwrap_or_default().into(),
            age: Age::of(&resource.metadata),
            fallback: spec.fallback,
            auto_populate_dns_names: spec.auto_populate_dns_names,
            pod_selector: Selector::parse(spec.pod_selector.as_ref())
                .map_err(|e| SpecError::new("spec.podSelector", e))?,
            namespace_selector: Selector::parse(spec.namespace_selector.as_ref())
                .map_err(|e| SpecError::new("spec.namespaceSelector", e))?,
            spiffe_id: template("spec.spiffeIDTemplate".into(), &spec.spiffe_id_template)?,
            dns_names: (spec.dns_name_templates.iter().enumerate())
                .map(|(i, s)| template(format!("spec.dnsNameTemplates[{i}]"), s))
                .collect::<Result<_, _>>()?,
            selectors: (spec.workload_selector_templates.iter().enumerate())
                .map(|(i, s)| template(format!("spec.workloadSelectorTemplates[{i}]"), s))
                .collect::<Result<_, _>>()?,
            federates_with: federates_with(&spec.federates_with)?,
            x509_svid_ttl: ttl_seconds("spec.ttl", spec.ttl.as_ref())?,
            jwt_svid_ttl: ttl_seconds("spec.jwtTtl", spec.jwt_ttl.as_ref())?,
            admin: spec.admin,
            downstream: spec.downstream,
            hint: spec.hint.clone().unwrap_or_default(),
        })
    }

    /// Its templates (SPIFFE ID, selectors, DNS names).
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        std::iter::once(&self.spiffe_id)
            .chain(&self.selectors)
            .chain(&self.dns_names)
    }

    /// Renders this identity's entry for one pod.
    pub fn render(&self, pod: &PodInput<'_>, trust_domain: &str) -> Result<EntrySpec, SpecError> {
        let render = |field: &str, template: &Template| {
            template
                .render(pod.data)
                .map_err(|e| SpecError::new(field, e))
        };
        let rendered = render("spec.spiffeIDTemplate", &self.spiffe_id)?;
        let spiffe_id = in_trust_domain("spec.spiffeIDTemplate", &rendered, trust_domain)?;

        // Exactly as long as it will be: no reallocation.
        let mut selectors = Vec::with_capacity(1 + self.selectors.len());
        selectors.push(format!("k8s:pod-uid:{}", pod.pod_uid));
        for (i, template) in self.selectors.iter().enumerate() {
            let field = format!("spec.workloadSelectorTemplates[{i}]");
            let selector = render(&field, template)?;
            check_selector(&field, &selector)?;
            selectors.push(selector);
        }

        let mut dns_names = Vec::new();
        for (i, template) in self.dns_names.iter().enumerate() {
            let field = format!("spec.dnsNameTemplates[{i}]");
            let name = render(&field, template)?;
            check_dns_name(&field, &name)?;
            dns_names.push(name);
        }
        if self.auto_populate_dns_names {
            dns_names.extend(pod.service_dns_names.iter().cloned());
        }
        dedup_in_order(&mut dns_names);
        // Held for as long as the entry is desired: no spare capacity (one name pushed
        // would otherwise keep room for four).
        dns_names.shrink_to_fit();

        Ok(EntrySpec {
            key: EntryKey {
                spiffe_id,
                parent_id: pod.parent_id.clone(),
                selectors: selectors.into_iter().collect(),
            },
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            federates_with: self.federates_with.clone(),
            admin: self.admin,
            downstream: self.downstream,
            dns_names,
            hint: self.hint.clone(),
            store_svid: false,
        })
    }
}

/// A ClusterStaticEntry turned into the entry it declares.
#[derive(Debug, Clone)]
pub struct StaticEntry {
    /// The resource name.
    pub name: String,
    /// Age, for masking.
    pub age: Age,
    /// The entry.
    pub entry: EntrySpec,
}

impl StaticEntry {
    /// Parses a ClusterStaticEntry; the error names the first unusable field.
    pub fn parse(resource: &ClusterStaticEntry) -> Result<Self, SpecError> {
        let spec = &resource.spec;
        let id = |field: &str, value: &str| {
            value
                .parse::<SpiffeId>()
                .map_err(|e| SpecError::new(field, e))
        };
        if spec.selectors.is_empty() {
            return Err(SpecError::new(
                "spec.selectors",
                "at least one selector is required",
            ));
        }
        for (i, selector) in spec.selectors.iter().enumerate() {
            check_selector(&format!("spec.selectors[{i}]"), selector)?;
        }
        for (i, name) in spec.dns_names.iter().enumerate() {
            check_dns_name(&format!("spec.dnsNames[{i}]"), name)?;
        }
        let selectors = spec.selectors.iter().cloned().collect();
        // As written, like spire-controller-manager: a static entry is the user's entry.
        let dns_names = spec.dns_names.clone();
        Ok(Self {
            name: resource.metadata.name.clone().unwrap_or_default(),
            age: Age::of(&resource.metadata),
            entry: EntrySpec {
                key: EntryKey {
                    spiffe_id: id("spec.spiffeID", &spec.spiffe_id)?,
                    parent_id: id("spec.parentID", &spec.parent_id)?,
                    selectors,
                },
                x509_svid_ttl: ttl_seconds("spec.x509SVIDTTL", spec.x509_svid_ttl.as_ref())?,
                jwt_svid_ttl: ttl_seconds("spec.jwtSVIDTTL", spec.jwt_svid_ttl.as_ref())?,
                federates_with: federates_with(&spec.federates_with)?,
                admin: spec.admin,
                downstream: spec.downstream,
                dns_names,
                hint: spec.hint.clone().unwrap_or_default(),
                store_svid: spec.store_svid,
            },
        })
    }
}

/// The parent ID of pod entries on one node.
#[derive(Debug, Clone)]
pub struct ParentTemplate {
    template: Template,
}

impl ParentTemplate {
    /// Parses `parentIDTemplate` (or the default when `None`).
    pub fn parse(source: Option<&str>) -> Result<Self, SpecError> {
        let source = source.unwrap_or(DEFAULT_PARENT_ID_TEMPLATE);
        Template::parse("parentIDTemplate", source)
            .map(|template| Self { template })
            .map_err(|e| SpecError::new("parentIDTemplate", e))
    }

    /// Renders it with cluster and node data (no pod data, as in spire-controller-manager).
    pub fn render(
        &self,
        node_data: &TemplateData,
        trust_domain: &str,
    ) -> Result<SpiffeId, SpecError> {
        let rendered = self
            .template
            .render(node_data)
            .map_err(|e| SpecError::new("parentIDTemplate", e))?;
        in_trust_domain("parentIDTemplate", &rendered, trust_domain)
    }
}

/// The DNS names autoPopulateDNSNames adds for a Service `name` in `namespace`.
pub fn service_dns_names(name: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    let mut names = vec![
        name.to_owned(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
    ];
    if !cluster_domain.is_empty() {
        names.push(format!("{name}.{namespace}.svc.{cluster_domain}"));
    }
    names
}

/// What can be known of a `spiffeIDTemplate` before any pod exists: it is not empty,
/// and the literal text before its first action (`{{`) is compatible with a SPIFFE ID in
/// `trust_domain`. A template whose trust domain comes from an action
/// (`spiffe://{{ .TrustDomain }}/...`) is checked when rendered.
pub fn check_spiffe_id_template(source: &str, trust_domain: &str) -> Result<(), SpecError> {
    const FIELD: &str = "spec.spiffeIDTemplate";
    const SCHEME: &str = "spiffe://";
    if source.trim().is_empty() {
        return Err(SpecError::new(
            FIELD,
            "is required (an empty template renders no SPIFFE ID)",
        ));
    }
    let (literal, complete) = match source.find("{{") {
        Some(i) => (&source[..i], false),
        None => (source, true),
    };
    let scheme_ok = if literal.len() >= SCHEME.len() {
        literal.starts_with(SCHEME)
    } else {
        SCHEME.starts_with(literal)
    };
    if !scheme_ok {
        return Err(SpecError::new(
            FIELD,
            format!("{source:?} does not render a SPIFFE ID: it must start with spiffe://"),
        ));
    }
    let rest = literal.get(SCHEME.len()..).unwrap_or_default();
    let written = match rest.find('/') {
        Some(i) => Some(&rest[..i]),
        None if complete => Some(rest),
        None => None,
    };
    match written {
        Some(td) if td != trust_domain => Err(SpecError::new(
            FIELD,
            format!(
                "{source:?} renders IDs in trust domain {td:?}, not in this cluster's {trust_domain:?}"
            ),
        )),
        _ => Ok(()),
    }
}

fn in_trust_domain(field: &str, rendered: &str, trust_domain: &str) -> Result<SpiffeId, SpecError> {
    let id: SpiffeId = rendered.parse().map_err(|e| SpecError::new(field, e))?;
    if id.trust_domain() != trust_domain {
        return Err(SpecError::new(
            field,
            format!("{rendered:?} is not in trust domain {trust_domain:?}"),
        ));
    }
    Ok(id)
}

/// The longest selector accepted. Real ones are far shorter (an image reference with a
/// digest is ~150 bytes); the bound keeps a hostile pod label or template from making
/// entries that bloat the datastore or that a SQL backend truncates or refuses.
pub const MAX_SELECTOR_LEN: usize = 1024;

/// The longest DNS name (RFC 1035: 253 characters in text form).
pub const MAX_DNS_NAME_LEN: usize = 253;

/// The start of a value too long to quote whole in an error message.
fn quoted_prefix(value: &str) -> String {
    let end = (0..=64.min(value.len()))
        .rev()
        .find(|i| value.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{:?}...", &value[..end])
}

/// A control character (newline, NUL, escape...) in `value`: never legitimate in a
/// selector or a DNS name, and a way to forge extra lines in logs or CLI output.
fn control_char(value: &str) -> Option<char> {
    value.chars().find(|c| c.is_control())
}

fn check_selector(field: &str, selector: &str) -> Result<(), SpecError> {
    if selector.len() > MAX_SELECTOR_LEN {
        return Err(SpecError::new(
            field,
            format!(
                "{} is {} bytes long; selectors are limited to {MAX_SELECTOR_LEN}",
                quoted_prefix(selector),
                selector.len()
            ),
        ));
    }
    if let Some(c) = control_char(selector) {
        return Err(SpecError::new(
            field,
            format!("{selector:?} contains the control character {c:?}"),
        ));
    }
    match selector.split_once(':') {
        Some((kind, value)) if !kind.is_empty() && !value.is_empty() => Ok(()),
        _ => Err(SpecError::new(
            field,
            format!("{selector:?} is not a selector of the form type:value"),
        )),
    }
}

/// Trust domains to federate with, each written as a name (`partner.org`) or as a SPIFFE
/// ID (`spiffe://partner.org`, any path), as go-spiffe's `TrustDomainFromString` reads
/// them for spire-controller-manager; SPIRE gets the bare name.
fn federates_with(names: &[String]) -> Result<BTreeSet<String>, SpecError> {
    (names.iter().enumerate())
        .map(|(i, name)| trust_domain_name(&format!("spec.federatesWith[{i}]"), name))
        .collect()
}

/// A trust domain written as a name (`partner.org`) or as a SPIFFE ID
/// (`spiffe://partner.org`, any path), reduced to the name.
fn trust_domain_name(field: &str, name: &str) -> Result<String, SpecError> {
    if name.contains(":/") {
        Ok(name
            .parse::<SpiffeId>()
            .map_err(|e| SpecError::new(field, e))?
            .trust_domain()
            .to_owned())
    } else if TRUST_DOMAIN_NAME.is_match(name) {
        Ok(name.to_owned())
    } else {
        Err(SpecError::new(
            field,
            format!(
                "{name:?} is not a trust domain name (lowercase letters, digits, '.', '-', '_') or spiffe://<trust domain>"
            ),
        ))
    }
}

/// SVID TTLs are whole seconds in SPIRE; like spire-controller-manager, fractions are dropped.
fn ttl_seconds(field: &str, ttl: Option<&GoDuration>) -> Result<i32, SpecError> {
    let Some(ttl) = ttl else { return Ok(0) };
    let seconds = ttl
        .to_std()
        .map_err(|e| SpecError::new(field, e))?
        .as_secs();
    i32::try_from(seconds)
        .map_err(|_| SpecError::new(field, format!("{ttl} is longer than SPIRE accepts")))
}

/// Refuses what is not a DNS name at all: empty, longer than DNS allows, or with
/// whitespace or control characters. Finer rules (label syntax, wildcards) are left to
/// the SPIRE server, which spire-controller-manager's users already rely on.
fn check_dns_name(field: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new(field, "is empty; a DNS name is required"));
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(SpecError::new(
            field,
            format!(
                "{} is {} bytes long; DNS names are limited to {MAX_DNS_NAME_LEN}",
                quoted_prefix(name),
                name.len()
            ),
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(SpecError::new(
            field,
            format!("{name:?} is not a DNS name: it contains {c:?}"),
        ));
    }
    Ok(())
}

fn dedup_in_order(names: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

#[cfg(test)]
mod tests;
