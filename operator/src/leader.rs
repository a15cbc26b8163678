//! Leader election on a coordination.k8s.io Lease: only the leader writes entries and
//! status; the other replicas keep warm caches and wait.

use std::time::Duration;

use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where and how to campaign.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (holder identity in the Lease).
    pub identity: String,
    /// How long a lease is valid without renewal (`leaseDuration`).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up (`renewDeadline`).
    pub renew_deadline: Duration,
    /// How often client-go's candidates poll (`retryPeriod`). Checked against
    /// `renewDeadline` as client-go does, but not used for pacing: kube-lease-manager's
    /// candidates wake when the holder's lease would expire instead of polling, which
    /// takes over no later than polling would.
    pub retry_period: Duration,
}

/// Leader election failed for good.
#[derive(Debug, thiserror::Error)]
#[error("leader election on Lease {namespace}/{name}")]
pub struct LeaderError {
    namespace: String,
    name: String,
    #[source]
    source: LeaseManagerError,
}

/// Starts campaigning; the receiver is true while this process holds the lease. The
/// task releases the lease and ends when `shutdown` completes.
pub fn spawn(
    client: kube::Client,
    config: LeaderConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (watch::Receiver<bool>, JoinHandle<Result<(), LeaderError>>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let error = |source| LeaderError {
            namespace: config.namespace.clone(),
            name: config.lease_name.clone(),
            source,
        };
        let (duration, grace) = lease_timing(config.lease_duration, config.renew_deadline);
        let manager = LeaseManagerBuilder::new(client, &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(duration)
            .with_grace(grace)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
            .await
            .map_err(error)?;
        let (mut leading, watcher) = manager.watch().await;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() {
                        let _ = tx.send(false);
                        break;
                    }
                    let now = *leading.borrow_and_update();
                    tracing::info!(leader = now, lease = %config.lease_name, "leadership changed");
                    let _ = tx.send(now);
                }
                () = &mut shutdown => break,
            }
        }
        let _ = tx.send(false);
        // Dropping the receiver makes the watcher release the lease.
        drop(leading);
        match watcher.await {
            Ok(Ok(_)) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(error(e)),
        }
    });
    (rx, task)
}

/// kube-lease-manager's (duration, grace) in whole seconds for controller-runtime's
/// `leaseDuration` and `renewDeadline`. controller-runtime renews until renewDeadline;
/// kube-lease-manager renews `grace` seconds before expiry, so grace = leaseDuration -
/// renewDeadline, kept within what kube-lease-manager accepts (0 < grace < duration).
fn lease_timing(lease_duration: Duration, renew_deadline: Duration) -> (u64, u64) {
    let duration = lease_duration.as_secs().max(2);
    let grace = duration
        .saturating_sub(renew_deadline.as_secs())
        .clamp(1, duration - 1);
    (duration, grace)
}

/// For a single replica (leader election off): always the leader.
pub fn always_leader() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    // Keep the sender alive for the life of the process so the receiver never closes.
    std::mem::forget(tx);
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_timing_follows_controller_runtime_within_what_the_manager_accepts() {
        let s = Duration::from_secs;
        for (lease, renew, want) in [
            (s(15), s(10), (15, 5)),
            (s(137), s(107), (137, 30)),
            // A deadline at or past the duration still renews a second early.
            (s(4), s(4), (4, 1)),
            (s(4), s(9), (4, 1)),
            // Sub-second and zero durations become the smallest valid lease.
            (Duration::from_millis(500), Duration::ZERO, (2, 1)),
        ] {
            let (duration, grace) = lease_timing(lease, renew);
            assert_eq!((duration, grace), want, "{lease:?} / {renew:?}");
            assert!(grace > 0 && grace < duration);
        }
        assert!(*always_leader().borrow());
    }
}
