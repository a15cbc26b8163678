//! A TCP proxy on loopback that a test can cut: a network partition between one client
//! (e.g. one operator replica and the kube-apiserver) and its server, while everything
//! else keeps talking.

use std::path::Path;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections from `127.0.0.1:<port>` to an upstream address until cut.
///
/// Cut, it black-holes: open connections stop carrying bytes but stay open, and new
/// connections are accepted and never answered. That is a partition as a client sees
/// it (calls hang until their own time-outs), not a refused connection it would notice
/// at once. Dropping the proxy closes everything.
pub struct TcpProxy {
    port: u16,
    open: Arc<watch::Sender<bool>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let open = Arc::new(watch::channel(true).0);
        let upstream = upstream.to_owned();
        let accept = {
            let open = open.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(client, upstream.clone(), open.subscribe()));
                }
            })
        };
        Ok(Self { port, open, accept })
    }

    /// The local port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Partitions: from now on nothing passes, in either direction.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Heals the partition for new connections; connections open during the cut stay
    /// dead (clients reconnect, as they would after a real partition timed them out).
    pub fn heal(&self) {
        self.open.send_replace(true);
    }

    /// Writes a copy of `kubeconfig` whose cluster `server` is this proxy, to `path`.
    /// The kube-apiserver's certificate names 127.0.0.1, so TLS passes through unchanged.
    pub fn kubeconfig(&self, kubeconfig: &Path, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(kubeconfig)?;
        let mut replaced = 0;
        let rewritten: Vec<String> = text
            .lines()
            .map(|line| match line.trim_start().strip_prefix("server: ") {
                Some(_) => {
                    replaced += 1;
                    let indent = &line[..line.len() - line.trim_start().len()];
                    format!("{indent}server: https://127.0.0.1:{}", self.port)
                }
                None => line.to_owned(),
            })
            .collect();
        anyhow::ensure!(
            replaced == 1,
            "expected one `server:` line in {}, found {replaced}",
            kubeconfig.display()
        );
        std::fs::write(path, rewritten.join("\n") + "\n")?;
        Ok(())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Connection tasks end when they see the proxy gone.
        self.open.send_replace(false);
    }
}

async fn forward(mut client: TcpStream, upstream: String, mut open: watch::Receiver<bool>) {
    if !*open.borrow_and_update() {
        // Accepted during a cut: hold it unanswered until the proxy goes.
        let _ = open.wait_for(|_| false).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        let _ = client.shutdown().await;
        return;
    };
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = open.wait_for(|open| !open) => true,
    };
    if cut {
        // Keep both sockets open and silent until the proxy is dropped.
        let _ = open.wait_for(|_| false).await;
    }
}
