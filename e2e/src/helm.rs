//! Running the pinned `helm` on the chart (`charts/spire-rs`), and reading what it renders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::WorkDir;
use crate::tools;
use anyhow::{Context, bail};
use serde_json::Value;

/// The chart directory.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/spire-rs")
}

/// The values files under `ci/`, sorted, as (file stem, path).
pub fn values_files() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(chart_dir().join("ci"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            files.push((stem, path));
        }
    }
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no values files in charts/spire-rs/ci");
    Ok(files)
}

/// `helm` with its state (cache, config, repositories) in a private directory.
pub struct Helm {
    binary: PathBuf,
    home: WorkDir,
}

impl Helm {
    /// A helm with empty state.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            binary: tools::tool("helm")?,
            home: WorkDir::new("helm")?,
        })
    }

    /// Runs helm with `args` and returns its output, whatever the exit status.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.binary)
            .args(args)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .env_remove("KUBECONFIG")
            .output()
            .with_context(|| format!("running {}", self.binary.display()))
    }

    /// Runs helm with `args`; fails with its stderr unless it succeeds.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.output(args)?;
        if !output.status.success() {
            bail!(
                "helm {} failed:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// `helm template` of the chart into `namespace` with the extra `args`, as objects.
    pub fn template(&self, namespace: &str, args: &[&str]) -> anyhow::Result<Vec<Value>> {
        let chart = chart_dir();
        let chart = chart.to_str().context("chart path is not UTF-8")?;
        let mut all = vec!["template", "spire-rs", chart, "--namespace", namespace];
        all.extend_from_slice(args);
        objects(&self.run(&all)?)
    }
}

/// The objects of a YAML stream, skipping empty documents.
pub fn objects(stream: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(stream) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// `Kind/name` of a rendered object.
pub fn describe(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}
