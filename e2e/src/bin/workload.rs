//! A stand-in workload: fetches its identity from the SPIFFE Workload API at
//! `SPIFFE_ENDPOINT_SOCKET`, exactly as an application using the `spiffe` crate would,
//! and prints what it got as one JSON object per line.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/spire/agent-sockets/spire-agent.sock \
//!   workload [--jwt-audience AUD] [--timeout-secs N] [--every-secs N] [--federated TD]... [--verify FILE]
//! ```
//!
//! The agent answers PermissionDenied until it has an entry for the caller, so the fetch
//! is retried until the timeout; the exit code is non-zero if no SVID arrived.
//!
//! With `--every-secs N` it keeps running, as a long-lived workload in a Deployment
//! does: every N seconds it fetches again over a new connection and prints another line
//! (`fetched_at` tells them apart), or a `{"error": ...}` line on standard output while
//! the Workload API does not answer (e.g. while the agent restarts). It exits on SIGTERM.
//!
//! Federation: `--federated TD` waits until the X.509 context also holds TD's bundle;
//! the first line then lists the context's trust domains (`bundles`) and the SVID's chain
//! (`svid_chain_pem`). `--verify FILE` checks a PEM certificate chain (another
//! workload's SVID) against the context's bundle for the chain's trust domain, as a TLS
//! peer would, and reports the verified SPIFFE ID (`verified`); a chain that does not
//! verify is an error.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use spiffe::WorkloadApiClient;

struct Args {
    audience: Option<String>,
    timeout: Duration,
    every: Option<Duration>,
    federated: Vec<String>,
    verify: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        audience: None,
        timeout: Duration::from_secs(60),
        every: None,
        federated: Vec::new(),
        verify: None,
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
            "--federated" => parsed
                .federated
                .push(args.next().context("--federated needs a value")?),
            "--verify" => parsed.verify = Some(args.next().context("--verify needs a file")?),
            other => bail!(
                "unknown argument {other:?} (expected --jwt-audience AUD, --timeout-secs N, \
                 --every-secs N, --federated TD, --verify FILE)"
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
    if !args.federated.is_empty() || args.verify.is_some() {
        federation(&mut out, &args, deadline).await?;
    }
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

/// Adds the federation fields (see the module doc) to the first line `out`.
async fn federation(
    out: &mut serde_json::Value,
    args: &Args,
    deadline: Instant,
) -> anyhow::Result<()> {
    let client = WorkloadApiClient::connect_env().await?;
    let svid = client.fetch_x509_svid().await?;
    let context = x509_context(&client, &args.federated, deadline).await?;
    let bundles: Vec<String> = context
        .bundle_set()
        .iter()
        .map(|(td, _)| td.to_string())
        .collect();
    out["bundles"] = serde_json::json!(bundles);
    let chain: String = svid
        .cert_chain()
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.as_bytes().to_vec())))
        .collect();
    out["svid_chain_pem"] = serde_json::json!(chain);
    if let Some(file) = &args.verify {
        let pem = std::fs::read(file).with_context(|| format!("reading {file}"))?;
        out["verified"] = serde_json::json!(verify_chain(&context, &pem)?);
    }
    Ok(())
}

/// The X.509 context once it holds every trust domain of `federated`; the agent sends
/// a federated bundle as soon as its server has it, so this retries until `deadline`.
async fn x509_context(
    client: &WorkloadApiClient,
    federated: &[String],
    deadline: Instant,
) -> anyhow::Result<spiffe::X509Context> {
    loop {
        let context = client.fetch_x509_context().await?;
        let missing: Vec<&String> = federated
            .iter()
            .filter(|td| {
                !context
                    .bundle_set()
                    .iter()
                    .any(|(have, _)| have.to_string() == **td)
            })
            .collect();
        if missing.is_empty() {
            return Ok(context);
        }
        if Instant::now() >= deadline {
            bail!("the X.509 context has no bundle for {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Verifies a PEM chain (leaf first) against the context's bundle for the leaf's trust
/// domain: each certificate signed by the next, the last by an authority of the bundle,
/// all within their validity. Returns the leaf's SPIFFE ID.
fn verify_chain(context: &spiffe::X509Context, pem_chain: &[u8]) -> anyhow::Result<String> {
    use x509_parser::prelude::*;
    let ders: Vec<Vec<u8>> = ::pem::parse_many(pem_chain)?
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    let certs = ders
        .iter()
        .map(|der| Ok(X509Certificate::from_der(der)?.1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let leaf = certs.first().context("the chain is empty")?;
    let id = spiffe::cert::spiffe_id_from_der(&ders[0])?;
    let trust_domain = id.trust_domain();
    let bundle = context
        .bundle_set()
        .get(trust_domain)
        .with_context(|| format!("no bundle for trust domain {trust_domain}"))?;
    for cert in &certs {
        anyhow::ensure!(
            cert.validity().is_valid(),
            "{} is outside its validity",
            cert.subject()
        );
    }
    for pair in certs.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .with_context(|| {
                format!(
                    "{} is not signed by {}",
                    pair[0].subject(),
                    pair[1].subject()
                )
            })?;
    }
    let last = certs.last().unwrap_or(leaf);
    let authorities = bundle
        .authorities()
        .iter()
        .map(|a| Ok(X509Certificate::from_der(a.as_bytes())?.1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        authorities
            .iter()
            .any(|ca| last.verify_signature(Some(ca.public_key())).is_ok()),
        "{} is signed by none of the {} authorities of the bundle for {trust_domain}",
        last.subject(),
        authorities.len()
    );
    Ok(id.to_string())
}
