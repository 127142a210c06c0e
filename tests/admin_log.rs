//! Finding and following events as an admin does: `opdbus-chain log` (and its alias `tail`),
//! `report`, and the `Query` D-Bus method, run as the real binaries on chains whose blocks
//! have known times and callers (written with the testkit's ChainBuilder, as the daemon lays
//! them out) and on chains a real daemon on a private bus writes.

mod common;

use common::*;
use opdbus_blockchain::chain::block::Caller;
use opdbus_blockchain::chain::segment;
use opdbus_blockchain::snapshot::utc::UtcDateTime;
use opdbus_testkit::chain_files::ChainBuilder;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use zbus::zvariant::Value;

const SEC: u64 = 1_000_000_000;
/// Blocks after genesis in the fixture: one every 30 minutes from T0, so 48 a day.
const BLOCKS: u64 = 200;

/// 2026-11-20 00:00:00 UTC, the fixture's genesis time.
fn t0() -> u64 {
    let t = UtcDateTime {
        year: 2026,
        month: 11,
        day: 20,
        hour: 0,
        minute: 0,
        second: 0,
    };
    t.to_unix().expect("valid date") as u64 * SEC
}

fn plugin_of(h: u64) -> &'static str {
    ["network", "systemd", "firewall"][(h % 3) as usize]
}

fn caller_of(h: u64) -> Caller {
    let (uid, unit) = if h.is_multiple_of(4) {
        (1000, "user@1000.service")
    } else {
        (0, "op-dbus.service")
    };
    Caller {
        uid: Some(uid),
        pid: Some(4000 + h as u32),
        bus_name: format!(":1.{h}"),
        unit: unit.into(),
    }
}

/// Writes the fixture chain: block h at T0 + h × 30 min, plugin by h % 3, operation create
/// (even h) or delete, uid 1000 in user@1000.service when 4 divides h, else uid 0 in
/// op-dbus.service.
fn build(dir: &Path, blocks: u64, segment_bytes: u64) {
    let mut builder = ChainBuilder::create(dir, t0(), segment_bytes).expect("create chain");
    for h in 1..=blocks {
        builder
            .push(
                t0() + h * 1800 * SEC,
                caller_of(h),
                plugin_of(h),
                if h % 2 == 0 { "create" } else { "delete" },
                &format!(r#"{{"h":{h}}}"#),
            )
            .expect("push");
    }
    builder.finish().expect("finish");
}

struct Fixture {
    _dir: tempfile::TempDir,
    chain: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        build(&chain, BLOCKS, 8 * 1024);
        assert!(segment::list(&chain).expect("list").len() > 3);
        Fixture { _dir: dir, chain }
    })
}

fn chain_arg() -> String {
    fixture().chain.to_str().expect("utf-8").to_owned()
}

/// `opdbus-chain <args> --chain-dir <fixture>`; panics unless it exits 0.
fn run(args: &[&str]) -> String {
    let chain = chain_arg();
    let mut all = args.to_vec();
    all.extend(["--chain-dir", &chain]);
    let (code, out, err) = cli(&all);
    assert_eq!(code, 0, "opdbus-chain {args:?}: {err}");
    out
}

/// The blocks `log … -o json` printed.
fn json_lines(out: &str) -> Vec<Json> {
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn heights_of(out: &str) -> Vec<u64> {
    json_lines(out)
        .iter()
        .map(|b| b["height"].as_u64().expect("height"))
        .collect()
}

fn utc_text(ns: u64) -> String {
    let t = UtcDateTime::from_unix((ns / SEC) as i64);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[test]
fn a_chain_built_for_these_tests_verifies() {
    let (code, out, err) = cli(&["verify", "--chain-dir", &chain_arg()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn log_plugin_network_as_json_gives_only_network_blocks_with_their_callers() {
    let out = run(&["log", "--plugin", "network", "-o", "json", "-n", "all"]);
    let blocks = json_lines(&out);
    let expected: Vec<u64> = (1..=BLOCKS).filter(|h| h % 3 == 0).collect();
    assert_eq!(heights_of(&out), expected);
    for block in &blocks {
        let h = block["height"].as_u64().expect("height");
        assert_eq!(block["plugin"], "network");
        let caller = caller_of(h);
        assert_eq!(block["caller"]["uid"], caller.uid.expect("uid"));
        assert_eq!(block["caller"]["pid"], caller.pid.expect("pid"));
        assert_eq!(block["caller"]["unit"], caller.unit.as_str());
        assert_eq!(block["caller"]["bus_name"], caller.bus_name.as_str());
        assert_eq!(block["data"]["h"], h);
        assert_eq!(block["timestamp_ns"], t0() + h * 1800 * SEC);
    }
    // --json is -o json; the other filters combine with it.
    let out = run(&[
        "log",
        "--json",
        "-n",
        "all",
        "--plugin",
        "network",
        "--operation",
        "create",
        "--uid",
        "1000",
        "--unit",
        "user@1000.service",
    ]);
    let expected: Vec<u64> = (1..=BLOCKS).filter(|h| h % 12 == 0).collect();
    assert_eq!(heights_of(&out), expected);
}

#[test]
fn since_and_until_select_blocks_by_time() {
    let at = |h: u64| utc_text(t0() + h * 1800 * SEC);
    // 10:00 to 12:00 of the first day: heights 20 to 24, both ends included.
    let out = run(&[
        "log",
        "-o",
        "json",
        "--since",
        "2026-11-20 10:00",
        "--until",
        "2026-11-20 12:00",
    ]);
    assert_eq!(heights_of(&out), vec![20, 21, 22, 23, 24]);
    // A time between two blocks starts at the next one.
    let out = run(&[
        "log",
        "-o",
        "json",
        "--since",
        &at(20)[..16],
        "--until",
        "2026-11-20 11:59:59",
    ]);
    assert_eq!(heights_of(&out), vec![20, 21, 22, 23]);
    // A whole day, and Unix seconds.
    let out = run(&[
        "log",
        "-o",
        "json",
        "--since",
        "2026-11-21",
        "--until",
        "2026-11-21 23:59:59",
    ]);
    assert_eq!(heights_of(&out), (48..=95).collect::<Vec<u64>>());
    let secs = (t0() + 100 * 1800 * SEC) / SEC;
    let out = run(&[
        "log",
        "-o",
        "json",
        "--since",
        &format!("@{secs}"),
        "-n",
        "3",
    ]);
    assert_eq!(
        heights_of(&out),
        vec![198, 199, 200],
        "-n gives the newest N"
    );
    let out = run(&["log", "-o", "json", "--since", &format!("@{secs}")]);
    assert_eq!(heights_of(&out), (100..=200).collect::<Vec<u64>>());
    // Relative to now: the fixture is older than an hour.
    let out = run(&["log", "--since", "-1h"]);
    assert_eq!(out, "", "nothing in the last hour");
    let out = run(&["log", "-o", "json", "--until", "2026-11-20 00:30"]);
    assert_eq!(heights_of(&out), vec![0, 1]);
}

#[test]
fn height_ranges_take_each_form() {
    let cases: [(&str, Vec<u64>); 4] = [
        ("10..15", (10..=15).collect()),
        ("195..", (195..=200).collect()),
        ("..3", (0..=3).collect()),
        ("7", vec![7]),
    ];
    for (range, expected) in cases {
        let out = run(&["log", "-o", "json", "--height", range]);
        assert_eq!(heights_of(&out), expected, "--height {range}");
    }
    let out = run(&["log", "-o", "json", "--height", "10..15", "--reverse"]);
    assert_eq!(heights_of(&out), vec![15, 14, 13, 12, 11, 10]);
    let out = run(&[
        "log", "-o", "json", "--height", "150..", "--plugin", "firewall", "-n", "2",
    ]);
    assert_eq!(heights_of(&out), vec![197, 200]);
}

#[test]
fn tail_and_log_without_a_range_print_the_newest_ten_with_a_caller_column() {
    for command in ["tail", "log"] {
        let out = run(&[command]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 11, "{command}: a header and 10 blocks:\n{out}");
        assert!(lines[0].contains("CALLER (UID UNIT)"), "{}", lines[0]);
        assert!(lines[1].trim_start().starts_with("191 "), "{}", lines[1]);
        assert!(lines[10].trim_start().starts_with("200 "), "{}", lines[10]);
        assert!(
            lines[10].contains("1000 user@1000.service"),
            "{}",
            lines[10]
        );
        assert!(lines[9].contains("0 op-dbus.service"), "{}", lines[9]);
        assert!(
            lines[10].contains("2026-11-24T04:00:00.000Z"),
            "{}",
            lines[10]
        );
    }
    // The old tail's flags still work.
    let out = run(&["tail", "-n", "2", "--json"]);
    assert_eq!(heights_of(&out), vec![199, 200]);
}

#[test]
fn export_and_json_pretty_hold_every_field() {
    let out = run(&["log", "-o", "export", "--height", "5..6"]);
    let blocks: Vec<&str> = out.trim_end().split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{out}");
    let fields: HashMap<&str, &str> = blocks[0]
        .lines()
        .map(|l| l.split_once('=').expect("KEY=VALUE"))
        .collect();
    assert_eq!(fields["HEIGHT"], "5");
    assert_eq!(fields["PLUGIN"], "firewall");
    assert_eq!(fields["OPERATION"], "delete");
    assert_eq!(fields["CALLER_UID"], "0");
    assert_eq!(fields["CALLER_PID"], "4005");
    assert_eq!(fields["CALLER_BUS_NAME"], ":1.5");
    assert_eq!(fields["CALLER_UNIT"], "op-dbus.service");
    assert_eq!(fields["DATA"], r#"{"h":5}"#);
    assert_eq!(
        fields["__REALTIME_TIMESTAMP"],
        ((t0() + 5 * 1800 * SEC) / 1000).to_string()
    );
    assert_eq!(fields["HASH"].len(), 64);

    let out = run(&["log", "-o", "json-pretty", "--height", "5..6"]);
    assert!(out.lines().count() > 10, "indented:\n{out}");
    let parsed: Vec<Json> = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("a stream of JSON objects");
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[1]["caller"]["unit"], "op-dbus.service");
}

#[test]
fn report_counts_add_up_by_plugin_operation_caller_and_day() {
    let report: Json = serde_json::from_str(&run(&["report", "--json"])).expect("JSON");
    assert_eq!(report["total"], BLOCKS + 1);
    assert_eq!(report["first_height"], 0);
    assert_eq!(report["last_height"], BLOCKS);
    assert_eq!(
        report["by_plugin"],
        serde_json::json!({"network": 66, "systemd": 67, "firewall": 67, "opdbus-blockchain": 1})
    );
    assert_eq!(
        report["by_operation"],
        serde_json::json!({"create": 100, "delete": 100, "genesis": 1})
    );
    assert_eq!(
        report["by_day"],
        serde_json::json!({"2026-11-20": 48, "2026-11-21": 48, "2026-11-22": 48, "2026-11-23": 48, "2026-11-24": 9})
    );
    let callers = report["by_caller"].as_array().expect("array");
    let count = |uid: u64, unit: &str| {
        callers
            .iter()
            .find(|c| c["uid"] == uid && c["unit"] == unit)
            .map(|c| c["count"].as_u64().expect("count"))
    };
    assert_eq!(count(1000, "user@1000.service"), Some(50));
    assert_eq!(count(0, "op-dbus.service"), Some(150));
    assert_eq!(count(0, ""), Some(1), "the genesis block");
    let sum: u64 = callers
        .iter()
        .map(|c| c["count"].as_u64().expect("n"))
        .sum();
    assert_eq!(sum, BLOCKS + 1);

    let report: Json = serde_json::from_str(&run(&[
        "report",
        "--json",
        "--plugin",
        "network",
        "--since",
        "2026-11-21",
        "--until",
        "2026-11-21 23:59:59",
    ]))
    .expect("JSON");
    assert_eq!(report["total"], 16);
    assert_eq!(report["by_day"], serde_json::json!({"2026-11-21": 16}));

    let text = run(&["report", "--height", "1..12"]);
    for part in [
        "Blocks:  12 (heights 1 to 12)",
        "By plugin",
        "By operation",
        "By caller",
        "By day (UTC)",
        "user@1000.service",
        "2026-11-20",
    ] {
        assert!(text.contains(part), "'{part}' missing:\n{text}");
    }
}

#[test]
fn bad_arguments_exit_2_no_match_exits_0_and_damage_exits_1() {
    let chain = chain_arg();
    for args in [
        vec!["log", "--since", "soon"],
        vec!["log", "--height", "9..5"],
        vec!["log", "--since", "2026-11-22", "--until", "2026-11-21"],
        vec!["report", "--until", "25:00"],
        vec!["log", "-n", "many"],
        vec!["log", "-f", "--until", "now"],
    ] {
        let mut all = args.clone();
        all.extend(["--chain-dir", &chain]);
        let (code, _, err) = cli(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count().min(1), 1, "{args:?} says why");
    }
    let (_, _, err) = cli(&["log", "--since", "soon", "--chain-dir", &chain]);
    assert!(
        err.contains("\"2026-12-04 10:00\"") && err.contains("UTC"),
        "{err}"
    );
    let (code, out, _) = cli(&["log", "--since", "2030-01-01", "--chain-dir", &chain]);
    assert_eq!((code, out.as_str()), (0, ""), "no match is not an error");

    // Damage inside block 100's record.
    let dir = tempfile::tempdir().expect("tempdir");
    let damaged = dir.path().join("chain");
    build(&damaged, 120, 1 << 20);
    let index = std::fs::read(damaged.join("index")).expect("index");
    let entry = &index[40 + 100 * 56..40 + 101 * 56];
    let offset = u64::from_le_bytes(entry[40..48].try_into().expect("8 bytes")) as usize;
    let path = damaged.join(segment::file_name(0));
    let mut bytes = std::fs::read(&path).expect("segment");
    bytes[offset + 70] ^= 0x01;
    std::fs::write(&path, bytes).expect("write");
    let damaged = damaged.to_str().expect("utf-8");
    let (code, _, err) = cli(&["log", "--height", "95..105", "--chain-dir", damaged]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("height 100"), "{err}");
    let (code, _, err) = cli(&["report", "--chain-dir", damaged]);
    assert_eq!(code, 1, "{err}");
    let (code, out, err) = cli(&[
        "log",
        "--height",
        "1..5",
        "-o",
        "json",
        "--chain-dir",
        damaged,
    ]);
    assert_eq!(code, 0, "blocks before the damage read fine: {err}");
    assert_eq!(heights_of(&out), vec![1, 2, 3, 4, 5]);
}

/// A daemon on a private bus writing its own chain.
fn start_daemon() -> (Bus, Daemon, tempfile::TempDir) {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    (bus, daemon, dir)
}

fn add(bus: &Bus, plugin: &str, operation: &str, data: &str) -> String {
    let (ok, out, err) = bus.call("AddFootprint", "sss", &[plugin, operation, data]);
    assert!(ok, "AddFootprint: {err}");
    out.split_whitespace()
        .nth(2)
        .expect("ts HEIGHT \"HASH\"")
        .trim_matches('"')
        .to_owned()
}

#[test]
fn log_follow_prints_a_block_added_after_it_started_within_two_seconds() {
    let (bus, daemon, _dir) = start_daemon();
    let chain = daemon.chain_dir.to_str().expect("utf-8").to_owned();
    follow(&bus, &["log", "-f", "-o", "json", "--chain-dir", &chain], 0);
    // Over the bus (Query, then BlockAdded), for a user without access to the directory.
    follow(&bus, &["log", "-f", "-o", "json", "--bus", &bus.address], 3);
}

/// Runs `args` (a `log -f`), then adds three blocks and expects each printed within 2 s.
fn follow(bus: &Bus, args: &[&str], already: u64) {
    let mut child = Command::new(CLI)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start log -f");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // It prints what there is first (genesis and earlier rounds), then waits.
    for height in 0..=already {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("log -f prints the newest blocks first");
        let block: Json = serde_json::from_str(&line).expect("JSON");
        assert_eq!(block["height"], height, "{args:?}: {line}");
    }
    for round in 0..3 {
        let started = Instant::now();
        let hash = add(bus, "network", "create", &format!(r#"{{"round":{round}}}"#));
        let line = lines
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| panic!("round {round}: no new block within 2 s"));
        let elapsed = started.elapsed();
        let block: Json = serde_json::from_str(&line).expect("JSON");
        assert_eq!(
            block["hash"],
            hash.as_str(),
            "{args:?} round {round}: {line}"
        );
        assert_eq!(block["caller"]["uid"], nix::unistd::getuid().as_raw());
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn blocks_the_daemon_wrote_are_found_with_their_callers_and_counted() {
    let (bus, daemon, _dir) = start_daemon();
    let chain = daemon.chain_dir.to_str().expect("utf-8").to_owned();
    for i in 0..5 {
        add(&bus, "network", "create", &format!(r#"{{"i":{i}}}"#));
    }
    for i in 0..3 {
        add(&bus, "systemd", "restart", &format!(r#"{{"i":{i}}}"#));
    }
    let (code, out, err) = cli(&[
        "log",
        "--plugin",
        "network",
        "-o",
        "json",
        "--chain-dir",
        &chain,
    ]);
    assert_eq!(code, 0, "{err}");
    let blocks = json_lines(&out);
    assert_eq!(blocks.len(), 5);
    for block in &blocks {
        assert_eq!(block["plugin"], "network");
        assert_eq!(block["caller"]["uid"], nix::unistd::getuid().as_raw());
        assert!(block["caller"]["bus_name"]
            .as_str()
            .is_some_and(|n| n.starts_with(':')));
        assert!(block["caller"]["pid"].as_u64().is_some_and(|p| p > 0));
    }
    // The same over the bus.
    let (code, over_bus, err) = cli(&[
        "log",
        "--plugin",
        "network",
        "-o",
        "json",
        "--bus",
        &bus.address,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(over_bus, out);
    let (_, newest, _) = cli(&["log", "-n", "2", "-o", "json", "--chain-dir", &chain]);
    let (code, over_bus, err) = cli(&["log", "-n", "2", "-o", "json", "--bus", &bus.address]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(over_bus, newest);
    assert_eq!(heights_of(&newest), vec![7, 8]);
    let (code, out, err) = cli(&["report", "--json", "--chain-dir", &chain]);
    assert_eq!(code, 0, "{err}");
    let report: Json = serde_json::from_str(&out).expect("JSON");
    assert_eq!(report["total"], 9);
    assert_eq!(
        report["by_plugin"],
        serde_json::json!({"network": 5, "systemd": 3, "opdbus-blockchain": 1})
    );
    assert_eq!(
        report["by_operation"],
        serde_json::json!({"create": 5, "restart": 3, "genesis": 1})
    );
}

use opdbus_blockchain::dbus::QueryBlock;
type QueryReply = (Vec<QueryBlock>, u64, bool);

async fn query(
    connection: &zbus::Connection,
    filter: HashMap<&str, Value<'_>>,
    limit: u32,
) -> zbus::Result<QueryReply> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "Query",
            &(filter, limit),
        )
        .await?;
    reply.body().deserialize()
}

/// A daemon started on a copy of a built chain of `blocks` blocks.
fn daemon_on_built_chain(blocks: u64) -> (Bus, Daemon, tempfile::TempDir) {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    build(&chain, blocks, 64 << 20);
    let daemon = Daemon::start(&bus, &chain, &dir.path().join("cache"));
    (bus, daemon, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_by_time_fields_and_heights_and_pages_with_a_limit() {
    let (bus, _daemon, _dir) = daemon_on_built_chain(BLOCKS);
    let connection = bus.connect().await;
    let at = |h: u64| t0() + h * 1800 * SEC;

    let filter = HashMap::from([
        ("since_ns", Value::from(at(20))),
        ("until_ns", Value::from(at(24))),
    ]);
    let (blocks, next, complete) = query(&connection, filter, 100).await.expect("Query");
    let heights: Vec<u64> = blocks.iter().map(|b| b.0).collect();
    assert_eq!(heights, vec![20, 21, 22, 23, 24]);
    assert!(complete);
    assert_eq!(next, 25);
    let b = &blocks[0];
    assert_eq!(b.1, at(20));
    assert_eq!(b.2.len(), 64);
    assert_eq!(blocks[1].3, b.2, "prev_hash links to the block before");
    assert_eq!((b.4.as_str(), b.5.as_str()), ("firewall", "create"));
    assert_eq!((b.6, b.7), (1000, 4020));
    assert_eq!(
        (b.8.as_str(), b.9.as_str(), b.10.as_str()),
        (":1.20", "user@1000.service", r#"{"h":20}"#)
    );

    let filter = HashMap::from([
        ("plugin", Value::from("network")),
        ("uid", Value::from(0u32)),
        ("unit", Value::from("op-dbus.service")),
        ("operation", Value::from("delete")),
        ("from_height", Value::from(100u64)),
        ("to_height", Value::from(150u64)),
    ]);
    let (blocks, _, complete) = query(&connection, filter, 1000).await.expect("Query");
    let heights: Vec<u64> = blocks.iter().map(|b| b.0).collect();
    assert_eq!(heights, vec![105, 111, 117, 123, 129, 135, 141, 147]);
    assert!(complete);

    // Pages of 7 from next_height to next_height give every network block once.
    let mut from = 0u64;
    let mut seen = Vec::new();
    loop {
        let filter = HashMap::from([
            ("plugin", Value::from("network")),
            ("from_height", Value::from(from)),
        ]);
        let (blocks, next, complete) = query(&connection, filter, 7).await.expect("Query");
        assert!(blocks.len() <= 7);
        seen.extend(blocks.iter().map(|b| b.0));
        from = next;
        if complete {
            break;
        }
    }
    assert_eq!(
        seen,
        (1..=BLOCKS).filter(|h| h % 3 == 0).collect::<Vec<u64>>()
    );
    assert_eq!(from, BLOCKS + 1, "continues after the head");
    // Blocks added later are found from there.
    let (ok, _, err) = bus.call("AddFootprint", "sss", &["network", "create", "{}"]);
    assert!(ok, "{err}");
    let filter = HashMap::from([("from_height", Value::from(from))]);
    let (blocks, _, _) = query(&connection, filter, 10).await.expect("Query");
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].0, BLOCKS + 1);

    // Bad filters are InvalidArgument, naming what is wrong.
    let bad: Vec<(HashMap<&str, Value>, u32, &str)> = vec![
        (
            HashMap::from([("colour", Value::from("red"))]),
            10,
            "unknown filter key colour",
        ),
        (
            HashMap::from([("uid", Value::from("root"))]),
            10,
            "filter key uid has the wrong type",
        ),
        (
            HashMap::from([("since_ns", Value::from(5u32))]),
            10,
            "filter key since_ns",
        ),
        (
            HashMap::from([
                ("since_ns", Value::from(9u64)),
                ("until_ns", Value::from(8u64)),
            ]),
            10,
            "since_ns 9 is after until_ns 8",
        ),
        (HashMap::new(), 0, "limit must be between 1 and 1000, not 0"),
        (
            HashMap::new(),
            1001,
            "limit must be between 1 and 1000, not 1001",
        ),
    ];
    for (filter, limit, expected) in bad {
        let err = query(&connection, filter, limit).await.expect_err(expected);
        assert_eq!(
            error_name(&err),
            "org.opdbus.Blockchain.Error.InvalidArgument",
            "{err}"
        );
        assert!(
            err.to_string().contains(expected),
            "'{err}' lacks '{expected}'"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_query_stays_bounded() {
    // More blocks than one call may examine.
    let (bus, _daemon, _dir) = daemon_on_built_chain(150_000);
    let connection = bus.connect().await;
    let err = query(&connection, HashMap::new(), 1_000_000_000)
        .await
        .expect_err("limit 10^9");
    assert_eq!(
        error_name(&err),
        "org.opdbus.Blockchain.Error.InvalidArgument"
    );

    // A whole-chain range that matches nothing: one call examines at most 100 000 blocks,
    // then says where to continue.
    let filter = HashMap::from([
        ("plugin", Value::from("nothing-matches")),
        ("from_height", Value::from(0u64)),
        ("to_height", Value::from(u64::MAX)),
        ("since_ns", Value::from(0u64)),
        ("until_ns", Value::from(u64::MAX)),
    ]);
    let started = Instant::now();
    let (blocks, next, complete) = query(&connection, filter, 1000).await.expect("Query");
    let elapsed = started.elapsed();
    assert!(blocks.is_empty());
    assert!(!complete);
    assert_eq!(next, 100_000);
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");

    // Everything matches: at most `limit` come back.
    let (blocks, next, complete) = query(&connection, HashMap::new(), 1000)
        .await
        .expect("Query");
    assert_eq!(blocks.len(), 1000);
    assert_eq!(next, 1000);
    assert!(!complete);

    // The daemon still answers the cheap calls at once.
    let started = Instant::now();
    let (ok, _, err) = bus.call("GetBlockByHeight", "t", &["149999"]);
    assert!(ok, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
