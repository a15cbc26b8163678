//! Which entries on the server belong to this operator.
//!
//! spire-controller-manager, without `entryIDPrefix`, treats every entry on the server as
//! its own and deletes whatever it does not declare. Here an entry is owned only if
//! - its ID carries this operator's prefix (`entryIDPrefix`, or by default
//!   `spire-operator.<clusterName>.`) followed by a dot-free suffix, so a prefix never
//!   claims a longer one's entries (`a.` does not own `a.b.<uuid>`);
//! - or it was adopted (see below). Adopted IDs are remembered in a ConfigMap so that a
//!   restart does not forget them;
//! - or its ID starts with `entryIDPrefixCleanup` (plain prefix match, as
//!   spire-controller-manager: `foo.` covers `foo.bar.<uuid>`; `""` means IDs without a
//!   dot): such entries are deleted unless a desired entry has their key, in which case
//!   they are adopted.
//!
//! Adoption takes over, in place, an existing entry with the key of a desired one, so a
//! migration from spire-controller-manager re-issues no SVID. Only entries
//! spire-controller-manager itself would have owned under the same config are adoptable:
//! with `entryIDPrefix` configured, IDs starting with it (plain prefix match); without it
//! (spire-controller-manager then claims the whole server), IDs without a dot, which is
//! what it and the SPIRE CLI create, but never a dotted ID (another cluster's or tool's
//! prefix). Any other entry with a desired key is a conflict: reported, left alone, and
//! not duplicated (SPIRE refuses two entries with one key).
//!
//! Join-token agent entries are never touched or adopted.

use std::collections::BTreeSet;

use crate::spire::EntrySpec;

/// How an entry on the server is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Ours: updated and deleted as desired state says.
    Owned,
    /// Not ours yet: adopted if a desired entry has its key, otherwise left alone.
    Adoptable,
    /// Not ours and never adopted: left alone; a desired entry with its key is a conflict.
    Foreign,
    /// A join-token agent entry: never touched, never adopted.
    JoinToken,
}

/// The ownership rules for one operator instance.
#[derive(Debug, Clone)]
pub struct Ownership {
    prefix: String,
    /// Whether `entryIDPrefix` was configured (else spire-controller-manager would have
    /// claimed every entry).
    prefix_configured: bool,
    cleanup: Option<String>,
    adopted: BTreeSet<String>,
}

impl Ownership {
    /// `prefix` is the configured `entryIDPrefix` (with its trailing dot) or `None` for
    /// the default; `cleanup` is `entryIDPrefixCleanup` as configured.
    pub fn new(prefix: Option<&str>, cluster_name: &str, cleanup: Option<&str>) -> Self {
        Self {
            prefix: prefix
                .map(str::to_owned)
                .unwrap_or_else(|| format!("spire-operator.{cluster_name}.")),
            prefix_configured: prefix.is_some(),
            cleanup: cleanup.map(str::to_owned),
            adopted: BTreeSet::new(),
        }
    }

    /// A fresh ID for an entry this operator creates.
    pub fn new_id(&self) -> String {
        format!("{}{}", self.prefix, uuid::Uuid::new_v4())
    }

    /// Classifies an entry on the server.
    pub fn classify(&self, id: &str, entry: &EntrySpec) -> Class {
        if is_join_token_entry(entry) {
            return Class::JoinToken;
        }
        let cleanup = match self.cleanup.as_deref() {
            Some("") => !id.contains('.'),
            Some(prefix) => id.starts_with(prefix),
            None => false,
        };
        if has_prefix(id, &self.prefix) || self.adopted.contains(id) || cleanup {
            Class::Owned
        } else if self.would_scm_own(id) {
            Class::Adoptable
        } else {
            Class::Foreign
        }
    }

    /// Whether spire-controller-manager, run with the same config, owned entry `id`.
    fn would_scm_own(&self, id: &str) -> bool {
        if self.prefix_configured {
            id.starts_with(&self.prefix)
        } else {
            !id.contains('.')
        }
    }

    /// Records that `id` was adopted; true if it was not already known.
    pub fn adopt(&mut self, id: &str) -> bool {
        !has_prefix(id, &self.prefix) && self.adopted.insert(id.to_owned())
    }

    /// Forgets an adopted entry that was deleted; true if it was adopted.
    pub fn forget(&mut self, id: &str) -> bool {
        self.adopted.remove(id)
    }

    /// The adopted IDs, sorted (what the ConfigMap stores).
    pub fn adopted(&self) -> &BTreeSet<String> {
        &self.adopted
    }

    /// Replaces the adopted set (loaded from the ConfigMap at start).
    pub fn set_adopted(&mut self, ids: BTreeSet<String>) {
        self.adopted = ids;
    }
}

fn has_prefix(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('.'))
}

/// Entries SPIRE made for agents attested with a join token (parent
/// `/spire/agent/join_token/...` and a `spiffe_id` selector), as spire-controller-manager
/// recognises them.
fn is_join_token_entry(entry: &EntrySpec) -> bool {
    entry
        .key
        .parent_id
        .path()
        .starts_with("/spire/agent/join_token/")
        && entry
            .key
            .selectors
            .iter()
            .any(|s| s.starts_with("spiffe_id:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: &str, selectors: &[&str]) -> EntrySpec {
        EntrySpec::keyed(
            "spiffe://td/w",
            parent,
            selectors.iter().map(|s| (*s).to_owned()),
        )
    }

    #[test]
    fn classifies_entries() {
        let pod = entry("spiffe://td/spire/agent/k8s_psat/c/n", &["k8s:pod-uid:1"]);
        let join = entry(
            "spiffe://td/spire/agent/join_token/abc",
            &["spiffe_id:spiffe://td/spire/agent/join_token/abc"],
        );
        let default = Ownership::new(None, "prod", None);
        let prefixed = Ownership::new(Some("team-a."), "prod", None);
        let cleanup_unprefixed = Ownership::new(Some("team-a."), "prod", Some(""));
        let cleanup_nested = Ownership::new(Some("team-a."), "prod", Some("foo."));
        let cases = [
            (&default, "spire-operator.prod.0f1e", &pod, Class::Owned),
            (
                &default,
                "spire-operator.prod.eu.0f1e",
                &pod,
                Class::Foreign,
            ),
            (&default, "spire-operator.other.0f1e", &pod, Class::Foreign),
            // Without entryIDPrefix, spire-controller-manager claimed dot-free IDs.
            (&default, "0f1e-uuid-from-scm", &pod, Class::Adoptable),
            (&default, "other-cluster.0f1e", &pod, Class::Foreign),
            (
                &default,
                "spire-operator.prod.0f1e",
                &join,
                Class::JoinToken,
            ),
            (&default, "0f1e", &join, Class::JoinToken),
            (&prefixed, "team-a.0f1e", &pod, Class::Owned),
            // spire-controller-manager's plain prefix match covers nested prefixes.
            (&prefixed, "team-a.eu.0f1e", &pod, Class::Adoptable),
            (&prefixed, "team-b.0f1e", &pod, Class::Foreign),
            (&prefixed, "0f1e-cli-made", &pod, Class::Foreign),
            (
                &cleanup_unprefixed,
                "0f1e-uuid-from-scm",
                &pod,
                Class::Owned,
            ),
            (&cleanup_unprefixed, "team-b.0f1e", &pod, Class::Foreign),
            (&cleanup_nested, "foo.bar.0f1e", &pod, Class::Owned),
            (&cleanup_nested, "foo.0f1e", &pod, Class::Owned),
            (&cleanup_nested, "food.0f1e", &pod, Class::Foreign),
        ];
        for (ownership, id, entry, want) in cases {
            assert_eq!(ownership.classify(id, entry), want, "{id}");
        }
    }

    #[test]
    fn adopted_entries_are_owned_until_forgotten() {
        let pod = entry("spiffe://td/spire/agent/k8s_psat/c/n", &["k8s:pod-uid:1"]);
        let mut ownership = Ownership::new(None, "prod", None);
        assert!(ownership.adopt("scm-1"));
        assert!(!ownership.adopt("scm-1"));
        assert!(
            !ownership.adopt(&ownership.new_id()),
            "own IDs need no record"
        );
        assert_eq!(ownership.classify("scm-1", &pod), Class::Owned);
        assert!(ownership.forget("scm-1"));
        assert_eq!(ownership.classify("scm-1", &pod), Class::Adoptable);
    }

    #[test]
    fn new_ids_are_owned() {
        let pod = entry("spiffe://td/spire/agent/k8s_psat/c/n", &["k8s:pod-uid:1"]);
        let ownership = Ownership::new(None, "prod", None);
        assert_eq!(ownership.classify(&ownership.new_id(), &pod), Class::Owned);
    }
}
