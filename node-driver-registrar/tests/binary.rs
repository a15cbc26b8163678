//! The registrar binary as a pod runs it, with our CSI driver's Identity service in
//! process and this test playing kubelet: it waits for a driver that starts late, serves
//! GetInfo and /healthz, exits 1 (removing its socket) when kubelet reports a failed
//! registration, and exits 0 (removing its socket) on SIGTERM.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use csi_node_driver_registrar::api::registration_client::RegistrationClient;
use csi_node_driver_registrar::api::{InfoRequest, RegistrationStatus};
use csi_node_driver_registrar::driver::uds_channel;
use spiffe_csi_driver::csi::v1::identity_server::IdentityServer;
use spiffe_csi_driver::identity::IdentityService;
use tokio_stream::wrappers::UnixListenerStream;

const DRIVER: &str = "csi.example.org";
const ENDPOINT: &str = "/var/lib/kubelet/plugins/csi.example.org/csi.sock";

struct Registrar {
    child: Child,
    socket: PathBuf,
    http_port: u16,
    log: PathBuf,
}

impl Registrar {
    fn start(dir: &Path, csi_socket: &Path, log: &str) -> Self {
        let log = dir.join(log);
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        // Upstream's spellings: one dash, two dashes, `=` or a separate value.
        let child = Command::new(env!("CARGO_BIN_EXE_csi-node-driver-registrar"))
            .arg(format!("--csi-address=unix://{}", csi_socket.display()))
            .arg(format!("--kubelet-registration-path={ENDPOINT}"))
            .arg("-plugin-registration-path")
            .arg(dir)
            .arg(format!("--http-endpoint=127.0.0.1:{http_port}"))
            .arg("-v=5")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            socket: dir.join(format!("{DRIVER}-reg.sock")),
            http_port,
            log,
        }
    }

    async fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the registrar exited"
            );
            assert!(
                Instant::now() < deadline,
                "no {} after 20 s",
                self.socket.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the registrar did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn healthz(&self) -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: registrar\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_driver(socket: &Path) {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let identity = IdentityService {
        plugin_name: DRIVER.to_owned(),
        agent_socket_dir: socket.with_file_name("agent"),
        agent_socket_name: None,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(identity))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_once_the_driver_answers_and_exits_as_upstream_does() {
    let dir = tempfile::tempdir().unwrap();
    let csi_socket = dir.path().join("csi.sock");
    let mut registrar = Registrar::start(dir.path(), &csi_socket, "first.log");

    // The driver container is not up yet: nothing is registered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        registrar.child.try_wait().unwrap().is_none(),
        "gave up on the driver"
    );
    assert!(
        !registrar.socket.exists(),
        "registered without a driver name"
    );

    serve_driver(&csi_socket);
    registrar.wait_for_socket().await;
    let health = registrar.healthz();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
        "{health}"
    );
    let mut kubelet = RegistrationClient::new(uds_channel(&registrar.socket).await.unwrap());
    let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (
            info.r#type.as_str(),
            info.name.as_str(),
            info.endpoint.as_str()
        ),
        ("CSIPlugin", DRIVER, ENDPOINT)
    );
    assert_eq!(info.supported_versions, ["1.0.0"]);

    // kubelet could not register the driver: exit 1, so the container restarts.
    let _ = kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: "no NodeGetInfo".into(),
        })
        .await;
    let status = registrar.wait_exit().await;
    assert_eq!(status.code(), Some(1), "exit after a failed registration");
    assert!(!registrar.socket.exists(), "socket left after exit 1");
    let log = std::fs::read_to_string(&registrar.log).unwrap();
    assert!(
        log.contains("kubelet failed to register CSI driver csi.example.org: no NodeGetInfo"),
        "{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "colours in a log that is a file:\n{log}"
    );

    // A restarted registrar registers again; SIGTERM ends it cleanly.
    let mut registrar = Registrar::start(dir.path(), &csi_socket, "second.log");
    registrar.wait_for_socket().await;
    let pid = registrar.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = registrar.wait_exit().await;
    assert!(status.success(), "SIGTERM: {status}");
    assert!(!registrar.socket.exists(), "socket left after SIGTERM");
}
