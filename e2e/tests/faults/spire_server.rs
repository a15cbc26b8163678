//! Faults 1 and 2: the SPIRE server killed in the middle of a batch of writes, the SPIRE
//! server not there when the operator starts, and its PostgreSQL killed under load.

use std::time::{Duration, Instant};

use e2e::http;
use e2e::operator::Operator;

use crate::common::{Faults, create_pods, writes};

/// Pods created while the fault happens.
const PODS: usize = 500;

/// Waits until the operator has created at least `n` entries; returns how many.
async fn created_at_least(operator: &mut Operator, n: f64) -> anyhow::Result<f64> {
    operator
        .wait_metric(
            "spire_operator_entry_writes_total",
            &[("operation", "create"), ("result", "success")],
            Duration::from_secs(60),
            |v| v >= n,
        )
        .await
}

#[tokio::test]
async fn spire_server_killed_mid_batch_ends_with_the_exact_set() -> anyhow::Result<()> {
    let mut f = Faults::start("fault-spire-kill.test", 1).await?;
    let mut operator =
        Operator::start(&f.world.control_plane, &f.world.spire, "faults", "").await?;
    operator.wait_initial_sync().await?;
    // Pods keep arriving across the outage, so writes are in flight when the server dies.
    let creating = tokio::spawn(create_pods(f.world.client.clone(), "web".into(), 0..PODS));
    let written = created_at_least(&mut operator, 50.0).await?;
    f.world.spire.kill_server();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.world.spire.start_server().await?;
    let restarted = Instant::now();
    let pods = creating.await??;
    let took = f
        .converged(
            "SPIRE server SIGKILLed mid-batch",
            &pods,
            restarted,
            Duration::from_secs(60),
        )
        .await?;
    let failed = operator.metrics().await?.value(
        "spire_operator_entry_writes_total",
        &[("operation", "create"), ("result", "failure")],
    );
    println!(
        "[fault] SPIRE server SIGKILLed after {written} of {PODS} creates, down {:.1} s, {failed} \
         creates failed and were retried; converged {:.1} s after its restart",
        (restarted - killed).as_secs_f64(),
        took.as_secs_f64()
    );
    Ok(())
}

#[tokio::test]
async fn spire_server_absent_at_start_then_up_converges_without_a_crash() -> anyhow::Result<()> {
    let mut f = Faults::start("fault-spire-late.test", 1).await?;
    f.world.spire.kill_server();
    let pods = f.pods("web", 0..50).await?;
    // Readiness does not follow SPIRE (the sidecar must not take the server's Service down).
    let mut operator =
        Operator::start(&f.world.control_plane, &f.world.spire, "faults", "").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    operator.ensure_running()?;
    let (status, body) = http::get(operator.health_addr(), "/readyz").await?;
    assert_eq!(status, 200, "readiness while SPIRE is down: {body}");
    let metrics = operator.metrics().await?;
    assert_eq!(metrics.value("spire_operator_spire_reachable", &[]), 0.0);
    assert_eq!(
        metrics.value("spire_operator_initial_sync_complete", &[]),
        0.0
    );

    f.world.spire.start_server().await?;
    let up = Instant::now();
    // The operator retries its connection with backoff capped at 10 s.
    f.converged(
        "SPIRE server up after the operator",
        &pods,
        up,
        Duration::from_secs(30),
    )
    .await?;
    operator.ensure_running()?;
    assert!(!operator.log_tail(10_000).contains("panicked"));
    Ok(())
}

#[tokio::test]
async fn postgres_killed_under_load_and_restarted_converges() -> anyhow::Result<()> {
    let mut f = Faults::start("fault-pg.test", 1).await?;
    let mut operator =
        Operator::start(&f.world.control_plane, &f.world.spire, "faults", "").await?;
    operator.wait_initial_sync().await?;
    let creating = tokio::spawn(create_pods(f.world.client.clone(), "web".into(), 0..PODS));
    let written = created_at_least(&mut operator, 50.0).await?;
    f.postgres.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.postgres.restart().await?;
    let restarted = Instant::now();
    let pods = creating.await??;
    let took = f
        .converged(
            "PostgreSQL SIGKILLed under load",
            &pods,
            restarted,
            Duration::from_secs(60),
        )
        .await?;
    let metrics = operator.metrics().await?;
    println!(
        "[fault] PostgreSQL SIGKILLed after {written} of {PODS} creates, down {:.1} s, {} \
         writes failed and were retried; converged {:.1} s after its restart",
        (restarted - killed).as_secs_f64(),
        metrics.value(
            "spire_operator_entry_writes_total",
            &[("result", "failure")]
        ),
        took.as_secs_f64()
    );
    assert_eq!(writes(&metrics, "delete"), 0.0, "nothing was ever deleted");
    Ok(())
}
