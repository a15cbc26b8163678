//! Keeps the webhook's serving certificate and the ValidatingWebhookConfiguration's
//! `caBundle` current. Runs on every replica, leader or not: each serves the webhook
//! with its own key.
//!
//! - The configuration named by `validatingWebhookConfigurationName` is watched (that
//!   one object, by a field selector, so RBAC can name it).
//! - A certificate is minted (SVID v1 MintX509SVID from a CSR of a fresh key) when there
//!   is none, at half its lifetime, and when the DNS names of our webhooks' Services
//!   change. A failed mint is retried with backoff (1 s doubling to 1 min) while the
//!   current certificate keeps serving.
//! - The trust bundle is read every 5 s; when the `caBundle` of one of our webhooks
//!   differs, a strategic merge patch sets it on exactly those webhooks.
//!
//! Every replica patches: the value comes from the same SPIRE server, so the patches
//! agree and the one that arrives second changes nothing. A replica whose server
//! already has a new CA while another's does not yet would alternate the value for at
//! most one bundle poll; SPIRE publishes a new CA in the bundle well before it signs
//! with it, so both values verify the certificates in use.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};

use super::certificate::{CertificateError, CertificateStore, Request, renew_at};
use super::configuration::{ca_bundle_patch, dns_names, pem_bundle};
use crate::metrics::Metrics;
use crate::spire::{SpireClient, SpireError};

/// How often the trust bundle is read (spire-controller-manager's interval).
const BUNDLE_INTERVAL: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the manager needs to know.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The trust domain of the webhook's SPIFFE ID.
    pub trust_domain: String,
    /// `validatingWebhookConfigurationName`.
    pub configuration_name: String,
    /// Lifetime asked of SPIRE for each certificate (the server may cap it).
    pub certificate_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
enum MintError {
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error(transparent)]
    Spire(#[from] SpireError),
}

/// The certificate in use.
struct Issued {
    dns_names: Vec<String>,
    renew_at: SystemTime,
}

/// A retry schedule: due now, or at a time pushed out by doubling delays on failure.
struct Backoff {
    delay: Duration,
    due: Instant,
}

impl Backoff {
    fn new() -> Self {
        Self {
            delay: MIN_BACKOFF,
            due: Instant::now(),
        }
    }

    fn failed(&mut self) {
        self.due = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self) {
        self.delay = MIN_BACKOFF;
        self.due = Instant::now();
    }
}

/// Runs for the life of the process.
pub async fn run(
    kube: kube::Client,
    spire: SpireClient,
    config: ManagerConfig,
    store: Arc<CertificateStore>,
    metrics: Arc<Metrics>,
) {
    let name = config.configuration_name.clone();
    let api: Api<ValidatingWebhookConfiguration> = Api::all(kube);
    let selector = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api.clone(), selector)
        .default_backoff()
        .boxed();
    let mut current: Option<ValidatingWebhookConfiguration> = None;
    let mut listing: Option<ValidatingWebhookConfiguration> = None;
    let mut listed = false;
    let mut issued: Option<Issued> = None;
    let mut ca_bundle: Option<Vec<u8>> = None;
    let mut bundle_due = Instant::now();
    let mut mint = Backoff::new();
    let mut patch = Backoff::new();
    let mut warned_missing = false;
    let mut warned_no_service = false;
    let mut bundle_failing = false;
    loop {
        let wake = next_wake(bundle_due, issued.as_ref(), &mint);
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => listing = None,
                Some(Ok(watcher::Event::InitApply(o))) => listing = Some(o),
                Some(Ok(watcher::Event::InitDone)) => {
                    current = listing.take();
                    listed = true;
                }
                Some(Ok(watcher::Event::Apply(o))) => current = Some(o),
                Some(Ok(watcher::Event::Delete(_))) => current = None,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, configuration = %name, "watching the ValidatingWebhookConfiguration");
                }
                None => return,
            },
            () = tokio::time::sleep_until(wake.into()) => {}
        }

        if Instant::now() >= bundle_due {
            bundle_due = Instant::now() + BUNDLE_INTERVAL;
            match spire.get_bundle().await {
                Ok(bundle) => {
                    if std::mem::take(&mut bundle_failing) {
                        tracing::info!("reading the trust bundle again");
                    }
                    ca_bundle = Some(pem_bundle(
                        bundle.x509_authorities.iter().map(|a| a.asn1.as_slice()),
                    ));
                }
                // Once per outage: it is retried every 5 s.
                Err(e) if !bundle_failing => {
                    bundle_failing = true;
                    tracing::warn!(error = %e, "reading the trust bundle for the webhook caBundle (retried every 5 s)");
                }
                Err(e) => tracing::debug!(error = %e, "reading the trust bundle"),
            }
        }

        let Some(configuration) = &current else {
            if listed && !warned_missing {
                warned_missing = true;
                tracing::warn!(
                    configuration = %name,
                    "ValidatingWebhookConfiguration not found: no webhook certificate is minted until it exists (validatingWebhookConfigurationName)"
                );
            }
            continue;
        };
        warned_missing = false;

        let names = dns_names(configuration);
        if names.is_empty() {
            if !warned_no_service {
                warned_no_service = true;
                tracing::warn!(
                    configuration = %name,
                    "no webhook of this ValidatingWebhookConfiguration calls a Service on a spire-operator path; nothing to certify"
                );
            }
        } else {
            warned_no_service = false;
            let reason = match &issued {
                None => Some("initializing"),
                Some(i) if i.dns_names != names => Some("Service DNS names changed"),
                Some(i) if SystemTime::now() >= i.renew_at => Some("half its lifetime passed"),
                Some(_) => None,
            };
            if let Some(reason) = reason
                && Instant::now() >= mint.due
            {
                match mint_certificate(&spire, &config, &names).await {
                    Ok((key, expires)) => {
                        store.set(key);
                        let now = SystemTime::now();
                        let expiry = expires
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default();
                        tracing::info!(reason, dns_names = ?names, expires_unix = expiry.as_secs(), "minted the webhook certificate");
                        metrics.webhook_certificates_minted.inc();
                        metrics
                            .webhook_certificate_expiry
                            .set(i64::try_from(expiry.as_secs()).unwrap_or(i64::MAX));
                        issued = Some(Issued {
                            dns_names: names,
                            renew_at: renew_at(now, expires),
                        });
                        mint.succeeded();
                    }
                    Err(e) => {
                        metrics.webhook_mint_failures.inc();
                        mint.failed();
                        tracing::warn!(error = %e, retry_in = ?mint.delay, reason, "minting the webhook certificate");
                    }
                }
            }
        }

        if let Some(ca) = &ca_bundle
            && let Some(body) = ca_bundle_patch(configuration, ca)
            && Instant::now() >= patch.due
        {
            match api
                .patch(&name, &PatchParams::default(), &Patch::Strategic(body))
                .await
            {
                Ok(patched) => {
                    tracing::info!(configuration = %name, "set the caBundle of our webhooks to the trust bundle");
                    metrics.webhook_ca_bundle_patches.inc();
                    current = Some(patched);
                    patch.succeeded();
                }
                Err(e) => {
                    patch.failed();
                    tracing::warn!(error = %e, configuration = %name, retry_in = ?patch.delay, "patching the caBundle");
                }
            }
        }
    }
}

/// The earliest of the next bundle read and the next moment a mint may be due (the
/// renewal time, not before a pending retry). Patch retries ride on the bundle reads.
/// Times already past are left out: what was actionable was done in this turn, and
/// what was not (no configuration yet) waits for an event or the next read.
fn next_wake(bundle_due: Instant, issued: Option<&Issued>, mint: &Backoff) -> Instant {
    let now = Instant::now();
    let renewal = issued.map(|i| {
        now + i
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    });
    let mint_at = renewal.map_or(mint.due, |r| r.max(mint.due));
    if mint_at > now {
        bundle_due.min(mint_at)
    } else {
        bundle_due
    }
}

async fn mint_certificate(
    spire: &SpireClient,
    config: &ManagerConfig,
    dns_names: &[String],
) -> Result<(Arc<rustls::sign::CertifiedKey>, SystemTime), MintError> {
    let request = Request::new(&config.trust_domain, dns_names)?;
    let svid = spire
        .mint_x509_svid(request.csr_der.clone(), config.certificate_ttl)
        .await?;
    let expires =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(svid.expires_at).unwrap_or(0));
    Ok((request.certified(svid.cert_chain)?, expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(renew_in: Duration) -> Issued {
        Issued {
            dns_names: vec!["svc.ns.svc".into()],
            renew_at: SystemTime::now() + renew_in,
        }
    }

    fn near(a: Instant, b: Instant) -> bool {
        a.max(b) - a.min(b) < Duration::from_millis(200)
    }

    #[test]
    fn wakes_for_the_renewal_when_it_comes_before_the_bundle_read() {
        let now = Instant::now();
        let bundle = now + BUNDLE_INTERVAL;
        let mint = Backoff::new();
        let wake = next_wake(bundle, Some(&issued(Duration::from_secs(2))), &mint);
        assert!(near(wake, now + Duration::from_secs(2)));
        // A renewal after the next read waits for that read.
        let wake = next_wake(bundle, Some(&issued(Duration::from_secs(3600))), &mint);
        assert!(near(wake, bundle));
    }

    #[test]
    fn a_failed_mint_is_retried_after_its_backoff_not_in_a_loop() {
        let now = Instant::now();
        let bundle = now + BUNDLE_INTERVAL;
        let mut mint = Backoff::new();
        mint.failed();
        // Renewal overdue, retry due in 1 s: wake then, not at once.
        let wake = next_wake(bundle, Some(&issued(Duration::ZERO)), &mint);
        assert!(near(wake, now + MIN_BACKOFF), "{:?}", wake - now);
        // Nothing to mint yet (no configuration): only the bundle read wakes it.
        let idle = Backoff::new();
        assert!(near(next_wake(bundle, None, &idle), bundle));
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_resets() {
        let mut b = Backoff::new();
        let mut delays = Vec::new();
        for _ in 0..8 {
            b.failed();
            delays.push(b.delay.as_secs());
        }
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60, 60]);
        b.succeeded();
        assert_eq!(b.delay, MIN_BACKOFF);
        assert!(b.due <= Instant::now());
    }
}
