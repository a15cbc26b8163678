//! Where the pinned external tools live (see `e2e/tools/install.sh`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// The directory holding etcd, kube-apiserver, spire-server, ... for the current pins.
///
/// `SPIRE_RS_TOOLS_BIN` overrides it; otherwise the installer is asked (it only
/// computes the path, it does not build).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SPIRE_RS_TOOLS_BIN") {
        return Ok(dir.into());
    }
    let installer = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/install.sh");
    let out = Command::new("bash")
        .args([installer, "--print-bin"])
        .output()
        .with_context(|| format!("running {installer} --print-bin"))?;
    if !out.status.success() {
        bail!(
            "{installer} --print-bin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The path of one tool, checked to exist.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!("{} is missing: run `make tools` first", path.display());
    }
    Ok(path)
}

/// A version pinned in `e2e/tools/versions.env`, e.g. `pinned("KUBERNETES_VERSION")`.
pub fn pinned(key: &str) -> Option<&'static str> {
    include_str!("../tools/versions.env")
        .lines()
        .find_map(|line| {
            let (k, rest) = line.split_once('=')?;
            (k.trim() == key).then(|| rest.split_whitespace().next().unwrap_or(""))
        })
}
