//! The HTTPS server the API server calls: TLS from the [`CertificateStore`] (through
//! rustls), one POST route per path in [`PATHS`], each answering an AdmissionReview.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::configuration::PATHS;
use super::review::{Validator, Verdict};
use crate::metrics::Metrics;

/// A TLS handshake that takes longer than this is dropped (a stuck client must not hold
/// a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct AppState {
    validator: Arc<Validator>,
    metrics: Arc<Metrics>,
}

/// Serves the webhook on `address` (`host:port`) until `stopped` completes. Fails only
/// when the address cannot be bound.
pub async fn serve(
    address: &str,
    tls: rustls::ServerConfig,
    validator: Arc<Validator>,
    metrics: Arc<Metrics>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tcp = bind(address).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("binding the webhook server to {address}: {e}"),
        )
    })?;
    let local = tcp.local_addr()?;
    tracing::info!(address = %local, "webhook server listening");
    let router = PATHS
        .iter()
        .fold(Router::new(), |router, path| {
            router.route(path, post(review))
        })
        .with_state(AppState { validator, metrics });
    let listener = TlsListener::start(tcp, TlsAcceptor::from(Arc::new(tls)));
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
}

/// Binds `address`; `[::]:port` (every interface, both families: the API server may call
/// a pod's IPv6 address) falls back to `0.0.0.0:port` where the kernel has no IPv6.
async fn bind(address: &str) -> std::io::Result<TcpListener> {
    match TcpListener::bind(address).await {
        Err(e)
            if address.starts_with("[::]:")
                && (e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                    || e.kind() == std::io::ErrorKind::AddrNotAvailable) =>
        {
            TcpListener::bind(address.replacen("[::]", "0.0.0.0", 1)).await
        }
        other => other,
    }
}

async fn review(State(state): State<AppState>, body: Bytes) -> Response {
    let started = Instant::now();
    match state.validator.review(&body) {
        Ok(reviewed) => {
            let allowed = reviewed.verdict == Verdict::Allowed;
            state
                .metrics
                .record_review(&reviewed.kind, allowed, started.elapsed());
            if let Verdict::Denied(message) = &reviewed.verdict {
                tracing::info!(kind = %reviewed.kind, %message, "admission denied");
            }
            (
                [(header::CONTENT_TYPE, "application/json")],
                reviewed.response.to_string(),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "malformed admission review");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}

/// Accepted connections whose TLS handshake completed. Handshakes run in their own
/// tasks, so a slow client delays nobody else's.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn start(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "webhook TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "webhook TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor task ended (it does not, short of the runtime stopping).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_interface_includes_ipv4() {
        let listener = bind("[::]:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        accept.await.unwrap().unwrap();
    }
}
