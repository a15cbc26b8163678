//! The operator runs as a sidecar of the SPIRE server, whose Service drops the pod while
//! any container is unready: readiness must not follow SPIRE reachability or sync
//! state, or the operator would take identity issuance down with it.

use e2e::http;
use e2e::operator::Operator;
use e2e::world::World;

#[tokio::test]
async fn ready_while_spire_is_unreachable_and_nothing_is_synced() -> anyhow::Result<()> {
    let world = World::start("health.test").await?;
    let missing = world.spire.dir().join("no-such-dir").join("api.sock");
    let operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "health",
        &format!("spireServerSocketPath: {}\n", missing.display()),
    )
    .await?;
    let (status, body) = http::get(operator.health_addr(), "/readyz").await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http::get(operator.health_addr(), "/healthz").await?;
    assert_eq!(status, 200, "{body}");
    let metrics = operator.metrics().await?;
    assert_eq!(metrics.value("spire_operator_spire_reachable", &[]), 0.0);
    assert_eq!(
        metrics.value("spire_operator_initial_sync_complete", &[]),
        0.0
    );
    Ok(())
}
