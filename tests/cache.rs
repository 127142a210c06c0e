//! The block cache through the real daemon on a real private bus: dual write, CacheStats over
//! busctl and `opdbus-chain stats`, a read-only and a full cache filesystem, rebuild after
//! deletion, and repair of a damaged chain block from the cache.

mod common;

use common::*;
use opdbus_testkit::corpus;
use opdbus_testkit::tmpfs::Tmpfs;
use std::path::Path;
use std::time::Duration;

/// CacheStats over busctl, as a JSON object of plain values.
fn cache_stats(bus: &Bus) -> serde_json::Value {
    bus.call_dict("CacheStats").into()
}

fn stat(bus: &Bus, name: &str) -> u64 {
    cache_stats(bus)[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} is not a number"))
}

/// Waits until the cache holds every block up to `height` (no time limit is asserted; the
/// generous bound only keeps a broken build from hanging).
fn wait_for_cache(bus: &Bus, height: u64) {
    wait_until(Duration::from_secs(120), "the cache to catch up", || {
        cache_stats(bus)["complete_through"].as_i64() >= Some(height as i64)
    });
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

const WRITE_WARNING: &str = "cannot write to the block cache";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busctl_cache_stats_show_entries_hits_and_a_3x_ratio() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let _daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let added = add_corpus(&bus, 21, 400).await;
    let head = added.last().expect("added").0;
    assert_eq!(head, 400);
    wait_for_cache(&bus, head);

    let before = cache_stats(&bus);
    let connection = bus.connect().await;
    for (height, hash) in &added {
        let block = get_block(&connection, hash).await.expect("GetBlock");
        assert_eq!(block["height"], *height);
    }
    let after = cache_stats(&bus);
    eprintln!("CacheStats after 400 corpus footprints and 400 reads: {after}");
    for field in [
        "total_entries",
        "hot_entries",
        "disk_usage_bytes",
        "hits",
        "misses",
        "hit_rate",
        "compression_ratio",
        "write_failures",
        "evictions",
        "skipped_writes",
        "corrupt_dropped",
    ] {
        assert!(
            after.get(field).is_some(),
            "CacheStats lacks {field}: {after}"
        );
    }
    // Every block is in the cache: 400 lookups, 400 hits, no new miss.
    assert_eq!(
        after["hits"].as_u64(),
        before["hits"].as_u64().map(|h| h + 400)
    );
    assert_eq!(after["misses"], before["misses"]);
    assert_eq!(after["total_entries"], 401, "{after}");
    assert!(after["hot_entries"].as_u64() >= Some(400), "{after}");
    assert_eq!(after["write_failures"], 0);
    assert!(after["disk_usage_bytes"].as_u64() > Some(0));
    let ratio = after["compression_ratio"].as_f64().expect("ratio");
    assert!(ratio >= 3.0, "compression ratio {ratio}: {after}");
    assert!(after["hit_rate"].as_f64() > Some(0.0));

    let (code, out, err) = cli(&["stats", "--bus", &bus.address]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("total_entries"), "{out}");
    assert!(out.contains("compression_ratio"), "{out}");
    let (code, out, err) = cli(&["stats", "--json", "--bus", &bus.address]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("stats --json");
    assert_eq!(json["total_entries"], 401);
    assert_eq!(json["ok"], true);
    let (code, _, err) = cli(&["stats", "--bus", "nowhere"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a bus"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_cache_dir_still_acks_footprints_and_counts_failures() {
    if !is_root() {
        eprintln!("SKIP read_only_cache_dir…: needs root to mount a tmpfs");
        return;
    }
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    let fs = Tmpfs::mount(&cache_dir, "16m");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &cache_dir);
    add_corpus(&bus, 22, 10).await;
    wait_for_cache(&bus, 10);

    fs.remount("ro");
    let added = add_corpus(&bus, 23, 30).await;
    assert_eq!(added.last().expect("added").0, 40);
    wait_until(
        Duration::from_secs(60),
        "the failures to be counted",
        || stat(&bus, "write_failures") >= 30,
    );
    assert_eq!(stat(&bus, "total_entries"), 11);
    assert_eq!(cache_stats(&bus)["complete_through"], 10);
    // Blocks the cache could not store are served from the chain.
    let connection = bus.connect().await;
    for (height, hash) in &added {
        assert_eq!(
            get_block(&connection, hash).await.expect("GetBlock")["height"],
            *height
        );
    }
    let log = daemon.log_text();
    assert_eq!(
        count(&log, WRITE_WARNING),
        1,
        "one warning per burst:\n{log}"
    );
    assert!(log.contains("Read-only file system"), "{log}");

    // Writable again: the retry stores everything it missed.
    fs.remount("rw");
    wait_for_cache(&bus, 40);
    assert_eq!(stat(&bus, "total_entries"), 41);
    assert!(daemon.log_text().contains("cache writes work again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cache_filesystem_still_acks_footprints_and_recovers_when_space_returns() {
    if !is_root() {
        eprintln!("SKIP full_cache_filesystem…: needs root to mount a tmpfs");
        return;
    }
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    let _fs = Tmpfs::mount(&cache_dir, "1m");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &cache_dir);
    wait_for_cache(&bus, 0);
    // Fill the filesystem to the last byte.
    let filler = cache_dir.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0xa5u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
                    break;
                }
            }
        }
    }
    let added = add_corpus(&bus, 24, 40).await;
    assert_eq!(added.len(), 40, "every footprint is acknowledged");
    wait_until(
        Duration::from_secs(60),
        "the failures to be counted",
        || stat(&bus, "write_failures") >= 1 && stat(&bus, "queued_blocks") == 0,
    );
    let log = daemon.log_text();
    assert_eq!(
        count(&log, WRITE_WARNING),
        1,
        "one warning per burst:\n{log}"
    );
    assert!(log.contains("No space left on device"), "{log}");
    // The first few may fit in the room the pack's last allocated block had left.
    let through = cache_stats(&bus)["complete_through"]
        .as_i64()
        .expect("a number");
    assert!(through < 40, "complete_through {through}");

    std::fs::remove_file(&filler).expect("free the space");
    wait_for_cache(&bus, 40);
    assert_eq!(stat(&bus, "total_entries"), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_survives_restarts_and_is_rebuilt_when_deleted() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    let mut daemon = Daemon::start(&bus, &dir.path().join("chain"), &cache_dir);
    let added = add_corpus(&bus, 25, 30).await;
    wait_for_cache(&bus, 30);
    assert_eq!(daemon.stop().code(), Some(0));

    // Warm start: the entries are there and the newest blocks are in RAM at once.
    daemon.restart(&bus);
    wait_until(Duration::from_secs(60), "the entries to be counted", || {
        stat(&bus, "total_entries") == 31
    });
    wait_until(Duration::from_secs(60), "the pre-load", || {
        stat(&bus, "hot_entries") >= 31
    });
    assert_eq!(cache_stats(&bus)["complete_through"], 30);
    let connection = bus.connect().await;
    let before = stat(&bus, "hot_hits");
    for (_, hash) in &added {
        get_block(&connection, hash).await.expect("GetBlock");
    }
    assert_eq!(stat(&bus, "hot_hits"), before + 30);
    assert_eq!(stat(&bus, "misses"), 0);

    assert_eq!(daemon.stop().code(), Some(0));
    std::fs::remove_dir_all(&cache_dir).expect("delete the cache");
    daemon.restart(&bus);
    wait_for_cache(&bus, 30);
    assert_eq!(stat(&bus, "total_entries"), 31);
    assert!(cache_dir.join("packs").is_dir());
    for (height, hash) in &added {
        assert_eq!(
            get_block(&connection, hash).await.expect("GetBlock")["height"],
            *height
        );
    }
}

/// Offset in the segment file of the first occurrence of `needle`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("marker in the segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_from_the_cache_restores_damaged_chain_blocks() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let chain_dir = dir.path().join("chain");
    let cache_dir = dir.path().join("cache");
    let mut daemon = Daemon::start(&bus, &chain_dir, &cache_dir);
    let connection = bus.connect().await;
    let mut hashes = vec![String::new()];
    for i in 1..=20 {
        let data = format!(r#"{{"marker":"block-{i:02}-payload","interface":"eth0"}}"#);
        let (_, hash) = add_footprint(&connection, "network", "modify", &data)
            .await
            .expect("AddFootprint");
        hashes.push(hash);
    }
    wait_for_cache(&bus, 20);

    let segment = std::fs::read_dir(&chain_dir)
        .expect("chain dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "chain"))
        .expect("a segment");
    let damage = |marker: &str| {
        let mut bytes = std::fs::read(&segment).expect("segment");
        let at = find(&bytes, marker.as_bytes());
        bytes[at + 7] ^= 0x01; // a digit of the marker: still valid JSON, another hash
        std::fs::write(&segment, &bytes).expect("damage the segment");
    };
    // Damaged under the running daemon: GetBlock still answers, from the cache.
    damage("block-07-payload");
    let block = get_block(&connection, &hashes[7])
        .await
        .expect("served from the cache");
    assert_eq!(block["data"]["marker"], "block-07-payload");
    let (code, _, err) = cli(&[
        "verify",
        "--repair",
        "--chain-dir",
        path_str(&chain_dir),
        "--cache-dir",
        path_str(&cache_dir),
    ]);
    assert_eq!(code, 2, "the chain is in use: {err}");
    assert!(err.contains("in use"), "{err}");
    assert_eq!(daemon.stop().code(), Some(0));
    drop(daemon);

    damage("block-20-payload"); // the newest block: nothing links to it
    let (code, out, _) = cli(&["verify", "--chain-dir", path_str(&chain_dir)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("height 7"), "{out}");

    let (code, out, err) = cli(&[
        "verify",
        "--repair",
        "--chain-dir",
        path_str(&chain_dir),
        "--cache-dir",
        path_str(&cache_dir),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("repaired block at height 7"), "{out}");
    assert!(out.contains(&hashes[7]), "{out}");
    assert!(out.contains("repaired block at height 20"), "{out}");
    assert!(out.contains("chain is intact: 21 blocks checked"), "{out}");

    let (code, out, _) = cli(&["verify", "--chain-dir", path_str(&chain_dir)]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = cli(&["get", "7", "--chain-dir", path_str(&chain_dir)]);
    assert_eq!(code, 0);
    assert!(out.contains("block-07-payload"), "{out}");
    let (code, out, _) = cli(&["get", "7", "--json", "--chain-dir", path_str(&chain_dir)]);
    assert_eq!(code, 0);
    let block: serde_json::Value = serde_json::from_str(&out).expect("get --json");
    assert_eq!(block["height"], 7, "{out}");
    // Past the head: a JSON failure on stdout, the reason on stderr, exit 1.
    let (code, out, err) = cli(&["get", "99", "--json", "--chain-dir", path_str(&chain_dir)]);
    assert_eq!(code, 1, "{out}{err}");
    let failure: serde_json::Value = serde_json::from_str(&out).expect("get --json");
    assert_eq!(failure["ok"], false);
    assert!(
        failure["failure"]
            .as_str()
            .is_some_and(|f| f.contains("no block 99")),
        "{out}"
    );
    assert!(err.contains("no block 99"), "{err}");
}

#[test]
fn repair_without_a_cache_copy_says_so_and_fails() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let chain_dir = dir.path().join("chain");
    let mut daemon = Daemon::start(&bus, &chain_dir, &dir.path().join("cache"));
    for i in 1..=5 {
        let (ok, _, err) = bus.call(
            "AddFootprint",
            "sss",
            &[
                "network",
                "modify",
                &format!(r#"{{"marker":"only-{i}-here"}}"#),
            ],
        );
        assert!(ok, "{err}");
    }
    assert_eq!(daemon.stop().code(), Some(0));
    let segment = std::fs::read_dir(&chain_dir)
        .expect("chain dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "chain"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("segment");
    let at = find(&bytes, b"only-3-here");
    bytes[at] = b'X';
    std::fs::write(&segment, &bytes).expect("damage");
    let empty_cache = dir.path().join("other-cache");
    let (code, out, err) = cli(&[
        "verify",
        "--repair",
        "--chain-dir",
        path_str(&chain_dir),
        "--cache-dir",
        path_str(&empty_cache),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("height 3 could not be repaired"), "{err}");
    assert!(out.contains("NOT intact"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_cache_catches_up_with_every_acked_block() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let connection = bus.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for footprint in corpus::footprints(100 + task, 40) {
                acked.push(
                    add_footprint(
                        &connection,
                        &footprint.plugin_id,
                        &footprint.operation,
                        footprint.data_json(),
                    )
                    .await
                    .expect("AddFootprint"),
                );
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("task"));
    }
    // Killed while the cache thread may still be writing what the last commits handed it.
    daemon.kill9();
    daemon.restart(&bus);
    let head = acked.iter().map(|(h, _)| *h).max().expect("acked");
    assert_eq!(head, 320);
    wait_for_cache(&bus, head);
    let stats = cache_stats(&bus);
    assert_eq!(stats["total_entries"], head + 1, "{stats}");
    let connection = bus.connect().await;
    for (height, hash) in &acked {
        assert_eq!(
            get_block(&connection, hash).await.expect("GetBlock")["height"],
            *height
        );
    }
    assert_eq!(cache_stats(&bus)["misses"], 0);
}

#[test]
fn the_cache_thread_runs_at_idle_priority_and_the_writer_does_not() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    // Field 41 of /proc/PID/task/TID/stat is the scheduling policy: 5 = SCHED_IDLE, 0 = normal.
    let policy_of = |name: &str| -> u32 {
        let tasks = format!("/proc/{}/task", daemon.pid());
        let task = std::fs::read_dir(&tasks)
            .expect("the daemon's tasks")
            .filter_map(|entry| entry.ok())
            .find(|entry| {
                std::fs::read_to_string(entry.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == name)
            })
            .unwrap_or_else(|| panic!("a thread named {name}"));
        let stat = std::fs::read_to_string(task.path().join("stat")).expect("stat");
        // Fields after the parenthesised name, which may hold spaces.
        let after = &stat[stat.rfind(')').expect("comm end") + 2..];
        after
            .split(' ')
            .nth(41 - 3)
            .expect("policy field")
            .parse()
            .expect("a number")
    };
    wait_until(Duration::from_secs(10), "the cache thread", || {
        policy_of("block-cache") == 5
    });
    assert_eq!(policy_of("chain-writer"), 0);
}
