//! ClusterFederatedTrustDomains against two real SPIRE servers on loopback, each serving
//! its bundle endpoint: cluster A's operator makes A's server fetch B's bundle, a
//! ClusterSPIFFEID's `federatesWith` gives A's workload B's bundle, and B's workload
//! verifies A's SVID. Relationships made with the server CLI are never touched.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::operator::Operator;
use e2e::spire::{BundleEndpoint, KUBELET_NODE};
use e2e::stand_in_kubelet::{Kubelet, PodCgroup, running_pod};
use e2e::world::World;
use e2e::{Spire, SpireOptions, WorkDir, wait};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use spire_operator::crd::ClusterFederatedTrustDomain;
use spire_operator::spire::api::types;

/// The workload binary of this package.
const WORKLOAD: &str = env!("CARGO_BIN_EXE_workload");

/// B's bundle JSON with only its X.509 authorities: JWT keys showing up on A later can
/// only have come from B's bundle endpoint.
fn x509_only(bundle_json: &str) -> anyhow::Result<String> {
    let mut bundle: Value = serde_json::from_str(bundle_json)?;
    let keys = bundle["keys"]
        .as_array_mut()
        .context("bundle JSON without keys")?;
    keys.retain(|k| k["use"] == "x509-svid");
    Ok(bundle.to_string())
}

/// The Ready condition of a ClusterFederatedTrustDomain once its status describes its
/// current generation and satisfies `want`.
async fn wait_ready(
    world: &World,
    name: &str,
    what: &str,
    want: impl Fn(&Condition) -> bool,
) -> anyhow::Result<Condition> {
    let api: Api<ClusterFederatedTrustDomain> = Api::all(world.client.clone());
    let want = &want;
    let api = &api;
    wait::until(
        &format!("ClusterFederatedTrustDomain {name}: {what}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async move {
            let object = api.get(name).await?;
            let status = object.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            match ready {
                Some(c) if status.observed_generation == object.metadata.generation && want(c) => {
                    Ok(Some(c.clone()))
                }
                _ => Err(anyhow::anyhow!("last status: {status:?}")),
            }
        },
    )
    .await
}

async fn relationships(spire: &Spire) -> anyhow::Result<Vec<types::FederationRelationship>> {
    Ok(spire.client().list_federation_relationships().await?)
}

fn cftd_spec(trust_domain: &str, url: &str, bundle: Option<&str>) -> Value {
    let mut spec = json!({
        "trustDomain": trust_domain,
        "bundleEndpointURL": url,
        "bundleEndpointProfile": {
            "type": "https_spiffe",
            "endpointSPIFFEID": format!("spiffe://{trust_domain}/spire/server"),
        },
    });
    if let Some(bundle) = bundle {
        spec["trustDomainBundle"] = json!(bundle);
    }
    spec
}

/// Runs the workload binary against `endpoint`, optionally in a pod's cgroup.
async fn workload(
    endpoint: String,
    cgroup: Option<&PodCgroup>,
    args: &[&str],
) -> anyhow::Result<Value> {
    let mut command = match cgroup {
        Some(cgroup) => cgroup.command(Path::new(WORKLOAD)),
        None => Command::new(WORKLOAD),
    };
    command
        .args(["--timeout-secs", "60"])
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test]
async fn a_cluster_federated_trust_domain_federates_two_spire_servers() -> anyhow::Result<()> {
    const A: &str = "a.federation.test";
    const B: &str = "b.federation.test";
    let kubelet = Kubelet::start().await?;
    let (world, b) = tokio::try_join!(
        World::start_with(
            A,
            SpireOptions {
                kubelet_read_only_port: Some(kubelet.port),
                bundle_endpoint: Some(BundleEndpoint::HttpsSpiffe),
                ..SpireOptions::default()
            },
        ),
        Spire::start_with(
            B,
            SpireOptions {
                bundle_endpoint: Some(BundleEndpoint::HttpsSpiffe),
                ..SpireOptions::default()
            },
        )
    )?;
    let a_url = world
        .spire
        .bundle_endpoint_url()
        .context("A's bundle endpoint")?;
    let b_url = b.bundle_endpoint_url().context("B's bundle endpoint")?;

    // B has no cluster: its administrator federates it with A through the CLI.
    let dir = WorkDir::new("federation")?;
    let a_bundle = dir.join("a-bundle.json");
    std::fs::write(&a_bundle, world.spire.bundle_json()?)?;
    b.server_cli(&[
        "federation",
        "create",
        "-trustDomain",
        A,
        "-bundleEndpointURL",
        &a_url,
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        &format!("spiffe://{A}/spire/server"),
        "-trustDomainBundlePath",
        &a_bundle.to_string_lossy(),
        "-trustDomainBundleFormat",
        "spiffe",
    ])?;

    let mut operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "a",
        &format!("parentIDTemplate: \"{}\"\n", world.spire.agent_id()),
    )
    .await?;
    operator.wait_initial_sync().await?;

    let bootstrap = x509_only(&b.bundle_json()?)?;
    let applied = Instant::now();
    world
        .apply_spire_object(
            "ClusterFederatedTrustDomain",
            "b",
            cftd_spec(B, &b_url, Some(&bootstrap)),
        )
        .await?;
    let a_client = world.spire.client();
    let fetched = wait::until(
        "A's server holding B's bundle as B's endpoint serves it (with its JWT keys)",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let a_client = a_client.clone();
            async move {
                Ok(a_client
                    .get_federated_bundle(B)
                    .await
                    .ok()
                    .filter(|bundle| !bundle.jwt_authorities.is_empty()))
            }
        },
    )
    .await?;
    eprintln!(
        "ClusterFederatedTrustDomain applied -> B's bundle fetched from B's endpoint on A's server: {:?}",
        applied.elapsed()
    );
    let b_own = b.client().get_bundle().await?;
    assert_eq!(fetched.x509_authorities, b_own.x509_authorities);
    let key_ids = |bundle: &types::Bundle| {
        let mut ids: Vec<String> = bundle
            .jwt_authorities
            .iter()
            .map(|k| k.key_id.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(key_ids(&fetched), key_ids(&b_own));
    let listed = relationships(&world.spire).await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].bundle_endpoint_url, b_url);
    let ready = wait_ready(&world, "b", "Ready", |c| c.status == "True").await?;
    assert_eq!(ready.reason, "Reconciled");

    // A workload of A selected by a ClusterSPIFFEID with federatesWith B.
    world.node(KUBELET_NODE).await?;
    world.namespace("shop", &[]).await?;
    let pod = world
        .pod("shop", "web-0", "default", KUBELET_NODE, &[("app", "web")])
        .await?;
    world
        .apply_csid(
            "web",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
                "podSelector": {"matchLabels": {"app": "web"}},
                "federatesWith": [B],
            }),
        )
        .await?;
    kubelet.set_pods(vec![running_pod(&pod)?]);
    let cgroup = PodCgroup::create(&pod.uid().context("pod uid")?)?;
    let a_workload = workload(
        world.spire.workload_endpoint(),
        Some(&cgroup),
        &["--federated", B],
    )
    .await?;
    let a_id = format!("spiffe://{A}/ns/shop/sa/default");
    assert_eq!(a_workload["x509_svid"]["spiffe_id"], a_id, "{a_workload}");
    let bundles = a_workload["bundles"].as_array().context("bundles")?;
    assert!(
        bundles.contains(&json!(B)) && bundles.contains(&json!(A)),
        "{a_workload}"
    );

    // A workload of B (an entry federating with A) verifies A's workload's SVID.
    let uid = rustix::process::getuid().as_raw();
    let created = b
        .client()
        .batch_create_entries(vec![types::Entry {
            spiffe_id: Some(types::Spiffeid {
                trust_domain: B.into(),
                path: "/verifier".into(),
            }),
            parent_id: Some(b.agent_id().to_api()),
            selectors: vec![types::Selector {
                r#type: "unix".into(),
                value: format!("uid:{uid}"),
            }],
            federates_with: vec![A.into()],
            ..Default::default()
        }])
        .await?;
    assert_eq!(
        created[0].status.as_ref().map(|s| s.code),
        Some(0),
        "{created:?}"
    );
    let a_chain = dir.join("a-svid.pem");
    std::fs::write(
        &a_chain,
        a_workload["svid_chain_pem"]
            .as_str()
            .context("svid_chain_pem")?,
    )?;
    let b_workload = workload(
        b.workload_endpoint(),
        None,
        &["--federated", A, "--verify", &a_chain.to_string_lossy()],
    )
    .await?;
    assert_eq!(b_workload["verified"], a_id, "{b_workload}");

    // The same check refuses a chain for A's trust domain that A's CA did not sign.
    let forged = forged_svid(A)?;
    let forged_path = dir.join("forged.pem");
    std::fs::write(&forged_path, forged)?;
    let refused = workload(
        b.workload_endpoint(),
        None,
        &["--federated", A, "--verify", &forged_path.to_string_lossy()],
    )
    .await;
    let message = format!("{:#}", refused.err().context("a forged SVID was verified")?);
    assert!(message.contains("signed by none"), "{message}");

    // Deleting the resource deletes the relationship it created.
    world
        .delete_spire_object("ClusterFederatedTrustDomain", "b")
        .await?;
    wait::until(
        "B's relationship gone from A's server",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { Ok(relationships(&world.spire).await?.is_empty().then_some(())) },
    )
    .await?;
    operator.ensure_running()?;
    Ok(())
}

/// A self-signed "SVID" for `trust_domain` from a CA nobody trusts.
fn forged_svid(trust_domain: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://{trust_domain}/ns/shop/sa/default").try_into()?,
    )];
    Ok(params.self_signed(&key)?.pem())
}

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
