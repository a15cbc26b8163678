//! Faults 3 and 4: the operator SIGKILLed in the middle of a pass and started again, and
//! the kube-apiserver and etcd restarted under a running operator.

use std::time::{Duration, Instant};

use e2e::entries;
use e2e::operator::Operator;

use crate::common::{Faults, writes};

#[tokio::test]
async fn operator_killed_mid_pass_resumes_with_no_redundant_write() -> anyhow::Result<()> {
    let f = Faults::start("fault-operator.test", 1).await?;
    let pods = f.pods("web", 0..500).await?;
    let cp = &f.world.control_plane;
    let mut first = Operator::start(cp, &f.world.spire, "faults", "").await?;
    first
        .wait_metric(
            "spire_operator_entry_writes_total",
            &[("operation", "create"), ("result", "success")],
            Duration::from_secs(60),
            |v| v >= 1.0,
        )
        .await?;
    first.kill();
    let killed = Instant::now();
    // Writes the dead process sent may still land: let them, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = entries::pod_entries(&f.world.spire).await?.len();
    assert!(
        before < pods.len(),
        "the first pass had finished ({before} entries) before the kill: not mid-pass"
    );

    let mut second = Operator::start(cp, &f.world.spire, "faults", "").await?;
    let took = f
        .converged(
            "operator SIGKILLed mid-pass",
            &pods,
            killed,
            Duration::from_secs(60),
        )
        .await?;
    let metrics = second.metrics().await?;
    println!(
        "[fault] operator SIGKILLed with {before} of {} entries written; the restarted one \
         created {}, deleted {}, updated {}; converged {:.1} s after the kill",
        pods.len(),
        writes(&metrics, "create") as i64,
        writes(&metrics, "delete") as i64,
        writes(&metrics, "update") as i64,
        took.as_secs_f64()
    );
    assert_eq!(
        writes(&metrics, "create"),
        (pods.len() - before) as f64,
        "creates"
    );
    assert_eq!(writes(&metrics, "delete"), 0.0, "deletes");
    assert_eq!(writes(&metrics, "update"), 0.0, "updates");
    // And it stays so across a full resync.
    assert_eq!(
        second
            .writes_across_a_resync(Duration::from_secs(90))
            .await?,
        0.0
    );
    Ok(())
}

/// Restarts one control-plane component, then changes pods: the operator's watches must
/// recover (it sees the changes) and the re-list must not delete anything it should not.
async fn survives(
    f: &mut Faults,
    operator: &mut Operator,
    what: &str,
    round: usize,
    pods: &mut std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let before = operator.metrics().await?;
    let started = Instant::now();
    match what {
        "kube-apiserver" => f.world.control_plane.restart_apiserver().await?,
        "etcd" => f.world.control_plane.restart_etcd().await?,
        other => anyhow::bail!("no such component {other}"),
    }
    let back = Instant::now();
    // Nothing changed in the cluster: the entries stay as they are while caches re-sync.
    entries::holds_for(
        &f.world.spire,
        &format!("no entry changes after a {what} restart"),
        Duration::from_secs(3),
        |e| crate::common::exact(e, pods, &f.sentinel).is_ok(),
    )
    .await?;
    let gone: Vec<String> = pods.keys().take(5).cloned().collect();
    f.delete_pods(gone.clone()).await?;
    for name in &gone {
        pods.remove(name);
    }
    pods.extend(f.pods(&format!("r{round}"), 0..10).await?);
    let took = f
        .converged(
            &format!("{what} restarted"),
            pods,
            back,
            Duration::from_secs(60),
        )
        .await?;
    let after = operator.metrics().await?;
    println!(
        "[fault] {what} down and back in {:.1} s; the changes made after it came back converged {:.1} s after",
        (back - started).as_secs_f64(),
        took.as_secs_f64()
    );
    for (operation, expected) in [("delete", 5.0), ("create", 10.0), ("update", 0.0)] {
        assert_eq!(
            writes(&after, operation) - writes(&before, operation),
            expected,
            "{operation}s across the {what} restart"
        );
    }
    Ok(())
}

#[tokio::test]
async fn apiserver_and_etcd_restarts_recover_watches_without_spurious_deletes() -> anyhow::Result<()>
{
    let mut f = Faults::start("fault-control-plane.test", 1).await?;
    let mut pods = f.pods("web", 0..50).await?;
    let mut operator =
        Operator::start(&f.world.control_plane, &f.world.spire, "faults", "").await?;
    f.converged(
        "before the restarts",
        &pods,
        Instant::now(),
        Duration::from_secs(60),
    )
    .await?;
    survives(&mut f, &mut operator, "kube-apiserver", 1, &mut pods).await?;
    survives(&mut f, &mut operator, "etcd", 2, &mut pods).await?;
    operator.ensure_running()?;
    Ok(())
}
