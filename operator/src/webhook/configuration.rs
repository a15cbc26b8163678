//! The ValidatingWebhookConfiguration the operator serves (named by
//! `validatingWebhookConfigurationName`): which of its webhooks are ours, the DNS names
//! their Services are called by, and the patch that brings their `caBundle` in line with
//! the trust bundle. Pure: values in, values out.
//!
//! A webhook is ours when it calls a Service (`clientConfig.service`) on one of
//! [`PATHS`]. Only those get a `caBundle`, and only their Services give DNS names; other
//! webhooks someone keeps in the same object are left as they are. (spire-controller-
//! manager patches every webhook of the object.) Webhooks that call a `url` are not
//! managed: SPIRE mints DNS names, and the name in a URL is the user's to certify.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingWebhook, ValidatingWebhookConfiguration,
};
use serde_json::{Value, json};

/// Path of the ClusterSPIFFEID webhook, as spire-controller-manager serves it.
pub const CLUSTER_SPIFFE_ID_PATH: &str = "/validate-spire-spiffe-io-v1alpha1-clusterspiffeid";
/// Path of the ClusterFederatedTrustDomain webhook, as spire-controller-manager serves it.
pub const CLUSTER_FEDERATED_TRUST_DOMAIN_PATH: &str =
    "/validate-spire-spiffe-io-v1alpha1-clusterfederatedtrustdomain";
/// Path of the ClusterStaticEntry webhook (spire-controller-manager has none; the name
/// follows its scheme).
pub const CLUSTER_STATIC_ENTRY_PATH: &str = "/validate-spire-spiffe-io-v1alpha1-clusterstaticentry";

/// Every path the webhook server answers on.
pub const PATHS: [&str; 3] = [
    CLUSTER_SPIFFE_ID_PATH,
    CLUSTER_STATIC_ENTRY_PATH,
    CLUSTER_FEDERATED_TRUST_DOMAIN_PATH,
];

/// Whether `webhook` calls a Service on one of our paths.
pub fn is_ours(webhook: &ValidatingWebhook) -> bool {
    webhook
        .client_config
        .service
        .as_ref()
        .and_then(|s| s.path.as_deref())
        .is_some_and(|path| PATHS.contains(&path))
}

/// `<service>.<namespace>.svc` of each of our webhooks' Services, sorted, without
/// duplicates: the names the API server verifies the certificate against.
pub fn dns_names(configuration: &ValidatingWebhookConfiguration) -> Vec<String> {
    let mut names: Vec<String> = configuration
        .webhooks
        .iter()
        .flatten()
        .filter(|w| is_ours(w))
        .filter_map(|w| w.client_config.service.as_ref())
        .filter(|s| !s.name.is_empty() && !s.namespace.is_empty())
        .map(|s| format!("{}.{}.svc", s.name, s.namespace))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A strategic merge patch that sets `ca_bundle` (PEM) on each of our webhooks whose
/// `caBundle` differs, identified by name (the list's merge key); `None` when all match.
pub fn ca_bundle_patch(
    configuration: &ValidatingWebhookConfiguration,
    ca_bundle: &[u8],
) -> Option<Value> {
    let stale: Vec<Value> = configuration
        .webhooks
        .iter()
        .flatten()
        .filter(|w| is_ours(w))
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_bundle))
        .map(|w| {
            json!({
                "name": w.name,
                "clientConfig": {"caBundle": ByteString(ca_bundle.to_vec())},
            })
        })
        .collect();
    (!stale.is_empty()).then(|| json!({ "webhooks": stale }))
}

/// PEM of the DER certificates in `authorities`, in order: the `caBundle` value.
pub fn pem_bundle<'a>(authorities: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let blocks: Vec<pem::Pem> = authorities
        .into_iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.to_vec()))
        .collect();
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_many_config(&blocks, config).into_bytes()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::{ServiceReference, WebhookClientConfig};

    use super::*;

    fn webhook(
        name: &str,
        service: Option<(&str, &str)>,
        path: &str,
        ca: Option<&[u8]>,
    ) -> ValidatingWebhook {
        ValidatingWebhook {
            name: name.into(),
            client_config: WebhookClientConfig {
                service: service.map(|(ns, svc)| ServiceReference {
                    namespace: ns.into(),
                    name: svc.into(),
                    path: Some(path.into()),
                    port: Some(443),
                }),
                url: service
                    .is_none()
                    .then(|| format!("https://hook.example{path}")),
                ca_bundle: ca.map(|c| ByteString(c.to_vec())),
            },
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            ..Default::default()
        }
    }

    fn configuration(webhooks: Vec<ValidatingWebhook>) -> ValidatingWebhookConfiguration {
        ValidatingWebhookConfiguration {
            webhooks: Some(webhooks),
            ..Default::default()
        }
    }

    #[test]
    fn only_our_paths_on_services_count() {
        let c = configuration(vec![
            webhook(
                "a",
                Some(("spire-server", "scm-webhook")),
                CLUSTER_SPIFFE_ID_PATH,
                None,
            ),
            webhook(
                "b",
                Some(("spire-server", "scm-webhook")),
                CLUSTER_FEDERATED_TRUST_DOMAIN_PATH,
                None,
            ),
            webhook("c", Some(("other", "policy")), "/validate-pods", None),
            webhook("d", None, CLUSTER_STATIC_ENTRY_PATH, None),
        ]);
        assert_eq!(dns_names(&c), ["scm-webhook.spire-server.svc"]);
        let patch = ca_bundle_patch(&c, b"PEM").unwrap();
        let names: Vec<&str> = patch["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(patch["webhooks"][0]["clientConfig"]["caBundle"], "UEVN");
    }

    #[test]
    fn no_patch_when_every_bundle_matches() {
        let c = configuration(vec![
            webhook(
                "a",
                Some(("ns", "svc")),
                CLUSTER_SPIFFE_ID_PATH,
                Some(b"PEM"),
            ),
            webhook(
                "b",
                Some(("ns", "svc")),
                CLUSTER_STATIC_ENTRY_PATH,
                Some(b"OLD"),
            ),
        ]);
        assert_eq!(
            ca_bundle_patch(&c, b"PEM").unwrap()["webhooks"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let c = configuration(vec![webhook(
            "a",
            Some(("ns", "svc")),
            CLUSTER_SPIFFE_ID_PATH,
            Some(b"PEM"),
        )]);
        assert_eq!(ca_bundle_patch(&c, b"PEM"), None);
        assert_eq!(ca_bundle_patch(&configuration(vec![]), b"PEM"), None);
    }

    #[test]
    fn the_bundle_is_pem_in_order() {
        let pem = String::from_utf8(pem_bundle([[7u8; 100].as_slice(), b"x".as_slice()])).unwrap();
        let blocks = pem::parse_many(&pem).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].contents(), [7u8; 100]);
        assert_eq!(blocks[1].contents(), b"x");
        assert!(!pem.contains('\r'));
    }
}
