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

/// A binary of this workspace (`package`'s `bin`), built by cargo if stale (a no-op
/// when `cargo test --workspace` already built it), taken from the target directory
/// the running test binary or harness binary came from. `CARGO_BIN_EXE_*` only exists
/// for binaries of the same package, hence this.
pub fn workspace_binary(package: &str, bin: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    // target/<profile>/deps/<test>-<hash> (a test) or target/<profile>/<bin> (the demo)
    let exe = std::env::current_exe()?;
    let exe_dir = exe
        .parent()
        .context("the running binary has no directory")?;
    let profile_dir = if exe_dir.ends_with("deps") {
        exe_dir
            .parent()
            .context("the test binary has no target directory")?
    } else {
        exe_dir
    };
    let mut args = vec!["build", "--quiet", "-p", package, "--bin", bin];
    if profile_dir.ends_with("release") {
        args.push("--release");
    }
    let status = nested_cargo(std::env::vars_os().map(|(k, _)| k))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .with_context(|| format!("building {bin}"))?;
    anyhow::ensure!(status.success(), "cargo {} failed", args.join(" "));
    let path = profile_dir.join(bin);
    anyhow::ensure!(path.exists(), "{} missing after the build", path.display());
    Ok(path)
}

/// A cargo command for a build from inside a process that `cargo run` or `cargo test`
/// started, without the variables cargo set for that process's own crate
/// (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, `OUT_DIR`, ...; `present` lists the
/// environment's names). ring's build script asks to be run again when those change:
/// inherited, they made every such build recompile ring and everything above it, and
/// the next plain `cargo build` recompile it all back (`make bench` spent two release
/// builds of the operator, about 3 minutes each, before measuring).
fn nested_cargo(present: impl IntoIterator<Item = std::ffi::OsString>) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for name in present {
        if name.to_str().is_some_and(is_set_by_cargo_for_a_crate) {
            command.env_remove(name);
        }
    }
    command
}

/// Variables cargo sets for a crate it compiles and for the binary it runs
/// (<https://doc.rust-lang.org/cargo/reference/environment-variables.html>), but not the
/// ones that configure cargo itself (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*`).
fn is_set_by_cargo_for_a_crate(name: &str) -> bool {
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"];
    const NAMES: [&str; 6] = [
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::nested_cargo;

    #[test]
    fn a_nested_cargo_drops_what_cargo_set_for_the_running_crate_only() {
        let present = [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_PRE",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_EXE_bench",
            "OUT_DIR",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO",
            "RUSTFLAGS",
            "PATH",
        ];
        let command = nested_cargo(present.iter().map(OsString::from));
        let mut removed: Vec<_> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        removed.sort_unstable();
        // Sorted, as `removed` is.
        let expected = [
            "CARGO_BIN_EXE_bench",
            "CARGO_CRATE_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_PRE",
            "OUT_DIR",
        ];
        assert_eq!(removed, expected);
    }
}
