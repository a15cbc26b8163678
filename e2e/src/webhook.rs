//! Letting the real kube-apiserver call a webhook server running on this host.
//!
//! There is no kube-proxy and no cluster DNS here, so a Service's ClusterIP leads
//! nowhere. A control plane started with [`Options::endpoint_routing`] resolves a
//! webhook's `clientConfig.service` through the Service's EndpointSlices instead
//! (kube-apiserver's `buildServiceResolver`, v1.36), and still verifies the certificate
//! against `<service>.<namespace>.svc`, as in a cluster. EndpointSlice validation refuses
//! loopback addresses, so the slice points at this host's own non-loopback address
//! ([`host_address`]) and the webhook server listens there.
//!
//! [`Options::endpoint_routing`]: crate::control_plane::Options::endpoint_routing

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::wait;

/// Field manager of the objects created here.
const MANAGER: &str = "e2e-webhook";

/// This host's first global-scope IPv4 address (`ip -4 -o addr show scope global`), or
/// `E2E_HOST_ADDRESS` when set.
pub fn host_address() -> anyhow::Result<Ipv4Addr> {
    if let Ok(address) = std::env::var("E2E_HOST_ADDRESS") {
        return address
            .parse()
            .with_context(|| format!("E2E_HOST_ADDRESS={address:?} is not an IPv4 address"));
    }
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .context("running `ip -4 -o addr show scope global`")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| {
            format!("no global IPv4 address on this host (set E2E_HOST_ADDRESS); `ip` said: {text}")
        })
}

/// One webhook of a configuration: its name, our path, the resource it validates.
pub struct Hook<'a> {
    /// `webhooks[].name`, e.g. `vclusterspiffeid.kb.io`.
    pub name: &'a str,
    /// `clientConfig.service.path`.
    pub path: &'a str,
    /// The `spire.spiffe.io` resource, e.g. `clusterspiffeids`.
    pub resource: &'a str,
}

/// Server-side applies the Service `namespace/service` as spiffe/helm-charts-hardened
/// renders it (port 443 named `https`, `targetPort: https`) but without a selector, and
/// an EndpointSlice for it at `host:port`.
pub async fn route_service(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    host: Ipv4Addr,
    port: u16,
) -> anyhow::Result<()> {
    let params = PatchParams::apply(MANAGER).force();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "namespace": namespace},
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}],
        },
    }))?;
    Api::<Service>::namespaced(client.clone(), namespace)
        .patch(service, &params, &Patch::Apply(&svc))
        .await
        .with_context(|| format!("applying Service {namespace}/{service}"))?;
    let slice_name = format!("{service}-e2e");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [host.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .patch(&slice_name, &params, &Patch::Apply(&slice))
        .await
        .with_context(|| format!("applying the EndpointSlice of {namespace}/{service}"))?;
    Ok(())
}

/// Server-side applies the ValidatingWebhookConfiguration `name`: one webhook per
/// `hooks`, each calling `namespace/service` (port unset, so 443) for CREATE and UPDATE
/// of its resource, with `failure_policy`, no `caBundle` (the operator sets it).
pub async fn apply_configuration(
    client: &kube::Client,
    name: &str,
    namespace: &str,
    service: &str,
    hooks: &[Hook<'_>],
    failure_policy: &str,
) -> anyhow::Result<()> {
    let webhooks: Vec<_> = hooks
        .iter()
        .map(|hook| {
            json!({
                "name": hook.name,
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"service": {"name": service, "namespace": namespace, "path": hook.path}},
                "failurePolicy": failure_policy,
                "sideEffects": "None",
                "timeoutSeconds": 10,
                "rules": [{
                    "apiGroups": ["spire.spiffe.io"],
                    "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [hook.resource],
                }],
            })
        })
        .collect();
    let configuration: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": webhooks,
    }))?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&configuration),
        )
        .await
        .with_context(|| format!("applying ValidatingWebhookConfiguration {name}"))?;
    Ok(())
}

/// Waits until every webhook of configuration `name` carries a `caBundle`; returns them.
pub async fn wait_ca_bundles(client: &kube::Client, name: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let api = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    wait::until(
        &format!("caBundle on every webhook of {name}"),
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let api = api.clone();
            async move {
                let configuration = api.get(name).await?;
                let bundles: Vec<Vec<u8>> = configuration
                    .webhooks
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|w| w.client_config.ca_bundle.map(|b| b.0))
                    .collect();
                let count = bundles.len();
                if count == 0 || bundles.iter().any(Vec::is_empty) {
                    return Ok(None);
                }
                Ok(Some(bundles))
            }
        },
    )
    .await
}

/// Runs `kubectl apply -f -` with `manifest` as the admin of `kubeconfig`; returns
/// stdout on success and stderr as the error otherwise.
pub fn kubectl_apply(kubeconfig: &std::path::Path, manifest: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(crate::tools::tool("kubectl")?)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting kubectl")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(manifest.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The leaf certificate (DER) the webhook server at `address` presents for
/// `server_name`, after verifying the chain against `roots` (DER CA certificates, e.g. the
/// SPIRE trust bundle) and the name, as the API server does with the `caBundle`.
pub async fn served_certificate(
    address: SocketAddr,
    server_name: &str,
    roots: &[Vec<u8>],
) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store.add(CertificateDer::from(der.clone()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to the webhook at {address}"))?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with the webhook at {address} as {server_name}"))?;
    let (_, connection) = tls.get_ref();
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("the webhook presented no certificate")?;
    Ok(leaf.to_vec())
}
