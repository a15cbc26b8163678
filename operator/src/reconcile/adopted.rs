//! The ConfigMap that remembers adopted entry IDs across restarts (see
//! [`super::ownership`]): read once at start, written when the adopted set changes.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// ConfigMap (in the operator's namespace) remembering adopted entry IDs.
pub const ADOPTED_CONFIG_MAP: &str = "spire-operator-adopted-entries";
const ADOPTED_KEY: &str = "ids";
const FIELD_MANAGER: &str = "spire-operator";

/// The adopted IDs saved in `namespace`; empty when the ConfigMap does not exist.
pub async fn load(kube: &kube::Client, namespace: &str) -> Result<BTreeSet<String>, kube::Error> {
    let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), namespace);
    Ok(maps
        .get_opt(ADOPTED_CONFIG_MAP)
        .await?
        .and_then(|cm| cm.data)
        .and_then(|mut d| d.remove(ADOPTED_KEY))
        .map(|ids| {
            ids.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

/// Saves `ids` (server-side apply, so a hand-edited ConfigMap is taken over).
pub async fn save(
    kube: &kube::Client,
    namespace: &str,
    ids: &BTreeSet<String>,
) -> Result<(), kube::Error> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ADOPTED_CONFIG_MAP,
            "labels": {"app.kubernetes.io/managed-by": "spire-operator"},
            "annotations": {"spire.spiffe.io/purpose": "IDs of SPIRE entries spire-operator adopted; deleting this makes it leave them alone"},
        },
        "data": {ADOPTED_KEY: ids.join("\n")},
    });
    let api: Api<ConfigMap> = Api::namespaced(kube.clone(), namespace);
    api.patch(
        ADOPTED_CONFIG_MAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&map),
    )
    .await
    .map(drop)
}

/// The adopted IDs' file in static mode's state directory.
pub fn file_in(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(format!("{ADOPTED_CONFIG_MAP}.txt"))
}

/// The adopted IDs kept in `path` (static mode), one per line; empty when the file does
/// not exist.
pub fn load_file(path: &std::path::Path) -> std::io::Result<BTreeSet<String>> {
    match std::fs::read_to_string(path) {
        Ok(ids) => Ok(ids
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e),
    }
}

/// Saves `ids` to `path`, one per line.
pub fn save_file(path: &std::path::Path, ids: &BTreeSet<String>) -> std::io::Result<()> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    write_atomically(path, &ids.join("\n"))
}

/// Writes `text` next to `path`, then renames it over `path`: a crash never leaves a
/// half-written file.
pub fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".tmp");
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)
}
