//! Container images of this workspace's binaries for a real [`crate::node::Node`],
//! packed without Docker by `images/oci-image.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Packs `binary` as image `name` into the OCI archive `archive`: the binary at
/// `/usr/local/bin/<file name>` (the entrypoint), with the shared libraries `ldd`
/// lists at their paths, so a dynamically linked build runs without a base image.
pub fn binary_image(binary: &Path, name: &str, archive: &Path) -> anyhow::Result<PathBuf> {
    let file_name = binary
        .file_name()
        .with_context(|| format!("{} has no file name", binary.display()))?;
    let path = Path::new("/usr/local/bin").join(file_name);
    Image {
        name,
        binary,
        path: &path,
        entrypoint_args: &[],
    }
    .pack(archive)
}

/// [`binary_image`] with the binary, the entrypoint, at the absolute path `entrypoint`
/// instead: for an image that stands in for another one whose users may name the
/// binary in `command` (upstream's node-driver-registrar is `/csi-node-driver-registrar`).
pub fn binary_image_at(
    binary: &Path,
    entrypoint: &Path,
    name: &str,
    archive: &Path,
) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        entrypoint.is_absolute(),
        "entrypoint {} of image {name} is not an absolute path",
        entrypoint.display()
    );
    Image {
        name,
        binary,
        path: entrypoint,
        entrypoint_args: &[],
    }
    .pack(archive)
}

/// An image holding one binary (and the shared libraries it needs) whose entrypoint is
/// that binary with fixed leading arguments, e.g. SPIRE's `spire-server run`: the
/// shape of the images charts expect, so their `args` work unchanged.
pub struct Image<'a> {
    /// The image reference containerd files it under, e.g. `spire-rs.test/x:e2e`.
    pub name: &'a str,
    /// The binary on this machine (symlinks are followed).
    pub binary: &'a Path,
    /// Its absolute path inside the image.
    pub path: &'a Path,
    /// Arguments after the binary in the entrypoint (a pod's `args` follow them).
    pub entrypoint_args: &'a [&'a str],
}

impl Image<'_> {
    /// Writes the image as an OCI archive at `archive` (see `images/oci-image.sh`).
    pub fn pack(&self, archive: &Path) -> anyhow::Result<PathBuf> {
        let rootfs = tempfile::Builder::new()
            .prefix("spire-rs-rootfs-")
            .tempdir()?;
        copy_into(rootfs.path(), self.binary, self.path)?;
        for library in shared_libraries(self.binary)? {
            copy_into(rootfs.path(), &library, &library)?;
        }
        let mut entrypoint = vec![self.path.to_str().context("image path is not UTF-8")?];
        entrypoint.extend_from_slice(self.entrypoint_args);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/oci-image.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(self.name)
            .arg(rootfs.path())
            .arg(serde_json::to_string(&entrypoint)?)
            .arg(archive)
            .output()
            .with_context(|| format!("running {script}"))?;
        if !out.status.success() {
            bail!(
                "{script} {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(archive.to_path_buf())
    }
}

/// The repository prefix of the stack's images built here: `spire-rs.local/<short
/// name>:dev`, the names `images/local-values.yaml` points the chart at.
pub const STACK_IMAGE_PREFIX: &str = "spire-rs.local";
/// Their tag.
pub const STACK_IMAGE_TAG: &str = "dev";

/// One image of what `charts/spire-rs` runs, built from a binary on this machine.
pub struct StackImage {
    /// The last path component of the repository, e.g. `spire-operator`.
    pub short_name: &'static str,
    /// `<STACK_IMAGE_PREFIX>/<short name>:<STACK_IMAGE_TAG>`.
    pub name: String,
    /// The binary to pack.
    pub binary: PathBuf,
    /// Where the binary lives in the image: the path the released image uses, so the
    /// chart's commands and probes hold.
    pub path: &'static str,
    /// Entrypoint arguments after the binary (SPIRE's images run `<binary> run`).
    pub entrypoint_args: &'static [&'static str],
}

impl StackImage {
    /// The packable image.
    pub fn image(&self) -> Image<'_> {
        Image {
            name: &self.name,
            binary: &self.binary,
            path: Path::new(self.path),
            entrypoint_args: self.entrypoint_args,
        }
    }
}

/// Every image the chart runs, plus the test workload (`spire-rs.local/workload`):
/// this workspace's binaries (built by cargo if stale, in the running binary's profile)
/// and SPIRE's from the pinned tools.
pub fn stack_images() -> anyhow::Result<Vec<StackImage>> {
    let ours = |short_name: &'static str, package: &str, bin: &str, path: &'static str| {
        anyhow::Ok(StackImage {
            short_name,
            name: format!("{STACK_IMAGE_PREFIX}/{short_name}:{STACK_IMAGE_TAG}"),
            binary: crate::tools::workspace_binary(package, bin)?,
            path,
            entrypoint_args: &[],
        })
    };
    let spire = |short_name: &'static str, args: &'static [&'static str]| {
        anyhow::Ok(StackImage {
            short_name,
            name: format!("{STACK_IMAGE_PREFIX}/{short_name}:{STACK_IMAGE_TAG}"),
            binary: crate::tools::tool(short_name)?,
            path: match short_name {
                "spire-server" => "/opt/spire/bin/spire-server",
                "spire-agent" => "/opt/spire/bin/spire-agent",
                _ => "/opt/spire/bin/oidc-discovery-provider",
            },
            entrypoint_args: args,
        })
    };
    Ok(vec![
        ours(
            "spire-operator",
            "spire-operator",
            "spire-operator",
            "/usr/local/bin/spire-operator",
        )?,
        ours(
            "spiffe-csi-driver",
            "spiffe-csi-driver",
            "spiffe-csi-driver",
            "/usr/local/bin/spiffe-csi-driver",
        )?,
        ours(
            "csi-node-driver-registrar",
            "csi-node-driver-registrar",
            "csi-node-driver-registrar",
            "/csi-node-driver-registrar",
        )?,
        ours("workload", "e2e", "workload", "/usr/local/bin/workload")?,
        spire("spire-server", &["run"])?,
        spire("spire-agent", &["run"])?,
        spire("oidc-discovery-provider", &[])?,
    ])
}

/// Copies `from` (following symlinks) to the absolute path `to` inside `rootfs`.
fn copy_into(rootfs: &Path, from: &Path, to: &Path) -> anyhow::Result<()> {
    let dest = rootfs.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, &dest)
        .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    Ok(())
}

/// The files `ldd` resolves for `binary`, the dynamic loader included; none for a
/// static binary.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    // ldd fails with "not a dynamic executable" for static binaries.
    if !out.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` give their paths; `linux-vdso.so.1 (0x...)`
/// is the kernel's and gives none.
fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_loader_but_not_the_vdso() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f21)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f20)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f21)\n";
        assert_eq!(
            parse_ldd(output),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
