//! csi-node-driver-registrar command line: upstream's flags, logging, wiring.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, CommandFactory, Parser, ValueEnum};
use csi_node_driver_registrar::{driver, health, registration};

/// Registers a CSI node plugin with kubelet: asks the driver at --csi-address for its
/// name, then serves kubelet's plugin registration API on
/// `<--plugin-registration-path>/<name>-reg.sock`, pointing kubelet at
/// --kubelet-registration-path. A drop-in for kubernetes-csi/node-driver-registrar v2:
/// the same flags (single or double dash), the same socket, the same exit on a refused
/// registration. Flags only, no environment variables, as upstream: manifests pass
/// settings as arguments.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The CSI driver's socket as this container sees it: a path or `unix:///path`.
    #[arg(long, default_value = "/run/csi/socket")]
    csi_address: String,
    /// The CSI driver's socket on the node, which kubelet dials (required), e.g.
    /// `/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock`.
    #[arg(long, default_value = "")]
    kubelet_registration_path: String,
    /// kubelet's plugin registry directory as this container sees it (the node's
    /// `/var/lib/kubelet/plugins_registry`).
    #[arg(long, default_value = "/registration")]
    plugin_registration_path: PathBuf,
    /// Address of the HTTP server for `GET /healthz`, e.g. `:9809`; empty: no server.
    #[arg(long, default_value = "")]
    http_endpoint: String,
    /// Deprecated: `--http-endpoint=:<port>`; 0: off. Only one of the two may be set.
    #[arg(long, default_value_t = 0)]
    health_port: u16,
    /// Timeout of each call to the driver or the registration socket (Go duration).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Deprecated upstream and without effect there too.
    #[arg(long, value_parser = parse_duration)]
    connection_timeout: Option<Duration>,
    /// Deprecated: `kubelet-registration-probe` exits 0 at once (upstream kept it as a
    /// no-op exec probe); anything else registers.
    #[arg(long, default_value = "")]
    mode: String,
    /// Log verbosity (klog's -v): 4 and up log kubelet's calls, 5 and up every health
    /// check. RUST_LOG, when set, wins.
    #[arg(long = "v", default_value_t = 0)]
    verbosity: u8,
    /// Log format: `text`, or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = LoggingFormat::Text)]
    logging_format: LoggingFormat,
    /// Accepted for compatibility; there is no pprof here (a warning is logged).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    enable_pprof: bool,
    /// Accepted for compatibility, ignored with a warning (klog's per-file verbosity).
    #[arg(long)]
    vmodule: Option<String>,
    /// Accepted for compatibility, ignored with a warning (logs are not buffered).
    #[arg(long)]
    log_flush_frequency: Option<String>,
    /// Accepted for compatibility, ignored with a warning (logs go to stderr).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    log_text_split_stream: Option<bool>,
    /// Accepted for compatibility, ignored with a warning.
    #[arg(long)]
    log_text_info_buffer_size: Option<String>,
    /// Accepted for compatibility, ignored with a warning (logs go to stderr).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    log_json_split_stream: Option<bool>,
    /// Accepted for compatibility, ignored with a warning.
    #[arg(long)]
    log_json_info_buffer_size: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LoggingFormat {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    go_duration::parse_std(text.trim())
        .map_err(|e| format!("invalid duration: {e} (e.g. 500ms, 1s, 1m30s)"))
}

impl Cli {
    /// The HTTP address from --http-endpoint or the deprecated --health-port.
    fn http_address(&self) -> anyhow::Result<Option<String>> {
        match (self.health_port, self.http_endpoint.as_str()) {
            (0, "") => Ok(None),
            (0, endpoint) => Ok(Some(endpoint.to_owned())),
            (port, "") => Ok(Some(format!(":{port}"))),
            (port, endpoint) => bail!(
                "only one of --health-port ({port}) and --http-endpoint ({endpoint:?}) can be set"
            ),
        }
    }

    /// The flags given that this implementation accepts but ignores.
    fn ignored(&self) -> Vec<&'static str> {
        [
            ("--enable-pprof", self.enable_pprof),
            ("--vmodule", self.vmodule.is_some()),
            ("--log-flush-frequency", self.log_flush_frequency.is_some()),
            (
                "--log-text-split-stream",
                self.log_text_split_stream.is_some(),
            ),
            (
                "--log-text-info-buffer-size",
                self.log_text_info_buffer_size.is_some(),
            ),
            (
                "--log-json-split-stream",
                self.log_json_split_stream.is_some(),
            ),
            (
                "--log-json-info-buffer-size",
                self.log_json_info_buffer_size.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect()
    }
}

fn init_logging(cli: &Cli) {
    // klog's -v raises this program's verbosity, not its libraries'.
    let level = match cli.verbosity {
        0..=3 => "info",
        4 => "info,csi_node_driver_registrar=debug",
        _ => "info,csi_node_driver_registrar=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: container logs are files.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.logging_format {
        LoggingFormat::Text => logs.init(),
        LoggingFormat::Json => logs.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(go_style_flags(std::env::args_os().collect()));
    init_logging(&cli);
    if cli.kubelet_registration_path.is_empty() {
        bail!("--kubelet-registration-path is required (the driver's socket path on the node)");
    }
    if cli.mode == "kubelet-registration-probe" {
        // Upstream keeps this mode as a no-op for old exec probes.
        return Ok(());
    }
    let http_address = cli.http_address()?;
    if cli.connection_timeout.is_some() {
        tracing::warn!("--connection-timeout is deprecated and has no effect");
    }
    for flag in cli.ignored() {
        tracing::warn!("{flag} is accepted for compatibility with upstream and ignored");
    }
    let driver_socket = driver::socket_path(&cli.csi_address)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        csi_address = %driver_socket.display(),
        "asking the CSI driver for its name"
    );
    let mut stop = Box::pin(spiffe_csi_driver::cli::shutdown_signal());
    let name = tokio::select! {
        name = driver::wait_for_plugin_name(
            &driver_socket,
            cli.timeout,
            Duration::from_secs(1),
            Duration::from_secs(10),
        ) => name,
        () = &mut stop => {
            tracing::info!("stopped before the driver answered");
            return Ok(());
        }
    };

    let socket = registration::socket_path(&cli.plugin_registration_path, &name);
    let listener = registration::bind(&socket)?;
    if let Some(address) = &http_address {
        let http = health::listen(address)
            .await
            .with_context(|| format!("listening on --http-endpoint {address:?}"))?;
        let router = health::router(Arc::new(health::Health {
            registration_socket: socket.clone(),
            driver_socket: driver_socket.clone(),
            driver_name: name.clone(),
            timeout: cli.timeout,
        }));
        tracing::info!(address = %address, "serving /healthz");
        for listener in http {
            let router = router.clone();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    // Upstream exits too: without /healthz the liveness probe fails anyway.
                    tracing::error!(error = %e, "HTTP server failed");
                    std::process::exit(1);
                }
            });
        }
    }

    let (refusals, mut refused) = tokio::sync::mpsc::channel(1);
    let service =
        registration::RegistrationService::new(&name, &cli.kubelet_registration_path, refusals);
    tracing::info!(
        driver = %name,
        socket = %socket.display(),
        endpoint = %cli.kubelet_registration_path,
        "serving the Registration service for kubelet"
    );
    let mut refusal = None;
    let served = registration::serve(listener, service, async {
        tokio::select! {
            () = &mut stop => {},
            error = refused.recv() => refusal = Some(error.unwrap_or_default()),
        }
    })
    .await;
    // Gone socket, deregistered driver: kubelet stops sending pods to a registrar that
    // is not there.
    if let Err(e) = registration::remove(&socket) {
        tracing::error!(socket = %socket.display(), error = %e, "removing the registration socket");
    }
    served?;
    if let Some(error) = refusal {
        bail!("kubelet failed to register CSI driver {name}: {error}");
    }
    tracing::info!("shut down");
    Ok(())
}

/// Reads Go-style single-dash flags (`-v=5`, `-csi-address /x`) as ours: upstream
/// parses with Go's flag package, which takes one dash or two.
fn go_style_flags(args: Vec<OsString>) -> Vec<OsString> {
    let command = Cli::command();
    let mut longs: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .collect();
    longs.push("version");
    spiffe_csi_driver::cli::go_style_flags(args, &longs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(go_style_flags(args.iter().map(OsString::from).collect()))
    }

    #[test]
    fn upstreams_daemonset_args_parse() {
        // The args of the kubernetes-csi README and of spiffe/helm-charts-hardened.
        let cli = parse(&[
            "csi-node-driver-registrar",
            "--csi-address=/spiffe-csi/csi.sock",
            "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
            "--http-endpoint=:9809",
            "-v=5",
        ])
        .unwrap();
        assert_eq!(cli.csi_address, "/spiffe-csi/csi.sock");
        assert_eq!(
            cli.kubelet_registration_path,
            "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock"
        );
        assert_eq!(cli.plugin_registration_path, PathBuf::from("/registration"));
        assert_eq!(cli.http_address().unwrap().as_deref(), Some(":9809"));
        assert_eq!(cli.verbosity, 5);
        assert_eq!(cli.timeout, Duration::from_secs(1));
        assert!(cli.ignored().is_empty());
    }

    /// spiffe/helm-charts-hardened's spiffe-csi-driver DaemonSet: single dashes, separate
    /// values, the deprecated --health-port.
    #[test]
    fn the_hardened_charts_registrar_args_parse() {
        let cli = parse(&[
            "csi-node-driver-registrar",
            "-csi-address",
            "/spiffe-csi/csi.sock",
            "-kubelet-registration-path",
            "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
            "-health-port",
            "9809",
        ])
        .unwrap();
        assert_eq!(cli.csi_address, "/spiffe-csi/csi.sock");
        assert_eq!(
            cli.kubelet_registration_path,
            "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock"
        );
        assert_eq!(cli.http_address().unwrap().as_deref(), Some(":9809"));
        assert!(cli.ignored().is_empty());
    }

    #[test]
    fn go_flag_spellings_parse() {
        let cli = parse(&[
            "csi-node-driver-registrar",
            "-csi-address",
            "unix:///csi/csi.sock",
            "--v",
            "2",
            "-timeout=2m",
            "-health-port=9810",
            "-enable-pprof",
            "--log-json-split-stream",
            "-connection-timeout=15s",
            "--logging-format=json",
            "-plugin-registration-path=/reg",
        ])
        .unwrap();
        assert_eq!(cli.csi_address, "unix:///csi/csi.sock");
        assert_eq!(cli.verbosity, 2);
        assert_eq!(cli.timeout, Duration::from_secs(120));
        assert_eq!(cli.http_address().unwrap().as_deref(), Some(":9810"));
        assert_eq!(cli.connection_timeout, Some(Duration::from_secs(15)));
        assert_eq!(cli.logging_format, LoggingFormat::Json);
        assert_eq!(cli.plugin_registration_path, PathBuf::from("/reg"));
        assert_eq!(cli.ignored(), ["--enable-pprof", "--log-json-split-stream"]);
        let off = parse(&["r", "--enable-pprof=false"]).unwrap();
        assert!(off.ignored().is_empty());
    }

    #[test]
    fn health_port_and_http_endpoint_exclude_each_other() {
        let cli = parse(&["r", "--health-port=9809", "--http-endpoint=:9810"]).unwrap();
        let err = cli.http_address().unwrap_err().to_string();
        assert!(
            err.contains("--health-port (9809)") && err.contains(":9810"),
            "{err}"
        );
        assert_eq!(parse(&["r"]).unwrap().http_address().unwrap(), None);
    }

    #[test]
    fn unknown_flags_are_refused() {
        assert!(parse(&["r", "--no-such-flag=1"]).is_err());
        assert!(parse(&["r", "-no-such-flag"]).is_err());
    }
}
