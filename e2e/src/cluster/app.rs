//! A workload on the [`Cluster`], as the README shows one: a Deployment whose pods reach
//! the Workload API through the CSI volume. Its container is the `workload` binary of
//! this crate, which fetches its X.509- and JWT-SVID every 2 s and logs each fetch as a
//! JSON line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spire_operator::spire::SpireClient;
use spire_operator::spire::api::types::Entry;

use super::{Cluster, TRUST_DOMAIN, describe_pods};
use crate::wait;

/// A Deployment `name` in `namespace` running as ServiceAccount `service_account`.
#[derive(Debug, Clone, Copy)]
pub struct App {
    /// Its namespace (created by [`App::create`]).
    pub namespace: &'static str,
    /// The Deployment's name and its pods' `app` label.
    pub name: &'static str,
    /// The pods' ServiceAccount (created by [`App::create`]).
    pub service_account: &'static str,
    /// The audience its JWT-SVIDs are asked for.
    pub audience: &'static str,
    /// A SPIFFE ID its pods ask for with the `spiffe.io/spiffe-id` annotation (annotation
    /// identities); `None` leaves the identity to ClusterSPIFFEIDs.
    pub annotated_id: Option<&'static str>,
}

/// The name of the CSI volume in the Deployment's pod template.
const VOLUME: &str = "spiffe-workload-api";

impl App {
    /// The name of the pods' CSI volume (the README's).
    pub fn volume(&self) -> &'static str {
        VOLUME
    }

    /// The identity its pods get: the annotated one, else the one the chart's default
    /// ClusterSPIFFEID gives them.
    pub fn spiffe_id(&self) -> String {
        match self.annotated_id {
            Some(id) => id.to_owned(),
            None => format!(
                "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
                self.namespace, self.service_account
            ),
        }
    }

    /// The Deployment: the README's volume and `SPIFFE_ENDPOINT_SOCKET`, plus
    /// `hostNetwork` (the node has no pod network).
    pub fn deployment(&self) -> anyhow::Result<Deployment> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": self.name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": self.name}},
                "template": {
                    "metadata": {
                        "labels": {"app": self.name},
                        "annotations": self.annotated_id.map(|id| json!({"spiffe.io/spiffe-id": id})),
                    },
                    "spec": {
                        "serviceAccountName": self.service_account,
                        "hostNetwork": true,
                        "terminationGracePeriodSeconds": 2,
                        "containers": [{
                            "name": "app",
                            "image": "spire-rs.local/workload:dev",
                            "imagePullPolicy": "Never",
                            "args": ["--jwt-audience", self.audience, "--every-secs", "2", "--timeout-secs", "300"],
                            "env": [{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///spiffe-workload-api/spire-agent.sock"}],
                            "volumeMounts": [{"name": VOLUME, "mountPath": "/spiffe-workload-api", "readOnly": true}],
                        }],
                        "volumes": [{"name": VOLUME, "csi": {"driver": "csi.spiffe.io", "readOnly": true}}],
                    },
                },
            },
        }))?)
    }

    /// Creates the namespace (unless it exists), the ServiceAccount and the Deployment.
    pub async fn create(&self, client: &kube::Client) -> anyhow::Result<()> {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": self.namespace}}))?;
        match Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": self.service_account}}))?;
        Api::<ServiceAccount>::namespaced(client.clone(), self.namespace)
            .create(&PostParams::default(), &sa)
            .await?;
        Api::<Deployment>::namespaced(client.clone(), self.namespace)
            .create(&PostParams::default(), &self.deployment()?)
            .await?;
        Ok(())
    }

    /// Sets the Deployment's replicas.
    pub async fn scale(&self, client: &kube::Client, replicas: i32) -> anyhow::Result<()> {
        let patch = json!({"spec": {"replicas": replicas}});
        Api::<Deployment>::namespaced(client.clone(), self.namespace)
            .patch(self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Waits for a Running pod of the app, not being deleted, whose uid is none of
    /// `not`.
    pub async fn running_pod(&self, cluster: &Cluster, not: &[&str]) -> anyhow::Result<Pod> {
        let client = cluster.control_plane.client();
        let pods: Api<Pod> = Api::namespaced(client.clone(), self.namespace);
        let labels = format!("app={}", self.name);
        let result = wait::until(
            &format!("a new Running pod of {}/{}", self.namespace, self.name),
            Duration::from_secs(90),
            Duration::from_millis(250),
            || {
                let pods = pods.clone();
                let labels = labels.clone();
                async move {
                    let list = pods.list(&ListParams::default().labels(&labels)).await?;
                    Ok(list.items.into_iter().find(|p| {
                        let uid = p.metadata.uid.as_deref().unwrap_or_default();
                        p.metadata.deletion_timestamp.is_none()
                            && !not.contains(&uid)
                            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    }))
                }
            },
        )
        .await;
        match result {
            Ok(pod) => Ok(pod),
            Err(e) => Err(e.context(describe_pods(&client, self.namespace).await)),
        }
    }

    /// Waits for a line of pod `pod`'s log holding an X.509-SVID fetched at or after
    /// `since` (unix seconds), and returns it.
    pub async fn svid_line(
        &self,
        cluster: &Cluster,
        pod: &str,
        since: u64,
    ) -> anyhow::Result<Value> {
        let pods: Api<Pod> = Api::namespaced(cluster.control_plane.client(), self.namespace);
        wait::until(
            &format!(
                "pod {}/{pod} logs an SVID fetched at or after {since}",
                self.namespace
            ),
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let pods = pods.clone();
                async move {
                    let log = pods.logs(pod, &LogParams::default()).await?;
                    let found = log
                        .lines()
                        .rev()
                        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                        .find(|l| {
                            l["x509_svid"].is_object()
                                && l["fetched_at"].as_u64().unwrap_or(0) >= since
                        });
                    match found {
                        Some(line) => Ok(Some(line)),
                        None => bail!(
                            "last log lines: {}",
                            log.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
                        ),
                    }
                }
            },
        )
        .await
    }
}

/// The pod's name.
pub fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The pod's uid.
pub fn uid_of(pod: &Pod) -> anyhow::Result<String> {
    pod.metadata.uid.clone().context("pod without uid")
}

/// Seconds since the epoch, as the workload's `fetched_at`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The SPIFFE IDs of the entries for pod `uid` (selector `k8s:pod-uid:<uid>`).
pub async fn pod_entry_ids(spire: &SpireClient, uid: &str) -> anyhow::Result<Vec<String>> {
    let selector = format!("pod-uid:{uid}");
    entry_ids(spire, |e| {
        e.selectors
            .iter()
            .any(|s| s.r#type == "k8s" && s.value == selector)
    })
    .await
}

/// The SPIFFE IDs of the server's entries that `keep`.
pub async fn entry_ids(
    spire: &SpireClient,
    keep: impl Fn(&Entry) -> bool,
) -> anyhow::Result<Vec<String>> {
    Ok(spire
        .list_entries()
        .await?
        .iter()
        .filter(|e| keep(e))
        .map(|e| {
            e.spiffe_id
                .as_ref()
                .map(|id| format!("spiffe://{}{}", id.trust_domain, id.path))
                .unwrap_or_default()
        })
        .collect())
}

/// Waits until the entries for pod `uid` are gone from the server.
pub async fn wait_entries_gone(spire: &SpireClient, uid: &str) -> anyhow::Result<()> {
    wait::until(
        &format!("the entries of pod {uid} removed from the SPIRE server"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async move { Ok(pod_entry_ids(spire, uid).await?.is_empty().then_some(())) },
    )
    .await
}

/// Waits until pod `name` no longer exists.
pub async fn wait_pod_gone(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    wait::until(
        &format!("pod {name} gone"),
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            let pods = pods.clone();
            async move { Ok(pods.get_opt(name).await?.is_none().then_some(())) }
        },
    )
    .await
}
