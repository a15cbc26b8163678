//! A workload process gets its X.509-SVID and a JWT-SVID from the agent's Workload API
//! for an entry with a `unix:uid` selector.

use std::process::Command;

use e2e::Spire;
use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types::{Entry, Selector};

#[tokio::test]
async fn workload_fetches_its_svids() -> anyhow::Result<()> {
    let spire = Spire::start("workload.test").await?;
    let uid = rustix::process::getuid().as_raw();
    let id: SpiffeId = "spiffe://workload.test/smoke/workload".parse()?;
    let entry = Entry {
        spiffe_id: Some(id.to_api()),
        parent_id: Some(spire.agent_id().to_api()),
        selectors: vec![Selector {
            r#type: "unix".into(),
            value: format!("uid:{uid}"),
        }],
        ..Default::default()
    };
    let created = spire.client().batch_create_entries(vec![entry]).await?;
    assert_eq!(
        created[0].status.as_ref().map(|s| s.code),
        Some(0),
        "{created:?}"
    );

    let endpoint = spire.workload_endpoint();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_workload"))
            .args(["--jwt-audience", "smoke-audience", "--timeout-secs", "60"])
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
            .output()
    })
    .await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "workload failed: {stderr}");
    let got: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(got["x509_svid"]["spiffe_id"], id.to_string());
    assert!(got["x509_svid"]["chain_length"].as_u64() >= Some(1));
    assert_eq!(got["jwt_svid"]["spiffe_id"], id.to_string());
    assert_eq!(
        got["jwt_svid"]["audience"],
        serde_json::json!(["smoke-audience"])
    );
    Ok(())
}
