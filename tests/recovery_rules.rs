//! Recovery never deletes a complete, valid record, and start-up and `opdbus-chain verify`
//! apply the same rules: on the real daemon binary and the real CLI.
//! - a zeroed header of the newest segment (records behind it) stops start-up naming the
//!   segment, and verify names it too;
//! - an interrupted creation (0 bytes, 20 bytes of a header, all zeros) is removed at start
//!   with a warning and reported, not as corruption, by verify;
//! - a decreasing timestamp (hashes recomputed) fails verify at its height;
//! - a block an older writer stored that breaks only today's writer rules (a space in an
//!   operation name) is no corruption: the daemon starts on it, also after its index is
//!   deleted, and verify (CLI, D-Bus, tools/verify-chain.py) says intact with a warning; data
//!   that is not JSON (a hard rule) stops start-up naming the height and fails verify;
//! - segments pass OPDBUS_SEGMENT_BYTES by at most one record, also under concurrent writes;
//! - verify streams: a ~110 MB segment costs it a few MB of memory, not the segment's size.

mod common;

use common::{add_footprint, cli, Bus, Daemon, DAEMON};
use opdbus_blockchain::chain::block::{Block, Caller};
use opdbus_blockchain::chain::segment::{self, HEADER_LEN};
use opdbus_blockchain::chain::store::{self, StoreOptions};
use opdbus_blockchain::PluginFootprint;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A chain of 1 + `blocks` blocks over segments of `segment_bytes`, written by the library.
fn make_chain(chain: &Path, blocks: usize, pad: usize, segment_bytes: u64) {
    let (mut writer, _, _) = store::open(chain, StoreOptions { segment_bytes }).expect("open");
    for start in (0..blocks).step_by(20) {
        let batch: Vec<_> = (start..blocks.min(start + 20))
            .map(|i| {
                let data = serde_json::json!({"i": i, "pad": "r".repeat(pad)});
                (
                    PluginFootprint::new("recovery", "write", data),
                    Caller::this_process(),
                )
            })
            .collect();
        writer.append(&batch).expect("append");
    }
}

fn newest_segment(chain: &Path) -> PathBuf {
    segment::list(chain)
        .expect("list")
        .pop()
        .expect("segment")
        .1
}

fn head(chain: &Path) -> u64 {
    store::open_read_only(chain).expect("read").head().0
}

/// `tools/verify-chain.py` (the verifier written from docs/format.md alone): exit code and
/// output.
fn independent_verify(chain: &Path) -> (i32, String) {
    let out = Command::new("python3")
        .arg(common::repo_path("tools/verify-chain.py"))
        .arg(chain)
        .output()
        .expect("python3 must be installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs the daemon on `chain` until it exits by itself (at most 30 s); returns its exit code
/// and its log.
fn daemon_start_up_fails(bus: &Bus, chain: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(DAEMON)
        .arg("--bus")
        .arg(&bus.address)
        .arg("--chain-dir")
        .arg(chain)
        .arg("--cache-dir")
        .arg(chain.with_extension("cache"))
        .env_remove("NOTIFY_SOCKET")
        .env("OPDBUS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon kept running on a damaged chain");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read the log");
    (status.code(), log)
}

#[test]
fn a_zeroed_header_stops_the_daemon_naming_the_segment_and_verify_names_it_too() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    make_chain(&chain, 400, 300, 64 * 1024);
    let newest = newest_segment(&chain);
    let name = newest
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let mut bytes = std::fs::read(&newest).expect("read");
    let first = segment::parse_file_name(&name).expect("segment name");
    assert!(
        head(&chain) > first + 50,
        "the newest segment holds many blocks"
    );
    bytes[..HEADER_LEN].fill(0);
    std::fs::write(&newest, &bytes).expect("zero the header");

    let (code, log) = daemon_start_up_fails(&bus, &chain);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}:\n{log}");
    assert!(log.contains(&name), "the log names the segment:\n{log}");
    assert!(!log.contains("removing"), "{log}");
    assert_eq!(
        std::fs::read(&newest).expect("the segment is still there"),
        bytes,
        "start-up changed nothing"
    );

    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("NOT intact") && out.contains(&name), "{out}");
    let (code, out) = independent_verify(&chain);
    assert!(
        code == 1 && out.starts_with(&format!("bad {first} ")),
        "{out}"
    );
}

#[test]
fn an_interrupted_creation_is_removed_by_the_daemon_and_reported_alike_by_verify() {
    let bus = Bus::start();
    for (what, contents) in [
        ("0 bytes", 0),
        ("20 bytes of its header", 20),
        ("8 KiB of zeros", 8192),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        make_chain(&chain, 100, 300, 64 * 1024);
        let head = head(&chain);
        let header = segment::encode_header(
            head + 1,
            &store::open_read_only(&chain).expect("read").chain_id(),
        );
        let new = chain.join(segment::file_name(head + 1));
        let bytes = match contents {
            20 => header[..20].to_vec(),
            n => vec![0; n],
        };
        std::fs::write(&new, &bytes).expect("write the new segment");
        let new_name = new
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();

        let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
        assert_eq!(code, 0, "{what}: {out}{err}");
        assert!(
            out.contains("chain is intact")
                && out.contains(&new_name)
                && out.contains("interrupted"),
            "{what}: {out}"
        );

        let (code, out) = independent_verify(&chain);
        assert!(
            code == 0 && out.contains(&format!("interrupted-creation {new_name}")),
            "{what}: {out}"
        );

        let mut daemon = Daemon::start(&bus, &chain, &dir.path().join("cache"));
        assert!(!new.exists(), "{what}: start-up removes it");
        assert!(
            daemon.log_text().contains("creation was interrupted"),
            "{what}: {}",
            daemon.log_text()
        );
        daemon.stop();
        let (code, out, _) = cli(&["verify", "--chain-dir", text(&chain)]);
        assert_eq!(code, 0, "{what}: {out}");
        assert!(
            out.contains(&format!("head at height {head} ")) && !out.contains("interrupted"),
            "{what}: {out}"
        );
    }
}

#[test]
fn a_decreasing_timestamp_fails_verify_at_its_height() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    make_chain(&chain, 6, 10, 64 * 1024 * 1024);
    let reader = store::open_read_only(&chain).expect("read");
    let blocks: Vec<Block> = (0..=reader.head().0)
        .map(|h| reader.block_at(h).expect("read").expect("present"))
        .collect();
    drop(reader);
    // Rewrite the chain consistently (every hash recomputed), with time running backwards at
    // height 4: only the timestamp rule can find it.
    let path = newest_segment(&chain);
    let mut bytes = std::fs::read(&path).expect("read")[..HEADER_LEN].to_vec();
    let mut prev = blocks[0].hash;
    segment::encode_record(&blocks[0], &mut bytes);
    for block in &blocks[1..] {
        let timestamp = if block.height == 4 {
            blocks[3].timestamp_ns - 1
        } else {
            block.timestamp_ns
        };
        let rewritten = Block::new(
            block.height,
            timestamp,
            prev,
            block.caller.clone(),
            block.plugin.clone(),
            block.operation.clone(),
            block.data.clone(),
        );
        segment::encode_record(&rewritten, &mut bytes);
        prev = rewritten.hash;
    }
    std::fs::write(&path, &bytes).expect("write");
    let _ = std::fs::remove_file(chain.join("index"));

    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("first bad block at height 4") && out.contains("earlier"),
        "{out}"
    );
    let (code, out) = independent_verify(&chain);
    assert!(code == 1 && out.starts_with("bad 4 timestamp"), "{out}");
}

/// Rewrites the chain in `chain` (one segment) consistently, every hash recomputed, with
/// block `height`'s fields replaced by `fields`: as an older writer (or a forger) wrote it.
fn rewrite_block(chain: &Path, height: u64, fields: (&str, &str, &str)) {
    let reader = store::open_read_only(chain).expect("read");
    let blocks: Vec<Block> = (0..=reader.head().0)
        .map(|h| reader.block_at(h).expect("read").expect("present"))
        .collect();
    drop(reader);
    let path = newest_segment(chain);
    let mut bytes = std::fs::read(&path).expect("read")[..HEADER_LEN].to_vec();
    let mut prev = blocks[0].hash;
    segment::encode_record(&blocks[0], &mut bytes);
    for block in &blocks[1..] {
        let (plugin, operation, data) = if block.height == height {
            (fields.0.into(), fields.1.into(), fields.2.into())
        } else {
            (
                block.plugin.clone(),
                block.operation.clone(),
                block.data.clone(),
            )
        };
        let rewritten = Block::new(
            block.height,
            block.timestamp_ns,
            prev,
            block.caller.clone(),
            plugin,
            operation,
            data,
        );
        segment::encode_record(&rewritten, &mut bytes);
        prev = rewritten.hash;
    }
    std::fs::write(&path, &bytes).expect("write");
}

#[test]
fn a_block_breaking_only_writer_rules_is_served_and_verified_with_a_warning() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let cache = dir.path().join("cache");
    make_chain(&chain, 6, 10, 64 * 1024 * 1024);
    // What the previous writer stored for a systemd unit: a space and a backslash.
    let operation = "restart dev-disk-by\\x2duuid-1.device";
    rewrite_block(&chain, 3, ("systemd", operation, r#"{"unit":"x"}"#));
    // As after a power cut: the index is rebuilt, so start-up scans every block.
    let _ = std::fs::remove_file(chain.join("index"));

    let mut daemon = Daemon::start(&bus, &chain, &cache);
    let (ok, out, err) = bus.call("AddFootprint", "sss", &["network", "create", "{}"]);
    assert!(ok, "{out}{err}");
    let (ok, verify, err) = bus.call("Verify", "", &[]);
    assert!(ok, "{err}");
    assert!(
        verify.starts_with("bts true 8 ")
            && verify.contains("warning: 1 block breaks rules the writer enforces now (first at height 3: operation contains U+0020 SPACE"),
        "{verify}"
    );
    daemon.stop();
    // Once more without the index, with the new block after the old one.
    let _ = std::fs::remove_file(chain.join("index"));
    daemon.restart(&bus);
    assert_eq!(head(&chain), 7);
    drop(daemon);

    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("chain is intact: 8 blocks checked")
            && out.contains(
                "warning: 1 block breaks rules the writer enforces now (first at height 3"
            ),
        "{out}"
    );
    let (code, out) = independent_verify(&chain);
    assert!(
        code == 0
            && out.starts_with("intact 8 7 ")
            && out.contains(" warning 1 3 operation holds U+0020"),
        "{out}"
    );
}

#[test]
fn data_that_is_not_json_stops_start_up_at_its_height_and_fails_verify() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    make_chain(&chain, 6, 10, 64 * 1024 * 1024);
    rewrite_block(&chain, 3, ("network", "create", "{not json"));
    let _ = std::fs::remove_file(chain.join("index"));

    let (code, log) = daemon_start_up_fails(&bus, &chain);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {log}");
    assert!(
        log.contains("height 3") && log.contains("not valid JSON"),
        "{log}"
    );
    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("first bad block at height 3") && out.contains("not valid JSON"),
        "{out}"
    );
    let (code, out) = independent_verify(&chain);
    assert!(
        code == 1 && out.starts_with("bad 3 data is not valid JSON"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_never_take_a_segment_past_its_size_by_more_than_one_record() {
    const SEGMENT_BYTES: u64 = 64 * 1024;
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let mut daemon = Daemon::start_with_env(
        &bus,
        &chain,
        &dir.path().join("cache"),
        &[("OPDBUS_SEGMENT_BYTES", "65536")],
    );
    let connection = bus.connect().await;
    // 8 KB footprints from 48 callers at once: group commits of many records each, so a
    // batch is larger than a segment.
    let mut tasks = Vec::new();
    for client in 0..48 {
        let connection = connection.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..8 {
                let data = format!(r#"{{"c":{client},"i":{i},"pad":"{}"}}"#, "s".repeat(8000));
                add_footprint(&connection, "size", "write", &data)
                    .await
                    .expect("AddFootprint");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    daemon.stop();
    let listed = segment::list(&chain).expect("list");
    let last = head(&chain);
    assert_eq!(last, 48 * 8);
    assert!(listed.len() > 40, "{} segments", listed.len());
    for (i, (first, path)) in listed.iter().enumerate() {
        let size = std::fs::metadata(path).expect("stat").len();
        // The newest segment runs on into free space (zeros) the writer extended it by.
        let len = segment::trailing_zeros_start(&std::fs::read(path).expect("read")) as u64;
        let next = listed.get(i + 1).map_or(last + 1, |(f, _)| *f);
        if i + 1 < listed.len() {
            assert_eq!(size, len, "sealed {} is cut to its data", path.display());
        }
        assert!(
            len <= SEGMENT_BYTES || next - first == 1,
            "{} is {len} bytes, {} records",
            path.display(),
            next - first
        );
    }
    let (code, out, _) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 0, "{out}");
}

/// Peak resident memory (VmHWM, KiB) of `opdbus-chain verify` on `chain`, with its exit
/// code and output. VmHWM only grows, so the last reading before the process ends holds the
/// peak of everything before it.
fn verify_peak_kib(chain: &Path) -> (i32, String, u64) {
    let mut child = Command::new(common::CLI)
        .args(["verify", "--chain-dir", text(chain)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run opdbus-chain");
    let mut stdout = child.stdout.take().expect("stdout");
    let output = std::thread::spawn(move || {
        let mut out = String::new();
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = output.join().expect("output");
    (status.code().unwrap_or(-1), out, peak)
}

#[test]
fn verify_of_a_110_mb_segment_keeps_its_memory_small() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    // ~10 MB of records, all in one segment...
    make_chain(&chain, 250, 40_000, 1 << 30);
    let path = newest_segment(&chain);
    // ...and ~100 MB of zeros after them, free space: verify must look at all of it to tell
    // free space from data after zeros (damage).
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..100 {
        file.write_all(&zeros).expect("extend");
    }
    drop(file);
    let size = std::fs::metadata(&path).expect("stat").len();
    assert!(size > 110_000_000, "{size} bytes");

    let (code, out, peak_kib) = verify_peak_kib(&chain);
    eprintln!("verify peaked at {peak_kib} KiB on a {size}-byte segment");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("head at height 250") && !out.contains("unacknowledged"),
        "{out}"
    );
    // Reading the segment whole would take more than 110 MB; streaming holds one record and
    // a buffer on top of the program itself.
    assert!(
        peak_kib < 40 * 1024,
        "verify peaked at {peak_kib} KiB on a {size}-byte segment"
    );
}
