//! Entries made with the SPIRE CLI (what users do today with `kubectl exec`) are read
//! by our client exactly as the CLI wrote them, and the CLI shows what our client
//! writes: the operator must recognise CLI entries as foreign and leave them alone.

use e2e::Spire;
use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types::{Entry, Selector};

#[tokio::test]
async fn cli_and_client_see_each_others_entries() -> anyhow::Result<()> {
    let spire = Spire::start("cli.test").await?;
    let parent = spire.agent_id().to_string();
    let out = spire.server_cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://cli.test/legacy/db",
        "-parentID",
        &parent,
        "-selector",
        "unix:uid:1234",
        "-selector",
        "unix:gid:5678",
        "-x509SVIDTTL",
        "600",
        "-dns",
        "db.legacy",
        "-hint",
        "made-by-hand",
    ])?;
    let id = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("Entry ID")
                .map(|rest| rest.trim_start_matches([' ', ':']).trim().to_owned())
        })
        .expect("the CLI prints the new entry's ID");

    let entry = spire.client().get_entry(&id).await?;
    assert_eq!(
        SpiffeId::from_api(&entry.spiffe_id.unwrap_or_default())?.to_string(),
        "spiffe://cli.test/legacy/db"
    );
    assert_eq!(
        SpiffeId::from_api(&entry.parent_id.unwrap_or_default())?.to_string(),
        parent
    );
    let mut selectors: Vec<String> = entry
        .selectors
        .iter()
        .map(|s| format!("{}:{}", s.r#type, s.value))
        .collect();
    selectors.sort();
    assert_eq!(selectors, ["unix:gid:5678", "unix:uid:1234"]);
    assert_eq!(entry.x509_svid_ttl, 600);
    assert_eq!(entry.dns_names, ["db.legacy"]);
    assert_eq!(entry.hint, "made-by-hand");

    // And the other way round: the CLI shows what our client wrote.
    let ours = Entry {
        spiffe_id: Some("spiffe://cli.test/ours/web".parse::<SpiffeId>()?.to_api()),
        parent_id: Some(spire.agent_id().to_api()),
        selectors: vec![Selector {
            r#type: "unix".into(),
            value: "uid:4321".into(),
        }],
        ..Default::default()
    };
    let created = spire
        .client()
        .batch_create_entries(vec![ours])
        .await?
        .remove(0);
    let our_id = created.entry.map(|e| e.id).unwrap_or_default();
    let shown = spire.server_cli(&["entry", "show", "-entryID", &our_id])?;
    assert!(shown.contains("spiffe://cli.test/ours/web"), "{shown}");
    assert!(shown.contains("unix:uid:4321"), "{shown}");
    Ok(())
}
