//! What of a kubelet the SPIRE agent's k8s workload attestor needs, without a kubelet:
//! the read-only port's `GET /pods`, and a cgroup shaped like the kubelet's
//! (`.../pod<uid>/<container id>`) to run a "container" process in, so that the agent
//! finds the pod UID and container ID from the process's cgroup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The one container of a stand-in pod, as the container runtime would name it.
pub const CONTAINER_ID: &str = "5d1ea3e9c0b2f4a68e7d9c1b3a5f7e9d2c4b6a8f0e1d3c5b7a9f2e4d6c8b0a1f";

/// `pod` as the kubelet reports it once its container ([`CONTAINER_ID`]) runs.
pub fn running_pod(pod: &Pod) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(pod)?;
    value["status"] = json!({
        "phase": "Running",
        "containerStatuses": [{
            "name": "app",
            "image": "registry.invalid/app:1",
            "imageID": "registry.invalid/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "containerID": format!("containerd://{CONTAINER_ID}"),
            "ready": true,
            "restartCount": 0,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        }]
    });
    Ok(value)
}

/// `/sys/fs/cgroup/pids/spire-rs-e2e-<pid>/pod<uid>/<container id>`, shaped like the
/// kubelet's so the agent's k8s attestor reads the pod UID and container ID from it.
pub struct PodCgroup {
    root: PathBuf,
    /// The container's cgroup directory.
    pub path: PathBuf,
}

impl PodCgroup {
    /// Creates the cgroup of pod `pod_uid`'s container.
    pub fn create(pod_uid: &str) -> anyhow::Result<Self> {
        let hierarchy = [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
        .context("no writable cgroup hierarchy under /sys/fs/cgroup")?;
        let root = hierarchy.join(format!("spire-rs-e2e-{}", std::process::id()));
        let path = root.join(format!("pod{pod_uid}")).join(CONTAINER_ID);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { root, path })
    }

    /// `program args...` run inside this cgroup (the shell moves itself in, then execs).
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
            .arg("sh")
            .arg(&self.path)
            .arg(program);
        command
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Only empty cgroups can go; the workload has exited by now. The root is shared
        // by the pods of one test process and goes with the last one.
        if let Some(pod) = self.path.parent() {
            let _ = std::fs::remove_dir(&self.path);
            let _ = std::fs::remove_dir(pod);
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// The part of a kubelet the SPIRE agent's k8s workload attestor uses: `GET /pods` on the
/// read-only port, the pods bound to this node with their container statuses.
pub struct Kubelet {
    /// The read-only port on 127.0.0.1.
    pub port: u16,
    pods: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Listens on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let pods: Arc<Mutex<Vec<Value>>> = Arc::default();
        let shared = pods.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let pods = shared.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, body) = if request.starts_with(b"GET /pods ") {
                        let items = pods.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        (
                            "200 OK",
                            json!({"kind": "PodList", "apiVersion": "v1", "items": items})
                                .to_string(),
                        )
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(Self { port, pods, task })
    }

    /// Replaces the pods `GET /pods` lists (see [`running_pod`]).
    pub fn set_pods(&self, pods: Vec<Value>) {
        *self.pods.lock().unwrap_or_else(|e| e.into_inner()) = pods;
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}
