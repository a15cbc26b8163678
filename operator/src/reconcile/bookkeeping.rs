//! What a [`WriteReport`] changes in the reconciler's memory: the mirror follows our
//! own writes (so the next pass need not re-list), failed keys are remembered for the
//! retry and the statuses, and fields the server turned out not to keep leave the mask.

use super::diff::ActualEntry;
use super::ownership::Ownership;
use super::state::{KeyId, KeyMap, Mirror};
use super::writer::WriteReport;
use crate::spire::api::types::EntryMask;

/// The state a write report updates.
pub struct Books<'a> {
    /// The server's entries as we know them.
    pub mirror: &'a mut Mirror,
    /// Owned and adopted IDs.
    pub ownership: &'a mut Ownership,
    /// Keys whose last write failed, with the server's message.
    pub failed_writes: &'a mut KeyMap<String>,
    /// The non-key fields compared and updated.
    pub mask: &'a mut EntryMask,
}

impl Books<'_> {
    /// Applies `report`, taking its created / updated / deleted lists. Returns the
    /// keys whose earlier failure is cleared by this success (their statuses change).
    pub fn record(&mut self, report: &mut WriteReport) -> Vec<KeyId> {
        let mut recovered = Vec::new();
        let mut succeeded = |failed: &mut KeyMap<String>, key: KeyId| {
            if failed.remove(&key).is_some() {
                recovered.push(key);
            }
        };
        self.mirror.reserve(report.created.len());
        for (id, spec) in std::mem::take(&mut report.created) {
            succeeded(self.failed_writes, KeyId::of(&spec.key));
            self.mirror
                .insert(ActualEntry::new(id, spec, super::ownership::Class::Owned));
        }
        for (id, spec) in std::mem::take(&mut report.updated) {
            succeeded(self.failed_writes, KeyId::of(&spec.key));
            self.mirror.update(&id, spec);
        }
        for id in std::mem::take(&mut report.deleted) {
            if let Some(entry) = self.mirror.remove(&id) {
                succeeded(self.failed_writes, KeyId::of(&entry.spec.key));
            }
            self.ownership.forget(&id);
        }
        for field in &report.unsupported {
            tracing::warn!(
                field,
                "the SPIRE server does not keep this entry field; no longer comparing it"
            );
            match *field {
                "jwt_svid_ttl" => self.mask.jwt_svid_ttl = false,
                "hint" => self.mask.hint = false,
                "store_svid" => self.mask.store_svid = false,
                _ => {}
            }
        }
        for failure in &report.failed {
            tracing::debug!(error = %failure.message, "entry write failed; will retry");
            if let Some(key) = &failure.key {
                self.failed_writes
                    .insert(KeyId::of(key), failure.message.clone());
            }
        }
        recovered
    }
}
