//! Free loopback ports for components that only listen on TCP.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{LazyLock, Mutex};

static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Default::default);

/// A port on 127.0.0.1 that was free a moment ago and has not been handed to another
/// component of this process. The kernel hands out ephemeral ports round-robin, so
/// reuse by another process within a test's lifetime is unlikely; the set rules out
/// reuse within this one, where tests run in parallel.
pub fn free_port() -> std::io::Result<u16> {
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

/// Runs `start` again, up to three times in all, when it failed because a port
/// [`free_port`] handed out was taken by another process before the component bound it
/// (the component's log, carried in the error, says "address already in use").
pub async fn retry_on_port_clash<T, F, Fut>(what: &str, mut start: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(e) if attempt < 3 && format!("{e:?}").contains("address already in use") => {
                eprintln!("[harness] {what}: a port was taken meanwhile; starting again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_clash_is_retried_and_other_errors_are_not() {
        let mut calls = 0;
        let result = retry_on_port_clash("test", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    anyhow::bail!(
                        "etcd exited: listen tcp 127.0.0.1:1: bind: address already in use"
                    )
                }
                Ok(n)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
        let mut calls = 0;
        let result: anyhow::Result<()> = retry_on_port_clash("test", || {
            calls += 1;
            async { anyhow::bail!("no such file") }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
