//! How the operator reaches the SPIRE server: its local admin Unix socket
//! (`spireServerSocketPath`, spire-controller-manager's key) or, with
//! `spireServerAddress`, its TCP API over mTLS with the operator's own X.509-SVID.
//!
//! ```yaml
//! spireServerAddress: spire-server.spire-server:8081
//! spireServerSPIFFEID: spiffe://example.org/spire/server     # default
//! workloadAPIAddress: unix:///spiffe-workload-api/spire-agent.sock  # default: $SPIFFE_ENDPOINT_SOCKET
//! ```
//!
//! spire-controller-manager v0.6 has no TCP mode; these keys are ours (its open pull
//! request #743 proposes one, from which `spireServerAddress` is taken).

use std::path::PathBuf;

use serde::Serialize;

use super::ConfigError;
use crate::spire::SpiffeId;
use crate::workload_api::socket_from_address;

/// The socket spire-controller-manager dials when `spireServerSocketPath` is not set.
pub const DEFAULT_SOCKET_PATH: &str = "/spire-server/api.sock";

/// `spireServerAddress` and the keys that go with it, as written.
#[derive(Debug, Default)]
pub(super) struct RawTcp {
    pub address: Option<String>,
    pub spiffe_id: Option<String>,
    pub workload_api_address: Option<String>,
}

/// The SPIRE server's TCP API and how the operator authenticates to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpireServerTcp {
    /// `spireServerAddress`: `host:port` of the server's TCP API (`bind_address` and
    /// `bind_port` in its config; 8081 by default).
    pub address: String,
    /// `spireServerSPIFFEID`: the SPIFFE ID the server's certificate must carry.
    /// Default: `spiffe://<trustDomain>/spire/server`.
    #[serde(rename = "spireServerSPIFFEID", serialize_with = "display")]
    pub spiffe_id: SpiffeId,
    /// `workloadAPIAddress`: the SPIRE agent's Workload API socket, where the operator
    /// gets its own X.509-SVID. `None`: the `SPIFFE_ENDPOINT_SOCKET` environment
    /// variable, as the SPIFFE libraries do.
    #[serde(rename = "workloadAPIAddress")]
    pub workload_api_socket: Option<PathBuf>,
}

/// Checks the TCP keys; `None` when `spireServerAddress` is not set (the Unix socket).
pub(super) fn parse(
    raw: RawTcp,
    socket_path_set: bool,
    trust_domain: &str,
) -> Result<Option<SpireServerTcp>, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let Some(address) = raw.address.filter(|a| !a.is_empty()) else {
        for (key, value) in [
            ("spireServerSPIFFEID", &raw.spiffe_id),
            ("workloadAPIAddress", &raw.workload_api_address),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                return Err(invalid(
                    key,
                    format!("{value:?} is only used with spireServerAddress, which is not set"),
                ));
            }
        }
        return Ok(None);
    };
    if socket_path_set {
        return Err(invalid(
            "spireServerAddress",
            format!(
                "{address:?} cannot be set together with spireServerSocketPath; \
                 set one: the Unix socket or the TCP address"
            ),
        ));
    }
    if crate::spire::tls::server_name(&address).is_err() {
        return Err(invalid(
            "spireServerAddress",
            format!("{address:?} is not host:port"),
        ));
    }
    let spiffe_id = match raw.spiffe_id.filter(|v| !v.is_empty()) {
        Some(text) => text.parse::<SpiffeId>().map_err(|e| {
            invalid(
                "spireServerSPIFFEID",
                format!("{text:?} is not a SPIFFE ID: {e}"),
            )
        })?,
        None => format!("spiffe://{trust_domain}/spire/server")
            .parse()
            .map_err(|e| {
                invalid(
                    "trustDomain",
                    format!("{trust_domain:?} makes no server SPIFFE ID: {e}"),
                )
            })?,
    };
    let workload_api_socket = raw
        .workload_api_address
        .filter(|v| !v.is_empty())
        .map(|text| socket_from_address(&text).map_err(|e| invalid("workloadAPIAddress", e)))
        .transpose()?;
    Ok(Some(SpireServerTcp {
        address,
        spiffe_id,
        workload_api_socket,
    }))
}

fn display<S: serde::Serializer>(id: &SpiffeId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(&format!(
            "trustDomain: example.org\nclusterName: c1\n{extra}"
        ))
    }

    #[test]
    fn without_an_address_the_unix_socket_is_used() {
        let c = load("").unwrap();
        assert_eq!(c.spire_server_tcp, None);
        assert_eq!(
            c.spire_server_socket_path,
            std::path::Path::new(super::DEFAULT_SOCKET_PATH)
        );
    }

    #[test]
    fn an_address_alone_expects_the_trust_domains_server_id() {
        let tcp = load("spireServerAddress: spire-server.spire:8081\n")
            .unwrap()
            .spire_server_tcp
            .unwrap();
        assert_eq!(tcp.address, "spire-server.spire:8081");
        assert_eq!(
            tcp.spiffe_id.to_string(),
            "spiffe://example.org/spire/server"
        );
        assert_eq!(tcp.workload_api_socket, None);
    }

    #[test]
    fn every_tcp_key_is_read() {
        let tcp = load(
            "spireServerAddress: \"[::1]:8081\"\n\
             spireServerSPIFFEID: spiffe://example.org/custom/server\n\
             workloadAPIAddress: unix:///run/agent/api.sock\n",
        )
        .unwrap()
        .spire_server_tcp
        .unwrap();
        assert_eq!(
            tcp.spiffe_id.to_string(),
            "spiffe://example.org/custom/server"
        );
        assert_eq!(
            tcp.workload_api_socket.as_deref(),
            Some(std::path::Path::new("/run/agent/api.sock"))
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        for (extra, key, value) in [
            (
                "spireServerSocketPath: /run/api.sock\nspireServerAddress: s:8081\n",
                "spireServerAddress",
                "spireServerSocketPath",
            ),
            (
                "spireServerAddress: spire-server\n",
                "spireServerAddress",
                "\"spire-server\"",
            ),
            (
                "spireServerAddress: s:8081\nspireServerSPIFFEID: example.org/server\n",
                "spireServerSPIFFEID",
                "\"example.org/server\"",
            ),
            (
                "spireServerAddress: s:8081\nworkloadAPIAddress: agent.sock\n",
                "workloadAPIAddress",
                "\"agent.sock\"",
            ),
            (
                "spireServerSPIFFEID: spiffe://example.org/spire/server\n",
                "spireServerSPIFFEID",
                "spireServerAddress, which is not set",
            ),
        ] {
            let err = load(extra).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{extra}: {err}");
        }
    }
}
