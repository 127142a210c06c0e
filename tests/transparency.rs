//! The transparency log of the real daemon on a real private bus, checked from outside: tree
//! hashes, inclusion and consistency proofs are recomputed and verified here by code written
//! from RFC 9162 §2.1 (never with `tlog_tiles`, the crate the daemon uses), signed notes are
//! parsed by hand, and their Ed25519 signatures are checked by python3's `cryptography`, an
//! implementation apart from ours.

mod common;

use common::*;
use futures_util::StreamExt;
use opdbus_blockchain::chain::block::Block;
use opdbus_blockchain::chain::segment::{self, HEADER_LEN};
use opdbus_testkit::SplitMix64;
use rfc::Hash;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Short enough that tests wait little for a checkpoint, long enough to batch many blocks.
const INTERVAL: &str = "200ms";
const UNAVAILABLE: &str = "org.opdbus.Blockchain.Error.Unavailable";
const INVALID_ARGUMENT: &str = "org.opdbus.Blockchain.Error.InvalidArgument";

/// RFC 9162 §2.1, written from the text. Only SHA-256 is borrowed.
mod rfc {
    use sha2::{Digest, Sha256};

    pub type Hash = [u8; 32];

    fn sha256(parts: &[&[u8]]) -> Hash {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    /// §2.1.1: MTH({d(0)}) = SHA-256(0x00 || d(0)).
    pub fn leaf_hash(data: &[u8]) -> Hash {
        sha256(&[&[0], data])
    }

    /// §2.1.1: SHA-256(0x01 || left || right).
    pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
        sha256(&[&[1], left, right])
    }

    /// §2.1.1: the Merkle Tree Hash of the leaf data `leaves` (here: block hashes), split at
    /// the largest power of two smaller than their number.
    pub fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => sha256(&[]),
            1 => leaf_hash(&leaves[0]),
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// Right-shifts both until `fn_`'s lowest bit is set or `fn_` is 0.
    fn shift_until_odd_or_zero(fn_: &mut u64, sn: &mut u64) {
        while *fn_ & 1 == 0 && *fn_ != 0 {
            *fn_ >>= 1;
            *sn >>= 1;
        }
    }

    /// §2.1.3.2: whether `proof` proves the leaf with `leaf` hash at `leaf_index` in the tree of
    /// `tree_size` leaves with `root`.
    pub fn verify_inclusion(
        leaf_index: u64,
        tree_size: u64,
        leaf: &Hash,
        proof: &[Hash],
        root: &Hash,
    ) -> bool {
        if leaf_index >= tree_size {
            return false;
        }
        let (mut fn_, mut sn) = (leaf_index, tree_size - 1);
        let mut r = *leaf;
        for p in proof {
            if sn == 0 {
                return false;
            }
            if fn_ & 1 == 1 || fn_ == sn {
                r = node_hash(p, &r);
                shift_until_odd_or_zero(&mut fn_, &mut sn);
            } else {
                r = node_hash(&r, p);
            }
            fn_ >>= 1;
            sn >>= 1;
        }
        sn == 0 && r == *root
    }

    /// §2.1.4.2: whether `proof` proves that the tree of `second` leaves with `second_hash`
    /// extends the tree of `first` leaves with `first_hash`. Equal sizes: §2.1.4.1's
    /// SUBPROOF(m, D[m], true) is empty, and the roots must be the same.
    pub fn verify_consistency(
        first: u64,
        second: u64,
        first_hash: &Hash,
        second_hash: &Hash,
        proof: &[Hash],
    ) -> bool {
        if first == 0 || first > second {
            return false;
        }
        if first == second {
            return proof.is_empty() && first_hash == second_hash;
        }
        if proof.is_empty() {
            return false;
        }
        let mut path = Vec::with_capacity(proof.len() + 1);
        if first.is_power_of_two() {
            path.push(*first_hash);
        }
        path.extend_from_slice(proof);
        let (mut fn_, mut sn) = (first - 1, second - 1);
        while fn_ & 1 == 1 {
            fn_ >>= 1;
            sn >>= 1;
        }
        let (mut fr, mut sr) = (path[0], path[0]);
        for c in &path[1..] {
            if sn == 0 {
                return false;
            }
            if fn_ & 1 == 1 || fn_ == sn {
                fr = node_hash(c, &fr);
                sr = node_hash(c, &sr);
                shift_until_odd_or_zero(&mut fn_, &mut sn);
            } else {
                sr = node_hash(&sr, c);
            }
            fn_ >>= 1;
            sn >>= 1;
        }
        fr == *first_hash && sr == *second_hash && sn == 0
    }
}

/// A checkpoint (c2sp.org/tlog-checkpoint) in a signed note (c2sp.org/signed-note), parsed
/// here by hand.
#[derive(Clone, Debug)]
struct Note {
    text: String,
    /// What the signatures sign: the lines before the blank line, each ending in a newline.
    body: String,
    origin: String,
    size: u64,
    root: Hash,
    /// (key name, key id, base64 of key id and signature) of each signature line.
    signatures: Vec<(String, [u8; 4], String)>,
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|err| panic!("not base64 ({err}): {text:?}"))
}

fn parse_note(text: &str) -> Note {
    assert!(text.ends_with('\n'), "a note ends with a newline: {text:?}");
    let (body, signature_lines) = text
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no blank line before the signatures: {text:?}"));
    let mut lines = body.split('\n');
    let origin = lines.next().expect("origin line").to_owned();
    let size_line = lines.next().expect("size line");
    assert!(
        size_line.bytes().all(|b| b.is_ascii_digit())
            && !size_line.is_empty()
            && (size_line == "0" || !size_line.starts_with('0')),
        "the size is decimal without leading zeros: {size_line:?}"
    );
    let size = size_line.parse().expect("a size");
    let root: Hash = base64_decode(lines.next().expect("root line"))
        .try_into()
        .expect("a 32-byte root");
    assert!(
        lines.all(|extension| !extension.is_empty()),
        "no empty line in a note's text: {text:?}"
    );
    assert!(!origin.is_empty(), "an origin: {text:?}");
    let signatures = signature_lines
        .lines()
        .map(|line| {
            let rest = line
                .strip_prefix("\u{2014} ")
                .unwrap_or_else(|| panic!("a signature line starts with an em dash: {line:?}"));
            let (name, blob) = rest.split_once(' ').expect("name and signature");
            let bytes = base64_decode(blob);
            assert_eq!(
                bytes.len(),
                4 + 64,
                "key id and Ed25519 signature: {line:?}"
            );
            (
                name.to_owned(),
                bytes[..4].try_into().expect("4 bytes"),
                blob.to_owned(),
            )
        })
        .collect::<Vec<_>>();
    assert!(!signatures.is_empty(), "a signed note: {text:?}");
    Note {
        text: text.to_owned(),
        body: format!("{body}\n"),
        origin,
        size,
        root,
        signatures,
    }
}

/// A signed-note verifier key, `<name>+<8 hex key id>+<base64(0x01 || public key)>`.
#[derive(Clone, Debug)]
struct Vkey {
    text: String,
    name: String,
    id: [u8; 4],
}

fn parse_vkey(text: &str) -> Vkey {
    let mut parts = text.splitn(3, '+');
    let name = parts.next().expect("name");
    let id = parts.next().expect("key id");
    let key = base64_decode(parts.next().expect("key"));
    assert!(!name.is_empty() && id.len() == 8, "vkey {text:?}");
    assert_eq!(
        (key.len(), key[0]),
        (33, 1),
        "an Ed25519 key (algorithm byte 1) in {text:?}"
    );
    Vkey {
        text: text.to_owned(),
        name: name.to_owned(),
        id: hex::decode(id)
            .expect("hex key id")
            .try_into()
            .expect("4 bytes"),
    }
}

/// Runs `python3 -c script args…` with `stdin`; its stdout, or a panic with its stderr.
fn python(script: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// For each item `{vkey, text, signature}`: "ok" when the Ed25519 signature (after the 4-byte
/// key id in `signature`) of `text` checks with the public key in `vkey`, whose key id must be
/// SHA-256(name || "\n" || 0x01 || public key)[:4] (c2sp.org/signed-note).
const CHECK_SIGNATURES_PY: &str = r#"
import base64, hashlib, json, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
verdicts = []
for item in json.load(sys.stdin):
    name, key_id, key = item["vkey"].split("+", 2)
    key = base64.b64decode(key, validate=True)
    blob = base64.b64decode(item["signature"], validate=True)
    if len(key) != 33 or key[0] != 1:
        verdicts.append("not an Ed25519 verifier key")
    elif hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() != key_id:
        verdicts.append("the key id is not the key's")
    elif len(blob) != 68 or blob[:4].hex() != key_id:
        verdicts.append("not signed by this key id")
    else:
        try:
            Ed25519PublicKey.from_public_bytes(key[1:]).verify(blob[4:], item["text"].encode())
            verdicts.append("ok")
        except InvalidSignature:
            verdicts.append("bad signature")
print(json.dumps(verdicts))
"#;

/// The verifier key of the private key file at argv[1] (`PRIVATE+KEY+<name>+<id>+<base64(0x01
/// || seed)>`), derived from the seed.
const VKEY_OF_KEY_FILE_PY: &str = r#"
import base64, hashlib, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
private, keyword, name, key_id, key = open(sys.argv[1]).read().strip().split("+", 4)
assert (private, keyword) == ("PRIVATE", "KEY"), "not a signed-note private key"
key = base64.b64decode(key, validate=True)
assert len(key) == 33 and key[0] == 1, "not an Ed25519 seed"
public = b"\x01" + Ed25519PrivateKey.from_private_bytes(key[1:]).public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw)
id = hashlib.sha256(name.encode() + b"\n" + public).digest()[:4].hex()
assert id == key_id, "the private key's id is not its public key's"
print(f"{name}+{id}+{base64.b64encode(public).decode()}")
"#;

/// The verdict of python3 on each note's signature by `vkey` ("ok", or why not).
fn signature_verdicts(vkey: &Vkey, notes: &[&Note]) -> Vec<String> {
    let items: Vec<serde_json::Value> = notes
        .iter()
        .map(|note| {
            let (name, id, blob) = note
                .signatures
                .iter()
                .find(|(name, id, _)| *name == vkey.name && *id == vkey.id)
                .unwrap_or_else(|| panic!("no signature by {} on {:?}", vkey.text, note.text));
            assert_eq!((name, id), (&vkey.name, &vkey.id));
            serde_json::json!({"vkey": vkey.text, "text": note.body, "signature": blob})
        })
        .collect();
    let out = python(
        CHECK_SIGNATURES_PY,
        &[],
        &serde_json::Value::Array(items).to_string(),
    );
    serde_json::from_str(out.trim()).expect("a JSON list")
}

fn assert_signed(vkey: &Vkey, notes: &[&Note]) {
    for (note, verdict) in notes.iter().zip(signature_verdicts(vkey, notes)) {
        assert_eq!(verdict, "ok", "signature of {:?}", note.text);
    }
}

/// The verifier key python3 derives from a private key file.
fn vkey_of_key_file(path: &Path) -> String {
    python(VKEY_OF_KEY_FILE_PY, &[path.to_str().expect("UTF-8")], "")
        .trim()
        .to_owned()
}

// ---- D-Bus ----

async fn call<B, R>(connection: &zbus::Connection, member: &str, body: &B) -> zbus::Result<R>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
    R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
{
    let reply = connection
        .call_method(Some(BUS_NAME), OBJECT_PATH, Some(BUS_NAME), member, body)
        .await?;
    reply.body().deserialize()
}

async fn get_checkpoint(connection: &zbus::Connection) -> zbus::Result<String> {
    call(connection, "GetCheckpoint", &()).await
}

fn hashes_of(proof: Vec<Vec<u8>>) -> Vec<Hash> {
    proof
        .into_iter()
        .map(|hash| hash.try_into().expect("32-byte hashes"))
        .collect()
}

async fn inclusion_proof(
    connection: &zbus::Connection,
    height: u64,
    tree_size: u64,
) -> zbus::Result<Vec<Hash>> {
    call(connection, "GetInclusionProof", &(height, tree_size))
        .await
        .map(hashes_of)
}

async fn consistency_proof(
    connection: &zbus::Connection,
    old_size: u64,
    new_size: u64,
) -> zbus::Result<Vec<Hash>> {
    call(connection, "GetConsistencyProof", &(old_size, new_size))
        .await
        .map(hashes_of)
}

async fn verifying_key(connection: &zbus::Connection) -> String {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(BUS_NAME, "VerifyingKey"),
        )
        .await
        .expect("VerifyingKey");
    let value: zbus::zvariant::OwnedValue = reply.body().deserialize().expect("a variant");
    String::try_from(value).expect("a string")
}

async fn block_hash(connection: &zbus::Connection, height: u64) -> Hash {
    let json: String = call(connection, "GetBlockByHeight", &(height,))
        .await
        .unwrap_or_else(|err| panic!("GetBlockByHeight {height}: {err}"));
    let block: serde_json::Value = serde_json::from_str(&json).expect("block JSON");
    assert_eq!(block["height"], height);
    hex::decode(block["hash"].as_str().expect("hash"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// The hashes of the blocks at heights `0..size`, asked one by one.
async fn chain_hashes(connection: &zbus::Connection, size: u64) -> Vec<Hash> {
    let mut hashes = Vec::with_capacity(size as usize);
    for height in 0..size {
        hashes.push(block_hash(connection, height).await);
    }
    hashes
}

/// The D-Bus error of a failed call: (name, message).
fn failure<T: std::fmt::Debug>(result: zbus::Result<T>) -> (String, String) {
    match result {
        Err(zbus::Error::MethodError(name, message, _)) => {
            (name.to_string(), message.unwrap_or_default())
        }
        other => panic!("expected a D-Bus error, got {other:?}"),
    }
}

/// Adds `n` corpus footprints from `seed` over all `connections` at once (each connection one
/// call after another, `pace` apart); every `big.0`-th has `big.1` bytes of data. Returns the
/// block hashes by height.
async fn add_footprints(
    connections: &[zbus::Connection],
    n: usize,
    seed: u64,
    big: Option<(usize, usize)>,
    pace: Duration,
) -> BTreeMap<u64, Hash> {
    let footprints = opdbus_testkit::corpus::footprints(seed, n);
    let mut tasks = Vec::new();
    for (lane, connection) in connections.iter().enumerate() {
        let connection = connection.clone();
        let mine: Vec<(String, String, String)> = footprints
            .iter()
            .enumerate()
            .filter(|(i, _)| i % connections.len() == lane)
            .map(|(i, footprint)| {
                let data = match big {
                    Some((every, bytes)) if i % every == every - 1 => {
                        serde_json::json!({"i": i, "blob": "b".repeat(bytes)}).to_string()
                    }
                    _ => footprint.data_json().to_owned(),
                };
                (
                    footprint.plugin_id.clone(),
                    footprint.operation.clone(),
                    data,
                )
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut added = Vec::new();
            for (plugin, operation, data) in mine {
                let (height, hash) = add_footprint(&connection, &plugin, &operation, &data)
                    .await
                    .expect("AddFootprint");
                added.push((height, to_hash(&hash)));
                tokio::time::sleep(pace).await;
            }
            added
        }));
    }
    let mut all = BTreeMap::new();
    for task in tasks {
        all.extend(task.await.expect("writer task"));
    }
    all
}

fn to_hash(hex_text: &str) -> Hash {
    hex::decode(hex_text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// Genesis (asked over D-Bus) followed by `added`, which must be heights 1, 2, … without a gap.
async fn all_hashes(connection: &zbus::Connection, added: &BTreeMap<u64, Hash>) -> Vec<Hash> {
    let mut hashes = vec![block_hash(connection, 0).await];
    for (height, hash) in added {
        assert_eq!(*height, hashes.len() as u64, "heights without a gap");
        hashes.push(*hash);
    }
    hashes
}

async fn connections(bus: &Bus, n: usize) -> Vec<zbus::Connection> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(bus.connect().await);
    }
    all
}

/// Polls GetCheckpoint until it covers `size` blocks (at most 20 s).
async fn wait_for_checkpoint(connection: &zbus::Connection, size: u64) -> Note {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = get_checkpoint(connection).await;
        if let Ok(text) = &last {
            let note = parse_note(text);
            if note.size >= size {
                return note;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of size {size} within 20 s; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn checkpoint_signals(connection: &zbus::Connection) -> zbus::MessageStream {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(BUS_NAME)
        .expect("interface")
        .member("CheckpointIssued")
        .expect("member")
        .build();
    zbus::MessageStream::for_match_rule(rule, connection, None)
        .await
        .expect("match CheckpointIssued")
}

/// The next CheckpointIssued: (size, note).
async fn next_issued(signals: &mut zbus::MessageStream) -> (u64, String) {
    let message = tokio::time::timeout(Duration::from_secs(20), signals.next())
        .await
        .expect("CheckpointIssued within 20 s")
        .expect("stream open")
        .expect("message");
    message.body().deserialize().expect("(ts)")
}

/// Checks inclusion proofs (asked over D-Bus) of `heights` in the tree of the first `size` of
/// `hashes`, against the root computed here.
async fn assert_inclusions(
    connection: &zbus::Connection,
    hashes: &[Hash],
    size: u64,
    heights: &[u64],
) {
    let root = rfc::mth(&hashes[..size as usize]);
    for &height in heights {
        let proof = inclusion_proof(connection, height, size)
            .await
            .unwrap_or_else(|err| panic!("GetInclusionProof({height}, {size}): {err}"));
        assert!(
            rfc::verify_inclusion(
                height,
                size,
                &rfc::leaf_hash(&hashes[height as usize]),
                &proof,
                &root
            ),
            "the inclusion proof of {height} in the tree of {size} does not verify"
        );
    }
}

async fn assert_consistent(
    connection: &zbus::Connection,
    (old, old_root): (u64, &Hash),
    (new, new_root): (u64, &Hash),
) {
    let proof = consistency_proof(connection, old, new)
        .await
        .unwrap_or_else(|err| panic!("GetConsistencyProof({old}, {new}): {err}"));
    assert!(
        rfc::verify_consistency(old, new, old_root, new_root, &proof),
        "the consistency proof from {old} to {new} does not verify"
    );
}

/// `count` heights below `size`, from `rng`.
fn random_heights(rng: &mut SplitMix64, size: u64, count: usize) -> Vec<u64> {
    (0..count).map(|_| rng.below(size)).collect()
}

fn seeded_rng() -> SplitMix64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    eprintln!("random heights from seed {seed}");
    SplitMix64(seed)
}

// ---- the daemon and its files ----

/// A private bus and the daemon on a chain of its own, checkpoints every [`INTERVAL`].
struct Log {
    daemon: Daemon,
    bus: Bus,
    dir: tempfile::TempDir,
}

impl Log {
    fn start(env: &[(&str, &str)]) -> Log {
        let bus = Bus::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all = vec![("OPDBUS_CHECKPOINT_INTERVAL", INTERVAL)];
        all.extend_from_slice(env);
        let daemon = Daemon::start_with_env(
            &bus,
            &dir.path().join("chain"),
            &dir.path().join("cache"),
            &all,
        );
        Log { daemon, bus, dir }
    }

    fn chain(&self) -> PathBuf {
        self.dir.path().join("chain")
    }

    fn tlog(&self) -> PathBuf {
        self.chain().join("tlog")
    }

    /// Where the testkit has the daemon keep its key.
    fn key(&self) -> PathBuf {
        self.dir.path().join("chain.keys/signing.key")
    }
}

/// Every file below `dir` (relative path → bytes).
fn files_below(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("below").to_path_buf();
                out.insert(relative, std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The lines of `<tlog>/checkpoints`, each checked to be a whole JSON object whose note is
/// its size and root.
fn history(tlog: &Path) -> Vec<Note> {
    let text = std::fs::read_to_string(tlog.join("checkpoints")).expect("checkpoints");
    assert!(
        text.ends_with('\n'),
        "the history ends with a whole line: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    text.lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a torn or bad history line ({err}): {line:?}"));
            let note = parse_note(entry["note"].as_str().expect("note"));
            assert_eq!(entry["size"], note.size, "{line}");
            assert_eq!(entry["root"], hex::encode(note.root), "{line}");
            note
        })
        .collect()
}

/// One segment file of a chain directory, decoded.
struct Segment {
    header: Vec<u8>,
    first: u64,
    blocks: Vec<Block>,
}

fn read_segments(chain: &Path) -> Vec<Segment> {
    segment::list(chain)
        .expect("segments")
        .into_iter()
        .map(|(first, path)| {
            let bytes = std::fs::read(&path).expect("read segment");
            let mut blocks = Vec::new();
            let mut at = HEADER_LEN;
            // The records end where the free space (zeros) after them starts.
            let data_end = segment::trailing_zeros_start(&bytes).max(HEADER_LEN);
            while at < data_end {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
                let end = at + segment::record_len(len);
                match segment::parse_complete(&bytes[at..end]) {
                    segment::Parsed::Record { block, .. } => blocks.push(block),
                    other => panic!("{}: at {at}: {other:?}", path.display()),
                }
                at = end;
            }
            Segment {
                header: bytes[..HEADER_LEN].to_vec(),
                first,
                blocks,
            }
        })
        .collect()
}

/// Replaces the chain's segment files by `segments` (the empty ones but the first left out)
/// and removes the height index, which the daemon rebuilds from them.
fn write_segments(chain: &Path, segments: &[Segment]) {
    for (_, path) in segment::list(chain).expect("segments") {
        std::fs::remove_file(path).expect("remove segment");
    }
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 && seg.blocks.is_empty() {
            continue;
        }
        let mut bytes = seg.header.clone();
        for block in &seg.blocks {
            segment::encode_record(block, &mut bytes);
        }
        std::fs::write(chain.join(segment::file_name(seg.first)), bytes).expect("write segment");
    }
    let _ = std::fs::remove_file(chain.join("index"));
}

/// Changes the data of the block at `height` and re-hashes and re-links every block from there
/// on: a chain that verifies on its own, with another history.
fn rewrite_block_consistently(chain: &Path, height: u64) {
    let mut segments = read_segments(chain);
    let mut prev = None;
    for block in segments.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
        if block.height == height {
            block.data =
                serde_json::json!({"rewritten": true, "was": block.data.len()}).to_string();
        }
        if block.height >= height {
            if let Some(prev) = prev {
                block.prev_hash = prev;
            }
            block.hash = opdbus_blockchain::chain::block::sha256(&block.encode());
        }
        prev = Some(block.hash);
    }
    write_segments(chain, &segments);
}

/// Cuts every block above `height` off the chain.
fn cut_chain_after(chain: &Path, height: u64) {
    let mut segments = read_segments(chain);
    for seg in &mut segments {
        seg.blocks.retain(|block| block.height <= height);
    }
    write_segments(chain, &segments);
}

/// The block hashes of a chain directory, read from its segment files.
fn hashes_in_files(chain: &Path) -> Vec<Hash> {
    read_segments(chain)
        .iter()
        .flat_map(|s| s.blocks.iter())
        .enumerate()
        .map(|(i, block)| {
            assert_eq!(block.height, i as u64);
            block.hash
        })
        .collect()
}

// ---- 1. the bar ----

/// The whole path once, on a small chain: 60 footprints over D-Bus, the signed checkpoint of
/// 61 blocks parsed and its signature checked outside Rust, its root recomputed from the
/// blocks, inclusion and consistency proofs verified, out-of-range arguments refused; and the
/// CLI catches a consistent rewrite of the chain with that checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_footprints_give_a_signed_checkpoint_whose_root_and_proofs_check_from_outside() {
    let log = Log::start(&[]);
    let connection = log.bus.connect().await;
    let mut signals = checkpoint_signals(&connection).await;
    let added = add_footprints(
        std::slice::from_ref(&connection),
        60,
        16,
        None,
        Duration::ZERO,
    )
    .await;

    let mut last_size = 0;
    let issued = loop {
        let (size, text) = next_issued(&mut signals).await;
        assert!(
            size > last_size,
            "signalled sizes grow: {last_size} then {size}"
        );
        assert_eq!(parse_note(&text).size, size);
        last_size = size;
        if size >= 61 {
            break text;
        }
    };
    let note = parse_note(&issued);
    assert_eq!(note.size, 61);
    assert_eq!(
        get_checkpoint(&connection).await.expect("GetCheckpoint"),
        issued
    );
    assert_eq!(
        std::fs::read_to_string(log.tlog().join("checkpoint")).expect("checkpoint file"),
        issued
    );

    // The origin names this chain; the key was made for it.
    let chain_id = std::fs::read_to_string(log.dir.path().join("chain.chain-id")).expect("marker");
    assert!(
        note.origin
            .ends_with(&format!("/opdbus-blockchain/{}", &chain_id.trim()[..16])),
        "origin {:?}, chain id {chain_id}",
        note.origin
    );
    let vkey = parse_vkey(&verifying_key(&connection).await);
    assert_eq!(vkey.name, note.origin);
    assert_eq!(note.signatures.len(), 1);
    assert_signed(&vkey, &[&note]);
    // The checker can say no: another size under the same signature is refused.
    let mut forged = note.clone();
    forged.body = forged.body.replacen("\n61\n", "\n60\n", 1);
    assert_eq!(signature_verdicts(&vkey, &[&forged]), ["bad signature"]);

    // The root from the 61 blocks as the daemon serves them.
    let hashes = chain_hashes(&connection, 61).await;
    assert_eq!(hashes[1..], added.values().copied().collect::<Vec<_>>()[..]);
    assert_eq!(rfc::mth(&hashes), note.root);

    let mut rng = seeded_rng();
    let mut heights = random_heights(&mut rng, 61, 20);
    heights.extend([0, 60]);
    assert_inclusions(&connection, &hashes, 61, &heights).await;
    for size in [1u64, 2, 17, 32, 33, 60] {
        let mut heights = random_heights(&mut rng, size, 4);
        heights.extend([0, size - 1]);
        assert_inclusions(&connection, &hashes, size, &heights).await;
    }
    for old in 1..=61u64 {
        assert_consistent(
            &connection,
            (old, &rfc::mth(&hashes[..old as usize])),
            (61, &note.root),
        )
        .await;
    }
    assert_consistent(
        &connection,
        (17, &rfc::mth(&hashes[..17])),
        (33, &rfc::mth(&hashes[..33])),
    )
    .await;

    // The verifiers here can say no as well.
    let proof = inclusion_proof(&connection, 7, 61).await.expect("proof");
    let leaf = rfc::leaf_hash(&hashes[7]);
    assert!(rfc::verify_inclusion(7, 61, &leaf, &proof, &note.root));
    assert!(!rfc::verify_inclusion(8, 61, &leaf, &proof, &note.root));
    let mut bent = proof.clone();
    bent[2][0] ^= 1;
    assert!(!rfc::verify_inclusion(7, 61, &leaf, &bent, &note.root));
    let proof = consistency_proof(&connection, 17, 61).await.expect("proof");
    let old_root = rfc::mth(&hashes[..17]);
    assert!(rfc::verify_consistency(
        17, 61, &old_root, &note.root, &proof
    ));
    assert!(!rfc::verify_consistency(
        17,
        61,
        &rfc::mth(&hashes[..16]),
        &note.root,
        &proof
    ));
    let mut bent = proof.clone();
    bent[0][31] ^= 1;
    assert!(!rfc::verify_consistency(
        17, 61, &old_root, &note.root, &bent
    ));

    // Out of range: InvalidArgument naming the valid range.
    for (result, expected) in [
        (
            inclusion_proof(&connection, 61, 61).await,
            "valid heights are 0 to 60",
        ),
        (
            inclusion_proof(&connection, 0, 62).await,
            "valid sizes are 1 to 61",
        ),
        (
            inclusion_proof(&connection, 0, 0).await,
            "valid sizes are 1 to 61",
        ),
        (
            consistency_proof(&connection, 1, 62).await,
            "valid sizes are 1 to 61",
        ),
        (
            consistency_proof(&connection, 0, 61).await,
            "from 1 to the new size 61",
        ),
        (
            consistency_proof(&connection, 30, 20).await,
            "from 1 to the new size 20",
        ),
    ] {
        let (name, message) = failure(result);
        assert_eq!(name, INVALID_ARGUMENT, "{message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    assert_eq!(
        consistency_proof(&connection, 61, 61).await.expect("empty"),
        Vec::<Hash>::new()
    );

    cli_verify_catches_a_consistent_rewrite(&log, &note, &vkey);
}

/// `opdbus-chain verify --checkpoint FILE --vkey VKEY` on a copy of the chain (with its tiles)
/// whose block 7 was rewritten and every later block re-linked: the chain alone verifies, the
/// checkpoint kept elsewhere does not, and the tiles locate the changed height.
fn cli_verify_catches_a_consistent_rewrite(log: &Log, note: &Note, vkey: &Vkey) {
    let copy = tempfile::tempdir().expect("tempdir");
    let chain = copy.path().join("chain");
    std::fs::create_dir(&chain).expect("mkdir");
    for (_, path) in segment::list(&log.chain()).expect("segments") {
        std::fs::copy(&path, chain.join(path.file_name().expect("name"))).expect("copy");
    }
    for (relative, bytes) in files_below(&log.tlog()) {
        let to = chain.join("tlog").join(relative);
        std::fs::create_dir_all(to.parent().expect("dir")).expect("mkdir");
        std::fs::write(to, bytes).expect("copy tlog");
    }
    let checkpoint = copy.path().join("kept.checkpoint");
    std::fs::write(&checkpoint, &note.text).expect("write checkpoint");
    let no_tlog = copy.path().join("no-tlog");
    let (chain_arg, checkpoint_arg, no_tlog_arg) = (
        chain.to_str().expect("UTF-8"),
        checkpoint.to_str().expect("UTF-8"),
        no_tlog.to_str().expect("UTF-8"),
    );
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--chain-dir", chain_arg];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let with_checkpoint = ["--checkpoint", checkpoint_arg, "--vkey", &vkey.text];
    let (code, out, err) = verify(&with_checkpoint);
    assert_eq!(code, 0, "the untouched copy: {out}{err}");

    rewrite_block_consistently(&chain, 7);
    let (code, out, err) = verify(&["--tlog-dir", no_tlog_arg]);
    assert_eq!(
        code, 0,
        "a consistent rewrite verifies on its own: {out}{err}"
    );
    let (code, out, err) = verify(&with_checkpoint);
    assert_eq!(code, 1, "the checkpoint catches the rewrite: {out}{err}");
    assert!(
        format!("{out}{err}").contains("the block at height 7 differs"),
        "{out}{err}"
    );
}

// ---- 2. many segments, tile boundaries ----

/// A chain over many segments (64 KiB each, some footprints of 40 KB): proofs of random
/// heights at tree sizes on both sides of tile boundaries (255/256/257, 511–513, 767–769) and
/// past level-1 tiles, served from full and partial tiles alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_hold_across_segments_and_tile_boundaries() {
    let log = Log::start(&[("OPDBUS_SEGMENT_BYTES", "65536")]);
    let writers = connections(&log.bus, 8).await;
    let n = 2600;
    let added = add_footprints(&writers, n, 2, Some((50, 40_000)), Duration::ZERO).await;
    let connection = &writers[0];
    let hashes = all_hashes(connection, &added).await;
    let size = hashes.len() as u64;
    let note = wait_for_checkpoint(connection, size).await;
    assert_eq!(note.size, size);
    assert_eq!(note.root, rfc::mth(&hashes));
    let segments = segment::list(&log.chain()).expect("segments").len();
    assert!(segments >= 10, "{segments} segments");

    let mut rng = seeded_rng();
    for height in random_heights(&mut rng, size, 30) {
        assert_eq!(
            block_hash(connection, height).await,
            hashes[height as usize]
        );
    }
    let sizes = [
        255,
        256,
        257,
        511,
        512,
        513,
        600,
        767,
        768,
        769,
        2048,
        2049,
        size - 1,
        size,
    ];
    for tree_size in sizes {
        let mut heights = random_heights(&mut rng, tree_size, 8);
        heights.extend(
            [0, 255, 256, tree_size - 1]
                .iter()
                .filter(|h| **h < tree_size),
        );
        assert_inclusions(connection, &hashes, tree_size, &heights).await;
    }
    let root = |n: u64| rfc::mth(&hashes[..n as usize]);
    for (old, new) in [
        (255, 256),
        (256, 257),
        (257, 769),
        (1, size),
        (511, 2049),
        (600, size),
        (256, 65 * 8),
        (size - 1, size),
        (rng.below(size) + 1, size),
    ] {
        assert_consistent(connection, (old, &root(old)), (new, &root(new))).await;
    }
    let tiles = log.tlog().join("tile");
    assert!(tiles.join("0/009").is_file(), "full level-0 tiles");
    assert!(tiles.join("entries/009").is_file(), "full entry bundles");
    assert!(
        tiles.join(format!("1/000.p/{}", size / 256)).is_file(),
        "the level-1 partial tile"
    );
}

// ---- 3. concurrent writers ----

/// 16 connections write at once while checkpoints are issued: each CheckpointIssued and each
/// GetCheckpoint answer is signed, has the root of the blocks it covers, and sizes only grow;
/// every checkpoint in the history is consistent with the one before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_under_sixteen_writers_grow_consistently() {
    let log = Log::start(&[]);
    let listener = log.bus.connect().await;
    let mut signals = checkpoint_signals(&listener).await;
    let writers = connections(&log.bus, 16).await;

    let writing = {
        let writers = writers.clone();
        tokio::spawn(async move {
            add_footprints(&writers, 16 * 45, 3, None, Duration::from_millis(20)).await
        })
    };
    // Asks GetCheckpoint over and over and, for each new checkpoint, proofs at its size right
    // away, while the tree grows under them; the proofs are checked once all hashes are known.
    let polling = {
        let connection = log.bus.connect().await;
        tokio::spawn(async move {
            let mut seen: Vec<Note> = Vec::new();
            let mut inclusions = Vec::new();
            let mut consistencies = Vec::new();
            let mut rng = SplitMix64(3);
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.last().is_none_or(|note| note.size < 16 * 45 + 1) {
                assert!(Instant::now() < deadline, "no final checkpoint");
                if let Ok(text) = get_checkpoint(&connection).await {
                    let note = parse_note(&text);
                    if seen.last().is_none_or(|last| last.text != note.text) {
                        for height in [note.size - 1, rng.below(note.size)] {
                            let proof = inclusion_proof(&connection, height, note.size)
                                .await
                                .unwrap_or_else(|err| {
                                    panic!("GetInclusionProof({height}, {}): {err}", note.size)
                                });
                            inclusions.push((height, note.size, note.root, proof));
                        }
                        if let Some(last) = seen.last() {
                            let proof = consistency_proof(&connection, last.size, note.size)
                                .await
                                .unwrap_or_else(|err| {
                                    panic!(
                                        "GetConsistencyProof({}, {}): {err}",
                                        last.size, note.size
                                    )
                                });
                            consistencies.push((last.size, last.root, note.size, note.root, proof));
                        }
                        seen.push(note);
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (seen, inclusions, consistencies)
        })
    };
    let added = writing.await.expect("writers");
    let (polled, inclusions, consistencies) = polling.await.expect("poller");
    let mut signalled = Vec::new();
    loop {
        let (size, text) = next_issued(&mut signals).await;
        let note = parse_note(&text);
        assert_eq!(note.size, size);
        signalled.push(note);
        if size == 16 * 45 + 1 {
            break;
        }
    }
    let hashes = all_hashes(&listener, &added).await;
    let vkey = parse_vkey(&verifying_key(&listener).await);
    let on_file = history(&log.tlog());

    for (what, notes) in [
        ("signalled", &signalled),
        ("polled", &polled),
        ("history", &on_file),
    ] {
        assert!(notes.len() >= 3, "{what}: only {} checkpoints", notes.len());
        for pair in notes.windows(2) {
            assert!(
                pair[0].size < pair[1].size,
                "{what}: size {} after {}",
                pair[1].size,
                pair[0].size
            );
        }
        for note in notes.iter() {
            assert_eq!(
                note.root,
                rfc::mth(&hashes[..note.size as usize]),
                "{what}: the root of checkpoint {}",
                note.size
            );
        }
        assert_signed(&vkey, &notes.iter().collect::<Vec<_>>());
    }
    // What was signalled or seen was published: it is in the history.
    for note in signalled.iter().chain(&polled) {
        assert!(
            on_file.iter().any(|kept| kept.text == note.text),
            "checkpoint {} is not in the history",
            note.size
        );
    }
    assert!(consistencies.len() >= 2, "proofs asked while writing");
    for (height, size, root, proof) in &inclusions {
        let leaf = rfc::leaf_hash(&hashes[*height as usize]);
        assert!(
            rfc::verify_inclusion(*height, *size, &leaf, proof, root),
            "inclusion of {height} in {size}, asked while writing"
        );
    }
    for (old, old_root, new, new_root, proof) in &consistencies {
        assert!(
            rfc::verify_consistency(*old, *new, old_root, new_root, proof),
            "consistency from {old} to {new}, asked while writing"
        );
    }
    for pair in on_file.windows(2) {
        assert_consistent(
            &listener,
            (pair[0].size, &pair[0].root),
            (pair[1].size, &pair[1].root),
        )
        .await;
    }
}

// ---- 4. kill -9 ----

/// kill -9 while footprints flow, three times: the checkpoint read from the file just before
/// each kill stays provable after the restart (inclusion at its size, consistency to the next
/// checkpoint), and the history has only whole lines (also after a torn line was left at its
/// end, as a power cut in the middle of an append would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_published_before_kill_9_stays_provable() {
    let mut log = Log::start(&[]);
    let mut rng = seeded_rng();
    for round in 0..3 {
        let writers = connections(&log.bus, 4).await;
        let first = add_footprints(&writers, 40, 40 + round, None, Duration::ZERO).await;
        let head = *first.keys().last().expect("added");
        wait_for_checkpoint(&writers[0], head + 1).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut flowing = Vec::new();
        for (lane, connection) in writers.iter().enumerate() {
            let (connection, stop) = (connection.clone(), stop.clone());
            flowing.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let data = format!(r#"{{"lane":{lane},"i":{i}}}"#);
                    if add_footprint(&connection, "kill", "flow", &data)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.below(500))).await;
        let before = parse_note(
            &std::fs::read_to_string(log.tlog().join("checkpoint")).expect("checkpoint file"),
        );
        log.daemon.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in flowing {
            task.await.expect("writer");
        }
        if round == 1 {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(log.tlog().join("checkpoints"))
                .expect("history")
                .write_all(br#"{"size":99999,"root":"00"#)
                .expect("tear");
        }
        log.daemon.restart(&log.bus);

        let connection = log.bus.connect().await;
        let vkey = parse_vkey(&verifying_key(&connection).await);
        assert_signed(&vkey, &[&before]);
        let more = add_footprints(
            std::slice::from_ref(&connection),
            5,
            50 + round,
            None,
            Duration::ZERO,
        )
        .await;
        let head = *more.keys().last().expect("added");
        let after = wait_for_checkpoint(&connection, head + 1).await;
        let hashes = chain_hashes(&connection, head + 1).await;
        assert_eq!(rfc::mth(&hashes[..before.size as usize]), before.root);
        assert_eq!(rfc::mth(&hashes[..after.size as usize]), after.root);
        let mut heights = random_heights(&mut rng, before.size, 6);
        heights.push(before.size - 1);
        assert_inclusions(&connection, &hashes, before.size, &heights).await;
        assert_consistent(
            &connection,
            (before.size, &before.root),
            (after.size, &after.root),
        )
        .await;

        let kept = history(&log.tlog());
        assert!(
            kept.iter().any(|note| note.text == before.text),
            "round {round}: the checkpoint before the kill is in the history"
        );
        for pair in kept.windows(2) {
            assert!(pair[0].size < pair[1].size, "round {round}: sizes grow");
        }
    }
    let text = log.daemon.log_text();
    assert!(
        text.contains("dropping the torn last line of the checkpoint history"),
        "the daemon says it cut the torn line"
    );
}

// ---- 5. tiles rebuilt ----

/// Tiles removed or damaged while the daemon is stopped (full and partial, hash tiles and
/// entry bundles) are rewritten at the next start, byte for byte as before; the log says how
/// many; proofs verify again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_missing_tiles_are_rebuilt_at_start() {
    let mut log = Log::start(&[]);
    let writers = connections(&log.bus, 8).await;
    let added = add_footprints(&writers, 700, 5, None, Duration::ZERO).await;
    let hashes = all_hashes(&writers[0], &added).await;
    let size = hashes.len() as u64;
    drop(writers);
    assert!(log.daemon.stop().success());
    let tlog = log.tlog();
    let before = files_below(&tlog);
    let note = parse_note(&std::fs::read_to_string(tlog.join("checkpoint")).expect("checkpoint"));
    assert_eq!((note.size, note.root), (size, rfc::mth(&hashes)));

    let tile = |path: &str| tlog.join("tile").join(path);
    for path in ["0/001", "entries/000", "1/000.p/2", "entries/002.p/189"] {
        assert!(tile(path).is_file(), "{path} is there before the damage");
    }
    std::fs::remove_file(tile("0/001")).expect("remove a full tile");
    std::fs::remove_file(tile("entries/002.p/189")).expect("remove a partial bundle");
    let mut junk = std::fs::read(tile("entries/000")).expect("bundle");
    junk[100] ^= 0xff;
    std::fs::write(tile("entries/000"), junk).expect("damage a full bundle");
    let mut junk = std::fs::read(tile("1/000.p/2")).expect("partial");
    junk[40] ^= 0xff;
    std::fs::write(tile("1/000.p/2"), junk).expect("damage a partial tile");

    log.daemon.restart(&log.bus);
    let connection = log.bus.connect().await;
    let again = wait_for_checkpoint(&connection, size).await;
    assert_eq!(
        again.text, note.text,
        "no new checkpoint: the tree did not grow"
    );
    assert!(
        log.daemon
            .log_text()
            // The deleted partial bundle is rewritten without a word: a partial narrower
            // than the chain is also the normal lag after a kill.
            .contains("rebuilt 1 missing and 2 damaged tile(s) from the chain"),
        "{}",
        log.daemon.log_text()
    );
    assert_eq!(files_below(&tlog), before, "the tiles are what they were");
    let mut rng = seeded_rng();
    for tree_size in [200, 256, 513, size] {
        let mut heights = random_heights(&mut rng, tree_size, 6);
        heights.push(tree_size - 1);
        assert_inclusions(&connection, &hashes, tree_size, &heights).await;
    }
    assert_consistent(
        &connection,
        (300, &rfc::mth(&hashes[..300])),
        (size, &note.root),
    )
    .await;
}

// ---- 6. halt ----

/// Runs a daemon to 81 blocks and stops it; `tamper` changes its chain directory; restarted on
/// it, the log must halt with a reason containing `reason`, refuse proofs, leave every tlog
/// file as it was, and the chain must still take footprints.
async fn assert_halts_after(tamper: impl FnOnce(&Path), reason: &str) {
    let mut log = Log::start(&[]);
    let connection = log.bus.connect().await;
    let added = add_footprints(
        std::slice::from_ref(&connection),
        80,
        6,
        None,
        Duration::ZERO,
    )
    .await;
    wait_for_checkpoint(&connection, 81).await;
    drop(connection);
    assert!(log.daemon.stop().success());
    let tlog = log.tlog();
    let before = files_below(&tlog);
    assert_eq!(
        parse_note(&String::from_utf8_lossy(&before[Path::new("checkpoint")])).size,
        81
    );
    assert_eq!(added.len(), 80);

    tamper(&log.chain());
    log.daemon.restart(&log.bus);
    let connection = log.bus.connect().await;
    // Unavailable at first in any case (the log is starting): wait for the verdict.
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        let (name, message) = failure(get_checkpoint(&connection).await);
        assert_eq!(name, UNAVAILABLE, "{message}");
        if message.contains("halted") || Instant::now() > deadline {
            break message;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(message.contains(reason), "{message:?} lacks {reason:?}");
    for result in [
        inclusion_proof(&connection, 1, 10).await,
        consistency_proof(&connection, 1, 10).await,
    ] {
        let (name, message) = failure(result);
        assert_eq!(name, UNAVAILABLE, "{message}");
        assert!(message.contains(reason), "{message:?}");
    }
    let (height, _) = add_footprint(&connection, "halt", "write", r#"{"still":"taken"}"#)
        .await
        .expect("the chain still takes footprints");
    assert!(height > 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        failure(get_checkpoint(&connection).await).0,
        UNAVAILABLE,
        "still halted"
    );
    assert!(
        log.daemon.log_text().contains(reason),
        "the journal says why"
    );
    drop(connection);
    assert!(log.daemon.stop().success());
    assert!(
        files_below(&tlog) == before,
        "the tlog files are untouched, also by the clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_cut_below_its_checkpoint_halts_the_log_and_writes_go_on() {
    assert_halts_after(
        |chain| cut_chain_after(chain, 60),
        "the chain holds 61 blocks but checkpoint 81 covered 81",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistently_rewritten_block_halts_the_log_and_writes_go_on() {
    assert_halts_after(
        |chain| rewrite_block_consistently(chain, 7),
        "the chain does not extend checkpoint 81",
    )
    .await;
}

// ---- 7. the key ----

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    files_below(dir)
        .into_iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
        .map(|(path, _)| path)
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// The key's secret in the forms it could leak in: the file's line, its base64 and the seed.
fn secret_forms(key_file: &Path) -> Vec<Vec<u8>> {
    let line = std::fs::read_to_string(key_file).expect("key file");
    // PRIVATE+KEY+<name>+<id>+<base64>: the base64 may hold '+' itself.
    let encoded = line
        .trim()
        .splitn(5, '+')
        .nth(4)
        .expect("base64")
        .to_owned();
    let seed = base64_decode(&encoded)[1..].to_vec();
    assert_eq!(seed.len(), 32);
    vec![line.trim().as_bytes().to_vec(), encoded.into_bytes(), seed]
}

/// The key is made at the first start where it was configured, 0600 in a 0700 directory, and
/// none of its secret is anywhere in the chain or cache directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_is_made_private_and_outside_the_chain() {
    let mut log = Log::start(&[]);
    let connection = log.bus.connect().await;
    add_footprints(
        std::slice::from_ref(&connection),
        20,
        7,
        None,
        Duration::ZERO,
    )
    .await;
    let note = wait_for_checkpoint(&connection, 21).await;
    let key = log.key();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(key.parent().expect("dir")), 0o700);
    let vkey = verifying_key(&connection).await;
    assert_eq!(
        vkey_of_key_file(&key),
        vkey,
        "the key file is the key in use"
    );
    assert_signed(&parse_vkey(&vkey), &[&note]);
    drop(connection);
    assert!(log.daemon.stop().success());
    for secret in secret_forms(&key) {
        for dir in [log.chain(), log.dir.path().join("cache")] {
            assert_eq!(
                files_containing(&dir, &secret),
                Vec::<PathBuf>::new(),
                "the key's secret in {}",
                dir.display()
            );
        }
    }
}

/// Starts a daemon that must refuse to start; its log.
fn refused_start(options: opdbus_testkit::process::DaemonOptions, bus: &Bus) -> String {
    match opdbus_testkit::Daemon::start(bus, options) {
        Ok(_) => panic!("the daemon started"),
        Err(why) => why,
    }
}

fn options_with_key(
    chain: &Path,
    cache: &Path,
    key: &Path,
) -> opdbus_testkit::process::DaemonOptions {
    let mut options = opdbus_testkit::process::DaemonOptions::new(DAEMON, chain, cache);
    options.env.retain(|(name, _)| name != "OPDBUS_SIGNING_KEY");
    options
        .env("OPDBUS_SIGNING_KEY", key.to_str().expect("UTF-8"))
        .env("OPDBUS_CHECKPOINT_INTERVAL", INTERVAL)
}

/// A key path inside the chain directory, and a key file others may read, stop the start with
/// a message naming what is wrong; no key is made inside the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_inside_the_chain_or_readable_by_others_is_refused_at_start() {
    let mut log = Log::start(&[]);
    assert!(log.daemon.stop().success());
    let (chain, cache) = (log.chain(), log.dir.path().join("cache"));

    let inside = chain.join("keys/signing.key");
    let why = refused_start(options_with_key(&chain, &cache, &inside), &log.bus);
    assert!(
        why.contains(&format!(
            "the signing key {} is inside {}",
            inside.display(),
            chain.display()
        )),
        "{why}"
    );
    assert!(
        !inside.exists() && !chain.join("keys").exists(),
        "nothing made inside"
    );

    let key = log.key();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let why = refused_start(options_with_key(&chain, &cache, &key), &log.bus);
    assert!(
        why.contains(&format!("signing key {}: mode 0644", key.display())),
        "{why}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    log.daemon.restart(&log.bus);
}

/// With OPDBUS_SIGNING_KEY unset the daemon signs with the systemd credential
/// `opdbus-signing-key` (mode 0400): its VerifyingKey is that key's, and it never writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_credential_signs_and_is_never_written() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, cache) = (dir.path().join("chain"), dir.path().join("cache"));
    // A key made by a first daemon, then handed over as a credential (`install -m 0400`).
    let mut first = Daemon::start_with_env(&bus, &chain, &cache, &[]);
    assert!(first.stop().success());
    let made = dir.path().join("chain.keys/signing.key");
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).expect("mkdir");
    let credential = credentials.join("opdbus-signing-key");
    std::fs::copy(&made, &credential).expect("copy");
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    std::fs::remove_file(&made).expect("remove the made key");
    let credential_bytes = std::fs::read(&credential).expect("read");
    let modified = std::fs::metadata(&credential)
        .expect("stat")
        .modified()
        .expect("mtime");

    let mut options = opdbus_testkit::process::DaemonOptions::new(DAEMON, &chain, &cache)
        .env(
            "CREDENTIALS_DIRECTORY",
            credentials.to_str().expect("UTF-8"),
        )
        .env("OPDBUS_CHECKPOINT_INTERVAL", INTERVAL);
    // Unset, the daemon falls back to the host's /var/lib/op-dbus/keys when there is no
    // credential: the credential must be there before it starts.
    options.env.retain(|(name, _)| name != "OPDBUS_SIGNING_KEY");
    assert!(std::env::var_os("OPDBUS_SIGNING_KEY").is_none());
    assert!(credential.is_file());
    let mut daemon = opdbus_testkit::Daemon::start(&bus, options).unwrap_or_else(|e| panic!("{e}"));
    let connection = bus.connect().await;
    let vkey = verifying_key(&connection).await;
    assert_eq!(vkey, vkey_of_key_file(&credential));
    add_footprints(
        std::slice::from_ref(&connection),
        10,
        8,
        None,
        Duration::ZERO,
    )
    .await;
    let note = wait_for_checkpoint(&connection, 11).await;
    assert_signed(&parse_vkey(&vkey), &[&note]);
    drop(connection);
    daemon.stop(None).expect("stop");

    assert!(
        !made.exists(),
        "no key was made at OPDBUS_SIGNING_KEY's place"
    );
    assert_eq!(std::fs::read(&credential).expect("read"), credential_bytes);
    assert_eq!(
        std::fs::metadata(&credential)
            .expect("stat")
            .modified()
            .expect("mtime"),
        modified
    );
    assert_eq!(mode(&credential), 0o400);
    assert_eq!(
        std::fs::read_dir(&credentials).expect("list").count(),
        1,
        "nothing else written beside the credential"
    );
}

// ---- 8. clean stop ----

/// With an interval far longer than the test, the only checkpoint after the first is the one a
/// clean stop issues: it covers every acknowledged footprint (tree size = head + 1, root of all
/// blocks as the segment files hold them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_issues_a_checkpoint_of_every_acknowledged_footprint() {
    let mut log = Log::start(&[("OPDBUS_CHECKPOINT_INTERVAL", "1h")]);
    let writers = connections(&log.bus, 4).await;
    let first = wait_for_checkpoint(&writers[0], 1).await;
    assert_eq!(first.size, 1, "the start issues the genesis checkpoint");
    let added = add_footprints(&writers, 50, 9, None, Duration::ZERO).await;
    assert_eq!(
        parse_note(&get_checkpoint(&writers[0]).await.expect("checkpoint")).size,
        1,
        "no round ran in between"
    );
    drop(writers);
    assert!(log.daemon.stop().success());

    let hashes = hashes_in_files(&log.chain());
    assert_eq!(hashes.len(), 51);
    assert_eq!(hashes[1..], added.values().copied().collect::<Vec<_>>()[..]);
    let note = parse_note(
        &std::fs::read_to_string(log.tlog().join("checkpoint")).expect("checkpoint file"),
    );
    assert_eq!(
        note.size,
        hashes.len() as u64,
        "tree size = head height + 1"
    );
    assert_eq!(note.root, rfc::mth(&hashes));
    let kept = history(&log.tlog());
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[1].text, note.text);
    let vkey = vkey_of_key_file(&log.key());
    assert_signed(&parse_vkey(&vkey), &[&note, &first]);

    // tools/verify-checkpoint.py, the project's own verifier from the same texts, agrees.
    let tool = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("python3")
            .arg(repo_path("tools/verify-checkpoint.py"))
            .args(args)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "verify-checkpoint.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let file = log.tlog().join("checkpoint");
    let opened = tool(&["note", "--vkey", &vkey, file.to_str().expect("UTF-8")]);
    assert_eq!(opened["size"], 51);
    assert_eq!(opened["root"], hex::encode(note.root));
    let root = tool(&[
        "root",
        "--chain",
        log.chain().to_str().expect("UTF-8"),
        "--size",
        "51",
    ]);
    assert_eq!(root["root"], hex::encode(note.root));
}
