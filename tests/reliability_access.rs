//! Access control with a real dbus-daemon enforcing a system-bus-like policy and our policy
//! file, and callers switched to an unprivileged uid with setpriv. Needs root (setpriv).

mod common;

use common::*;

const NOBODY: u32 = 65534;

fn height(bus: &Bus) -> String {
    let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, BUS_NAME, "Height"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn add_as_nobody(bus: &Bus) -> (bool, String) {
    let out = bus.dbus_send(
        Some(NOBODY),
        "AddFootprint",
        &[
            "string:network",
            "string:create",
            r#"string:{"by":"nobody"}"#,
        ],
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn root_an_unprivileged_write_is_refused_by_the_bus_policy_and_adds_nothing() {
    if !is_root() {
        eprintln!("SKIP root_an_unprivileged_write_is_refused_by_the_bus_policy_and_adds_nothing: needs root for setpriv");
        return;
    }
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let _daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let (ok, out) = add_as_nobody(&bus);
    assert!(!ok, "uid {NOBODY} must not write: {out}");
    assert!(
        out.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "refused by the bus policy: {out}"
    );
    assert_eq!(height(&bus), "t 0", "nothing was added");
    // Reads are open to everyone.
    let out = bus.dbus_send(Some(NOBODY), "GetBlockByHeight", &["uint64:0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("genesis"));
}

/// Our policy with the writer group set to the unprivileged caller's own group, so the bus
/// lets its writes through and the daemon's own uid check is what decides.
fn policy_with_writer_group(dir: &std::path::Path, group: &str) -> std::path::PathBuf {
    let shipped =
        std::fs::read_to_string(repo_path("dbus/org.opdbus.Blockchain.conf")).expect("policy");
    assert!(shipped.contains(r#"<policy group="opdbus">"#));
    let path = dir.join("policy.conf");
    std::fs::write(
        &path,
        shipped.replace(
            r#"<policy group="opdbus">"#,
            &format!(r#"<policy group="{group}">"#),
        ),
    )
    .expect("write policy");
    path
}

#[test]
fn root_the_daemon_refuses_a_writer_group_member_it_was_not_told_about_and_accepts_a_configured_one(
) {
    if !is_root() {
        eprintln!("SKIP root_the_daemon_refuses_a_writer_group_member_it_was_not_told_about_and_accepts_a_configured_one: needs root for setpriv");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // uid 65534's group is nogroup (65534) in the user database the bus consults.
    let bus = Bus::start_with_policy(&policy_with_writer_group(dir.path(), "nogroup"));
    let chain = dir.path().join("chain");
    let cache = dir.path().join("cache");
    let mut daemon = Daemon::start(&bus, &chain, &cache);
    let (ok, out) = add_as_nobody(&bus);
    assert!(!ok, "the daemon checks the uid itself: {out}");
    assert!(
        out.contains("org.opdbus.Blockchain.Error.AccessDenied") && out.contains("uid 65534"),
        "refused by the daemon: {out}"
    );
    assert_eq!(height(&bus), "t 0", "nothing was added");
    daemon.stop();

    let _daemon = Daemon::start_with_env(&bus, &chain, &cache, &[("OPDBUS_WRITER_UIDS", "65534")]);
    let (ok, out) = add_as_nobody(&bus);
    assert!(ok, "a configured writer is allowed: {out}");
    assert_eq!(height(&bus), "t 1");
    let out = bus.dbus_send(Some(NOBODY), "GetBlockByHeight", &["uint64:1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#""uid":65534"#),
        "the block names its caller: {text}"
    );
}
