//! The federation loop's ownership invariants against an in-process fake TrustDomain
//! service and a fake Kubernetes API: nothing is created before the ownership record is
//! saved, and a create that finds the relationship already there withdraws its claim.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use super::runner::{FederationContext, FederationReconciler};
use crate::config::Config;
use crate::crd::ClusterFederatedTrustDomain;
use crate::metrics::Metrics;
use crate::reconcile::dirty::DirtySet;
use crate::spire::api::trustdomain::trust_domain_server::{TrustDomain, TrustDomainServer};
use crate::spire::api::trustdomain::*;
use crate::spire::api::types;
use crate::spire::{SpireAddress, SpireClient};

/// The fake server's relationships and misbehaviour.
#[derive(Default)]
struct Server {
    relationships: BTreeMap<String, types::FederationRelationship>,
    /// Answer every create with AlreadyExists, as when someone else created the
    /// relationship between our listing and our create.
    racing_creator: bool,
    creates: usize,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<Server>>);

fn ok() -> Option<types::Status> {
    Some(types::Status {
        code: 0,
        message: String::new(),
    })
}

#[tonic::async_trait]
impl TrustDomain for Fake {
    async fn list_federation_relationships(
        &self,
        _: Request<ListFederationRelationshipsRequest>,
    ) -> Result<Response<ListFederationRelationshipsResponse>, Status> {
        let server = self.0.lock().unwrap();
        Ok(Response::new(ListFederationRelationshipsResponse {
            federation_relationships: server.relationships.values().cloned().collect(),
            next_page_token: String::new(),
        }))
    }

    async fn get_federation_relationship(
        &self,
        _: Request<GetFederationRelationshipRequest>,
    ) -> Result<Response<types::FederationRelationship>, Status> {
        Err(Status::unimplemented("not used"))
    }

    async fn batch_create_federation_relationship(
        &self,
        request: Request<BatchCreateFederationRelationshipRequest>,
    ) -> Result<Response<BatchCreateFederationRelationshipResponse>, Status> {
        let mut server = self.0.lock().unwrap();
        let mut results = Vec::new();
        for relationship in request.into_inner().federation_relationships {
            server.creates += 1;
            let status = if server.racing_creator {
                Some(types::Status {
                    code: 6,
                    message: "already exists".into(),
                })
            } else {
                server
                    .relationships
                    .insert(relationship.trust_domain.clone(), relationship.clone());
                ok()
            };
            results.push(FederationRelationshipResult {
                status,
                federation_relationship: Some(relationship),
            });
        }
        Ok(Response::new(BatchCreateFederationRelationshipResponse {
            results,
        }))
    }

    async fn batch_update_federation_relationship(
        &self,
        _: Request<BatchUpdateFederationRelationshipRequest>,
    ) -> Result<Response<BatchUpdateFederationRelationshipResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }

    async fn batch_delete_federation_relationship(
        &self,
        _: Request<BatchDeleteFederationRelationshipRequest>,
    ) -> Result<Response<BatchDeleteFederationRelationshipResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }

    async fn refresh_bundle(
        &self,
        _: Request<RefreshBundleRequest>,
    ) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }
}

/// What the fake API server saw; whether it refuses ConfigMap writes.
#[derive(Default)]
struct KubeLog {
    config_map_patches: Vec<Value>,
    status_patches: Vec<Value>,
    events: Vec<Value>,
    fail_config_maps: bool,
}

async fn fake_kube(log: Arc<Mutex<KubeLog>>) -> kube::Client {
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let log = log.clone();
        async move {
            let path = uri.path().to_owned();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut log = log.lock().unwrap();
            let failure = |code: u16, reason: &str| {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": reason, "reason": reason, "code": code})
                .to_string()
            };
            if method == Method::GET {
                return (StatusCode::NOT_FOUND, failure(404, "NotFound")).into_response();
            }
            if path.contains("/configmaps/") {
                if log.fail_config_maps {
                    return (StatusCode::FORBIDDEN, failure(403, "Forbidden")).into_response();
                }
                log.config_map_patches.push(body.clone());
            } else if path.ends_with("/status") {
                log.status_patches.push(body.clone());
                let name = path.rsplit('/').nth(1).unwrap_or_default();
                let object = json!({"apiVersion": "spire.spiffe.io/v1alpha1",
                    "kind": "ClusterFederatedTrustDomain", "metadata": {"name": name},
                    "spec": {"trustDomain": "x", "bundleEndpointURL": "https://x",
                             "bundleEndpointProfile": {"type": "https_web"}}});
                return (StatusCode::OK, object.to_string()).into_response();
            } else if path.contains("/events") {
                log.events.push(body.clone());
            }
            (StatusCode::OK, body.to_string()).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

struct Harness {
    reconciler: FederationReconciler,
    server: Arc<Mutex<Server>>,
    kube: Arc<Mutex<KubeLog>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let server = Arc::new(Mutex::new(Server::default()));
        let listener = UnixListener::bind(&socket).unwrap();
        let incoming = futures::stream::unfold(listener, |listener| async move {
            Some((listener.accept().await.map(|(s, _)| s), listener))
        });
        let service = TrustDomainServer::new(Fake(server.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        let spire = SpireClient::connect(SpireAddress::Unix(socket), Duration::from_secs(2))
            .await
            .unwrap();
        let kube_log = Arc::new(Mutex::new(KubeLog::default()));
        let kube = fake_kube(kube_log.clone()).await;
        let (store, mut writer) = reflector::store::<ClusterFederatedTrustDomain>();
        let resource: ClusterFederatedTrustDomain = serde_json::from_value(json!({
            "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterFederatedTrustDomain",
            "metadata": {"name": "partner", "uid": "u1", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"trustDomain": "partner.test", "bundleEndpointURL": "https://partner.test",
                     "bundleEndpointProfile": {"type": "https_web"}}
        }))
        .unwrap();
        writer.apply_watcher_event(&Event::Apply(resource));
        let config =
            Config::from_yaml("trustDomain: td\nclusterName: c\ngcInterval: 1h\n").unwrap();
        let reconciler = FederationReconciler::new(FederationContext {
            config: Arc::new(config),
            namespace: "spire-system".into(),
            kube: Some(kube.clone()),
            spire,
            store,
            dirty: Arc::new(DirtySet::default()),
            metrics: Arc::new(Metrics::new()),
            recorder: Some(Recorder::new(
                kube,
                Reporter {
                    controller: "spire-operator".into(),
                    instance: None,
                },
            )),
            state_dir: None,
        })
        .await
        .unwrap();
        Self {
            reconciler,
            server,
            kube: kube_log,
            _dir: dir,
        }
    }

    /// The Ready condition's reason in the last status patch.
    fn last_reason(&self) -> String {
        let log = self.kube.lock().unwrap();
        let patch = log.status_patches.last().cloned().unwrap_or_default();
        patch["status"]["conditions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The trust domains the last saved record holds.
    fn recorded(&self) -> Vec<String> {
        let log = self.kube.lock().unwrap();
        let Some(patch) = log.config_map_patches.last() else {
            return Vec::new();
        };
        let json = patch["data"]["relationships.json"].as_str().unwrap_or("{}");
        let record: BTreeMap<String, Value> = serde_json::from_str(json).unwrap();
        record.into_keys().collect()
    }
}

#[tokio::test]
async fn nothing_is_created_before_the_ownership_record_is_saved() {
    let mut h = Harness::new().await;
    h.kube.lock().unwrap().fail_config_maps = true;
    assert!(!h.reconciler.pass().await);
    assert_eq!(h.server.lock().unwrap().creates, 0);
    assert_eq!(h.last_reason(), "RelationshipWriteFailed");

    h.kube.lock().unwrap().fail_config_maps = false;
    assert!(h.reconciler.pass().await);
    assert_eq!(h.server.lock().unwrap().creates, 1);
    assert_eq!(h.recorded(), ["partner.test"]);
    assert_eq!(h.last_reason(), "Reconciled");
}

#[tokio::test]
async fn a_create_that_finds_the_relationship_taken_withdraws_its_claim() {
    let mut h = Harness::new().await;
    h.server.lock().unwrap().racing_creator = true;
    h.reconciler.pass().await;
    assert_eq!(h.server.lock().unwrap().creates, 1);
    // Claimed before the create, withdrawn after it: the record ends empty.
    let patches = h.kube.lock().unwrap().config_map_patches.len();
    assert_eq!(patches, 2);
    assert!(h.recorded().is_empty());
    assert_eq!(h.last_reason(), "RelationshipNotOwned");
    let events = h.kube.lock().unwrap().events.len();
    assert_eq!(events, 1);
}
