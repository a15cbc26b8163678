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
