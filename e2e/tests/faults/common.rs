//! What every fault scenario shares: the world it starts (a control plane, PostgreSQL,
//! SPIRE servers on it, our CRDs, one ClusterSPIFFEID giving each pod one entry, and a
//! sentinel entry made with the SPIRE CLI), and the final check: exactly the expected
//! entries, nothing lost, nothing duplicated, the sentinel untouched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::entries::{self, EntryView};
use e2e::kube_util::scheduled_pod;
use e2e::operator::MetricsSnapshot;
use e2e::postgres::Postgres;
use e2e::world::World;
use e2e::{ControlPlane, Spire, SpireOptions};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;

/// The namespace the scenarios' pods live in.
pub const NAMESPACE: &str = "shop";

/// The node the scenarios' pods are bound to.
pub const NODE: &str = "node-a";

/// Leader election as the chart configures it (controller-runtime's defaults): a
/// standby may take over once a lease is 15 s past its last renewal.
pub const LEADER_CONFIG: &str = "leaderElection:
  leaderElect: true
  resourceName: spire-operator-leader
  resourceNamespace: spire-system
  leaseDuration: 15s
  renewDeadline: 10s
  retryPeriod: 2s
";

/// `leaseDuration` of [`LEADER_CONFIG`].
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// A control plane, PostgreSQL, and `servers` SPIRE servers of one trust domain sharing it.
pub struct Faults {
    /// The control plane and the first SPIRE server.
    pub world: World,
    /// The other SPIRE servers on the same database (HA), possibly none.
    pub others: Vec<Spire>,
    /// The entry made with the SPIRE CLI before any operator ran.
    pub sentinel: EntryView,
    /// The shared database; dropped last, after the servers.
    pub postgres: Postgres,
}

impl Faults {
    /// Starts everything and makes the sentinel entry.
    pub async fn start(trust_domain: &str, servers: usize) -> anyhow::Result<Self> {
        let started = Instant::now();
        let (control_plane, postgres) = tokio::try_join!(ControlPlane::start(), Postgres::start())?;
        let options = SpireOptions {
            postgres: Some(postgres.connection_string()),
            ..Default::default()
        };
        // One after the other: the first runs the schema migrations the others find done.
        let spire = Spire::start_with(trust_domain, options.clone()).await?;
        let mut others = Vec::new();
        for _ in 1..servers {
            others.push(Spire::start_with(trust_domain, options.clone()).await?);
        }
        let client = control_plane.client();
        let world = World {
            control_plane,
            spire,
            client,
        };
        world.apply_our_crds().await?;
        world.node(NODE).await?;
        world.namespace(NAMESPACE, &[]).await?;
        world
            .apply_csid(
                "per-pod",
                json!({ "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/pod/{{ .PodMeta.Name }}" }),
            )
            .await?;
        let sentinel = world
            .cli_entry(
                &format!("spiffe://{trust_domain}/sentinel"),
                &format!("spiffe://{trust_domain}/admin-node"),
                "unix:uid:4242",
            )
            .await?;
        println!(
            "[fault] set-up took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Self {
            world,
            others,
            sentinel,
            postgres,
        })
    }

    /// Creates pods `<prefix>-<i>` for `i` in `range`, 16 at a time; returns name -> UID.
    pub async fn pods(
        &self,
        prefix: &str,
        range: std::ops::Range<usize>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        create_pods(self.world.client.clone(), prefix.to_owned(), range).await
    }

    /// Deletes the named pods, 16 at a time.
    pub async fn delete_pods(&self, names: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
        futures::stream::iter(names)
            .map(|name| async move { self.world.delete_pod(NAMESPACE, &name).await })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Waits up to `bound` until the server's entries are exactly `pods`' entries plus the
    /// sentinel, then checks that they stay so for 3 s (no late duplicate or delete);
    /// returns the time from `since` to convergence.
    pub async fn converged(
        &self,
        what: &str,
        pods: &BTreeMap<String, String>,
        since: Instant,
        bound: Duration,
    ) -> anyhow::Result<Duration> {
        let spire = &self.world.spire;
        let left = bound.saturating_sub(since.elapsed());
        entries::wait_for_within(spire, what, left, |e| {
            exact(e, pods, &self.sentinel).is_ok()
        })
        .await?;
        let took = since.elapsed();
        entries::holds_for(spire, what, Duration::from_secs(3), |e| {
            exact(e, pods, &self.sentinel).is_ok()
        })
        .await?;
        // Every server of the trust domain serves the same set from the shared database.
        for other in &self.others {
            if let Err(e) = exact(&entries::list(other).await?, pods, &self.sentinel) {
                anyhow::bail!("{what}: another server of the HA pair disagrees: {e}");
            }
        }
        println!(
            "[fault] {what}: converged in {:.1} s (bound {:?})",
            took.as_secs_f64(),
            bound
        );
        Ok(took)
    }
}

/// [`Faults::pods`] without borrowing the world: for a task creating pods while the test
/// kills and restarts components.
pub async fn create_pods(
    client: kube::Client,
    prefix: String,
    range: std::ops::Range<usize>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
    futures::stream::iter(range)
        .map(|i| {
            let (pods, name) = (pods.clone(), format!("{prefix}-{i}"));
            async move {
                let pod = scheduled_pod(NAMESPACE, &name, "default", NODE, &[]);
                let pod = pods
                    .create(&PostParams::default(), &pod)
                    .await
                    .with_context(|| format!("creating pod {NAMESPACE}/{name}"))?;
                Ok::<_, anyhow::Error>((name, pod.uid().unwrap_or_default()))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}

/// The sum of `spire_operator_entry_writes_total` samples for `operation` (any result).
pub fn writes(metrics: &MetricsSnapshot, operation: &str) -> f64 {
    metrics.value(
        "spire_operator_entry_writes_total",
        &[("operation", operation)],
    )
}

/// `Ok` when `entries` are exactly one entry per pod (its SPIFFE ID and `k8s:pod-uid`
/// selector) and the sentinel as it was made; otherwise what differs.
pub fn exact(
    entries: &[EntryView],
    pods: &BTreeMap<String, String>,
    sentinel: &EntryView,
) -> Result<(), String> {
    let mut problems = Vec::new();
    let sentinels = entries
        .iter()
        .filter(|e| e.spiffe_id == sentinel.spiffe_id)
        .count();
    if sentinels != 1 || !entries.contains(sentinel) {
        problems.push(format!(
            "sentinel changed or gone ({sentinels} with its ID)"
        ));
    }
    let mut per_uid: BTreeMap<&str, Vec<&EntryView>> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.spiffe_id != sentinel.spiffe_id) {
        per_uid
            .entry(entry.pod_uid().unwrap_or(""))
            .or_default()
            .push(entry);
    }
    for (name, uid) in pods {
        match per_uid.remove(uid.as_str()).as_deref() {
            Some([one]) if one.spiffe_id.ends_with(&format!("/pod/{name}")) => {}
            Some(found) => problems.push(format!("pod {name}: {} entries", found.len())),
            None => problems.push(format!("pod {name}: no entry")),
        }
    }
    for (uid, extra) in per_uid {
        problems.push(format!(
            "{} unexpected entries (pod uid {uid:?})",
            extra.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(10);
        Err(problems.join("; "))
    }
}
