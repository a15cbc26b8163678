//! `make images`: the OCI image archives of everything `charts/spire-rs` runs, built
//! without Docker or a registry (see `images/README.md`).
//!
//! ```text
//! images [--out DIR] [--containerd-socket SOCKET]
//! ```
//!
//! Writes `DIR/<component>.tar` (default `target/images`) for spire-operator,
//! spiffe-csi-driver, csi-node-driver-registrar and the test workload (this workspace's
//! binaries, in the profile this program was built with: `make images` uses release) and
//! for spire-server, spire-agent and oidc-discovery-provider (the pinned SPIRE build of
//! `make tools`), each named `spire-rs.local/<component>:dev`, and prints their sizes.
//! With `--containerd-socket` it also imports them into that containerd's `k8s.io`
//! namespace, where `images/local-values.yaml` makes the chart find them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use e2e::image::stack_images;
use e2e::tools;

fn main() -> anyhow::Result<()> {
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/images"));
    let mut socket = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out needs a directory")?.into(),
            "--containerd-socket" => {
                socket = Some(args.next().context("--containerd-socket needs a path")?)
            }
            other => {
                bail!("unknown argument {other:?} (expected --out DIR, --containerd-socket SOCKET)")
            }
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    println!("| image | binary | archive |");
    println!("|---|---|---|");
    for image in stack_images()? {
        let archive = out.join(format!("{}.tar", image.short_name));
        image.image().pack(&archive)?;
        let binary = std::fs::metadata(&image.binary)?.len();
        let packed = std::fs::metadata(&archive)?.len();
        println!("| {} | {} | {} |", image.name, mib(binary), mib(packed));
        if let Some(socket) = &socket {
            let status = Command::new(tools::tool("ctr")?)
                .arg(format!("--address={socket}"))
                .args(["--namespace=k8s.io", "images", "import"])
                .arg(&archive)
                .status()
                .context("running ctr images import")?;
            anyhow::ensure!(
                status.success(),
                "ctr images import {} failed",
                archive.display()
            );
        }
    }
    println!("\narchives in {}", out.display());
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
