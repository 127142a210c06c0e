//! opdbus-chain's transparency commands, run as the real binary on chains made with the store
//! and a transparency log written as the daemon writes it (tiles flushed, then the checkpoint
//! signed, appended to the history and published): `key show`, `checkpoint`, `prove` (its proof
//! checked here with RFC 9162's inclusion verification, written from the RFC), `verify` with
//! and without a checkpoint on an intact, rewritten, truncated and forked chain, damaged and
//! missing tiles, `tlog rebuild`, and `consistency`.

mod common;

use common::cli;
use opdbus_blockchain::chain::block::{Block, Caller, Hash};
use opdbus_blockchain::chain::segment::{self, HEADER_LEN};
use opdbus_blockchain::chain::store::{self, StoreOptions};
use opdbus_blockchain::tlog::checkpoint::History;
use opdbus_blockchain::tlog::{Checkpoint, SigningKey, TileWriter};
use opdbus_blockchain::PluginFootprint;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const ORIGIN: &str = "opdbus.test/transparency";
/// Tree size of the fixture's chain (genesis and 599 blocks): two full level-0 tiles, a partial
/// one and partial tiles above.
const SIZE: u64 = 600;
/// The size of the older checkpoint kept for `consistency`.
const OLD_SIZE: u64 = 300;
/// The fork shares this many blocks with the chain.
const FORK_AT: u64 = 100;

struct Fixture {
    dir: tempfile::TempDir,
    /// The chain, its tlog in `chain/tlog` as by default.
    chain: PathBuf,
    /// The same first FORK_AT blocks, then others; its own tlog and checkpoint, signed with the
    /// same key (a log that equivocates).
    fork: PathBuf,
    key: PathBuf,
    vkey: String,
    /// Kept outside the chain directory, as an auditor keeps them.
    old_checkpoint: PathBuf,
    new_checkpoint: PathBuf,
    fork_checkpoint: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        let fork = dir.path().join("fork");
        let key_path = dir.path().join("keys/signing.key");
        let (key, new) = SigningKey::load_or_create(&key_path, ORIGIN).expect("key");
        assert!(new);
        append_blocks(&chain, FORK_AT - 1, "shared");
        copy_dir(&chain, &fork);
        append_blocks(&chain, OLD_SIZE - FORK_AT, "chain");
        let old = publish(&chain, &key);
        append_blocks(&chain, SIZE - OLD_SIZE, "chain");
        let new = publish(&chain, &key);
        append_blocks(&fork, SIZE - FORK_AT, "fork");
        let forked = publish(&fork, &key);
        assert_eq!((old.size, new.size, forked.size), (OLD_SIZE, SIZE, SIZE));
        let keep = |name: &str, checkpoint: &Checkpoint| {
            let path = dir.path().join(name);
            std::fs::write(&path, &checkpoint.note).expect("keep checkpoint");
            path
        };
        Fixture {
            old_checkpoint: keep("old.checkpoint", &old),
            new_checkpoint: keep("new.checkpoint", &new),
            fork_checkpoint: keep("fork.checkpoint", &forked),
            vkey: key.vkey().to_string(),
            key: key_path,
            chain,
            fork,
            dir,
        }
    })
}

/// Appends `n` blocks to the chain in `chain` (created when missing) in small segments, so
/// that the chain spans many segment files.
fn append_blocks(chain: &Path, n: u64, tag: &str) {
    let options = StoreOptions {
        segment_bytes: 8 * 1024,
    };
    let (mut writer, _, _) = store::open(chain, options).expect("open chain");
    for first in (0..n).step_by(25) {
        let batch: Vec<_> = (first..n.min(first + 25))
            .map(|i| {
                let data = serde_json::json!({ "tag": tag, "i": i, "pad": "p".repeat(40) });
                (
                    PluginFootprint::new("transparency", "write", data),
                    Caller::this_process(),
                )
            })
            .collect();
        writer.append(&batch).expect("append");
    }
}

fn block_hashes(chain: &Path) -> Vec<Hash> {
    let reader = store::open_read_only(chain).expect("read chain");
    (0..=reader.head().0)
        .map(|height| reader.hash_at(height).expect("hash"))
        .collect()
}

/// What the daemon does at a checkpoint: tiles written and synced, then the checkpoint signed,
/// appended to the history and published as `<tlog>/checkpoint`.
fn publish(chain: &Path, key: &SigningKey) -> Checkpoint {
    let tlog = chain.join("tlog");
    std::fs::create_dir_all(&tlog).expect("tlog dir");
    let mut writer = TileWriter::new(&tlog);
    for hash in block_hashes(chain) {
        writer.push(&hash);
    }
    writer.flush().expect("flush tiles");
    let checkpoint = Checkpoint::sign(key, ORIGIN, writer.size(), &writer.root()).expect("sign");
    History::new(&tlog.join("checkpoints"))
        .append(&checkpoint)
        .expect("history");
    opdbus_blockchain::files::write_atomic(
        &tlog.join("checkpoint"),
        checkpoint.note.as_bytes(),
        0o644,
    )
    .expect("publish");
    checkpoint
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A copy of the fixture's chain (with its tlog) to change.
fn chain_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    copy_dir(&fixture().chain, &chain);
    (dir, chain)
}

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `verify --checkpoint FILE --vkey VKEY` of `chain`.
fn verify_against(chain: &Path, checkpoint: &Path, vkey: &str) -> (i32, String, String) {
    cli(&[
        "verify",
        "--chain-dir",
        text(chain),
        "--checkpoint",
        text(checkpoint),
        "--vkey",
        vkey,
    ])
}

/// Rewrites the chain consistently from `height` on: that block gets other data, and every
/// later block is re-linked and re-hashed, each segment keeping its first height. The chain
/// verifies on its own afterwards; only a witness of the old tree can tell.
fn rewrite_from(chain: &Path, height: u64) {
    let reader = store::open_read_only(chain).expect("read");
    let blocks: Vec<Block> = (0..=reader.head().0)
        .map(|h| reader.block_at(h).expect("read").expect("present"))
        .collect();
    drop(reader);
    let mut prev = blocks[height as usize - 1].hash;
    let mut rewritten: Vec<Block> = blocks[..height as usize].to_vec();
    for block in &blocks[height as usize..] {
        let data = if block.height == height {
            r#"{"tag":"forged"}"#.to_string()
        } else {
            block.data.clone()
        };
        let block = Block::new(
            block.height,
            block.timestamp_ns,
            prev,
            block.caller.clone(),
            block.plugin.clone(),
            block.operation.clone(),
            data,
        );
        prev = block.hash;
        rewritten.push(block);
    }
    let segments = segment::list(chain).expect("segments");
    for (i, (first, path)) in segments.iter().enumerate() {
        let end = segments
            .get(i + 1)
            .map_or(rewritten.len() as u64, |(next, _)| *next);
        let mut bytes = std::fs::read(path).expect("segment")[..HEADER_LEN].to_vec();
        for block in &rewritten[*first as usize..end as usize] {
            segment::encode_record(block, &mut bytes);
        }
        std::fs::write(path, &bytes).expect("rewrite segment");
    }
    let _ = std::fs::remove_file(chain.join("index"));
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// RFC 9162 §2.1.1: MTH of the leaves `entries`, split at the largest power of two below n.
fn rfc_root(entries: &[Hash]) -> Hash {
    match entries.len() {
        0 => sha256(&[]),
        1 => sha256(&[&[0], &entries[0]]),
        n => {
            let k = n.next_power_of_two() / 2;
            let (left, right) = (rfc_root(&entries[..k]), rfc_root(&entries[k..]));
            sha256(&[&[1], &left, &right])
        }
    }
}

/// RFC 9162 §2.1.3.2: verifying an inclusion proof, step by step as the RFC words it.
fn rfc_verify_inclusion(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: Hash,
    inclusion_path: &[Hash],
    root_hash: Hash,
) -> bool {
    if leaf_index >= tree_size {
        return false;
    }
    let (mut fn_, mut sn) = (leaf_index, tree_size - 1);
    let mut r = leaf_hash;
    for p in inclusion_path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = sha256(&[&[1], p, &r]);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = sha256(&[&[1], &r, p]);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == root_hash
}

fn hash_of(hex_text: &str) -> Hash {
    hex::decode(hex_text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

#[test]
fn key_show_prints_the_verifier_key_and_names_a_missing_key() {
    let f = fixture();
    let (code, out, err) = cli(&["key", "show", "--key", text(&f.key)]);
    assert_eq!((code, out.trim()), (0, f.vkey.as_str()), "{err}");
    let (code, out, _) = cli(&["key", "show", "--key", text(&f.key), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(code, 0);
    assert_eq!(
        (json["vkey"].as_str(), json["name"].as_str()),
        (Some(f.vkey.as_str()), Some(ORIGIN))
    );
    // From the environment, as the daemon's unit sets it.
    let out = Command::new(common::CLI)
        .args(["key", "show"])
        .env("OPDBUS_SIGNING_KEY", &f.key)
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), f.vkey);
    let missing = f.dir.path().join("keys/none.key");
    let (code, out, err) = cli(&["key", "show", "--key", text(&missing)]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err.trim(),
        format!(
            "opdbus-chain: no signing key at {}: opdbus-blockchaind makes one at its first start",
            missing.display()
        )
    );
}

#[test]
fn checkpoint_prints_checks_and_copies_the_published_note() {
    let f = fixture();
    let published = std::fs::read_to_string(f.chain.join("tlog/checkpoint")).expect("read");
    let chain = text(&f.chain);
    let (code, out, err) = cli(&["checkpoint", "--chain-dir", chain]);
    assert_eq!((code, out.as_str()), (0, published.as_str()), "{err}");
    let (code, out, err) = cli(&[
        "checkpoint",
        "--chain-dir",
        chain,
        "--vkey",
        &f.vkey,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    let root = rfc_root(&block_hashes(&f.chain));
    assert_eq!(json["origin"], ORIGIN);
    assert_eq!(json["size"], SIZE);
    assert_eq!(json["root"], hex::encode(root));
    assert_eq!(json["note"], published.as_str());
    let out_file = f.dir.path().join("copies/kept.checkpoint");
    std::fs::create_dir_all(out_file.parent().expect("dir")).expect("mkdir");
    let (code, out, err) = cli(&["checkpoint", "--chain-dir", chain, "--out", text(&out_file)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("size {SIZE}")), "{out}");
    assert_eq!(std::fs::read_to_string(&out_file).expect("copy"), published);
    // Another key's signature check fails; a vkey that is none is a usage error.
    let (other, _) =
        SigningKey::load_or_create(&f.dir.path().join("keys/other.key"), ORIGIN).expect("key");
    let (code, _, err) = cli(&["checkpoint", "--chain-dir", chain, "--vkey", other.vkey()]);
    assert_eq!(code, 1);
    assert!(err.contains("signature does not check"), "{err}");
    let (code, _, err) = cli(&["checkpoint", "--chain-dir", chain, "--vkey", "nonsense"]);
    assert_eq!(code, 2, "{err}");
    let empty = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = cli(&["checkpoint", "--chain-dir", text(empty.path())]);
    assert!(code == 1 && err.contains("no checkpoint at"), "{err}");
}

#[test]
fn prove_gives_proofs_that_check_by_rfc_9162() {
    let f = fixture();
    let hashes = block_hashes(&f.chain);
    let chain = text(&f.chain);
    let cases = [
        (0, None),
        (7, None),
        (255, None),
        (256, None),
        (599, None),
        (0, Some(1)),
        (7, Some(8)),
        (7, Some(300)),
        (256, Some(257)),
        (511, Some(512)),
        (3, Some(SIZE)),
    ];
    for (height, size) in cases {
        let size_arg = size.map(|s| s.to_string());
        let mut args = vec!["prove", "--json", "--chain-dir", chain];
        let height_arg = height.to_string();
        args.push(&height_arg);
        if let Some(size) = &size_arg {
            args.extend(["--size", size]);
        }
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{height} {size:?}: {err}");
        let json: serde_json::Value = serde_json::from_str(&out).expect("json");
        let tree_size = size.unwrap_or(SIZE);
        assert_eq!(json["tree_size"], tree_size);
        let block_hash = hash_of(json["block_hash"].as_str().expect("hash"));
        assert_eq!(block_hash, hashes[height as usize]);
        let leaf = hash_of(json["leaf_hash"].as_str().expect("leaf"));
        assert_eq!(leaf, sha256(&[&[0], &block_hash]));
        let root = hash_of(json["root"].as_str().expect("root"));
        assert_eq!(root, rfc_root(&hashes[..tree_size as usize]));
        let proof: Vec<Hash> = json["proof"]
            .as_array()
            .expect("proof")
            .iter()
            .map(|hash| hash_of(hash.as_str().expect("hex")))
            .collect();
        assert!(
            rfc_verify_inclusion(height, tree_size, leaf, &proof, root),
            "{height} in {tree_size}"
        );
        // The same proof does not prove another leaf.
        if height > 0 {
            assert!(!rfc_verify_inclusion(
                height - 1,
                tree_size,
                leaf,
                &proof,
                root
            ));
        }
    }
    let (code, out, _) = cli(&["prove", "--chain-dir", chain, "9"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("height 9\ntree size {SIZE}\n")),
        "{out}"
    );
    for (height, size, says) in [
        ("600", None, "heights 0 to 599"),
        ("7", Some("601"), "outside 8..=600"),
        ("7", Some("7"), "outside 8..=600"),
    ] {
        let mut args = vec!["prove", "--chain-dir", chain, height];
        if let Some(size) = size {
            args.extend(["--size", size]);
        }
        let (code, _, err) = cli(&args);
        assert!(
            code == 2 && err.contains(says),
            "{height} {size:?}: {code} {err}"
        );
    }
}

#[test]
fn verify_with_the_checkpoint_passes_on_the_intact_chain() {
    let f = fixture();
    let (code, out, err) = verify_against(&f.chain, &f.new_checkpoint, &f.vkey);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "the chain's first {SIZE} blocks give this root; signed by"
        )),
        "{out}"
    );
    assert!(out.contains("all match"), "{out}");
    // An older checkpoint covers a prefix: it checks too, and the vkey may come from a file.
    let vkey_file = f.dir.path().join("log.vkey");
    std::fs::write(&vkey_file, format!("{}\n", f.vkey)).expect("vkey file");
    let (code, out, err) = verify_against(&f.chain, &f.old_checkpoint, text(&vkey_file));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&[
        "verify",
        "--json",
        "--chain-dir",
        text(&f.chain),
        "--checkpoint",
        text(&f.new_checkpoint),
        "--vkey",
        &f.vkey,
    ]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(json["ok"], true);
    assert_eq!(json["checkpoint"]["signature_ok"], true);
    assert_eq!(json["checkpoint"]["chain_root"], json["checkpoint"]["root"]);
    assert_eq!(json["tiles"]["differing"], serde_json::json!([]));
}

#[test]
fn a_consistent_rewrite_of_block_7_is_named_at_height_7() {
    let f = fixture();
    let (_dir, chain) = chain_copy();
    rewrite_from(&chain, 7);
    let (code, out, _) = cli(&[
        "verify",
        "--chain-dir",
        text(&chain),
        "--tlog-dir",
        "/nonexistent",
    ]);
    assert_eq!(code, 0, "the rewritten chain is intact on its own: {out}");
    // Its own tiles and published checkpoint no longer match it.
    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("tlog/checkpoint says"), "{err}");
    assert!(
        out.contains("tile tile/0/000 in") || out.contains("tile tile/entries/000 in"),
        "{out}"
    );
    let (code, out, err) = verify_against(&chain, &f.new_checkpoint, &f.vkey);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("the block at height 7 differs from the one the checkpoint covers"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Rewritten tiles hide which block changed, but not that the chain changed.
    let (code, _, err) = cli(&["tlog", "rebuild", "--chain-dir", text(&chain)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = verify_against(&chain, &f.new_checkpoint, &f.vkey);
    assert_eq!(code, 1);
    assert!(
        err.contains("the tiles in")
            && err.contains("were rewritten too")
            && err.contains("cannot be located"),
        "{err}"
    );
}

#[test]
fn a_truncated_chain_fails_naming_the_sizes() {
    let f = fixture();
    let (_dir, chain) = chain_copy();
    let segments = segment::list(&chain).expect("segments");
    let (first_removed, _) = segments[segments.len() - 2];
    for (_, path) in &segments[segments.len() - 2..] {
        std::fs::remove_file(path).expect("remove segment");
    }
    let (code, out, err) = verify_against(&chain, &f.new_checkpoint, &f.vkey);
    assert_eq!(code, 1, "{out}");
    let expected = format!(
        "the chain holds {first_removed} blocks; the checkpoint {} covers {SIZE}: blocks were cut off",
        f.new_checkpoint.display()
    );
    assert!(err.contains(&expected), "{err}");
    // The published checkpoint beside it says the same without a witness.
    let (code, _, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("the chain holds {first_removed} blocks")),
        "{err}"
    );
}

#[test]
fn a_fork_fails_against_the_chains_checkpoint() {
    let f = fixture();
    // The fork with its own tiles: the chain departs from the checkpoint, the tiles too.
    let (code, out, err) = verify_against(&f.fork, &f.new_checkpoint, &f.vkey);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(&format!("the chain's first {SIZE} blocks give the root"))
            && err.contains("cannot be located"),
        "{err}"
    );
    // The fork put where the chain's tiles are: the first block after the shared ones is named.
    let dir = tempfile::tempdir().expect("tempdir");
    let forked = dir.path().join("chain");
    copy_dir(&f.fork, &forked);
    std::fs::remove_dir_all(forked.join("tlog")).expect("drop the fork's tlog");
    copy_dir(&f.chain.join("tlog"), &forked.join("tlog"));
    let (code, _, err) = verify_against(&forked, &f.new_checkpoint, &f.vkey);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("the block at height {FORK_AT} differs")),
        "{err}"
    );
    // The fork's own checkpoint is signed by the same key: only consistency shows the fork.
    let (code, out, err) = verify_against(&f.fork, &f.fork_checkpoint, &f.vkey);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_checkpoint_signed_by_another_key_fails() {
    let f = fixture();
    let (other, _) =
        SigningKey::load_or_create(&f.dir.path().join("keys/wrong.key"), ORIGIN).expect("key");
    let (code, out, err) = verify_against(&f.chain, &f.new_checkpoint, other.vkey());
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err.trim(),
        format!(
            "opdbus-chain: checkpoint {}: its signature does not check with the verifier key {}",
            f.new_checkpoint.display(),
            other.vkey()
        )
    );
    // A note altered after signing fails the right key too.
    let forged = f.dir.path().join("forged.checkpoint");
    let note = std::fs::read_to_string(&f.new_checkpoint).expect("read");
    std::fs::write(&forged, note.replacen("\n600\n", "\n599\n", 1)).expect("write");
    let (code, _, err) = verify_against(&f.chain, &forged, &f.vkey);
    assert!(
        code == 1 && err.contains("signature does not check"),
        "{err}"
    );
    let (code, _, err) = verify_against(&f.chain, &f.new_checkpoint, "not+a+key");
    assert!(code == 2 && err.contains("not a verifier key"), "{err}");
}

#[test]
fn a_damaged_tile_fails_plain_verify_naming_it() {
    let (_dir, chain) = chain_copy();
    let tile = chain.join("tlog/tile/0/001");
    let mut bytes = std::fs::read(&tile).expect("tile");
    bytes[100] ^= 1;
    std::fs::write(&tile, &bytes).expect("damage");
    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("chain is intact"), "{out}");
    assert!(
        err.contains("tile tile/0/001 in") && err.contains("differs from what the chain gives"),
        "{err}"
    );
}

#[test]
fn a_deleted_tile_is_rebuilt_and_verify_passes_again() {
    let (_dir, chain) = chain_copy();
    let tlog = chain.join("tlog");
    let published = std::fs::read(tlog.join("checkpoint")).expect("checkpoint");
    let history = std::fs::read(tlog.join("checkpoints")).expect("history");
    std::fs::remove_file(tlog.join("tile/0/000")).expect("delete tile");
    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("tile tile/0/000 in")
            && err.contains("published checkpoint (size 600) needs it"),
        "{err}"
    );
    let (code, out, err) = cli(&["tlog", "rebuild", "--json", "--chain-dir", text(&chain)]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["missing_rewritten"], 1, "{out}");
    assert_eq!(json["differing_rewritten"], 0, "{out}");
    assert_eq!(json["size"], SIZE);
    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read(tlog.join("checkpoint")).expect("read"),
        published
    );
    assert_eq!(
        std::fs::read(tlog.join("checkpoints")).expect("read"),
        history
    );
    // Blocks newer than the published checkpoint without tiles yet: a note, not an error.
    append_blocks(&chain, 300, "later");
    let (code, out, err) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("not written yet (first tile/"), "{out}");
    let (code, out, _) = cli(&["tlog", "rebuild", "--chain-dir", text(&chain)]);
    assert_eq!(code, 0);
    assert!(out.contains("rebuilt for 900 blocks"), "{out}");
    let (code, out, _) = cli(&["verify", "--chain-dir", text(&chain)]);
    assert!(code == 0 && out.contains("all match"), "{out}");
}

#[test]
fn tlog_rebuild_refuses_while_the_chain_is_locked() {
    let (_dir, chain) = chain_copy();
    let lock = store::take_lock(&chain).expect("lock");
    let (code, _, err) = cli(&["tlog", "rebuild", "--chain-dir", text(&chain)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("is in use (is opdbus-blockchaind running?)"),
        "{err}"
    );
    drop(lock);
    let (code, _, err) = cli(&["tlog", "rebuild", "--chain-dir", text(&chain)]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_tlog_dir_can_be_elsewhere() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let tlog = dir.path().join("log");
    copy_dir(&f.chain, &chain);
    std::fs::rename(chain.join("tlog"), &tlog).expect("move tlog");
    let run = |tlog_env: &str| {
        Command::new(common::CLI)
            .args(["verify", "--chain-dir", text(&chain)])
            .env("OPDBUS_TLOG_DIR", tlog_env)
            .output()
            .expect("run")
    };
    let out = run(text(&tlog));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all match"),
        "{stdout}"
    );
    // Empty means the default, where there is none now: a note, not an error.
    let out = run("");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("note: no transparency log at"),
        "{stdout}"
    );
}

#[test]
fn consistency_holds_within_one_log_and_fails_for_a_fork() {
    let f = fixture();
    let chain = text(&f.chain);
    let (old, new, fork) = (
        text(&f.old_checkpoint),
        text(&f.new_checkpoint),
        text(&f.fork_checkpoint),
    );
    let (code, out, err) = cli(&[
        "consistency",
        old,
        new,
        "--vkey",
        &f.vkey,
        "--chain-dir",
        chain,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (json["old"]["size"].as_u64(), json["new"]["size"].as_u64()),
        (Some(OLD_SIZE), Some(SIZE))
    );
    assert!(!json["proof"].as_array().expect("proof").is_empty());
    let (code, _, err) = cli(&[
        "consistency",
        new,
        new,
        "--vkey",
        &f.vkey,
        "--chain-dir",
        chain,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&[
        "consistency",
        new,
        old,
        "--vkey",
        &f.vkey,
        "--chain-dir",
        chain,
    ]);
    assert!(
        code == 1 && err.contains("give the older checkpoint first"),
        "{err}"
    );
    // The fork's checkpoint is validly signed, but no proof leads from the chain's old tree
    // to it, whichever log's tiles are asked.
    for tlog in [f.fork.join("tlog"), f.chain.join("tlog")] {
        let (code, _, err) = cli(&[
            "consistency",
            old,
            fork,
            "--vkey",
            &f.vkey,
            "--tlog-dir",
            text(&tlog),
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("(size {OLD_SIZE}) is not a prefix of")),
            "{err}"
        );
    }
    let fork_dir = text(&f.fork);
    let (code, out, err) = cli(&[
        "consistency",
        old,
        fork,
        "--vkey",
        &f.vkey,
        "--chain-dir",
        fork_dir,
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(code, 1);
    assert_eq!(json["ok"], false);
    assert_eq!(
        json["failure"]
            .as_str()
            .map(|failure| format!("opdbus-chain: {failure}\n")),
        Some(err)
    );
    let (other, _) =
        SigningKey::load_or_create(&f.dir.path().join("keys/third.key"), ORIGIN).expect("key");
    let (code, _, err) = cli(&[
        "consistency",
        old,
        new,
        "--vkey",
        other.vkey(),
        "--chain-dir",
        chain,
    ]);
    assert!(
        code == 1 && err.contains(old) && err.contains("signature"),
        "{err}"
    );
    // Another log's checkpoint, even a valid one, is not compared.
    let (elsewhere, _) = SigningKey::load_or_create(
        &f.dir.path().join("keys/elsewhere.key"),
        "opdbus.test/elsewhere",
    )
    .expect("key");
    let signed = |origin: &str, key: &SigningKey, name: &str| {
        let checkpoint = Checkpoint::sign(key, origin, SIZE, &[0; 32]).expect("sign");
        let path = f.dir.path().join(name);
        std::fs::write(&path, checkpoint.note).expect("write");
        path
    };
    let other_log = signed("opdbus.test/elsewhere", &elsewhere, "elsewhere.checkpoint");
    let other_old = signed(
        "opdbus.test/elsewhere",
        &elsewhere,
        "elsewhere-old.checkpoint",
    );
    let (code, _, err) = cli(&[
        "consistency",
        text(&other_old),
        text(&other_log),
        "--vkey",
        elsewhere.vkey(),
        "--chain-dir",
        chain,
    ]);
    assert_eq!(code, 0, "the same tree twice is consistent: {err}");
    let (code, _, err) = cli(&[
        "consistency",
        old,
        text(&other_log),
        "--vkey",
        &f.vkey,
        "--chain-dir",
        chain,
    ]);
    assert_eq!(code, 1, "{err}");
}

/// `verify --checkpoint` on a chain of a million blocks; run with
/// `cargo test --release --test transparency_cli -- --ignored --nocapture`.
#[test]
#[ignore = "a million blocks: run on a release build"]
fn verify_checkpoint_reaches_half_a_million_blocks_a_second() {
    const BLOCKS: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let (mut writer, _, _) = store::open(&chain, StoreOptions::default()).expect("open");
    let mut made = 1;
    while made < BLOCKS {
        let batch: Vec<_> = (made..BLOCKS.min(made + 5000))
            .map(|i| {
                let data = serde_json::json!({ "interface": "eth0", "i": i });
                (
                    PluginFootprint::new("network", "set", data),
                    Caller::this_process(),
                )
            })
            .collect();
        made += batch.len() as u64;
        writer.append_owned(batch).expect("append");
    }
    drop(writer);
    let key_path = dir.path().join("signing.key");
    let (key, _) = SigningKey::load_or_create(&key_path, ORIGIN).expect("key");
    let checkpoint = publish(&chain, &key);
    let kept = dir.path().join("kept.checkpoint");
    std::fs::write(&kept, &checkpoint.note).expect("keep");
    let started = std::time::Instant::now();
    let (code, out, err) = verify_against(&chain, &kept, key.vkey());
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{out}{err}");
    let rate = BLOCKS as f64 / elapsed;
    eprintln!("verify --checkpoint: {BLOCKS} blocks in {elapsed:.2} s = {rate:.0} blocks/s");
    if !cfg!(debug_assertions) {
        assert!(rate >= 500_000.0, "{rate:.0} blocks/s");
    }
}
