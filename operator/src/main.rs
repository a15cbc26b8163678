//! spire-operator command line: argument parsing, logging and wiring only.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use spire_operator::config::LogEncoding;
use spire_operator::spire::{SpiffeId, SpireAddress, SpireClient};

mod commands;
mod run;
mod run_static;

/// Reconciles ClusterSPIFFEID, ClusterStaticEntry and ClusterFederatedTrustDomain
/// resources into SPIRE registration entries and federation relationships.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Log line format. Default: the config file's logEncoding for `run`, else console.
    #[arg(long, env = "SPIRE_OPERATOR_LOG_FORMAT", value_enum, global = true)]
    log_format: Option<LogFormat>,
    /// Log filter in RUST_LOG syntax, e.g. `info` or `spire_operator=debug`. Default: the
    /// config file's logLevel for `run`, else info.
    #[arg(long, env = "SPIRE_OPERATOR_LOG", global = true)]
    log: Option<String>,
    #[command(flatten)]
    zap: ZapFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the operator: watches the cluster and keeps the SPIRE server's entries in line
    /// with the ClusterSPIFFEIDs and ClusterStaticEntries.
    Run(run::RunArgs),
    /// Connects to the SPIRE server API and prints its trust domain, bundle and entry count:
    /// a quick way to check that the operator can reach the server it is configured for.
    CheckSpire {
        /// Path of the SPIRE server's admin API Unix socket (`server.socket_path`).
        #[arg(
            long,
            env = "SPIRE_SERVER_SOCKET_PATH",
            default_value = "/spire-server/api.sock"
        )]
        spire_server_socket_path: PathBuf,
        /// `host:port` of the server's TCP API instead of the socket: mTLS as this
        /// process's X.509-SVID (config key `spireServerAddress`).
        #[arg(long, env = "SPIRE_SERVER_ADDRESS")]
        spire_server_address: Option<String>,
        /// With --spire-server-address: the SPIFFE ID the server must present. Default:
        /// `spiffe://<trust domain of our SVID>/spire/server`.
        #[arg(
            long,
            env = "SPIRE_SERVER_SPIFFE_ID",
            requires = "spire_server_address"
        )]
        spire_server_spiffe_id: Option<SpiffeId>,
        /// With --spire-server-address: the Workload API socket (`unix:///path` or a
        /// path). Default: `SPIFFE_ENDPOINT_SOCKET`.
        #[arg(
            long,
            env = "SPIFFE_ENDPOINT_SOCKET",
            requires = "spire_server_address"
        )]
        workload_api_address: Option<String>,
        /// How long each SPIRE API call may take.
        #[arg(long, env = "SPIRE_API_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Keeps the registration entries an operator outside the SPIRE server's pod needs
    /// (a node alias for the cluster's agents and the operator's own entry), through the
    /// server's admin socket: run it in the server's pod. Re-checks every --interval.
    BootstrapEntry(commands::BootstrapArgs),
    /// Prints the CustomResourceDefinitions of ClusterSPIFFEID, ClusterStaticEntry and
    /// ClusterFederatedTrustDomain as one multi-document YAML stream, or writes one file
    /// per kind with --out-dir.
    Crds {
        /// Directory to write `spire.spiffe.io_<plural>.yaml` files into instead of
        /// printing to stdout (default: print).
        #[arg(long, env = "SPIRE_OPERATOR_CRDS_OUT_DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Parses a spire-controller-manager `ControllerManagerConfig` file and prints the
    /// effective configuration (defaults applied), or the first problem found.
    CheckConfig {
        /// The config file.
        #[arg(long, env = "SPIRE_OPERATOR_CONFIG")]
        config: PathBuf,
        /// Replace $VAR and ${VAR} in the file from the environment first (unset
        /// variables become empty), like spire-controller-manager's --expand-env.
        #[arg(long, env = "SPIRE_OPERATOR_EXPAND_ENV")]
        expand_env: bool,
    },
}

/// controller-runtime's zap flags, which spire-controller-manager's command line accepts.
/// Explicit `--log` / `--log-format` win over them; they win over the config file.
#[derive(clap::Args, Debug, Default)]
struct ZapFlags {
    /// Development logging (console lines, debug level), as controller-runtime's flag.
    #[arg(long, global = true)]
    zap_devel: bool,
    /// `console` or `json`, as controller-runtime's flag (same as --log-format).
    #[arg(long, global = true, value_enum)]
    zap_encoder: Option<LogFormat>,
    /// `debug`, `info`, `error`, `panic`, or a verbosity number (1 and above mean debug),
    /// as controller-runtime's flag.
    #[arg(long, global = true, value_parser = parse_zap_level)]
    zap_log_level: Option<&'static str>,
    /// Accepted for spire-controller-manager's command line; errors carry their source
    /// chain instead of stack traces.
    #[arg(long, global = true)]
    zap_stacktrace_level: Option<String>,
    /// Accepted for spire-controller-manager's command line; times are always RFC 3339.
    #[arg(long, global = true)]
    zap_time_encoding: Option<String>,
}

fn parse_zap_level(text: &str) -> Result<&'static str, String> {
    match text.to_ascii_lowercase().as_str() {
        "debug" => Ok("debug"),
        "info" => Ok("info"),
        "warn" => Ok("warn"),
        "error" | "dpanic" | "panic" | "fatal" => Ok("error"),
        other => match other.parse::<u8>() {
            Ok(0) => Ok("info"),
            Ok(_) => Ok("debug"),
            Err(_) => Err(format!(
                "{text:?} is not one of debug, info, error, panic or a verbosity number"
            )),
        },
    }
}

impl ZapFlags {
    fn ignored(&self) -> impl Iterator<Item = &'static str> {
        [
            self.zap_stacktrace_level
                .as_ref()
                .map(|_| "--zap-stacktrace-level"),
            self.zap_time_encoding
                .as_ref()
                .map(|_| "--zap-time-encoding"),
        ]
        .into_iter()
        .flatten()
    }
}

/// Flags of spire-controller-manager's command line (Go's `flag` package, plus what
/// controller-runtime registers), by name and whether they take a value.
const GO_FLAGS: &[(&str, bool)] = &[
    ("config", true),
    ("expand-env", false),
    ("spire-api-socket", true),
    ("kubeconfig", true),
    ("zap-devel", false),
    ("zap-encoder", true),
    ("zap-log-level", true),
    ("zap-stacktrace-level", true),
    ("zap-time-encoding", true),
];

/// Accepts spire-controller-manager's command line, so swapping the container image keeps
/// a Deployment working: without a subcommand, its flags mean `run`, and Go's spellings
/// (`-config x`, `-config=x`, `-expand-env`, `-zap-devel=false`) are read as the
/// double-dash ones. Other arguments are left for clap to accept or reject.
fn scm_compatible_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let go_flag = |arg: &str| {
        let flag = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
        let name = flag.split_once('=').map_or(flag, |(name, _)| name);
        GO_FLAGS.iter().find(|(known, _)| *known == name).copied()
    };
    let command = Cli::command();
    let (mut has_subcommand, mut has_go_flag) = (false, false);
    let mut i = 1;
    while i < args.len() {
        let Some(s) = args[i].to_str().map(str::to_owned) else {
            i += 1;
            continue;
        };
        has_subcommand |= s == "help" || command.find_subcommand(&s).is_some();
        let Some((name, takes_value)) = go_flag(&s) else {
            i += 1;
            continue;
        };
        has_go_flag = true;
        match (takes_value, s.split_once('=')) {
            // Go's bool flags take a value only as `-flag=value` (strconv.ParseBool).
            (false, Some((_, value))) => {
                if matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True") {
                    args[i] = format!("--{name}").into();
                } else {
                    args.remove(i);
                    continue;
                }
            }
            (true, None) => {
                args[i] = format!("--{name}").into();
                i += 1; // the value is the next word
            }
            _ => {
                if !s.starts_with("--") {
                    args[i] = format!("-{s}").into();
                }
            }
        }
        i += 1;
    }
    if has_go_flag && !has_subcommand {
        args.insert(1, "run".into());
    }
    args
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Console,
    /// One JSON object per line.
    Json,
}

/// Flag durations in Go's grammar (`60s`, `1m30s`, `500ms`), as the config file's.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    go_duration::parse_std(s).map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid --log filter {filter:?}"))?;
    // Colour codes only for a person at a terminal: `kubectl logs` and log collectors
    // would show them as escape sequences.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Console => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// Runtime worker threads unless `TOKIO_WORKER_THREADS` says otherwise. The operator's
/// work is one reconcile loop fed by watches; a second worker mostly hands tasks back and
/// forth. Measured with `bench --pods 5000 --scenarios cold --tools ours --runs 2`: CPU
/// 0.44 s with two workers (the default on 2 cores), 0.39 s with one, same convergence.
const DEFAULT_WORKER_THREADS: usize = 1;

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        runtime.worker_threads(DEFAULT_WORKER_THREADS);
    }
    runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async_main())
}

/// Makes glibc's malloc use one arena instead of one per thread (up to 8 per core): the
/// operator's memory is long-lived caches built by whichever runtime thread ran, and
/// per-thread arenas kept freed pages of each. Measured with `converge 2000 10 3`: peak
/// RSS 54 -> 36 MiB, same convergence time. `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter, and no other thread exists yet
    // (the runtime starts after this).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn async_main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(scm_compatible_args(std::env::args_os().collect()));
    let zap = &cli.zap;
    let devel = zap.zap_devel;
    if let Command::Run(args) = &cli.command {
        let mut config = spire_operator::config::Config::load(&args.config, args.expand_env)?;
        let format = cli
            .log_format
            .or(zap.zap_encoder)
            .or(devel.then_some(LogFormat::Console))
            .unwrap_or(match config.log_encoding {
                LogEncoding::Console => LogFormat::Console,
                LogEncoding::Json => LogFormat::Json,
            });
        let level = zap
            .zap_log_level
            .or(devel.then_some("debug"))
            .unwrap_or(config.log_level.as_filter());
        init_logging(format, cli.log.as_deref().unwrap_or(level))?;
        for note in &config.notes {
            tracing::warn!("{note}");
        }
        if let Some(socket) = &args.spire_api_socket {
            if let Some(tcp) = &config.spire_server_tcp {
                anyhow::bail!(
                    "--spire-api-socket {} cannot be used with spireServerAddress {:?} in the config file; use one: the Unix socket or the TCP address",
                    socket.display(),
                    tcp.address
                );
            }
            tracing::warn!(
                socket = %socket.display(),
                "--spire-api-socket is deprecated (as in spire-controller-manager); it overrides spireServerSocketPath"
            );
            config.spire_server_socket_path = socket.clone();
        }
        for flag in zap.ignored() {
            tracing::warn!(
                "flag {flag} is accepted for spire-controller-manager's command line and has no effect"
            );
        }
        let Command::Run(args) = cli.command else {
            unreachable!("matched above")
        };
        if let Some(mode) = config.static_mode.clone() {
            return run_static::run(args, config, mode).await;
        }
        return run::run(args, config).await;
    }
    let format = cli
        .log_format
        .or(zap.zap_encoder)
        .unwrap_or(LogFormat::Console);
    let level = zap
        .zap_log_level
        .or(devel.then_some("debug"))
        .unwrap_or("info");
    init_logging(format, cli.log.as_deref().unwrap_or(level))?;
    match cli.command {
        Command::Run(_) => unreachable!("handled above"),
        Command::CheckSpire {
            spire_server_socket_path,
            spire_server_address: None,
            timeout,
            ..
        } => check_spire(SpireAddress::Unix(spire_server_socket_path), timeout).await,
        Command::CheckSpire {
            spire_server_address: Some(address),
            spire_server_spiffe_id,
            workload_api_address,
            timeout,
            ..
        } => {
            let address = commands::tcp_address(
                address,
                spire_server_spiffe_id,
                workload_api_address,
                timeout,
            )
            .await?;
            check_spire(address, timeout).await
        }
        Command::BootstrapEntry(args) => commands::bootstrap_entry(args).await,
        Command::Crds { out_dir: None } => {
            print!("{}", spire_operator::crd::all_yaml()?);
            Ok(())
        }
        Command::CheckConfig { config, expand_env } => {
            let config = spire_operator::config::Config::load(&config, expand_env)?;
            print!("{}", serde_norway::to_string(&config)?);
            for note in &config.notes {
                eprintln!("note: {note}");
            }
            Ok(())
        }
        Command::Crds { out_dir: Some(dir) } => {
            for path in spire_operator::crd::write_dir(&dir)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

async fn check_spire(address: SpireAddress, timeout: Duration) -> anyhow::Result<()> {
    let client = SpireClient::connect(address.clone(), timeout).await?;
    let bundle = client.get_bundle().await?;
    let entries = client.list_entries().await?;
    let agents = client.list_agents().await?;
    println!("SPIRE server at {address}");
    println!("  trust domain:      {}", bundle.trust_domain);
    println!("  X.509 authorities: {}", bundle.x509_authorities.len());
    println!("  JWT authorities:   {}", bundle.jwt_authorities.len());
    println!("  entries:           {}", entries.len());
    println!("  attested agents:   {}", agents.len());
    for agent in agents.iter().filter_map(|a| a.id.as_ref()) {
        match SpiffeId::from_api(agent) {
            Ok(id) => println!("    {id}"),
            Err(e) => println!("    (unparsable agent ID: {e})"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(scm_compatible_args(
            args.iter().map(OsString::from).collect(),
        ))
    }

    fn run_args(cli: Cli) -> run::RunArgs {
        match cli.command {
            Command::Run(args) => args,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn spire_controller_manager_command_lines_mean_run() {
        for line in [
            &["manager", "--config=controller-manager-config.yaml"][..],
            &["manager", "--config", "controller-manager-config.yaml"],
            &["manager", "-config=controller-manager-config.yaml"],
            &["manager", "-config", "controller-manager-config.yaml"],
        ] {
            let args = run_args(parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
            assert_eq!(
                args.config,
                PathBuf::from("controller-manager-config.yaml"),
                "{line:?}"
            );
            assert!(!args.expand_env, "{line:?}");
        }
        let args = run_args(parse(&["manager", "-expand-env", "-config", "c.yaml"]).unwrap());
        assert!(args.expand_env);
        assert_eq!(args.config, PathBuf::from("c.yaml"));
    }

    #[test]
    fn our_own_command_lines_are_unchanged() {
        let args = run_args(parse(&["spire-operator", "run", "--config", "c.yaml"]).unwrap());
        assert_eq!(args.config, PathBuf::from("c.yaml"));
        let cli = parse(&["spire-operator", "check-config", "-config", "c.yaml"]).unwrap();
        assert!(matches!(cli.command, Command::CheckConfig { .. }));
        assert!(matches!(
            parse(&["spire-operator", "crds"]).unwrap().command,
            Command::Crds { out_dir: None }
        ));
        // Flags nobody knows still fail clearly, and run still needs its config.
        assert!(parse(&["spire-operator", "-configx", "c.yaml"]).is_err());
        assert!(parse(&["spire-operator", "--zap-log-level=debug"]).is_err());
    }

    #[test]
    fn controller_runtime_flags_are_accepted_in_go_spellings() {
        let cli = parse(&[
            "manager",
            "-config",
            "c.yaml",
            "-kubeconfig=/k",
            "-spire-api-socket",
            "/s.sock",
            "-zap-log-level",
            "2",
            "-zap-encoder=json",
            "-zap-devel",
            "-zap-stacktrace-level=error",
            "--zap-time-encoding",
            "iso8601",
        ])
        .unwrap();
        assert!(cli.zap.zap_devel);
        assert_eq!(cli.zap.zap_log_level, Some("debug"));
        assert!(matches!(cli.zap.zap_encoder, Some(LogFormat::Json)));
        assert_eq!(
            cli.zap.ignored().collect::<Vec<_>>(),
            ["--zap-stacktrace-level", "--zap-time-encoding"]
        );
        let args = run_args(cli);
        assert_eq!(args.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(args.spire_api_socket, Some(PathBuf::from("/s.sock")));

        // Go bool flags: `-flag=false` turns them off, and never eat the next word.
        let cli = parse(&[
            "manager",
            "-zap-devel=false",
            "-expand-env=false",
            "-config",
            "c.yaml",
        ])
        .unwrap();
        assert!(!cli.zap.zap_devel);
        assert!(!run_args(cli).expand_env);
        let cli = parse(&["manager", "-expand-env=true", "-config=c.yaml"]).unwrap();
        assert!(run_args(cli).expand_env);
        for (level, want) in [
            ("info", "info"),
            ("error", "error"),
            ("panic", "error"),
            ("0", "info"),
        ] {
            let cli =
                parse(&["manager", "--config=c", &format!("--zap-log-level={level}")]).unwrap();
            assert_eq!(cli.zap.zap_log_level, Some(want), "{level}");
        }
        assert!(parse(&["manager", "--config=c", "--zap-log-level=loud"]).is_err());
    }
}
