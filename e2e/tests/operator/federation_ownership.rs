//! Federation relationships the operator owns and those it does not: a relationship made
//! with the server CLI survives resyncs and the deletion of other resources, is reported
//! and adopted only on request; a bundle-only change reaches SPIRE; a corrected URL is
//! fetched at once; a deletion while the operator is down is carried out by its
//! successor. B's endpoint uses the https_web profile, with a test CA that A's server
//! trusts as its Web PKI roots.

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::operator::Operator;
use e2e::spire::BundleEndpoint;
use e2e::world::World;
use e2e::{Spire, SpireOptions, WorkDir, wait};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use spire_operator::crd::ClusterFederatedTrustDomain;

use crate::federation::{cftd_spec, relationships, wait_ready, x509_only};

#[tokio::test]
async fn cli_relationships_are_left_alone_and_owned_ones_follow_their_resource()
-> anyhow::Result<()> {
    const A: &str = "own.federation.test";
    const B: &str = "web.federation.test";
    const CLI: &str = "cli.federation.test";
    const DOWN: &str = "down.federation.test";
    // B's endpoint serves a certificate from a test CA that A's server trusts as its
    // Web PKI roots (Go reads SSL_CERT_FILE): the https_web profile on loopback.
    let ca = e2e::pki::Ca::new("federation web CA")?;
    let dir = WorkDir::new("federation-web")?;
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, ca.cert_pem())?;
    let serving = ca.issue_server("127.0.0.1", &["127.0.0.1"])?;
    let (world, b) = tokio::try_join!(
        World::start_with(
            A,
            SpireOptions {
                server_env: vec![("SSL_CERT_FILE".into(), roots.to_string_lossy().into())],
                ..SpireOptions::default()
            },
        ),
        Spire::start_with(
            B,
            SpireOptions {
                bundle_endpoint: Some(BundleEndpoint::HttpsWeb(serving)),
                ..SpireOptions::default()
            },
        )
    )?;
    let b_url = b.bundle_endpoint_url().context("B's bundle endpoint")?;

    // Made by an administrator with the CLI; its endpoint need not answer.
    world.spire.server_cli(&[
        "federation",
        "create",
        "-trustDomain",
        CLI,
        "-bundleEndpointURL",
        "https://127.0.0.1:9/cli",
        "-bundleEndpointProfile",
        "https_web",
    ])?;
    let cli_before = relationships(&world.spire).await?;

    let mut operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "a",
        "gcInterval: 500ms\n",
    )
    .await?;
    operator.wait_initial_sync().await?;

    // https_web, no bundle needed: A fetches B's bundle over Web PKI TLS. First at a
    // wrong URL: the server's first fetch fails, and without a bundle it tries again
    // only a minute later (SPIRE's minimum refresh hint).
    let web = |url: &str| {
        json!({"trustDomain": B, "bundleEndpointURL": url,
               "bundleEndpointProfile": {"type": "https_web"}})
    };
    world
        .apply_spire_object(
            "ClusterFederatedTrustDomain",
            "web",
            web("https://127.0.0.1:9/wrong"),
        )
        .await?;
    wait_ready(&world, "web", "Ready at the wrong URL", |c| {
        c.status == "True"
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(world.spire.client().get_federated_bundle(B).await.is_err());
    // The corrected URL is fetched at once: the operator asks for it after the update.
    let corrected = Instant::now();
    world
        .apply_spire_object("ClusterFederatedTrustDomain", "web", web(&b_url))
        .await?;
    let a_client = world.spire.client();
    let fetched = wait::until(
        "A's server holding B's bundle fetched over https_web",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            let a_client = a_client.clone();
            async move { Ok(a_client.get_federated_bundle(B).await.ok()) }
        },
    )
    .await?;
    eprintln!(
        "bundleEndpointURL corrected -> B's bundle fetched on A's server: {:?}",
        corrected.elapsed()
    );
    assert_eq!(
        fetched.x509_authorities,
        b.client().get_bundle().await?.x509_authorities
    );

    // A relationship whose endpoint is down: what A holds is exactly what was pushed.
    let bundle_one = b.bundle_json()?;
    world
        .apply_spire_object(
            "ClusterFederatedTrustDomain",
            "down",
            cftd_spec(
                DOWN,
                "https://127.0.0.1:9/down",
                Some(&x509_only(&bundle_one)?),
            ),
        )
        .await?;
    wait_ready(&world, "down", "Ready", |c| c.status == "True").await?;
    let held = world.spire.client().get_federated_bundle(DOWN).await?;
    assert_eq!(held.x509_authorities.len(), 1);

    // Only the bundle changes: SPIRE gets it.
    let mut two: Value = serde_json::from_str(&x509_only(&bundle_one)?)?;
    let extra = e2e::pki::Ca::new("extra authority")?;
    use base64::Engine as _;
    let extra_key = json!({"use": "x509-svid", "kty": "EC", "crv": "P-256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(extra.cert_der())]});
    two["keys"].as_array_mut().context("keys")?.push(extra_key);
    world
        .apply_spire_object(
            "ClusterFederatedTrustDomain",
            "down",
            cftd_spec(DOWN, "https://127.0.0.1:9/down", Some(&two.to_string())),
        )
        .await?;
    let client = world.spire.client();
    let extra_der = extra.cert_der().to_vec();
    wait::until(
        "A's bundle for the down trust domain with the added authority",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let (client, extra_der) = (client.clone(), extra_der.clone());
            async move {
                let bundle = client.get_federated_bundle(DOWN).await?;
                Ok(bundle
                    .x509_authorities
                    .iter()
                    .any(|a| a.asn1 == extra_der)
                    .then_some(()))
            }
        },
    )
    .await?;

    // Another operator's class: neither a relationship nor a status.
    world
        .apply_spire_object(
            "ClusterFederatedTrustDomain",
            "elsewhere",
            json!({"trustDomain": "class.federation.test", "className": "other",
                   "bundleEndpointURL": "https://127.0.0.1:9/other",
                   "bundleEndpointProfile": {"type": "https_web"}}),
        )
        .await?;

    // A resource for the CLI's trust domain does not take its relationship over.
    world
        .apply_spire_object(
            "ClusterFederatedTrustDomain",
            "cli",
            json!({"trustDomain": CLI, "bundleEndpointURL": "https://127.0.0.1:9/mine",
                   "bundleEndpointProfile": {"type": "https_web"}}),
        )
        .await?;
    let refused = wait_ready(&world, "cli", "not owned", |c| c.status == "False").await?;
    assert_eq!(refused.reason, "RelationshipNotOwned", "{refused:?}");
    world
        .wait_event("ClusterFederatedTrustDomain", "cli", "RelationshipNotOwned")
        .await?;

    // Several full resyncs (every 500 ms) and the deletion of another resource later,
    // the CLI's relationship is as it was made.
    world
        .delete_spire_object("ClusterFederatedTrustDomain", "web")
        .await?;
    wait::until(
        "B's relationship deleted",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let listed = relationships(&world.spire).await?;
            Ok((!listed.iter().any(|r| r.trust_domain == B)).then_some(()))
        },
    )
    .await?;
    // Four resyncs change nothing: what was written is what is listed back.
    let writes = "spire_operator_federation_relationship_writes_total";
    let before = operator.metrics().await?.value(writes, &[]);
    // Created web and down, updated web's URL and down's bundle, deleted web.
    assert!(before >= 5.0, "{writes}: {before}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(operator.metrics().await?.value(writes, &[]), before);
    let cli_now: Vec<_> = relationships(&world.spire)
        .await?
        .into_iter()
        .filter(|r| r.trust_domain == CLI)
        .collect();
    let cli_made: Vec<_> = cli_before
        .into_iter()
        .filter(|r| r.trust_domain == CLI)
        .collect();
    assert_eq!(cli_now, cli_made);
    assert!(
        !relationships(&world.spire)
            .await?
            .iter()
            .any(|r| r.trust_domain == "class.federation.test")
    );
    let elsewhere = Api::<ClusterFederatedTrustDomain>::all(world.client.clone())
        .get("elsewhere")
        .await?;
    assert_eq!(elsewhere.status, None, "{elsewhere:?}");

    // The operator stops; "down" is deleted meanwhile. Its successor still knows the
    // relationship is its own (the ConfigMap record) and deletes it.
    operator.stop();
    world
        .delete_spire_object("ClusterFederatedTrustDomain", "down")
        .await?;
    let mut successor = Operator::start(
        &world.control_plane,
        &world.spire,
        "a",
        "gcInterval: 500ms\n",
    )
    .await?;
    wait::until(
        "the down trust domain's relationship deleted after a restart",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let listed = relationships(&world.spire).await?;
            Ok((!listed.iter().any(|r| r.trust_domain == DOWN)).then_some(()))
        },
    )
    .await?;

    // Explicit opt-in: the resource adopts the CLI's relationship and makes it its own.
    Api::<ClusterFederatedTrustDomain>::all(world.client.clone())
        .patch(
            "cli",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                spire_operator::federation::ADOPT_ANNOTATION: "true"}}})),
        )
        .await?;
    wait::until(
        "the CLI's relationship adopted and updated",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let listed = relationships(&world.spire).await?;
            Ok(listed
                .iter()
                .any(|r| {
                    r.trust_domain == CLI && r.bundle_endpoint_url == "https://127.0.0.1:9/mine"
                })
                .then_some(()))
        },
    )
    .await?;
    wait_ready(&world, "cli", "adopted", |c| c.status == "True").await?;
    world
        .delete_spire_object("ClusterFederatedTrustDomain", "cli")
        .await?;
    wait::until(
        "the adopted relationship deleted with its resource",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { Ok(relationships(&world.spire).await?.is_empty().then_some(())) },
    )
    .await?;
    successor.ensure_running()?;
    Ok(())
}
