//! A normalized, comparable view of the registration entries on a SPIRE server, for
//! assertions and differential tests (ours against the reference controller manager).
//!
//! SPIRE returns selectors and federated trust domains in storage order; the view holds
//! them as sets so two servers holding the same entries compare equal. DNS names keep
//! their order: the first becomes the certificate's common name.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types;

use crate::spire::Spire;
use crate::wait;

/// How long [`wait_for`] waits by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`wait_for`] and [`holds_for`] list the entries.
const POLL: Duration = Duration::from_millis(250);

/// The selector type and prefix every pod entry carries: `k8s:pod-uid:<uid>`.
pub const POD_UID_SELECTOR_PREFIX: &str = "k8s:pod-uid:";

/// One registration entry, normalized. Ordering and equality include the entry ID; use
/// [`EntryView::fields`] to compare what the entry says regardless of its ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryView {
    /// The SPIFFE ID, `spiffe://td/path` (first so that lists sort by it).
    pub spiffe_id: String,
    /// The parent ID, `spiffe://td/path`.
    pub parent_id: String,
    /// Selectors as `type:value` (the value may contain `:`).
    pub selectors: BTreeSet<String>,
    /// DNS SANs in server order.
    pub dns_names: Vec<String>,
    /// X.509-SVID TTL in seconds; 0 is the server default.
    pub x509_svid_ttl: i32,
    /// JWT-SVID TTL in seconds; 0 is the server default.
    pub jwt_svid_ttl: i32,
    /// Trust domain names of `federatesWith`.
    pub federates_with: BTreeSet<String>,
    /// `admin` flag.
    pub admin: bool,
    /// `downstream` flag.
    pub downstream: bool,
    /// The hint, empty when unset.
    pub hint: String,
    /// `storeSvid` flag.
    pub store_svid: bool,
    /// The server-side entry ID.
    pub id: String,
}

/// Everything an [`EntryView`] says except its ID: what differential tests compare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryFields {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// The parent ID.
    pub parent_id: String,
    /// Selectors as `type:value`.
    pub selectors: BTreeSet<String>,
    /// DNS SANs in server order.
    pub dns_names: Vec<String>,
    /// X.509-SVID TTL in seconds.
    pub x509_svid_ttl: i32,
    /// JWT-SVID TTL in seconds.
    pub jwt_svid_ttl: i32,
    /// Trust domain names of `federatesWith`.
    pub federates_with: BTreeSet<String>,
    /// `admin` flag.
    pub admin: bool,
    /// `downstream` flag.
    pub downstream: bool,
    /// The hint.
    pub hint: String,
    /// `storeSvid` flag.
    pub store_svid: bool,
}

impl EntryView {
    /// Normalizes an entry as the SPIRE API returns it. An unparsable SPIFFE ID is kept
    /// verbatim (`spiffe://<td><path>`) so that a view never fails.
    pub fn from_api(entry: &types::Entry) -> Self {
        let id_text = |id: &Option<types::Spiffeid>| match id {
            Some(id) => SpiffeId::from_api(id)
                .map(|parsed| parsed.to_string())
                .unwrap_or_else(|_| format!("spiffe://{}{}", id.trust_domain, id.path)),
            None => String::new(),
        };
        Self {
            spiffe_id: id_text(&entry.spiffe_id),
            parent_id: id_text(&entry.parent_id),
            selectors: entry
                .selectors
                .iter()
                .map(|s| format!("{}:{}", s.r#type, s.value))
                .collect(),
            dns_names: entry.dns_names.clone(),
            x509_svid_ttl: entry.x509_svid_ttl,
            jwt_svid_ttl: entry.jwt_svid_ttl,
            federates_with: entry
                .federates_with
                .iter()
                .map(|td| td.strip_prefix("spiffe://").unwrap_or(td).to_owned())
                .collect(),
            admin: entry.admin,
            downstream: entry.downstream,
            hint: entry.hint.clone(),
            store_svid: entry.store_svid,
            id: entry.id.clone(),
        }
    }

    /// The entry without its ID.
    pub fn fields(&self) -> EntryFields {
        EntryFields {
            spiffe_id: self.spiffe_id.clone(),
            parent_id: self.parent_id.clone(),
            selectors: self.selectors.clone(),
            dns_names: self.dns_names.clone(),
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            federates_with: self.federates_with.clone(),
            admin: self.admin,
            downstream: self.downstream,
            hint: self.hint.clone(),
            store_svid: self.store_svid,
        }
    }

    /// The UID in the entry's `k8s:pod-uid:<uid>` selector, if it has one.
    pub fn pod_uid(&self) -> Option<&str> {
        self.selectors
            .iter()
            .find_map(|s| s.strip_prefix(POD_UID_SELECTOR_PREFIX))
    }

    /// Whether the entry is a pod entry (has a `k8s:pod-uid` selector).
    pub fn is_pod_entry(&self) -> bool {
        self.pod_uid().is_some()
    }

    /// Whether the entry has the selector `type:value`.
    pub fn has_selector(&self, selector: &str) -> bool {
        self.selectors.contains(selector)
    }
}

impl fmt::Display for EntryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} parent={} selectors=[{}]",
            self.spiffe_id,
            self.parent_id,
            self.selectors
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        if !self.dns_names.is_empty() {
            write!(f, " dns=[{}]", self.dns_names.join(", "))?;
        }
        if self.x509_svid_ttl != 0 {
            write!(f, " ttl={}", self.x509_svid_ttl)?;
        }
        if self.jwt_svid_ttl != 0 {
            write!(f, " jwtTtl={}", self.jwt_svid_ttl)?;
        }
        if !self.federates_with.is_empty() {
            let tds: Vec<_> = self.federates_with.iter().cloned().collect();
            write!(f, " federatesWith=[{}]", tds.join(", "))?;
        }
        if self.admin {
            f.write_str(" admin")?;
        }
        if self.downstream {
            f.write_str(" downstream")?;
        }
        if self.store_svid {
            f.write_str(" storeSvid")?;
        }
        if !self.hint.is_empty() {
            write!(f, " hint={}", self.hint)?;
        }
        write!(f, " id={}", self.id)
    }
}

/// The entries, one per line, for failure messages.
pub fn describe(entries: &[EntryView]) -> String {
    if entries.is_empty() {
        return "  (no entries)".into();
    }
    entries
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every entry on the server, normalized and sorted.
pub async fn list(spire: &Spire) -> anyhow::Result<Vec<EntryView>> {
    let mut entries: Vec<EntryView> = spire
        .client()
        .list_entries()
        .await?
        .iter()
        .map(EntryView::from_api)
        .collect();
    entries.sort();
    Ok(entries)
}

/// Only the pod entries (those with a `k8s:pod-uid` selector) of `entries`.
pub fn pod_entries_of(entries: &[EntryView]) -> Vec<EntryView> {
    entries
        .iter()
        .filter(|e| e.is_pod_entry())
        .cloned()
        .collect()
}

/// Entry ID by SPIFFE ID, for the pod entries of `entries`.
pub fn pod_entry_ids(entries: &[EntryView]) -> std::collections::BTreeMap<String, String> {
    entries
        .iter()
        .filter(|e| e.is_pod_entry())
        .map(|e| (e.spiffe_id.clone(), e.id.clone()))
        .collect()
}

/// The pod entries on the server, sorted.
pub async fn pod_entries(spire: &Spire) -> anyhow::Result<Vec<EntryView>> {
    Ok(pod_entries_of(&list(spire).await?))
}

/// The pod entries for the pod with `uid`.
pub fn for_pod<'a>(entries: &'a [EntryView], uid: &str) -> Vec<&'a EntryView> {
    entries
        .iter()
        .filter(|e| e.pod_uid() == Some(uid))
        .collect()
}

/// Lists the server's entries until `predicate` holds for them, for up to
/// [`DEFAULT_TIMEOUT`]; returns the list it held for. On timeout the error names
/// `description` and shows the last list.
pub async fn wait_for(
    spire: &Spire,
    description: &str,
    predicate: impl FnMut(&[EntryView]) -> bool,
) -> anyhow::Result<Vec<EntryView>> {
    wait_for_within(spire, description, DEFAULT_TIMEOUT, predicate).await
}

/// [`wait_for`] with an explicit timeout.
pub async fn wait_for_within(
    spire: &Spire,
    description: &str,
    timeout: Duration,
    predicate: impl FnMut(&[EntryView]) -> bool,
) -> anyhow::Result<Vec<EntryView>> {
    // Shared through references so each probe future can use them; probes never overlap.
    let predicate = RefCell::new(predicate);
    let last: RefCell<Option<Vec<EntryView>>> = RefCell::new(None);
    let (predicate, last_ref) = (&predicate, &last);
    let result = wait::until(description, timeout, POLL, || async move {
        let entries = list(spire).await?;
        let holds = (predicate.borrow_mut())(&entries);
        let found = holds.then(|| entries.clone());
        *last_ref.borrow_mut() = Some(entries);
        Ok(found)
    })
    .await;
    result.map_err(|e| {
        let shown = match &*last.borrow() {
            Some(entries) => describe(entries),
            None => "  (the entries could not be listed)".into(),
        };
        e.context(format!(
            "waiting for entries: {description}; entries on the server at the end:\n{shown}"
        ))
    })
}

/// Checks that `predicate` keeps holding for `duration` (listing every 250 ms): for
/// "nothing happens" assertions. Fails at the first list it does not hold for, showing
/// that list; returns the last list otherwise.
pub async fn holds_for(
    spire: &Spire,
    description: &str,
    duration: Duration,
    mut predicate: impl FnMut(&[EntryView]) -> bool,
) -> anyhow::Result<Vec<EntryView>> {
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        let entries = list(spire).await?;
        if !predicate(&entries) {
            anyhow::bail!(
                "expected to hold for {duration:?}, but did not: {description}; entries:\n{}",
                describe(&entries)
            );
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(entries);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_entry() -> types::Entry {
        types::Entry {
            id: "e1".into(),
            spiffe_id: Some(types::Spiffeid {
                trust_domain: "td.test".into(),
                path: "/ns/a/sa/b".into(),
            }),
            parent_id: Some(types::Spiffeid {
                trust_domain: "td.test".into(),
                path: "/agent".into(),
            }),
            selectors: vec![
                types::Selector {
                    r#type: "k8s".into(),
                    value: "pod-uid:1234".into(),
                },
                types::Selector {
                    r#type: "k8s".into(),
                    value: "ns:a".into(),
                },
            ],
            dns_names: vec!["b".into(), "a".into()],
            federates_with: vec!["spiffe://other.test".into()],
            hint: "h".into(),
            ..Default::default()
        }
    }

    #[test]
    fn normalizes_selectors_and_trust_domains_keeps_dns_order() {
        let view = EntryView::from_api(&api_entry());
        assert_eq!(view.spiffe_id, "spiffe://td.test/ns/a/sa/b");
        assert_eq!(view.parent_id, "spiffe://td.test/agent");
        assert_eq!(
            view.selectors.iter().collect::<Vec<_>>(),
            ["k8s:ns:a", "k8s:pod-uid:1234"]
        );
        assert_eq!(view.dns_names, ["b", "a"]);
        assert_eq!(
            view.federates_with.iter().collect::<Vec<_>>(),
            ["other.test"]
        );
        assert_eq!(view.pod_uid(), Some("1234"));
        assert!(view.is_pod_entry());
    }

    #[test]
    fn fields_ignore_the_id() {
        let a = EntryView::from_api(&api_entry());
        let mut b = a.clone();
        b.id = "e2".into();
        assert_ne!(a, b);
        assert_eq!(a.fields(), b.fields());
    }

    #[test]
    fn entries_without_pod_uid_are_not_pod_entries() {
        let mut entry = api_entry();
        entry.selectors.remove(0);
        let view = EntryView::from_api(&entry);
        assert!(!view.is_pod_entry());
        assert!(pod_entries_of(&[view]).is_empty());
    }
}
