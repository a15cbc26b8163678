//! Fault 5: two SPIRE servers on one PostgreSQL, each with our operator as its sidecar,
//! leader-elected through the real kube-apiserver, the topology of the chart with
//! `replicas: 2` and an external database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::operator::Operator;
use e2e::proxy::TcpProxy;

use crate::common::{Faults, LEADER_CONFIG, LEASE_DURATION, writes};

/// A standby takes over at most this long after the lease's last renewal: the lease,
/// then kube-lease-manager's up-to-1 s pause before locking, then the lock itself.
const TAKEOVER_BOUND: Duration = Duration::from_secs(15 + 5);

async fn leading(operator: &Operator) -> anyhow::Result<bool> {
    Ok(operator
        .metrics()
        .await?
        .value("spire_operator_leader", &[])
        == 1.0)
}

/// Waits until `first` leads and the server holds every one of `pods`' entries.
async fn first_leader_converged(
    f: &Faults,
    first: &mut Operator,
    pods: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    first
        .wait_metric("spire_operator_leader", &[], LEASE_DURATION * 2, |v| {
            v == 1.0
        })
        .await?;
    f.converged(
        "first leader",
        pods,
        Instant::now(),
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_lease_without_duplicates() -> anyhow::Result<()> {
    let f = Faults::start("ha-kill.test", 2).await?;
    let cp = &f.world.control_plane;
    let mut pods = f.pods("web", 0..20).await?;
    let mut first = Operator::start(cp, &f.world.spire, "ha", LEADER_CONFIG).await?;
    first_leader_converged(&f, &mut first, &pods).await?;
    let mut second = Operator::start(cp, &f.others[0], "ha", LEADER_CONFIG).await?;
    assert!(
        !leading(&second).await?,
        "the standby leads while the leader is alive"
    );

    first.kill();
    let killed = Instant::now();
    // Changes while nobody leads: the next leader must pick them up.
    let gone: Vec<String> = (0..5).map(|i| format!("web-{i}")).collect();
    f.delete_pods(gone.clone()).await?;
    for name in &gone {
        pods.remove(name);
    }
    pods.extend(f.pods("web", 20..30).await?);

    second
        .wait_metric("spire_operator_leader", &[], TAKEOVER_BOUND * 2, |v| {
            v == 1.0
        })
        .await?;
    let takeover = killed.elapsed();
    println!(
        "[fault] leader SIGKILLed: standby leads after {:.1} s",
        takeover.as_secs_f64()
    );
    assert!(takeover <= TAKEOVER_BOUND, "takeover took {takeover:?}");
    f.converged(
        "after the leader was SIGKILLed",
        &pods,
        killed,
        TAKEOVER_BOUND + Duration::from_secs(30),
    )
    .await?;
    // The new leader wrote exactly the difference: nothing re-created from the handover.
    let metrics = second.metrics().await?;
    assert_eq!(
        writes(&metrics, "create"),
        10.0,
        "creates by the new leader"
    );
    assert_eq!(writes(&metrics, "delete"), 5.0, "deletes by the new leader");
    assert_eq!(writes(&metrics, "update"), 0.0, "updates by the new leader");
    Ok(())
}

#[tokio::test]
async fn the_leaders_spire_server_killed_and_restarted_converges_with_one_writer()
-> anyhow::Result<()> {
    let mut f = Faults::start("ha-spire.test", 2).await?;
    let mut pods = f.pods("web", 0..20).await?;
    let (mut first, mut second) = {
        let cp = &f.world.control_plane;
        let first = Operator::start(cp, &f.world.spire, "ha", LEADER_CONFIG).await?;
        let second = Operator::start(cp, &f.others[0], "ha", LEADER_CONFIG).await?;
        (first, second)
    };
    first_leader_converged(&f, &mut first, &pods).await?;

    // The sidecar's SPIRE server crashes; the kubelet would restart it in place. Work
    // arrives meanwhile; the leader keeps the lease and retries (docs/troubleshooting.md).
    f.world.spire.kill_server();
    let killed = Instant::now();
    pods.extend(f.pods("web", 20..30).await?);
    first
        .wait_metric(
            "spire_operator_spire_reachable",
            &[],
            Duration::from_secs(30),
            |v| v == 0.0,
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.world.spire.start_server().await?;
    let restarted = Instant::now();
    let took = f
        .converged(
            "after the leader's SPIRE server came back",
            &pods,
            restarted,
            Duration::from_secs(40),
        )
        .await?;
    println!(
        "[fault] leader's SPIRE server SIGKILLed for {:.1} s: converged {:.1} s after its restart",
        (restarted - killed).as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(leading(&first).await?, "the leader kept its lease");
    let standby = second.metrics().await?;
    assert_eq!(standby.value("spire_operator_leader", &[]), 0.0);
    assert_eq!(
        standby.value("spire_operator_entry_writes_total", &[]),
        0.0,
        "the standby wrote while the leader held the lease"
    );
    second.wait_ready(Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test]
async fn a_leader_cut_off_from_the_apiserver_stops_before_the_standby_starts() -> anyhow::Result<()>
{
    let f = Faults::start("ha-partition.test", 2).await?;
    let cp = &f.world.control_plane;
    let upstream = cp.url().trim_start_matches("https://").to_owned();
    let proxy = TcpProxy::start(&upstream).await?;
    let kubeconfig = f.world.spire.dir().join("partitioned.kubeconfig");
    proxy.kubeconfig(cp.kubeconfig(), &kubeconfig)?;
    let mut pods = f.pods("web", 0..20).await?;
    let mut first =
        Operator::start_as(cp, &f.world.spire, "ha", LEADER_CONFIG, &kubeconfig).await?;
    first_leader_converged(&f, &mut first, &pods).await?;
    let second = Operator::start(cp, &f.others[0], "ha", LEADER_CONFIG).await?;

    // The leader still reaches its SPIRE server, not the kube-apiserver: it cannot renew,
    // and its caches go stale (it would not see the deletes below).
    proxy.cut();
    let cut = Instant::now();
    let gone: Vec<String> = (0..5).map(|i| format!("web-{i}")).collect();
    f.delete_pods(gone.clone()).await?;
    for name in &gone {
        pods.remove(name);
    }
    pods.extend(f.pods("web", 20..30).await?);

    let (mut old_stopped, mut new_leads) = (None, None);
    while new_leads.is_none() && cut.elapsed() < TAKEOVER_BOUND * 2 {
        if old_stopped.is_none() {
            let exited = first.ensure_running().is_err();
            if exited || !leading(&first).await.unwrap_or(false) {
                old_stopped = Some(cut.elapsed());
            }
        }
        if leading(&second).await? {
            new_leads = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "[fault] leader partitioned from the apiserver: it stopped leading after {old_stopped:?}, \
         the standby led after {new_leads:?}"
    );
    let new_leads = new_leads.expect("the standby never took over");
    match old_stopped {
        Some(stopped) => assert!(
            stopped < new_leads,
            "two writers: the old leader stopped at {stopped:?}, the new one led at {new_leads:?}"
        ),
        None => panic!(
            "two writers: the partitioned leader still leads at {:?}, after the standby took over at {new_leads:?}; its log:\n{}",
            cut.elapsed(),
            first.log_tail(20)
        ),
    }
    // It stopped because its renewals failed, and said so; then it exited.
    let log = first.log_tail(100_000);
    assert!(
        log.contains("the Lease was not renewed in time: stepping down"),
        "{}",
        first.log_tail(40)
    );
    assert!(first.ensure_running().is_err(), "the old leader still runs");
    f.converged(
        "after the partition",
        &pods,
        cut,
        TAKEOVER_BOUND + Duration::from_secs(30),
    )
    .await?;
    drop(proxy);
    Ok(())
}
