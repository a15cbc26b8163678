//! `spire-operator check-spire` against the real server reports what the server holds:
//! its trust domain, authorities, entry count and attested agents; against a socket
//! nobody listens on, it fails naming the address.

use e2e::Spire;
use e2e::operator::Operator;

const TRUST_DOMAIN: &str = "check.test";

async fn check_spire(socket: &std::path::Path) -> anyhow::Result<std::process::Output> {
    Ok(tokio::process::Command::new(Operator::binary()?)
        .arg("check-spire")
        .arg("--spire-server-socket-path")
        .arg(socket)
        .arg("--timeout")
        .arg("30s")
        .output()
        .await?)
}

/// The value printed after `label:` on its own line.
fn value<'a>(output: &'a str, label: &str) -> anyhow::Result<&'a str> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{label}:")))
        .map(str::trim)
        .ok_or_else(|| anyhow::anyhow!("no {label:?} line in:\n{output}"))
}

#[tokio::test]
async fn check_spire_reports_what_the_server_holds() -> anyhow::Result<()> {
    let spire = Spire::start(TRUST_DOMAIN).await?;
    let parent = spire.agent_id().to_string();
    for (id, uid) in [("a", "1001"), ("b", "1002"), ("c", "1003")] {
        spire.server_cli(&[
            "entry",
            "create",
            "-spiffeID",
            &format!("spiffe://{TRUST_DOMAIN}/{id}"),
            "-parentID",
            &parent,
            "-selector",
            &format!("unix:uid:{uid}"),
        ])?;
    }

    let output = check_spire(spire.server_socket()).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "check-spire failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&spire.server_socket().display().to_string()),
        "names the server it asked:\n{stdout}"
    );
    assert_eq!(value(&stdout, "trust domain")?, TRUST_DOMAIN);
    assert_eq!(value(&stdout, "entries")?, "3");
    assert_eq!(value(&stdout, "attested agents")?, "1");
    assert!(
        stdout.lines().any(|l| l.trim() == parent),
        "lists the agent {parent}:\n{stdout}"
    );
    let x509: usize = value(&stdout, "X.509 authorities")?.parse()?;
    let jwt: usize = value(&stdout, "JWT authorities")?.parse()?;
    let bundle = spire.client().get_bundle().await?;
    assert_eq!(x509, bundle.x509_authorities.len());
    assert_eq!(jwt, bundle.jwt_authorities.len());
    assert!(x509 >= 1 && jwt >= 1, "{stdout}");

    // Nobody listens here: a failure that names the address.
    let missing = spire.dir().join("nobody.sock");
    let output = check_spire(&missing).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "check-spire succeeded without a server"
    );
    assert!(
        stderr.contains(&missing.display().to_string()),
        "the error names {}:\n{stderr}",
        missing.display()
    );
    Ok(())
}
