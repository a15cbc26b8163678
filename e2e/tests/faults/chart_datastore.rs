//! The chart's external-database path on real servers: what `helm template` renders for
//! `replicas: 2` on PostgreSQL (ci/external-db-values.yaml) is checked object by object,
//! and its DataStore plugin, with the connection string left to a Secret and expanded
//! by the server (`-expandEnv`), runs two real SPIRE servers on one PostgreSQL that
//! serve the same entries.

use std::time::Instant;

use anyhow::Context;
use e2e::entries;
use e2e::helm::{self, Helm};
use e2e::postgres::Postgres;
use e2e::{Spire, SpireOptions};
use serde_json::{Value, json};

/// The environment variable the chart's StatefulSet fills from the Secret.
const CONNECTION_ENV: &str = "SPIRE_DATASTORE_CONNECTION_STRING";

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("{kind}/{name} is not rendered"))
}

#[tokio::test]
async fn the_charts_postgres_datastore_runs_two_real_servers_on_one_database() -> anyhow::Result<()>
{
    let helm = Helm::new()?;
    let values = helm::chart_dir().join("ci/external-db-values.yaml");
    let objects = helm.template(
        "spire-system",
        &["--values", values.to_str().context("values path")?],
    )?;
    let statefulset = find(&objects, "StatefulSet", "spire-rs-spire-server")?;
    assert_eq!(statefulset["spec"]["replicas"], 2);
    let server = statefulset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "spire-server"))
        .context("no spire-server container")?;
    assert!(
        server["args"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("-expandEnv"))),
        "{}",
        server["args"]
    );
    let env = server["env"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == CONNECTION_ENV))
        .with_context(|| format!("no {CONNECTION_ENV} in {}", server["env"]))?;
    assert_eq!(
        env["valueFrom"]["secretKeyRef"],
        json!({"name": "spire-db", "key": "dsn"})
    );
    let config_map = find(&objects, "ConfigMap", "spire-rs-spire-server")?;
    let conf: Value = serde_json::from_str(
        config_map["data"]["server.conf"]
            .as_str()
            .context("no server.conf")?,
    )
    .context("server.conf is JSON")?;
    let sql = &conf["plugins"]["DataStore"][0]["sql"]["plugin_data"];
    assert_eq!(sql["database_type"], "postgres", "{sql}");
    let connection = sql["connection_string"]
        .as_str()
        .context("no connection_string")?;
    // The password stays in the Secret: the ConfigMap holds only the reference.
    assert_eq!(connection, format!("${{{CONNECTION_ENV}}}"));
    // Each replica keeps its own CA keys (its own volume), as SPIRE's HA expects.
    assert!(
        conf["plugins"]["KeyManager"][0].get("disk").is_some(),
        "{}",
        conf["plugins"]["KeyManager"]
    );

    // That DataStore on real servers: the connection string as rendered, expanded from
    // the environment as the Secret would fill it.
    let postgres = Postgres::start().await?;
    let options = SpireOptions {
        postgres: Some(connection.to_owned()),
        server_env: vec![(CONNECTION_ENV.into(), postgres.connection_string())],
        expand_env: true,
        ..Default::default()
    };
    let started = Instant::now();
    let first = Spire::start_with("chart-db.test", options.clone()).await?;
    let second = Spire::start_with("chart-db.test", options).await?;
    println!(
        "[fault] two servers on the chart's DataStore up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    first.server_cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://chart-db.test/web",
        "-parentID",
        "spiffe://chart-db.test/node",
        "-selector",
        "unix:uid:1000",
    ])?;
    let on_second = entries::list(&second).await?;
    assert_eq!(entries::list(&first).await?, on_second);
    assert!(
        on_second
            .iter()
            .any(|e| e.spiffe_id == "spiffe://chart-db.test/web"),
        "{}",
        entries::describe(&on_second)
    );
    // Each server published its own CA into the shared bundle.
    let bundle = second.client().get_bundle().await?;
    assert!(
        bundle.x509_authorities.len() >= 2,
        "{} X.509 authorities in the shared bundle",
        bundle.x509_authorities.len()
    );
    Ok(())
}
