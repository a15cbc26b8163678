//! What the differential scenarios share: ours and the reference controller manager each
//! reconcile one control plane into their own SPIRE server (so neither can delete the
//! other's entries), and the two servers are compared entry by entry, all fields but the
//! entry ID (which differ on purpose: README "Deliberate differences").

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use e2e::entries::{self, EntryFields, EntryView};
use e2e::operator::Operator;
use e2e::world::World;
use e2e::{Spire, wait};

/// How long the reference may take to match ours once ours is where it should be. Its
/// passes recompute everything and it relists every `gcInterval`; two cores are shared.
const REFERENCE_TIMEOUT: Duration = Duration::from_secs(45);

/// A control plane with our CRDs, our SPIRE server (`world.spire`) and the reference's.
pub struct Pair {
    /// The control plane and the SPIRE server ours writes to.
    pub world: World,
    /// The SPIRE server the reference writes to.
    pub reference: Spire,
}

impl Pair {
    /// Starts the control plane and both SPIRE servers for `trust_domain`.
    pub async fn start(trust_domain: &str) -> anyhow::Result<Self> {
        let (world, reference) =
            tokio::try_join!(World::start(trust_domain), Spire::start(trust_domain))?;
        Ok(Self { world, reference })
    }

    /// Both servers get a bundle for `trust_domain`, so entries may federate with it.
    pub fn federated_bundle(&self, trust_domain: &str) -> anyhow::Result<()> {
        self.world.spire.set_federated_bundle(trust_domain)?;
        self.reference.set_federated_bundle(trust_domain)
    }

    /// [`converge_where`] over every entry.
    pub async fn converge(
        &self,
        what: &str,
        expected: impl FnMut(&[EntryView]) -> bool,
    ) -> anyhow::Result<Vec<EntryView>> {
        converge_where(&self.world.spire, &self.reference, what, |_| true, expected).await
    }
}

/// The entries as comparable sets, without IDs.
pub fn fields(entries: &[EntryView]) -> BTreeSet<EntryFields> {
    entries.iter().map(EntryView::fields).collect()
}

/// Waits until ours satisfies `expected`, then until the reference's entries that `keep`
/// accepts equal ours that it accepts (both listed in the same poll); fails showing both
/// sides' difference. Returns ours, all of them.
pub async fn converge_where(
    ours: &Spire,
    reference: &Spire,
    what: &str,
    keep: impl Fn(&EntryFields) -> bool,
    expected: impl FnMut(&[EntryView]) -> bool,
) -> anyhow::Result<Vec<EntryView>> {
    entries::wait_for_within(ours, what, Duration::from_secs(60), expected).await?;
    let kept = |entries: &[EntryView]| -> BTreeSet<EntryFields> {
        fields(entries).into_iter().filter(|f| keep(f)).collect()
    };
    let last = RefCell::new((BTreeSet::new(), BTreeSet::new()));
    let (last_ref, kept) = (&last, &kept);
    let result = wait::until(
        &format!("{what}: the reference holds the same entries"),
        REFERENCE_TIMEOUT,
        Duration::from_millis(500),
        || async move {
            let a = entries::list(ours).await?;
            let b = entries::list(reference).await?;
            let (fa, fb) = (kept(&a), kept(&b));
            let equal = fa == fb;
            *last_ref.borrow_mut() = (fa, fb);
            Ok(equal.then_some(a))
        },
    )
    .await;
    result.map_err(|e| e.context(difference(&last.borrow().0, &last.borrow().1)))
}

fn difference(ours: &BTreeSet<EntryFields>, reference: &BTreeSet<EntryFields>) -> String {
    let only_ours: Vec<_> = ours.difference(reference).collect();
    let only_reference: Vec<_> = reference.difference(ours).collect();
    format!("only in ours: {only_ours:#?}\nonly in the reference: {only_reference:#?}")
}

/// With nothing changing in the cluster: lets both tools do full resyncs (ours: two more
/// `spire_operator_entry_lists_total`, so at least one whole resync starts and ends in
/// the window; the reference: three of its `reference_gc_interval`s), then checks that
/// the two servers still hold the same entries, that neither server's entries changed
/// at all (IDs included: nothing was deleted and re-created), and that ours wrote
/// nothing (`spire_operator_entry_writes_total` unchanged).
pub async fn resync_changes_nothing(
    operator: &mut Operator,
    pair: &Pair,
    reference_gc_interval: Duration,
    what: &str,
) -> anyhow::Result<()> {
    const WRITES: &str = "spire_operator_entry_writes_total";
    const LISTS: &str = "spire_operator_entry_lists_total";
    let (ours, reference) = (&pair.world.spire, &pair.reference);
    let before = operator.metrics().await?;
    // A misnamed metric would read 0 before and after: make sure it is there.
    anyhow::ensure!(
        before.has(WRITES, &[]) && before.has(LISTS, &[]),
        "{what}: {WRITES} or {LISTS} is not exported"
    );
    let (writes, lists) = (before.value(WRITES, &[]), before.value(LISTS, &[]));
    let ours_before = entries::list(ours).await?;
    let reference_before = entries::list(reference).await?;
    anyhow::ensure!(
        fields(&ours_before) == fields(&reference_before),
        "{what}: not equal before the resync:\n{}",
        difference(&fields(&ours_before), &fields(&reference_before))
    );
    let start = tokio::time::Instant::now();
    operator
        .wait_metric(LISTS, &[], Duration::from_secs(120), |v| v >= lists + 2.0)
        .await?;
    let reference_window = reference_gc_interval * 3;
    if start.elapsed() < reference_window {
        tokio::time::sleep(reference_window - start.elapsed()).await;
    }
    let ours_after = entries::list(ours).await?;
    let reference_after = entries::list(reference).await?;
    anyhow::ensure!(
        fields(&ours_after) == fields(&reference_after),
        "{what}: not equal after the resync:\n{}",
        difference(&fields(&ours_after), &fields(&reference_after))
    );
    anyhow::ensure!(
        ours_after == ours_before,
        "{what}: our server's entries changed across a resync with nothing to do:\nbefore:\n{}\nafter:\n{}",
        entries::describe(&ours_before),
        entries::describe(&ours_after)
    );
    anyhow::ensure!(
        reference_after == reference_before,
        "{what}: the reference's entries changed across a resync with nothing to do:\nbefore:\n{}\nafter:\n{}",
        entries::describe(&reference_before),
        entries::describe(&reference_after)
    );
    let writes_after = operator.metrics().await?.value(WRITES, &[]);
    anyhow::ensure!(
        writes_after == writes,
        "{what}: {WRITES} went from {writes} to {writes_after} across a resync with nothing to do"
    );
    Ok(())
}

/// The SPIFFE ID paths of the entries (trust domain cut off), sorted.
pub fn paths(entries: &[EntryView]) -> Vec<String> {
    let mut paths: Vec<String> = entries.iter().map(|e| path(&e.spiffe_id)).collect();
    paths.sort();
    paths
}

/// The path of a SPIFFE ID (`spiffe://td/a/b` gives `/a/b`).
pub fn path(spiffe_id: &str) -> String {
    let rest = spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id);
    rest.find('/')
        .map(|i| rest[i..].to_owned())
        .unwrap_or_default()
}

/// The entry whose SPIFFE ID has `path`; fails naming it and listing the entries.
pub fn by_path<'a>(entries: &'a [EntryView], path_wanted: &str) -> anyhow::Result<&'a EntryView> {
    let found: Vec<_> = entries
        .iter()
        .filter(|e| path(&e.spiffe_id) == path_wanted)
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => anyhow::bail!(
            "expected one entry with path {path_wanted}, found {}:\n{}",
            found.len(),
            entries::describe(entries)
        ),
    }
}
