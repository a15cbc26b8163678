//! A minimal HTTP/1.0 GET for loopback health and metrics endpoints of the
//! components under test (plain HTTP, no TLS).

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET http://<addr><path>`: the status code and the body.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    get_with_host(addr, path, addr).await
}

/// [`get`] with another `Host` header (servers that answer only for their domains).
pub async fn get_with_host(addr: &str, path: &str, host: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let Some(status) = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()) else {
        bail!("malformed HTTP response from {addr}{path}: {head:?}");
    };
    Ok((status, body.to_owned()))
}
