//! The real agent attests to the real server with a join token minted through our client.

use e2e::Spire;
use spire_operator::spire::SpiffeId;

#[tokio::test]
async fn agent_attests_with_a_join_token() -> anyhow::Result<()> {
    let spire = Spire::start("attest.test").await?;
    let agents = spire.client().list_agents().await?;
    let ours: Vec<_> = agents
        .iter()
        .filter(|a| {
            a.id.as_ref()
                .and_then(|id| SpiffeId::from_api(id).ok())
                .as_ref()
                == Some(spire.agent_id())
        })
        .collect();
    assert_eq!(ours.len(), 1, "agents on the server: {agents:?}");
    assert_eq!(ours[0].attestation_type, "join_token");
    assert!(
        !ours[0].x509svid_serial_number.is_empty(),
        "the agent holds an SVID"
    );
    assert!(!ours[0].banned);
    assert!(
        spire.workload_socket().exists(),
        "the agent serves the Workload API"
    );
    Ok(())
}
