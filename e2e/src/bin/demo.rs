//! `make demo`: brings up the local stack (a real kube-apiserver and a real SPIRE
//! server + agent, no Docker) and shows a workload receiving its SPIFFE identity.
//! Everything stops and is cleaned up on Ctrl-C.
//!
//! `demo --no-wait` runs the same story and exits instead of waiting (used by the tests).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use e2e::{ControlPlane, Spire, tools};
use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types::{Entry, Selector};

const TRUST_DOMAIN: &str = "example.org";

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let no_wait = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--no-wait") => true,
        Some(other) => bail!("unknown argument {other:?} (the only option is --no-wait)"),
    };
    let started = Instant::now();
    let bin = tools::bin_dir()?;

    step(
        1,
        "Starting a Kubernetes control plane (etcd + kube-apiserver) on 127.0.0.1 ...",
    );
    let control_plane = ControlPlane::start()
        .await
        .context("starting the control plane (did `make tools` run?)")?;
    let version = control_plane.client().apiserver_version().await?;
    println!(
        "    kube-apiserver {} is ready at {}",
        version.git_version,
        control_plane.url()
    );

    step(
        2,
        &format!("Starting SPIRE for trust domain {TRUST_DOMAIN}: a server and an agent ..."),
    );
    let spire = Spire::start(TRUST_DOMAIN).await?;
    println!(
        "    spire-server admin API: {}",
        spire.server_socket().display()
    );
    println!(
        "    spire-agent attested with a join token as {}",
        spire.agent_id()
    );
    println!(
        "    Workload API socket:    {}",
        spire.workload_socket().display()
    );

    step(
        3,
        "Registering the workload with our Rust SPIRE API client ...",
    );
    let uid = rustix::process::getuid().as_raw();
    let id: SpiffeId = format!("spiffe://{TRUST_DOMAIN}/demo/workload").parse()?;
    let entry = Entry {
        spiffe_id: Some(id.to_api()),
        parent_id: Some(spire.agent_id().to_api()),
        selectors: vec![Selector {
            r#type: "unix".into(),
            value: format!("uid:{uid}"),
        }],
        hint: "demo".into(),
        ..Default::default()
    };
    let result = spire
        .client()
        .batch_create_entries(vec![entry])
        .await?
        .remove(0);
    let status = result.status.unwrap_or_default();
    if status.code != 0 {
        bail!("creating the entry failed: {}", status.message);
    }
    let entry_id = result.entry.map(|e| e.id).unwrap_or_default();
    println!("    entry {entry_id}: {id}");
    println!("      parent   {}", spire.agent_id());
    println!("      selector unix:uid:{uid}  (any process running as this user)");

    step(
        4,
        "Running a workload that asks the agent for its identity ...",
    );
    let workload = std::env::current_exe()?.with_file_name("workload");
    let output = Command::new(&workload)
        .args(["--jwt-audience", "demo", "--timeout-secs", "60"])
        .env("SPIFFE_ENDPOINT_SOCKET", spire.workload_endpoint())
        .output()
        .with_context(|| {
            format!(
                "running {} (build it with `cargo build -p e2e --bins`)",
                workload.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "the workload got no identity:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let got: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    println!(
        "    X.509-SVID: {} ({} certificate(s) in the chain)",
        got["x509_svid"]["spiffe_id"], got["x509_svid"]["chain_length"]
    );
    println!(
        "    JWT-SVID:   {} for audience {}",
        got["jwt_svid"]["spiffe_id"], got["jwt_svid"]["audience"]
    );
    if got["x509_svid"]["spiffe_id"] != id.to_string() {
        bail!(
            "the workload received {} instead of {id}",
            got["x509_svid"]["spiffe_id"]
        );
    }
    println!(
        "\nThe workload received its identity {} s after start.",
        started.elapsed().as_secs()
    );

    if no_wait {
        return Ok(());
    }
    print_next_steps(&bin, &control_plane, &spire, &workload);
    wait_for_shutdown().await?;
    println!("\nStopping SPIRE and the control plane, removing their temporary directories ...");
    drop(spire);
    drop(control_plane);
    println!("Done.");
    Ok(())
}

fn print_next_steps(
    bin: &std::path::Path,
    control_plane: &ControlPlane,
    spire: &Spire,
    workload: &Path,
) {
    println!("\nThe stack keeps running until you press Ctrl-C. In another terminal, try:");
    println!("  export PATH={}:$PATH", bin.display());
    println!(
        "  export KUBECONFIG={}",
        control_plane.kubeconfig().display()
    );
    println!("  kubectl get namespaces");
    println!(
        "  spire-server entry show -socketPath {}",
        spire.server_socket().display()
    );
    println!(
        "  spire-server agent list -socketPath {}",
        spire.server_socket().display()
    );
    println!(
        "  target/debug/spire-operator check-spire --spire-server-socket-path {}",
        spire.server_socket().display()
    );
    println!(
        "  SPIFFE_ENDPOINT_SOCKET={} {}",
        spire.workload_endpoint(),
        workload.display()
    );
    println!(
        "Logs: {}/*.log and {}/*.log",
        control_plane.dir().display(),
        spire.dir().display()
    );
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
