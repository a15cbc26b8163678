//! The validating webhook against the real kube-apiserver and SPIRE server: the
//! apiserver calls the operator over TLS (certificate minted by SPIRE, caBundle patched
//! in by the operator), invalid resources are refused with our message, valid ones are
//! admitted, and a short-lived certificate rotates without a refused request.
//!
//! Routing: see `e2e::webhook` (EndpointSlice routing to this host's address).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use e2e::control_plane::Options;
use e2e::operator::{OPERATOR_NAMESPACE, Operator};
use e2e::ports::free_port;
use e2e::webhook::{self, Hook};
use e2e::world::World;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

const CONFIGURATION: &str = "spire-operator-e2e-webhook";
const SERVICE: &str = "spire-operator-webhook";
const MINTED: &str = "spire_operator_webhook_certificates_minted_total";

const HOOKS: [Hook<'static>; 3] = [
    Hook {
        name: "vclusterspiffeid.spire-rs.e2e",
        path: "/validate-spire-spiffe-io-v1alpha1-clusterspiffeid",
        resource: "clusterspiffeids",
    },
    Hook {
        name: "vclusterstaticentry.spire-rs.e2e",
        path: "/validate-spire-spiffe-io-v1alpha1-clusterstaticentry",
        resource: "clusterstaticentries",
    },
    Hook {
        name: "vclusterfederatedtrustdomain.spire-rs.e2e",
        path: "/validate-spire-spiffe-io-v1alpha1-clusterfederatedtrustdomain",
        resource: "clusterfederatedtrustdomains",
    },
];

/// A world whose apiserver reaches the operator's webhook, the operator serving it, and
/// the address it listens on.
async fn served(
    trust_domain: &str,
    extra_config: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(World, Operator, SocketAddr)> {
    let options = Options {
        endpoint_routing: true,
        ..Options::default()
    };
    let world = World::start_without_crds_with(trust_domain, options).await?;
    world.apply_our_crds().await?;
    let (operator, address) = replica(&world, extra_config, env).await?;
    webhook::route_service(
        &world.client,
        OPERATOR_NAMESPACE,
        SERVICE,
        webhook::host_address()?,
        address.port(),
    )
    .await?;
    webhook::apply_configuration(
        &world.client,
        CONFIGURATION,
        OPERATOR_NAMESPACE,
        SERVICE,
        &HOOKS,
        "Fail",
    )
    .await?;
    Ok((world, operator, address))
}

/// An operator replica serving the webhook on this host's address and a free port.
async fn replica(
    world: &World,
    extra_config: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(Operator, SocketAddr)> {
    let host = webhook::host_address()?;
    let port = free_port()?;
    let operator = Operator::start_with_env(
        &world.control_plane,
        &world.spire,
        "webhook",
        &format!(
            "validatingWebhookConfigurationName: {CONFIGURATION}\nwebhook: {{host: \"{host}\", port: {port}}}\n{extra_config}"
        ),
        env,
    )
    .await?;
    Ok((operator, SocketAddr::from((host, port))))
}

/// The certificate the webhook serves, verified as the API server verifies it: against
/// the SPIRE trust bundle, for the Service's DNS name.
async fn served_certificate(world: &World, address: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let roots: Vec<Vec<u8>> = world
        .spire
        .client()
        .get_bundle()
        .await?
        .x509_authorities
        .into_iter()
        .map(|a| a.asn1)
        .collect();
    let name = format!("{SERVICE}.{OPERATOR_NAMESPACE}.svc");
    webhook::served_certificate(address, &name, &roots).await
}

fn api(world: &World, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", kind);
    Api::all_with(world.client.clone(), &ApiResource::from_gvk(&gvk))
}

async fn create(
    world: &World,
    kind: &str,
    name: &str,
    spec: Value,
    dry_run: bool,
) -> anyhow::Result<()> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    api(world, kind).create(&params, &object).await?;
    Ok(())
}

fn valid_csid() -> Value {
    json!({"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}"})
}

/// Waits until a dry-run create of a valid ClusterSPIFFEID passes the webhook (the
/// certificate minted and the caBundle patched in).
async fn wait_admitting(world: &World, operator: &Operator) -> anyhow::Result<()> {
    e2e::wait::until(
        "the webhook admits a valid ClusterSPIFFEID",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            match create(world, "ClusterSPIFFEID", "probe", valid_csid(), true).await {
                Ok(()) => Ok(Some(())),
                Err(e) => Err(e),
            }
        },
    )
    .await
    .with_context(|| operator.log_tail(30))
}

/// Latencies of `n` sequential dry-run creates of a valid ClusterSPIFFEID, sorted: a
/// dry run goes through admission (webhooks included) and stores nothing.
async fn dry_run_latencies(world: &World, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        create(
            world,
            "ClusterSPIFFEID",
            &format!("lat-{i}"),
            valid_csid(),
            true,
        )
        .await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test]
async fn invalid_resources_are_refused_with_our_message_and_valid_ones_admitted()
-> anyhow::Result<()> {
    let (world, operator, address) = served("webhook.test", "", &[]).await?;
    wait_admitting(&world, &operator).await?;

    // The certificate is an X.509-SVID of the webhook's SPIFFE ID with the Service's name.
    let leaf = served_certificate(&world, address).await?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)?;
    let san = cert
        .subject_alternative_name()?
        .context("no subjectAltName")?
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>();
    assert!(
        san.contains(&"URI(spiffe://webhook.test/spire-controller-manager-webhook)".to_owned())
            && san.contains(&format!("DNSName({SERVICE}.{OPERATOR_NAMESPACE}.svc)")),
        "{san:?}"
    );

    // The caBundle the operator set is the SPIRE server's trust bundle.
    let bundles = webhook::wait_ca_bundles(&world.client, CONFIGURATION).await?;
    let authorities = world.spire.client().get_bundle().await?.x509_authorities;
    for bundle in &bundles {
        let pems = pem::parse_many(bundle)?;
        let ders: Vec<&[u8]> = pems.iter().map(|p| p.contents()).collect();
        let want: Vec<&[u8]> = authorities.iter().map(|a| a.asn1.as_slice()).collect();
        assert_eq!(ders, want, "caBundle is the trust bundle");
    }

    // kubectl shows the apiserver's wrapping of our message.
    let manifest = r#"
apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterSPIFFEID
metadata: {name: bad}
spec:
  spiffeIDTemplate: "spiffe://webhook.test/ns/{{ .PodMeta.Namespace }}"
  federatesWith: ["Not A Domain"]
"#;
    let err = webhook::kubectl_apply(world.control_plane.kubeconfig(), manifest)
        .expect_err("an invalid ClusterSPIFFEID is refused");
    let err = err.to_string();
    assert!(
        err.contains(
            "admission webhook \"vclusterspiffeid.spire-rs.e2e\" denied the request: ClusterSPIFFEID \"bad\": spec.federatesWith[0]: \"Not A Domain\" is not a trust domain name"
        ),
        "{err}"
    );
    let out = webhook::kubectl_apply(
        world.control_plane.kubeconfig(),
        &manifest.replace("\"Not A Domain\"", "partner.test"),
    )?;
    assert!(
        out.contains("clusterspiffeid.spire.spiffe.io/bad created"),
        "{out}"
    );

    for (kind, spec, needle) in [
        (
            "ClusterSPIFFEID",
            json!({"spiffeIDTemplate": "spiffe://elsewhere.test/{{ .PodMeta.Name }}"}),
            "spec.spiffeIDTemplate: \"spiffe://elsewhere.test/{{ .PodMeta.Name }}\" renders IDs in trust domain \"elsewhere.test\"",
        ),
        (
            "ClusterStaticEntry",
            json!({"spiffeID": "spiffe://webhook.test/db", "parentID": "spiffe://other.test/agent", "selectors": ["unix:uid:0"]}),
            "spec.parentID: \"spiffe://other.test/agent\" is not in trust domain \"webhook.test\"",
        ),
        (
            "ClusterFederatedTrustDomain",
            json!({"trustDomain": "partner.test", "bundleEndpointURL": "http://partner.test", "bundleEndpointProfile": {"type": "https_web"}}),
            "spec.bundleEndpointURL: \"http://partner.test\" is not a bundle endpoint URL: the scheme must be https",
        ),
    ] {
        let err = create(&world, kind, "invalid", spec, false)
            .await
            .expect_err("refused");
        assert!(format!("{err:#}").contains(needle), "{kind}: {err:#}");
    }
    create(
        &world,
        "ClusterStaticEntry",
        "db",
        json!({"spiffeID": "spiffe://webhook.test/db", "parentID": "spiffe://webhook.test/agent", "selectors": ["unix:uid:0"]}),
        false,
    )
    .await?;
    create(
        &world,
        "ClusterFederatedTrustDomain",
        "partner",
        json!({"trustDomain": "partner.test", "bundleEndpointURL": "https://partner.test:8443", "bundleEndpointProfile": {"type": "https_spiffe", "endpointSPIFFEID": "spiffe://partner.test/spire/server"}}),
        false,
    )
    .await?;

    // Latency as a client sees it: a dry-run create goes through admission, webhook
    // included, and stores nothing.
    let with_webhook = dry_run_latencies(&world, 200).await?;
    let metrics = operator.metrics().await?;
    assert!(
        metrics.value(
            "spire_operator_webhook_reviews_total",
            &[("kind", "ClusterSPIFFEID"), ("allowed", "true")]
        ) >= 200.0,
        "the dry runs went through the webhook"
    );
    // The same without the webhook, for comparison.
    Api::<ValidatingWebhookConfiguration>::all(world.client.clone())
        .delete(CONFIGURATION, &Default::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let without = dry_run_latencies(&world, 200).await?;
    eprintln!(
        "webhook: dry-run ClusterSPIFFEID create, 200 sequential, client-side: with the webhook p50 {:?} p99 {:?}; without p50 {:?} p99 {:?}",
        percentile(&with_webhook, 0.5),
        percentile(&with_webhook, 0.99),
        percentile(&without, 0.5),
        percentile(&without, 0.99),
    );
    let metrics = operator.metrics().await?;
    assert!(
        metrics.value(
            "spire_operator_webhook_reviews_total",
            &[("kind", "ClusterSPIFFEID"), ("allowed", "true")]
        ) >= 100.0
    );
    assert_eq!(metrics.value(MINTED, &[]), 1.0, "one certificate, no churn");
    Ok(())
}

#[tokio::test]
async fn a_standby_replicas_short_lived_certificate_rotates_without_a_refused_request()
-> anyhow::Result<()> {
    // 20 s certificates, renewed every 10 s, on two replicas under leader election; the
    // Service is then routed to the one that is not leading.
    let env = [("SPIRE_OPERATOR_WEBHOOK_CERTIFICATE_TTL", "20s")];
    let election = "leaderElection: {leaderElect: true, resourceName: webhook-e2e}\n";
    let (world, mut leader, _) = served("rotation.test", election, &env).await?;
    leader
        .wait_metric("spire_operator_leader", &[], Duration::from_secs(30), |v| {
            v == 1.0
        })
        .await?;
    let (mut operator, address) = replica(&world, election, &env).await?;
    webhook::route_service(
        &world.client,
        OPERATOR_NAMESPACE,
        SERVICE,
        webhook::host_address()?,
        address.port(),
    )
    .await?;
    wait_admitting(&world, &operator).await?;
    let first_expiry = operator.metrics().await?.value(
        "spire_operator_webhook_certificate_expiry_timestamp_seconds",
        &[],
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(
        first_expiry > now && first_expiry <= now + 21.0,
        "a 20 s certificate: expires {first_expiry}, now {now}"
    );

    // Requests through the API server every 100 ms; every second, a fresh TLS handshake
    // as the API server makes it records the certificate served.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (mut sent, mut refused) = (0, Vec::new());
    let mut served: Vec<Vec<u8>> = Vec::new();
    while Instant::now() < deadline {
        sent += 1;
        if let Err(e) = create(&world, "ClusterSPIFFEID", "rotating", valid_csid(), true).await {
            refused.push(format!("{e:#}"));
        }
        if sent % 10 == 0 {
            let leaf = served_certificate(&world, address).await?;
            if served.last() != Some(&leaf) {
                served.push(leaf);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator.ensure_running()?;
    leader.ensure_running()?;
    assert_eq!(
        operator
            .metrics()
            .await?
            .value("spire_operator_leader", &[]),
        0.0,
        "the replica serving was not the leader"
    );
    assert!(
        refused.is_empty(),
        "{} of {sent} refused: {:?}",
        refused.len(),
        refused.first()
    );
    let metrics = operator.metrics().await?;
    let minted = metrics.value(MINTED, &[]);
    assert!(minted >= 4.0, "45 s of 20 s certificates: minted {minted}");
    assert!(
        metrics.value(
            "spire_operator_webhook_certificate_expiry_timestamp_seconds",
            &[]
        ) > first_expiry,
        "the certificate in use was replaced"
    );
    assert!(
        served.len() >= 4,
        "new certificates reach new connections: {} distinct over 45 s",
        served.len()
    );
    for leaf in &served {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)?;
        let validity = cert.validity();
        let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert!(
            lifetime <= 40,
            "a 20 s certificate (SPIRE backdates notBefore): {lifetime} s"
        );
    }
    eprintln!(
        "webhook rotation: {sent} requests over 45 s, 0 refused, {minted} certificates minted, {} served",
        served.len()
    );
    Ok(())
}
