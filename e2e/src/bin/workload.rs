//! A stand-in workload: fetches its identity from the SPIFFE Workload API at
//! `SPIFFE_ENDPOINT_SOCKET`, exactly as an application using the `spiffe` crate would,
//! and prints what it got as one JSON object.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/spire/agent-sockets/spire-agent.sock \
//!   workload [--jwt-audience AUD] [--timeout-secs N] [--federated TD]... [--verify FILE]
//! ```
//!
//! The agent answers PermissionDenied until it has an entry for the caller, so the fetch
//! is retried until the timeout; the exit code is non-zero if no SVID arrived.
//!
//! Federation: `--federated TD` waits until the X.509 context also holds TD's bundle;
//! the output then lists the context's trust domains (`bundles`) and the SVID's chain
//! (`svid_chain_pem`). `--verify FILE` checks a PEM certificate chain (another
//! workload's SVID) against the context's bundle for the chain's trust domain, as a TLS
//! peer would, and reports the verified SPIFFE ID (`verified`); a chain that does not
//! verify is an error.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spiffe::WorkloadApiClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut audience = None;
    let mut federated = Vec::new();
    let mut verify = None;
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
            "--federated" => federated.push(args.next().context("--federated needs a value")?),
            "--verify" => verify = Some(args.next().context("--verify needs a file")?),
            other => {
                bail!(
                    "unknown argument {other:?} (expected --jwt-audience AUD, --timeout-secs N, --federated TD, --verify FILE)"
                )
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

    let context = if federated.is_empty() && verify.is_none() {
        None
    } else {
        Some(x509_context(&client, &federated, deadline).await?)
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
    if let Some(context) = &context {
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
        if let Some(file) = &verify {
            let pem = std::fs::read(file).with_context(|| format!("reading {file}"))?;
            out["verified"] = serde_json::json!(verify_chain(context, &pem)?);
        }
    }
    println!("{out}");
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
