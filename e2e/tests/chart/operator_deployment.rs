//! `operator.deployment.enabled`: the operator leaves the SPIRE server's pod for a
//! Deployment of its own, and every piece that makes the TCP+mTLS connection work is
//! rendered consistently (the same SPIFFE ID in admin_ids, the bootstrap entry and the
//! default; the same ServiceAccount in the entry, the pod and the RBAC bindings).

use anyhow::Context;
use e2e::helm::Helm;
use serde_json::Value;

const NAMESPACE: &str = "spire-system";
const OPERATOR_ID: &str = "spiffe://example.org/ns/spire-system/sa/spire-rs-spire-operator";
const OPERATOR_SA: &str = "spire-rs-spire-operator";

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("{kind}/{name} not rendered"))
}

fn containers(object: &Value) -> Vec<&Value> {
    object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

fn config_map_key<'a>(objects: &'a [Value], name: &str, key: &str) -> anyhow::Result<&'a str> {
    find(objects, "ConfigMap", name)?["data"][key]
        .as_str()
        .with_context(|| format!("ConfigMap/{name} has no {key}"))
}

fn render(values: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = Vec::new();
    for value in values {
        args.extend(["--set", value]);
    }
    Helm::new()?.template(NAMESPACE, &args)
}

#[test]
fn the_operator_deployment_reaches_the_server_over_tcp_as_the_id_the_server_admits()
-> anyhow::Result<()> {
    let objects = render(&["operator.deployment.enabled=true"])?;

    let deployment = find(&objects, "Deployment", "spire-rs-spire-operator")?;
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], OPERATOR_SA);
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "spiffe-workload-api"))
        .context("no Workload API volume")?;
    assert_eq!(volume["csi"]["driver"], "csi.spiffe.io");
    assert_eq!(volume["csi"]["readOnly"], true);
    find(&objects, "ServiceAccount", OPERATOR_SA)?;

    let config = config_map_key(&objects, "spire-rs-spire-operator", "config.yaml")?;
    assert!(
        config.contains("spireServerAddress: spire-rs-spire-server.spire-system.svc:8081"),
        "{config}"
    );
    assert!(
        config.contains("workloadAPIAddress: unix:///spiffe-workload-api/spire-agent.sock"),
        "{config}"
    );
    assert!(!config.contains("spireServerSocketPath"), "{config}");

    let server_conf = config_map_key(&objects, "spire-rs-spire-server", "server.conf")?;
    let server_conf: Value = serde_json::from_str(server_conf)?;
    assert_eq!(
        server_conf["server"]["admin_ids"],
        serde_json::json!([OPERATOR_ID])
    );

    let statefulset = find(&objects, "StatefulSet", "spire-rs-spire-server")?;
    let names: Vec<&str> = containers(statefulset)
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["spire-server", "spire-operator-bootstrap"]);
    let bootstrap = containers(statefulset)[1];
    let args: Vec<&str> = bootstrap["args"]
        .as_array()
        .context("bootstrap args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        format!("--spiffe-id={OPERATOR_ID}"),
        format!("--operator-service-account={OPERATOR_SA}"),
        format!("--operator-namespace={NAMESPACE}"),
        "--cluster-name=kubernetes".into(),
        "--svid-ttl=1h".into(),
    ] {
        assert!(args.contains(&want.as_str()), "{want} not in {args:?}");
    }
    assert!(
        bootstrap.get("readinessProbe").is_none(),
        "the bootstrap container must not gate the server's readiness"
    );

    for (kind, name) in [
        ("ClusterRoleBinding", "spire-rs-spire-operator"),
        ("RoleBinding", "spire-rs-spire-operator"),
    ] {
        let subjects = &find(&objects, kind, name)?["subjects"];
        assert_eq!(subjects[0]["name"], OPERATOR_SA, "{kind}/{name}");
    }
    let selector =
        &find(&objects, "Service", "spire-rs-spire-operator-webhook")?["spec"]["selector"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector.as_object().context("webhook selector")? {
        assert_eq!(
            &labels[key], value,
            "the webhook Service selects the operator pods"
        );
    }
    Ok(())
}

#[test]
fn the_sidecar_stays_the_default_with_no_admin_ids() -> anyhow::Result<()> {
    let objects = render(&[])?;
    assert!(
        !objects.iter().any(
            |o| o["kind"] == "Deployment" && o["metadata"]["name"] == "spire-rs-spire-operator"
        )
    );
    let statefulset = find(&objects, "StatefulSet", "spire-rs-spire-server")?;
    let names: Vec<&str> = containers(statefulset)
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["spire-server", "spire-operator"]);
    let server_conf = config_map_key(&objects, "spire-rs-spire-server", "server.conf")?;
    assert!(!server_conf.contains("admin_ids"), "{server_conf}");
    let config = config_map_key(&objects, "spire-rs-spire-operator", "config.yaml")?;
    assert!(config.contains("spireServerSocketPath"), "{config}");
    assert!(!config.contains("spireServerAddress"), "{config}");
    Ok(())
}

#[test]
fn a_custom_id_and_svid_ttl_reach_admin_ids_and_the_bootstrap_entry() -> anyhow::Result<()> {
    let id = "spiffe://example.org/platform/spire-operator";
    let objects = render(&[
        "operator.deployment.enabled=true",
        &format!("operator.deployment.spiffeID={id}"),
        "operator.deployment.svidTTL=10m",
    ])?;
    let server_conf: Value = serde_json::from_str(config_map_key(
        &objects,
        "spire-rs-spire-server",
        "server.conf",
    )?)?;
    assert_eq!(server_conf["server"]["admin_ids"], serde_json::json!([id]));
    let statefulset = find(&objects, "StatefulSet", "spire-rs-spire-server")?;
    let args = serde_json::to_string(&containers(statefulset)[1]["args"])?;
    assert!(args.contains(&format!("--spiffe-id={id}")), "{args}");
    assert!(args.contains("--svid-ttl=10m"), "{args}");
    Ok(())
}

#[test]
fn with_an_existing_server_the_deployment_points_at_it_and_renders_no_server() -> anyhow::Result<()>
{
    let objects = render(&[
        "spireServer.enabled=false",
        "spireAgent.server.address=spire.example.net",
        "operator.deployment.enabled=true",
        "operator.deployment.spireServerAddress=spire.example.net:8081",
    ])?;
    assert!(!objects.iter().any(|o| o["kind"] == "StatefulSet"
        || o["kind"] == "Service" && o["metadata"]["name"] == "spire-rs-spire-server"));
    find(&objects, "Deployment", "spire-rs-spire-operator")?;
    let config = config_map_key(&objects, "spire-rs-spire-operator", "config.yaml")?;
    assert!(
        config.contains("spireServerAddress: spire.example.net:8081"),
        "{config}"
    );
    // Without an address the chart cannot know where the server is.
    let output = Helm::new()?.output(&[
        "template",
        "spire-rs",
        e2e::helm::chart_dir().to_str().context("chart path")?,
        "--set",
        "spireServer.enabled=false,spireAgent.server.address=x,operator.deployment.enabled=true",
    ])?;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("operator.deployment.spireServerAddress"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
