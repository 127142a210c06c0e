//! The chain replayed through the transparency log: `verify` compares the tiles on disk and
//! the checkpoints with what the chain's blocks give, `tlog rebuild` rewrites the tiles that
//! are missing or differ. The block hashes come from the verifying scan of the segments,
//! never from the index file, so a rewritten chain cannot hide behind an old index.

use crate::transparency::{self, failed};
use crate::Outcome;
use opdbus_blockchain::chain::block::Hash;
use opdbus_blockchain::chain::error::ChainError;
use opdbus_blockchain::chain::segment;
use opdbus_blockchain::chain::store;
use opdbus_blockchain::chain::verify::{verify_dir_each, VerifyReport};
use opdbus_blockchain::files;
use opdbus_blockchain::tlog::tiles::{Settle, TileCheck, TILE_WIDTH};
use opdbus_blockchain::tlog::{self, Checkpoint, CompactRange, TileReader, TileWriter, TlogError};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The tiles completed so far are compared (or rewritten) every this many leaves, so that
/// memory stays flat on any chain.
const SETTLE_EVERY: u64 = 65_536;

/// One pass of the chain's block hashes, in height order, through the tree.
pub struct Replay {
    /// Present when there are tiles to compare with or repair.
    writer: Option<TileWriter>,
    /// The tree when there are no tiles (the writer keeps its own).
    range: CompactRange,
    mode: Settle,
    check: TileCheck,
    /// Tree sizes whose roots are wanted, each with its root once the replay got there.
    roots: Vec<(u64, Option<Hash>)>,
    /// The first I/O error of a settle inside `push`, reported by `finish`.
    failed: Option<TlogError>,
}

impl Replay {
    /// A replay that compares with (or, under [`Settle::Repair`], rewrites) the tiles in
    /// `tiles`, or only computes roots when `tiles` is `None`.
    pub fn new(tiles: Option<&Path>, mode: Settle, root_sizes: &[u64]) -> Replay {
        let empty_root = CompactRange::default().root();
        Replay {
            writer: tiles.map(TileWriter::new),
            range: CompactRange::default(),
            mode,
            check: TileCheck::default(),
            roots: root_sizes
                .iter()
                .map(|&size| (size, (size == 0).then_some(empty_root)))
                .collect(),
            failed: None,
        }
    }

    pub fn push(&mut self, block_hash: &Hash) {
        let size = match &mut self.writer {
            Some(writer) => {
                writer.push(block_hash);
                let size = writer.size();
                if size % SETTLE_EVERY == 0 && self.failed.is_none() {
                    if let Err(err) = writer.settle(self.mode, &mut self.check) {
                        self.failed = Some(err);
                    }
                }
                size
            }
            None => {
                self.range.push(block_hash);
                self.range.size()
            }
        };
        if self.roots.iter().any(|(wanted, _)| *wanted == size) {
            let root = self.root();
            for (wanted, found) in &mut self.roots {
                if *wanted == size {
                    *found = Some(root);
                }
            }
        }
    }

    /// Leaves replayed.
    pub fn size(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(self.range.size(), TileWriter::size)
    }

    pub fn root(&self) -> Hash {
        self.writer
            .as_ref()
            .map_or(self.range.root(), TileWriter::root)
    }

    /// The root of the tree of `size` leaves, if the replay got that far.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.roots
            .iter()
            .find(|(wanted, _)| *wanted == size)
            .and_then(|(_, root)| *root)
    }

    /// Compares (or repairs) what is left: the full tiles since the last settle and the
    /// partial tiles of the size reached.
    pub fn finish(&mut self) -> Result<&TileCheck, TlogError> {
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        if let Some(writer) = &mut self.writer {
            writer.settle(self.mode, &mut self.check)?;
            writer.settle_partials(self.mode, &mut self.check)?;
        }
        Ok(&self.check)
    }

    /// Writes every partial tile of the size reached, whatever the disk holds (`tlog rebuild`).
    pub fn write_partials(&mut self) -> Result<(), TlogError> {
        if let Some(writer) = &mut self.writer {
            writer.forget_flushed();
            writer.flush()?;
        }
        Ok(())
    }
}

/// A checkpoint given with `verify --checkpoint FILE --vkey VKEY`.
struct Given {
    path: PathBuf,
    vkey: String,
    note: Vec<u8>,
}

/// What `verify` checks of the transparency log, set up before the chain is scanned so that
/// the scan feeds it.
pub struct LogCheck {
    tlog_dir: PathBuf,
    tiles_present: bool,
    /// `<tlog>/checkpoint`, read before the scan: the daemon publishes a size only once its
    /// blocks and tiles are durable, so the chain scanned afterwards holds at least as many.
    published: Option<Result<Checkpoint, String>>,
    given: Option<Given>,
    replay: Replay,
}

/// What the log check found.
#[derive(Default)]
pub struct LogFindings {
    /// Lines for stdout, in order.
    pub lines: Vec<String>,
    /// Failed checks, the most telling first.
    pub failures: Vec<String>,
    pub json: serde_json::Map<String, serde_json::Value>,
}

impl LogCheck {
    /// Reads what the check needs besides the chain. `Err` (exit 2): a file that cannot be
    /// read, a verifier key that is not one.
    pub fn prepare(tlog_dir: PathBuf, checkpoint: Option<(&Path, &str)>) -> Result<Self, String> {
        let given = checkpoint
            .map(|(path, vkey)| -> Result<Given, String> {
                Ok(Given {
                    path: path.to_path_buf(),
                    vkey: transparency::vkey_arg(vkey)?,
                    note: transparency::read_note(path)?,
                })
            })
            .transpose()?;
        let tiles_present = tlog_dir.is_dir();
        let published = if tiles_present {
            transparency::published(&tlog_dir)?
        } else {
            None
        };
        let mut sizes = Vec::new();
        if let Some(Ok(published)) = &published {
            sizes.push(published.size);
        }
        // The size to replay to is read before the signature is checked; the signature is
        // checked (and decides) after the scan, as the operator sees the chain's line first.
        if let Some(size) = given
            .as_ref()
            .and_then(|given| Checkpoint::parse_unverified(&given.note).ok())
            .map(|checkpoint| checkpoint.size)
        {
            sizes.push(size);
        }
        let replay = Replay::new(
            tiles_present.then_some(tlog_dir.as_path()),
            Settle::Report,
            &sizes,
        );
        Ok(LogCheck {
            tlog_dir,
            tiles_present,
            published,
            given,
            replay,
        })
    }

    /// The next block of the scan (only blocks that checked out, in height order).
    pub fn push(&mut self, block_hash: &Hash) {
        self.replay.push(block_hash);
    }

    /// Checks the tiles and the checkpoints against the blocks pushed. `Err` (exit 2): a tile
    /// that cannot be read for another reason than its absence.
    pub fn finish(
        mut self,
        chain_dir: &Path,
        report: &VerifyReport,
    ) -> Result<LogFindings, String> {
        let mut findings = LogFindings::default();
        let intact = report.ok();
        let check = self
            .replay
            .finish()
            .map_err(|err| format!("checking the tiles: {err}"))?
            .clone();
        let mut tile_failures = Vec::new();
        let mut published_failures = Vec::new();
        let published = match &self.published {
            Some(Ok(published)) => Some(published.clone()),
            Some(Err(reason)) => {
                published_failures.push(reason.clone());
                None
            }
            None => None,
        };
        if self.tiles_present {
            self.check_tiles(
                &check,
                published.as_ref(),
                &mut findings,
                &mut tile_failures,
            );
        } else {
            findings.lines.push(format!(
                "note: no transparency log at {}: tiles not checked",
                self.tlog_dir.display()
            ));
            findings
                .json
                .insert("tiles".into(), serde_json::Value::Null);
        }
        if let Some(published) = &published {
            let path = self.tlog_dir.join(transparency::CHECKPOINT_FILE);
            let line = self.compare(published, &path, intact);
            findings.json.insert(
                "published_checkpoint".into(),
                json!({
                    "size": published.size,
                    "root": tlog::hex(&published.root),
                    "ok": line.is_ok(),
                }),
            );
            match line {
                Ok(line) => findings.lines.push(line),
                Err(reason) => published_failures.push(reason),
            }
        }
        let mut given_failures = Vec::new();
        if let Some(given) = &self.given {
            let outcome = self.check_given(given, chain_dir, intact)?;
            findings.json.insert("checkpoint".into(), outcome.1);
            match outcome.0 {
                Ok(line) => findings.lines.push(line),
                Err(reason) => given_failures.push(reason),
            }
        }
        findings.failures = [given_failures, published_failures, tile_failures].concat();
        findings.lines.extend(findings.failures.iter().cloned());
        Ok(findings)
    }

    fn check_tiles(
        &self,
        check: &TileCheck,
        published: Option<&Checkpoint>,
        findings: &mut LogFindings,
        failures: &mut Vec<String>,
    ) {
        let dir = self.tlog_dir.display();
        let published_size = published.map_or(0, |published| published.size);
        let reader = TileReader::new(&self.tlog_dir);
        let (needed, lagging): (Vec<&String>, Vec<&String>) = check
            .missing
            .iter()
            .partition(|path| !servable(&reader, path, published_size));
        findings.json.insert(
            "tiles".into(),
            json!({
                "dir": self.tlog_dir,
                "compared": check.compared,
                "differing": check.differing,
                "missing": check.missing,
                "missing_below_checkpoint": needed,
            }),
        );
        if let Some(first) = check.differing.first() {
            failures.push(format!(
                "tile {first} in {dir} differs from what the chain gives ({}): the chain or the \
                 tiles were changed",
                match check.differing.len() {
                    1 => "the only one".to_string(),
                    n => format!("{n} tiles differ"),
                }
            ));
        }
        if let Some(first) = needed.first() {
            failures.push(format!(
                "tile {first} in {dir} is missing, and the published checkpoint (size \
                 {published_size}) needs it: proofs for it cannot be served; run `opdbus-chain \
                 tlog rebuild` with the daemon stopped ({} such tile{})",
                needed.len(),
                if needed.len() == 1 { "" } else { "s" }
            ));
        }
        if let Some(first) = lagging.first() {
            findings.lines.push(format!(
                "note: {} of the newest blocks not written yet (first {first}): tiles lag the \
                 chain by up to a checkpoint interval; the daemon writes missing tiles at start, \
                 `opdbus-chain tlog rebuild` offline",
                match lagging.len() {
                    1 => "1 tile".to_string(),
                    n => format!("{n} tiles"),
                }
            ));
        }
        if check.differing.is_empty() && needed.is_empty() {
            findings.lines.push(format!(
                "tiles in {dir}: {} full tiles and the partial ones compared with the chain, {}",
                check.compared,
                if check.missing.is_empty() {
                    "all match"
                } else {
                    "all present ones match"
                }
            ));
        }
    }

    /// The chain against one checkpoint's size and root: a line saying they agree, or the
    /// failure.
    fn compare(
        &self,
        checkpoint: &Checkpoint,
        path: &Path,
        intact: bool,
    ) -> Result<String, String> {
        let size = checkpoint.size;
        match self.replay.root_at(size) {
            None if intact => Err(format!(
                "the chain holds {} blocks; the checkpoint {} covers {size}: blocks were cut off",
                self.replay.size(),
                path.display()
            )),
            None => Err(format!(
                "the chain is intact for its first {} blocks only; the checkpoint {} covers \
                 {size}: the blocks after the damage cannot be compared with it",
                self.replay.size(),
                path.display()
            )),
            Some(root) if root == checkpoint.root => Ok(format!(
                "checkpoint {} (size {size}, root {}): the chain's first {size} blocks give this \
                 root",
                path.display(),
                tlog::hex(&root)
            )),
            Some(root) => Err(format!(
                "the chain's first {size} blocks give the root {}, but the checkpoint {} says {}",
                tlog::hex(&root),
                path.display(),
                tlog::hex(&checkpoint.root)
            )),
        }
    }

    /// `--checkpoint FILE --vkey VKEY`: the signature, then the root at its size, then where
    /// the chain departs from it. Returns the line or failure, and the JSON member.
    fn check_given(
        &self,
        given: &Given,
        chain_dir: &Path,
        intact: bool,
    ) -> Result<(Result<String, String>, serde_json::Value), String> {
        let checkpoint = match transparency::open_signed(&given.note, &given.vkey, &given.path) {
            Ok(checkpoint) => checkpoint,
            Err(reason) => {
                let member = json!({ "file": given.path, "signature_ok": false });
                return Ok((Err(reason), member));
            }
        };
        let mut member = checkpoint.to_json();
        member["file"] = given.path.display().to_string().into();
        member["signature_ok"] = true.into();
        member["chain_root"] = self
            .replay
            .root_at(checkpoint.size)
            .map(|root| tlog::hex(&root))
            .into();
        let outcome = match self.compare(&checkpoint, &given.path, intact) {
            Ok(line) => Ok(format!("{line}; signed by {}", given.vkey)),
            Err(reason) if self.replay.root_at(checkpoint.size).is_none() => Err(reason),
            Err(reason) => {
                let located = locate(chain_dir, &self.tlog_dir, &checkpoint)?;
                let (height, why) = match located {
                    Located::Height(height) => (
                        Some(height),
                        format!(
                            "the block at height {height} differs from the one the checkpoint \
                             covers"
                        ),
                    ),
                    Located::Unknown(why) => (
                        None,
                        format!("{why}, so the first differing block cannot be located"),
                    ),
                };
                member["first_differing_height"] = height.into();
                Err(format!("{reason}: {why}"))
            }
        };
        Ok((outcome, member))
    }
}

/// Whether the tree of `size` leaves can still be served without the missing tile at `path`:
/// it needs none of the tile's hashes, or a partial tile holding those it needs (the one
/// written for that checkpoint) is there.
fn servable(reader: &TileReader, path: &str, size: u64) -> bool {
    let Some((level, n, _)) = parse_tile_path(path) else {
        return false;
    };
    // Hashes of the tile's level that the tree of `size` has, and where this tile starts.
    let nodes = size.checked_shr(8 * level.unwrap_or(0)).unwrap_or(0);
    let start = n * TILE_WIDTH as u64;
    if nodes <= start {
        return true;
    }
    let width = (nodes - start).min(TILE_WIDTH as u64) as usize;
    match level {
        Some(level) => reader.tile(level, n, width).is_ok(),
        None => reader.bundle(n, width).is_ok(),
    }
}

/// (level, or `None` for an entry bundle; tile number; width) of a path in the C2SP layout
/// the library writes (`tile/1/x001/234.p/7`).
fn parse_tile_path(path: &str) -> Option<(Option<u32>, u64, usize)> {
    let rest = path.strip_prefix("tile/")?;
    let (rest, width) = match rest.split_once(".p/") {
        Some((rest, width)) => (rest, width.parse().ok()?),
        None => (rest, TILE_WIDTH),
    };
    let (level, number) = rest.split_once('/')?;
    let level = match level {
        "entries" => None,
        level => Some(level.parse().ok()?),
    };
    let mut n = 0u64;
    for group in number.split('/') {
        n = n
            .checked_mul(1000)?
            .checked_add(group.trim_start_matches('x').parse().ok()?)?;
    }
    Some((level, n, width))
}

enum Located {
    Height(u64),
    /// Why it cannot be located.
    Unknown(String),
}

/// Where the chain departs from a checkpoint whose root it does not give. Only the level-0
/// tiles can say which leaves the checkpoint covered, and only when they give its root
/// themselves; then the first leaf where the chain's block hash (re-hashed from the
/// segments) differs from them is the first block that changed.
fn locate(chain_dir: &Path, tlog_dir: &Path, checkpoint: &Checkpoint) -> Result<Located, String> {
    let size = checkpoint.size;
    let reader = TileReader::new(tlog_dir);
    let tile = |n: u64| {
        reader.tile(
            0,
            n,
            (size - n * TILE_WIDTH as u64).min(TILE_WIDTH as u64) as usize,
        )
    };
    let mut leaves = LeafRange::default();
    for n in 0..size.div_ceil(TILE_WIDTH as u64) {
        match tile(n) {
            Ok(bytes) => bytes.chunks_exact(32).for_each(|leaf| leaves.push(leaf)),
            Err(err) => {
                return Ok(Located::Unknown(format!(
                    "the tiles in {} cannot be read ({err})",
                    tlog_dir.display()
                )))
            }
        }
    }
    if size == 0 || leaves.root() != checkpoint.root {
        return Ok(Located::Unknown(format!(
            "the tiles in {} were rewritten too (their leaves do not give the checkpoint's root)",
            tlog_dir.display()
        )));
    }
    let mut first = None;
    let mut current: Option<(u64, Vec<u8>)> = None;
    let mut unreadable = None;
    verify_dir_each(chain_dir, Some(size - 1), &mut |_| {}, &mut |block| {
        if first.is_some() || unreadable.is_some() {
            return;
        }
        let n = block.height / TILE_WIDTH as u64;
        if current.as_ref().is_none_or(|(tile_n, _)| *tile_n != n) {
            match tile(n) {
                Ok(bytes) => current = Some((n, bytes)),
                Err(err) => {
                    unreadable = Some(err.to_string());
                    return;
                }
            }
        }
        let at = (block.height % TILE_WIDTH as u64) as usize * 32;
        if let Some((_, bytes)) = &current {
            if bytes[at..at + 32] != tlog::leaf_hash(&block.hash) {
                first = Some(block.height);
            }
        }
    })
    .map_err(|err| err.to_string())?;
    Ok(match (first, unreadable) {
        (Some(height), _) => Located::Height(height),
        (None, Some(err)) => Located::Unknown(format!("a tile changed while being read ({err})")),
        (None, None) => Located::Unknown("every leaf matches the tiles".into()),
    })
}

/// A compact range over leaf hashes (the level-0 tiles hold leaf hashes, not block hashes).
#[derive(Default)]
struct LeafRange {
    /// (height of the subtree, its hash), heights strictly decreasing.
    peaks: Vec<(u32, Hash)>,
}

impl LeafRange {
    fn push(&mut self, leaf: &[u8]) {
        let mut node: (u32, Hash) = (0, leaf.try_into().expect("chunks of 32 bytes"));
        while let Some(&(height, left)) = self.peaks.last() {
            if height != node.0 {
                break;
            }
            self.peaks.pop();
            node = (height + 1, tlog::node_hash(&left, &node.1));
        }
        self.peaks.push(node);
    }

    fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, mut root)) = peaks.next() else {
            return CompactRange::default().root();
        };
        for (_, left) in peaks {
            root = tlog::node_hash(left, &root);
        }
        root
    }
}

/// `tlog rebuild`: the tiles rewritten from the chain where missing or different, with the
/// daemon stopped. The checkpoints are left alone: they are what was published.
pub fn rebuild(chain_dir: &Path, tlog_dir: &Path, json: bool) -> Outcome {
    let listed = segment::list(chain_dir)
        .map_err(|err| format!("reading {}: {err}", chain_dir.display()))?;
    if listed.is_empty() {
        return Err(format!("no chain in {}", chain_dir.display()));
    }
    let _lock = store::take_lock(chain_dir).map_err(|err| match err {
        ChainError::InUse(dir) => format!(
            "{} is in use (is opdbus-blockchaind running?); stop it before rebuilding the tiles \
             (the daemon itself writes missing tiles at start)",
            dir.display()
        ),
        other => other.to_string(),
    })?;
    files::create_dir_all(tlog_dir)
        .map_err(|err| format!("creating {}: {err}", tlog_dir.display()))?;
    let mut replay = Replay::new(Some(tlog_dir), Settle::Repair, &[]);
    let mut progress = crate::offline::progress("rebuilding the tiles of", chain_dir);
    let report = verify_dir_each(chain_dir, None, &mut progress, &mut |block| {
        replay.push(&block.hash)
    })
    .map_err(|err| err.to_string())?;
    let check = replay
        .finish()
        .map_err(|err| format!("rewriting the tiles: {err}"))?
        .clone();
    if let Some((height, reason)) = &report.first_bad {
        return Ok(failed(
            json,
            &format!(
            "the chain in {} is not intact from height {height} ({reason}): tiles were checked \
             and rewritten for the {} blocks before it only; repair or restore the chain, then \
             run tlog rebuild again",
            chain_dir.display(),
            replay.size()
        ),
        ));
    }
    replay
        .write_partials()
        .map_err(|err| format!("writing the partial tiles: {err}"))?;
    let size = replay.size();
    let root = tlog::hex(&replay.root());
    if json {
        let out = json!({
            "ok": true,
            "tlog_dir": tlog_dir,
            "size": size,
            "root": root,
            "compared": check.compared,
            "missing_rewritten": check.missing.len(),
            "differing_rewritten": check.differing.len(),
            "missing": check.missing,
            "differing": check.differing,
        });
        println!("{out}");
    } else {
        println!(
            "tiles in {} rebuilt for {size} blocks (root {root}): {} full tiles and the \
             partial ones compared, {} missing rewritten, {} differing rewritten; checkpoint and \
             checkpoints untouched",
            tlog_dir.display(),
            check.compared,
            check.missing.len(),
            check.differing.len()
        );
        for path in check.differing.iter().take(10) {
            println!("rewritten (differed): {path}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opdbus_blockchain::tlog::tiles::{entries_path, tile_path};

    #[test]
    fn tile_paths_parse_back() {
        for (level, n, width) in [(Some(0), 0, 256), (Some(2), 1_234_067, 9), (None, 1000, 3)] {
            let path = match level {
                Some(level) => tile_path(level, n, width),
                None => entries_path(n, width),
            };
            assert_eq!(parse_tile_path(&path), Some((level, n, width)), "{path}");
        }
        assert_eq!(parse_tile_path("tile/x/000"), None);
        assert_eq!(parse_tile_path("checkpoint"), None);
    }

    #[test]
    fn the_leaf_range_gives_the_rfc_root() {
        let hashes: Vec<Hash> = (0..1000u32)
            .map(|i| opdbus_blockchain::chain::block::sha256(&i.to_le_bytes()))
            .collect();
        for size in [1usize, 2, 3, 255, 256, 257, 1000] {
            let mut leaves = LeafRange::default();
            for hash in &hashes[..size] {
                leaves.push(&tlog::leaf_hash(hash));
            }
            assert_eq!(leaves.root(), tlog::root_of(&hashes[..size]), "size {size}");
        }
    }
}
