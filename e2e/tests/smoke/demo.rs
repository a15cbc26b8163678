//! `make demo` keeps working: the same story, without waiting for Ctrl-C.

use std::process::Command;

#[tokio::test]
async fn demo_shows_a_workload_receiving_its_identity() -> anyhow::Result<()> {
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
        // The operator made the entry from the ClusterSPIFFEID and the pod.
        "SPIFFE ID  spiffe://example.org/ns/shop/sa/web",
        "selectors  k8s:pod-uid:",
        // The volume the driver published is a read-only bind.
        " ro,",
        // The workload, attested by the k8s attestor through the mounted socket.
        "X.509-SVID: \"spiffe://example.org/ns/shop/sa/web\"",
        "JWT-SVID:   \"spiffe://example.org/ns/shop/sa/web\"",
        // Validated against the OIDC discovery provider's JWKS.
        "the token proves spiffe://example.org/ns/shop/sa/web",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    Ok(())
}
