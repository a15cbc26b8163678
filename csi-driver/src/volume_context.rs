//! The CSI `volume_context` kubelet sends for an inline volume, as a typed struct.

use std::collections::HashMap;

use serde::Deserialize;

/// Pod information kubelet adds when the CSIDriver has `podInfoOnMount: true`, plus the
/// ephemeral marker. Other attributes (`volumeAttributes`) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VolumeContext {
    /// `csi.storage.k8s.io/pod.name`.
    #[serde(
        default,
        deserialize_with = "present",
        rename = "csi.storage.k8s.io/pod.name"
    )]
    pub pod_name: Option<String>,
    /// `csi.storage.k8s.io/pod.namespace`.
    #[serde(
        default,
        deserialize_with = "present",
        rename = "csi.storage.k8s.io/pod.namespace"
    )]
    pub pod_namespace: Option<String>,
    /// `csi.storage.k8s.io/pod.uid`.
    #[serde(
        default,
        deserialize_with = "present",
        rename = "csi.storage.k8s.io/pod.uid"
    )]
    pub pod_uid: Option<String>,
    /// `csi.storage.k8s.io/serviceAccount.name`.
    #[serde(
        default,
        deserialize_with = "present",
        rename = "csi.storage.k8s.io/serviceAccount.name"
    )]
    pub service_account_name: Option<String>,
    /// `csi.storage.k8s.io/ephemeral`: "true" for an inline volume.
    #[serde(
        default,
        deserialize_with = "present",
        rename = "csi.storage.k8s.io/ephemeral"
    )]
    pub ephemeral: Option<String>,
}

/// kubelet sends plain strings; a key that is present is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// The volume context could not be read.
#[derive(Debug, thiserror::Error)]
#[error("volume_context")]
pub struct VolumeContextError(#[from] serde::de::value::Error);

impl VolumeContext {
    /// Parses kubelet's string map.
    pub fn parse(map: &HashMap<String, String>) -> Result<Self, VolumeContextError> {
        let de: serde::de::value::MapDeserializer<'_, _, serde::de::value::Error> =
            serde::de::value::MapDeserializer::new(
                map.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
        Ok(Self::deserialize(de)?)
    }

    /// True only for kubelet's ephemeral inline volumes.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral.as_deref() == Some("true")
    }

    /// `namespace/name` for logs, `-` when kubelet did not send pod info.
    pub fn pod(&self) -> String {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name.clone(),
            _ => "-".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubelet_pod_info_is_parsed_and_unknown_attributes_ignored() {
        let ctx = VolumeContext::parse(&map(&[
            ("csi.storage.k8s.io/pod.name", "web-0"),
            ("csi.storage.k8s.io/pod.namespace", "prod"),
            ("csi.storage.k8s.io/pod.uid", "1234"),
            ("csi.storage.k8s.io/serviceAccount.name", "web"),
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("someVolumeAttribute", "x"),
        ]))
        .unwrap();
        assert_eq!(ctx.pod(), "prod/web-0");
        assert_eq!(ctx.pod_uid.as_deref(), Some("1234"));
        assert_eq!(ctx.service_account_name.as_deref(), Some("web"));
        assert!(ctx.is_ephemeral());
    }

    #[test]
    fn only_the_exact_string_true_means_ephemeral() {
        for (value, want) in [
            (Some("true"), true),
            (Some("True"), false),
            (Some("false"), false),
            (None, false),
        ] {
            let pairs: Vec<_> = value
                .map(|v| ("csi.storage.k8s.io/ephemeral", v))
                .into_iter()
                .collect();
            assert_eq!(
                VolumeContext::parse(&map(&pairs)).unwrap().is_ephemeral(),
                want,
                "{value:?}"
            );
        }
    }
}
