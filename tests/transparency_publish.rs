//! The transparency log seen from outside: the real daemon writes it, a real nginx serves a copy
//! of it with the locations docs/operations.md gives, and tools/verify-checkpoint.py (written
//! from RFC 9162 and the C2SP texts, sharing no code with us) verifies checkpoints and proves
//! blocks from the tiles over HTTP. docs/format.md's Merkle tree vectors are checked against our
//! encoding, the tlog_tiles crate, our signing code and the Python verifier.
//!
//! Without nginx the published-log test says SKIP, or fails when `CI=1` is set.

mod common;

use common::*;
use opdbus_blockchain::chain::block::{Block, Caller, Hash};
use opdbus_blockchain::chain::segment::{encode_header, encode_record, ChainId};
use opdbus_blockchain::chain::store::genesis_data;
use opdbus_testkit::nginx::{self, nginx_or_skip, Nginx};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TOOL: &str = "tools/verify-checkpoint.py";

/// `python3 tools/verify-checkpoint.py <args>`: (exit code, stdout, stderr).
fn verifier(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("python3")
        .arg(repo_path(TOOL))
        .args(args)
        .output()
        .expect("python3 must be installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same, which must succeed; its JSON output.
fn verified(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = verifier(args);
    assert_eq!(code, 0, "verify-checkpoint.py {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The same, which must fail a check (exit 1); its reason.
fn refused(args: &[&str]) -> String {
    let (code, out, err) = verifier(args);
    assert_eq!(
        code, 1,
        "verify-checkpoint.py {args:?} must fail a check: {out}{err}"
    );
    err
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

#[test]
fn the_independent_verifier_passes_its_known_answer_vectors() {
    let result = verified(&["selftest"]);
    assert_eq!(result["selftest"], "ok");
    assert!(
        result["vectors"].as_u64().expect("a count") > 200,
        "{result}"
    );
}

// ---------------------------------------------------------------------------------------------
// docs/format.md, "Merkle tree vectors"

fn format_doc() -> String {
    std::fs::read_to_string(repo_path("docs/format.md")).expect("docs/format.md")
}

/// `name value` lines of the Merkle tree vector section.
fn merkle_vectors() -> HashMap<String, String> {
    let doc = format_doc();
    let section = doc
        .split("### Merkle tree vectors")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Merkle tree vector section");
    section
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// The signed checkpoint the section shows, as the bytes of the note.
fn documented_note() -> String {
    let doc = format_doc();
    let after = doc
        .split("The signed checkpoint of size 8")
        .nth(1)
        .expect("the signed checkpoint vector");
    let block = after
        .split("```\n")
        .nth(1)
        .expect("a code block holding the note");
    format!("{}\n", block.trim_end_matches('\n'))
}

/// The eight blocks the section describes.
fn vector_chain() -> (ChainId, Vec<Block>) {
    let chain_id: ChainId = hex::decode("00112233445566778899aabbccddeeff")
        .expect("hex")
        .try_into()
        .expect("16 bytes");
    let created = 1_700_000_000_000_000_000;
    let mut blocks = vec![Block::new(
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
    )];
    for height in 1..8u64 {
        let prev = blocks.last().expect("genesis first").hash;
        blocks.push(Block::new(
            height,
            created + height,
            prev,
            Caller {
                uid: Some(0),
                pid: Some(1234),
                bus_name: ":1.42".into(),
                unit: "op-dbus.service".into(),
            },
            "network".into(),
            "create".into(),
            format!(r#"{{"interface":"eth{height}"}}"#),
        ));
    }
    (chain_id, blocks)
}

/// The tree as tlog_tiles stores it (every stored hash, Go sumdb's layout), built by its own
/// append path.
struct StoredHashes(Vec<tlog_tiles::Hash>);

impl tlog_tiles::HashReader for StoredHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                self.0
                    .get(i as usize)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

fn stored_hashes(block_hashes: &[Hash]) -> StoredHashes {
    let mut stored = StoredHashes(Vec::new());
    for (n, hash) in block_hashes.iter().enumerate() {
        let new = tlog_tiles::stored_hashes(n as u64, hash, &stored).expect("tlog_tiles appends");
        stored.0.extend(new);
    }
    stored
}

fn hex_list(hashes: &[tlog_tiles::Hash]) -> String {
    hashes
        .iter()
        .map(|h| hex::encode(h.0))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_merkle_tree_vectors_match_the_document_our_code_tlog_tiles_and_the_python_verifier() {
    let v = merkle_vectors();
    let (chain_id, blocks) = vector_chain();
    let block_hashes: Vec<Hash> = blocks.iter().map(|b| b.hash).collect();
    for (height, block) in blocks.iter().enumerate() {
        assert_eq!(
            block.hash_hex(),
            v[&format!("block-{height}")],
            "block {height}"
        );
        let leaf = hex::encode(opdbus_blockchain::tlog::leaf_hash(&block.hash));
        assert_eq!(leaf, v[&format!("leaf-{height}")], "leaf {height}");
        assert_eq!(hex::encode(tlog_tiles::record_hash(&block.hash).0), leaf);
    }
    let stored = stored_hashes(&block_hashes);
    for size in [1usize, 2, 3, 7, 8] {
        let root = v[&format!("root-{size}")].as_str();
        let theirs = tlog_tiles::tree_hash(size as u64, &stored).expect("tree hash");
        assert_eq!(hex::encode(theirs.0), root, "tlog_tiles, size {size}");
        let ours = opdbus_blockchain::tlog::root_of(&block_hashes[..size]);
        assert_eq!(hex::encode(ours), root, "our tree, size {size}");
    }
    let inclusion = tlog_tiles::prove_record(8, 5, &stored).expect("inclusion proof");
    assert_eq!(hex_list(&inclusion), v["inclusion-5-of-8"]);
    let consistency = tlog_tiles::prove_tree(8, 3, &stored).expect("consistency proof");
    assert_eq!(hex_list(&consistency), v["consistency-3-8"]);

    // Our key and signing code write the documented note byte for byte.
    let key = opdbus_blockchain::tlog::SigningKey::parse(&v["skey"], Path::new("doc-vector.key"))
        .expect("the documented key parses");
    assert_eq!(key.vkey(), v["vkey"]);
    let root8: Hash = hex::decode(&v["root-8"])
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let signed =
        opdbus_blockchain::tlog::Checkpoint::sign(&key, "example.org/opdbus-test", 8, &root8)
            .expect("sign");
    assert_eq!(signed.note, documented_note());

    // The Python verifier, from the bytes on disk.
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    std::fs::create_dir(&chain).expect("mkdir");
    let mut segment = encode_header(0, &chain_id).to_vec();
    for block in &blocks {
        encode_record(block, &mut segment);
    }
    std::fs::write(chain.join("segment-00000000000000000000.chain"), segment).expect("write");
    for size in [1usize, 2, 3, 7, 8] {
        let result = verified(&[
            "root",
            "--chain",
            path_str(&chain),
            "--size",
            &size.to_string(),
        ]);
        assert_eq!(
            result["root"],
            v[&format!("root-{size}")],
            "python, size {size}"
        );
    }
    refused(&["root", "--chain", path_str(&chain), "--size", "9"]);
    let note = dir.path().join("checkpoint");
    std::fs::write(&note, documented_note()).expect("write");
    let opened = verified(&["note", "--vkey", &v["vkey"], path_str(&note)]);
    assert_eq!(opened["size"], 8);
    assert_eq!(opened["root"], v["root-8"]);
    assert_eq!(opened["origin"], "example.org/opdbus-test");
    let proof_args = |leaf: &str, index: &str| {
        verifier(&[
            "inclusion",
            "--leaf",
            leaf,
            "--index",
            index,
            "--size",
            "8",
            "--root",
            &v["root-8"],
            "--proof",
            &v["inclusion-5-of-8"],
        ])
    };
    assert_eq!(proof_args(&v["block-5"], "5").0, 0);
    assert_eq!(proof_args(&v["block-5"], "4").0, 1, "another index");
    assert_eq!(proof_args(&v["block-4"], "5").0, 1, "another block");
    verified(&[
        "consistency",
        "--old",
        "3",
        "--old-root",
        &v["root-3"],
        "--new",
        "8",
        "--new-root",
        &v["root-8"],
        "--proof",
        &v["consistency-3-8"],
    ]);
    refused(&[
        "consistency",
        "--old",
        "3",
        "--old-root",
        &v["root-2"],
        "--new",
        "8",
        "--new-root",
        &v["root-8"],
        "--proof",
        &v["consistency-3-8"],
    ]);
}

// ---------------------------------------------------------------------------------------------
// The published log of the running daemon

/// The nginx locations docs/operations.md gives for a published log.
fn documented_locations() -> String {
    let doc = std::fs::read_to_string(repo_path("docs/operations.md")).expect("operations.md");
    nginx::documented_locations(&doc, "## Publishing the log")
}

/// Copies `from` to `to` as docs/operations.md says: everything but the checkpoint files,
/// then the history, then the checkpoint.
fn publish(from: &Path, to: &Path) {
    fn copy_tree(from: &Path, to: &Path, top: bool) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read tlog dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name();
            if top && (name == "checkpoint" || name == "checkpoints") {
                continue;
            }
            let (source, target) = (entry.path(), to.join(&name));
            if entry.file_type().expect("type").is_dir() {
                copy_tree(&source, &target, false);
            } else {
                std::fs::copy(&source, &target).expect("copy");
            }
        }
    }
    copy_tree(from, to, true);
    for name in ["checkpoints", "checkpoint"] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy the checkpoint files");
    }
}

#[test]
fn a_published_log_of_the_running_daemon_verifies_from_outside_over_nginx() {
    if !nginx_or_skip("a_published_log_of_the_running_daemon_verifies_from_outside_over_nginx") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let tlog = dir.path().join("tlog");
    let key = dir.path().join("keys/signing.key");
    let bus = Bus::start();
    let _daemon = Daemon::start_with_env(
        &bus,
        &chain,
        &dir.path().join("cache"),
        &[
            ("OPDBUS_TLOG_DIR", path_str(&tlog)),
            ("OPDBUS_SIGNING_KEY", path_str(&key)),
            ("OPDBUS_CHECKPOINT_INTERVAL", "200ms"),
        ],
    );

    // 300 footprints: heights 1..=300, a tree of 301 leaves whose right edge is a partial tile
    // at level 0 (45 wide) and at level 1 (1 wide).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let connection = runtime.block_on(bus.connect());
    let acked: HashMap<u64, String> = runtime.block_on(async {
        let mut acked = HashMap::new();
        for i in 0..300 {
            let data = format!(r#"{{"interface":"eth{i}","mtu":1500}}"#);
            let (height, hash) = add_footprint(&connection, "network", "create", &data)
                .await
                .expect("AddFootprint");
            acked.insert(height, hash);
        }
        acked
    });
    assert_eq!(acked.len(), 300);
    wait_until(Duration::from_secs(30), "a checkpoint of size 301", || {
        checkpoint_size(&tlog) == Some(301)
    });

    // The verifier key as the daemon announces it on the bus, and as the key file gives it.
    let out = bus.busctl(&[
        "get-property",
        BUS_NAME,
        OBJECT_PATH,
        BUS_NAME,
        "VerifyingKey",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let vkey = said
        .trim()
        .strip_prefix("s \"")
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not a string property: {said}"))
        .to_owned();
    let from_file = opdbus_blockchain::tlog::SigningKey::load(&key).expect("the daemon's key");
    assert_eq!(from_file.vkey(), vkey);
    let (code, out, err) = cli(&["key", "show", "--key", path_str(&key)]);
    assert_eq!(code, 0, "opdbus-chain key show: {err}");
    assert_eq!(out.trim(), vkey, "opdbus-chain key show");

    let site = dir.path().join("site");
    publish(&tlog, &site);
    let nginx = Nginx::serve_with(&site, &documented_locations()).expect("nginx");
    let url = nginx.url();

    // The documented caching: the checkpoint is never cached, full tiles forever, partials
    // briefly.
    let checkpoint = nginx.get("/checkpoint").expect("GET /checkpoint");
    assert_eq!(checkpoint.status, 200);
    assert_eq!(checkpoint.header("cache-control"), Some("no-cache"));
    assert_eq!(
        checkpoint.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let full = nginx.get("/tile/0/000").expect("GET a full tile");
    assert_eq!((full.status, full.body.len()), (200, 8192));
    assert!(full
        .header("cache-control")
        .is_some_and(|v| v.contains("immutable")));
    for partial in [
        "/tile/0/001.p/45",
        "/tile/1/000.p/1",
        "/tile/entries/001.p/45",
    ] {
        let reply = nginx.get(partial).expect("GET a partial");
        assert_eq!(reply.status, 200, "{partial}: {}", reply.headers);
        assert_eq!(
            reply.header("cache-control"),
            Some("public, max-age=60"),
            "{partial}"
        );
    }

    // The checkpoint as served (the one GetCheckpoint gives): signed by the daemon's key, and
    // its root is the root of the chain's 301 blocks as the Python verifier computes it from
    // the segments.
    let on_the_bus: String = runtime.block_on(async {
        let reply = connection
            .call_method(
                Some(BUS_NAME),
                OBJECT_PATH,
                Some(BUS_NAME),
                "GetCheckpoint",
                &(),
            )
            .await
            .expect("GetCheckpoint");
        reply.body().deserialize().expect("a string")
    });
    assert_eq!(on_the_bus.as_bytes(), checkpoint.body);
    let served = dir.path().join("served-checkpoint");
    std::fs::write(&served, &checkpoint.body).expect("write");
    let note = verified(&["note", "--vkey", &vkey, path_str(&served)]);
    assert_eq!(note["size"], 301);
    let root = note["root"].as_str().expect("root").to_owned();
    let chain_root = verified(&["root", "--chain", path_str(&chain), "--size", "301"]);
    assert_eq!(chain_root["root"], root.as_str());
    let other_vkey = merkle_vectors()["vkey"].clone();
    refused(&["note", "--vkey", &other_vkey, path_str(&served)]);

    // Blocks proved over HTTP from the tiles, and the same proofs through `inclusion`.
    for height in [0u64, 1, 255, 256, 299, 300] {
        let h = height.to_string();
        let proved = verified(&[
            "fetch",
            &url,
            "--vkey",
            &vkey,
            "--height",
            &h,
            "--chain",
            path_str(&chain),
        ]);
        assert_eq!(proved["size"], 301);
        assert_eq!(proved["root"], root.as_str());
        assert_eq!(proved["height"], height);
        let block_hash = proved["block_hash"]
            .as_str()
            .expect("block hash")
            .to_owned();
        if let Some(acked) = acked.get(&height) {
            assert_eq!(&block_hash, acked, "height {height}");
        }
        let fetched: Vec<&str> = proved["tiles_fetched"]
            .as_array()
            .expect("tiles_fetched")
            .iter()
            .map(|p| p.as_str().expect("a path"))
            .collect();
        assert!(
            fetched.len() <= 4 && fetched.iter().all(|p| site.join(p).is_file()),
            "height {height}: {fetched:?}"
        );
        let bundle = if height < 256 {
            "tile/entries/000"
        } else {
            "tile/entries/001.p/45"
        };
        assert!(fetched.contains(&bundle), "height {height}: {fetched:?}");
        let proof = proved["proof"]
            .as_array()
            .expect("proof")
            .iter()
            .map(|p| p.as_str().expect("hex"))
            .collect::<Vec<_>>()
            .join(",");
        verified(&[
            "inclusion",
            "--leaf",
            &block_hash,
            "--index",
            &h,
            "--size",
            "301",
            "--root",
            &root,
            "--proof",
            &proof,
        ]);
        // Our CLI builds the same audit path from the same tiles.
        let (code, out, err) = cli(&[
            "prove",
            &h,
            "--json",
            "--chain-dir",
            path_str(&chain),
            "--tlog-dir",
            path_str(&tlog),
        ]);
        assert_eq!(code, 0, "opdbus-chain prove {height}: {err}");
        let ours: serde_json::Value = serde_json::from_str(&out).expect("prove --json");
        assert_eq!(ours["proof"], proved["proof"], "height {height}");
        assert_eq!(ours["block_hash"], proved["block_hash"], "height {height}");
        let other = if height == 0 { "1" } else { "0" };
        refused(&[
            "inclusion",
            "--leaf",
            &block_hash,
            "--index",
            other,
            "--size",
            "301",
            "--root",
            &root,
            "--proof",
            &proof,
        ]);
    }
    refused(&["fetch", &url, "--vkey", &vkey, "--height", "301"]);
    refused(&["fetch", &url, "--vkey", &other_vkey, "--height", "0"]);

    // Every checkpoint of the history verifies and names the true root of the chain's prefix.
    let history = std::fs::read_to_string(site.join("checkpoints")).expect("history");
    let lines: Vec<serde_json::Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!lines.is_empty());
    assert_eq!(lines.last().expect("one")["size"], 301);
    for (i, line) in lines.iter().enumerate() {
        let size = line["size"].as_u64().expect("size");
        let file = dir.path().join(format!("history-{i}"));
        std::fs::write(&file, line["note"].as_str().expect("note")).expect("write");
        let opened = verified(&["note", "--vkey", &vkey, path_str(&file)]);
        assert_eq!(
            (&opened["size"], &opened["root"]),
            (&line["size"], &line["root"])
        );
        let prefix = verified(&[
            "root",
            "--chain",
            path_str(&chain),
            "--size",
            &size.to_string(),
        ]);
        assert_eq!(prefix["root"], line["root"], "history line {i}");
    }

    // Our CLI against the same checkpoints: the chain extends the served one, and the oldest
    // checkpoint of the history is consistent with it, by a proof the Python verifier accepts.
    let (code, _, err) = cli(&[
        "verify",
        "--chain-dir",
        path_str(&chain),
        "--tlog-dir",
        path_str(&tlog),
        "--checkpoint",
        path_str(&served),
        "--vkey",
        &vkey,
    ]);
    assert_eq!(code, 0, "opdbus-chain verify --checkpoint: {err}");
    let oldest = dir.path().join("history-0");
    let (code, out, err) = cli(&[
        "consistency",
        path_str(&oldest),
        path_str(&served),
        "--vkey",
        &vkey,
        "--json",
        "--chain-dir",
        path_str(&chain),
        "--tlog-dir",
        path_str(&tlog),
    ]);
    assert_eq!(code, 0, "opdbus-chain consistency: {err}");
    let consistency: serde_json::Value = serde_json::from_str(&out).expect("consistency --json");
    let proof = consistency["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(|p| p.as_str().expect("hex"))
        .collect::<Vec<_>>()
        .join(",");
    let old_size = lines[0]["size"].as_u64().expect("size");
    let old_root = lines[0]["root"].as_str().expect("root");
    assert!(old_size < 301, "the history starts below 301: {old_size}");
    let check = |old_root: &str| {
        verifier(&[
            "consistency",
            "--old",
            &old_size.to_string(),
            "--old-root",
            old_root,
            "--new",
            "301",
            "--new-root",
            &root,
            "--proof",
            &proof,
        ])
        .0
    };
    assert_eq!(check(old_root), 0, "the CLI's consistency proof, in Python");
    assert_eq!(check(&root), 1, "and not with another old root");

    // A published tile that lies is caught: the proof no longer leads to the signed root.
    let tile = site.join("tile/0/000");
    let mut bytes = std::fs::read(&tile).expect("read tile");
    bytes[32 * 7] ^= 1;
    std::fs::write(&tile, bytes).expect("write tile");
    let why = refused(&["fetch", &url, "--vkey", &vkey, "--height", "6"]);
    assert!(why.contains("leads to root"), "{why}");
    // So is an entry bundle that names another block than the tiles prove.
    let bundle = site.join("tile/entries/001.p/45");
    let mut bytes = std::fs::read(&bundle).expect("read bundle");
    bytes[34 * 10 + 2] ^= 1;
    std::fs::write(&bundle, bytes).expect("write bundle");
    let why = refused(&["fetch", &url, "--vkey", &vkey, "--height", "266"]);
    assert!(
        why.contains("does not hash to its level-0 tile hash"),
        "{why}"
    );
    verified(&["fetch", &url, "--vkey", &vkey, "--height", "265"]);
}
