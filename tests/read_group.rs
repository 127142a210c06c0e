//! `OPDBUS_READ_GROUP`: a member of the group reads the chain with the CLI without being root,
//! anyone else gets "Permission denied", and the signing key stays private. A real daemon on a
//! private bus, a real group made with `groupadd`, callers switched with `setpriv`. Root only.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: &str = "65534";

/// A group made for one test, removed when it ends.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn new(tag: &str) -> TempGroup {
        let name = format!("opdbus-{tag}-{}", std::process::id() % 100_000);
        let out = Command::new("groupadd")
            .arg(&name)
            .output()
            .expect("groupadd");
        assert!(out.status.success(), "groupadd: {}", text(&out));
        let gid = nix::unistd::Group::from_name(&name)
            .expect("getgrnam")
            .expect("the new group")
            .gid
            .as_raw();
        TempGroup { name, gid }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// `opdbus-chain <args>` as uid/gid nobody, with `groups` as its only supplementary groups.
fn cli_as_nobody(groups: &[u32], args: &[&str]) -> Output {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let mut command = Command::new("setpriv");
    command.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}")]);
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        command.arg(format!("--groups={}", groups.join(",")));
    }
    command.arg(CLI).args(args).output().expect("setpriv")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn add(bus: &Bus, n: usize) -> String {
    let (ok, out, err) = bus.call(
        "AddFootprint",
        "sss",
        &["network", "create", &format!(r#"{{"n":{n}}}"#)],
    );
    assert!(ok, "AddFootprint: {err}");
    out.split('"').nth(1).expect("a hash").to_owned()
}

fn gid_and_mode(path: &Path) -> (u32, u32) {
    let meta = std::fs::symlink_metadata(path).expect("stat");
    (meta.gid(), meta.mode() & 0o7777)
}

/// A state directory anyone may pass through (as /var/lib is), as the parent of chain and cache.
fn state_dir(base: &Path) -> PathBuf {
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let state = base.join("op-dbus");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    state
}

#[test]
fn root_a_member_of_the_read_group_reads_the_chain_after_an_upgrade_from_private() {
    if !is_root() {
        eprintln!("SKIPPED root_a_member_of_the_read_group_reads_the_chain: needs root");
        return;
    }
    let group = TempGroup::new("rd");
    let base = tempfile::tempdir().expect("tempdir");
    let state = state_dir(base.path());
    let chain = state.join("blockchain");
    let cache = state.join("@cache");
    let chain_arg = chain.to_str().expect("utf-8");
    let bus = Bus::start();

    // As before the setting existed: private directories, no group.
    let mut daemon = Daemon::start_with_env(&bus, &chain, &cache, &[("OPDBUS_READ_GROUP", "")]);
    let mut hashes: Vec<String> = (0..3).map(|n| add(&bus, n)).collect();
    daemon.stop();
    std::fs::set_permissions(&chain, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let denied = cli_as_nobody(&[group.gid], &["verify", "--chain-dir", chain_arg]);
    assert!(!denied.status.success(), "read before the group was set");
    assert!(
        text(&denied).contains("Permission denied"),
        "{}",
        text(&denied)
    );

    // With the group: the existing chain and what is added from now on become readable by it.
    let mut daemon = Daemon::start_with_env(
        &bus,
        &chain,
        &cache,
        &[("OPDBUS_READ_GROUP", group.name.as_str())],
    );
    hashes.extend((3..6).map(|n| add(&bus, n)));
    let (ok, out, err) = bus.call("Snapshot", "", &[]);
    assert!(ok, "Snapshot: {err}");
    let chain_snapshot = out.split('"').nth(1).expect("snapshot path").to_owned();
    assert!(
        daemon
            .log_text()
            .contains(&format!("gave {} read access", group.name)),
        "{}",
        daemon.log_text()
    );
    for dir in [
        &chain,
        &chain.join("tlog"),
        &cache,
        &state.join(".snapshots"),
    ] {
        assert_eq!(gid_and_mode(dir), (group.gid, 0o2750), "{}", dir.display());
    }
    for entry in std::fs::read_dir(&chain).expect("list") {
        let path = entry.expect("entry").path();
        let (gid, mode) = gid_and_mode(&path);
        assert_eq!(gid, group.gid, "{}", path.display());
        assert_eq!(mode & 0o047, 0o040, "{} has mode {mode:o}", path.display());
    }

    // A member of the group (and nothing else) verifies and reads the chain, live and snapshot.
    let verify = cli_as_nobody(&[group.gid], &["verify", "--chain-dir", chain_arg]);
    assert!(verify.status.success(), "{}", text(&verify));
    let tail = cli_as_nobody(
        &[group.gid],
        &["tail", "-n", "100", "--json", "--chain-dir", chain_arg],
    );
    assert!(tail.status.success(), "{}", text(&tail));
    for hash in &hashes {
        assert!(text(&tail).contains(hash.as_str()), "{hash} not read");
    }
    let snapshot = cli_as_nobody(&[group.gid], &["verify", "--chain-dir", &chain_snapshot]);
    assert!(snapshot.status.success(), "{}", text(&snapshot));

    // Anyone else is refused by the file system.
    for args in [
        vec!["verify", "--chain-dir", chain_arg],
        vec!["tail", "--chain-dir", chain_arg],
    ] {
        let out = cli_as_nobody(&[], &args);
        assert!(!out.status.success(), "{args:?} read without the group");
        assert!(text(&out).contains("Permission denied"), "{}", text(&out));
    }

    // The signing key never joins the group.
    let key = PathBuf::from(format!("{}.keys/signing.key", chain.display()));
    let key_dir = key.parent().expect("key dir");
    assert_eq!(gid_and_mode(&key).1, 0o600);
    assert_eq!(gid_and_mode(key_dir).1, 0o700);
    assert_ne!(gid_and_mode(&key).0, group.gid);
    daemon.stop();

    // Switched off again: the group loses its access at the next start.
    let mut daemon = Daemon::start_with_env(&bus, &chain, &cache, &[("OPDBUS_READ_GROUP", "")]);
    assert_eq!(gid_and_mode(&chain), (0, 0o2750));
    let denied = cli_as_nobody(&[group.gid], &["verify", "--chain-dir", chain_arg]);
    assert!(
        text(&denied).contains("Permission denied"),
        "{}",
        text(&denied)
    );
    daemon.stop();
}

#[test]
fn root_a_read_group_that_does_not_exist_is_one_warning_and_the_chain_stays_private() {
    if !is_root() {
        eprintln!("SKIPPED root_a_read_group_that_does_not_exist: needs root");
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let state = state_dir(base.path());
    let chain = state.join("blockchain");
    let bus = Bus::start();
    let mut daemon = Daemon::start_with_env(
        &bus,
        &chain,
        &state.join("@cache"),
        &[("OPDBUS_READ_GROUP", "opdbus-no-such-group")],
    );
    add(&bus, 0);
    let log = daemon.log_text();
    assert_eq!(
        log.matches("OPDBUS_READ_GROUP=opdbus-no-such-group: no such group")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(gid_and_mode(&chain).0, 0, "the daemon's own group");
    daemon.stop();
}
