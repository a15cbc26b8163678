//! A typed client for the SPIRE server API subset the operator uses.

use std::time::Duration;

use tonic::transport::Channel;

pub use super::address::SpireAddress;
use super::api::{agent, bundle, entry, svid, trustdomain, types};

/// Entries requested per ListEntries page by default. Large pages keep a full resync at
/// 10k+ entries to a handful of round trips; SPIRE streams each page from its datastore.
pub const DEFAULT_LIST_PAGE_SIZE: i32 = 1000;

/// Largest response accepted by default: 1000 entries with 50 DNS names of 253
/// characters each (the longest a DNS name can be) fit, about 13 MB.
pub const DEFAULT_MAX_RECEIVE_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// How the client talks to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Upper bound on any single call.
    pub timeout: Duration,
    /// Entries (and agents, federation relationships) requested per List page. A page
    /// that exceeds `max_receive_message_size` is asked for again in halves.
    pub list_page_size: i32,
    /// Largest response accepted, in bytes (spire-controller-manager's
    /// `grpc.maxCallRecvMsgSize`; tonic's own default is 4 MiB).
    pub max_receive_message_size: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
            max_receive_message_size: DEFAULT_MAX_RECEIVE_MESSAGE_SIZE,
        }
    }
}

/// What went wrong talking to the SPIRE server.
#[derive(Debug, thiserror::Error)]
pub enum SpireError {
    /// The TLS client could not be set up for the address.
    #[error("SPIRE server address {address}: {reason}")]
    Address {
        /// The address (boxed: a TCP address is large, and errors travel by value).
        address: Box<SpireAddress>,
        /// What is wrong with it.
        reason: String,
    },
    /// The transport could not be set up.
    #[error("connecting to the SPIRE server at {address}")]
    Connect {
        /// The address that was dialled.
        address: Box<SpireAddress>,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered a call with a non-OK status, or the call failed in transit.
    #[error("SPIRE server call {method} failed with {:?}", source.code())]
    Rpc {
        /// The gRPC method, e.g. `entry.v1.Entry/ListEntries`.
        method: &'static str,
        /// The status, with the server's message.
        #[source]
        source: tonic::Status,
    },
    /// A call did not complete in time.
    #[error("SPIRE server call timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with something the API does not allow.
    #[error("SPIRE server answered {method} with a malformed response: {reason}")]
    Malformed {
        /// The gRPC method.
        method: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// A connection to the SPIRE server API. Cheap to clone; clones share one HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct SpireClient {
    channel: Channel,
    list_page_size: i32,
    max_receive_message_size: usize,
}

impl SpireError {
    /// Whether the server could not be reached or did not answer (as opposed to refusing
    /// a request): what `/readyz` reports.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout(_) => true,
            Self::Rpc { source, .. } => matches!(
                source.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ),
            Self::Malformed { .. } | Self::Address { .. } => false,
        }
    }
}

impl SpireClient {
    /// Connects to the server with default options, failing if it is not reachable
    /// now. Every call made through the client gives up after `timeout`.
    pub async fn connect(address: SpireAddress, timeout: Duration) -> Result<Self, SpireError> {
        let options = ClientOptions {
            timeout,
            ..ClientOptions::default()
        };
        Self::connect_with(address, &options).await
    }

    /// Connects to the server, failing if it is not reachable now. Every call made
    /// through the client gives up after `options.timeout`.
    pub async fn connect_with(
        address: SpireAddress,
        options: &ClientOptions,
    ) -> Result<Self, SpireError> {
        let channel = super::address::dial(address, options.timeout).await?;
        Ok(Self {
            channel,
            list_page_size: options.list_page_size.max(1),
            max_receive_message_size: options.max_receive_message_size,
        })
    }

    fn entry(&self) -> entry::entry_client::EntryClient<Channel> {
        entry::entry_client::EntryClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_receive_message_size)
    }

    fn trust_domain(&self) -> trustdomain::trust_domain_client::TrustDomainClient<Channel> {
        trustdomain::trust_domain_client::TrustDomainClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_receive_message_size)
    }

    fn agent(&self) -> agent::agent_client::AgentClient<Channel> {
        agent::agent_client::AgentClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_receive_message_size)
    }

    /// Lists every registration entry on the server, following pagination.
    pub async fn list_entries(&self) -> Result<Vec<types::Entry>, SpireError> {
        self.list_entries_filtered(None).await
    }

    /// Lists every registration entry on the server, handing each page to `page` as it
    /// arrives: a caller that folds entries into its own form never holds the whole
    /// listing in the API form (about 0.4 KiB per entry) at once.
    pub async fn list_entries_by_page(
        &self,
        page: impl FnMut(Vec<types::Entry>),
    ) -> Result<(), SpireError> {
        self.list_entries_paged(None, page).await
    }

    /// How many registration entries the server holds (one cheap call, no entries sent).
    pub async fn count_entries(&self) -> Result<usize, SpireError> {
        let count = self
            .entry()
            .count_entries(entry::CountEntriesRequest::default())
            .await
            .map_err(rpc("entry.v1.Entry/CountEntries"))?
            .into_inner()
            .count;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Lists the entries matching `filter` (e.g. by selectors), following pagination:
    /// for tools that watch a few entries without listing the whole server.
    pub async fn list_entries_matching(
        &self,
        filter: entry::EntryFilter,
    ) -> Result<Vec<types::Entry>, SpireError> {
        self.list_entries_filtered(Some(filter)).await
    }

    async fn list_entries_filtered(
        &self,
        filter: Option<entry::EntryFilter>,
    ) -> Result<Vec<types::Entry>, SpireError> {
        let mut all = Vec::new();
        self.list_entries_paged(filter, |page| all.extend(page))
            .await?;
        Ok(all)
    }

    async fn list_entries_paged(
        &self,
        filter: Option<entry::EntryFilter>,
        page: impl FnMut(Vec<types::Entry>),
    ) -> Result<(), SpireError> {
        let client = self.entry();
        paginate_into(
            "entry.v1.Entry/ListEntries",
            self.list_page_size,
            page,
            |page_token, page_size| {
                let mut client = client.clone();
                let filter = filter.clone();
                async move {
                    let page = client
                        .list_entries(entry::ListEntriesRequest {
                            filter,
                            page_size,
                            page_token,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    Ok((page.entries, page.next_page_token))
                }
            },
        )
        .await
    }

    /// Reads one entry by ID.
    pub async fn get_entry(&self, id: &str) -> Result<types::Entry, SpireError> {
        self.entry()
            .get_entry(entry::GetEntryRequest {
                id: id.to_owned(),
                output_mask: None,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(rpc("entry.v1.Entry/GetEntry"))
    }

    /// Creates entries; one result per entry, in order. Each result carries the entry's
    /// ID and the [`echoed_fields`] only. A per-entry failure is a
    /// result with a non-zero status code, not an error of the call.
    pub async fn batch_create_entries(
        &self,
        entries: Vec<types::Entry>,
    ) -> Result<Vec<entry::EntryResult>, SpireError> {
        const METHOD: &str = "entry.v1.Entry/BatchCreateEntry";
        let sent = entries.len();
        let response = self
            .entry()
            .batch_create_entry(entry::BatchCreateEntryRequest {
                entries,
                output_mask: Some(echoed_fields()),
            })
            .await
            .map_err(rpc(METHOD))?;
        check_count(METHOD, sent, response.into_inner().results)
    }

    /// Updates the fields of `entries` selected by `mask`; one result per entry, in order.
    pub async fn batch_update_entries(
        &self,
        entries: Vec<types::Entry>,
        mask: types::EntryMask,
    ) -> Result<Vec<entry::EntryResult>, SpireError> {
        const METHOD: &str = "entry.v1.Entry/BatchUpdateEntry";
        let sent = entries.len();
        let request = entry::BatchUpdateEntryRequest {
            entries,
            input_mask: Some(mask),
            output_mask: Some(echoed_fields()),
        };
        let response = self
            .entry()
            .batch_update_entry(request)
            .await
            .map_err(rpc(METHOD))?;
        check_count(METHOD, sent, response.into_inner().results)
    }

    /// Deletes entries by ID; one result per ID, in order.
    pub async fn batch_delete_entries(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<entry::batch_delete_entry_response::Result>, SpireError> {
        const METHOD: &str = "entry.v1.Entry/BatchDeleteEntry";
        let sent = ids.len();
        let request = entry::BatchDeleteEntryRequest { ids };
        let response = self
            .entry()
            .batch_delete_entry(request)
            .await
            .map_err(rpc(METHOD))?;
        check_count(METHOD, sent, response.into_inner().results)
    }

    /// The server's own trust bundle.
    pub async fn get_bundle(&self) -> Result<types::Bundle, SpireError> {
        bundle::bundle_client::BundleClient::new(self.channel.clone())
            .get_bundle(bundle::GetBundleRequest { output_mask: None })
            .await
            .map(tonic::Response::into_inner)
            .map_err(rpc("bundle.v1.Bundle/GetBundle"))
    }

    /// The bundle the server holds for the federated trust domain `trust_domain`
    /// (NotFound when it has none).
    pub async fn get_federated_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<types::Bundle, SpireError> {
        let request = bundle::GetFederatedBundleRequest {
            trust_domain: trust_domain.to_owned(),
            output_mask: None,
        };
        bundle::bundle_client::BundleClient::new(self.channel.clone())
            .get_federated_bundle(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(rpc("bundle.v1.Bundle/GetFederatedBundle"))
    }

    /// Signs a PKCS#10 request (DER) as an X.509-SVID for the SPIFFE ID in its URI SAN.
    pub async fn mint_x509_svid(
        &self,
        csr_der: Vec<u8>,
        ttl: Duration,
    ) -> Result<types::X509svid, SpireError> {
        const METHOD: &str = "svid.v1.SVID/MintX509SVID";
        let request = svid::MintX509svidRequest {
            csr: csr_der,
            ttl: seconds(ttl),
        };
        svid::svid_client::SvidClient::new(self.channel.clone())
            .mint_x509svid(request)
            .await
            .map_err(rpc(METHOD))?
            .into_inner()
            .svid
            .ok_or_else(|| SpireError::Malformed {
                method: METHOD,
                reason: "no svid".into(),
            })
    }

    /// Lists every federation relationship, following pagination.
    pub async fn list_federation_relationships(
        &self,
    ) -> Result<Vec<types::FederationRelationship>, SpireError> {
        let client = self.trust_domain();
        paginate(
            "trustdomain.v1.TrustDomain/ListFederationRelationships",
            self.list_page_size,
            |page_token, page_size| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_federation_relationships(
                            trustdomain::ListFederationRelationshipsRequest {
                                output_mask: None,
                                page_size,
                                page_token,
                            },
                        )
                        .await?
                        .into_inner();
                    Ok((page.federation_relationships, page.next_page_token))
                }
            },
        )
        .await
    }

    /// Creates federation relationships; one result per relationship, in order.
    pub async fn batch_create_federation_relationships(
        &self,
        relationships: Vec<types::FederationRelationship>,
    ) -> Result<Vec<trustdomain::FederationRelationshipResult>, SpireError> {
        const METHOD: &str = "trustdomain.v1.TrustDomain/BatchCreateFederationRelationship";
        let sent = relationships.len();
        let request = trustdomain::BatchCreateFederationRelationshipRequest {
            federation_relationships: relationships,
            output_mask: None,
        };
        let response = self
            .trust_domain()
            .batch_create_federation_relationship(request)
            .await
            .map_err(rpc(METHOD))?;
        check_count(METHOD, sent, response.into_inner().results)
    }

    /// Updates the fields of `relationships` selected by `mask`; one result per
    /// relationship, in order.
    pub async fn batch_update_federation_relationships(
        &self,
        relationships: Vec<types::FederationRelationship>,
        mask: types::FederationRelationshipMask,
    ) -> Result<Vec<trustdomain::FederationRelationshipResult>, SpireError> {
        const METHOD: &str = "trustdomain.v1.TrustDomain/BatchUpdateFederationRelationship";
        let sent = relationships.len();
        let request = trustdomain::BatchUpdateFederationRelationshipRequest {
            federation_relationships: relationships,
            input_mask: Some(mask),
            output_mask: None,
        };
        let response = self
            .trust_domain()
            .batch_update_federation_relationship(request)
            .await
            .map_err(rpc(METHOD))?;
        check_count(METHOD, sent, response.into_inner().results)
    }

    /// Asks the server to fetch `trust_domain`'s bundle from its bundle endpoint now.
    pub async fn refresh_bundle(&self, trust_domain: &str) -> Result<(), SpireError> {
        self.trust_domain()
            .refresh_bundle(trustdomain::RefreshBundleRequest {
                trust_domain: trust_domain.to_owned(),
            })
            .await
            .map(drop)
            .map_err(rpc("trustdomain.v1.TrustDomain/RefreshBundle"))
    }

    /// Deletes federation relationships by trust domain; one result per trust domain.
    pub async fn batch_delete_federation_relationships(
        &self,
        trust_domains: Vec<String>,
    ) -> Result<Vec<trustdomain::batch_delete_federation_relationship_response::Result>, SpireError>
    {
        const METHOD: &str = "trustdomain.v1.TrustDomain/BatchDeleteFederationRelationship";
        let sent = trust_domains.len();
        let request = trustdomain::BatchDeleteFederationRelationshipRequest { trust_domains };
        let response = self
            .trust_domain()
            .batch_delete_federation_relationship(request)
            .await
            .map_err(rpc(METHOD))?;
        check_count(METHOD, sent, response.into_inner().results)
    }

    /// Issues a join token valid for `ttl`, for attesting an agent.
    pub async fn create_join_token(&self, ttl: Duration) -> Result<types::JoinToken, SpireError> {
        let request = agent::CreateJoinTokenRequest {
            ttl: seconds(ttl),
            token: String::new(),
            agent_id: None,
        };
        self.agent()
            .create_join_token(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(rpc("agent.v1.Agent/CreateJoinToken"))
    }

    /// Lists every attested agent, following pagination.
    pub async fn list_agents(&self) -> Result<Vec<types::Agent>, SpireError> {
        let client = self.agent();
        paginate(
            "agent.v1.Agent/ListAgents",
            self.list_page_size,
            |page_token, page_size| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_agents(agent::ListAgentsRequest {
                            filter: None,
                            page_size,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.agents, page.next_page_token))
                }
            },
        )
        .await
    }
}

fn rpc(method: &'static str) -> impl FnOnce(tonic::Status) -> SpireError {
    move |source| SpireError::Rpc { method, source }
}

/// TTLs travel as int32 seconds; anything longer is clamped rather than wrapped negative.
fn seconds(ttl: Duration) -> i32 {
    i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX)
}

/// Drives a paginated List call: `fetch(page_token, page_size)` returns one page and the
/// next token. A page too large to receive (tonic answers OutOfRange) is asked for again
/// at half the size, down to one item, so a receive limit never stops a listing.
async fn paginate<T, F, Fut>(
    method: &'static str,
    page_size: i32,
    fetch: F,
) -> Result<Vec<T>, SpireError>
where
    F: FnMut(String, i32) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut all = Vec::new();
    paginate_into(method, page_size, |page| all.extend(page), fetch).await?;
    Ok(all)
}

/// [`paginate`], handing each page to `consume` as it arrives instead of collecting.
async fn paginate_into<T, F, Fut>(
    method: &'static str,
    page_size: i32,
    mut consume: impl FnMut(Vec<T>),
    mut fetch: F,
) -> Result<(), SpireError>
where
    F: FnMut(String, i32) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut page_token = String::new();
    let mut page_size = page_size.max(1);
    loop {
        let (items, next) = match fetch(page_token.clone(), page_size).await {
            Ok(page) => page,
            Err(status) if status.code() == tonic::Code::OutOfRange && page_size > 1 => {
                page_size /= 2;
                tracing::debug!(method, page_size, error = %status.message(), "page too large to receive; asking for smaller pages");
                continue;
            }
            Err(status) => return Err(rpc(method)(status)),
        };
        let got_any = !items.is_empty();
        consume(items);
        if next.is_empty() {
            return Ok(());
        }
        // A server that keeps handing out tokens for empty pages would loop us forever.
        if !got_any {
            return Err(SpireError::Malformed {
                method,
                reason: "an empty page with a next page token".into(),
            });
        }
        page_token = next;
    }
}

/// The fields the server echoes back from a create or update: the ID (always) and the
/// ones whose absence shows an older server that drops them (see the writer). Echoing
/// the whole entry costs the server and us a full encode and decode per entry.
pub fn echoed_fields() -> types::EntryMask {
    types::EntryMask {
        jwt_svid_ttl: true,
        hint: true,
        store_svid: true,
        ..Default::default()
    }
}

/// Batch calls answer one result per item; anything else would misattribute outcomes.
fn check_count<T>(
    method: &'static str,
    sent: usize,
    results: Vec<T>,
) -> Result<Vec<T>, SpireError> {
    if results.len() == sent {
        Ok(results)
    } else {
        Err(SpireError::Malformed {
            method,
            reason: format!("{} results for {sent} items", results.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::spire::fake::{FakeSpire, FakeState};

    /// 1000 entries of 50 DNS names of 100 characters: about 5 MB in one default page,
    /// over tonic's 4 MiB default receive limit.
    fn big_entries() -> FakeState {
        let mut state = FakeState::default();
        for i in 0..1000 {
            let entry = types::Entry {
                id: format!("entry-{i:04}"),
                spiffe_id: Some(types::Spiffeid {
                    trust_domain: "td".into(),
                    path: format!("/workload/{i}"),
                }),
                parent_id: Some(types::Spiffeid {
                    trust_domain: "td".into(),
                    path: "/agent".into(),
                }),
                selectors: vec![types::Selector {
                    r#type: "k8s".into(),
                    value: format!("pod-uid:{i}"),
                }],
                dns_names: (0..50)
                    .map(|n| format!("{n:02}-{}.shop.svc.cluster.local", "x".repeat(72)))
                    .collect(),
                ..Default::default()
            };
            state.entries.insert(entry.id.clone(), entry);
        }
        state
    }

    async fn list_with(name: &str, options: ClientOptions) -> (Result<usize, SpireError>, usize) {
        let dir = std::env::temp_dir().join(format!(
            "spire-operator-client-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let state = Arc::new(Mutex::new(big_entries()));
        let server = FakeSpire::start(&dir.join("api.sock"), state.clone()).await;
        let client = SpireClient::connect_with(SpireAddress::Unix(dir.join("api.sock")), &options)
            .await
            .unwrap();
        let listed = client.list_entries().await.map(|e| e.len());
        let calls = state.lock().unwrap().list_calls;
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        (listed, calls)
    }

    #[tokio::test]
    async fn default_options_list_1000_entries_with_50_dns_names_each() {
        let (listed, calls) = list_with("defaults", ClientOptions::default()).await;
        assert_eq!(listed.unwrap(), 1000);
        // One full page, then the empty one its token points to.
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn a_page_over_the_receive_limit_is_asked_for_in_halves() {
        let options = ClientOptions {
            max_receive_message_size: 4 * 1024 * 1024,
            ..ClientOptions::default()
        };
        let (listed, calls) = list_with("halves", options).await;
        assert_eq!(listed.unwrap(), 1000);
        // 1000 (too large to receive), then two pages of 500 and the empty last one.
        assert_eq!(calls, 4);
    }
}
