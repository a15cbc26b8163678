//! ClusterFederatedTrustDomains against two real SPIRE servers on loopback, each serving
//! its bundle endpoint: cluster A's operator makes A's server fetch B's bundle, a
//! ClusterSPIFFEID's `federatesWith` gives A's workload B's bundle, and B's workload
//! verifies A's SVID. Ownership (CLI-made relationships, adoption, restarts) is in
//! `federation_ownership.rs`, with the helpers here.

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
use kube::api::Api;
use serde_json::{Value, json};
use spire_operator::crd::ClusterFederatedTrustDomain;
use spire_operator::spire::api::types;

/// The workload binary of this package.
const WORKLOAD: &str = env!("CARGO_BIN_EXE_workload");

/// B's bundle JSON with only its X.509 authorities: JWT keys showing up on A later can
/// only have come from B's bundle endpoint.
pub(crate) fn x509_only(bundle_json: &str) -> anyhow::Result<String> {
    let mut bundle: Value = serde_json::from_str(bundle_json)?;
    let keys = bundle["keys"]
        .as_array_mut()
        .context("bundle JSON without keys")?;
    keys.retain(|k| k["use"] == "x509-svid");
    Ok(bundle.to_string())
}

/// The Ready condition of a ClusterFederatedTrustDomain once its status describes its
/// current generation and satisfies `want`.
pub(crate) async fn wait_ready(
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

pub(crate) async fn relationships(
    spire: &Spire,
) -> anyhow::Result<Vec<types::FederationRelationship>> {
    Ok(spire.client().list_federation_relationships().await?)
}

pub(crate) fn cftd_spec(trust_domain: &str, url: &str, bundle: Option<&str>) -> Value {
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
