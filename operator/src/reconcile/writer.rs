//! Sends a [`Plan`] to the SPIRE server: batched, a few batches in flight at once, each
//! call with a timeout sized to its batch. Reports per-entry outcomes; retrying is the
//! caller's business (failed keys stay dirty).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, FuturesUnordered, Stream, StreamExt};

use super::concurrency::Limiter;
pub use super::concurrency::WriteConcurrency;
use super::diff::Plan;
use super::ownership::Ownership;
use crate::metrics::{Metrics, Operation};
use crate::spire::api::types::{self, EntryMask};
use crate::spire::{EntryKey, EntrySpec, SpireClient, SpireError};

/// Entries per BatchCreateEntry / BatchUpdateEntry call.
const WRITE_BATCH: usize = 100;
/// IDs per BatchDeleteEntry call.
const DELETE_BATCH: usize = 500;

/// One create or update: the entry's ID and its fields.
type Write = (String, Arc<EntrySpec>);

/// gRPC code SPIRE answers for an entry whose key already exists.
const ALREADY_EXISTS: i32 = 6;
/// gRPC code for an ID that is not there (a delete that already happened).
const NOT_FOUND: i32 = 5;

/// What happened to a plan.
#[derive(Debug, Default)]
pub struct WriteReport {
    /// Entries created, with their new IDs.
    pub created: Vec<Write>,
    /// Entries updated in place.
    pub updated: Vec<Write>,
    /// IDs deleted (or already gone).
    pub deleted: Vec<String>,
    /// Keys whose write failed; they are retried.
    pub failed: Vec<Failure>,
    /// A create found its key already on the server: the mirror is stale.
    pub stale_mirror: bool,
    /// Fields the server dropped from what we sent: it does not support them.
    pub unsupported: Vec<&'static str>,
    /// Whether a whole call failed for lack of a server (reachability for /readyz).
    pub unreachable: bool,
    /// Whether some call got an answer.
    pub reached: bool,
}

/// One entry that could not be written.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The entry's key (for deletes, the key of the entry in the mirror).
    pub key: Option<EntryKey>,
    /// What the server or the transport said.
    pub message: String,
}

/// How long one batch call may take: a base for the round trip plus time per entry
/// (SPIRE writes each entry in its own datastore transaction).
pub fn batch_timeout(entries: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_millis(50) * entries as u32
}

/// Executes `plan`. `current` gives the server's entry for an ID as last known (the
/// mirror): its key for failure reports, and its fields, so that an update sends only
/// the fields that change.
pub async fn execute<'m>(
    client: &SpireClient,
    plan: Plan,
    ownership: &Ownership,
    mask: &EntryMask,
    metrics: &Metrics,
    concurrency: WriteConcurrency,
    current: impl Fn(&str) -> Option<&'m EntrySpec>,
) -> WriteReport {
    let mut report = WriteReport::default();
    let key_of = |id: &str| current(id).map(|spec| spec.key.clone());

    let deletes: Vec<Vec<String>> = plan
        .delete
        .chunks(DELETE_BATCH)
        .map(<[_]>::to_vec)
        .collect();
    let mut results = std::pin::pin!(in_flight(deletes, concurrency, |ids| async move {
        let timeout = batch_timeout(ids.len());
        let started = Instant::now();
        let result = timed(timeout, client.batch_delete_entries(ids.clone())).await;
        metrics.observe_rpc("entry.v1.Entry/BatchDeleteEntry", started.elapsed());
        (ids.len(), (ids, result))
    }));
    while let Some((ids, result)) = results.next().await {
        match result {
            Ok(results) => {
                report.reached = true;
                let (mut ok, mut failed) = (0, 0);
                for (id, r) in ids.into_iter().zip(results) {
                    let code = r.status.as_ref().map_or(0, |s| s.code);
                    if code == 0 || code == NOT_FOUND {
                        ok += 1;
                        report.deleted.push(id);
                    } else {
                        failed += 1;
                        report.failed.push(Failure {
                            key: key_of(&id),
                            message: status_message("deleting", &id, r.status.as_ref()),
                        });
                    }
                }
                metrics.record_writes(Operation::Delete, ok, failed);
            }
            Err(e) => {
                report.unreachable |= e.is_unavailable();
                metrics.rpc_failed("entry.v1.Entry/BatchDeleteEntry");
                metrics.record_writes(Operation::Delete, 0, ids.len() as u64);
                for id in ids {
                    report.failed.push(Failure {
                        key: key_of(&id),
                        message: crate::spire::error_chain(&e),
                    });
                }
            }
        }
    }

    let creates = batches(
        plan.create
            .into_iter()
            .map(|spec| (ownership.new_id(), spec)),
    );
    let updates = by_fields(plan.update, plan.rename, mask, &current);
    let calls = creates
        .into_iter()
        .map(|b| (Operation::Create, mask, b))
        .chain(updates.iter().flat_map(|(fields, entries)| {
            batches(entries.iter().cloned())
                .into_iter()
                .map(move |b| (Operation::Update, fields, b))
        }));
    let mut results = std::pin::pin!(in_flight(
        calls,
        concurrency,
        |(op, mask, batch)| async move {
            let entries: Vec<types::Entry> = batch
                .iter()
                .map(|(id, spec)| spec.to_api(id.clone()))
                .collect();
            let timeout = batch_timeout(batch.len());
            let started = Instant::now();
            let result = match op {
                Operation::Create => {
                    let r = timed(timeout, client.batch_create_entries(entries)).await;
                    metrics.observe_rpc("entry.v1.Entry/BatchCreateEntry", started.elapsed());
                    r
                }
                _ => {
                    let r = timed(timeout, client.batch_update_entries(entries, *mask)).await;
                    metrics.observe_rpc("entry.v1.Entry/BatchUpdateEntry", started.elapsed());
                    r
                }
            };
            (batch.len(), (op, mask.spiffe_id, batch, result))
        }
    ));
    while let Some((op, renaming, batch, result)) = results.next().await {
        let verb = if op == Operation::Create {
            "creating"
        } else {
            "updating"
        };
        match result {
            Ok(results) => {
                report.reached = true;
                let (mut ok, mut failed) = (0, 0);
                for ((id, spec), r) in batch.into_iter().zip(results) {
                    let code = r.status.as_ref().map_or(0, |s| s.code);
                    if code == 0 {
                        ok += 1;
                        if let Some(returned) = &r.entry {
                            note_unsupported(&spec, returned, &mut report.unsupported);
                        }
                        // The server keeps the ID we asked for; an older one may assign its own.
                        let id = r
                            .entry
                            .as_ref()
                            .map(|e| e.id.clone())
                            .filter(|i| !i.is_empty())
                            .unwrap_or(id);
                        if op == Operation::Create {
                            report.created.push((id, spec));
                        } else {
                            report.updated.push((id, spec));
                        }
                    } else {
                        failed += 1;
                        report.stale_mirror |= code == ALREADY_EXISTS || code == NOT_FOUND;
                        if renaming {
                            // The entry keeps its old key: plan it again too.
                            report.failed.push(Failure {
                                key: key_of(&id),
                                message: status_message(verb, &id, r.status.as_ref()),
                            });
                        }
                        report.failed.push(Failure {
                            message: status_message(
                                verb,
                                &spec.key.spiffe_id.to_string(),
                                r.status.as_ref(),
                            ),
                            key: Some(spec.key.clone()),
                        });
                    }
                }
                metrics.record_writes(op, ok, failed);
            }
            Err(e) => {
                report.unreachable |= e.is_unavailable();
                metrics.rpc_failed(match op {
                    Operation::Create => "entry.v1.Entry/BatchCreateEntry",
                    _ => "entry.v1.Entry/BatchUpdateEntry",
                });
                metrics.record_writes(op, 0, batch.len() as u64);
                for (id, spec) in batch {
                    if renaming {
                        report.failed.push(Failure {
                            key: key_of(&id),
                            message: crate::spire::error_chain(&e),
                        });
                    }
                    report.failed.push(Failure {
                        key: Some(spec.key.clone()),
                        message: crate::spire::error_chain(&e),
                    });
                }
            }
        }
    }
    report
}

/// Groups updates by the fields they send: the ones that differ from the entry as last
/// known (all of `mask` when it is unknown), plus the SPIFFE ID for renames (parent ID
/// and selectors never change in an update).
fn by_fields<'m>(
    updates: Vec<Write>,
    renames: Vec<Write>,
    mask: &EntryMask,
    current: &impl Fn(&str) -> Option<&'m EntrySpec>,
) -> Vec<(EntryMask, Vec<Write>)> {
    let mut groups: Vec<(EntryMask, Vec<Write>)> = Vec::new();
    let flagged = updates
        .into_iter()
        .map(|u| (u, false))
        .chain(renames.into_iter().map(|r| (r, true)));
    for ((id, spec), rename) in flagged {
        let mut fields = match current(&id) {
            Some(have) => spec.differences(have, mask),
            None => *mask,
        };
        fields.spiffe_id = rename;
        if fields == EntryMask::default() {
            // Planned against other fields than these: send every one.
            fields = *mask;
        }
        match groups.iter_mut().find(|(f, _)| *f == fields) {
            Some((_, entries)) => entries.push((id, spec)),
            None => groups.push((fields, vec![(id, spec)])),
        }
    }
    groups
}

/// Starts `start` for each of `calls`, with as many in flight as a [`Limiter`] for
/// `concurrency` allows, and yields the outputs as they finish. Each call's future
/// yields the number of entries it wrote with its output.
fn in_flight<C, Fut, T>(
    calls: impl IntoIterator<Item = C>,
    concurrency: WriteConcurrency,
    mut start: impl FnMut(C) -> Fut,
) -> impl Stream<Item = T>
where
    Fut: Future<Output = (usize, T)>,
{
    let state = (
        calls.into_iter(),
        FuturesUnordered::new(),
        Limiter::new(concurrency),
    );
    stream::unfold(state, move |(mut calls, mut running, mut limiter)| {
        while running.len() < limiter.current() {
            let Some(call) = calls.next() else { break };
            running.push(start(call));
        }
        async move {
            let (entries, output) = running.next().await?;
            limiter.completed(entries);
            Some((output, (calls, running, limiter)))
        }
    })
}

/// Splits writes into batches without copying them.
fn batches(items: impl IntoIterator<Item = Write>) -> Vec<Vec<Write>> {
    let mut items = items.into_iter().peekable();
    let mut batches = Vec::new();
    while items.peek().is_some() {
        batches.push(items.by_ref().take(WRITE_BATCH).collect());
    }
    batches
}

async fn timed<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, SpireError>>,
) -> Result<T, SpireError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(SpireError::Timeout(timeout)))
}

fn status_message(verb: &str, what: &str, status: Option<&types::Status>) -> String {
    match status {
        Some(s) => format!("{verb} entry {what}: code {}: {}", s.code, s.message),
        None => format!("{verb} entry {what}: no status"),
    }
}

/// An older SPIRE server silently drops fields it does not know; comparing them would
/// update the entry on every pass. Spot them in what the server echoes back.
fn note_unsupported(
    sent: &EntrySpec,
    returned: &types::Entry,
    unsupported: &mut Vec<&'static str>,
) {
    let mut note = |field: &'static str, dropped: bool| {
        if dropped && !unsupported.contains(&field) {
            unsupported.push(field);
        }
    };
    note(
        "jwt_svid_ttl",
        sent.jwt_svid_ttl != 0 && returned.jwt_svid_ttl == 0,
    );
    note("hint", !sent.hint.is_empty() && returned.hint.is_empty());
    note("store_svid", sent.store_svid && !returned.store_svid);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::spire::fake::{FakeSpire, FakeState};
    use crate::spire::{ClientOptions, SpireAddress, managed_fields};

    fn spec(path: &str) -> EntrySpec {
        EntrySpec::keyed(
            &format!("spiffe://td{path}"),
            "spiffe://td/agent",
            [format!("unix:path:{path}")],
        )
    }

    async fn server(name: &str, state: FakeState) -> (FakeSpire, SpireClient, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "spire-operator-writer-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let fake = FakeSpire::start(&socket, Arc::new(Mutex::new(state))).await;
        let options = ClientOptions {
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        let client = SpireClient::connect_with(SpireAddress::Unix(socket), &options)
            .await
            .unwrap();
        (fake, client, dir)
    }

    #[tokio::test]
    async fn per_entry_outcomes_are_reported_one_by_one() {
        let state = FakeState {
            entries: [
                ("old-id".to_string(), spec("/old").to_api("old-id".into())),
                ("cli-id".to_string(), spec("/taken").to_api("cli-id".into())),
            ]
            .into(),
            fail_writes_for: ["spiffe://td/broken".to_string()].into(),
            ..Default::default()
        };
        let (fake, client, dir) = server("outcomes", state).await;
        let metrics = Metrics::new();
        let ownership = Ownership::new(None, "c", None);
        let plan = Plan {
            create: vec![
                spec("/new").into(),
                spec("/broken").into(),
                spec("/taken").into(),
            ],
            update: vec![("gone-id".into(), spec("/gone").into())],
            delete: vec!["old-id".into(), "never-there".into()],
            ..Default::default()
        };
        let report = execute(
            &client,
            plan,
            &ownership,
            &managed_fields(),
            &metrics,
            WriteConcurrency::Auto,
            |_| None,
        )
        .await;
        assert_eq!(report.created.len(), 1);
        assert!(
            ownership.classify(&report.created[0].0, &report.created[0].1)
                == super::super::ownership::Class::Owned
        );
        let mut deleted = report.deleted.clone();
        deleted.sort();
        assert_eq!(
            deleted,
            ["never-there", "old-id"],
            "NotFound counts as deleted"
        );
        let mut failed: Vec<&str> = report.failed.iter().map(|f| f.message.as_str()).collect();
        failed.sort();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(
            failed
                .iter()
                .any(|m| m.contains("spiffe://td/taken") && m.contains("code 6"))
        );
        assert!(
            failed
                .iter()
                .any(|m| m.contains("spiffe://td/broken") && m.contains("code 13"))
        );
        assert!(
            failed
                .iter()
                .any(|m| m.contains("spiffe://td/gone") && m.contains("code 5"))
        );
        assert!(
            report.stale_mirror,
            "AlreadyExists and NotFound mean the mirror is stale"
        );
        assert!(report.reached && !report.unreachable);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"spire_operator_entry_writes_total{operation="create",result="success"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"spire_operator_entry_writes_total{operation="create",result="failure"} 2"#
            ),
            "{text}"
        );
        fake.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn updates_send_only_the_fields_that_change_and_renames_the_spiffe_id() {
        let (web, db, cache) = (spec("/web"), spec("/db"), spec("/cache"));
        let state = FakeState {
            entries: [
                ("web-id".to_string(), web.to_api("web-id".into())),
                ("db-id".to_string(), db.to_api("db-id".into())),
                ("cache-id".to_string(), cache.to_api("cache-id".into())),
            ]
            .into(),
            ..Default::default()
        };
        let (fake, client, dir) = server("fields", state).await;
        let mut hinted = web.clone();
        hinted.hint = "web".into();
        // db renamed: same parent and selectors, another SPIFFE ID.
        let mut renamed = db.clone();
        renamed.key.spiffe_id = "spiffe://td/db-v2".parse().unwrap();
        let mut cache_more = cache.clone();
        cache_more.dns_names = vec!["cache.svc".into()];
        let plan = Plan {
            update: vec![
                ("web-id".into(), hinted.into()),
                ("cache-id".into(), cache_more.clone().into()),
                ("unknown-id".into(), cache_more.into()),
            ],
            rename: vec![("db-id".into(), renamed.into())],
            ..Default::default()
        };
        let known = [("web-id", &web), ("db-id", &db), ("cache-id", &cache)];
        let current = |id: &str| known.iter().find(|(k, _)| *k == id).map(|(_, s)| *s);
        let ownership = Ownership::new(None, "c", None);
        let report = execute(
            &client,
            plan,
            &ownership,
            &managed_fields(),
            &Metrics::new(),
            WriteConcurrency::Auto,
            current,
        )
        .await;
        assert_eq!(report.updated.len(), 3, "{:?}", report.failed);
        let mut masks = fake.state.lock().unwrap().update_masks.clone();
        masks.sort_by_key(|m| format!("{m:?}"));
        let only = |f: fn(&mut EntryMask)| {
            let mut m = EntryMask::default();
            f(&mut m);
            m
        };
        let mut want = vec![
            only(|m| m.hint = true),
            only(|m| m.dns_names = true),
            only(|m| m.spiffe_id = true),
            // An entry the mirror does not know: every managed field.
            managed_fields(),
        ];
        want.sort_by_key(|m| format!("{m:?}"));
        assert_eq!(masks, want);
        fake.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_every_entry_and_says_so() {
        let (fake, client, dir) = server("unreachable", FakeState::default()).await;
        fake.stop().await;
        let plan = Plan {
            create: vec![spec("/a").into(), spec("/b").into()],
            delete: vec!["x".into()],
            ..Default::default()
        };
        let ownership = Ownership::new(None, "c", None);
        let x = spec("/x");
        let key_of = |id: &str| (id == "x").then_some(&x);
        let report = execute(
            &client,
            plan,
            &ownership,
            &managed_fields(),
            &Metrics::new(),
            WriteConcurrency::Auto,
            key_of,
        )
        .await;
        assert_eq!(report.failed.len(), 3);
        assert!(report.unreachable && !report.reached);
        assert!(
            report.failed.iter().all(|f| f.key.is_some()),
            "failures carry their keys"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
