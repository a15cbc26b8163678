//! The mirror of the entries on the server.
//!
//! At 30000 entries the mirror is the operator's largest structure after the desired
//! state, so it is laid out densely: the entries sit in one slab of [`Chains`] by key,
//! and the index by ID holds 4-byte slot numbers, hashed from the ID each slot holds
//! (each entry's ID is stored once).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use super::chains::Chains;
use super::diff::ActualEntry;
use super::ownership::{Class, Ownership};
use super::state::{Desired, KeyId, KeySet};
use crate::spire::EntrySpec;

/// The server's entries as last listed and then updated from our own writes. Entries of
/// every class are kept, join-token ones included: they are never touched, but a
/// desired entry with the same key must be seen as a conflict, neither created (SPIRE
/// would answer AlreadyExists, forever) nor adopted.
///
/// SPIRE refuses two entries with one key, so a key has one entry except for a moment
/// (an entry recreated before a listing saw the old one go) or on a server that lets
/// duplicates in.
#[derive(Debug, Default)]
pub struct Mirror {
    /// The entries by key, in the order they came in.
    entries: Chains<ActualEntry>,
    /// Slots by the ID of their entry, hashed with `ids`.
    by_id: HashTable<u32>,
    ids: RandomState,
    /// Counts full listings: entries a listing returns are marked with it, and those it
    /// did not return are gone from the server when it completes.
    listing: u32,
}

impl Mirror {
    /// Builds the mirror from a full listing.
    pub fn from_listing(
        entries: Vec<(String, EntrySpec)>,
        ownership: &Ownership,
        desired: &Desired,
    ) -> Self {
        let mut mirror = Self::default();
        mirror.begin_listing();
        for (id, spec) in entries {
            mirror.listed(id, spec, ownership, desired);
        }
        mirror.end_listing();
        mirror
    }

    /// Starts a full listing, folded in place as its pages arrive: each entry returned
    /// goes through [`Mirror::listed`], then [`Mirror::end_listing`] drops the entries it
    /// did not return. The mirror is never held twice, nor the listing whole (at 30000
    /// entries those cost about 9 MiB at the peak). A listing that fails half way leaves
    /// the entries it returned refreshed and the others as they were.
    pub fn begin_listing(&mut self) {
        self.listing = self.listing.wrapping_add(1);
    }

    /// Folds in one entry of the current listing. An entry equal to its desired
    /// declaration shares that declaration's memory.
    pub fn listed(
        &mut self,
        id: String,
        spec: EntrySpec,
        ownership: &Ownership,
        desired: &Desired,
    ) {
        let class = ownership.classify(&id, &spec);
        let key = KeyId::of(&spec.key);
        let declared = desired.shared(&key).filter(|declared| ***declared == spec);
        let listing = self.listing;
        if let Some(at) = self.slot_of(&id)
            && self.entries.key(at) == Some(&key)
            && let Some(entry) = self.entries.value_mut(at)
            && *entry.spec == spec
        {
            entry.class = class;
            entry.listing = listing;
            if let Some(declared) = declared {
                entry.spec = declared.clone();
            }
            return;
        }
        let spec = declared.cloned().unwrap_or_else(|| Arc::new(spec));
        let mut entry = ActualEntry::new(id, spec, class);
        entry.listing = listing;
        self.insert_keyed(key, entry);
    }

    /// Completes the current listing: entries it did not return are gone.
    pub fn end_listing(&mut self) {
        let unlisted: Vec<String> = self
            .all()
            .filter(|entry| entry.listing != self.listing)
            .map(|entry| entry.id.clone())
            .collect();
        for id in unlisted {
            self.remove(&id);
        }
    }

    /// Makes room for `additional` more entries at once (a cold start records tens of
    /// thousands of creates in one go: growing step by step holds each index twice
    /// while it is copied).
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
        let (entries, ids) = (&self.entries, &self.ids);
        self.by_id
            .reserve(additional, |&at| ids.hash_one(id_in(entries, at)));
    }

    /// Adds or replaces an entry (by ID).
    pub fn insert(&mut self, mut entry: ActualEntry) {
        entry.listing = self.listing;
        self.insert_keyed(KeyId::of(&entry.spec.key), entry);
    }

    fn insert_keyed(&mut self, key: KeyId, entry: ActualEntry) {
        self.remove(&entry.id);
        let hash = self.ids.hash_one(entry.id.as_str());
        let at = self.entries.insert(key, entry, |_| false);
        let (entries, ids) = (&self.entries, &self.ids);
        self.by_id
            .insert_unique(hash, at, |&at| ids.hash_one(id_in(entries, at)));
    }

    /// The slot holding the entry with `id`.
    fn slot_of(&self, id: &str) -> Option<u32> {
        let entries = &self.entries;
        self.by_id
            .find(self.ids.hash_one(id), |&at| id_in(entries, at) == id)
            .copied()
    }

    /// Removes an entry by ID, returning it.
    pub fn remove(&mut self, id: &str) -> Option<ActualEntry> {
        let entries = &self.entries;
        let at = self
            .by_id
            .find_entry(self.ids.hash_one(id), |&at| id_in(entries, at) == id)
            .ok()?
            .remove()
            .0;
        self.entries.remove(at)
    }

    /// Marks an entry owned (after adoption).
    pub fn set_owned(&mut self, id: &str) {
        if let Some(entry) = self.slot_of(id).and_then(|at| self.entries.value_mut(at)) {
            entry.class = Class::Owned;
        }
    }

    /// Replaces the fields of an entry after an update.
    pub fn update(&mut self, id: &str, spec: Arc<EntrySpec>) {
        if let Some(mut entry) = self.remove(id) {
            entry.spec = spec;
            self.insert(entry);
        }
    }

    /// The entry with `id`.
    pub fn get(&self, id: &str) -> Option<&ActualEntry> {
        self.entries.value(self.slot_of(id)?)
    }

    /// (owned, foreign) entry counts.
    pub fn counts(&self) -> (usize, usize) {
        let owned = self.all().filter(|e| e.class == Class::Owned).count();
        (owned, self.entries.value_count() - owned)
    }

    /// Whether the server holds an entry with `key` that serves it as desired.
    pub fn has(&self, key: &KeyId) -> bool {
        self.entries.contains_key(key)
    }

    /// The entries with each of `keys`.
    pub(super) fn subset<'a>(&'a self, keys: &'a KeySet) -> impl Iterator<Item = &'a ActualEntry> {
        keys.iter().flat_map(|key| self.with_key(key))
    }

    fn with_key(&self, key: &KeyId) -> impl Iterator<Item = &ActualEntry> {
        self.entries.with_key(key).map(|(_, entry)| entry)
    }

    /// Every entry, those sharing a key in the order [`Mirror::subset`] gives them.
    pub(super) fn all(&self) -> impl Iterator<Item = &ActualEntry> {
        self.entries.values()
    }
}

/// The ID of the entry in slot `at` (empty for an empty slot, which no index points to).
fn id_in(entries: &Chains<ActualEntry>, at: u32) -> &str {
    entries.value(at).map_or("", |entry| entry.id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spire::EntrySpec;

    fn spec(path: &str) -> EntrySpec {
        EntrySpec::keyed(
            &format!("spiffe://td{path}"),
            "spiffe://td/spire/agent/k8s_psat/c/n",
            ["k8s:ns:a".to_string()],
        )
    }

    fn ids_with(mirror: &Mirror, path: &str) -> Vec<String> {
        let mut ids: Vec<String> = mirror
            .with_key(&KeyId::of(&spec(path).key))
            .map(|e| e.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Several entries with one key (a server that let a duplicate in) are all found by
    /// key and by ID, and removing any of them, first, middle or last in the chain,
    /// leaves the others findable; freed slots are reused.
    #[test]
    fn entries_sharing_a_key_stay_findable_as_any_of_them_goes() {
        let three = || {
            let mut mirror = Mirror::default();
            for id in ["a", "b", "c"] {
                let entry = ActualEntry::new(id.into(), Arc::new(spec("/x")), Class::Foreign);
                mirror.insert(entry);
            }
            mirror.insert(ActualEntry::new(
                "d".into(),
                Arc::new(spec("/y")),
                Class::Owned,
            ));
            assert_eq!(ids_with(&mirror, "/x"), ["a", "b", "c"]);
            assert_eq!(mirror.counts(), (1, 3));
            assert_eq!(mirror.all().count(), 4);
            mirror
        };
        // The middle, the last and the first; then the first each time.
        let orders = [
            [("b", vec!["a", "c"]), ("c", vec!["a"]), ("a", vec![])],
            [("a", vec!["b", "c"]), ("b", vec!["c"]), ("c", vec![])],
        ];
        let mut mirror = Mirror::default();
        for order in orders {
            mirror = three();
            for (gone, left) in order {
                assert_eq!(mirror.remove(gone).unwrap().id, gone);
                assert_eq!(ids_with(&mirror, "/x"), left);
                assert_eq!(mirror.all().count(), left.len() + 1);
                assert!(mirror.get(gone).is_none());
                for id in &left {
                    assert_eq!(mirror.get(id).unwrap().id, *id);
                }
            }
        }
        assert!(!mirror.has(&KeyId::of(&spec("/x").key)));
        assert!(mirror.remove("a").is_none());
        assert_eq!(ids_with(&mirror, "/y"), ["d"]);

        // Re-keying an entry (an update changing its SPIFFE ID) moves it between chains.
        mirror.update("d", Arc::new(spec("/x")));
        assert_eq!(ids_with(&mirror, "/x"), ["d"]);
        assert!(!mirror.has(&KeyId::of(&spec("/y").key)));
        mirror.set_owned("d");
        assert_eq!(mirror.get("d").unwrap().class, Class::Owned);
        mirror.insert(ActualEntry::new(
            "e".into(),
            Arc::new(spec("/z")),
            Class::Owned,
        ));
        assert_eq!(mirror.entries.slots(), 4, "freed slots are reused");
        assert_eq!(mirror.all().count(), 2);
    }

    /// A listing folded into the existing mirror leaves exactly what it returned: entries
    /// it did not return are gone, changed ones replaced, unchanged ones kept, classes
    /// redone; a listing that fails half way drops nothing, and the next complete one
    /// still drops what neither returned.
    #[test]
    fn a_listing_folded_in_place_leaves_exactly_what_it_returned() {
        let ownership = Ownership::new(None, "c", None);
        let desired = Desired::default();
        let ours = |n: u32| format!("spire-operator.c.{n}");
        let mut mirror = Mirror::from_listing(
            vec![
                (ours(1), spec("/a")),
                (ours(2), spec("/b")),
                ("scm-made".into(), spec("/c")),
            ],
            &ownership,
            &desired,
        );
        // Our own write between listings.
        mirror.insert(ActualEntry::new(
            ours(4),
            Arc::new(spec("/d")),
            Class::Owned,
        ));
        let ids = |mirror: &Mirror| {
            let mut ids: Vec<String> = mirror.all().map(|e| e.id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&mirror).len(), 4);

        // Half a listing: entry 1 changed, then the call fails.
        let mut changed = spec("/a");
        changed.hint = "edited".into();
        mirror.begin_listing();
        mirror.listed(ours(1), changed, &ownership, &desired);
        assert_eq!(ids(&mirror).len(), 4);
        assert_eq!(mirror.get(&ours(1)).unwrap().spec.hint, "edited");

        // A complete listing without entries 1 and 4; entry 2's key changed; a new
        // foreign entry.
        mirror.begin_listing();
        for (id, spec) in [
            (ours(2), spec("/b-renamed")),
            ("scm-made".into(), spec("/c")),
            ("other.x".into(), spec("/e")),
        ] {
            mirror.listed(id, spec, &ownership, &desired);
        }
        mirror.end_listing();
        assert_eq!(ids(&mirror), ["other.x".into(), "scm-made".into(), ours(2)]);
        assert_eq!(mirror.by_id.len(), 3);
        assert!(!mirror.has(&KeyId::of(&spec("/b").key)));
        assert!(mirror.has(&KeyId::of(&spec("/b-renamed").key)));
        assert_eq!(mirror.get("other.x").unwrap().class, Class::Foreign);
        assert_eq!(mirror.get("scm-made").unwrap().class, Class::Adoptable);
        assert_eq!(mirror.counts(), (1, 2));
    }
}
