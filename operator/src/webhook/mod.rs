//! The validating admission webhook, spire-controller-manager's drop-in: the same paths
//! and the same ValidatingWebhookConfiguration (named by
//! `validatingWebhookConfigurationName`), a serving certificate minted by SPIRE, and
//! the reconciler's own parsing as the verdict.
//!
//! - [`review`]: the verdict on one AdmissionReview (pure).
//! - [`configuration`]: which webhooks of the configuration are ours, their DNS names,
//!   the caBundle patch (pure).
//! - [`certificate`]: key, CSR, renewal time, the rustls certificate resolver.
//! - [`manager`]: the loop that mints, renews and patches (every replica).
//! - [`server`]: the HTTPS server.

pub mod certificate;
pub mod configuration;
pub mod manager;
pub mod review;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

pub use certificate::CertificateStore;
pub use manager::ManagerConfig;
pub use review::Validator;

use crate::metrics::Metrics;

/// The lifetime spire-controller-manager asks of SPIRE for its webhook certificate.
pub const DEFAULT_CERTIFICATE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Starts the HTTPS server on `address` with an empty [`CertificateStore`] (filled by
/// [`manager::run`]). A server that cannot bind logs `webhook server failed` and ends.
pub fn spawn_server(
    address: String,
    validator: Validator,
    metrics: Arc<Metrics>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<(Arc<CertificateStore>, tokio::task::JoinHandle<()>), rustls::Error> {
    let store = Arc::new(CertificateStore::default());
    let tls = certificate::server_config(store.clone())?;
    let handle = tokio::spawn(async move {
        if let Err(e) = server::serve(&address, tls, Arc::new(validator), metrics, stopped).await {
            tracing::error!(error = %e, "webhook server failed");
        }
    });
    Ok((store, handle))
}
