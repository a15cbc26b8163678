//! Static mode (`staticManifestPath`) against real SPIRE servers and no Kubernetes API at
//! all (no kubeconfig, no in-cluster environment): manifest files become entries and a
//! federation relationship within seconds of being written, edited or deleted; an
//! invalid file is logged, counted and disturbs nothing; a ConfigMap volume's `..data`
//! symlink swap is picked up; an entry made with the SPIRE CLI is never touched.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::entries::{self, EntryView};
use e2e::operator::Operator;
use e2e::spire::BundleEndpoint;
use e2e::{Spire, SpireOptions, WorkDir, http, wait};

use crate::federation::x509_only;

const A: &str = "static.test";
const B: &str = "peer.static.test";
/// How long a file change may take to reach the server: the operator polls every
/// second; the resync (`gcInterval: 1h`) cannot be what picks it up.
const PICK_UP: Duration = Duration::from_secs(10);

fn static_entry(name: &str, selector: &str, dns: &str) -> String {
    format!(
        "apiVersion: spire.spiffe.io/v1alpha1\nkind: ClusterStaticEntry\nmetadata:\n  name: {name}\n\
         spec:\n  spiffeID: spiffe://{A}/{name}\n  parentID: spiffe://{A}/host\n  \
         selectors: [\"{selector}\"]\n  dnsNames: [\"{dns}\"]\n"
    )
}

/// Writes `text` to `path` aside and renames it in, as editors and tools do.
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path).with_context(|| format!("writing {}", path.display()))
}

/// Waits until the server's entries satisfy `want`, listing every 20 ms; returns how
/// long that took.
async fn picked_up(
    spire: &Spire,
    what: &str,
    want: impl Fn(&[EntryView]) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let want = &want;
    wait::until(what, PICK_UP, Duration::from_millis(20), || async move {
        Ok(want(&entries::list(spire).await?).then_some(()))
    })
    .await?;
    let took = started.elapsed();
    eprintln!("static mode pick-up, {what}: {took:?}");
    Ok(took)
}

fn find<'a>(all: &'a [EntryView], name: &str) -> Option<&'a EntryView> {
    let id = format!("spiffe://{A}/{name}");
    all.iter().find(|e| e.spiffe_id == id)
}

#[tokio::test]
async fn manifest_files_are_reconciled_without_a_kubernetes_api() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(
        Spire::start(A),
        Spire::start_with(
            B,
            SpireOptions {
                bundle_endpoint: Some(BundleEndpoint::HttpsSpiffe),
                ..SpireOptions::default()
            },
        )
    )?;
    a.server_cli(&[
        "entry",
        "create",
        "-spiffeID",
        &format!("spiffe://{A}/sentinel"),
        "-parentID",
        &format!("spiffe://{A}/host"),
        "-selector",
        "unix:uid:4242",
    ])?;
    let sentinel = || async {
        let all = entries::list(&a).await?;
        find(&all, "sentinel")
            .cloned()
            .context("the sentinel entry")
    };
    let sentinel_before = sentinel().await?;

    let dir = WorkDir::new("static-manifests")?;
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests)?;
    // A file the operator must not read, and one it reads from its first pass.
    std::fs::write(manifests.join("README.txt"), "not a manifest")?;
    write(
        &manifests.join("early.yaml"),
        &static_entry("early", "unix:uid:1", "early.example"),
    )?;
    let mut operator = Operator::start_static(&a, &manifests, "gcInterval: 1h\n", &[]).await?;
    operator.wait_initial_sync().await?;
    entries::wait_for(&a, "the entry of the file present at start", |all| {
        find(all, "early").is_some()
    })
    .await?;
    let (status, _) = http::get(operator.health_addr(), "/healthz").await?;
    assert_eq!(status, 200, "/healthz in static mode");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", operator.webhook_port()))
            .await
            .is_err(),
        "no webhook is served in static mode"
    );

    // A new file: its entry appears.
    let db = manifests.join("db.yaml");
    write(&db, &static_entry("db", "unix:uid:1000", "db.example"))?;
    let created = picked_up(&a, "new file -> entry created", |all| {
        find(all, "db").is_some_and(|e| e.dns_names == ["db.example"])
    })
    .await?;

    // Writes at every phase of the 1 s poll: 0 to 900 ms after the last pick-up.
    let mut latencies = Vec::new();
    for i in 0..10u64 {
        tokio::time::sleep(Duration::from_millis(i * 100)).await;
        let name = format!("lat-{i}");
        write(
            &manifests.join(format!("{name}.yaml")),
            &static_entry(&name, "unix:uid:7", "lat.example"),
        )?;
        latencies.push(
            picked_up(&a, &format!("{name}.yaml -> entry"), |all| {
                find(all, &name).is_some()
            })
            .await?,
        );
    }
    latencies.sort();
    eprintln!(
        "static mode pick-up over 10 writes at spread phases: min {:?}, median {:?}, max {:?}",
        latencies[0], latencies[5], latencies[9]
    );

    // Edited: a new selector (delete + create) and a new DNS name.
    write(&db, &static_entry("db", "unix:uid:2000", "db2.example"))?;
    let edited = picked_up(&a, "edited file -> entry updated", |all| {
        find(all, "db").is_some_and(|e| {
            e.has_selector("unix:uid:2000")
                && !e.has_selector("unix:uid:1000")
                && e.dns_names == ["db2.example"]
        })
    })
    .await?;

    // Invalid input: a broken edit of db.yaml, a file of another kind, garbage. Each is
    // logged with its path and counted; db keeps its last valid entry, nothing moves.
    let errors_before = operator
        .metrics()
        .await?
        .value("spire_operator_static_manifest_errors_total", &[]);
    write(&db, &static_entry("db", "no-colon-selector", "db3.example"))?;
    write(
        &manifests.join("csid.yaml"),
        "apiVersion: spire.spiffe.io/v1alpha1\nkind: ClusterSPIFFEID\nmetadata: {name: x}\nspec: {}\n",
    )?;
    write(&manifests.join("garbage.yaml"), "spec: [unclosed\n")?;
    operator
        .wait_metric(
            "spire_operator_static_manifest_errors_total",
            &[],
            PICK_UP,
            |v| v >= errors_before + 3.0,
        )
        .await?;
    let log = std::fs::read_to_string(operator.log_path())?;
    for (file, says) in [
        ("db.yaml", "no-colon-selector"),
        ("csid.yaml", "kind: \"ClusterSPIFFEID\""),
        ("garbage.yaml", "is not one YAML document"),
    ] {
        assert!(
            log.lines().any(
                |l| l.contains(&format!("{}", manifests.join(file).display())) && l.contains(says)
            ),
            "no log line names {file} with {says:?}:\n{}",
            operator.log_tail(40)
        );
    }
    let kept = entries::holds_for(
        &a,
        "db keeps its last valid entry",
        Duration::from_secs(3),
        |all| {
            find(all, "db").is_some_and(|e| e.has_selector("unix:uid:2000"))
                && find(all, "early").is_some()
        },
    )
    .await?;
    assert_eq!(
        operator
            .metrics()
            .await?
            .value("spire_operator_static_manifests_invalid", &[]),
        3.0
    );
    std::fs::remove_file(manifests.join("csid.yaml"))?;
    std::fs::remove_file(manifests.join("garbage.yaml"))?;

    // A ConfigMap volume's layout, updated the way kubelet does it: a new timestamped
    // directory, then `..data` renamed over. `..data` and `..<ts>` are not read again.
    let version = |ts: &str, selector: &str| -> anyhow::Result<()> {
        let data = manifests.join(ts);
        std::fs::create_dir(&data)?;
        std::fs::write(
            data.join("cm.yaml"),
            static_entry("cm", selector, "cm.example"),
        )?;
        std::os::unix::fs::symlink(ts, manifests.join("..data_tmp"))?;
        std::fs::rename(manifests.join("..data_tmp"), manifests.join("..data"))?;
        Ok(())
    };
    version("..2026_12_05_00_00_00.1", "unix:uid:3000")?;
    std::os::unix::fs::symlink("..data/cm.yaml", manifests.join("cm.yaml"))?;
    picked_up(&a, "ConfigMap-style file -> entry created", |all| {
        find(all, "cm").is_some_and(|e| e.has_selector("unix:uid:3000"))
    })
    .await?;
    let swapped = Instant::now();
    version("..2026_12_05_00_01_00.2", "unix:uid:3001")?;
    picked_up(&a, "..data symlink swap -> entry updated", |all| {
        find(all, "cm").is_some_and(|e| e.has_selector("unix:uid:3001"))
    })
    .await?;
    eprintln!("..data swap picked up in {:?}", swapped.elapsed());

    // A federation relationship from a file: A fetches B's bundle from B's endpoint.
    let b_url = b.bundle_endpoint_url().context("B's bundle endpoint")?;
    let bootstrap = x509_only(&b.bundle_json()?)?;
    let federation = format!(
        "apiVersion: spire.spiffe.io/v1alpha1\nkind: ClusterFederatedTrustDomain\nmetadata:\n  name: peer\n\
         spec:\n  trustDomain: {B}\n  bundleEndpointURL: {b_url}\n  bundleEndpointProfile:\n    \
         type: https_spiffe\n    endpointSPIFFEID: spiffe://{B}/spire/server\n  \
         trustDomainBundle: '{bootstrap}'\n"
    );
    let fed_file = manifests.join("peer.yaml");
    let written = Instant::now();
    write(&fed_file, &federation)?;
    let a_client = a.client();
    wait::until(
        "A's relationship with B and B's bundle fetched from B's endpoint",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let (a_client, b_url) = (a_client.clone(), b_url.clone());
            async move {
                let listed = a_client.list_federation_relationships().await?;
                let has = listed
                    .iter()
                    .any(|r| r.trust_domain == B && r.bundle_endpoint_url == b_url);
                let bundle = a_client.get_federated_bundle(B).await.ok();
                Ok((has && bundle.is_some_and(|b| !b.jwt_authorities.is_empty())).then_some(()))
            }
        },
    )
    .await?;
    eprintln!(
        "static mode pick-up, federation file -> B's bundle (with JWT keys from B's endpoint) on A: {:?}",
        written.elapsed()
    );

    // Deleted files: the entry and the relationship go; the others stay.
    std::fs::remove_file(&db)?;
    let deleted = picked_up(&a, "deleted file -> entry deleted", |all| {
        find(all, "db").is_none() && find(all, "cm").is_some() && find(all, "early").is_some()
    })
    .await?;
    std::fs::remove_file(&fed_file)?;
    wait::until(
        "A's relationship with B deleted",
        PICK_UP,
        Duration::from_millis(100),
        || {
            let a_client = a_client.clone();
            async move {
                let listed = a_client.list_federation_relationships().await?;
                Ok((!listed.iter().any(|r| r.trust_domain == B)).then_some(()))
            }
        },
    )
    .await?;

    assert_eq!(
        sentinel().await?,
        sentinel_before,
        "the CLI's entry is untouched"
    );
    assert!(kept.iter().any(|e| e.spiffe_id.ends_with("/sentinel")));
    operator.ensure_running()?;
    eprintln!(
        "static mode latencies: create {created:?}, edit {edited:?}, delete {deleted:?} (poll 1s, gcInterval 1h)"
    );
    Ok(())
}

/// With `--state-dir`, a restarted operator still owns the relationship an earlier run
/// created (it follows an edit made while it was down and deletes it with its file),
/// and a file broken while it was down keeps its last valid entry.
#[tokio::test]
async fn a_restart_with_a_state_dir_keeps_ownership_and_last_valid_versions() -> anyhow::Result<()>
{
    const PEER: &str = "restart.peer.test";
    let a = Spire::start(A).await?;
    let dir = WorkDir::new("static-restart")?;
    let (manifests, state) = (dir.join("manifests"), dir.join("state"));
    std::fs::create_dir(&manifests)?;
    let peer = |url: &str| {
        format!(
            "apiVersion: spire.spiffe.io/v1alpha1\nkind: ClusterFederatedTrustDomain\nmetadata: {{name: peer}}\n\
             spec: {{trustDomain: {PEER}, bundleEndpointURL: \"{url}\", bundleEndpointProfile: {{type: https_web}}}}\n"
        )
    };
    write(
        &manifests.join("peer.yaml"),
        &peer("https://127.0.0.1:9/one"),
    )?;
    write(
        &manifests.join("db.yaml"),
        &static_entry("db", "unix:uid:1000", "db.example"),
    )?;
    let state_arg = state.to_string_lossy().into_owned();
    let args = ["--state-dir", state_arg.as_str()];
    let relationship_url = || async {
        let listed = a.client().list_federation_relationships().await?;
        anyhow::Ok(
            listed
                .into_iter()
                .find(|r| r.trust_domain == PEER)
                .map(|r| r.bundle_endpoint_url),
        )
    };

    let mut first = Operator::start_static(&a, &manifests, "gcInterval: 1h\n", &args).await?;
    first.wait_initial_sync().await?;
    entries::wait_for(&a, "db's entry", |all| find(all, "db").is_some()).await?;
    wait::until(
        "the relationship",
        PICK_UP,
        Duration::from_millis(100),
        || async { Ok(relationship_url().await?.filter(|u| u.ends_with("/one"))) },
    )
    .await?;
    first.stop();

    // While no operator runs: db.yaml breaks, peer.yaml moves to another URL.
    write(&manifests.join("db.yaml"), "kind: [broken\n")?;
    write(
        &manifests.join("peer.yaml"),
        &peer("https://127.0.0.1:9/two"),
    )?;
    let mut second = Operator::start_static(&a, &manifests, "gcInterval: 1h\n", &args).await?;
    second.wait_initial_sync().await?;
    wait::until(
        "the relationship updated by the restarted operator",
        PICK_UP,
        Duration::from_millis(100),
        || async { Ok(relationship_url().await?.filter(|u| u.ends_with("/two"))) },
    )
    .await?;
    entries::holds_for(&a, "db keeps its entry", Duration::from_secs(3), |all| {
        find(all, "db").is_some_and(|e| e.has_selector("unix:uid:1000"))
    })
    .await?;
    std::fs::remove_file(manifests.join("peer.yaml"))?;
    wait::until(
        "the relationship deleted with its file",
        PICK_UP,
        Duration::from_millis(100),
        || async { Ok(relationship_url().await?.is_none().then_some(())) },
    )
    .await?;
    second.ensure_running()?;
    Ok(())
}
