//! Fault: the SPIRE server's datastore runs out of space while the operator writes, then
//! space returns. The operator keeps no state on disk of its own (what it must remember
//! lives in ConfigMaps), so the datastore is the disk that can fill up.
//!
//! The sqlite datastore sits on a small tmpfs. Once it is full, the entries of new pods
//! cannot be created: the operator stays up, counts the failures and logs SPIRE's
//! reason; nothing it wrote before is lost. When space returns it converges to exactly
//! the expected entries, without a restart, and the CLI-made entry is untouched.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::entries::{self, EntryView};
use e2e::operator::Operator;
use e2e::world::World;
use e2e::{SpireOptions, WorkDir};
use serde_json::json;

const TRUST_DOMAIN: &str = "full.test";
const NAMESPACE: &str = "shop";
/// Pods with entries before the datastore fills, and pods created while it is full.
const BEFORE: usize = 10;
const WHILE_FULL: usize = 200;

/// A tmpfs of `size` mounted at a directory, unmounted on drop (even when a test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "full-test"])
            .arg(dir)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "mount tmpfs on {}: {status}",
            dir.display()
        );
        Ok(Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the file system refuses more; returns the bytes written.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => break,
            Err(e) => return Err(e).context("filling the datastore's file system"),
        }
    }
    // Whatever is left in the file system's last block.
    let _ = file.write(&[0u8; 512]);
    Ok(written)
}

/// Pods `web-<i>` for every `i` in `range`, up to 16 created at a time.
async fn create_pods(world: &World, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(range)
        .map(|i| async move {
            world
                .pod(
                    NAMESPACE,
                    &format!("web-{i}"),
                    "default",
                    "node-a",
                    &[("app", "web")],
                )
                .await
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

fn pod_ids(all: &[EntryView]) -> Vec<String> {
    let mut ids: Vec<String> = entries::pod_entries_of(all)
        .into_iter()
        .map(|e| e.spiffe_id)
        .collect();
    ids.sort();
    ids
}

fn expected_ids(count: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..count)
        .map(|i| format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/pod/web-{i}"))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_full_datastore_loses_nothing_and_converges_when_space_returns() -> anyhow::Result<()> {
    let dir = WorkDir::new("datastore-full")?;
    let store = Tmpfs::mount(&dir.join("store"), "64m")?;
    let world = World::start_with(
        TRUST_DOMAIN,
        SpireOptions {
            datastore_dir: Some(store.0.clone()),
            ..SpireOptions::default()
        },
    )
    .await?;
    let sentinel = world
        .cli_entry(
            &format!("spiffe://{TRUST_DOMAIN}/admin/backup"),
            &format!("spiffe://{TRUST_DOMAIN}/spire/agent/elsewhere"),
            "unix:uid:1000",
        )
        .await?;
    let mut operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "full",
        "gcInterval: 2s\n",
    )
    .await?;
    operator.wait_initial_sync().await?;
    world.node("node-a").await?;
    world.namespace(NAMESPACE, &[]).await?;
    // Long DNS names make each entry's rows large, so the pods created while full need
    // more pages than sqlite may have free.
    world
        .apply_csid(
            "web",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}",
                "podSelector": {"matchLabels": {"app": "web"}},
                "dnsNameTemplates": (0..8)
                    .map(|i| format!("{{{{ .PodMeta.Name }}}}-{i:02}-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.{{{{ .PodMeta.Namespace }}}}.svc"))
                    .collect::<Vec<_>>(),
            }),
        )
        .await?;
    create_pods(&world, 0..BEFORE).await?;
    entries::wait_for(&world.spire, "the first pods' entries", |all| {
        pod_ids(all) == expected_ids(BEFORE)
    })
    .await?;

    // The datastore's file system fills up; new pods keep coming.
    let filler = store.0.join("filler");
    let filled = fill(&filler)?;
    println!("datastore tmpfs filled with {} KiB", filled / 1024);
    create_pods(&world, BEFORE..BEFORE + WHILE_FULL).await?;
    operator
        .wait_metric(
            "spire_operator_entry_writes_total",
            &[("operation", "create"), ("result", "failure")],
            Duration::from_secs(60),
            |v| v > 0.0,
        )
        .await
        .with_context(|| operator.log_tail(30))?;
    // A few more passes while full: the process stays up and nothing is deleted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    operator.ensure_running()?;
    let while_full = entries::list(&world.spire).await?;
    let kept = pod_ids(&while_full);
    assert!(
        expected_ids(BEFORE).iter().all(|id| kept.contains(id)),
        "entries written before the disk filled were lost: {kept:?}"
    );
    assert!(
        kept.len() < BEFORE + WHILE_FULL,
        "every entry was created although the datastore was full ({} KiB of filler)",
        filled / 1024
    );
    let log = std::fs::read_to_string(operator.log_path())?;
    assert!(
        log.contains("full"),
        "SPIRE's reason (the database or disk is full) is not in the operator's log:\n{}",
        operator.log_tail(30)
    );
    println!(
        "while full: {} of {} pod entries on the server",
        kept.len(),
        BEFORE + WHILE_FULL
    );

    // Space returns: every expected entry, nothing else, without a restart.
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    let all = entries::wait_for(
        &world.spire,
        "every pod's entry after space returned",
        |all| pod_ids(all) == expected_ids(BEFORE + WHILE_FULL),
    )
    .await
    .map_err(|e| e.context(operator.log_tail(40)))?;
    println!(
        "space returned -> converged: {:.2} s",
        freed.elapsed().as_secs_f64()
    );
    assert_eq!(
        all.len(),
        BEFORE + WHILE_FULL + 1,
        "{}",
        entries::describe(&all)
    );
    let still = all
        .iter()
        .find(|e| e.id == sentinel.id)
        .context("the CLI-made entry is gone")?;
    assert_eq!(still, &sentinel, "the CLI-made entry was changed");
    operator.ensure_running()?;
    Ok(())
}
