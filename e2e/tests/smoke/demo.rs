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
    assert!(
        stdout.contains("X.509-SVID: \"spiffe://example.org/demo/workload\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("JWT-SVID:   \"spiffe://example.org/demo/workload\""),
        "{stdout}"
    );
    Ok(())
}
