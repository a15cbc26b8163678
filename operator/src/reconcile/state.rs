//! The desired entries, indexed by the object that declares them, and the mirror of the
//! entries on the server. Both change incrementally; a pass plans only the keys that
//! changed since the last one.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, LazyLock};

use super::chains::Chains;
use super::diff::{Plan, plan};
pub use super::mirror::Mirror;
use super::pod_cache::PodKey;
use crate::render::Age;
use crate::spire::api::types::EntryMask;
use crate::spire::{EntryKey, EntrySpec};

/// A 128-bit digest of an [`EntryKey`]: what the indexes hold instead of copies of the
/// key (each copy is several heap strings, and there are several per entry).
/// spire-controller-manager keys its state the same way (SHA-256); a collision among
/// 10^6 keys has a probability around 10^-27.
///
/// Two `u64` halves rather than a `u128`: aligned to 8 bytes, not 16, the indexes'
/// slots holding one carry no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyId([u64; 2]);

impl std::hash::Hash for KeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // A digest already: its two halves folded are as good a hash as any.
        state.write_u64(self.0[0] ^ self.0[1]);
    }
}

impl KeyId {
    /// The digest of `key`.
    pub fn of(key: &EntryKey) -> Self {
        use std::hash::Hash;
        // XXH3's 128-bit digest, seeded once per process: stable within the process,
        // which is all an in-memory index needs; a collision is as likely as between
        // random 128-bit values, and the seed keeps names chosen to collide in the maps
        // below from being computed in advance. Twice SipHash (64 bits each) cost 5% of
        // a cold start's CPU.
        static SEED: LazyLock<u64> = LazyLock::new(|| fastrand::u64(..));
        let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(*SEED);
        key.hash(&mut hasher);
        let digest = hasher.digest128();
        Self([digest as u64, (digest >> 64) as u64])
    }
}

/// A map keyed by [`KeyId`]: the key is a digest already, so the map hashes it no
/// further.
pub type KeyMap<V> = HashMap<KeyId, V, KeyIdHashing>;

/// A set of [`KeyId`]s (see [`KeyMap`]).
pub type KeySet = HashSet<KeyId, KeyIdHashing>;

/// Hashes a [`KeyId`] to its own low bits (see [`KeyMap`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyIdHashing;

impl BuildHasher for KeyIdHashing {
    type Hasher = KeyIdHasher;

    fn build_hasher(&self) -> KeyIdHasher {
        KeyIdHasher(0)
    }
}

/// See [`KeyIdHashing`].
#[derive(Debug)]
pub struct KeyIdHasher(u64);

impl Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, folded: u64) {
        self.0 ^= folded;
    }

    /// Only [`KeyId`] (one `u64`) is hashed with this; anything else still hashes
    /// correctly (FNV-1a), if slowly.
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The object an entry is declared by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A ClusterStaticEntry.
    Static {
        /// Its age.
        age: Age,
        /// Its name.
        name: String,
    },
    /// A pod, by namespace and name (the key of its records).
    Pod(PodKey),
    /// A pod's annotation identity (its own annotation or its ServiceAccount's), by the
    /// pod's namespace and name.
    Annotation {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// One declaration of an entry: the age of the resource that owns it (the
/// ClusterStaticEntry, or the ClusterSPIFFEID that rendered a pod's entry), the
/// declaring object, and the entry.
type Claim = (Age, Arc<Source>, Arc<EntrySpec>);

/// Desired entries by key and by declaring object.
///
/// When several objects declare one key, the claim whose owning resource is oldest wins
/// (creation time, then UID), whatever its kind: spire-controller-manager sorts a
/// ClusterStaticEntry and a ClusterSPIFFEID the same way. The others are masked.
#[derive(Debug, Default)]
pub struct Desired {
    /// Declarers of each key, oldest owner first; almost always exactly one.
    by_key: Chains<Claim>,
    /// Keyed by the source its claims share.
    by_source: HashMap<Arc<Source>, Vec<KeyId>>,
}

impl Desired {
    /// Replaces what `source` declares; keys whose desired state may change are added
    /// to `touched`. Returns false, touching nothing, when `source` already declares
    /// exactly `entries`.
    pub fn set(
        &mut self,
        source: Source,
        entries: Vec<(Age, EntrySpec)>,
        touched: &mut KeySet,
    ) -> bool {
        let new_keys: Vec<KeyId> = entries.iter().map(|(_, e)| KeyId::of(&e.key)).collect();
        if self.declares_exactly(&source, &new_keys, &entries) {
            return false;
        }
        if let Some(old_keys) = self.by_source.remove(&source) {
            for key in old_keys {
                while let Some(at) = self.claim_of(&source, &key) {
                    self.by_key.remove(at);
                }
                touched.insert(key);
            }
        }
        let source = Arc::new(source);
        for ((age, entry), id) in entries.into_iter().zip(&new_keys) {
            touched.insert(*id);
            let order = age.clone();
            // Before the first claim that does not sort before it: oldest owner first.
            let before = |(a, s, _): &Claim| (a, &**s) >= (&order, &*source);
            self.by_key
                .insert(*id, (age, source.clone(), Arc::new(entry)), before);
        }
        if !new_keys.is_empty() {
            self.by_source.insert(source, new_keys);
        }
        true
    }

    /// The slot of `source`'s claim on `key`.
    fn claim_of(&self, source: &Source, key: &KeyId) -> Option<u32> {
        self.by_key
            .with_key(key)
            .find(|(_, (_, s, _))| **s == *source)
            .map(|(at, _)| at)
    }

    fn declares_exactly(
        &self,
        source: &Source,
        keys: &[KeyId],
        entries: &[(Age, EntrySpec)],
    ) -> bool {
        let old = self.keys_of(source);
        old == keys
            && keys.iter().zip(entries).all(|(key, (age, entry))| {
                self.claim_of(source, key)
                    .and_then(|at| self.by_key.value(at))
                    .is_some_and(|(a, _, declared)| a == age && **declared == *entry)
            })
    }

    /// The winning declaration of `key`.
    pub fn get(&self, key: &KeyId) -> Option<&EntrySpec> {
        self.shared(key).map(Arc::as_ref)
    }

    /// The winning declaration of `key`, to share.
    pub(super) fn shared(&self, key: &KeyId) -> Option<&Arc<EntrySpec>> {
        self.by_key.first(key).map(|(_, _, e)| e)
    }

    /// Whether `source` wins `key` (false when another declares it first).
    pub fn wins(&self, source: &Source, key: &KeyId) -> bool {
        self.by_key
            .first(key)
            .is_some_and(|(_, s, _)| **s == *source)
    }

    /// Every declaring object.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.by_source.keys().map(Arc::as_ref)
    }

    /// The keys `source` declares.
    pub fn keys_of(&self, source: &Source) -> &[KeyId] {
        self.by_source
            .get(source)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The declarers of `key`.
    pub fn sources_of(&self, key: &KeyId) -> impl Iterator<Item = &Source> {
        self.by_key.with_key(key).map(|(_, (_, s, _))| s.as_ref())
    }

    /// How many distinct entries are desired.
    pub fn len(&self) -> usize {
        self.by_key.key_count()
    }

    /// Whether nothing is desired.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn subset<'a>(
        &'a self,
        keys: &'a KeySet,
    ) -> impl Iterator<Item = (&'a KeyId, &'a Arc<EntrySpec>)> {
        keys.iter().filter_map(|k| self.shared(k).map(|e| (k, e)))
    }

    fn all(&self) -> impl Iterator<Item = (&KeyId, &Arc<EntrySpec>)> {
        self.by_key.firsts().map(|(k, (_, _, e))| (k, e))
    }
}

/// Plans the writes for `touched` keys only.
pub fn plan_keys(desired: &Desired, mirror: &Mirror, touched: &KeySet, mask: &EntryMask) -> Plan {
    plan(
        desired.subset(touched).map(|(_, e)| (&e.key, e)),
        mirror.subset(touched),
        mask,
    )
}

/// Plans the writes for every key (after a full listing).
pub fn plan_all(desired: &Desired, mirror: &Mirror, mask: &EntryMask) -> Plan {
    plan(desired.all().map(|(_, e)| (&e.key, e)), mirror.all(), mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::ownership::Ownership;
    use crate::spire::managed_fields;

    fn spec(path: &str, uid: &str) -> EntrySpec {
        EntrySpec::keyed(
            &format!("spiffe://td{path}"),
            "spiffe://td/spire/agent/k8s_psat/c/n",
            [format!("k8s:pod-uid:{uid}")],
        )
    }

    fn pod(name: &str) -> Source {
        Source::Pod(("ns".into(), name.into()))
    }

    #[test]
    fn replacing_a_pods_entries_touches_old_and_new_keys() {
        let mut desired = Desired::default();
        let mut touched = KeySet::default();
        desired.set(
            pod("a"),
            vec![(Age::default(), spec("/old", "1"))],
            &mut touched,
        );
        touched.clear();
        desired.set(
            pod("a"),
            vec![(Age::default(), spec("/new", "1"))],
            &mut touched,
        );
        assert_eq!(touched.len(), 2);
        assert_eq!(desired.len(), 1);
        assert!(desired.get(&KeyId::of(&spec("/new", "1").key)).is_some());
        desired.set(pod("a"), vec![], &mut touched);
        assert!(desired.is_empty());
        assert_eq!(desired.sources().count(), 0);
    }

    fn age(created: i64, uid: &str) -> Age {
        let static_entry: crate::crd::ClusterStaticEntry = serde_json::from_value(serde_json::json!({
            "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterStaticEntry",
            "metadata": {"name": uid, "uid": uid,
                "creationTimestamp": k8s_openapi::jiff::Timestamp::from_second(created).unwrap().to_string()},
            "spec": {"spiffeID": "spiffe://td/x", "parentID": "spiffe://td/y", "selectors": ["unix:uid:0"]},
        }))
        .unwrap();
        crate::render::StaticEntry::parse(&static_entry)
            .unwrap()
            .age
    }

    #[test]
    fn the_oldest_owner_wins_a_key_whatever_its_kind() {
        let shared = spec("/shared", "1");
        let key = KeyId::of(&shared.key);
        let static_source = Source::Static {
            age: age(200, "cse"),
            name: "cse".into(),
        };
        let mut touched = KeySet::default();
        for (static_created, pod_owner_created, static_wins) in
            [(200, 100, false), (100, 200, true), (100, 100, true)]
        {
            let mut desired = Desired::default();
            // Same creation time: the UID decides ("cse" < "csid").
            let pod_owner = age(pod_owner_created, "csid");
            desired.set(pod("a"), vec![(pod_owner, shared.clone())], &mut touched);
            let static_age = age(static_created, "cse");
            desired.set(
                static_source.clone(),
                vec![(static_age, shared.clone())],
                &mut touched,
            );
            assert_eq!(
                desired.wins(&static_source, &key),
                static_wins,
                "static created {static_created}, ClusterSPIFFEID {pod_owner_created}"
            );
            assert_eq!(desired.wins(&pod("a"), &key), !static_wins);
        }
    }

    #[test]
    fn an_annotation_entry_loses_its_key_to_any_resource_even_a_younger_one() {
        let shared = spec("/shared", "1");
        let key = KeyId::of(&shared.key);
        let annotation = Source::Annotation {
            namespace: "ns".into(),
            name: "a".into(),
        };
        let old_pod: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            serde_json::from_value(
                serde_json::json!({"uid": "p", "creationTimestamp": "2020-01-01T00:00:00Z"}),
            )
            .unwrap();
        let mut touched = KeySet::default();
        let mut desired = Desired::default();
        desired.set(
            annotation.clone(),
            vec![(Age::of_annotation(&old_pod), shared.clone())],
            &mut touched,
        );
        assert!(desired.wins(&annotation, &key));
        desired.set(
            pod("a"),
            vec![(age(2_000_000_000, "csid"), shared.clone())],
            &mut touched,
        );
        assert!(desired.wins(&pod("a"), &key));
        assert!(!desired.wins(&annotation, &key));
    }

    #[test]
    fn incremental_plan_only_sees_touched_keys() {
        let ownership = Ownership::new(None, "c", None);
        let own_id = ownership.new_id();
        let mirror = Mirror::from_listing(
            vec![
                (own_id.clone(), spec("/gone", "1")),
                ("foreign".into(), spec("/cli", "9")),
            ],
            &ownership,
            &Desired::default(),
        );
        let mut desired = Desired::default();
        let mut touched = KeySet::default();
        desired.set(
            pod("b"),
            vec![(Age::default(), spec("/b", "2"))],
            &mut touched,
        );
        let p = plan_keys(&desired, &mirror, &touched, &managed_fields());
        assert_eq!(p.create.len(), 1);
        assert!(
            p.delete.is_empty(),
            "untouched owned entry waits for a full plan"
        );
        let full = plan_all(&desired, &mirror, &managed_fields());
        assert_eq!(full.delete, vec![own_id]);
        assert_eq!(full.foreign, 1);
        assert_eq!(mirror.counts(), (1, 1));
    }

    /// The mirror holds an entry that equals its declaration once, not twice: the plan,
    /// the write and a later listing share the declaration's memory.
    #[test]
    fn entries_as_declared_share_the_declaration() {
        let ownership = Ownership::new(None, "c", None);
        let mut desired = Desired::default();
        let mut touched = KeySet::default();
        desired.set(
            pod("a"),
            vec![
                (Age::default(), spec("/a", "1")),
                (Age::default(), spec("/a2", "1")),
            ],
            &mut touched,
        );
        let plan = plan_all(&desired, &Mirror::default(), &managed_fields());
        let declared = |path: &str, uid: &str| {
            desired
                .shared(&KeyId::of(&spec(path, uid).key))
                .unwrap()
                .clone()
        };
        assert!(Arc::ptr_eq(&plan.create[0], &declared("/a", "1")));

        let mut changed = spec("/a2", "1");
        changed.hint = "edited on the server".into();
        let listing = vec![
            (ownership.new_id(), spec("/a", "1")),
            (ownership.new_id(), changed),
        ];
        let mirror = Mirror::from_listing(listing, &ownership, &desired);
        let held = |path: &str| {
            let key = KeyId::of(&spec(path, "1").key);
            mirror
                .subset(&KeySet::from_iter([key]))
                .next()
                .unwrap()
                .spec
                .clone()
        };
        assert!(Arc::ptr_eq(&held("/a"), &declared("/a", "1")));
        assert!(!Arc::ptr_eq(&held("/a2"), &declared("/a2", "1")));
        assert_eq!(held("/a2").hint, "edited on the server");
    }
}
