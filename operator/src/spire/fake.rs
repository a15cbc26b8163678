//! An in-process SPIRE Entry API on a Unix socket, for unit tests of the failure paths:
//! entries kept in memory, AlreadyExists on duplicate keys, per-SPIFFE-ID write failures
//! on demand, call counters, and a stop switch for "server unreachable".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::api::entry::entry_server::{Entry, EntryServer};
use super::api::entry::*;
use super::api::types;

/// What the fake holds and how it misbehaves; shared with the test.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Entries by ID.
    pub entries: BTreeMap<String, types::Entry>,
    /// SPIFFE IDs (`spiffe://td/path`) whose create / update fails with code 13.
    pub fail_writes_for: BTreeSet<String>,
    /// ListEntries calls answered.
    pub list_calls: usize,
    /// Entries sent to BatchCreateEntry, whatever the outcome.
    pub create_attempts: usize,
    /// Entries created / updated / deleted successfully.
    pub created: usize,
    /// Entries updated successfully.
    pub updated: usize,
    /// Entries deleted successfully.
    pub deleted: usize,
    /// The mask of each BatchUpdateEntry call, in order.
    pub update_masks: Vec<types::EntryMask>,
    /// Fields the server drops (like an older SPIRE): `hint` is the one modelled.
    pub drops_hint: bool,
}

/// A running fake server; dropping it stops it.
pub struct FakeSpire {
    /// The socket it listens on.
    pub socket: PathBuf,
    /// Its state.
    pub state: Arc<Mutex<FakeState>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSpire {
    /// Serves on `socket` with `state`.
    pub async fn start(socket: &Path, state: Arc<Mutex<FakeState>>) -> Self {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("binding the fake SPIRE socket");
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let conn = listener.accept().await.map(|(stream, _)| stream);
            Some((conn, listener))
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = EntryServer::new(Service(state.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            socket: socket.to_owned(),
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Stops serving and removes the socket: the server is unreachable.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for FakeSpire {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Service(Arc<Mutex<FakeState>>);

impl Service {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(entry: &types::Entry) -> (String, String, BTreeSet<String>) {
    let id = |i: &Option<types::Spiffeid>| {
        i.as_ref()
            .map(|i| format!("spiffe://{}{}", i.trust_domain, i.path))
            .unwrap_or_default()
    };
    (
        id(&entry.spiffe_id),
        id(&entry.parent_id),
        entry
            .selectors
            .iter()
            .map(|s| format!("{}:{}", s.r#type, s.value))
            .collect(),
    )
}

fn status(code: i32, message: &str) -> Option<types::Status> {
    Some(types::Status {
        code,
        message: message.into(),
    })
}

#[tonic::async_trait]
impl Entry for Service {
    async fn count_entries(
        &self,
        _: Request<CountEntriesRequest>,
    ) -> Result<Response<CountEntriesResponse>, Status> {
        let count = self.state().entries.len() as i32;
        Ok(Response::new(CountEntriesResponse { count }))
    }

    async fn list_entries(
        &self,
        request: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        state.list_calls += 1;
        let size = if request.page_size > 0 {
            request.page_size as usize
        } else {
            usize::MAX
        };
        let entries: Vec<types::Entry> = state
            .entries
            .range::<String, _>((
                std::ops::Bound::Excluded(request.page_token.clone()),
                std::ops::Bound::Unbounded,
            ))
            .take(size)
            .map(|(_, e)| e.clone())
            .collect();
        let next_page_token = match entries.last() {
            Some(last) if entries.len() == size => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn get_entry(
        &self,
        request: Request<GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        let id = request.into_inner().id;
        self.state()
            .entries
            .get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("entry {id}")))
    }

    async fn batch_create_entry(
        &self,
        request: Request<BatchCreateEntryRequest>,
    ) -> Result<Response<BatchCreateEntryResponse>, Status> {
        let mut state = self.state();
        let mut results = Vec::new();
        for mut entry in request.into_inner().entries {
            state.create_attempts += 1;
            let k = key(&entry);
            if state.fail_writes_for.contains(&k.0) {
                results.push(EntryResult {
                    status: status(13, "injected failure"),
                    entry: None,
                });
                continue;
            }
            if state.entries.values().any(|e| key(e) == k) {
                results.push(EntryResult {
                    status: status(6, "similar entry already exists"),
                    entry: None,
                });
                continue;
            }
            if entry.id.is_empty() {
                entry.id = uuid::Uuid::new_v4().to_string();
            }
            if state.drops_hint {
                entry.hint.clear();
            }
            state.created += 1;
            state.entries.insert(entry.id.clone(), entry.clone());
            results.push(EntryResult {
                status: status(0, "OK"),
                entry: Some(entry),
            });
        }
        Ok(Response::new(BatchCreateEntryResponse { results }))
    }

    async fn batch_update_entry(
        &self,
        request: Request<BatchUpdateEntryRequest>,
    ) -> Result<Response<BatchUpdateEntryResponse>, Status> {
        let mut state = self.state();
        let mut results = Vec::new();
        let request = request.into_inner();
        state
            .update_masks
            .push(request.input_mask.unwrap_or_default());
        for mut entry in request.entries {
            if state.fail_writes_for.contains(&key(&entry).0) {
                results.push(EntryResult {
                    status: status(13, "injected failure"),
                    entry: None,
                });
                continue;
            }
            if !state.entries.contains_key(&entry.id) {
                results.push(EntryResult {
                    status: status(5, "entry not found"),
                    entry: None,
                });
                continue;
            }
            if state.drops_hint {
                entry.hint.clear();
            }
            state.updated += 1;
            state.entries.insert(entry.id.clone(), entry.clone());
            results.push(EntryResult {
                status: status(0, "OK"),
                entry: Some(entry),
            });
        }
        Ok(Response::new(BatchUpdateEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        request: Request<BatchDeleteEntryRequest>,
    ) -> Result<Response<BatchDeleteEntryResponse>, Status> {
        let mut state = self.state();
        let results = request
            .into_inner()
            .ids
            .into_iter()
            .map(|id| {
                let found = state.entries.remove(&id).is_some();
                state.deleted += usize::from(found);
                batch_delete_entry_response::Result {
                    status: if found {
                        status(0, "OK")
                    } else {
                        status(5, "entry not found")
                    },
                    id,
                }
            })
            .collect();
        Ok(Response::new(BatchDeleteEntryResponse { results }))
    }
}
