//! `tapestry` whose reader went away (`tapestry get … | head -1`) ends quietly
//! with success, instead of panicking on the closed pipe as `println!` does.

use std::process::{Command, Stdio};

use tapestry_cluster::DirStore;

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let dir = std::env::temp_dir().join(format!("tapestry-cli-pipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = dir.join("store");
    DirStore::open(&store).expect("a fresh store");
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../lab/policy/00-namespaces.yaml"
    );
    let applied = Command::new(env!("CARGO_BIN_EXE_tapestry"))
        .args(["apply", "-f", manifest])
        .env("TAPESTRY_STORE", &store)
        .output()
        .expect("tapestry runs");
    assert!(applied.status.success(), "{applied:?}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_tapestry"))
        .args(["get", "namespaces"])
        .env("TAPESTRY_STORE", &store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tapestry runs");
    // The reader goes away before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("tapestry ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success(),
        "exit {:?}, stderr {stderr}",
        out.status
    );
}
