//! The plan that brings the server's entries to the desired set: pure, no I/O.

#[cfg(test)]
use std::collections::HashMap;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::ownership::Class;
use crate::spire::api::types::EntryMask;
use crate::spire::{EntryKey, EntrySpec, Selectors, SpiffeId};

/// An entry on the server, as the mirror holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActualEntry {
    /// The server's entry ID.
    pub id: String,
    /// Its fields (shared with the desired state when they are equal).
    pub spec: Arc<EntrySpec>,
    /// Whose it is. Only owned entries are ever updated or deleted, adoptable ones after
    /// being adopted by matching a desired entry's key.
    pub class: Class,
    /// The mirror's full listing that last returned (or our write that last made) it.
    pub(super) listing: u32,
}

impl ActualEntry {
    /// An entry as a write or a listing returned it.
    pub fn new(id: String, spec: Arc<EntrySpec>, class: Class) -> Self {
        Self {
            id,
            spec,
            class,
            listing: 0,
        }
    }
}

/// What to write to bring the server to the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Entries to create.
    pub create: Vec<Arc<EntrySpec>>,
    /// Existing entries (by ID) whose non-key fields change in place.
    pub update: Vec<(String, Arc<EntrySpec>)>,
    /// Owned entries whose SPIFFE ID alone changes (same parent ID and selectors: a
    /// template edit), updated in place instead of a delete and a create: one write
    /// instead of two, no moment without an entry, and the entry keeps its ID.
    pub rename: Vec<(String, Arc<EntrySpec>)>,
    /// Owned entries no longer desired.
    pub delete: Vec<String>,
    /// Entries the operator did not own that match a desired key: taken over in place,
    /// so their SVIDs are not re-issued (migration from spire-controller-manager).
    pub adopt: Vec<String>,
    /// Entries neither desired nor owned: left alone.
    pub foreign: usize,
    /// Entries that have a desired key but may not be adopted (made by someone else):
    /// left alone, and the desired entry is not created (SPIRE refuses a second entry
    /// with one key). Reported.
    pub conflicts: Vec<(String, EntryKey)>,
}

impl Plan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.update.is_empty()
            && self.rename.is_empty()
            && self.delete.is_empty()
    }
}

/// Compares `desired` with `actual`. `mask` selects the non-key fields compared (see
/// [`crate::spire::managed_fields`]). Output lists are sorted, so plans are stable.
pub fn plan<'a>(
    desired: impl IntoIterator<Item = (&'a EntryKey, &'a Arc<EntrySpec>)>,
    actual: impl IntoIterator<Item = &'a ActualEntry>,
    mask: &EntryMask,
) -> Plan {
    let mut plan = Plan::default();
    // SPIRE refuses two entries with one key, but a mirror may briefly hold both (an
    // entry created by someone else between two listings): the owned one serves, any
    // other owned duplicate goes.
    let mut by_key: BTreeMap<&EntryKey, &ActualEntry> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for entry in actual {
        match by_key.get(&entry.spec.key) {
            Some(kept) if kept.class == Class::Owned || entry.class != Class::Owned => {
                duplicates.push(entry);
            }
            Some(kept) => {
                duplicates.push(*kept);
                by_key.insert(&entry.spec.key, entry);
            }
            None => {
                by_key.insert(&entry.spec.key, entry);
            }
        }
    }

    let mut matched = HashSet::new();
    for (key, want) in desired {
        match by_key.get(key) {
            Some(have) => {
                matched.insert(have.id.as_str());
                match have.class {
                    Class::Owned => {}
                    Class::Adoptable => plan.adopt.push(have.id.clone()),
                    Class::Foreign | Class::JoinToken => {
                        plan.conflicts.push((have.id.clone(), key.clone()));
                        continue;
                    }
                }
                if want.differs(&have.spec, mask) {
                    plan.update.push((have.id.clone(), want.clone()));
                }
            }
            None => plan.create.push(want.clone()),
        }
    }
    let mut gone = Vec::new();
    for entry in by_key.values().copied().chain(duplicates) {
        if matched.contains(entry.id.as_str()) {
            continue;
        }
        if entry.class == Class::Owned {
            gone.push(entry);
        } else {
            plan.foreign += 1;
        }
    }
    plan.create
        .sort_by(|a, b| creation_order(a).cmp(&creation_order(b)));
    pair_renames(&mut plan, gone);
    plan.update.sort_by(|a, b| a.0.cmp(&b.0));
    plan.rename.sort_by(|a, b| a.0.cmp(&b.0));
    plan.delete.sort();
    plan.adopt.sort();
    plan.conflicts.sort();
    plan
}

/// The order entries are created in: by parent ID, then selectors, so a node's entries
/// and, within them, each pod's entries (which share their selectors) are written
/// together. SPIRE looks up every new entry by its SPIFFE ID, parent and selectors and
/// writes its selector rows; grouped, those touch the same datastore pages one after
/// another. Creating 15000 entries (5000 pods, 3 each, sqlite on tmpfs) took 31 s in
/// SPIFFE ID order and 11 to 13 s in this order (`make bench`, docs/benchmarks.md).
fn creation_order(spec: &EntrySpec) -> (&SpiffeId, &Selectors, &SpiffeId) {
    (
        &spec.key.parent_id,
        &spec.key.selectors,
        &spec.key.spiffe_id,
    )
}

/// Turns each create whose parent ID and selectors equal those of an owned entry going
/// away into a rename of that entry; the other ones going away are deleted. Pairs are
/// made in a fixed order (creates in creation order, entries by ID), so a plan over the
/// touched keys pairs as a plan over everything does.
fn pair_renames(plan: &mut Plan, mut gone: Vec<&ActualEntry>) {
    gone.sort_by(|a, b| a.id.cmp(&b.id));
    // (parent ID, selectors) -> index of the IDs going away with them, in `lists`.
    let mut by_subject: BTreeMap<(&SpiffeId, &Selectors), usize> = BTreeMap::new();
    let mut lists: Vec<Vec<&str>> = Vec::new();
    // Reversed, so that popping takes the lowest ID first.
    for entry in gone.iter().rev() {
        let subject = (&entry.spec.key.parent_id, &entry.spec.key.selectors);
        let slot = *by_subject.entry(subject).or_insert_with(|| {
            lists.push(Vec::new());
            lists.len() - 1
        });
        lists[slot].push(&entry.id);
    }
    let mut renamed = HashSet::new();
    let mut create = Vec::with_capacity(plan.create.len());
    for want in std::mem::take(&mut plan.create) {
        let slot = by_subject
            .get(&(&want.key.parent_id, &want.key.selectors))
            .copied();
        match slot.and_then(|slot| lists[slot].pop()) {
            Some(id) => {
                renamed.insert(id);
                plan.rename.push((id.to_owned(), want));
            }
            None => create.push(want),
        }
    }
    plan.create = create;
    plan.delete = gone
        .into_iter()
        .filter(|e| !renamed.contains(e.id.as_str()))
        .map(|e| e.id.clone())
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spire::managed_fields;
    use Class::{Adoptable, Foreign, JoinToken, Owned};

    fn spec(path: &str, selectors: &[&str]) -> EntrySpec {
        EntrySpec::keyed(
            &format!("spiffe://td{path}"),
            "spiffe://td/spire/agent/k8s_psat/c/node-1",
            selectors.iter().map(|s| (*s).to_owned()),
        )
    }

    fn actual(id: &str, spec: EntrySpec, class: Class) -> ActualEntry {
        ActualEntry::new(id.into(), Arc::new(spec), class)
    }

    fn desired(specs: &[EntrySpec]) -> HashMap<EntryKey, Arc<EntrySpec>> {
        specs
            .iter()
            .map(|s| (s.key.clone(), Arc::new(s.clone())))
            .collect()
    }

    #[test]
    fn plans() {
        let web = spec("/ns/a/sa/web", &["k8s:pod-uid:1"]);
        let mut web_hinted = web.clone();
        web_hinted.hint = "web".into();
        let web_moved = spec("/ns/a/sa/web2", &["k8s:pod-uid:1"]);
        let web_elsewhere = spec("/ns/a/sa/web", &["k8s:pod-uid:9"]);
        let db = spec("/ns/a/sa/db", &["k8s:pod-uid:2"]);
        let cli = spec("/legacy", &["unix:uid:0"]);

        struct Case {
            name: &'static str,
            desired: Vec<EntrySpec>,
            actual: Vec<ActualEntry>,
            want: Plan,
        }
        let cases = vec![
            Case {
                name: "missing entry is created",
                desired: vec![web.clone()],
                actual: vec![],
                want: Plan {
                    create: vec![Arc::new(web.clone())],
                    ..Default::default()
                },
            },
            Case {
                name: "equal owned entry needs nothing",
                desired: vec![web.clone()],
                actual: vec![actual("e1", web.clone(), Owned)],
                want: Plan::default(),
            },
            Case {
                name: "changed hint is updated in place",
                desired: vec![web_hinted.clone()],
                actual: vec![actual("e1", web.clone(), Owned)],
                want: Plan {
                    update: vec![("e1".into(), Arc::new(web_hinted.clone()))],
                    ..Default::default()
                },
            },
            Case {
                name: "changed SPIFFE ID, same parent and selectors, is a rename in place",
                desired: vec![web_moved.clone()],
                actual: vec![actual("e1", web.clone(), Owned)],
                want: Plan {
                    rename: vec![("e1".into(), Arc::new(web_moved.clone()))],
                    ..Default::default()
                },
            },
            Case {
                name: "changed selectors are a delete plus a create",
                desired: vec![web_elsewhere.clone()],
                actual: vec![actual("e1", web.clone(), Owned)],
                want: Plan {
                    create: vec![Arc::new(web_elsewhere.clone())],
                    delete: vec!["e1".into()],
                    ..Default::default()
                },
            },
            Case {
                name: "an entry that is not ours is never renamed",
                desired: vec![web_moved.clone()],
                actual: vec![actual("scm-1", web.clone(), Adoptable)],
                want: Plan {
                    create: vec![Arc::new(web_moved.clone())],
                    foreign: 1,
                    ..Default::default()
                },
            },
            Case {
                name: "owned entry no longer desired is deleted, foreign one is left",
                desired: vec![],
                actual: vec![
                    actual("e1", web.clone(), Owned),
                    actual("e2", cli.clone(), Foreign),
                ],
                want: Plan {
                    delete: vec!["e1".into()],
                    foreign: 1,
                    ..Default::default()
                },
            },
            Case {
                name: "adoptable entry with a desired key is adopted, not re-created",
                desired: vec![web_hinted.clone(), db.clone()],
                actual: vec![
                    actual("scm-1", web.clone(), Adoptable),
                    actual("scm-2", db.clone(), Adoptable),
                ],
                want: Plan {
                    update: vec![("scm-1".into(), Arc::new(web_hinted.clone()))],
                    adopt: vec!["scm-1".into(), "scm-2".into()],
                    ..Default::default()
                },
            },
            Case {
                name: "an owned duplicate of a key is removed",
                desired: vec![web.clone()],
                actual: vec![
                    actual("e1", web.clone(), Owned),
                    actual("e2", web.clone(), Owned),
                ],
                want: Plan {
                    delete: vec!["e2".into()],
                    ..Default::default()
                },
            },
            Case {
                name: "with a foreign duplicate, the owned entry serves and the foreign one stays",
                desired: vec![web.clone()],
                actual: vec![
                    actual("f1", web.clone(), Foreign),
                    actual("e1", web.clone(), Owned),
                ],
                want: Plan {
                    foreign: 1,
                    ..Default::default()
                },
            },
            Case {
                name: "foreign or join-token entry with a desired key is a conflict: not taken, not duplicated",
                desired: vec![web_hinted.clone(), db.clone()],
                actual: vec![
                    actual("cli-1", web.clone(), Foreign),
                    actual("token-1", db.clone(), JoinToken),
                ],
                want: Plan {
                    conflicts: vec![
                        ("cli-1".into(), web.key.clone()),
                        ("token-1".into(), db.key.clone()),
                    ],
                    ..Default::default()
                },
            },
        ];
        for case in cases {
            let got = plan(&desired(&case.desired), &case.actual, &managed_fields());
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn fields_outside_the_mask_are_not_compared() {
        let web = spec("/ns/a/sa/web", &["k8s:pod-uid:1"]);
        let mut web_hinted = web.clone();
        web_hinted.hint = "web".into();
        let mut mask = managed_fields();
        mask.hint = false; // an older server that drops hints
        let got = plan(&desired(&[web_hinted]), &[actual("e1", web, Owned)], &mask);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn dns_names_in_another_order_are_not_an_update() {
        let mut web = spec("/ns/a/sa/web", &["k8s:pod-uid:1"]);
        web.dns_names = vec!["web.a.svc".into(), "web".into()];
        let mut on_server = web.clone();
        on_server.dns_names.reverse();
        let got = plan(
            &desired(&[web.clone()]),
            &[actual("e1", on_server, Owned)],
            &managed_fields(),
        );
        assert!(got.is_empty(), "{got:?}");
        let mut more = web.clone();
        more.dns_names.push("web.a".into());
        let got = plan(
            &desired(&[more]),
            &[actual("e1", web, Owned)],
            &managed_fields(),
        );
        assert_eq!(got.update.len(), 1);
    }

    #[test]
    fn api_round_trip_keeps_selector_values_with_colons() {
        let web = spec("/ns/a/sa/web", &["k8s:pod-uid:1", "k8s:ns:a"]);
        let entry = web.to_api("e1".into());
        assert!(
            entry
                .selectors
                .iter()
                .any(|s| s.r#type == "k8s" && s.value == "pod-uid:1")
        );
        let (id, back) = EntrySpec::from_api(entry).unwrap();
        assert_eq!((id.as_str(), back), ("e1", web));
    }
}
