//! Measures the SPIRE server's own floor for registering entries: how long a real
//! spire-server (sqlite) takes to create, list and delete N entries through
//! BatchCreateEntry / ListEntries / BatchDeleteEntry at a given batch size and
//! concurrency. The operator's convergence time is judged against this floor.
//!
//! ```text
//! cargo run -p e2e --bin spire-floor -- [ENTRIES [BATCH [CONCURRENCY]]]   (default 5000 250 4)
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::Spire;
use spire_operator::spire::api::types::{Entry, Selector};
use spire_operator::spire::{SpiffeId, SpireAddress, SpireClient};
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let entries = args.next().transpose()?.unwrap_or(5000);
    let batch = args.next().transpose()?.unwrap_or(250).max(1);
    let concurrency = args.next().transpose()?.unwrap_or(4).max(1);

    let spire = Spire::start("floor.test").await?;
    // Generous: with sqlite the server serialises writes, so queued batches wait long.
    let address = SpireAddress::Unix(spire.server_socket().to_path_buf());
    let client = SpireClient::connect(address, Duration::from_secs(120)).await?;
    let parent = spire.agent_id().clone();
    let all: Vec<Entry> = (0..entries)
        .map(|i| {
            let id: SpiffeId = format!("spiffe://floor.test/ns/bench/pod/p{i}").parse()?;
            Ok(Entry {
                spiffe_id: Some(id.to_api()),
                parent_id: Some(parent.to_api()),
                selectors: vec![
                    Selector {
                        r#type: "k8s".into(),
                        value: format!("pod-uid:{i:08}"),
                    },
                    Selector {
                        r#type: "k8s".into(),
                        value: "ns:bench".into(),
                    },
                ],
                ..Default::default()
            })
        })
        .collect::<anyhow::Result<_>>()?;

    let started = Instant::now();
    let chunks: Vec<Vec<Entry>> = all.chunks(batch).map(<[Entry]>::to_vec).collect();
    let created = run_batches(&client, chunks, concurrency, |c, chunk| async move {
        let results = c.batch_create_entries(chunk).await?;
        results
            .iter()
            .try_for_each(|r| match r.status.as_ref().map(|s| s.code) {
                Some(0) => Ok(()),
                _ => bail!("create failed: {:?}", r.status),
            })?;
        Ok(results
            .into_iter()
            .filter_map(|r| r.entry.map(|e| e.id))
            .collect::<Vec<_>>())
    })
    .await?;
    let create_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let listed = client.list_entries().await?.len();
    let list_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let chunks: Vec<Vec<String>> = created.chunks(batch).map(<[String]>::to_vec).collect();
    run_batches(&client, chunks, concurrency, |c, chunk| async move {
        c.batch_delete_entries(chunk).await?;
        Ok(Vec::<String>::new())
    })
    .await?;
    let delete_secs = started.elapsed().as_secs_f64();

    println!("spire-server floor: {entries} entries, batch {batch}, concurrency {concurrency}");
    println!(
        "  create  {create_secs:8.2} s  {:8.0} entries/s",
        entries as f64 / create_secs
    );
    println!("  list    {list_secs:8.2} s  ({listed} entries)");
    println!(
        "  delete  {delete_secs:8.2} s  {:8.0} entries/s",
        entries as f64 / delete_secs
    );
    Ok(())
}

/// Sends `chunks` with at most `concurrency` calls in flight; collects what each returns.
async fn run_batches<T, F, Fut>(
    client: &SpireClient,
    chunks: Vec<T>,
    concurrency: usize,
    call: F,
) -> anyhow::Result<Vec<String>>
where
    T: Send + 'static,
    F: Fn(SpireClient, T) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<String>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for chunk in chunks {
        let permit = permits.clone().acquire_owned().await?;
        let fut = call(client.clone(), chunk);
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.extend(task.await.context("batch task panicked")??);
    }
    Ok(out)
}
