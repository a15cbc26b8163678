//! `make demo` tells the story on the real node, and every command it suggests at the end
//! does what its comment says (`demo --no-wait` runs and checks each one).

use std::process::Command;

#[tokio::test]
async fn demo_shows_a_workload_receiving_its_identity_and_its_suggestions_work()
-> anyhow::Result<()> {
    let output = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_demo"))
            .arg("--no-wait")
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        // helm install ran the stack as pods, shown by kubectl.
        "spire-rs-spire-server-0",
        "Running",
        // The workload, attested through the CSI volume, got both SVIDs ...
        "X.509-SVID: \"spiffe://example.org/ns/shop/sa/web\"",
        "JWT-SVID:   \"spiffe://example.org/ns/shop/sa/web\"",
        // ... the JWT checks out against the OIDC discovery provider's JWKS ...
        "the token proves spiffe://example.org/ns/shop/sa/web",
        // ... and the operator's entry is on the server.
        "k8s:pod-uid:",
        "its entry was removed",
        // Every suggested command was run and checked.
        "ok: kubectl -n shop delete pod -l app=web",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    Ok(())
}
