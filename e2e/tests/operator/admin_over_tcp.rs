//! The operator outside the SPIRE server's pod: it reaches the real server's TCP API
//! with mTLS, as its own X.509-SVID from the real agent's Workload API, and the server
//! authorizes it through `admin_ids`. No admin socket is configured.

use std::time::{Duration, Instant};

use e2e::entries;
use e2e::operator::Operator;
use e2e::spire::Options as SpireOptions;
use e2e::world::World;
use e2e::{Spire, wait};
use serde_json::json;
use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types::{Entry, Selector};

const TRUST_DOMAIN: &str = "tcp.test";
const OPERATOR_ID: &str = "spiffe://tcp.test/spire-operator";

/// The operator's own X.509-SVID lifetime: short, so that the agent rotates it (at about
/// half its lifetime) several times while the test runs.
const OPERATOR_SVID_TTL: Duration = Duration::from_secs(30);

/// How long the rotation test keeps reconciling: past the 3 minutes after which SPIRE
/// closes a connection (its MaxConnectionAge, ±10 %), so the operator reconnects once
/// with a rotated SVID.
const ROTATION_WINDOW: Duration = Duration::from_secs(210);

/// The serial of the client SVID each new TLS connection presented, from the log.
fn handshake_serials(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("TLS connection to the SPIRE server established"))
        .filter_map(|l| l.split("client_svid_serial=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Registers this test process's uid (the operator runs as it) as `OPERATOR_ID`.
async fn register_operator(spire: &Spire, ttl: Duration) -> anyhow::Result<()> {
    let uid = rustix::process::getuid().as_raw();
    let id: SpiffeId = OPERATOR_ID.parse()?;
    let entry = Entry {
        spiffe_id: Some(id.to_api()),
        parent_id: Some(spire.agent_id().to_api()),
        selectors: vec![Selector {
            r#type: "unix".into(),
            value: format!("uid:{uid}"),
        }],
        x509_svid_ttl: i32::try_from(ttl.as_secs())?,
        ..Default::default()
    };
    let created = spire.client().batch_create_entries(vec![entry]).await?;
    let code = created[0].status.as_ref().map_or(0, |s| s.code);
    anyhow::ensure!(code == 0, "registering the operator: {created:?}");
    Ok(())
}

/// Config for the TCP transport only: the generated socket path is blanked.
fn tcp_config(spire: &Spire, server_id: Option<&str>) -> String {
    let server_id = server_id
        .map(|id| format!("spireServerSPIFFEID: {id}\n"))
        .unwrap_or_default();
    format!(
        "spireServerSocketPath: \"\"\nspireServerAddress: \"{}\"\nworkloadAPIAddress: \"{}\"\ngcInterval: 2s\n{server_id}",
        spire.server_address(),
        spire.workload_endpoint(),
    )
}

async fn static_entry(world: &World, name: &str) -> anyhow::Result<String> {
    let id = format!("spiffe://{TRUST_DOMAIN}/static/{name}");
    world
        .apply_spire_object(
            "ClusterStaticEntry",
            name,
            json!({"spiffeID": id, "parentID": format!("spiffe://{TRUST_DOMAIN}/host"),
                   "selectors": [format!("unix:uid:{}", 2000)]}),
        )
        .await?;
    Ok(id)
}

/// Waits until `operator`'s log contains `needle`.
async fn wait_log(operator: &mut Operator, needle: &str) -> anyhow::Result<()> {
    let path = operator.log_path();
    wait::until(
        &format!("operator log line with {needle:?}"),
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let found = std::fs::read_to_string(&path).is_ok_and(|log| log.contains(needle));
            async move { Ok(found.then_some(())) }
        },
    )
    .await
    .map_err(|e| e.context(operator.log_tail(40)))
}

#[tokio::test]
async fn reconciles_over_tcp_across_svid_rotations_and_refuses_a_server_with_another_id()
-> anyhow::Result<()> {
    let world = World::start_with(
        TRUST_DOMAIN,
        SpireOptions {
            admin_ids: vec![OPERATOR_ID.into()],
            ..Default::default()
        },
    )
    .await?;
    register_operator(&world.spire, OPERATOR_SVID_TTL).await?;

    // Expecting another server ID: the handshake is refused, nothing is written.
    let wrong_id = format!("spiffe://{TRUST_DOMAIN}/not/the/server");
    let mut impostor_check = Operator::spawn(
        &world.control_plane,
        &world.spire,
        "tcp",
        &tcp_config(&world.spire, Some(&wrong_id)),
    )
    .await?;
    let refused_id = static_entry(&world, "refused").await?;
    wait_log(
        &mut impostor_check,
        &format!(
            "the SPIRE server presented SPIFFE ID spiffe://{TRUST_DOMAIN}/spire/server, expected {wrong_id}"
        ),
    )
    .await?;
    entries::holds_for(
        &world.spire,
        "no entry written through a refused server",
        Duration::from_secs(3),
        |all| all.iter().all(|e| e.spiffe_id != refused_id),
    )
    .await?;
    impostor_check.stop();

    // The real server ID (the default): reconciles, and keeps doing so across rotations.
    let mut operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "tcp",
        &tcp_config(&world.spire, None),
    )
    .await?;
    operator.wait_initial_sync().await?;
    entries::wait_for(&world.spire, "the entry made over TCP", |all| {
        all.iter().any(|e| e.spiffe_id == refused_id)
    })
    .await?;

    let started = Instant::now();
    let mut expiries: Vec<(f64, Duration)> = Vec::new();
    let mut created = 0;
    while started.elapsed() < ROTATION_WINDOW {
        let metrics = operator.metrics().await?;
        let expiry = metrics.value("spire_operator_workload_svid_expiry_timestamp_seconds", &[]);
        if expiries.last().is_none_or(|(last, _)| *last != expiry) {
            expiries.push((expiry, started.elapsed()));
        }
        let id = static_entry(&world, &format!("during-{created}")).await?;
        created += 1;
        entries::wait_for_within(
            &world.spire,
            &format!("{id} written"),
            Duration::from_secs(20),
            |all| all.iter().any(|e| e.spiffe_id == id),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let metrics = operator.metrics().await?;
    // + 0.0: an empty sum is -0.0, which prints as "-0".
    let failed_calls = metrics.value("spire_operator_spire_rpc_failures_total", &[]) + 0.0;
    let failed_writes = metrics.value(
        "spire_operator_entry_writes_total",
        &[("result", "failure")],
    ) + 0.0;
    let updates = metrics.value("spire_operator_workload_svid_updates_total", &[]);
    let lists = metrics.value("spire_operator_entry_lists_total", &[]);
    let rotations = expiries.len().saturating_sub(1);
    let serials = handshake_serials(&std::fs::read_to_string(operator.log_path())?);
    eprintln!("client SVID serials of the operator's TLS connections: {serials:?}");
    eprintln!(
        "operator SVID TTL {OPERATOR_SVID_TTL:?}; over {:?}: {rotations} rotations seen \
         (new expiry first seen at {:?}), {updates} Workload API updates, {created} entries \
         created, {lists} full listings, {failed_calls} failed SPIRE calls, {failed_writes} failed writes",
        started.elapsed(),
        expiries.iter().map(|(_, at)| *at).collect::<Vec<_>>(),
    );
    anyhow::ensure!(
        rotations >= 1,
        "no SVID rotation seen in {ROTATION_WINDOW:?}: {expiries:?}"
    );
    // A connection made after a rotation presented the rotated SVID, and was accepted.
    anyhow::ensure!(
        serials.len() >= 2 && serials.windows(2).all(|w| w[0] != w[1]),
        "expected a reconnection with a rotated SVID, got handshakes with {serials:?}"
    );
    anyhow::ensure!(
        failed_calls == 0.0 && failed_writes == 0.0,
        "{failed_calls} failed calls, {failed_writes} failed writes across rotations:\n{}",
        operator.log_tail(40)
    );
    Ok(())
}

#[tokio::test]
async fn an_operator_missing_from_admin_ids_is_denied() -> anyhow::Result<()> {
    let world = World::start_with(
        TRUST_DOMAIN,
        SpireOptions {
            admin_ids: vec![format!("spiffe://{TRUST_DOMAIN}/someone-else")],
            ..Default::default()
        },
    )
    .await?;
    register_operator(&world.spire, Duration::from_secs(3600)).await?;
    let mut operator = Operator::spawn(
        &world.control_plane,
        &world.spire,
        "tcp",
        &tcp_config(&world.spire, None),
    )
    .await?;
    let id = static_entry(&world, "denied").await?;
    wait_log(
        &mut operator,
        "SPIRE server call entry.v1.Entry/ListEntries failed with PermissionDenied",
    )
    .await?;
    entries::holds_for(
        &world.spire,
        "no entry written without admin rights",
        Duration::from_secs(3),
        |all| all.iter().all(|e| e.spiffe_id != id),
    )
    .await?;
    let failed = operator
        .metrics()
        .await?
        .value("spire_operator_spire_rpc_failures_total", &[]);
    assert!(failed >= 1.0, "failed calls counted: {failed}");
    Ok(())
}

#[tokio::test]
async fn bootstrap_entries_for_an_operator_deployment_are_made_once() -> anyhow::Result<()> {
    use spire_operator::spire::bootstrap::{Ensured, OperatorIdentity, ensure};
    let spire = Spire::start(TRUST_DOMAIN).await?;
    let identity = OperatorIdentity {
        spiffe_id: OPERATOR_ID.parse()?,
        trust_domain: TRUST_DOMAIN.into(),
        cluster_name: "prod".into(),
        namespace: "spire-system".into(),
        service_account: "spire-operator".into(),
        x509_svid_ttl: Duration::from_secs(600),
    };
    let first = ensure(&spire.client(), identity.entries()?).await?;
    assert_eq!(
        first,
        Ensured {
            created: 2,
            existing: 0
        }
    );
    let again = ensure(&spire.client(), identity.entries()?).await?;
    assert_eq!(
        again,
        Ensured {
            created: 0,
            existing: 2
        }
    );
    let all = entries::list(&spire).await?;
    let alias = format!("spiffe://{TRUST_DOMAIN}/spire-rs/cluster/prod");
    assert!(
        all.iter().any(|e| e.spiffe_id == alias
            && e.parent_id == format!("spiffe://{TRUST_DOMAIN}/spire/server")
            && e.has_selector("k8s_psat:cluster:prod")),
        "{}",
        entries::describe(&all)
    );
    assert!(
        all.iter().any(|e| e.spiffe_id == OPERATOR_ID
            && e.parent_id == alias
            && e.has_selector("k8s:ns:spire-system")
            && e.has_selector("k8s:sa:spire-operator")),
        "{}",
        entries::describe(&all)
    );
    Ok(())
}

#[tokio::test]
async fn check_spire_reaches_the_server_over_tcp() -> anyhow::Result<()> {
    let spire = Spire::start_with(
        TRUST_DOMAIN,
        SpireOptions {
            admin_ids: vec![OPERATOR_ID.into()],
            ..Default::default()
        },
    )
    .await?;
    register_operator(&spire, Duration::from_secs(3600)).await?;
    let binary = Operator::binary()?;
    let (address, endpoint) = (spire.server_address(), spire.workload_endpoint());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary)
            .args(["check-spire", "--spire-server-address", &address])
            .args(["--workload-api-address", &endpoint, "--timeout", "60s"])
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for want in [
        format!("our X.509-SVID:      {OPERATOR_ID}"),
        format!("trust domain:      {TRUST_DOMAIN}"),
        "attested agents:   1".into(),
    ] {
        assert!(stdout.contains(&want), "{want:?} not in:\n{stdout}");
    }
    Ok(())
}
