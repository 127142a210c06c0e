//! What the bench crate's integration tests share.

use std::process::Command;

/// Runs opdbus-bench; it finds opdbus-blockchaind beside itself (same target directory:
/// `cargo test --workspace` builds both).
pub fn bench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_opdbus-bench"))
        .args(args)
        .output()
        .expect("run opdbus-bench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
