//! Unified snapshots, backups and restore through the real daemon on a private bus.
//!
//! `loop_*` tests need root and btrfs (loop-mounted images); without them they print
//! `SKIP: …` and pass. The fallback tests run anywhere.

mod common;

use common::*;
use opdbus_blockchain::btrfs;
use opdbus_blockchain::chain::verify::verify_dir;
use opdbus_blockchain::snapshot::backup::verify_backup;
use opdbus_blockchain::snapshot::{read_manifest, SnapshotMethod};
use opdbus_testkit::ssh::SshHost;
use opdbus_testkit::LoopBtrfs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `Snapshot()` over D-Bus: `[chain, cache]`.
async fn snapshot(connection: &zbus::Connection) -> zbus::Result<Vec<PathBuf>> {
    let reply = connection
        .call_method(Some(BUS_NAME), OBJECT_PATH, Some(BUS_NAME), "Snapshot", &())
        .await?;
    let paths: Vec<String> = reply.body().deserialize()?;
    Ok(paths.into_iter().map(PathBuf::from).collect())
}

async fn add_many(bus: &Bus, clients: usize, each: usize, data_len: usize) -> Vec<u64> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let connection = bus.connect().await;
        let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(data_len));
        tasks.push(tokio::spawn(async move {
            let mut heights = Vec::new();
            for i in 0..each {
                let (height, _) = add_footprint(
                    &connection,
                    &format!("client{client}"),
                    &format!("op{i}"),
                    &data,
                )
                .await
                .expect("AddFootprint during snapshots");
                heights.push(height);
            }
            heights
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all
}

/// Both sides of a snapshot hold exactly the manifest's height, and the chain is intact to it.
fn check_same_height(paths: &[PathBuf]) -> u64 {
    assert_eq!(paths.len(), 2, "{paths:?}");
    let (chain, cache) = (&paths[0], &paths[1]);
    assert_eq!(chain.parent(), cache.parent(), "one name for both");
    let chain_manifest = read_manifest(chain).expect("chain manifest");
    let cache_manifest = read_manifest(cache).expect("cache manifest");
    assert_eq!(chain_manifest.height, cache_manifest.height);
    assert_eq!(chain_manifest.head_hash, cache_manifest.head_hash);
    assert_eq!(chain_manifest.chain_id, cache_manifest.chain_id);
    // No `up_to`: a block past the barrier in the snapshot would show here.
    let report = verify_dir(chain, None, &mut |_| {}).expect("verify the snapshot");
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(report.torn_tail_bytes, 0);
    let (height, hash) = report.head.expect("a head");
    assert_eq!(height, chain_manifest.height);
    assert_eq!(hex::encode(hash), chain_manifest.head_hash);
    verify_backup(chain.parent().expect("snapshot dir")).expect("verifies as a backup would");
    chain_manifest.height
}

/// The log without terminal colour sequences (`ESC [ … m`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn pause_figures(log: &str) -> Vec<u64> {
    plain(log)
        .lines()
        .filter(|l| l.contains("unified snapshot taken"))
        .filter_map(|l| l.split("pause_us=").nth(1).map(str::to_owned))
        .filter_map(|rest| {
            let digits: String = rest
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_snapshot_under_concurrent_writes_holds_one_height_in_chain_and_cache() {
    let Some(fs) = LoopBtrfs::new(512) else {
        return;
    };
    let chain_dir = fs.path().join("blockchain");
    let cache_dir = fs.path().join("@cache");
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, &chain_dir, &cache_dir);
    assert!(
        btrfs::is_subvolume(&chain_dir),
        "chain dir made a subvolume"
    );
    assert!(
        btrfs::is_subvolume(&cache_dir),
        "cache dir made a subvolume"
    );

    let writers = {
        let address = bus.address.clone();
        tokio::spawn(async move {
            let bus_ref = BusRef(address);
            bus_ref.add_many(4, 60).await
        })
    };
    let connection = bus.connect().await;
    let mut taken = Vec::new();
    for _ in 0..4 {
        taken.push(snapshot(&connection).await.expect("Snapshot"));
    }
    let (code, stdout, stderr) = cli(&["snapshot", "--bus", &bus.address]);
    assert_eq!(code, 0, "{stderr}");
    taken.push(stdout.lines().map(PathBuf::from).collect());
    // Several at once (they are taken one after the other).
    let concurrent = futures_util::future::join_all((0..3).map(|_| snapshot(&connection))).await;
    for paths in concurrent {
        taken.push(paths.expect("concurrent Snapshot"));
    }
    let heights = writers.await.expect("writers");
    assert_eq!(heights.len(), 240, "every footprint acknowledged");

    for paths in &taken {
        check_same_height(paths);
        for path in paths {
            assert!(btrfs::is_subvolume(path), "{}", path.display());
            assert!(
                btrfs::is_readonly(path).expect("ro flag"),
                "{}",
                path.display()
            );
            let manifest = read_manifest(path).expect("manifest");
            assert_eq!(manifest.method, SnapshotMethod::BtrfsSnapshot);
            let err = std::fs::write(path.join("probe"), b"x").expect_err("read-only");
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        }
    }
    let final_height = bus_height(&bus);
    assert_eq!(final_height, 240);
    let pauses = pause_figures(&daemon.log_text());
    eprintln!("btrfs snapshot pause (µs) under 4 writing clients: {pauses:?}");
    // Those asked for after the last write are one snapshot, taken once.
    let distinct: std::collections::BTreeSet<&PathBuf> =
        taken.iter().map(|paths| &paths[0]).collect();
    assert_eq!(pauses.len(), distinct.len());
    assert!(
        pauses.iter().all(|&us| us > 0),
        "the pause is measured: {pauses:?}"
    );
}

/// The snapshot directories (not the staging or bookkeeping entries) in `dir`.
fn snapshot_names(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|name| !name.starts_with('.'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_a_snapshot_at_an_unchanged_height_returns_the_existing_one() {
    let Some(fs) = LoopBtrfs::new(512) else {
        return;
    };
    let chain_dir = fs.path().join("blockchain");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &chain_dir, &fs.path().join("@cache"));
    let connection = bus.connect().await;
    add_footprint(&connection, "network", "create", "{}")
        .await
        .expect("add");
    let first = snapshot(&connection).await.expect("Snapshot");
    assert!(btrfs::is_subvolume(&first[0]));
    // Past the second: a new snapshot would get a name of its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = snapshot(&connection).await.expect("Snapshot");
    assert_eq!(again, first, "no block since: the same snapshot");
    let (code, stdout, stderr) = cli(&["snapshot", "--bus", &bus.address]);
    assert_eq!(code, 0, "{stderr}");
    let by_cli: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert_eq!(by_cli, first);
    let (code, stdout, stderr) = cli(&["snapshot", "--json", "--bus", &bus.address]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("snapshot --json");
    assert_eq!(json["ok"], true);
    assert_eq!(json["chain"], first[0].to_str().expect("utf-8"));
    assert_eq!(json["cache"], first[1].to_str().expect("utf-8"));
    let name = first[0].parent().and_then(Path::file_name).expect("name");
    assert_eq!(json["name"], name.to_str().expect("utf-8"));
    let snapshots = fs.path().join(".snapshots");
    assert_eq!(snapshot_names(&snapshots).len(), 1, "one directory");

    // A block later, a new one.
    add_footprint(&connection, "network", "delete", "{}")
        .await
        .expect("add");
    let next = snapshot(&connection).await.expect("Snapshot");
    assert_ne!(next, first);
    assert_eq!(check_same_height(&next), check_same_height(&first) + 1);
    assert_eq!(snapshot_names(&snapshots).len(), 2);
}

/// A bus address that can move into a task.
struct BusRef(String);

impl BusRef {
    async fn add_many(&self, clients: usize, each: usize) -> Vec<u64> {
        let mut tasks = Vec::new();
        for client in 0..clients {
            let connection = zbus::connection::Builder::address(self.0.as_str())
                .expect("address")
                .build()
                .await
                .expect("connect");
            tasks.push(tokio::spawn(async move {
                let mut heights = Vec::new();
                for i in 0..each {
                    let (height, _) = add_footprint(
                        &connection,
                        &format!("client{client}"),
                        &format!("op{i}"),
                        "{\"k\":1}",
                    )
                    .await
                    .expect("AddFootprint during snapshots");
                    heights.push(height);
                }
                heights
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        all
    }
}

fn bus_height(bus: &Bus) -> u64 {
    let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, BUS_NAME, "Height"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("t ")
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("Height: {text}"))
}

/// Takes a snapshot through the CLI and backs it up; returns the backup line.
fn snapshot_and_backup(bus: &Bus, chain_dir: &Path, cache_dir: &Path, to: &Path) -> String {
    let (code, _, stderr) = cli(&["snapshot", "--bus", &bus.address]);
    assert_eq!(code, 0, "{stderr}");
    // The cache directory is the default one, @cache beside the chain directory.
    assert_eq!(cache_dir, chain_dir.with_file_name("@cache"));
    let (code, stdout, stderr) = cli(&[
        "backup",
        "--chain-dir",
        chain_dir.to_str().expect("utf-8"),
        "--to",
        to.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "backup failed: {stderr}");
    stdout
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_full_then_two_incremental_backups_verify_then_tamper_then_restore_continues() {
    let (Some(fs), Some(backup_fs)) = (LoopBtrfs::new(512), LoopBtrfs::new(512)) else {
        return;
    };
    let chain_dir = fs.path().join("blockchain");
    let cache_dir = fs.path().join("@cache");
    let target = backup_fs.path().join("opdbus");
    std::fs::create_dir(&target).expect("target dir");
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, &chain_dir, &cache_dir);

    add_many(&bus, 2, 20, 100).await;
    let full = snapshot_and_backup(&bus, &chain_dir, &cache_dir, &target);
    assert!(
        full.contains("(full)") && full.contains("verified"),
        "{full}"
    );
    add_many(&bus, 2, 20, 100).await;
    let second = snapshot_and_backup(&bus, &chain_dir, &cache_dir, &target);
    add_many(&bus, 2, 20, 100).await;
    let third = snapshot_and_backup(&bus, &chain_dir, &cache_dir, &target);

    let backups = names_in(&target);
    assert_eq!(backups.len(), 3, "{backups:?} (no .incoming left)");
    assert!(
        second.contains(&format!("incremental from {}", backups[0])),
        "{second}"
    );
    assert!(
        third.contains(&format!("incremental from {}", backups[1])),
        "{third}"
    );
    let mut heights = Vec::new();
    for name in &backups {
        let dir = target.join(name);
        for leaf in ["chain", "cache"] {
            assert!(btrfs::is_readonly(&dir.join(leaf)).expect("received subvolume"));
        }
        let (code, stdout, stderr) = cli(&["verify-backup", dir.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        heights.push(verify_backup(&dir).expect("verifies").height);
    }
    assert_eq!(heights, [40, 80, 120]);

    // Again with no new snapshot: nothing is sent, the copy is re-verified.
    let (code, stdout, _) = cli(&[
        "backup",
        "--chain-dir",
        chain_dir.to_str().expect("utf-8"),
        "--cache-dir",
        cache_dir.to_str().expect("utf-8"),
        "--to",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("already holds"), "{stdout}");
    let (code, stdout, stderr) = cli(&[
        "backup",
        "--json",
        "--chain-dir",
        chain_dir.to_str().expect("utf-8"),
        "--to",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("backup --json");
    assert_eq!(report["ok"], true);
    assert_eq!(report["name"], backups[2].as_str());
    assert_eq!(report["already_there"], true);
    assert_eq!(report["full"], serde_json::Value::Null, "nothing sent");
    assert_eq!(report["verified"]["height"], 120);
    let (code, stdout, stderr) = cli(&[
        "verify-backup",
        "--json",
        target.join(&backups[2]).to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let verified: serde_json::Value = serde_json::from_str(&stdout).expect("verify-backup --json");
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["height"], 120);
    assert_eq!(verified["blocks_checked"], 121);

    // Tamper with the newest backup: one byte of a footprint's data in the chain.
    let tampered = target.join(&backups[2]);
    let tampered_chain = tampered.join("chain");
    let out = std::process::Command::new("btrfs")
        .args(["property", "set", "-f", "-ts"])
        .arg(&tampered_chain)
        .args(["ro", "false"])
        .output()
        .expect("btrfs property set");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let segment = std::fs::read_dir(&tampered_chain)
        .expect("read")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "chain"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    // The middle of the records: the segment runs on into free space (zeros) after them.
    let at = opdbus_blockchain::chain::segment::trailing_zeros_start(&bytes) / 2;
    let at = at
        + bytes[at..]
            .iter()
            .position(|&b| b == b'x')
            .expect("padding byte");
    bytes[at] = b'y';
    std::fs::write(&segment, &bytes).expect("tamper");
    let (code, stdout, _) = cli(&["verify-backup", tampered.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("does NOT verify"), "{stdout}");
    let (code, stdout, stderr) =
        cli(&["verify-backup", "--json", tampered.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{stdout}");
    let failed: serde_json::Value = serde_json::from_str(&stdout).expect("verify-backup --json");
    assert_eq!(failed["ok"], false);
    assert!(
        failed["failure"]
            .as_str()
            .is_some_and(|f| f.contains("does NOT verify")),
        "{stdout}"
    );
    assert!(stderr.contains("does NOT verify"), "{stderr}");
    let restored_chain = fs.path().join("restored");
    let restored_cache = fs.path().join("restored-cache");
    let (code, stdout, stderr) = cli(&[
        "restore",
        "--json",
        "--from",
        tampered.to_str().expect("utf-8"),
        "--chain-dir",
        restored_chain.to_str().expect("utf-8"),
        "--cache-dir",
        restored_cache.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("nothing was restored"), "{stderr}");
    let failed: serde_json::Value = serde_json::from_str(&stdout).expect("restore --json");
    assert_eq!(failed["ok"], false, "{stdout}");
    assert!(!restored_chain.exists() && !restored_cache.exists());

    // Restore the intact second backup and continue the chain from it.
    daemon.stop();
    let (code, stdout, stderr) = cli(&[
        "restore",
        "--json",
        "--from",
        target.join(&backups[1]).to_str().expect("utf-8"),
        "--chain-dir",
        restored_chain.to_str().expect("utf-8"),
        "--cache-dir",
        restored_cache.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let restored: serde_json::Value = serde_json::from_str(&stdout).expect("restore --json");
    assert_eq!(restored["ok"], true, "{stdout}");
    assert_eq!(restored["height"], 80, "{stdout}");
    assert_eq!(restored["chain_subvolume"], true, "{stdout}");
    assert!(btrfs::is_subvolume(&restored_chain));
    assert!(
        !btrfs::is_readonly(&restored_chain).expect("flag"),
        "writable"
    );
    let _daemon = Daemon::start(&bus, &restored_chain, &restored_cache);
    let connection = bus.connect().await;
    let (height, _) = add_footprint(&connection, "network", "create", "{\"after\":\"restore\"}")
        .await
        .expect("AddFootprint after restore");
    assert_eq!(height, 81);
    let (code, stdout, _) = cli(&[
        "verify",
        "--chain-dir",
        restored_chain.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("height 81"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_failed_receive_leaves_nothing_counted_and_a_command_target_works() {
    let (Some(fs), Some(backup_fs)) = (LoopBtrfs::new(512), LoopBtrfs::new(512)) else {
        return;
    };
    let chain_dir = fs.path().join("blockchain");
    let cache_dir = fs.path().join("@cache");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &chain_dir, &cache_dir);
    // About 10 MB of chain, more than the full target below has room for.
    add_many(&bus, 4, 50, 50_000).await;
    let (code, _, stderr) = cli(&["snapshot", "--bus", &bus.address]);
    assert_eq!(code, 0, "{stderr}");
    let dirs = [
        "--chain-dir",
        chain_dir.to_str().expect("utf-8"),
        "--cache-dir",
        cache_dir.to_str().expect("utf-8"),
    ];
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup"];
        args.extend_from_slice(&dirs);
        args.extend_from_slice(extra);
        cli(&args)
    };

    // A receiver that dies half-way: a clear error, no record of a backup.
    let (code, _, stderr) = backup(&[
        "--to-command",
        "sh -c 'head -c 100 >/dev/null; exit 3' {name}",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exit status: 3"), "{stderr}");
    assert!(!fs.path().join(".snapshots/.backup-parents.json").exists());

    // Not btrfs: refused before anything is sent.
    let plain = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = backup(&["--to", plain.path().to_str().expect("utf-8")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not a directory on a btrfs filesystem"),
        "{stderr}"
    );
    assert_eq!(names_in(plain.path()), Vec::<String>::new());

    // A full target: the half-received copy is removed, no snapshot name appears.
    let target = backup_fs.path().join("opdbus");
    std::fs::create_dir(&target).expect("target");
    let filler = backup_fs.path().join("filler");
    fill_up(&filler);
    let (code, _, stderr) = backup(&["--to", target.to_str().expect("utf-8")]);
    assert_eq!(code, 2, "a full target must fail: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert_eq!(
        names_in(&target),
        Vec::<String>::new(),
        "nothing left, nothing counted"
    );
    std::fs::remove_file(&filler).expect("free the space");
    let out = std::process::Command::new("btrfs")
        .args(["filesystem", "sync"])
        .arg(backup_fs.path())
        .output()
        .expect("btrfs filesystem sync");
    assert!(out.status.success());

    // Through a command (no shell in between; the test's command uses sh on purpose).
    let command = format!(
        "sh -c 'mkdir -p \"$1\" && exec btrfs receive \"$1\"' receiver {}/{{name}}",
        target.display()
    );
    let (code, stdout, stderr) = backup(&["--to-command", &command]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(full)"), "{stdout}");
    let names = names_in(&target);
    assert_eq!(names.len(), 1, "{names:?}");
    let (code, stdout, _) = cli(&[
        "verify-backup",
        target.join(&names[0]).to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stdout}");
    let record = std::fs::read_to_string(fs.path().join(".snapshots/.backup-parents.json"))
        .expect("backup parents recorded");
    assert!(record.contains(&names[0]), "{record}");
}

/// Leaves at most a few MB free on the filesystem of `file`.
fn fill_up(file: &Path) {
    let stat = nix::sys::statvfs::statvfs(file.parent().expect("parent")).expect("statvfs");
    let avail = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    for slack_mb in [1u64, 2, 4, 8, 16, 32] {
        let len = avail.saturating_sub(slack_mb << 20);
        let ok = std::process::Command::new("fallocate")
            .args(["-l", &len.to_string()])
            .arg(file)
            .status()
            .expect("fallocate")
            .success();
        if ok {
            return;
        }
    }
    panic!("cannot fill up {}", file.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_without_btrfs_hard_links_sealed_segments_and_cuts_the_open_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    if btrfs::is_btrfs(dir.path()) {
        eprintln!(
            "SKIP: the temporary directory is on btrfs; the fallback needs another filesystem"
        );
        return;
    }
    let chain_dir = dir.path().join("blockchain");
    let cache_dir = dir.path().join("@cache");
    let bus = Bus::start();
    let mut daemon = Daemon::start_with_env(
        &bus,
        &chain_dir,
        &cache_dir,
        &[("OPDBUS_SEGMENT_BYTES", "65536")],
    );
    add_many(&bus, 2, 60, 1000).await;
    let writers = {
        let address = bus.address.clone();
        tokio::spawn(async move { BusRef(address).add_many(2, 200).await })
    };
    let connection = bus.connect().await;
    let paths = snapshot(&connection).await.expect("Snapshot");
    writers.await.expect("writers");
    if is_root() {
        // An ordinary user may not take snapshots (the bus policy already refuses).
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "dbus-send",
            ])
            .arg(format!("--bus={}", bus.address))
            .arg("--print-reply")
            .arg(format!("--dest={BUS_NAME}"))
            .arg(OBJECT_PATH)
            .arg(format!("{BUS_NAME}.Snapshot"))
            .output()
            .expect("setpriv dbus-send");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("AccessDenied"), "{stderr}");
    }
    let height = check_same_height(&paths);
    for path in &paths {
        assert_eq!(
            read_manifest(path).expect("manifest").method,
            SnapshotMethod::HardlinkCopy
        );
    }
    let segments: Vec<PathBuf> = std::fs::read_dir(&paths[0])
        .expect("read")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "chain"))
        .collect();
    assert!(segments.len() >= 2, "sealed segments exist: {segments:?}");
    let mut linked = 0;
    for segment in &segments {
        let live = chain_dir.join(segment.file_name().expect("name"));
        let same = std::fs::metadata(segment).expect("meta").ino()
            == std::fs::metadata(&live).expect("live").ino();
        linked += usize::from(same);
    }
    assert_eq!(
        linked,
        segments.len() - 1,
        "sealed segments hard-linked, the open one copied"
    );
    // The writers may all have finished before the barrier (the write path is fast): one more
    // footprint shows that writes go on past it.
    add_many(&bus, 1, 1, 100).await;
    assert!(bus_height(&bus) > height, "writes went on past the barrier");
    let pauses = pause_figures(&daemon.log_text());
    eprintln!("hard-link fallback pause (µs) under 2 writing clients: {pauses:?}");
    assert_eq!(pauses.len(), 1);

    // Not btrfs: backup refuses with the reason.
    let (code, _, stderr) = cli(&[
        "backup",
        "--chain-dir",
        chain_dir.to_str().expect("utf-8"),
        "--cache-dir",
        cache_dir.to_str().expect("utf-8"),
        "--to",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not a btrfs snapshot"), "{stderr}");

    // A hard-link snapshot restores as plain directories, and the chain continues.
    daemon.stop();
    let restored = dir.path().join("restored");
    let (code, stdout, stderr) = cli(&[
        "restore",
        "--from",
        paths[0].parent().expect("dir").to_str().expect("utf-8"),
        "--chain-dir",
        restored.join("chain").to_str().expect("utf-8"),
        "--cache-dir",
        restored.join("cache").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("plain directory"), "{stdout}");
    let _daemon = Daemon::start(&bus, &restored.join("chain"), &restored.join("cache"));
    let connection = bus.connect().await;
    let (next, _) = add_footprint(&connection, "p", "o", "{}")
        .await
        .expect("add");
    assert_eq!(next, height + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_snapshot_is_taken_when_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain_dir = dir.path().join("blockchain");
    let bus = Bus::start();
    let _daemon = Daemon::start_with_env(
        &bus,
        &chain_dir,
        &dir.path().join("@cache"),
        &[("OPDBUS_SNAPSHOT_INTERVAL", "every-1-minutes")],
    );
    let snapshots = dir.path().join(".snapshots");
    // The first scheduled snapshot is due at start.
    wait_until(
        Duration::from_secs(30),
        "the first scheduled snapshot",
        || {
            std::fs::read_dir(&snapshots).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
            })
        },
    );
    let names = snapshot_names(&snapshots);
    let name = names.first().expect("one");
    assert!(verify_backup(&snapshots.join(name)).is_ok());
    // No block since the scheduled one: asking for a snapshot returns it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let connection = bus.connect().await;
    let paths = snapshot(&connection).await.expect("Snapshot");
    assert_eq!(paths[0], snapshots.join(name).join("chain"));
    assert_eq!(snapshot_names(&snapshots), names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_backup_over_ssh_to_a_host_in_a_network_namespace() {
    let (Some(fs), Some(backup_fs)) = (LoopBtrfs::new(512), LoopBtrfs::new(512)) else {
        return;
    };
    let Some(host) = SshHost::start() else {
        return;
    };
    let chain_dir = fs.path().join("blockchain");
    let remote_dir = backup_fs.path().join("srv-opdbus");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &chain_dir, &fs.path().join("@cache"));
    let command = host.receive_command(&remote_dir);
    let mut received = Vec::new();
    for round in 0..2 {
        add_many(&bus, 2, 10, 200).await;
        let (code, _, stderr) = cli(&["snapshot", "--bus", &bus.address]);
        assert_eq!(code, 0, "{stderr}");
        let (code, stdout, stderr) = cli(&[
            "backup",
            "--chain-dir",
            chain_dir.to_str().expect("utf-8"),
            "--to-command",
            &command,
        ]);
        assert_eq!(code, 0, "backup over ssh: {stderr}");
        let names = names_in(&remote_dir);
        assert_eq!(names.len(), round + 1, "{names:?}");
        if round == 1 {
            assert!(
                stdout.contains(&format!("incremental from {}", names[0])),
                "{stdout}"
            );
        }
        received = names;
    }
    for name in &received {
        let verified = verify_backup(&remote_dir.join(name)).expect("the copy over ssh verifies");
        assert!(verified.height >= 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_newest_and_backup_parents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain_dir = dir.path().join("blockchain");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &chain_dir, &dir.path().join("@cache"));
    let connection = bus.connect().await;
    let mut names = Vec::new();
    for i in 0..4 {
        add_footprint(&connection, "p", "o", &format!("{{\"i\":{i}}}"))
            .await
            .expect("add");
        let paths = snapshot(&connection).await.expect("Snapshot");
        let name = paths[0]
            .parent()
            .and_then(Path::file_name)
            .expect("name")
            .to_string_lossy()
            .into_owned();
        names.push(name);
    }
    let snapshots = dir.path().join(".snapshots");
    std::fs::write(
        snapshots.join(".backup-parents.json"),
        format!("{{\"dir:/mnt/backup\": \"{}\"}}\n", names[1]),
    )
    .expect("a backup target's parent");
    let prune = |extra: &[&str]| {
        let mut args = vec![
            "prune",
            "--chain-dir",
            chain_dir.to_str().expect("utf-8"),
            "--hourly",
            "0",
            "--daily",
            "0",
            "--weekly",
            "0",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let (code, stdout, stderr) = prune(&["--dry-run", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("prune --json");
    assert_eq!(plan["ok"], true);
    assert_eq!(plan["dry_run"], true);
    let kept: Vec<&str> = plan["keep"]
        .as_array()
        .expect("keep")
        .iter()
        .filter_map(|kept| kept["name"].as_str())
        .collect();
    assert_eq!(kept, [names[3].as_str(), names[1].as_str()], "{stdout}");
    assert_eq!(plan["keep"][0]["reasons"][0], "newest", "{stdout}");
    assert_eq!(
        plan["delete"],
        serde_json::json!([names[0], names[2]]),
        "{stdout}"
    );
    assert_eq!(plan["failed"], serde_json::json!([]));
    let (code, stdout, stderr) = prune(&["--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("keep    {}  (newest)", names[3])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("keep    {}  (pinned", names[1])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("would delete  {}", names[0])),
        "{stdout}"
    );
    assert_eq!(
        names_in(&snapshots)
            .iter()
            .filter(|n| !n.starts_with('.'))
            .count(),
        4
    );

    let (code, stdout, stderr) = prune(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("deleted  {}", names[2])),
        "{stdout}"
    );
    let left: Vec<String> = names_in(&snapshots)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(left, [names[1].clone(), names[3].clone()]);
}
