//! The RBAC sweep of the chart's spire-server ServiceAccount, under which the operator
//! runs as the server's sidecar: every permission the API server reports for it is on
//! the list below (a new grant in the chart fails here until it is reviewed), each of
//! them is allowed, and a sample of what it must never do is refused.
//!
//! The checks are self-reviews made with the ServiceAccount's own token, so they go
//! through the real authorizer without writing anything.

use std::collections::BTreeSet;

use anyhow::Context;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use kube::api::{Api, PostParams};

/// One grant: API group, resource (with subresource), verb, and the object name it is
/// limited to (`None`: any name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    name: Option<String>,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " named {name}")?;
        }
        Ok(())
    }
}

fn grants(group: &str, resources: &[&str], verbs: &[&str], names: &[&str]) -> Vec<Grant> {
    let names: Vec<Option<String>> = if names.is_empty() {
        vec![None]
    } else {
        names.iter().map(|n| Some((*n).to_owned())).collect()
    };
    let mut out = Vec::new();
    for resource in resources {
        for verb in verbs {
            for name in &names {
                out.push(Grant {
                    group: group.to_owned(),
                    resource: (*resource).to_owned(),
                    verb: (*verb).to_owned(),
                    name: name.clone(),
                });
            }
        }
    }
    out
}

/// Everything the chart (default values) grants the server's ServiceAccount, as seen
/// from the release namespace, plus what every authenticated user may do (self-reviews).
fn expected(webhook_configuration: &str, lease: &str) -> BTreeSet<Grant> {
    let statuses = [
        "clusterspiffeids/status",
        "clusterstaticentries/status",
        "clusterfederatedtrustdomains/status",
    ];
    let kinds = [
        "clusterspiffeids",
        "clusterstaticentries",
        "clusterfederatedtrustdomains",
    ];
    [
        // Every authenticated user (system:basic-user).
        grants(
            "authorization.k8s.io",
            &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            &["create"],
            &[],
        ),
        grants(
            "authentication.k8s.io",
            &["selfsubjectreviews"],
            &["create"],
            &[],
        ),
        // The SPIRE server: k8s_psat node attestation and its bundle ConfigMap.
        grants("authentication.k8s.io", &["tokenreviews"], &["create"], &[]),
        grants("", &["pods", "nodes"], &["get"], &[]),
        grants(
            "",
            &["configmaps"],
            &["get", "patch", "update"],
            &["spire-bundle"],
        ),
        // The operator: what entries are made from.
        grants(
            "",
            &["pods", "nodes", "namespaces", "serviceaccounts"],
            &["get", "list", "watch"],
            &[],
        ),
        grants(
            "discovery.k8s.io",
            &["endpointslices"],
            &["get", "list", "watch"],
            &[],
        ),
        grants("spire.spiffe.io", &kinds, &["get", "list", "watch"], &[]),
        grants(
            "spire.spiffe.io",
            &statuses,
            &["get", "patch", "update"],
            &[],
        ),
        grants("events.k8s.io", &["events"], &["create", "patch"], &[]),
        grants(
            "admissionregistration.k8s.io",
            &["validatingwebhookconfigurations"],
            &["get", "list", "watch", "patch"],
            &[webhook_configuration],
        ),
        // Its Lease and its two ConfigMaps.
        grants("coordination.k8s.io", &["leases"], &["create"], &[]),
        grants(
            "coordination.k8s.io",
            &["leases"],
            &["get", "update", "patch"],
            &[lease],
        ),
        grants("", &["configmaps"], &["create"], &[]),
        grants(
            "",
            &["configmaps"],
            &["get", "update", "patch"],
            &[
                "spire-operator-adopted-entries",
                "spire-operator-federation",
            ],
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// What the ServiceAccount must never be allowed: (namespace, grant). Secrets in any
/// form, writes to what it only reads, other objects of the kinds it may write, other
/// namespaces, and privilege escalation.
fn forbidden(namespace: &str, lease: &str) -> Vec<(Option<String>, Grant)> {
    let here = Some(namespace.to_owned());
    let elsewhere = Some("default".to_owned());
    let mut out = Vec::new();
    let mut add = |ns: &Option<String>, list: Vec<Grant>| {
        out.extend(list.into_iter().map(|g| (ns.clone(), g)));
    };
    let secrets = grants("", &["secrets"], &["get", "list", "watch"], &[]);
    add(&here, secrets.clone());
    add(&None, secrets);
    add(
        &here,
        grants(
            "",
            &["pods"],
            &["create", "update", "patch", "delete", "deletecollection"],
            &[],
        ),
    );
    add(
        &here,
        grants("", &["pods/exec", "pods/eviction"], &["create"], &[]),
    );
    add(
        &here,
        grants("", &["serviceaccounts/token"], &["create"], &[]),
    );
    add(
        &None,
        grants("", &["nodes", "namespaces"], &["patch", "delete"], &[]),
    );
    add(
        &None,
        grants(
            "spire.spiffe.io",
            &[
                "clusterspiffeids",
                "clusterstaticentries",
                "clusterfederatedtrustdomains",
            ],
            &["create", "update", "patch", "delete"],
            &[],
        ),
    );
    add(
        &here,
        grants(
            "",
            &["configmaps"],
            &["get", "update", "delete"],
            &["kube-root-ca.crt", "spire-rs-spire-operator"],
        ),
    );
    add(&here, grants("", &["configmaps"], &["list", "watch"], &[]));
    add(
        &here,
        grants(
            "",
            &["configmaps"],
            &["delete"],
            &["spire-operator-adopted-entries"],
        ),
    );
    add(
        &here,
        grants("coordination.k8s.io", &["leases"], &["delete"], &[lease]),
    );
    add(
        &here,
        grants(
            "coordination.k8s.io",
            &["leases"],
            &["get", "update"],
            &["another-lease"],
        ),
    );
    add(&elsewhere, grants("", &["configmaps"], &["create"], &[]));
    add(
        &elsewhere,
        grants("coordination.k8s.io", &["leases"], &["create"], &[]),
    );
    add(
        &None,
        grants(
            "admissionregistration.k8s.io",
            &[
                "validatingwebhookconfigurations",
                "mutatingwebhookconfigurations",
            ],
            &["create", "patch", "delete"],
            &["someone-elses-webhook"],
        ),
    );
    add(
        &None,
        grants(
            "rbac.authorization.k8s.io",
            &["clusterroles"],
            &["escalate", "bind", "update"],
            &[],
        ),
    );
    add(
        &None,
        grants("", &["users", "serviceaccounts"], &["impersonate"], &[]),
    );
    add(
        &here,
        grants("events.k8s.io", &["events"], &["delete", "list"], &[]),
    );
    add(
        &None,
        grants(
            "apiextensions.k8s.io",
            &["customresourcedefinitions"],
            &["update", "delete"],
            &[],
        ),
    );
    add(
        &None,
        grants(
            "certificates.k8s.io",
            &["certificatesigningrequests"],
            &["create"],
            &[],
        ),
    );
    out
}

/// Runs the sweep with `client` authenticated as the ServiceAccount. Returns how many
/// grants and refusals were checked.
pub async fn sweep(
    client: &kube::Client,
    namespace: &str,
    webhook_configuration: &str,
    lease: &str,
) -> anyhow::Result<(usize, usize)> {
    let want = expected(webhook_configuration, lease);
    let have = granted_in(client, namespace).await?;
    let extra: Vec<String> = have.difference(&want).map(ToString::to_string).collect();
    let missing: Vec<String> = want.difference(&have).map(ToString::to_string).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the ServiceAccount's permissions in {namespace} differ from the reviewed list:\n  \
         granted but not on the list: {extra:?}\n  on the list but not granted: {missing:?}"
    );
    for grant in &want {
        assert!(
            allowed(client, Some(namespace), grant).await?,
            "{grant} is listed by the rules review but refused by the authorizer"
        );
    }
    let refusals = forbidden(namespace, lease);
    for (ns, grant) in &refusals {
        assert!(
            !allowed(client, ns.as_deref(), grant).await?,
            "{grant} (namespace {ns:?}) is allowed to the chart's ServiceAccount"
        );
    }
    Ok((want.len(), refusals.len()))
}

/// The resource rules the authorizer reports for the caller in `namespace` (cluster-wide
/// grants included), one [`Grant`] per group x resource x verb x name.
async fn granted_in(client: &kube::Client, namespace: &str) -> anyhow::Result<BTreeSet<Grant>> {
    let reviews: Api<SelfSubjectRulesReview> = Api::all(client.clone());
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(namespace.to_owned()),
        },
        ..Default::default()
    };
    let status = reviews
        .create(&PostParams::default(), &review)
        .await
        .context("SelfSubjectRulesReview")?
        .status
        .context("SelfSubjectRulesReview without status")?;
    assert!(
        !status.incomplete,
        "rules review incomplete: {:?}",
        status.evaluation_error
    );
    let mut out = BTreeSet::new();
    for rule in status.resource_rules {
        let groups = rule.api_groups.unwrap_or_default();
        let resources = rule.resources.unwrap_or_default();
        let names = rule.resource_names.unwrap_or_default();
        for group in &groups {
            let resources: Vec<&str> = resources.iter().map(String::as_str).collect();
            let verbs: Vec<&str> = rule.verbs.iter().map(String::as_str).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            out.extend(grants(group, &resources, &verbs, &names));
        }
    }
    Ok(out)
}

async fn allowed(
    client: &kube::Client,
    namespace: Option<&str>,
    grant: &Grant,
) -> anyhow::Result<bool> {
    let (resource, subresource) = match grant.resource.split_once('/') {
        Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
        None => (grant.resource.clone(), None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(grant.group.clone()),
                resource: Some(resource),
                subresource,
                verb: Some(grant.verb.clone()),
                name: grant.name.clone(),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let status = reviews
        .create(&PostParams::default(), &review)
        .await
        .with_context(|| format!("SelfSubjectAccessReview of {grant}"))?
        .status
        .context("SelfSubjectAccessReview without status")?;
    Ok(status.allowed)
}
