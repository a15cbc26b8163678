//! Static mode (`staticManifestPath`): ClusterStaticEntry and ClusterFederatedTrustDomain
//! manifests read from a directory, with no Kubernetes API at all.
//!
//! ```text
//! poll every second ──> catalog (per file: content digest, last valid manifest)
//!                          │ changed
//!                          └─> stores replaced ──marks──> entry reconciler, federation loop
//! ```
//!
//! - [`manifest`] lists the directory's `*.yaml` files and parses one file with the
//!   validating webhook's checks; [`catalog`] keeps the last valid version of each file.
//! - The objects fill the same reflector stores the API watches fill, so the entry
//!   reconciler and the federation loop run unchanged.
//!
//! Every poll reads every manifest file and compares its SHA-256 with the last one, so
//! any change (an edit in place, a rename, a ConfigMap volume's `..data` symlink swap)
//! is seen within one interval. Manifests are small; a few hundred files cost
//! microseconds of I/O per poll.

pub mod catalog;
pub mod manifest;
pub mod saved;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;

pub use catalog::Catalog;

use crate::config::StaticMode;
use crate::crd::{ClusterFederatedTrustDomain, ClusterStaticEntry};
use crate::metrics::Metrics;
use crate::reconcile::dirty::DirtySet;
use crate::reconcile::watch::{Dirty, Stores};
use crate::webhook::Validator;

/// How often the directory is read by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The manifest directory as a source of objects for the reconcilers.
pub struct StaticSource {
    catalog: Catalog,
    statics: Writer<ClusterStaticEntry>,
    federations: Writer<ClusterFederatedTrustDomain>,
    metrics: Arc<Metrics>,
}

impl StaticSource {
    /// Reads the directory once and returns the source with the stores it fills (the
    /// pod-related stores stay empty). With `state_dir`, each file's last valid version
    /// is kept there (see [`saved`]).
    pub fn start(
        mode: &StaticMode,
        validator: Validator,
        metrics: Arc<Metrics>,
        state_dir: Option<&std::path::Path>,
    ) -> std::io::Result<(Self, Stores)> {
        let (static_store, statics) = reflector::store();
        let (federation_store, federations) = reflector::store();
        let stores = Stores {
            pods: Arc::default(),
            nodes: reflector::store().0,
            namespaces: reflector::store().0,
            service_accounts: reflector::store().0,
            cluster_spiffe_ids: reflector::store().0,
            cluster_static_entries: static_store,
            cluster_federated_trust_domains: federation_store,
            services: Arc::default(),
        };
        let mut catalog = Catalog::new(mode.manifest_path.clone(), mode.expand_env, validator);
        if let Some(dir) = state_dir {
            catalog = catalog.with_saved(saved::Saved::open(dir)?);
        }
        let mut source = Self {
            catalog,
            statics,
            federations,
            metrics,
        };
        source.refresh();
        source.publish();
        Ok((source, stores))
    }

    /// Scans the directory; true when the declared objects changed (and the stores
    /// were replaced).
    pub fn refresh(&mut self) -> bool {
        let scan = self.catalog.scan();
        let metrics = &self.metrics;
        metrics
            .static_manifest_errors
            .inc_by(scan.new_errors.len() as u64);
        metrics
            .static_manifests_invalid
            .set(self.catalog.invalid_files() as i64);
        if scan.changed {
            self.publish();
        }
        scan.changed
    }

    /// Replaces the stores' content with the catalog's objects, as a relist would.
    fn publish(&mut self) {
        let (statics, federations) = self.catalog.objects();
        replace(&mut self.statics, statics);
        replace(&mut self.federations, federations);
    }

    /// Polls every `interval` and marks both loops' dirty sets on a change. Never ends.
    pub async fn run(
        mut self,
        interval: Duration,
        dirty: Arc<DirtySet<Dirty>>,
        federation_dirty: Arc<DirtySet<Dirty>>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.refresh() {
                dirty.mark(Dirty::ClusterStaticEntries);
                federation_dirty.mark(Dirty::ClusterFederatedTrustDomains);
            }
        }
    }
}

fn replace<K>(writer: &mut Writer<K>, objects: Vec<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&Event::Init);
    for object in objects {
        writer.apply_watcher_event(&Event::InitApply(object));
    }
    writer.apply_watcher_event(&Event::InitDone);
}

#[cfg(test)]
mod tests;
