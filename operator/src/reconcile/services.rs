//! Which Services list each pod, kept from EndpointSlice events (for
//! `autoPopulateDNSNames`). The slices themselves are not stored.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

/// The pods one slice lists: name -> UID from the endpoint's `targetRef` (when it has one).
type Listed = BTreeMap<String, Option<String>>;

/// (namespace, slice name) -> (service name, the pods it lists).
type SlicePods = HashMap<(String, String), (String, Listed)>;

/// Pod -> names of the Services whose EndpointSlices list it, kept from slice events.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    slices: SlicePods,
    building: Option<SlicePods>,
}

impl ServiceIndex {
    /// The Services (names, in the pod's namespace) that list pod `namespace/name` with
    /// UID `uid`. Like spire-controller-manager, an endpoint whose `targetRef` carries
    /// another UID (a pod re-created under the same name) does not count.
    pub fn services_of(&self, namespace: &str, name: &str, uid: &str) -> BTreeSet<String> {
        self.slices
            .iter()
            .filter(|((ns, _), (_, pods))| {
                ns == namespace
                    && pods
                        .get(name)
                        .is_some_and(|listed| listed.as_deref().is_none_or(|u| u == uid))
            })
            .map(|(_, (service, _))| service.clone())
            .collect()
    }

    fn pods_of(map: &SlicePods, key: &(String, String)) -> Listed {
        map.get(key)
            .map(|(_, pods)| pods.clone())
            .unwrap_or_default()
    }

    /// Applies a slice event; returns the pods (namespace, name) whose services changed.
    pub fn apply(&mut self, event: &Event<EndpointSlice>) -> Vec<(String, String)> {
        match event {
            Event::Init => {
                self.building = Some(HashMap::new());
                vec![]
            }
            Event::InitApply(slice) => {
                if let (Some(building), Some((key, value))) =
                    (self.building.as_mut(), slice_pods(slice))
                {
                    building.insert(key, value);
                }
                vec![]
            }
            Event::InitDone => {
                let new = self.building.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.slices, new);
                let mut changed = HashSet::new();
                for key in old.keys().chain(self.slices.keys()) {
                    if old.get(key) != self.slices.get(key) {
                        for pod in Self::pods_of(&old, key)
                            .into_keys()
                            .chain(Self::pods_of(&self.slices, key).into_keys())
                        {
                            changed.insert((key.0.clone(), pod));
                        }
                    }
                }
                changed.into_iter().collect()
            }
            Event::Apply(slice) | Event::Delete(slice) => {
                let Some((key, value)) = slice_pods(slice) else {
                    return vec![];
                };
                let old = Self::pods_of(&self.slices, &key);
                let service_changed = self.slices.get(&key).is_some_and(|(s, _)| *s != value.0);
                let new = if matches!(event, Event::Delete(_)) {
                    self.slices.remove(&key);
                    Listed::new()
                } else {
                    let pods = value.1.clone();
                    self.slices.insert(key.clone(), value);
                    pods
                };
                // A pod whose listing (or UID) changed, or all of them with the service.
                let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
                let changed: Vec<String> = names
                    .into_iter()
                    .filter(|name| service_changed || old.get(*name) != new.get(*name))
                    .cloned()
                    .collect();
                changed
                    .into_iter()
                    .map(|pod| (key.0.clone(), pod))
                    .collect()
            }
        }
    }
}

type SliceEntry = ((String, String), (String, Listed));

fn slice_pods(slice: &EndpointSlice) -> Option<SliceEntry> {
    let namespace = slice.metadata.namespace.clone()?;
    let name = slice.metadata.name.clone()?;
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?
        .clone();
    let pods = slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(|e| e.target_ref.as_ref())
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .filter(|r| r.namespace.as_deref().is_none_or(|ns| ns == namespace))
        .filter_map(|r| Some((r.name.clone()?, r.uid.clone().filter(|u| !u.is_empty()))))
        .collect();
    Some(((namespace, name), (service, pods)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::Endpoint;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn slice(name: &str, service: &str, pods: &[&str]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some(
                    [(
                        "kubernetes.io/service-name".to_string(),
                        service.to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                pods.iter()
                    .map(|p| Endpoint {
                        addresses: vec!["10.0.0.1".into()],
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            name: Some((*p).into()),
                            namespace: Some("shop".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn changed(index: &mut ServiceIndex, event: Event<EndpointSlice>) -> Vec<String> {
        let mut pods: Vec<String> = index.apply(&event).into_iter().map(|(_, p)| p).collect();
        pods.sort();
        pods
    }

    #[test]
    fn slice_events_mark_exactly_the_pods_whose_services_changed() {
        let mut index = ServiceIndex::default();
        assert_eq!(
            changed(&mut index, Event::Apply(slice("web-1", "web", &["a", "b"]))),
            ["a", "b"]
        );
        assert_eq!(
            index.services_of("shop", "a", "any-uid"),
            BTreeSet::from(["web".to_string()])
        );
        assert_eq!(
            changed(&mut index, Event::Apply(slice("web-1", "web", &["b", "c"]))),
            ["a", "c"]
        );
        assert_eq!(
            changed(&mut index, Event::Apply(slice("api-1", "api", &["c"]))),
            ["c"]
        );
        assert_eq!(index.services_of("shop", "c", "any-uid").len(), 2);
        assert!(index.services_of("other", "c", "any-uid").is_empty());
        assert_eq!(
            changed(&mut index, Event::Delete(slice("web-1", "web", &[]))),
            ["b", "c"]
        );
        assert!(index.services_of("shop", "b", "any-uid").is_empty());
    }

    #[test]
    fn a_relist_marks_pods_of_slices_that_vanished_meanwhile() {
        let mut index = ServiceIndex::default();
        changed(&mut index, Event::Apply(slice("web-1", "web", &["a"])));
        changed(&mut index, Event::Apply(slice("api-1", "api", &["b"])));
        assert!(changed(&mut index, Event::Init).is_empty());
        assert!(changed(&mut index, Event::InitApply(slice("api-1", "api", &["b"]))).is_empty());
        assert_eq!(changed(&mut index, Event::InitDone), ["a"]);
        assert!(index.services_of("shop", "a", "any-uid").is_empty());
    }

    #[test]
    fn an_endpoint_with_another_uid_does_not_list_the_pod() {
        let mut index = ServiceIndex::default();
        let mut listed = slice("web-1", "web", &["a"]);
        let set_uid = |slice: &mut EndpointSlice, uid: &str| {
            for endpoint in slice.endpoints.iter_mut().flatten() {
                if let Some(target) = endpoint.target_ref.as_mut() {
                    target.uid = Some(uid.into());
                }
            }
        };
        set_uid(&mut listed, "old");
        assert_eq!(changed(&mut index, Event::Apply(listed.clone())), ["a"]);
        assert_eq!(
            index
                .services_of("shop", "a", "old")
                .into_iter()
                .collect::<Vec<_>>(),
            ["web"]
        );
        // A pod re-created under the same name is not listed until the slice says so.
        assert!(index.services_of("shop", "a", "new").is_empty());
        set_uid(&mut listed, "new");
        assert_eq!(
            changed(&mut index, Event::Apply(listed)),
            ["a"],
            "the UID changed"
        );
        assert!(!index.services_of("shop", "a", "new").is_empty());
    }
}
