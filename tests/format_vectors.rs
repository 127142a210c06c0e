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
