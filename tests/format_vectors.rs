//! docs/format.md's test vectors match the code, and the independent verifier written from
//! that document alone accepts what the store writes and rejects what it must.

use opdbus_blockchain::chain::block::{Block, Caller};
use opdbus_blockchain::chain::segment::{encode_header, encode_record, ChainId};
use opdbus_blockchain::chain::store::{self, genesis_data, StoreOptions};
use opdbus_blockchain::PluginFootprint;
use std::collections::HashMap;
use std::path::Path;

/// `name value` lines of the doc's test-vector section.
fn doc_vectors() -> HashMap<String, String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/format.md"))
        .expect("docs/format.md");
    let section = doc
        .split("## Test vectors")
        .nth(1)
        .expect("a test vector section");
    section
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

#[test]
fn footprint_block_vector_matches_the_document() {
    let v = doc_vectors();
    let block = Block::new(
        1,
        1_700_000_000_000_000_000,
        [0x11; 32],
        Caller {
            uid: Some(0),
            pid: Some(1234),
            bus_name: ":1.42".into(),
            unit: "op-dbus.service".into(),
        },
        "network".into(),
        "create".into(),
        r#"{"interface":"eth0"}"#.into(),
    );
    assert_eq!(hex::encode(block.encode()), v["encoding"]);
    assert_eq!(block.hash_hex(), v["hash"]);
    let mut record = Vec::new();
    encode_record(&block, &mut record);
    assert_eq!(hex::encode(record), v["record"]);
}

#[test]
fn genesis_vector_matches_the_document() {
    let v = doc_vectors();
    let chain_id: ChainId = hex::decode("00112233445566778899aabbccddeeff")
        .expect("hex")
        .try_into()
        .expect("16 bytes");
    let created = 1_700_000_000_000_000_000;
    let genesis = Block::new(
        0,
        created,
        [0; 32],
        Caller {
            uid: Some(0),
            pid: Some(1),
            ..Caller::default()
        },
        "opdbus-blockchain".into(),
        "genesis".into(),
        genesis_data(&chain_id, created),
    );
    assert_eq!(hex::encode(genesis.encode()), v["genesis-encoding"]);
    assert_eq!(genesis.hash_hex(), v["genesis-hash"]);
    assert_eq!(
        hex::encode(encode_header(0, &chain_id)),
        v["segment-header"]
    );
}

fn python_verify(dir: &Path) -> (i32, String) {
    let out = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify-chain.py"))
        .arg(dir)
        .output()
        .expect("python3 must be installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_independent_verifier_agrees_with_ours() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    // Small segments, so the chain spans several files.
    let options = StoreOptions {
        segment_bytes: 64 * 1024,
    };
    let (mut writer, reader, _) = store::open(&chain, options).expect("open");
    for batch in 0..40 {
        let items: Vec<_> = (0..25)
            .map(|i| {
                (
                    PluginFootprint::new(
                        "network",
                        "create",
                        serde_json::json!({"batch": batch, "i": i, "pad": "x".repeat(50)}),
                    ),
                    Caller::this_process(),
                )
            })
            .collect();
        writer.append(&items).expect("append");
    }
    drop(writer);
    let segments = std::fs::read_dir(&chain).expect("dir").filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".chain"))
    });
    assert!(segments.count() > 1, "the test needs several segments");
    let (head, hash) = reader.head();
    let (code, out) = python_verify(&chain);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        format!("intact 1001 {head} {}", hex::encode(hash))
    );

    // One flipped byte in block 500's data: both verifiers name height 500.
    let target = reader.block_at(500).expect("read").expect("exists");
    let needle = target.data.as_bytes();
    for entry in std::fs::read_dir(&chain).expect("dir") {
        let path = entry.expect("entry").path();
        let mut bytes = std::fs::read(&path).expect("read");
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + 3] ^= 0x20;
            std::fs::write(&path, bytes).expect("write");
        }
    }
    let (code, out) = python_verify(&chain);
    assert_eq!(
        (code, out.split_whitespace().take(2).collect::<Vec<_>>()),
        (1, vec!["bad", "500"]),
        "{out}"
    );
    let report =
        opdbus_blockchain::chain::verify::verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert_eq!(report.first_bad.map(|(h, _)| h), Some(500));
}

#[test]
fn block_vector_matches_the_document() {
    use opdbus_blockchain::vector::embed::{quantize, Embedder, HashingEmbedder};
    let v = doc_vectors();
    let vector = HashingEmbedder.embed("network", "create", r#"{"interface":"eth0"}"#);
    let nonzero: Vec<String> = quantize(&vector)
        .iter()
        .enumerate()
        .filter(|(_, q)| **q != 0)
        .map(|(i, q)| format!("{i}:{q}"))
        .collect();
    assert_eq!(nonzero.join(","), v["vector-int8"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_independent_verifier_recomputes_the_stored_block_vectors() {
    use opdbus_blockchain::vector::{Filter, SimilarQuery};
    use opdbus_blockchain::OptimizedBlockchain;
    let dir = tempfile::tempdir().expect("tempdir");
    let chain_dir = dir.path().join("chain");
    let chain = OptimizedBlockchain::new(&chain_dir, dir.path().join("cache"))
        .await
        .expect("open");
    let samples = [
        serde_json::json!({"name": "eth0", "mtu": 1500, "up": true, "gw": null}),
        serde_json::json!({"unit": "nginx.service", "deps": ["network.target", "a_b-c"]}),
        serde_json::json!({"nested": {"z": [], "a": {}, "m": [1, [2, 3]]}, "ünï": "Grüße Welt"}),
        serde_json::json!("just a string"),
        serde_json::json!([{"k": -7}, {"k": 0}]),
    ];
    for (i, data) in samples.iter().cycle().take(50).enumerate() {
        chain
            .add_footprint(PluginFootprint::new(
                ["network", "systemd", "packages"][i % 3],
                ["create", "restart"][i % 2],
                data.clone(),
            ))
            .await
            .expect("add");
    }
    // A query catches the vectors up with the chain.
    let query: SimilarQuery = r#"{"plugin":"network","operation":"create","data":{}}"#
        .parse()
        .expect("query");
    chain
        .find_similar(&query, 5, &Filter::default())
        .await
        .expect("search")
        .expect("results");
    drop(chain);
    let out = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify-chain.py"))
        .arg("--vectors")
        .arg(&chain_dir)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("vectors 51 match"), "{stdout}");

    // A changed stored component is caught.
    let file = chain_dir.join("vectors");
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[32 + 7 * 292 + 100] ^= 0x01;
    std::fs::write(&file, bytes).expect("write");
    let out = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify-chain.py"))
        .arg("--vectors")
        .arg(&chain_dir)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("bad 7 vector"), "{stdout}");
}

/// A one-segment chain with correct hashes: genesis, a plain footprint at height 1, and one
/// at height 2 with these fields; the rules alone decide whether it is intact.
fn hand_made_chain(dir: &Path, plugin: &str, operation: &str, data: &str, timestamp_ns: u64) {
    let chain_id: ChainId = [7; 16];
    let created = 1_700_000_000_000_000_000;
    let caller = Caller {
        uid: Some(0),
        pid: Some(1),
        ..Caller::default()
    };
    let block = |height, timestamp, prev, plugin: &str, operation: &str, data: String| {
        let (plugin, operation) = (plugin.to_owned(), operation.to_owned());
        Block::new(
            height,
            timestamp,
            prev,
            caller.clone(),
            plugin,
            operation,
            data,
        )
    };
    let genesis_data = genesis_data(&chain_id, created);
    let genesis = block(
        0,
        created,
        [0; 32],
        "opdbus-blockchain",
        "genesis",
        genesis_data,
    );
    let first = block(
        1,
        created + 10,
        genesis.hash,
        "network",
        "create",
        "{}".into(),
    );
    let last = block(2, timestamp_ns, first.hash, plugin, operation, data.into());
    let mut bytes = encode_header(0, &chain_id).to_vec();
    for block in [&genesis, &first, &last] {
        encode_record(block, &mut bytes);
    }
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(format!("segment-{:020}.chain", 0)), bytes).expect("write");
}

#[test]
fn the_independent_verifier_checks_the_field_rules_and_timestamps() {
    use opdbus_blockchain::chain::verify::verify_dir;
    use opdbus_blockchain::footprint::{check_recorded, check_stored};
    let later = 1_700_000_000_000_000_010; // the same as block 1's: never decreasing is enough
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let very_deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let odd_but_valid =
        r#" {"n":[1.5e300,-0,0e-999,18446744073709551615],"s":"\ud83d\ude00\u2028"} "#;
    // (fields, what both verifiers say): "" intact; "warn: X" intact with a warning at height
    // 2 naming X (a writer rule: older writers stored such blocks); "bad: X" corrupt at 2.
    let cases = [
        ("network", "create", odd_but_valid, later, ""),
        ("getty@tty1.service", "key_add", "[]", later, ""),
        ("network", "create", "{}", later - 1, "bad: timestamp"),
        ("net\u{200b}work", "create", "{}", later, "warn: U+200B"),
        ("network", "cre\u{202e}ate", "{}", later, "warn: U+202E"),
        ("net work", "create", "{}", later, "warn: U+0020"),
        (
            "network",
            "restart dev-disk-by\\x2duuid-1.device",
            "{}",
            later,
            "warn: U+0020",
        ),
        ("network", "create", &deep, later, "warn: than 64"),
        ("network", "create", &very_deep, later, "warn: than 64"),
        (
            "network",
            "create",
            r#"{"k":"\ud800"}"#,
            later,
            "warn: surrogate",
        ),
        ("network", "create", "[1e999]", later, "warn: 1e999"),
        ("network", "create", "1e-301", later, "warn: 1e-301"),
        (
            "network",
            "create",
            "18446744073709551616",
            later,
            "warn: 18446744073709551616",
        ),
        (
            "network",
            "create",
            r#"{"a":1,"a":2}"#,
            later,
            "warn: twice in one object",
        ),
        (
            "network",
            "create",
            "{not json",
            later,
            "bad: not valid JSON",
        ),
        ("network", "create", "NaN", later, "bad: not valid JSON"),
        ("network", "create", "[1,]", later, "bad: not valid JSON"),
        (
            "network",
            "create",
            "\"\u{1}\"",
            later,
            "bad: not valid JSON",
        ),
        ("net\nwork", "create", "{}", later, "bad: control character"),
        (
            "network",
            "cre\u{85}ate",
            "{}",
            later,
            "bad: control character",
        ),
    ];
    for (plugin, operation, data, timestamp, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        hand_made_chain(dir.path(), plugin, operation, data, timestamp);
        let (code, out) = python_verify(dir.path());
        let ours = verify_dir(dir.path(), None, &mut |_| {}).expect("readable");
        let summary = ours.summary();
        let shown = &data[..data.len().min(40)];
        if let Some(bad) = expected.strip_prefix("bad: ") {
            assert_eq!(code, 1, "{shown}: {out}");
            assert!(
                out.starts_with("bad 2 ") && out.contains(bad),
                "{shown}: '{out}' lacks '{bad}'"
            );
            let (height, reason) = ours.first_bad.clone().expect("ours must find it bad");
            assert_eq!(height, 2, "{shown}: {summary}");
            assert!(reason.contains(bad), "{shown}: '{reason}' lacks '{bad}'");
            // The timestamp rule is the scanner's; the field rules are check_recorded.
            let fields = check_recorded(plugin, operation, data);
            assert_eq!(fields.is_ok(), bad == "timestamp", "{shown}");
            continue;
        }
        assert_eq!(code, 0, "{shown}: {out}");
        assert!(out.starts_with("intact 3 2 "), "{out}");
        assert!(ours.ok(), "{shown}: {summary}");
        assert_eq!(ours.blocks_checked, 3, "{summary}");
        assert_eq!(check_recorded(plugin, operation, data), Ok(()), "{shown}");
        match expected.strip_prefix("warn: ") {
            None => {
                assert!(!out.contains("warning"), "{out}");
                assert!(!summary.contains("warning"), "{summary}");
                assert_eq!(check_stored(plugin, operation, data), Ok(()));
            }
            Some(why) => {
                assert!(
                    out.trim_end().contains(" warning 1 2 ") && out.contains(why),
                    "{shown}: '{out}' lacks the warning '{why}'"
                );
                assert_eq!(ours.writer_rule_breaks, 1, "{summary}");
                let (height, reason) = ours.first_writer_rule_break.clone().expect("a warning");
                assert_eq!(height, 2);
                assert!(reason.contains(why), "{shown}: '{reason}' lacks '{why}'");
                assert!(
                    summary.contains("chain is intact")
                        && summary.contains("warning: 1 block breaks rules the writer enforces now (first at height 2"),
                    "{summary}"
                );
                assert!(check_stored(plugin, operation, data).is_err());
            }
        }
    }
}
