//! A scenario's world: a control plane with our CRDs, a SPIRE server, and short-hand for
//! the objects operator scenarios create and change (nodes, namespaces, pods,
//! ClusterSPIFFEIDs, EndpointSlices, entries made with the SPIRE CLI).

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Endpoints, Event, Namespace, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use spire_operator::crd::{ClusterSPIFFEID, ClusterSPIFFEIDStatus};

use crate::control_plane::{ControlPlane, Options};
use crate::entries::{self, EntryView};
use crate::kube_util::{apply_crd_objects, ensure_service_account, node, scheduled_pod};
use crate::spire::{Options as SpireOptions, Spire};
use crate::wait;

/// Field manager of the objects a scenario applies.
const MANAGER: &str = "e2e";

/// A control plane with our CRDs applied and a SPIRE server for one trust domain.
pub struct World {
    /// The kube-apiserver and etcd.
    pub control_plane: ControlPlane,
    /// The SPIRE server (and agent) entries are written to.
    pub spire: Spire,
    /// A client of the control plane, with full rights.
    pub client: kube::Client,
}

impl World {
    /// Starts both, applies our CRDs and waits until they are served.
    pub async fn start(trust_domain: &str) -> anyhow::Result<Self> {
        let world = Self::start_without_crds(trust_domain).await?;
        world.apply_our_crds().await?;
        Ok(world)
    }

    /// Like [`World::start`], with SPIRE started with `options` (a bundle endpoint, the
    /// k8s workload attestor...).
    pub async fn start_with(trust_domain: &str, options: SpireOptions) -> anyhow::Result<Self> {
        let (control_plane, spire) = tokio::try_join!(
            ControlPlane::start(),
            Spire::start_with(trust_domain, options)
        )?;
        let client = control_plane.client();
        let world = Self {
            control_plane,
            spire,
            client,
        };
        world.apply_our_crds().await?;
        Ok(world)
    }

    /// Starts both without any CRD (e.g. to install the reference tool's CRDs first).
    pub async fn start_without_crds(trust_domain: &str) -> anyhow::Result<Self> {
        Self::start_without_crds_with(trust_domain, Options::default()).await
    }

    /// Like [`World::start_without_crds`], with the control plane `options` asks for.
    pub async fn start_without_crds_with(
        trust_domain: &str,
        options: Options,
    ) -> anyhow::Result<Self> {
        let (control_plane, spire) = tokio::try_join!(
            ControlPlane::start_with(options),
            Spire::start(trust_domain)
        )?;
        let client = control_plane.client();
        Ok(Self {
            control_plane,
            spire,
            client,
        })
    }

    /// Server-side applies our CRDs (replacing others of the same names, as an upgrade
    /// does) and waits until they are served.
    pub async fn apply_our_crds(&self) -> anyhow::Result<()> {
        apply_crd_objects(&self.client, &spire_operator::crd::all()).await?;
        Ok(())
    }

    /// Creates a Node and returns it as stored (with its UID).
    pub async fn node(&self, name: &str) -> anyhow::Result<Node> {
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node(name))
            .await
            .with_context(|| format!("creating node {name}"))
    }

    /// Creates a Namespace with `labels` and its `default` ServiceAccount (there is no
    /// kube-controller-manager to create it).
    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let namespaces = Api::<Namespace>::all(self.client.clone());
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            // The apiserver makes kube-system, kube-public and default itself.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let labels = serde_json::json!({"metadata": {"labels": namespace.metadata.labels}});
                namespaces
                    .patch(name, &PatchParams::default(), &Patch::Merge(labels))
                    .await
                    .with_context(|| format!("labelling namespace {name}"))?;
            }
            Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
        }
        self.service_account(name, "default").await
    }

    /// Creates a ServiceAccount unless it exists.
    pub async fn service_account(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        ensure_service_account(&self.client, namespace, name).await
    }

    /// Creates a pod bound to `node` with one container; returns it as stored.
    pub async fn pod(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        node: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Pod> {
        self.create_pod(scheduled_pod(
            namespace,
            name,
            service_account,
            node,
            labels,
        ))
        .await
    }

    /// Creates `pod` as given (e.g. without a node, or with extra fields).
    pub async fn create_pod(&self, pod: Pod) -> anyhow::Result<Pod> {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {namespace}/{name}"))
    }

    /// Deletes a pod at once (no kubelet is there to finish a graceful deletion).
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .delete(
                name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("deleting pod {namespace}/{name}"))?;
        Ok(())
    }

    /// Merges `labels` into a pod's labels (`null` removes one).
    pub async fn label_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: Value,
    ) -> anyhow::Result<()> {
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": labels } })),
            )
            .await
            .with_context(|| format!("labelling pod {namespace}/{name}"))?;
        Ok(())
    }

    /// Merges `labels` into a namespace's labels (`null` removes one).
    pub async fn label_namespace(&self, name: &str, labels: Value) -> anyhow::Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": labels } })),
            )
            .await
            .with_context(|| format!("labelling namespace {name}"))?;
        Ok(())
    }

    /// Server-side applies a ClusterSPIFFEID with `spec` (creates or replaces its spec).
    pub async fn apply_csid(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        self.apply_spire_object("ClusterSPIFFEID", name, spec).await
    }

    /// Server-side applies a cluster-scoped `spire.spiffe.io/v1alpha1` object of `kind`
    /// (ClusterSPIFFEID, ClusterStaticEntry, ...) with `spec`, whichever CRDs serve it.
    pub async fn apply_spire_object(
        &self,
        kind: &str,
        name: &str,
        spec: Value,
    ) -> anyhow::Result<()> {
        let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", kind);
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &ApiResource::from_gvk(&gvk));
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "spire.spiffe.io/v1alpha1",
            "kind": kind,
            "metadata": { "name": name },
            "spec": spec,
        }))?;
        api.patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
        Ok(())
    }

    /// Deletes a ClusterSPIFFEID.
    pub async fn delete_csid(&self, name: &str) -> anyhow::Result<()> {
        Api::<ClusterSPIFFEID>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting ClusterSPIFFEID {name}"))?;
        Ok(())
    }

    /// Waits until a ClusterSPIFFEID's status, for its current generation, satisfies
    /// `predicate`; returns that status. On timeout the error shows the last status.
    pub async fn wait_csid_status(
        &self,
        name: &str,
        description: &str,
        mut predicate: impl FnMut(&ClusterSPIFFEIDStatus) -> bool,
    ) -> anyhow::Result<ClusterSPIFFEIDStatus> {
        let api = Api::<ClusterSPIFFEID>::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let object = api.get(name).await?;
            let current = object.metadata.generation;
            let status = object.status.unwrap_or_default();
            if status.observed_generation == current && predicate(&status) {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "ClusterSPIFFEID {name}: {description}: not after 30s; last status: {status:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates an EndpointSlice of Service `service` listing `pods` as ready endpoints.
    pub async fn endpoint_slice(
        &self,
        namespace: &str,
        service: &str,
        pods: &[&Pod],
    ) -> anyhow::Result<()> {
        let endpoints: Vec<Value> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                json!({
                    "addresses": [format!("10.0.0.{}", i + 1)],
                    "conditions": { "ready": true },
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": pod.name_any(),
                        "uid": pod.uid(),
                    },
                })
            })
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{service}-slice"),
                "namespace": namespace,
                "labels": { "kubernetes.io/service-name": service },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        }))?;
        Api::<EndpointSlice>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &slice)
            .await
            .with_context(|| format!("creating the EndpointSlice of {namespace}/{service}"))?;
        Ok(())
    }

    /// Creates the (legacy) Endpoints object of Service `service` listing `pods`, which
    /// is what the reference tool reads for autoPopulateDNSNames.
    pub async fn endpoints(
        &self,
        namespace: &str,
        service: &str,
        pods: &[&Pod],
    ) -> anyhow::Result<()> {
        let addresses: Vec<Value> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                json!({
                    "ip": format!("10.0.0.{}", i + 1),
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": pod.name_any(),
                        "uid": pod.uid(),
                    },
                })
            })
            .collect();
        let endpoints: Endpoints = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": { "name": service, "namespace": namespace },
            "subsets": [{ "addresses": addresses, "ports": [{ "name": "http", "port": 8080 }] }],
        }))?;
        Api::<Endpoints>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &endpoints)
            .await
            .with_context(|| format!("creating the Endpoints of {namespace}/{service}"))?;
        Ok(())
    }

    /// Creates the EndpointSlice `slice` of Service `service` listing `endpoints`, each a
    /// pod with its address and its `ready` condition: for Services with several slices
    /// and for endpoints that are not ready.
    pub async fn endpoint_slice_named(
        &self,
        namespace: &str,
        service: &str,
        slice: &str,
        endpoints: &[(&Pod, &str, bool)],
    ) -> anyhow::Result<()> {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(pod, address, ready)| {
                json!({
                    "addresses": [address],
                    "conditions": { "ready": ready },
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": pod.name_any(),
                        "uid": pod.uid(),
                    },
                })
            })
            .collect();
        let object: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice,
                "namespace": namespace,
                "labels": { "kubernetes.io/service-name": service },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        }))?;
        Api::<EndpointSlice>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &object)
            .await
            .with_context(|| {
                format!("creating EndpointSlice {namespace}/{slice} of Service {service}")
            })?;
        Ok(())
    }

    /// Creates the (legacy) Endpoints object of Service `service` with one subset per
    /// item of `subsets`, each listing pods with their address as ready (`addresses`) or
    /// not ready (`notReadyAddresses`): the counterpart of [`World::endpoint_slice_named`]
    /// for the reference tool.
    pub async fn endpoints_subsets(
        &self,
        namespace: &str,
        service: &str,
        subsets: &[&[(&Pod, &str, bool)]],
    ) -> anyhow::Result<()> {
        let address = |pod: &Pod, ip: &str| {
            json!({
                "ip": ip,
                "targetRef": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": pod.name_any(),
                    "uid": pod.uid(),
                },
            })
        };
        let subsets: Vec<Value> = subsets
            .iter()
            .enumerate()
            .map(|(i, members)| {
                let ready: Vec<Value> = members
                    .iter()
                    .filter(|(_, _, ready)| *ready)
                    .map(|(pod, ip, _)| address(pod, ip))
                    .collect();
                let not_ready: Vec<Value> = members
                    .iter()
                    .filter(|(_, _, ready)| !*ready)
                    .map(|(pod, ip, _)| address(pod, ip))
                    .collect();
                // Distinct ports keep the apiserver from merging the subsets.
                json!({
                    "addresses": ready,
                    "notReadyAddresses": not_ready,
                    "ports": [{ "name": "http", "port": 8080 + i }],
                })
            })
            .collect();
        let endpoints: Endpoints = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": { "name": service, "namespace": namespace },
            "subsets": subsets,
        }))?;
        Api::<Endpoints>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &endpoints)
            .await
            .with_context(|| format!("creating the Endpoints of {namespace}/{service}"))?;
        Ok(())
    }

    /// Deletes an EndpointSlice.
    pub async fn delete_endpoint_slice(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        Api::<EndpointSlice>::namespaced(self.client.clone(), namespace)
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting EndpointSlice {namespace}/{name}"))?;
        Ok(())
    }

    /// Deletes the (legacy) Endpoints object of Service `service`.
    pub async fn delete_endpoints(&self, namespace: &str, service: &str) -> anyhow::Result<()> {
        Api::<Endpoints>::namespaced(self.client.clone(), namespace)
            .delete(service, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting the Endpoints of {namespace}/{service}"))?;
        Ok(())
    }

    /// Binds a pending pod to `node` through the `binding` subresource, as the scheduler
    /// does (`spec.nodeName` cannot be changed by an update).
    pub async fn bind_pod(&self, namespace: &str, name: &str, node: &str) -> anyhow::Result<()> {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": { "name": name, "namespace": namespace },
            "target": { "apiVersion": "v1", "kind": "Node", "name": node },
        });
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .create_subresource::<Value, Value>("binding", name, &PostParams::default(), &binding)
            .await
            .with_context(|| format!("binding pod {namespace}/{name} to node {node}"))?;
        Ok(())
    }

    /// Deletes a cluster-scoped `spire.spiffe.io/v1alpha1` object of `kind`.
    pub async fn delete_spire_object(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", kind);
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &ApiResource::from_gvk(&gvk));
        api.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting {kind} {name}"))?;
        Ok(())
    }

    /// Events whose involved object is `kind`/`name`, oldest first.
    pub async fn events_for(&self, kind: &str, name: &str) -> anyhow::Result<Vec<Event>> {
        let events = Api::<Event>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!(
                "involvedObject.kind={kind},involvedObject.name={name}"
            )))
            .await?;
        Ok(events.items)
    }

    /// Waits until an Event with `reason` is recorded for `kind`/`name`; returns it.
    pub async fn wait_event(&self, kind: &str, name: &str, reason: &str) -> anyhow::Result<Event> {
        wait::until(
            &format!("a {reason} event on {kind} {name}"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async move {
                let events = self.events_for(kind, name).await?;
                Ok(events
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some(reason)))
            },
        )
        .await
    }

    /// Gives the SPIRE server a bundle for `trust_domain` (a fresh CA) with the CLI, so
    /// that entries may federate with it.
    pub fn federated_bundle(&self, trust_domain: &str) -> anyhow::Result<()> {
        self.spire.set_federated_bundle(trust_domain)
    }

    /// Creates an entry with the SPIRE CLI, as an administrator at the server would;
    /// returns it as listed.
    pub async fn cli_entry(
        &self,
        spiffe_id: &str,
        parent_id: &str,
        selector: &str,
    ) -> anyhow::Result<EntryView> {
        self.spire.server_cli(&[
            "entry",
            "create",
            "-spiffeID",
            spiffe_id,
            "-parentID",
            parent_id,
            "-selector",
            selector,
        ])?;
        entries::list(&self.spire)
            .await?
            .into_iter()
            .find(|e| e.spiffe_id == spiffe_id)
            .with_context(|| format!("the entry {spiffe_id} made with the CLI is not listed"))
    }
}
