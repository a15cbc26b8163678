//! spire-controller-manager's example objects against our CRDs on a real apiserver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use e2e::{ControlPlane, kube_util, wait};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use spire_operator::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn crd_files() -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo_path("../crds"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    ensure!(files.len() == 3, "expected 3 CRD files, found {files:?}");
    Ok(files)
}

fn samples() -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let mut samples = Vec::new();
    for entry in std::fs::read_dir(repo_path("tests/crds/samples"))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let value: Value =
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        samples.push((path, value));
    }
    samples.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(samples)
}

fn dynamic_api(client: &kube::Client, kind: &str) -> anyhow::Result<Api<DynamicObject>> {
    let resource = match kind {
        "ClusterSPIFFEID" => ApiResource::erase::<ClusterSPIFFEID>(&()),
        "ClusterStaticEntry" => ApiResource::erase::<ClusterStaticEntry>(&()),
        "ClusterFederatedTrustDomain" => ApiResource::erase::<ClusterFederatedTrustDomain>(&()),
        other => bail!("unexpected kind {other}"),
    };
    Ok(Api::all_with(client.clone(), &resource))
}

/// Reads the object back through our typed API and returns its spec re-serialized.
async fn typed_spec<K>(client: &kube::Client, name: &str) -> anyhow::Result<Value>
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
    K: kube::core::object::HasSpec,
    K::Spec: serde::Serialize,
{
    let object = Api::<K>::all(client.clone()).get(name).await?;
    Ok(serde_json::to_value(object.spec())?)
}

async fn create(api: &Api<DynamicObject>, object: &Value) -> anyhow::Result<DynamicObject> {
    let object: DynamicObject = serde_json::from_value(object.clone())?;
    // Discovery of a just-established kind can lag a moment behind the condition.
    wait::until(
        "create object",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let api = api.clone();
            let object = object.clone();
            async move {
                match api.create(&PostParams::default(), &object).await {
                    Ok(created) => Ok(Some(created)),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await
}

#[tokio::test]
async fn scm_objects_are_accepted_and_read_back_unchanged() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let names = kube_util::apply_crds(&client, &crd_files()?).await?;
    assert_eq!(names.len(), 3);

    let samples = samples()?;
    assert!(samples.len() >= 7, "fixtures missing: {samples:?}");
    for (path, sample) in &samples {
        let file = path.display();
        let kind = sample["kind"].as_str().context("kind")?;
        let name = sample["metadata"]["name"].as_str().context("name")?;
        let want = &sample["spec"];
        let created = create(&dynamic_api(&client, kind)?, sample)
            .await
            .with_context(|| format!("creating {file}"))?;
        assert_eq!(
            &created.data["spec"], want,
            "{file}: the apiserver stored a different spec (defaulting or pruning?)"
        );
        let have = match kind {
            "ClusterSPIFFEID" => typed_spec::<ClusterSPIFFEID>(&client, name).await,
            "ClusterStaticEntry" => typed_spec::<ClusterStaticEntry>(&client, name).await,
            _ => typed_spec::<ClusterFederatedTrustDomain>(&client, name).await,
        }
        .with_context(|| format!("reading {file} back through the Rust type"))?;
        assert_eq!(&have, want, "{file}: spec changed through the Rust type");
    }

    // Typed field values, beyond the JSON round trip.
    let every = Api::<ClusterSPIFFEID>::all(client.clone())
        .get("every-field")
        .await?;
    let ttl = every.spec.ttl.as_ref().context("ttl")?;
    assert_eq!(ttl.to_std()?, Duration::from_secs(90 * 60));
    let jwt_ttl = every.spec.jwt_ttl.as_ref().context("jwtTtl")?;
    assert_eq!(jwt_ttl.to_std()?, Duration::from_secs(90));
    assert!(every.spec.auto_populate_dns_names && every.spec.fallback);
    let static_entry = Api::<ClusterStaticEntry>::all(client.clone())
        .get("static-entry")
        .await?;
    assert_eq!(static_entry.spec.selectors, ["static:one", "static:two"]);
    assert!(static_entry.spec.store_svid);

    wrong_types_are_rejected(&client).await?;
    explain_shows_our_descriptions(&client).await?;
    Ok(())
}

async fn wrong_types_are_rejected(client: &kube::Client) -> anyhow::Result<()> {
    let cases = [
        (
            "ClusterSPIFFEID",
            json!({"spiffeIDTemplate": "spiffe://td/x", "ttl": 5}),
            "spec.ttl",
        ),
        (
            "ClusterSPIFFEID",
            json!({"admin": true}),
            "spec.spiffeIDTemplate",
        ),
        (
            "ClusterStaticEntry",
            json!({"spiffeID": "spiffe://td/a", "parentID": "spiffe://td/b", "selectors": "unix:uid:0"}),
            "spec.selectors",
        ),
        (
            "ClusterFederatedTrustDomain",
            json!({"trustDomain": "b", "bundleEndpointURL": "https://b", "bundleEndpointProfile": {"type": "https_nope"}}),
            "spec.bundleEndpointProfile.type",
        ),
    ];
    for (i, (kind, spec, field)) in cases.into_iter().enumerate() {
        let object = json!({
            "apiVersion": "spire.spiffe.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": format!("wrong-{i}")},
            "spec": spec,
        });
        let object: DynamicObject = serde_json::from_value(object)?;
        match dynamic_api(client, kind)?
            .create(&PostParams::default(), &object)
            .await
        {
            Err(kube::Error::Api(status)) => {
                let message = &status.message;
                assert_eq!(status.code, 422, "{kind} {spec}: {message}");
                assert!(
                    message.contains(field),
                    "{kind}: {message} should name {field}"
                );
            }
            other => bail!("{kind} with {spec} was not rejected: {other:?}"),
        }
    }
    Ok(())
}

async fn explain_shows_our_descriptions(client: &kube::Client) -> anyhow::Result<()> {
    let description = wait::until(
        "OpenAPI v3 document for spire.spiffe.io/v1alpha1",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let client = client.clone();
            async move {
                let request = http::Request::get("/openapi/v3/apis/spire.spiffe.io/v1alpha1")
                    .body(Vec::new())?;
                let document: Value = serde_json::from_str(&client.request_text(request).await?)?;
                let schemas = document["components"]["schemas"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                Ok(schemas
                    .iter()
                    .find(|(name, _)| name.ends_with(".ClusterSPIFFEID"))
                    .and_then(|(_, s)| {
                        s["properties"]["spec"]["properties"]["spiffeIDTemplate"]["description"]
                            .as_str()
                            .map(str::to_owned)
                    }))
            }
        },
    )
    .await?;
    assert!(
        description.contains("Go text/template") && description.contains("Example"),
        "unexpected description: {description}"
    );
    Ok(())
}
