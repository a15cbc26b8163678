//! Coalescing work queue: triggers for the same object merge, and none is lost.
//!
//! spire-controller-manager triggers one global pass and drops triggers that arrive
//! during a pass. Here every watch event marks the object it concerns; the writer
//! drains all marked objects at once, and anything marked while it works waits for the
//! next drain. A slow pass delays work; it never drops it.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;

/// A set of keys that need recomputation, shared by producers and one consumer.
#[derive(Debug)]
pub struct DirtySet<K> {
    keys: Mutex<HashSet<K>>,
    notify: Notify,
}

impl<K: Hash + Eq> Default for DirtySet<K> {
    fn default() -> Self {
        Self {
            keys: Mutex::new(HashSet::new()),
            notify: Notify::new(),
        }
    }
}

impl<K: Hash + Eq> DirtySet<K> {
    /// Marks `key`; a key already marked stays marked once.
    pub fn mark(&self, key: K) {
        self.lock().insert(key);
        // Stores a permit if the consumer is busy, so the wake-up is not lost either.
        self.notify.notify_one();
    }

    /// Marks several keys with one wake-up.
    pub fn mark_all(&self, keys: impl IntoIterator<Item = K>) {
        self.lock().extend(keys);
        self.notify.notify_one();
    }

    /// How many keys wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least one key is marked, then takes every marked key.
    pub async fn drain(&self) -> Vec<K> {
        loop {
            let keys = std::mem::take(&mut *self.lock());
            if !keys.is_empty() {
                return keys.into_iter().collect();
            }
            self.notify.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<K>> {
        // A panic while holding the lock cannot leave the set half-updated (insert and
        // take are single operations), so a poisoned lock is still consistent.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn repeated_marks_coalesce() {
        let dirty = DirtySet::default();
        for _ in 0..3 {
            dirty.mark("pod/a");
        }
        dirty.mark_all(["pod/b", "pod/a"]);
        let mut got = dirty.drain().await;
        got.sort();
        assert_eq!(got, ["pod/a", "pod/b"]);
        assert!(dirty.is_empty());
    }

    #[tokio::test]
    async fn marks_during_a_slow_pass_are_kept_for_the_next() {
        let dirty = Arc::new(DirtySet::default());
        dirty.mark(1);
        let first = dirty.drain().await;
        // The pass is "slow": producers keep marking meanwhile.
        for key in 2..=100 {
            dirty.mark(key);
        }
        let mut second = dirty.drain().await;
        second.sort();
        assert_eq!(first, [1]);
        assert_eq!(second, (2..=100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_mark() {
        let dirty = Arc::new(DirtySet::default());
        let consumer = tokio::spawn({
            let dirty = dirty.clone();
            async move { dirty.drain().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        dirty.mark("ns/team-a");
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, ["ns/team-a"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_mark_is_lost_under_concurrency() {
        let dirty = Arc::new(DirtySet::default());
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let dirty = dirty.clone();
                tokio::spawn(async move {
                    for i in 0..1000 {
                        dirty.mark(p * 1000 + i);
                        if i % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        let mut seen = HashSet::new();
        let consumer = async {
            while seen.len() < 4000 {
                seen.extend(dirty.drain().await);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), consumer)
            .await
            .expect("every mark arrives");
        for p in producers {
            p.await.unwrap();
        }
        assert_eq!(seen.len(), 4000);
    }
}
