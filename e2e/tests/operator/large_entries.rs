//! A SPIRE server holding entries with many long DNS names: one default ListEntries page
//! of them is larger than tonic's default 4 MiB receive limit, which made every listing
//! fail and the operator never finish its first sync.

use std::time::Duration;

use e2e::operator::Operator;
use e2e::world::World;
use spire_operator::spire::api::types;

const TRUST_DOMAIN: &str = "large.test";
const ENTRIES: usize = 1000;
const DNS_NAMES: usize = 50;

fn entry(i: usize) -> types::Entry {
    let id = |path: String| types::Spiffeid {
        trust_domain: TRUST_DOMAIN.into(),
        path,
    };
    types::Entry {
        spiffe_id: Some(id(format!("/workload/{i}"))),
        parent_id: Some(id("/host".into())),
        selectors: vec![types::Selector {
            r#type: "unix".into(),
            value: format!("uid:{i}"),
        }],
        // 113 characters each, labels under 63.
        dns_names: (0..DNS_NAMES)
            .map(|n| {
                format!(
                    "w{i:04}-n{n:02}-{}.team-{}.svc.cluster.local",
                    "a".repeat(50),
                    "b".repeat(30)
                )
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_thousand_entries_of_fifty_long_dns_names_are_listed() -> anyhow::Result<()> {
    let world = World::start(TRUST_DOMAIN).await?;
    let client = world.spire.client();
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(50) {
        let results = client
            .batch_create_entries(chunk.iter().map(|i| entry(*i)).collect())
            .await?;
        for result in results {
            let code = result.status.map_or(0, |s| s.code);
            anyhow::ensure!(code == 0, "creating an entry: code {code}");
        }
    }
    let listed = client.list_entries().await?;
    assert_eq!(listed.len(), ENTRIES);
    let dns_bytes: usize = listed
        .iter()
        .flat_map(|e| &e.dns_names)
        .map(String::len)
        .sum();
    assert!(
        dns_bytes > 4 * 1024 * 1024,
        "the listing must exceed 4 MiB to test the limit; DNS names alone are {dns_bytes} bytes"
    );

    let mut operator = Operator::start(&world.control_plane, &world.spire, "large", "").await?;
    operator.wait_initial_sync().await?;
    let foreign = operator
        .wait_metric(
            "spire_operator_entries_foreign",
            &[],
            Duration::from_secs(30),
            |v| v == ENTRIES as f64,
        )
        .await?;
    assert_eq!(foreign, ENTRIES as f64);
    Ok(())
}
