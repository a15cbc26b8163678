//! A stand-in workload: fetches its identity from the SPIFFE Workload API at
//! `SPIFFE_ENDPOINT_SOCKET`, exactly as an application using the `spiffe` crate would,
//! and prints what it got as one JSON object.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/spire/agent-sockets/spire-agent.sock \
//!   workload [--jwt-audience AUD] [--timeout-secs N]
//! ```
//!
//! The agent answers PermissionDenied until it has an entry for the caller, so the fetch
//! is retried until the timeout; the exit code is non-zero if no SVID arrived.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spiffe::WorkloadApiClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut audience = None;
    let mut timeout = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jwt-audience" => {
                audience = Some(args.next().context("--jwt-audience needs a value")?)
            }
            "--timeout-secs" => {
                timeout = Duration::from_secs(
                    args.next()
                        .context("--timeout-secs needs a value")?
                        .parse()?,
                )
            }
            other => {
                bail!("unknown argument {other:?} (expected --jwt-audience AUD, --timeout-secs N)")
            }
        }
    }

    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    let (client, svid) = loop {
        attempts += 1;
        let result = async {
            let client = WorkloadApiClient::connect_env().await?;
            let svid = client.fetch_x509_svid().await?;
            anyhow::Ok((client, svid))
        }
        .await;
        match result {
            Ok(got) => break got,
            Err(e) if Instant::now() < deadline => {
                if attempts == 1 {
                    eprintln!(
                        "workload: no X.509-SVID yet ({e:#}); retrying for up to {timeout:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.context(format!("no X.509-SVID after {attempts} attempts"))),
        }
    };

    let mut out = serde_json::json!({
        "x509_svid": {
            "spiffe_id": svid.spiffe_id().to_string(),
            "chain_length": svid.cert_chain().len(),
            "hint": svid.hint(),
        },
        "attempts": attempts,
    });
    if let Some(audience) = audience {
        let jwt = client
            .fetch_jwt_svid([audience.as_str()], None)
            .await
            .with_context(|| format!("fetching a JWT-SVID for audience {audience:?}"))?;
        out["jwt_svid"] = serde_json::json!({
            "spiffe_id": jwt.spiffe_id().to_string(),
            "audience": jwt.audience(),
            "token": jwt.token(),
        });
    }
    println!("{out}");
    Ok(())
}
