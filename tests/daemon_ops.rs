//! Operating the real daemon: SIGHUP, the chain-id marker and restore, a clean stop on a strict
//! bus, leftovers of interrupted snapshots, planted symlinks and unsafe directories.

mod common;

use common::{Bus, Daemon, BUS_NAME, DAEMON};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal");
}

fn wait_for_log(log: &Path, text: &str) -> String {
    let mut seen = String::new();
    common::wait_until(Duration::from_secs(20), text, || {
        seen = std::fs::read_to_string(log).unwrap_or_default();
        seen.contains(text)
    });
    seen
}

fn add(bus: &Bus, plugin: &str) {
    let (ok, out, err) = bus.call("AddFootprint", "sss", &[plugin, "create", "{}"]);
    assert!(ok, "AddFootprint: {out}{err}");
}

fn height(bus: &Bus) -> String {
    let (ok, _, err) = bus.call("GetBlockByHeight", "t", &["0"]);
    assert!(ok, "the daemon serves: {err}");
    let out = bus.busctl(&[
        "get-property",
        BUS_NAME,
        common::OBJECT_PATH,
        BUS_NAME,
        "Height",
    ]);
    assert!(out.status.success() && !out.stdout.is_empty(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The daemon started by hand (the harness does not pass --config), logging to `log`.
fn spawn(bus: &Bus, chain: &Path, cache: &Path, args: &[&str], log: &Path) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Command::new(DAEMON)
        .arg("--bus")
        .arg(&bus.address)
        .arg("--chain-dir")
        .arg(chain)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("OPDBUS_LOG")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("start the daemon")
}

/// Starts the daemon and expects it to refuse: returns its exit status and log.
fn start_refused(bus: &Bus, chain: &Path, cache: &Path) -> (ExitStatus, String) {
    let log = chain.with_extension("refused.log");
    let mut child = spawn(bus, chain, cache, &[], &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, std::fs::read_to_string(&log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon did not refuse to start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "chain"))
        .collect();
    found.sort();
    found
}

#[test]
fn sighup_leaves_the_daemon_running_and_serving_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    add(&bus, "network");
    signal(daemon.pid(), nix::sys::signal::Signal::SIGHUP);
    let log = wait_for_log(&daemon.log, "SIGHUP: nothing reloaded");
    assert!(log.contains("only a restart renews"), "{log}");
    // Still running and serving after a second one.
    signal(daemon.pid(), nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    add(&bus, "storage");
    assert_eq!(height(&bus), "t 2");
    let status = daemon.stop();
    assert!(status.success(), "clean stop after SIGHUP: {status}");
}

#[test]
fn sighup_reloads_the_log_filter_from_the_config_file_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("opdbus-blockchain");
    std::fs::write(&config, "OPDBUS_LOG=info\n").expect("config");
    let bus = Bus::start();
    let log = dir.path().join("daemon.log");
    let (chain, cache) = (dir.path().join("chain"), dir.path().join("cache"));
    let mut child = spawn(
        &bus,
        &chain,
        &cache,
        &["--config", config.to_str().expect("utf-8")],
        &log,
    );
    common::wait_until(Duration::from_secs(30), "the daemon owns its name", || {
        bus.busctl(&["status", BUS_NAME]).status.success()
    });
    add(&bus, "before");
    // A block's debug line follows its reply (the reply task answers first, then logs and
    // signals): let it pass, at info, before the filter changes.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(
        &config,
        "OPDBUS_LOG=debug\nOPDBUS_SEGMENT_BYTES=1048576\nOPDBUS_SNAPSHOT_INTERVAL=daily\n",
    )
    .expect("config");
    signal(child.id(), nix::sys::signal::Signal::SIGHUP);
    let text = wait_for_log(&log, "SIGHUP: reloaded");
    let line = text
        .lines()
        .find(|l| l.contains("SIGHUP: reloaded"))
        .expect("the line");
    assert!(
        line.contains("OPDBUS_LOG")
            && line.contains("OPDBUS_SNAPSHOT_INTERVAL")
            && line.contains("OPDBUS_SEGMENT_BYTES need a restart"),
        "{line}"
    );
    assert!(!text.contains("block 1 added"), "info before: {text}");
    add(&bus, "after");
    wait_for_log(&log, "block 2 added: after create");
    assert_eq!(height(&bus), "t 2");
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().expect("wait").success());
}

/// The config file read as `EnvironmentFile=-` was: a missing one is a warning, `export`, a
/// BOM and keys of others pass; a log filter that would log nothing is refused (at start-up,
/// and on SIGHUP with the running filter kept), and the SIGHUP line shows whatever the new
/// filter is.
#[test]
fn the_config_file_is_forgiving_where_systemd_was_and_strict_about_the_log_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("opdbus-blockchain");
    let config_arg = config.to_str().expect("utf-8").to_owned();
    let bus = Bus::start();
    let log = dir.path().join("daemon.log");
    let (chain, cache) = (dir.path().join("chain"), dir.path().join("cache"));
    let mut child = spawn(&bus, &chain, &cache, &["--config", &config_arg], &log);
    common::wait_until(Duration::from_secs(30), "the daemon owns its name", || {
        bus.busctl(&["status", BUS_NAME]).status.success()
    });
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("does not exist; using the defaults"),
        "{text}"
    );
    std::fs::write(
        &config,
        "\u{feff}export OPDBUS_LOG=verbose\nRUST_BACKTRACE=1\n",
    )
    .expect("config");
    signal(child.id(), nix::sys::signal::Signal::SIGHUP);
    let text = wait_for_log(&log, "SIGHUP: cannot reload");
    assert!(text.contains("OPDBUS_LOG=verbose"), "{text}");
    std::fs::write(&config, "export OPDBUS_LOG=error\nRUST_BACKTRACE=1\n").expect("config");
    signal(child.id(), nix::sys::signal::Signal::SIGHUP);
    let text = wait_for_log(&log, "SIGHUP: reloaded OPDBUS_LOG");
    assert!(text.contains("ignoring RUST_BACKTRACE"), "{text}");
    add(&bus, "quiet");
    assert_eq!(height(&bus), "t 1");
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().expect("wait").success());
    let text = std::fs::read_to_string(&log).expect("log");
    // The new filter (error) is in force: the info line of the stop is not logged.
    assert!(
        !text.contains("SIGTERM received"),
        "error level after: {text}"
    );

    std::fs::write(&config, "OPDBUS_LOG=debug # the blocks too\n").expect("config");
    let refused_log = dir.path().join("refused.log");
    let mut child = spawn(
        &bus,
        &chain,
        &cache,
        &["--config", &config_arg],
        &refused_log,
    );
    let status = child.wait().expect("wait");
    let text = std::fs::read_to_string(&refused_log).expect("log");
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("OPDBUS_LOG=debug # the blocks too") && text.contains("expected a level"),
        "{text}"
    );
}

/// The strict bus refuses a Peer.Ping to ourselves once the name is released; the stop must
/// neither warn about it nor lose what was dispatched.
#[test]
fn a_clean_stop_on_a_strict_bus_logs_no_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    for plugin in ["a", "b", "c"] {
        add(&bus, plugin);
    }
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let log = daemon.log_text();
    assert!(log.contains("stopped at height 3"), "{log}");
    assert!(
        // The level may be coloured (`\x1b[33m WARN\x1b[0m`): look for the word itself.
        !log.lines().any(|line| line.contains("WARN")) && !log.contains("cannot ping"),
        "a clean stop warns:\n{log}"
    );
}

#[test]
fn a_chain_moved_aside_is_an_error_naming_the_marker_not_a_new_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, cache) = (dir.path().join("chain"), dir.path().join("cache"));
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, &chain, &cache);
    add(&bus, "network");
    daemon.stop();
    let marker = dir.path().join("chain.chain-id");
    let id = std::fs::read_to_string(&marker).expect("the first start wrote the marker");
    assert_eq!(id.trim().len(), 32, "{id}");

    std::fs::rename(&chain, dir.path().join("chain.aside")).expect("move aside");
    let (status, log) = start_refused(&bus, &chain, &cache);
    assert!(!status.success(), "refused: {status}\n{log}");
    assert!(
        log.contains(&marker.display().to_string()) && log.contains(id.trim()),
        "the error names the marker and the chain id:\n{log}"
    );
    assert!(
        segments(&chain).is_empty(),
        "no new chain was created: {:?}",
        segments(&chain)
    );
    // An empty chain directory (e.g. a fresh mount) is refused the same way.
    std::fs::create_dir(&chain).expect("mkdir");
    let (status, _) = start_refused(&bus, &chain, &cache);
    assert!(!status.success());
    assert!(segments(&chain).is_empty());

    // Back in place: served again.
    std::fs::remove_dir(&chain).expect("rmdir");
    std::fs::rename(dir.path().join("chain.aside"), &chain).expect("move back");
    let _daemon = Daemon::start(&bus, &chain, &cache);
    assert_eq!(height(&bus), "t 1");
}

#[test]
fn restore_sets_the_marker_to_the_restored_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::start();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let mut daemon = Daemon::start(&bus, &a.join("chain"), &a.join("cache"));
    daemon.stop();
    let old_id = std::fs::read_to_string(a.join("chain.chain-id")).expect("marker a");

    // Chain b, two blocks, snapshotted.
    let mut daemon = Daemon::start(&bus, &b.join("chain"), &b.join("cache"));
    add(&bus, "one");
    add(&bus, "two");
    let (ok, out, err) = bus.call("Snapshot", "", &[]);
    assert!(ok, "Snapshot: {err}");
    daemon.stop();
    let chain_snapshot = out
        .split('"')
        .nth(1)
        .map(PathBuf::from)
        .expect("the chain snapshot path");
    let snapshot = chain_snapshot.parent().expect("snapshot dir").to_owned();
    let new_id = std::fs::read_to_string(b.join("chain.chain-id")).expect("marker b");
    assert_ne!(old_id, new_id);

    // Another chain put in a's place by hand is refused: the marker records a's.
    std::fs::rename(a.join("chain"), a.join("chain.old")).expect("aside");
    std::fs::rename(a.join("cache"), a.join("cache.old")).expect("aside");
    std::fs::rename(b.join("chain"), a.join("chain")).expect("b into a's place");
    let (status, log) = start_refused(&bus, &a.join("chain"), &a.join("cache"));
    assert!(!status.success());
    assert!(
        log.contains(&format!("holds chain {}", new_id.trim()))
            && log.contains(&format!("records chain {}", old_id.trim())),
        "{log}"
    );
    std::fs::rename(a.join("chain"), b.join("chain")).expect("b back");

    // b's snapshot restored where a was served.
    let (code, out, err) = common::cli(&[
        "restore",
        "--from",
        snapshot.to_str().expect("utf-8"),
        "--chain-dir",
        a.join("chain").to_str().expect("utf-8"),
        "--cache-dir",
        a.join("cache").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "restore: {out}{err}");
    assert!(out.contains("chain.chain-id"), "{out}");
    assert_eq!(
        std::fs::read_to_string(a.join("chain.chain-id")).expect("marker"),
        new_id,
        "the marker names the restored chain"
    );
    let _daemon = Daemon::start(&bus, &a.join("chain"), &a.join("cache"));
    assert_eq!(height(&bus), "t 2");
}

#[test]
fn a_half_made_snapshot_is_removed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let half = dir
        .path()
        .join(".snapshots/.incomplete-2026-12-04T10-00-00Z-h000000000007");
    std::fs::create_dir_all(half.join("chain")).expect("mkdir");
    std::fs::write(
        half.join("chain/segment-00000000000000000000.chain"),
        [0u8; 4096],
    )
    .expect("write");
    // Read-only by mode, as a half-made hard-link snapshot can be.
    std::fs::set_permissions(half.join("chain"), std::fs::Permissions::from_mode(0o555))
        .expect("chmod");
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    assert!(!half.exists(), "the leftover is gone");
    let log = daemon.log_text();
    assert!(
        log.contains("half-made snapshot") && log.contains(".incomplete-2026-12-04T10-00-00Z"),
        "{log}"
    );
}

#[test]
fn loop_a_half_made_btrfs_snapshot_is_deleted_at_start() {
    let Some(fs) = opdbus_testkit::LoopBtrfs::new(256) else {
        eprintln!("SKIP loop_a_half_made_btrfs_snapshot_is_deleted_at_start: no loop btrfs");
        return;
    };
    let half = fs
        .path()
        .join(".snapshots/.incomplete-2026-12-04T10-00-00Z-h000000000007");
    std::fs::create_dir_all(&half).expect("mkdir");
    opdbus_blockchain::btrfs::create_subvolume(&half.join("chain")).expect("subvolume");
    std::fs::write(
        half.join("chain/segment-00000000000000000000.chain"),
        [0u8; 4096],
    )
    .expect("write");
    let bus = Bus::start();
    let _daemon = Daemon::start(
        &bus,
        &fs.path().join("blockchain"),
        &fs.path().join("@cache"),
    );
    assert!(!half.exists(), "the leftover subvolume is gone");
}

/// Planted links in the chain directory are never followed: their targets stay as they were.
#[test]
fn planted_symlinks_for_index_vectors_and_a_segment_are_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, cache) = (dir.path().join("chain"), dir.path().join("cache"));
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, &chain, &cache);
    add(&bus, "network");
    daemon.stop();

    let precious = |name: &str| {
        let path = dir.path().join(format!("precious-{name}"));
        std::fs::write(&path, format!("root-only {name}")).expect("write");
        path
    };
    for name in ["index", "vectors"] {
        let target = precious(name);
        let _ = std::fs::remove_file(chain.join(name));
        std::os::unix::fs::symlink(&target, chain.join(name)).expect("symlink");
    }
    let daemon = Daemon::start(&bus, &chain, &cache);
    add(&bus, "storage");
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "{} is a symbolic link",
            chain.join("index").display()
        )) && log.contains(&format!(
            "{} is a symbolic link",
            chain.join("vectors").display()
        )),
        "the log says why the index and vectors are not written:\n{log}"
    );
    drop(daemon);
    for name in ["index", "vectors"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("precious-{name}"))).expect("read"),
            format!("root-only {name}"),
            "{name}: the link's target was written"
        );
    }

    // A segment that is a link (to a copy of itself) is refused at start, and left alone.
    let segment = segments(&chain).pop().expect("a segment");
    let copy = dir.path().join("precious-segment");
    std::fs::copy(&segment, &copy).expect("copy");
    let before = std::fs::read(&copy).expect("read");
    std::fs::remove_file(&segment).expect("rm");
    std::os::unix::fs::symlink(&copy, &segment).expect("symlink");
    let (status, log) = start_refused(&bus, &chain, &cache);
    assert!(!status.success(), "{log}");
    assert!(log.contains("symbolic link"), "{log}");
    assert_eq!(std::fs::read(&copy).expect("read"), before);
}

#[test]
fn a_chain_dir_others_can_write_to_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, cache) = (dir.path().join("chain"), dir.path().join("cache"));
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, &chain, &cache);
    daemon.stop();

    std::fs::set_permissions(&chain, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (status, log) = start_refused(&bus, &chain, &cache);
    assert!(!status.success());
    assert!(
        log.contains(&chain.display().to_string())
            && log.contains("mode 0777")
            && log.contains("chmod go-w"),
        "{log}"
    );
    std::fs::set_permissions(&chain, std::fs::Permissions::from_mode(0o750)).expect("chmod");

    if !common::is_root() {
        eprintln!("SKIP the uid 65534 case: needs root to chown");
        return;
    }
    nix::unistd::chown(&chain, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    let (status, log) = start_refused(&bus, &chain, &cache);
    assert!(!status.success());
    assert!(
        log.contains(&chain.display().to_string()) && log.contains("owned by uid 65534"),
        "{log}"
    );
}

/// A relative --chain-dir / --cache-dir would resolve against whatever directory the daemon
/// started in; the flags are refused like the same value in the environment is.
#[test]
fn a_relative_directory_flag_is_refused_with_a_reason() {
    for flag in ["--chain-dir", "--cache-dir"] {
        let output = Command::new(DAEMON)
            .args([flag, "relative/path"])
            .env_remove("NOTIFY_SOCKET")
            .output()
            .expect("run the daemon");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("expected an absolute path"),
            "{flag}: {stderr}"
        );
    }
}

/// A mistyped OPDBUS_* variable is not silently ignored: the log names it and the closest key.
#[test]
fn an_unknown_opdbus_variable_is_warned_about_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::start();
    let mut daemon = Daemon::start_with_env(
        &bus,
        &dir.path().join("chain"),
        &dir.path().join("cache"),
        &[("OPDBUS_SEGMNT_BYTES", "1")],
    );
    add(&bus, "a");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let log = daemon.log_text();
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("OPDBUS_SEGMNT_BYTES")
            && line.contains("did you mean OPDBUS_SEGMENT_BYTES")),
        "{log}"
    );
}
