//! Leader election on a coordination.k8s.io Lease: only the leader writes entries and
//! status; the other replicas keep warm caches and wait.
//!
//! A leader that cannot renew (e.g. cut off from the kube-apiserver while it still reaches
//! SPIRE) steps down on its own clock after `renewDeadline`, before a standby may take the
//! lease: kube-lease-manager alone keeps reporting leadership while its renewals fail,
//! which left two writers.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
    /// How long the leader keeps trying to renew before giving up (`renewDeadline`): a
    /// leader that has not seen its own renewal for this long stops writing.
    pub renew_deadline: Duration,
    /// How often the leader renews and confirms its lease (`retryPeriod`). Candidates do
    /// not poll at this pace: kube-lease-manager's wake when the holder's lease would
    /// expire, which takes over no later than polling would.
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
        let (duration, grace) = lease_timing(config.lease_duration, config.retry_period);
        let step_down_after = step_down_after(duration, config.renew_deadline);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
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
        // While leading: when to stop unless the Lease is seen renewed meanwhile.
        let mut step_down_at: Option<Instant> = None;
        let mut check = tokio::time::interval(config.retry_period.max(Duration::from_millis(100)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() {
                        let _ = tx.send(false);
                        break;
                    }
                    let now = *leading.borrow_and_update();
                    tracing::info!(leader = now, lease = %config.lease_name, "leadership changed");
                    // kube-lease-manager reports leadership right after taking the lease.
                    step_down_at = now.then(|| Instant::now() + step_down_after);
                    let _ = tx.send(now);
                }
                _ = check.tick(), if step_down_at.is_some() => {
                    let deadline = step_down_at.unwrap_or_else(Instant::now);
                    let budget = config.retry_period.min(deadline.saturating_duration_since(Instant::now()));
                    match tokio::time::timeout(budget, leases.get_opt(&config.lease_name)).await {
                        Ok(Ok(lease)) => match confirmed_until(lease.as_ref(), &config.identity, step_down_after) {
                            Some(until) => step_down_at = Some(until),
                            None => {
                                tracing::warn!(lease = %config.lease_name, "the Lease names another holder; stepping down");
                                break;
                            }
                        },
                        // Unconfirmed: the deadline stands.
                        Ok(Err(e)) => tracing::warn!(error = %e, lease = %config.lease_name, "cannot read the Lease to confirm leadership"),
                        Err(_) => tracing::warn!(lease = %config.lease_name, "reading the Lease to confirm leadership timed out"),
                    }
                }
                () = tokio::time::sleep_until(step_down_at.unwrap_or_else(Instant::now)), if step_down_at.is_some() => {
                    tracing::error!(
                        lease = %config.lease_name,
                        "the Lease was not renewed in time: stepping down before a standby may take it"
                    );
                    break;
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
/// `leaseDuration` and `retryPeriod`. controller-runtime renews every retryPeriod;
/// kube-lease-manager renews `grace` seconds before expiry, so grace = leaseDuration -
/// retryPeriod, kept within what kube-lease-manager accepts (0 < grace < duration).
/// Renewing often leaves a slow renewal time to land before the leader's own deadline.
fn lease_timing(lease_duration: Duration, retry_period: Duration) -> (u64, u64) {
    let duration = lease_duration.as_secs().max(2);
    let grace = duration
        .saturating_sub(retry_period.as_secs().max(1))
        .clamp(1, duration - 1);
    (duration, grace)
}

/// How long after a renewal the leader stops writing unless it has seen the next one:
/// `renewDeadline`, as controller-runtime's leader gives up, and at least a second before
/// the lease expires, since a standby may take it the moment it does.
fn step_down_after(lease_secs: u64, renew_deadline: Duration) -> Duration {
    let lease = Duration::from_secs(lease_secs);
    renew_deadline.clamp(Duration::from_secs(1), lease - Duration::from_secs(1))
}

/// When the holder of `lease` must stop unless renewed again: `None` if it is not held
/// by `identity` (or has no renewal time).
fn confirmed_until(
    lease: Option<&Lease>,
    identity: &str,
    step_down_after: Duration,
) -> Option<Instant> {
    let spec = lease?.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let age_ms = Timestamp::now().as_millisecond() - renewed.as_millisecond();
    let left = step_down_after.as_millis() as i64 - age_ms;
    Some(Instant::now() + Duration::from_millis(left.max(0) as u64))
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
        for (lease, retry, want) in [
            // Renewed every 2 s, as controller-runtime does.
            (s(15), s(2), (15, 13)),
            (s(137), s(26), (137, 111)),
            // A period at or past the duration still renews a second early.
            (s(4), s(4), (4, 1)),
            (s(4), s(9), (4, 1)),
            // Sub-second periods renew every second; sub-second leases become the smallest.
            (s(15), Duration::from_millis(500), (15, 14)),
            (Duration::from_millis(500), Duration::ZERO, (2, 1)),
        ] {
            let (duration, grace) = lease_timing(lease, retry);
            assert_eq!((duration, grace), want, "{lease:?} / {retry:?}");
            assert!(grace > 0 && grace < duration);
        }
        assert!(*always_leader().borrow());
    }

    #[test]
    fn a_leader_steps_down_after_renew_deadline_and_before_its_lease_expires() {
        let s = Duration::from_secs;
        assert_eq!(step_down_after(15, s(10)), s(10));
        // Never later than a second before expiry, never sooner than a second.
        assert_eq!(step_down_after(15, s(15)), s(14));
        assert_eq!(step_down_after(15, Duration::ZERO), s(1));
    }

    #[test]
    fn only_our_own_renewal_confirms_leadership() {
        let lease = |holder: &str, age_secs: i64| -> Lease {
            let renewed = Timestamp::from_second(Timestamp::now().as_second() - age_secs).unwrap();
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "l"},
                "spec": {"holderIdentity": holder, "renewTime": renewed.to_string()},
            }))
            .unwrap()
        };
        let after = Duration::from_secs(10);
        let until = confirmed_until(Some(&lease("me", 3)), "me", after).unwrap();
        // Renewed 3 to 4 s ago (whole seconds): 6 to 7 s left.
        let left = until - Instant::now();
        assert!(
            left > Duration::from_secs(5) && left <= Duration::from_secs(7),
            "{left:?}"
        );
        // A renewal older than the step-down point confirms nothing beyond now.
        let until = confirmed_until(Some(&lease("me", 20)), "me", after).unwrap();
        assert!(until <= Instant::now());
        assert!(confirmed_until(Some(&lease("other", 0)), "me", after).is_none());
        assert!(confirmed_until(None, "me", after).is_none());
    }
}
