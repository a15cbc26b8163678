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
    let entrypoint = Path::new("/usr/local/bin").join(file_name);
    binary_image_at(binary, &entrypoint, name, archive)
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
    let rootfs = tempfile::Builder::new()
        .prefix("spire-rs-rootfs-")
        .tempdir()?;
    copy_into(rootfs.path(), binary, entrypoint)?;
    for library in shared_libraries(binary)? {
        copy_into(rootfs.path(), &library, &library)?;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/oci-image.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(name)
        .arg(rootfs.path())
        .arg(serde_json::to_string(&[entrypoint])?)
        .arg(archive)
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!(
            "{script} {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(archive.to_path_buf())
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
