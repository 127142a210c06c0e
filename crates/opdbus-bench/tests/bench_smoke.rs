//! `opdbus-bench bench --quick --json FILE` runs end to end (private bus, the daemon, the
//! in-process chain, the peers) and writes one flat JSON object with every required figure.
//! No figure is judged here: the bench reports speed, tests never time anything.

mod common;
use common::bench;

const REQUIRED: [&str; 35] = [
    "add_footprints_batch_rate_16",
    "durable_floor_rate_1",
    "durable_floor_rate_16",
    "durable_floor_rate_64",
    "durable_floor_p50_us",
    "add_footprint_rate_64",
    "ratio_add_footprint_rate_16_to_durable_floor",
    "wakeups_per_footprint_16_total",
    "independent_client_add_footprint_rate_16",
    "independent_client_durable_floor_rate_16",
    "empty_call_rate_1",
    "empty_call_rate_16",
    "empty_call_p50_us",
    "fdatasync_p50_us",
    "add_footprint_rate_1",
    "add_footprint_rate_16",
    "add_footprint_p50_us",
    "add_footprint_p99_us",
    "inprocess_add_rate_16",
    "inprocess_group_size_16",
    "inprocess_stream_rate",
    "fdatasync_rate",
    "get_block_hot_p50_us_dbus",
    "get_block_hot_p50_us_inprocess",
    "get_block_cold_p50_us_dbus",
    "sqlite_rate_16",
    "file_per_block_rate_16",
    "add_footprint_rate_16_transparency_on",
    "add_footprint_rate_16_transparency_off",
    "ratio_add_footprint_rate_16_transparency_on_to_off",
    "ratio_add_footprint_rate_16_transparency_paired_median",
    "tlog_thread_cpu_us_per_footprint",
    "machine",
    "date",
    "cpus",
];

#[test]
fn bench_quick_writes_json_with_every_required_figure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("bench.json");
    let json_arg = json_path.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = bench(&["bench", "--quick", "--json", json_arg]);
    assert_eq!(code, 0, "bench failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("AddFootprint, 16 clients"),
        "the table is missing:\n{stdout}"
    );
    assert!(
        stdout.contains("AddFootprint 16, transparency on"),
        "the comparison with the transparency log off is missing:\n{stdout}"
    );

    let text = std::fs::read_to_string(&json_path).expect("the JSON file was written");
    let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let object = value.as_object().expect("one JSON object");
    for key in REQUIRED {
        let figure = object
            .get(key)
            .unwrap_or_else(|| panic!("{key} is missing from {text}"));
        match key {
            "machine" | "date" | "cpus" => assert!(
                figure.as_str().is_some_and(|s| !s.is_empty()),
                "{key} is not a text: {figure}"
            ),
            _ => assert!(
                figure.as_f64().is_some_and(|v| v.is_finite() && v > 0.0),
                "{key} is not a positive number: {figure}"
            ),
        }
    }
    assert!(
        object.values().all(|v| !v.is_object() && !v.is_array()),
        "the object is not flat: {text}"
    );
}

#[test]
fn bench_refuses_an_unwritable_json_path_with_a_reason() {
    let (code, _stdout, stderr) =
        bench(&["bench", "--quick", "--json", "/nonexistent-dir/bench.json"]);
    assert_eq!(code, 2, "stderr: {stderr}");
    assert!(stderr.contains("cannot write"), "stderr: {stderr}");
}

/// `bench-tlog` builds, replays and proves on a small tree (three tile levels: more than 65,536
/// leaves), checks its sample of proofs (exit 1 on a wrong one), runs `opdbus-chain verify
/// --checkpoint` on a chain of as many blocks (exit 1 unless it passes and counts them all)
/// and writes its figures.
#[test]
fn bench_tlog_proves_and_checks_on_a_small_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("tlog.json");
    let json_arg = json_path.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = bench(&[
        "bench-tlog",
        "--leaves",
        "70000",
        "--proofs",
        "200",
        "--json",
        json_arg,
    ]);
    assert_eq!(code, 0, "bench-tlog failed:\n{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json_path).expect("the JSON file was written");
    let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    for key in [
        "build_leaves_per_s",
        "replay_leaves_per_s",
        "inclusion_proof_p50_us",
        "inclusion_proof_max_us",
        "consistency_proof_p99_us",
        "verify_checkpoint_blocks_per_s",
    ] {
        assert!(
            value[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} is missing or not positive: {text}"
        );
    }
    assert_eq!(value["leaves"], 70000);
    assert_eq!(value["proofs_checked"], 40.0, "{text}");
}
