//! The metrics and health HTTP servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness inputs, set by the reconciler.
#[derive(Debug, Default)]
pub struct Health {
    caches_synced: AtomicBool,
    spire_reachable: AtomicBool,
}

impl Health {
    /// Not ready until both inputs are set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every watch has completed its first listing.
    pub fn set_caches_synced(&self, synced: bool) {
        self.caches_synced.store(synced, Ordering::Relaxed);
    }

    /// The last SPIRE call reached the server.
    pub fn set_spire_reachable(&self, reachable: bool) {
        self.spire_reachable.store(reachable, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    /// Why not ready, one reason per failed check.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if !self.caches_synced.load(Ordering::Relaxed) {
            reasons.push("caches not synced");
        }
        if !self.spire_reachable.load(Ordering::Relaxed) {
            reasons.push("SPIRE server not reachable");
        }
        reasons
    }
}

/// A server could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("binding {address}")]
    Bind {
        /// The address, as configured.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving on {address}")]
    Serve {
        /// The address, as configured.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Go-style listen addresses (`:8082`) mean every interface.
pub fn bind_address(address: &str) -> String {
    match address.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => address.to_owned(),
    }
}

/// Serves `GET /metrics` until `shutdown` completes.
pub async fn serve_metrics(
    address: &str,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    serve(address, app, shutdown).await
}

/// Serves `liveness_path` (always 200) and `readiness_path` (200 when ready, else 503
/// with the reasons) until `shutdown` completes.
pub async fn serve_health(
    address: &str,
    health: Arc<Health>,
    liveness_path: &str,
    readiness_path: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let app = Router::new()
        .route(liveness_path, get(|| async { "ok" }))
        .route(
            readiness_path,
            get(move || {
                let health = health.clone();
                async move {
                    let reasons = health.not_ready_reasons();
                    if reasons.is_empty() {
                        (StatusCode::OK, "ok".to_owned()).into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n")).into_response()
                    }
                }
            }),
        );
    serve(address, app, shutdown).await
}

async fn serve(
    address: &str,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let listener = tokio::net::TcpListener::bind(bind_address(address))
        .await
        .map_err(|source| HttpError::Bind {
            address: address.to_owned(),
            source,
        })?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| HttpError::Serve {
            address: address.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get_path(address: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    fn free_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[test]
    fn go_style_addresses_mean_all_interfaces() {
        assert_eq!(bind_address(":8082"), "0.0.0.0:8082");
        assert_eq!(bind_address("127.0.0.1:9"), "127.0.0.1:9");
    }

    #[tokio::test]
    async fn readiness_follows_its_inputs_and_metrics_are_served() {
        let health = Arc::new(Health::new());
        let address = free_address();
        let server = {
            let (health, address) = (health.clone(), address.clone());
            tokio::spawn(async move {
                serve_health(
                    &address,
                    health,
                    "/healthz",
                    "/readyz",
                    std::future::pending(),
                )
                .await
            })
        };
        let metrics_address = free_address();
        let metrics_server = {
            let address = metrics_address.clone();
            tokio::spawn(async move {
                serve_metrics(&address, Arc::new(Metrics::new()), std::future::pending()).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let not_ready = get_path(&address, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains("caches not synced"));
        health.set_caches_synced(true);
        health.set_spire_reachable(true);
        assert!(
            get_path(&address, "/readyz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get_path(&address, "/healthz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let metrics = get_path(&metrics_address, "/metrics").await;
        assert!(metrics.contains("spire_operator_passes_total"), "{metrics}");
        server.abort();
        metrics_server.abort();
    }
}
