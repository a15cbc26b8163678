//! Retrying a kind of failure (a failed listing, failed writes): one capped exponential
//! backoff and at most one pending timer per kind, however many passes fail meanwhile,
//! and warnings that do not repeat at the retry rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::dirty::DirtySet;
use super::watch::Dirty;

/// Lets a repeated message through once per `every`, counting what it held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// At most one message per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(messages held back since the last one)` when a message may go out now.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Forgets the history: the next message goes out at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

/// Capped exponential backoff for one kind of failure: each failure that finds no retry
/// pending schedules one `mark` after the next delay; success resets the delay.
pub struct Retrier {
    mark: Dirty,
    dirty: Arc<DirtySet<Dirty>>,
    initial: Duration,
    max: Duration,
    /// Failures in a row that scheduled a retry.
    attempt: u32,
    timer: Option<JoinHandle<()>>,
    log: LogLimiter,
}

impl Retrier {
    /// Retries by marking `mark`, first after `initial`, doubling up to `max`.
    pub fn new(mark: Dirty, dirty: Arc<DirtySet<Dirty>>, initial: Duration, max: Duration) -> Self {
        Self {
            mark,
            dirty,
            initial,
            max,
            attempt: 0,
            timer: None,
            log: LogLimiter::new(Duration::from_secs(60)),
        }
    }

    /// The delay before retry number `attempt` (from 0), with up to 50% jitter so that
    /// replicas and kinds do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max);
        base + base.mul_f64(fastrand::f64() * 0.5)
    }

    /// Records a failure. Schedules a retry unless one is already pending; returns its
    /// delay, or `None` when the pending one covers this failure too.
    pub fn failed(&mut self) -> Option<Duration> {
        if self.pending() {
            return None;
        }
        let delay = self.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let (dirty, mark) = (self.dirty.clone(), self.mark.clone());
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            dirty.mark(mark);
        }));
        Some(delay)
    }

    /// Records a success: the next failure starts from the initial delay again, and a
    /// pending retry is cancelled. Returns how many failures in a row preceded it.
    pub fn succeeded(&mut self) -> u32 {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        self.log.reset();
        std::mem::take(&mut self.attempt)
    }

    /// Whether a retry is scheduled and has not fired yet.
    pub fn pending(&self) -> bool {
        self.timer.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Failures in a row so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether to log this failure now (`Some(held back since the last log)`).
    pub fn should_log(&mut self) -> Option<u64> {
        self.log.allow()
    }
}

impl Drop for Retrier {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_while_a_retry_is_pending_schedule_nothing_more() {
        let dirty = Arc::new(DirtySet::default());
        let mut retrier = Retrier::new(
            Dirty::Retry,
            dirty.clone(),
            Duration::from_millis(500),
            Duration::from_secs(60),
        );
        let first = retrier
            .failed()
            .expect("the first failure schedules a retry");
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_millis(750));
        // A burst of failing passes (churn) while the retry waits.
        for _ in 0..100 {
            assert_eq!(retrier.failed(), None);
        }
        let mut marks = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            marks += dirty.len();
            let _ = tokio::time::timeout(Duration::ZERO, dirty.drain()).await;
        }
        assert_eq!(marks, 1, "one retry for the whole burst");
        assert_eq!(retrier.attempt(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_cap_and_reset_on_success() {
        let dirty = Arc::new(DirtySet::default());
        let mut retrier = Retrier::new(
            Dirty::Resync,
            dirty.clone(),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let mut delays = Vec::new();
        for _ in 0..10 {
            let delay = retrier.failed().unwrap();
            delays.push(delay);
            tokio::time::sleep(delay + Duration::from_millis(1)).await;
            assert_eq!(dirty.drain().await, [Dirty::Resync]);
        }
        for (attempt, delay) in delays.iter().enumerate() {
            let base = Duration::from_secs(1 << attempt.min(6)).min(Duration::from_secs(60));
            assert!(
                *delay >= base && *delay <= base.mul_f64(1.5),
                "attempt {attempt}: {delay:?} outside [{base:?}, 1.5x]"
            );
        }
        assert_eq!(retrier.succeeded(), 10);
        let again = retrier.failed().unwrap();
        assert!(again <= Duration::from_millis(1500));
    }

    #[test]
    fn the_log_limiter_counts_what_it_held_back() {
        let mut log = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), None);
        assert_eq!(log.allow(), None);
        log.reset();
        assert_eq!(log.allow(), Some(0));
    }
}
