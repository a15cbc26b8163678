//! Serving the CSI services on a private Unix socket.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::csi::v1::{identity_server::IdentityServer, node_server::NodeServer};
use crate::identity::IdentityService;
use crate::mount::Mounter;
use crate::node::NodeService;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something other than a socket sits at the socket path; we do not delete it.
    #[error("{0:?} exists and is not a socket")]
    NotASocket(std::path::PathBuf),
    /// Preparing or binding the socket failed.
    #[error("binding CSI socket {path:?}")]
    Bind {
        /// The socket path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("serving gRPC")]
    Transport(#[from] tonic::transport::Error),
}

/// Creates the socket: parent 0700 (created so, or tightened when it already exists and
/// is ours: under a chart it is a hostPath kubelet created 0755), a stale socket
/// replaced, the socket itself 0600 before any other user could reach it: it is bound
/// in a fresh 0700 directory, made 0600, then renamed into place. (Not by changing the
/// umask around `bind`: the umask is process-wide, and another thread creating a file
/// meanwhile would get the wrong mode.)
pub fn bind_private(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        if parent.exists() {
            let meta = std::fs::metadata(parent).map_err(bind_err)?;
            if meta.uid() == rustix::process::geteuid().as_raw()
                && meta.permissions().mode() & 0o777 != 0o700
            {
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
                    .map_err(bind_err)?;
            }
        } else {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(bind_err)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    // A short name, so the staging path fits in sun_path wherever the final one does.
    let staging = path.with_file_name(format!(".s{}", std::process::id()));
    match std::fs::remove_dir_all(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(bind_err)?;
    let staged = staging.join("s");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let removed = std::fs::remove_dir(&staging);
    let listener = bound.map_err(bind_err)?;
    removed.map_err(bind_err)?;
    Ok(listener)
}

/// Serves Identity and Node on `listener` until `shutdown` completes, then drains.
pub async fn serve<M: Mounter>(
    listener: UnixListener,
    identity: IdentityService,
    node: NodeService<M>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(node))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_private_replaces_a_stale_socket_and_spares_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/csi.sock");
        drop(bind_private(&path).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["csi.sock"], "the staging directory is gone");
        // The listener is gone, the socket file stays: a restart must replace it.
        bind_private(&path).unwrap();
        let file = dir.path().join("file.sock");
        std::fs::write(&file, "keep me").unwrap();
        assert!(matches!(
            bind_private(&file),
            Err(ServeError::NotASocket(_))
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn an_existing_socket_dir_is_made_private() {
        // Under a chart the socket's directory is a hostPath kubelet created 0755.
        let dir = tempfile::tempdir().unwrap();
        let plugin_dir = dir.path().join("plugins/csi.spiffe.io");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        std::fs::set_permissions(&plugin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(bind_private(&plugin_dir.join("csi.sock")).unwrap());
        let mode = std::fs::metadata(&plugin_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
