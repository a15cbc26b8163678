//! Property: applying a [`Plan`] to the entries it was computed from yields the desired
//! set, touches only what ownership allows, and leaves nothing to do on a second look.
//!
//! The entries are drawn from a small pool of keys and field values so that collisions
//! (duplicates, adoptable and foreign entries holding desired keys) are frequent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use super::diff::{ActualEntry, Plan, plan};
use super::ownership::Class;
use super::state::{Desired, KeyId, KeySet, Mirror, Source, plan_all, plan_keys};
use crate::render::Age;
use crate::spire::api::types::EntryMask;
use crate::spire::{EntryKey, EntrySpec, managed_fields};

/// Keys: 3 SPIFFE IDs x 2 parents x 2 selector sets = 12.
fn key(index: u8) -> EntryKey {
    let i = index % 12;
    EntryKey {
        spiffe_id: format!("spiffe://td/w{}", i % 3).parse().unwrap(),
        parent_id: format!("spiffe://td/agent/{}", (i / 3) % 2)
            .parse()
            .unwrap(),
        selectors: if i / 6 == 0 {
            ["k8s:pod-uid:1".to_string()].into()
        } else {
            ["k8s:ns:a".to_string(), "k8s:sa:b".to_string()].into()
        },
    }
}

fn spec_strategy() -> impl Strategy<Value = EntrySpec> {
    (
        0u8..12,
        prop::sample::select(vec![0, 60]),
        any::<bool>(),
        prop::sample::select(vec![vec![], vec!["a"], vec!["a", "b"], vec!["b", "a"]]),
        prop::sample::select(vec!["", "h"]),
    )
        .prop_map(|(k, ttl, admin, dns, hint)| EntrySpec {
            key: key(k),
            x509_svid_ttl: ttl,
            jwt_svid_ttl: 0,
            federates_with: Default::default(),
            admin,
            downstream: false,
            dns_names: dns.into_iter().map(str::to_owned).collect(),
            hint: hint.into(),
            store_svid: false,
        })
}

fn class_strategy() -> impl Strategy<Value = Class> {
    prop::sample::select(vec![
        Class::Owned,
        Class::Adoptable,
        Class::Foreign,
        Class::JoinToken,
    ])
}

fn mask_strategy() -> impl Strategy<Value = EntryMask> {
    (any::<bool>(), any::<bool>()).prop_map(|(hint, dns_names)| EntryMask {
        hint,
        dns_names,
        ..managed_fields()
    })
}

/// What the writer and the bookkeeping do with a plan, on a model of the server.
fn apply(server: &mut BTreeMap<String, ActualEntry>, plan: &Plan) {
    for id in &plan.adopt {
        server.get_mut(id).expect("adopted entry exists").class = Class::Owned;
    }
    for (id, spec) in &plan.update {
        let entry = server.get_mut(id).expect("updated entry exists");
        assert_eq!(entry.spec.key, spec.key, "an update never changes a key");
        entry.spec = spec.clone();
    }
    for (id, spec) in &plan.rename {
        let entry = server.get_mut(id).expect("renamed entry exists");
        assert_eq!(entry.class, Class::Owned, "renamed {id}, not ours");
        assert_eq!(
            (&entry.spec.key.parent_id, &entry.spec.key.selectors),
            (&spec.key.parent_id, &spec.key.selectors),
            "a rename changes the SPIFFE ID only"
        );
        entry.spec = spec.clone();
    }
    for id in &plan.delete {
        server.remove(id).expect("deleted entry exists");
    }
    for (n, spec) in plan.create.iter().enumerate() {
        let id = format!("new-{n}");
        let entry = ActualEntry::new(id.clone(), spec.clone(), Class::Owned);
        server.insert(id, entry);
    }
}

fn check_plan(
    desired: &HashMap<EntryKey, Arc<EntrySpec>>,
    actual: &[ActualEntry],
    mask: &EntryMask,
) {
    let before: BTreeMap<String, ActualEntry> =
        actual.iter().map(|e| (e.id.clone(), e.clone())).collect();
    let got = plan(desired, actual, mask);
    for id in &got.delete {
        assert_eq!(before[id].class, Class::Owned, "deleted {id}, not ours");
    }
    for (id, _) in &got.update {
        let class = before[id].class;
        assert!(
            class == Class::Owned || got.adopt.contains(id),
            "updated {id} ({class:?}) without owning it"
        );
    }
    for id in &got.adopt {
        assert_eq!(before[id].class, Class::Adoptable, "adopted {id}");
    }
    let mut server = before.clone();
    apply(&mut server, &got);

    // Entries not ours (and not adopted) are exactly as they were.
    for (id, entry) in &before {
        if entry.class != Class::Owned && !got.adopt.contains(id) {
            assert_eq!(server.get(id), Some(entry), "foreign entry {id} changed");
        }
    }
    // Every desired key is served by exactly one entry of ours, with the desired
    // fields, unless someone else's entry holds it (a conflict).
    for (key, want) in desired {
        let ours: Vec<&ActualEntry> = server
            .values()
            .filter(|e| e.class == Class::Owned && e.spec.key == *key)
            .collect();
        if got.conflicts.iter().any(|(_, k)| k == key) {
            assert!(ours.is_empty(), "conflicting key {key:?} taken anyway");
            continue;
        }
        assert_eq!(ours.len(), 1, "key {key:?}: {ours:?}");
        assert!(
            !want.differs(&ours[0].spec, mask),
            "key {key:?}: have {:?}, want {want:?}",
            ours[0].spec
        );
    }
    // Nothing of ours is left that is not desired.
    for entry in server.values() {
        if entry.class == Class::Owned {
            assert!(
                desired.contains_key(&entry.spec.key),
                "undesired entry {} kept",
                entry.id
            );
        }
    }
    // A second look finds nothing to write.
    let after: Vec<ActualEntry> = server.into_values().collect();
    let again = plan(desired, &after, mask);
    assert!(
        again.is_empty() && again.adopt.is_empty(),
        "not a fixed point: {again:?}"
    );
}

proptest! {
    // 2000 cases each: both together take under 1 s (debug build, one core).
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn applying_the_plan_yields_the_desired_set(
        desired in prop::collection::vec(spec_strategy(), 0..8),
        actual in prop::collection::vec((spec_strategy(), class_strategy()), 0..10),
        mask in mask_strategy(),
    ) {
        let desired: HashMap<EntryKey, Arc<EntrySpec>> =
            desired.into_iter().map(|s| (s.key.clone(), Arc::new(s))).collect();
        let actual: Vec<ActualEntry> = actual
            .into_iter()
            .enumerate()
            .map(|(i, (spec, class))| ActualEntry::new(format!("e{i}"), Arc::new(spec), class))
            .collect();
        check_plan(&desired, &actual, &mask);
    }

    /// The incremental path: planning only the keys a change touched, after a full
    /// plan brought the server in line, gives the same writes as planning everything.
    #[test]
    fn planning_touched_keys_equals_planning_everything(
        before in prop::collection::vec((0u8..4, spec_strategy()), 0..8),
        after in prop::collection::vec((0u8..4, spec_strategy()), 0..8),
        foreign in prop::collection::vec(spec_strategy(), 0..3),
    ) {
        let ownership = super::ownership::Ownership::new(None, "c", None);
        let mask = managed_fields();
        let declare = |desired: &mut Desired, specs: &[(u8, EntrySpec)], touched: &mut _| {
            let mut by_pod: BTreeMap<u8, Vec<(Age, EntrySpec)>> = (0..4).map(|p| (p, vec![])).collect();
            for (pod, spec) in specs {
                by_pod.get_mut(pod).unwrap().push((Age::default(), spec.clone()));
            }
            for (pod, entries) in by_pod {
                let mut seen = std::collections::HashSet::new();
                let entries = entries.into_iter().filter(|(_, e)| seen.insert(e.key.clone())).collect();
                let source = Source::Pod(("ns".into(), format!("p{pod}")));
                desired.set(source, entries, touched);
            }
        };
        let mut desired = Desired::default();
        declare(&mut desired, &before, &mut Default::default());
        // The server holds exactly the first state, plus someone else's entries.
        let mut listing: Vec<(String, EntrySpec)> = foreign
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("cli.{i}"), s))
            .collect();
        let nothing = Desired::default();
        let initial = plan_all(&desired, &Mirror::from_listing(listing.clone(), &ownership, &nothing), &mask);
        listing.extend(initial.create.iter().map(|s| (ownership.new_id(), EntrySpec::clone(s))));
        let mirror = Mirror::from_listing(listing, &ownership, &desired);

        let mut touched = KeySet::default();
        declare(&mut desired, &after, &mut touched);
        let incremental = plan_keys(&desired, &mirror, &touched, &mask);
        let full = plan_all(&desired, &mirror, &mask);
        prop_assert_eq!(&incremental.create, &full.create);
        prop_assert_eq!(&incremental.update, &full.update);
        prop_assert_eq!(&incremental.rename, &full.rename);
        prop_assert_eq!(&incremental.delete, &full.delete);
        // Conflicts of untouched keys are reported by full plans only.
        let touched_conflicts: Vec<_> = full
            .conflicts
            .iter()
            .filter(|(_, k)| touched.contains(&KeyId::of(k)))
            .cloned()
            .collect();
        prop_assert_eq!(&incremental.conflicts, &touched_conflicts);
    }
}
