//! A stand-in workload: fetches its identity from the SPIFFE Workload API at
//! `SPIFFE_ENDPOINT_SOCKET`, exactly as an application using the `spiffe` crate would,
//! and prints what it got as one JSON object per line.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/spire/agent-sockets/spire-agent.sock \
//!   workload [--jwt-audience AUD] [--timeout-secs N] [--every-secs N]
//! ```
//!
//! The agent answers PermissionDenied until it has an entry for the caller, so the fetch
//! is retried until the timeout; the exit code is non-zero if no SVID arrived.
//!
//! With `--every-secs N` it keeps running, as a long-lived workload in a Deployment
//! does: every N seconds it fetches again over a new connection and prints another line
//! (`fetched_at` tells them apart), or a `{"error": ...}` line on standard output while
//! the Workload API does not answer (e.g. while the agent restarts). It exits on SIGTERM.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use spiffe::WorkloadApiClient;

struct Args {
    audience: Option<String>,
    timeout: Duration,
    every: Option<Duration>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        audience: None,
        timeout: Duration::from_secs(60),
        every: None,
    };
    let mut args = std::env::args().skip(1);
    let secs = |value: Option<String>, flag: &str| -> anyhow::Result<Duration> {
        let value = value.with_context(|| format!("{flag} needs a value"))?;
        let secs: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value:?}: not a whole number of seconds"))?;
        Ok(Duration::from_secs(secs))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jwt-audience" => {
                parsed.audience = Some(args.next().context("--jwt-audience needs a value")?)
            }
            "--timeout-secs" => parsed.timeout = secs(args.next(), "--timeout-secs")?,
            "--every-secs" => parsed.every = Some(secs(args.next(), "--every-secs")?),
            other => bail!(
                "unknown argument {other:?} (expected --jwt-audience AUD, --timeout-secs N, --every-secs N)"
            ),
        }
    }
    Ok(parsed)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let deadline = Instant::now() + args.timeout;
    let mut attempts = 0u32;
    let first = loop {
        attempts += 1;
        match fetch(args.audience.as_deref()).await {
            Ok(got) => break got,
            Err(e) if Instant::now() < deadline => {
                if attempts == 1 {
                    eprintln!(
                        "workload: no X.509-SVID yet ({e:#}); retrying for up to {:?}",
                        args.timeout
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.context(format!("no X.509-SVID after {attempts} attempts"))),
        }
    };
    let mut out = first;
    out["attempts"] = attempts.into();
    println!("{out}");

    let Some(every) = args.every else {
        return Ok(());
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
        match fetch(args.audience.as_deref()).await {
            Ok(out) => println!("{out}"),
            Err(e) => println!(
                "{}",
                serde_json::json!({"error": format!("{e:#}"), "fetched_at": now_secs()})
            ),
        }
    }
}

/// One fetch over a new connection: the X.509-SVID and, with an audience, a JWT-SVID.
async fn fetch(audience: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let client = WorkloadApiClient::connect_env().await?;
    let svid = client.fetch_x509_svid().await?;
    let mut out = serde_json::json!({
        "x509_svid": {
            "spiffe_id": svid.spiffe_id().to_string(),
            "chain_length": svid.cert_chain().len(),
            "hint": svid.hint(),
        },
        "fetched_at": now_secs(),
    });
    if let Some(audience) = audience {
        let jwt = client
            .fetch_jwt_svid([audience], None)
            .await
            .with_context(|| format!("fetching a JWT-SVID for audience {audience:?}"))?;
        out["jwt_svid"] = serde_json::json!({
            "spiffe_id": jwt.spiffe_id().to_string(),
            "audience": jwt.audience(),
            "token": jwt.token(),
        });
    }
    Ok(out)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
