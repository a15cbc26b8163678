//! The metrics and health HTTP servers.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Liveness: which long-lived tasks have ended.
///
/// Readiness is deliberately not fed by sync state or SPIRE reachability: the operator
/// usually runs as a sidecar of the SPIRE server, whose Service drops the pod when any
/// container is unready, so an unready operator would take identity issuance down with
/// it. Those states are metrics, conditions and events instead.
#[derive(Debug, Default)]
pub struct Health {
    dead_tasks: Mutex<Vec<&'static str>>,
}

impl Health {
    /// Every task alive.
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard for the task `name`: when the task ends ([`TaskGuard::ended`]) or
    /// panics, `/healthz` fails naming it, so the kubelet restarts the process. Dropping
    /// the guard otherwise (the runtime shutting down) marks nothing.
    pub fn task_alive(self: &Arc<Self>, name: &'static str) -> TaskGuard {
        TaskGuard {
            health: self.clone(),
            name,
        }
    }

    /// Tasks that ended; empty while the process is healthy.
    pub fn dead_tasks(&self) -> Vec<&'static str> {
        self.dead_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn mark_dead(&self, name: &'static str) {
        tracing::error!(
            task = name,
            "a long-lived task ended; /healthz reports unhealthy"
        );
        self.dead_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name);
    }
}

/// Reports its task dead when it ends or panics; see [`Health::task_alive`].
#[derive(Debug)]
pub struct TaskGuard {
    health: Arc<Health>,
    name: &'static str,
}

impl TaskGuard {
    /// The task is returning although it should run for the life of the process.
    pub fn ended(self) {
        self.health.mark_dead(self.name);
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.health.mark_dead(self.name);
        }
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

/// Serves `liveness_path` (200 while every task lives, else 500 naming the dead ones)
/// and `readiness_path` (200: the process serves) until `shutdown` completes.
pub async fn serve_health(
    address: &str,
    health: Arc<Health>,
    liveness_path: &str,
    readiness_path: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let app = Router::new()
        .route(
            liveness_path,
            get(move || {
                let health = health.clone();
                async move {
                    let dead = health.dead_tasks();
                    if dead.is_empty() {
                        (StatusCode::OK, "ok".to_owned()).into_response()
                    } else {
                        let body = format!("task ended: {}", dead.join(", "));
                        (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
                    }
                }
            }),
        )
        .route(readiness_path, get(|| async { "ok" }));
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
    async fn readiness_means_serving_and_a_dead_task_fails_liveness() {
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
        // Nothing synced, SPIRE never reached: still ready, or the SPIRE server sharing
        // the pod would leave its Service.
        let ready = get_path(&address, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

        assert!(
            get_path(&address, "/healthz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let ends = tokio::spawn({
            let guard = health.task_alive("watch pods");
            async move { guard.ended() }
        });
        let panics = tokio::spawn({
            let guard = health.task_alive("watch nodes");
            async move {
                let _guard = guard;
                panic!("a bug");
            }
        });
        let shut_down = tokio::spawn({
            let guard = health.task_alive("watch namespaces");
            async move {
                let _guard = guard;
                std::future::pending::<()>().await
            }
        });
        let _ = ends.await;
        let _ = panics.await;
        shut_down.abort();
        let _ = shut_down.await;
        let unhealthy = get_path(&address, "/healthz").await;
        assert!(unhealthy.starts_with("HTTP/1.1 500"), "{unhealthy}");
        assert!(unhealthy.contains("watch pods"), "{unhealthy}");
        assert!(unhealthy.contains("watch nodes"), "{unhealthy}");
        assert!(
            !unhealthy.contains("watch namespaces"),
            "a task dropped at shutdown did not end: {unhealthy}"
        );
        assert!(
            get_path(&address, "/readyz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let metrics = get_path(&metrics_address, "/metrics").await;
        assert!(metrics.contains("spire_operator_passes_total"), "{metrics}");
        server.abort();
        metrics_server.abort();
    }
}
