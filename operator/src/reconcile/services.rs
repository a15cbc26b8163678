//! Which Services list each pod, kept from EndpointSlice events (for
//! `autoPopulateDNSNames`). The slices themselves are not stored.

use std::collections::{BTreeSet, HashMap, HashSet};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

/// (namespace, slice name) -> (service name, names of the pods it lists).
type SlicePods = HashMap<(String, String), (String, BTreeSet<String>)>;

/// Pod -> names of the Services whose EndpointSlices list it, kept from slice events.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    slices: SlicePods,
    building: Option<SlicePods>,
}

impl ServiceIndex {
    /// The Services (names, in the pod's namespace) that list pod `namespace/name`.
    pub fn services_of(&self, namespace: &str, name: &str) -> BTreeSet<String> {
        self.slices
            .iter()
            .filter(|((ns, _), (_, pods))| ns == namespace && pods.contains(name))
            .map(|(_, (service, _))| service.clone())
            .collect()
    }

    fn pods_of(map: &SlicePods, key: &(String, String)) -> BTreeSet<String> {
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
                            .into_iter()
                            .chain(Self::pods_of(&self.slices, key))
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
                    BTreeSet::new()
                } else {
                    let pods = value.1.clone();
                    self.slices.insert(key.clone(), value);
                    pods
                };
                let changed: Vec<String> = if service_changed {
                    old.union(&new).cloned().collect()
                } else {
                    old.symmetric_difference(&new).cloned().collect()
                };
                changed
                    .into_iter()
                    .map(|pod| (key.0.clone(), pod))
                    .collect()
            }
        }
    }
}

type SliceEntry = ((String, String), (String, BTreeSet<String>));

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
        .filter_map(|r| r.name.clone())
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
            index.services_of("shop", "a"),
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
        assert_eq!(index.services_of("shop", "c").len(), 2);
        assert!(index.services_of("other", "c").is_empty());
        assert_eq!(
            changed(&mut index, Event::Delete(slice("web-1", "web", &[]))),
            ["b", "c"]
        );
        assert!(index.services_of("shop", "b").is_empty());
    }

    #[test]
    fn a_relist_marks_pods_of_slices_that_vanished_meanwhile() {
        let mut index = ServiceIndex::default();
        changed(&mut index, Event::Apply(slice("web-1", "web", &["a"])));
        changed(&mut index, Event::Apply(slice("api-1", "api", &["b"])));
        assert!(changed(&mut index, Event::Init).is_empty());
        assert!(changed(&mut index, Event::InitApply(slice("api-1", "api", &["b"]))).is_empty());
        assert_eq!(changed(&mut index, Event::InitDone), ["a"]);
        assert!(index.services_of("shop", "a").is_empty());
    }
}
