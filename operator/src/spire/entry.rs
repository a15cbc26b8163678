//! Registration entries as the operator compares them.

use std::collections::BTreeSet;

use super::api::types;
use super::{SpiffeId, SpiffeIdError};

/// What identifies an entry to SPIRE: two entries with the same key cannot coexist,
/// and changing any part of it means a different entry (delete + create).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    /// The SPIFFE ID issued.
    pub spiffe_id: SpiffeId,
    /// The agent (or other parent) the entry is scoped to.
    pub parent_id: SpiffeId,
    /// `type:value` selectors, as a set.
    pub selectors: Selectors,
}

/// A set of `type:value` selectors: sorted and de-duplicated, stored in one exact-size
/// allocation (a `BTreeSet` would allocate a node for eleven per entry key, and the
/// operator holds several keys per entry at 10k+ entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selectors(Box<[String]>);

impl Selectors {
    /// The selectors in order.
    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<String> for Selectors {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        let mut v: Vec<String> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v.into_boxed_slice())
    }
}

impl<const N: usize> From<[String; N]> for Selectors {
    fn from(selectors: [String; N]) -> Self {
        selectors.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Selectors {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Everything about an entry the operator decides, in comparable form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySpec {
    /// SPIFFE ID, parent and selectors.
    pub key: EntryKey,
    /// X.509-SVID TTL in seconds; 0 is the server default.
    pub x509_svid_ttl: i32,
    /// JWT-SVID TTL in seconds; 0 is the server default.
    pub jwt_svid_ttl: i32,
    /// Trust domains whose bundles the workload also gets, as a set.
    pub federates_with: BTreeSet<String>,
    /// Whether the workload may use the server's admin API.
    pub admin: bool,
    /// Whether the workload is a downstream SPIRE server.
    pub downstream: bool,
    /// DNS SANs, in order (the first becomes the certificate's common name).
    pub dns_names: Vec<String>,
    /// Hint for workloads holding several SVIDs.
    pub hint: String,
    /// Whether the agent stores the SVID via its SVIDStore plugins.
    pub store_svid: bool,
}

impl EntrySpec {
    /// An entry with this key and every other field at the server's default (for tests).
    #[cfg(test)]
    pub fn keyed(
        spiffe_id: &str,
        parent_id: &str,
        selectors: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            key: EntryKey {
                spiffe_id: spiffe_id.parse().expect("a SPIFFE ID"),
                parent_id: parent_id.parse().expect("a SPIFFE ID"),
                selectors: selectors.into_iter().collect(),
            },
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: Default::default(),
            admin: false,
            downstream: false,
            dns_names: vec![],
            hint: String::new(),
            store_svid: false,
        }
    }

    /// Reads an entry from the SPIRE API, returning its ID too; on error, the ID of the
    /// entry that could not be read.
    pub fn from_api(entry: types::Entry) -> Result<(String, Self), (String, SpiffeIdError)> {
        let id_of = |id: &Option<types::Spiffeid>| match id {
            Some(id) => SpiffeId::from_api(id),
            None => SpiffeId::from_api(&types::Spiffeid::default()),
        };
        let ids = id_of(&entry.spiffe_id).and_then(|s| Ok((s, id_of(&entry.parent_id)?)));
        let (spiffe_id, parent_id) = match ids {
            Ok(ids) => ids,
            Err(e) => return Err((entry.id, e)),
        };
        let spec = Self {
            key: EntryKey {
                spiffe_id,
                parent_id,
                selectors: entry
                    .selectors
                    .iter()
                    .map(|s| format!("{}:{}", s.r#type, s.value))
                    .collect(),
            },
            x509_svid_ttl: entry.x509_svid_ttl,
            jwt_svid_ttl: entry.jwt_svid_ttl,
            federates_with: entry.federates_with.into_iter().collect(),
            admin: entry.admin,
            downstream: entry.downstream,
            dns_names: entry.dns_names,
            hint: entry.hint,
            store_svid: entry.store_svid,
        };
        Ok((entry.id, spec))
    }

    /// The SPIRE API form; `id` is empty for a create.
    pub fn to_api(&self, id: String) -> types::Entry {
        types::Entry {
            id,
            spiffe_id: Some(self.key.spiffe_id.to_api()),
            parent_id: Some(self.key.parent_id.to_api()),
            selectors: self
                .key
                .selectors
                .iter()
                .map(|s| {
                    // Split on the first ':' only: values may contain ':' (k8s:pod-uid:...).
                    let (t, v) = s.split_once(':').unwrap_or((s, ""));
                    types::Selector {
                        r#type: t.to_owned(),
                        value: v.to_owned(),
                    }
                })
                .collect(),
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            federates_with: self.federates_with.iter().cloned().collect(),
            admin: self.admin,
            downstream: self.downstream,
            dns_names: self.dns_names.clone(),
            hint: self.hint.clone(),
            store_svid: self.store_svid,
            ..Default::default()
        }
    }

    /// Whether the fields selected by `mask` (other than the key) differ.
    pub fn differs(&self, other: &Self, mask: &types::EntryMask) -> bool {
        self.differences(other, mask) != types::EntryMask::default()
    }

    /// The fields selected by `mask` (other than the key) that differ: what an update
    /// must send. SPIRE rewrites whatever the mask names (DNS names and federation
    /// rows are deleted and inserted again), so sending less is less work for it.
    pub fn differences(&self, other: &Self, mask: &types::EntryMask) -> types::EntryMask {
        types::EntryMask {
            x509_svid_ttl: mask.x509_svid_ttl && self.x509_svid_ttl != other.x509_svid_ttl,
            jwt_svid_ttl: mask.jwt_svid_ttl && self.jwt_svid_ttl != other.jwt_svid_ttl,
            federates_with: mask.federates_with && self.federates_with != other.federates_with,
            admin: mask.admin && self.admin != other.admin,
            downstream: mask.downstream && self.downstream != other.downstream,
            dns_names: mask.dns_names && !same_set(&self.dns_names, &other.dns_names),
            hint: mask.hint && self.hint != other.hint,
            store_svid: mask.store_svid && self.store_svid != other.store_svid,
            ..Default::default()
        }
    }
}

/// Whether two lists hold the same names, in any order (spire-controller-manager compares
/// DNS names as sets; an order change alone rewrites nothing).
fn same_set(a: &[String], b: &[String]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// The mask of every non-key field the operator manages: what it compares and updates
/// in place. Fields an older server turns out not to support are cleared from it.
pub fn managed_fields() -> types::EntryMask {
    types::EntryMask {
        x509_svid_ttl: true,
        jwt_svid_ttl: true,
        federates_with: true,
        admin: true,
        downstream: true,
        dns_names: true,
        hint: true,
        store_svid: true,
        ..Default::default()
    }
}
