//! The registration entries an operator running outside the SPIRE server's pod needs
//! before it can do anything: its own identity cannot come from a ClusterSPIFFEID,
//! since reconciling one already takes that identity.
//!
//! Made through the server's admin socket, so by something in the server's pod (the
//! chart runs `spire-operator bootstrap-entry` there): a node alias for every agent of
//! the cluster (`k8s_psat:cluster:<cluster>`) and, under it, an entry for the
//! operator's ServiceAccount. Idempotent: entries that already exist are left as they are.

use std::time::Duration;

use super::api::types;
use super::{SpiffeId, SpireClient, SpireError};

/// `google.rpc.Code.ALREADY_EXISTS`: the same entry is on the server.
const ALREADY_EXISTS: i32 = 6;

/// Who the operator is and where it runs.
#[derive(Debug, Clone)]
pub struct OperatorIdentity {
    /// The operator's SPIFFE ID (listed in the server's `admin_ids`).
    pub spiffe_id: SpiffeId,
    /// The trust domain, for the node alias ID.
    pub trust_domain: String,
    /// The k8s_psat cluster name the agents attest with.
    pub cluster_name: String,
    /// The operator pod's namespace.
    pub namespace: String,
    /// The operator pod's ServiceAccount.
    pub service_account: String,
    /// Lifetime of the operator's X.509-SVIDs; zero keeps the server's default.
    pub x509_svid_ttl: Duration,
}

impl OperatorIdentity {
    /// The node alias every agent of the cluster gets.
    pub fn node_alias(&self) -> Result<SpiffeId, super::SpiffeIdError> {
        format!(
            "spiffe://{}/spire-rs/cluster/{}",
            self.trust_domain, self.cluster_name
        )
        .parse()
    }

    /// The two entries: the node alias, then the operator's.
    pub fn entries(&self) -> Result<Vec<types::Entry>, super::SpiffeIdError> {
        let alias = self.node_alias()?;
        let server: SpiffeId = format!("spiffe://{}/spire/server", self.trust_domain).parse()?;
        let selector = |kind: &str, value: String| types::Selector {
            r#type: kind.into(),
            value,
        };
        Ok(vec![
            types::Entry {
                spiffe_id: Some(alias.to_api()),
                parent_id: Some(server.to_api()),
                selectors: vec![selector(
                    "k8s_psat",
                    format!("cluster:{}", self.cluster_name),
                )],
                ..Default::default()
            },
            types::Entry {
                spiffe_id: Some(self.spiffe_id.to_api()),
                parent_id: Some(alias.to_api()),
                selectors: vec![
                    selector("k8s", format!("ns:{}", self.namespace)),
                    selector("k8s", format!("sa:{}", self.service_account)),
                ],
                x509_svid_ttl: i32::try_from(self.x509_svid_ttl.as_secs()).unwrap_or(i32::MAX),
                ..Default::default()
            },
        ])
    }
}

/// What [`ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ensured {
    /// Entries created now.
    pub created: usize,
    /// Entries that were already there.
    pub existing: usize,
}

/// Why the entries could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The call failed.
    #[error(transparent)]
    Spire(#[from] SpireError),
    /// The server refused an entry.
    #[error("the SPIRE server refused the entry for {spiffe_id}: code {code}: {message}")]
    Refused {
        /// The entry's SPIFFE ID.
        spiffe_id: String,
        /// The gRPC code.
        code: i32,
        /// The server's message.
        message: String,
    },
}

/// Creates the entries that are missing; refusals other than "already exists" fail.
pub async fn ensure(
    client: &SpireClient,
    entries: Vec<types::Entry>,
) -> Result<Ensured, BootstrapError> {
    let ids: Vec<String> = entries
        .iter()
        .map(|e| {
            e.spiffe_id
                .as_ref()
                .and_then(|id| SpiffeId::from_api(id).ok())
                .map(|id| id.to_string())
                .unwrap_or_default()
        })
        .collect();
    let results = client.batch_create_entries(entries).await?;
    let mut ensured = Ensured {
        created: 0,
        existing: 0,
    };
    for (result, spiffe_id) in results.into_iter().zip(ids) {
        match result.status {
            None => ensured.created += 1,
            Some(status) if status.code == 0 => ensured.created += 1,
            Some(status) if status.code == ALREADY_EXISTS => ensured.existing += 1,
            Some(status) => {
                return Err(BootstrapError::Refused {
                    spiffe_id,
                    code: status.code,
                    message: status.message,
                });
            }
        }
    }
    Ok(ensured)
}
