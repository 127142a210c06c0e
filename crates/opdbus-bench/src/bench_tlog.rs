//! `opdbus-bench bench-tlog`: the transparency log's tiles and proofs, in-process, on a tree of
//! N random leaves (a chain of N blocks as the log sees it: one 32-byte block hash per leaf).
//!
//! Builds the tiles with the daemon's `TileWriter` (a flush every 100,000 leaves), replays
//! them as the daemon's start-up does, then times `TileReader`'s inclusion and consistency
//! proofs at random heights and sizes while the tiles are in the page cache. A sample of the
//! proofs is checked with `tlog_tiles` against roots computed apart from the tiles (a compact
//! range over the same leaves): a wrong proof fails the run (exit 1).
//!
//! Then it writes a real chain of N blocks with the library, its tiles and a signed checkpoint
//! as the daemon leaves them, and times the release `opdbus-chain verify --checkpoint` (found
//! next to this executable) on it: the whole chain re-hashed from its segments, the tiles
//! compared and the checkpoint's root recomputed.

use crate::Outcome;
use opdbus_blockchain::chain::block::Hash;
use opdbus_blockchain::chain::store::{self, StoreOptions};
use opdbus_blockchain::tlog::checkpoint::History;
use opdbus_blockchain::tlog::tiles::{Settle, TileCheck};
use opdbus_blockchain::tlog::{Checkpoint, CompactRange, SigningKey, TileReader, TileWriter};
use opdbus_blockchain::{Caller, PluginFootprint};
use opdbus_testkit::SplitMix64;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Leaves between two flushes while building (the daemon flushes once per checkpoint).
const FLUSH_EVERY: u64 = 100_000;
/// Leaves per tile check during the replay, as the daemon's start-up (`REPLAY_CHUNK`).
const REPLAY_CHUNK: usize = 1 << 16;
/// Every how many proofs one is checked.
const CHECK_EVERY: usize = 10;
/// Footprints per append while writing the chain.
const APPEND_BATCH: u64 = 10_000;
/// Runs of `opdbus-chain verify --checkpoint`; the median is reported.
const VERIFY_RUNS: usize = 3;

pub struct TlogArgs {
    pub leaves: u64,
    pub proofs: usize,
    pub json: Option<PathBuf>,
}

pub fn run(args: TlogArgs) -> Outcome {
    // Fail before the work, not after.
    let json_file = match &args.json {
        Some(path) => Some(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let temp = tempfile::Builder::new()
        .prefix("opdbus-bench-tlog.")
        .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
        .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let dir = temp.path().join("tlog");
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let n = args.leaves;
    let mut rng = SplitMix64(0x7106);
    let leaves: Vec<Hash> = (0..n).map(|_| random_hash(&mut rng)).collect();
    let mut out = Figures::default();

    eprintln!("bench-tlog: building the tiles of {n} leaves");
    let started = Instant::now();
    let mut writer = TileWriter::new(&dir);
    for (i, leaf) in leaves.iter().enumerate() {
        writer.push(leaf);
        if (i as u64 + 1).is_multiple_of(FLUSH_EVERY) {
            writer.flush().map_err(|e| format!("flush: {e}"))?;
        }
    }
    writer.flush().map_err(|e| format!("flush: {e}"))?;
    let build = started.elapsed();
    let root = writer.root();
    drop(writer);
    let (files, bytes) = disk_use(&dir);
    out.rate(
        "build",
        "build the tiles (flush every 100,000)",
        n,
        "leaves",
        build,
    );
    out.plain("tile_files", "  tile files", files as f64, "");
    out.plain("tile_megabytes", "  tile bytes", bytes as f64 / 1e6, "MB");

    eprintln!("bench-tlog: replaying as the daemon's start-up does");
    let started = Instant::now();
    let mut range = CompactRange::default();
    leaves.iter().for_each(|leaf| range.push(leaf));
    let root_check = started.elapsed();
    if range.root() != root {
        return Err("the compact range and the tile writer disagree on the root".into());
    }
    let started = Instant::now();
    let check = replay(&dir, &leaves).map_err(|e| format!("replay: {e}"))?;
    let tile_check = started.elapsed();
    out.rate(
        "replay_root_check",
        "start-up: root of the last checkpoint",
        n,
        "leaves",
        root_check,
    );
    out.rate(
        "replay_tile_check",
        "start-up: every tile checked",
        n,
        "leaves",
        tile_check,
    );
    out.rate(
        "replay",
        "start-up replay in all",
        n,
        "leaves",
        root_check + tile_check,
    );
    if !check.is_clean() {
        return Err(format!(
            "the replay found {} missing and {} differing tiles in tiles just written",
            check.missing.len(),
            check.differing.len()
        ));
    }

    let reader = TileReader::new(&dir);
    if reader.root(n).map_err(|e| format!("root: {e}"))? != root {
        return Err(format!(
            "the tiles' root of size {n} is not the tree's root"
        ));
    }
    eprintln!("bench-tlog: {} inclusion proofs", args.proofs);
    let heights: Vec<u64> = (0..args.proofs).map(|_| rng.below(n)).collect();
    let mut inclusion = Vec::with_capacity(heights.len());
    let mut inclusion_proofs = Vec::new();
    for (i, &height) in heights.iter().enumerate() {
        let t0 = Instant::now();
        let proof = reader
            .inclusion_proof(n, height)
            .map_err(|e| format!("inclusion proof of {height} in {n}: {e}"))?;
        inclusion.push(t0.elapsed());
        if i % CHECK_EVERY == 0 {
            inclusion_proofs.push((height, proof));
        }
    }
    out.latencies(
        "inclusion_proof",
        "inclusion proof at size N",
        &inclusion,
        "≤ 1000 µs",
    );

    eprintln!("bench-tlog: {} consistency proofs", args.proofs);
    let pairs: Vec<(u64, u64)> = (0..args.proofs)
        .map(|_| {
            let new = 1 + rng.below(n);
            (1 + rng.below(new), new)
        })
        .collect();
    let mut consistency = Vec::with_capacity(pairs.len());
    let mut consistency_proofs = Vec::new();
    for (i, &(old, new)) in pairs.iter().enumerate() {
        let t0 = Instant::now();
        let proof = reader
            .consistency_proof(old, new)
            .map_err(|e| format!("consistency proof {old} → {new}: {e}"))?;
        consistency.push(t0.elapsed());
        if i % CHECK_EVERY == 0 {
            consistency_proofs.push((old, new, proof));
        }
    }
    out.latencies(
        "consistency_proof",
        "consistency proof, random sizes",
        &consistency,
        "",
    );

    eprintln!("bench-tlog: checking a sample of the proofs");
    let mut sizes: Vec<u64> = consistency_proofs
        .iter()
        .flat_map(|&(old, new, _)| [old, new])
        .collect();
    let roots = roots_at(&leaves, &mut sizes);
    let mut wrong = Vec::new();
    for (height, proof) in &inclusion_proofs {
        let proof: Vec<tlog_tiles::Hash> = proof.iter().map(|h| tlog_tiles::Hash(*h)).collect();
        let leaf = tlog_tiles::record_hash(&leaves[*height as usize]);
        if tlog_tiles::check_record(&proof, n, tlog_tiles::Hash(root), *height, leaf).is_err() {
            wrong.push(format!("inclusion of {height} in {n}"));
        }
    }
    for (old, new, proof) in &consistency_proofs {
        let proof: Vec<tlog_tiles::Hash> = proof.iter().map(|h| tlog_tiles::Hash(*h)).collect();
        let (old_root, new_root) = (roots[old], roots[new]);
        if tlog_tiles::check_tree(
            &proof,
            *new,
            tlog_tiles::Hash(new_root),
            *old,
            tlog_tiles::Hash(old_root),
        )
        .is_err()
        {
            wrong.push(format!("consistency {old} → {new}"));
        }
    }
    out.plain(
        "proofs_checked",
        "proofs checked against independent roots",
        (inclusion_proofs.len() + consistency_proofs.len()) as f64,
        "",
    );

    drop(leaves);
    let verified = verify_checkpoint(temp.path(), n, &mut out)?;

    out.print(n, &dir);
    if let (Some(path), Some(mut file)) = (&args.json, json_file) {
        let text = serde_json::to_string_pretty(&Value::Object(out.json))
            .map_err(|e| format!("cannot encode the figures: {e}"))?;
        std::io::Write::write_all(&mut file, (text + "\n").as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Err(why) = verified {
        eprintln!("bench-tlog: {why}");
        return Ok(ExitCode::FAILURE);
    }
    if !wrong.is_empty() {
        eprintln!(
            "bench-tlog: {} proofs did not check: {}",
            wrong.len(),
            wrong.join("; ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a chain of `blocks` blocks in `temp`, its tiles and a signed checkpoint, and times
/// `opdbus-chain verify --checkpoint` on it. The outer `Err`: the run could not be set up
/// (exit 2); the inner one: verify failed on a sound chain (exit 1).
fn verify_checkpoint(
    temp: &Path,
    blocks: u64,
    out: &mut Figures,
) -> Result<Result<(), String>, String> {
    let cli = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable: {e}"))?
        .with_file_name("opdbus-chain");
    if !cli.exists() {
        return Err(format!(
            "{} not found: bench-tlog runs the opdbus-chain built next to it (cargo build \
             --release --workspace)",
            cli.display()
        ));
    }
    eprintln!("bench-tlog: writing a chain of {blocks} blocks");
    let chain = temp.join("chain");
    let started = Instant::now();
    let (mut writer, reader, _) =
        store::open(&chain, StoreOptions::default()).map_err(|e| format!("open chain: {e}"))?;
    let caller = Caller::this_process();
    // The genesis block is the first of the `blocks`.
    let mut written = 1;
    while written < blocks {
        let items = (written..blocks.min(written + APPEND_BATCH))
            .map(|i| {
                PluginFootprint::from_json_text(
                    "network",
                    "create",
                    crate::bench::footprint_data(i),
                )
                .map(|footprint| (footprint, caller.clone()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("footprint: {e}"))?;
        written += items.len() as u64;
        writer
            .append_owned(items)
            .map_err(|e| format!("append: {e}"))?;
    }
    drop(writer);
    let write = started.elapsed();

    // What the daemon leaves: the tiles of every block, then the signed checkpoint, appended
    // to the history and published.
    let tlog = chain.join("tlog");
    std::fs::create_dir(&tlog).map_err(|e| format!("cannot create {}: {e}", tlog.display()))?;
    let mut tiles = TileWriter::new(&tlog);
    let mut at = 0;
    loop {
        let hashes = reader.hashes(at, REPLAY_CHUNK);
        if hashes.is_empty() {
            break;
        }
        hashes.iter().for_each(|hash| tiles.push(hash));
        at += hashes.len() as u64;
    }
    tiles.flush().map_err(|e| format!("flush: {e}"))?;
    if tiles.size() != blocks {
        return Err(format!(
            "the chain holds {} blocks, not {blocks}",
            tiles.size()
        ));
    }
    let (key, _) = SigningKey::load_or_create(&temp.join("keys").join("signing.key"), "bench")
        .map_err(|e| format!("signing key: {e}"))?;
    let checkpoint = Checkpoint::sign(&key, "bench.example/opdbus", tiles.size(), &tiles.root())
        .map_err(|e| format!("sign: {e}"))?;
    History::new(&tlog.join("checkpoints"))
        .append(&checkpoint)
        .map_err(|e| format!("checkpoint history: {e}"))?;
    let published = tlog.join("checkpoint");
    std::fs::write(&published, &checkpoint.note)
        .map_err(|e| format!("cannot write {}: {e}", published.display()))?;
    let given = temp.join("given.checkpoint");
    std::fs::write(&given, &checkpoint.note)
        .map_err(|e| format!("cannot write {}: {e}", given.display()))?;
    out.rate(
        "chain_write",
        "write the chain (library, 10,000 per append)",
        blocks,
        "blocks",
        write,
    );

    let mut runs = Vec::new();
    for run in 0..VERIFY_RUNS {
        eprintln!(
            "bench-tlog: opdbus-chain verify --checkpoint, run {} of {VERIFY_RUNS}",
            run + 1
        );
        let started = Instant::now();
        let output = std::process::Command::new(&cli)
            .arg("verify")
            .arg("--chain-dir")
            .arg(&chain)
            .arg("--checkpoint")
            .arg(&given)
            .args(["--vkey", key.vkey(), "--json"])
            .env_remove("OPDBUS_TLOG_DIR")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
        let took = started.elapsed();
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if !output.status.success() || report["ok"] != Value::Bool(true) {
            return Ok(Err(format!(
                "opdbus-chain verify --checkpoint failed on a sound chain ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        if report["chain"]["blocks_checked"] != json!(blocks) {
            return Ok(Err(format!(
                "opdbus-chain verify checked {} blocks, not {blocks}",
                report["chain"]["blocks_checked"]
            )));
        }
        runs.push(took);
    }
    runs.sort_unstable();
    out.rate(
        "verify_checkpoint",
        &format!("opdbus-chain verify --checkpoint (median of {VERIFY_RUNS})"),
        blocks,
        "blocks",
        runs[runs.len() / 2],
    );
    out.target("≥ 500000 blocks/s");
    out.json.insert(
        "verify_checkpoint_runs_s".into(),
        json!(runs
            .iter()
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")),
    );
    Ok(Ok(()))
}

fn random_hash(rng: &mut SplitMix64) -> Hash {
    let mut hash = [0u8; 32];
    for chunk in hash.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
    hash
}

/// What the daemon's start-up does with the tiles of a chain: push every leaf again and
/// compare each tile with the disk every [`REPLAY_CHUNK`] leaves, then the partial tiles.
fn replay(dir: &Path, leaves: &[Hash]) -> Result<TileCheck, String> {
    let mut writer = TileWriter::new(dir);
    let mut check = TileCheck::default();
    for chunk in leaves.chunks(REPLAY_CHUNK) {
        chunk.iter().for_each(|leaf| writer.push(leaf));
        writer
            .settle(Settle::Repair, &mut check)
            .map_err(|e| e.to_string())?;
    }
    writer
        .settle_partials(Settle::Report, &mut check)
        .map_err(|e| e.to_string())?;
    Ok(check)
}

/// The roots of the trees of `sizes` leaves, from a compact range (no tile is read).
fn roots_at(leaves: &[Hash], sizes: &mut [u64]) -> std::collections::HashMap<u64, Hash> {
    sizes.sort_unstable();
    let mut roots = std::collections::HashMap::new();
    let mut range = CompactRange::default();
    let mut wanted = sizes.iter().peekable();
    for leaf in leaves {
        range.push(leaf);
        while wanted.next_if(|&&size| size == range.size()).is_some() {
            roots.insert(range.size(), range.root());
        }
    }
    roots
}

/// Files and bytes below `dir`.
fn disk_use(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) => {
                    files += 1;
                    bytes += meta.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

/// The table's lines and the flat JSON object.
#[derive(Default)]
struct Figures {
    lines: Vec<(String, String, &'static str)>,
    json: Map<String, Value>,
}

impl Figures {
    /// `count` things (`what`: leaves, blocks) done in `took`.
    fn rate(&mut self, key: &str, label: &str, count: u64, what: &str, took: Duration) {
        let rate = count as f64 / took.as_secs_f64().max(1e-9);
        self.json
            .insert(format!("{key}_{what}_per_s"), json!(rate.round()));
        self.json
            .insert(format!("{key}_s"), json!(round(took.as_secs_f64(), 3)));
        self.lines.push((
            label.into(),
            format!("{rate:>12.0} {what}/s  ({:.2} s)", took.as_secs_f64()),
            "",
        ));
    }

    fn latencies(&mut self, key: &str, label: &str, all: &[Duration], target: &'static str) {
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| {
            sorted
                .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        let (p50, p99, max) = (at(0.5), at(0.99), at(1.0));
        for (name, value) in [("p50", p50), ("p99", p99), ("max", max)] {
            self.json
                .insert(format!("{key}_{name}_us"), json!(round(value, 1)));
        }
        self.json.insert(format!("{key}_count"), json!(all.len()));
        self.lines.push((
            format!("{label} ({} proofs)", all.len()),
            format!("p50 {p50:.1} µs, p99 {p99:.1} µs, max {max:.1} µs"),
            target,
        ));
    }

    /// Sets the target of the line added last.
    fn target(&mut self, target: &'static str) {
        if let Some(line) = self.lines.last_mut() {
            line.2 = target;
        }
    }

    fn plain(&mut self, key: &str, label: &str, value: f64, unit: &str) {
        self.json.insert(key.into(), json!(round(value, 2)));
        let value = if value.fract() == 0.0 {
            format!("{value:>12.0} {unit}")
        } else {
            format!("{value:>12.1} {unit}")
        };
        self.lines.push((label.into(), value, ""));
    }

    fn print(&mut self, leaves: u64, dir: &Path) {
        let machine = crate::bench::machine(&filesystem(dir));
        let date = crate::bench::utc_now();
        println!("opdbus-bench bench-tlog — {date}\nmachine: {machine}\nleaves: {leaves}\n");
        println!("{:<48} {:<44} target", "figure", "value");
        for (label, value, target) in &self.lines {
            println!("{label:<48} {value:<44} {target}");
        }
        self.json.insert("leaves".into(), json!(leaves));
        self.json.insert("machine".into(), json!(machine));
        self.json.insert("date".into(), json!(date));
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn filesystem(dir: &Path) -> String {
    std::process::Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
