//! `make demo`: the whole story on this machine, on a real node. A control plane
//! (etcd, kube-apiserver, kube-scheduler, kube-controller-manager) and a node (containerd
//! and a kubelet) start on 127.0.0.1; the stack's images are built without Docker and
//! imported; `helm install` of `charts/spire-rs` runs SPIRE, our operator, our CSI driver
//! and the OIDC discovery provider as pods; a workload Deployment gets its identity
//! through the CSI volume; deleting its pod removes its entry.
//!
//! `demo --no-wait` runs the story, then runs every command it suggests and checks that
//! each does what its comment says (the tests use it), and exits instead of waiting.
//! Everything stops and is cleaned up on Ctrl-C.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::cluster::app::{App, name_of, pod_entry_ids, uid_of, wait_entries_gone};
use e2e::cluster::{Cluster, NAMESPACE, OIDC_DOMAIN, local_values_file};
use e2e::{WorkDir, tools, wait};

const APP: App = App {
    namespace: "shop",
    name: "web",
    service_account: "web",
    audience: "api://AzureADTokenExchange",
    annotated_id: None,
};

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
    if !rustix::process::geteuid().is_root() {
        bail!(
            "the demo runs a kubelet and containerd (mounts, cgroups, namespaces), which \
             needs root. Run `sudo make demo`."
        );
    }
    let started = Instant::now();
    let bin = tools::bin_dir()?;

    step(
        1,
        "Starting a control plane (etcd, kube-apiserver, kube-scheduler, kube-controller-manager) \
         and a node (containerd + kubelet) on 127.0.0.1, and importing the images built here \
         (no Docker, no registry) ...",
    );
    let mut cluster = Cluster::start()
        .await
        .context("starting the cluster (did `make tools` run?)")?;
    let client = cluster.control_plane.client();
    let version = client.apiserver_version().await?;
    println!(
        "    kube-apiserver {} at {}; Node {} is Ready",
        version.git_version,
        cluster.control_plane.url(),
        cluster.node.name()
    );
    let env = Env {
        path: format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        kubeconfig: cluster.control_plane.kubeconfig().display().to_string(),
    };

    step(2, "helm install spire-rs charts/spire-rs ...");
    println!(
        "    $ helm install spire-rs charts/spire-rs -n {NAMESPACE} --create-namespace \\\n        -f {} -f {}",
        local_values_file().display(),
        cluster.values_file().display()
    );
    let installed = Instant::now();
    cluster.install(&[])?;
    cluster.wait_rolled_out(Duration::from_secs(180)).await?;
    println!(
        "    every pod Ready {:.1} s after helm install",
        installed.elapsed().as_secs_f64()
    );
    println!("    $ kubectl get pods -A");
    print_indented(&env.run("kubectl get pods -A -o wide")?);

    step(
        3,
        &format!(
            "A workload: Deployment {}/{} with the CSI volume from the README ...",
            APP.namespace, APP.name
        ),
    );
    let dir = WorkDir::new("demo")?;
    let manifest = dir.join("web.yaml");
    std::fs::write(&manifest, workload_manifest()?)?;
    print_indented(&std::fs::read_to_string(&manifest)?);
    print_indented(&env.run(&format!("kubectl apply -f {}", manifest.display()))?);
    let pod = APP.running_pod(&cluster, &[]).await?;
    let line = APP.svid_line(&cluster, &name_of(&pod), 0).await?;
    println!(
        "    pod {} logged, {:.1} s after helm install:",
        name_of(&pod),
        installed.elapsed().as_secs_f64()
    );
    println!("      X.509-SVID: {}", line["x509_svid"]["spiffe_id"]);
    println!("      JWT-SVID:   {}", line["jwt_svid"]["spiffe_id"]);
    let token = line["jwt_svid"]["token"].as_str().unwrap_or_default();
    let verified = cluster.verify_jwt(token, APP.audience).await?;
    println!(
        "    checked against the OIDC discovery provider's JWKS (Host {OIDC_DOMAIN}): \
         the token proves {} for audience {:?}",
        verified.spiffe_id(),
        verified.audience()
    );
    let socket = cluster.admin_socket().await?;
    let uid = uid_of(&pod)?;
    println!("    its entry, made by spire-operator from the chart's default ClusterSPIFFEID:");
    print_indented(&env.run(&format!(
        "spire-server entry show -socketPath {} -selector k8s:pod-uid:{uid}",
        socket.display()
    ))?);

    step(4, "Deleting the pod ...");
    println!(
        "    $ kubectl -n {} delete pod {}",
        APP.namespace,
        name_of(&pod)
    );
    let deleted = Instant::now();
    env.run(&format!(
        "kubectl -n {} delete pod {} --wait=false",
        APP.namespace,
        name_of(&pod)
    ))?;
    let spire = cluster.spire_client().await?;
    wait_entries_gone(&spire, &uid).await?;
    println!(
        "    its entry was removed {:.2} s later",
        deleted.elapsed().as_secs_f64()
    );
    let replacement = APP.running_pod(&cluster, &[&uid]).await?;
    let line = APP.svid_line(&cluster, &name_of(&replacement), 0).await?;
    println!(
        "    the replacement pod {} has its own entry and logged {}",
        name_of(&replacement),
        line["x509_svid"]["spiffe_id"]
    );
    println!("\nDone in {:.0} s.", started.elapsed().as_secs_f64());

    let suggestions = suggestions(&cluster, &socket);
    println!("\nIn another terminal, try:");
    println!("  export PATH={}:$PATH", bin.display());
    println!("  export KUBECONFIG={}", env.kubeconfig);
    for s in &suggestions {
        println!("  {:<52} # {}", s.command, s.comment);
    }
    println!(
        "Logs: {}/*.log, {}/pod-logs/, {}/*.log",
        cluster.node.dir().display(),
        cluster.node.dir().display(),
        cluster.control_plane.dir().display()
    );
    if no_wait {
        println!("\nChecking every suggestion ...");
        for s in &suggestions {
            s.check(&env, &cluster).await.with_context(|| {
                format!("the suggested command `{}` ({})", s.command, s.comment)
            })?;
            println!("    ok: {}", s.command);
        }
        return Ok(());
    }
    println!("\nThe stack keeps running until you press Ctrl-C.");
    wait_for_shutdown().await?;
    println!("\nStopping ...");
    Ok(())
}

/// The environment the suggestions assume: our tools first on PATH, the cluster's
/// kubeconfig.
struct Env {
    path: String,
    kubeconfig: String,
}

impl Env {
    /// Runs `command` with bash in this environment; its standard output, or an error
    /// with both outputs.
    fn run(&self, command: &str) -> anyhow::Result<String> {
        let out = Command::new("bash")
            .args(["-c", command])
            .env("PATH", &self.path)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .with_context(|| format!("running {command}"))?;
        if !out.status.success() {
            bail!(
                "`{command}` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A command printed at the end, and what its comment promises.
struct Suggestion {
    command: String,
    comment: &'static str,
    expect: Expect,
}

enum Expect {
    /// The output contains each of these.
    Output(Vec<String>),
    /// The app's pod is replaced: the old pod's entry goes, the new pod gets its own
    /// and its SVID.
    PodReplaced,
}

fn suggestions(cluster: &Cluster, socket: &Path) -> Vec<Suggestion> {
    let id = APP.spiffe_id();
    vec![
        Suggestion {
            command: "kubectl get pods -A".into(),
            comment: "the stack and the workload, as pods on the node",
            expect: Expect::Output(vec![
                "spire-rs-spire-server-0".into(),
                "spire-rs-spire-agent-".into(),
                "spire-rs-spiffe-csi-driver-".into(),
                "spire-rs-oidc-discovery-provider-".into(),
                format!("{}-", APP.name),
            ]),
        },
        Suggestion {
            command: "kubectl get clusterspiffeids".into(),
            comment: "PODS / ENTRIES / READY of each",
            expect: Expect::Output(vec!["default".into(), "True".into()]),
        },
        Suggestion {
            command: format!(
                "kubectl -n {} logs deploy/{} --tail=1",
                APP.namespace, APP.name
            ),
            comment: "the workload's latest fetch of its SVIDs",
            expect: Expect::Output(vec![id.clone()]),
        },
        Suggestion {
            command: format!("spire-server entry show -socketPath {}", socket.display()),
            comment: "the entries, as the SPIRE server has them",
            expect: Expect::Output(vec![id.clone(), "k8s:pod-uid:".into()]),
        },
        Suggestion {
            command: format!(
                "curl -s -H 'Host: {OIDC_DOMAIN}' http://127.0.0.1:{}/keys",
                cluster.ports.oidc
            ),
            comment: "the JWKS relying parties validate JWT-SVIDs with",
            expect: Expect::Output(vec!["\"keys\"".into(), "\"kid\"".into()]),
        },
        Suggestion {
            command: format!(
                "kubectl -n {} delete pod -l app={}",
                APP.namespace, APP.name
            ),
            comment: "its entry goes; the new pod gets its own",
            expect: Expect::PodReplaced,
        },
    ]
}

impl Suggestion {
    async fn check(&self, env: &Env, cluster: &Cluster) -> anyhow::Result<()> {
        match &self.expect {
            Expect::Output(wanted) => {
                let out = env.run(&self.command)?;
                for w in wanted {
                    anyhow::ensure!(out.contains(w.as_str()), "{w:?} missing from:\n{out}");
                }
            }
            Expect::PodReplaced => {
                let before = APP.running_pod(cluster, &[]).await?;
                let before_uid = uid_of(&before)?;
                env.run(&self.command)?;
                let spire = cluster.spire_client().await?;
                wait_entries_gone(&spire, &before_uid).await?;
                let after = APP.running_pod(cluster, &[&before_uid]).await?;
                APP.svid_line(cluster, &name_of(&after), 0).await?;
                let uid = uid_of(&after)?;
                let spire = &spire;
                wait::until(
                    "the new pod's entry",
                    Duration::from_secs(30),
                    Duration::from_millis(200),
                    || {
                        let uid = uid.clone();
                        async move {
                            Ok((pod_entry_ids(spire, &uid).await? == [APP.spiffe_id()])
                                .then_some(()))
                        }
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// The workload as a user writes it (`kubectl apply -f`): its ServiceAccount and
/// Deployment, in its namespace.
fn workload_manifest() -> anyhow::Result<String> {
    let mut deployment = serde_json::to_value(APP.deployment()?)?;
    deployment["apiVersion"] = "apps/v1".into();
    deployment["kind"] = "Deployment".into();
    deployment["metadata"]["namespace"] = APP.namespace.into();
    let namespace = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP.namespace},
    });
    let service_account = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": APP.service_account, "namespace": APP.namespace},
    });
    Ok([namespace, service_account, deployment]
        .iter()
        .map(serde_norway::to_string)
        .collect::<Result<Vec<_>, _>>()?
        .join("---\n"))
}

fn print_indented(text: &str) {
    for line in text.trim_end().lines() {
        println!("    {line}");
    }
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
