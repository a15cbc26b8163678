//! Command-line and process helpers shared by `spiffe-csi-driver` and
//! `csi-node-driver-registrar`, both stand-ins for Go programs whose flags their users'
//! manifests already pass.

use std::ffi::OsString;

/// Reads Go-style single-dash flags (`-workload-api-socket-dir /x`, `-v=5`) as the
/// double-dash ones clap knows: Go's flag package takes one dash or two, and the Go
/// tools' DaemonSets use one. `longs` are the long flag names of the program; the first
/// argument (the program) and anything else pass unchanged.
pub fn go_style_flags(args: Vec<OsString>, longs: &[&str]) -> Vec<OsString> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let Some(s) = arg.to_str().filter(|_| i > 0) else {
                return arg;
            };
            let name = s.strip_prefix('-').filter(|rest| !rest.starts_with('-'));
            match name.map(|n| n.split_once('=').map_or(n, |(n, _)| n)) {
                Some(n) if longs.contains(&n) => format!("-{s}").into(),
                _ => arg,
            }
        })
        .collect()
}

/// Completes on SIGTERM or SIGINT (logging which); never, after logging why, if the
/// handlers cannot be installed.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_long_flags_get_a_second_dash_and_nothing_else_changes() {
        let args: Vec<OsString> = [
            "prog",
            "-plugin-name=x",
            "-v",
            "5",
            "--node-id",
            "-",
            "-unknown",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let out = go_style_flags(args, &["plugin-name", "node-id", "v"]);
        assert_eq!(
            out,
            [
                "prog",
                "--plugin-name=x",
                "--v",
                "5",
                "--node-id",
                "-",
                "-unknown"
            ]
            .map(OsString::from)
        );
    }
}
