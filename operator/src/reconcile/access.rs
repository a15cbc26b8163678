//! What the operator's credentials let it watch, found once at start, and how it makes
//! do with less.
//!
//! The operator prefers EndpointSlices (the API Kubernetes keeps current; Endpoints are
//! deprecated) and reads ServiceAccounts for `.ServiceAccountMeta`. But the RBAC that
//! spire-controller-manager's charts grant, which an image swap keeps, allows core
//! Endpoints and neither of those. Without this probe a refused watch would retry
//! forever and the first reconcile would never start; with it the operator falls back
//! to Endpoints (as spire-controller-manager reads them) and goes without service
//! account metadata, saying so once.

use k8s_openapi::api::core::v1::{Endpoints, ServiceAccount};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::{Client, Resource};

/// The label an EndpointSlice carries naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which optional kinds the credentials may list and watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// `discovery.k8s.io` EndpointSlices; otherwise core Endpoints are watched.
    pub endpoint_slices: bool,
    /// ServiceAccounts; otherwise templates see no `.ServiceAccountMeta`.
    pub service_accounts: bool,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            endpoint_slices: true,
            service_accounts: true,
        }
    }
}

/// Lists one object of each optional kind. Only a 403 means "not allowed": any other
/// failure (the API server restarting, say) keeps the preferred kind, whose watch then
/// retries as usual.
pub async fn probe(client: &Client) -> Access {
    Access {
        endpoint_slices: allowed::<EndpointSlice>(client).await,
        service_accounts: allowed::<ServiceAccount>(client).await,
    }
}

async fn allowed<K>(client: &Client) -> bool
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let kind = K::plural(&K::DynamicType::default()).into_owned();
    match Api::<K>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::warn!(
                kind = %kind,
                "the operator may not list {kind} cluster-wide (RBAC); {}",
                if kind == "endpointslices" {
                    "watching core Endpoints instead, as spire-controller-manager does"
                } else {
                    "templates get no .ServiceAccountMeta and ServiceAccount annotations are not read"
                }
            );
            false
        }
        _ => true,
    }
}

/// The EndpointSlice equivalent of a core Endpoints object, for the index that maps
/// pods to the Services listing them: same namespace and Service, every address (ready
/// or not, as spire-controller-manager counts them) as an endpoint with its target.
pub fn slice_from_endpoints(endpoints: &Endpoints) -> EndpointSlice {
    let targets = endpoints.subsets.iter().flatten().flat_map(|subset| {
        subset
            .addresses
            .iter()
            .flatten()
            .chain(subset.not_ready_addresses.iter().flatten())
    });
    EndpointSlice {
        metadata: ObjectMeta {
            name: endpoints.metadata.name.clone(),
            namespace: endpoints.metadata.namespace.clone(),
            labels: endpoints
                .metadata
                .name
                .clone()
                .map(|service| std::iter::once((SERVICE_NAME_LABEL.to_owned(), service)).collect()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            targets
                .map(|address| Endpoint {
                    addresses: vec![address.ip.clone()],
                    target_ref: address.target_ref.clone(),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, ObjectReference};

    use super::*;

    fn address(pod: &str) -> EndpointAddress {
        EndpointAddress {
            ip: "10.0.0.1".into(),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                namespace: Some("shop".into()),
                ..ObjectReference::default()
            }),
            ..EndpointAddress::default()
        }
    }

    #[test]
    fn endpoints_become_a_slice_of_their_service_listing_ready_and_not_ready_pods() {
        let endpoints = Endpoints {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            subsets: Some(vec![
                EndpointSubset {
                    addresses: Some(vec![address("web-0")]),
                    not_ready_addresses: Some(vec![address("web-1")]),
                    ports: None,
                },
                EndpointSubset {
                    addresses: Some(vec![address("web-2")]),
                    ..EndpointSubset::default()
                },
            ]),
        };
        let slice = slice_from_endpoints(&endpoints);
        assert_eq!(slice.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            slice
                .metadata
                .labels
                .unwrap()
                .get(SERVICE_NAME_LABEL)
                .map(String::as_str),
            Some("web")
        );
        let pods: Vec<_> = slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|e| e.target_ref.as_ref()?.name.as_deref())
            .collect();
        assert_eq!(pods, ["web-0", "web-1", "web-2"]);
    }

    #[test]
    fn endpoints_without_subsets_list_nothing() {
        let slice = slice_from_endpoints(&Endpoints {
            metadata: ObjectMeta {
                name: Some("idle".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            subsets: None,
        });
        assert_eq!(slice.endpoints, Some(vec![]));
    }
}
