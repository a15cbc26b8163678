//! ClusterStaticEntries: one entry each, declared as written in the spec.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use super::pods::in_class;
use super::state::{Desired, KeyId, KeySet, Source};
use crate::config::Config;
use crate::crd::ClusterStaticEntry;
use crate::render::{Age, SpecError, StaticEntry};

/// What the reconciler remembers about one ClusterStaticEntry (for its status).
#[derive(Debug)]
pub struct StaticRecord {
    /// How it declares its entry in [`Desired`].
    pub source: Source,
    /// Its entry's key, or why its spec is unusable.
    pub result: Result<KeyId, SpecError>,
}

/// Re-reads every ClusterStaticEntry into `desired`; keys that may change go to `touched`.
/// Returns how many resources changed what they declare.
/// Resources gone from the store (or out of class, or all of them when
/// `reconcile.clusterStaticEntries` is off) withdraw their entries.
pub fn recompute(
    config: &Config,
    store: &Store<ClusterStaticEntry>,
    records: &mut BTreeMap<String, StaticRecord>,
    desired: &mut Desired,
    touched: &mut KeySet,
) -> usize {
    let mut changed = 0;
    let mut seen = BTreeSet::new();
    if config.reconcile.cluster_static_entries {
        for resource in store.state() {
            if !in_class(config, resource.spec.class_name.as_deref()) {
                continue;
            }
            let name = resource.name_any();
            seen.insert(name.clone());
            let (source, entries, result) = match StaticEntry::parse(&resource) {
                Ok(entry) => {
                    let source = Source::Static {
                        age: entry.age.clone(),
                        name: name.clone(),
                    };
                    let key = KeyId::of(&entry.entry.key);
                    (source, vec![(entry.age, entry.entry)], Ok(key))
                }
                Err(e) => {
                    let source = Source::Static {
                        age: Age::default(),
                        name: name.clone(),
                    };
                    (source, Vec::new(), Err(e))
                }
            };
            if let Some(old) = records.get(&name)
                && old.source != source
            {
                desired.set(old.source.clone(), Vec::new(), touched);
            }
            changed += usize::from(desired.set(source.clone(), entries, touched));
            records.insert(name, StaticRecord { source, result });
        }
    }
    let gone: Vec<String> = records
        .keys()
        .filter(|n| !seen.contains(*n))
        .cloned()
        .collect();
    for name in gone {
        if let Some(old) = records.remove(&name) {
            changed += usize::from(desired.set(old.source, Vec::new(), touched));
        }
    }
    changed
}
