//! The SPIRE project's Helm chart in static mode (`controllerManager.staticManifestMode`)
//! with our image: its config file (`static.yaml`), its container args and environment
//! (`ENABLE_WEBHOOKS=false`, nothing else: no kubeconfig), and its manifests ConfigMap
//! mounted at `staticManifestPath` as kubelet lays a ConfigMap volume out. The entry and
//! the relationship appear, and a ConfigMap update (kubelet's `..data` swap) reaches the
//! server.

use std::path::Path;
use std::time::Duration;

use e2e::entries;
use e2e::operator::{Deployment, Listen, Operator};
use e2e::{Spire, WorkDir, wait};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../operator/tests/fixtures/hardened-chart"
);

/// Lays `files` out as kubelet's atomic writer does a ConfigMap volume: a timestamped
/// directory, `..data` pointing at it (swapped by rename), one symlink per key.
fn config_map_volume(root: &Path, version: &str, files: &[(&str, String)]) -> anyhow::Result<()> {
    let data = root.join(version);
    std::fs::create_dir(&data)?;
    for (key, text) in files {
        std::fs::write(data.join(key), text)?;
    }
    std::os::unix::fs::symlink(version, root.join("..data_tmp"))?;
    std::fs::rename(root.join("..data_tmp"), root.join("..data"))?;
    for (key, _) in files {
        let link = root.join(key);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), link)?;
        }
    }
    Ok(())
}

fn fixture(name: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(format!("{FIXTURES}/{name}"))?)
}

#[tokio::test]
async fn the_charts_static_mode_runs_with_our_image_and_no_api() -> anyhow::Result<()> {
    let spire = Spire::start("shop.example").await?;
    let dir = WorkDir::new("hardened-static")?;
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests)?;
    let entry = fixture("static-manifests/e-db-backup.yaml")?;
    let partner = fixture("static-manifests/f-partner.yaml")?;
    config_map_volume(
        &manifests,
        "..2026_12_05_01_00_00.1",
        &[
            ("e-db-backup.yaml", entry.clone()),
            ("f-partner.yaml", partner),
        ],
    )?;
    let config = |listen: &Listen| {
        fixture("static.yaml")
            .unwrap_or_default()
            .lines()
            .map(
                |line| match line.split_once(':').map(|(key, _)| key.trim()) {
                    Some("bindAddress") => format!("  bindAddress: {}", listen.metrics),
                    Some("healthProbeBindAddress") => {
                        format!("  healthProbeBindAddress: {}", listen.health)
                    }
                    Some("spireServerSocketPath") => format!(
                        "spireServerSocketPath: \"{}\"",
                        spire.server_socket().display()
                    ),
                    Some("staticManifestPath") => {
                        format!("staticManifestPath: {}", manifests.display())
                    }
                    _ => line.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("\n")
    };
    let args = vec!["--config=controller-manager-config.yaml".to_owned()];
    let mut operator = Operator::spawn_deployed(&Deployment {
        file_name: "controller-manager-config.yaml",
        config: &config,
        args: &args,
        env: &[("ENABLE_WEBHOOKS", "false")],
    })?;
    operator.wait_ready(Duration::from_secs(60)).await?;

    let all = entries::wait_for(&spire, "the chart's static entry", |all| {
        all.iter()
            .any(|e| e.spiffe_id == "spiffe://shop.example/db-backup")
    })
    .await?;
    let db = all
        .iter()
        .find(|e| e.spiffe_id == "spiffe://shop.example/db-backup")
        .expect("found above");
    assert!(db.id.starts_with("shop-cluster."), "entryIDPrefix: {db:?}");
    assert_eq!(db.x509_svid_ttl, 3600);
    assert_eq!(db.dns_names, ["backup.shop.example"]);
    let client = spire.client();
    wait::until(
        "the chart's federation relationship",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let client = client.clone();
            async move {
                let listed = client.list_federation_relationships().await?;
                Ok(listed
                    .iter()
                    .any(|r| r.trust_domain == "partner.example")
                    .then_some(()))
            }
        },
    )
    .await?;

    // `helm upgrade` changed the ConfigMap: kubelet swaps `..data`; the key of the
    // relationship is gone from the new version (its symlink dangles, as until kubelet
    // removes it).
    config_map_volume(
        &manifests,
        "..2026_12_05_01_05_00.2",
        &[(
            "e-db-backup.yaml",
            entry.replace("unix:uid:1001", "unix:uid:1002"),
        )],
    )?;
    entries::wait_for(&spire, "the entry after the ConfigMap update", |all| {
        all.iter().any(|e| {
            e.spiffe_id == "spiffe://shop.example/db-backup" && e.has_selector("unix:uid:1002")
        })
    })
    .await?;
    wait::until(
        "the relationship whose key left the ConfigMap deleted",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let client = client.clone();
            async move {
                let listed = client.list_federation_relationships().await?;
                Ok((!listed.iter().any(|r| r.trust_domain == "partner.example")).then_some(()))
            }
        },
    )
    .await?;
    operator.ensure_running()?;
    Ok(())
}
