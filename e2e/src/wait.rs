//! Polling with a deadline, for conditions that become true eventually.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};

/// Calls `probe` every `interval` until it returns `Ok(Some(value))` or `timeout`
/// passes. Errors count as "not yet", and the last one is reported on timeout, so a
/// failing test says why the condition never held; an error caused by
/// [`crate::process::Exited`] ends the wait at once.
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(e) if e.chain().any(|c| c.is::<crate::process::Exited>()) => {
                return Err(e.context(format!("{what}: a component exited")));
            }
            Err(e) => Some(e),
        };
        if tokio::time::Instant::now() >= deadline {
            return match last {
                Some(e) => Err(e).with_context(|| format!("{what}: not ready after {timeout:?}")),
                None => bail!("{what}: not ready after {timeout:?}"),
            };
        }
        tokio::time::sleep(interval).await;
    }
}
