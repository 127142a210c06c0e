//! The tree's hashes on disk in the C2SP tlog-tiles layout (c2sp.org/tlog-tiles):
//!
//! - `tile/<L>/<N>`: 256 hashes of 32 bytes, the level-`8L` nodes `N*256 .. N*256+255`;
//! - `tile/<L>/<N>.p/<W>`: the first `W` (1–255) of them while the tile is not yet full;
//! - `tile/entries/<N>[.p/<W>]`: the leaf data (each block hash as a big-endian `u16` length and
//!   its 32 bytes) of leaves `N*256 ..`.
//!
//! `N` is written in groups of three digits, all but the last prefixed with `x`. As the
//! specification asks, a partial stays until its full tile exists, so a client holding an old
//! checkpoint finds `.p/W` of its width; this module's reader also takes the first `W` hashes of
//! a wider partial or of the full tile.
//!
//! Files are written to a temporary name, synced and renamed, and their directories synced,
//! before [`TileWriter::flush`] returns: a checkpoint is published only after that, so every
//! proof for a published checkpoint can be served from these files.

use super::{leaf_hash, CompactRange, TlogError};
use crate::chain::block::Hash;
use crate::files;
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Hashes in a full tile (tile height 8).
pub const TILE_WIDTH: usize = 256;
const HASH: usize = 32;

/// The path of a hash tile below the tlog directory; `width` 256 is the full tile.
pub fn tile_path(level: u32, n: u64, width: usize) -> String {
    with_width(format!("tile/{level}/{}", index_path(n)), width)
}

/// The path of an entry bundle below the tlog directory; `width` 256 is the full bundle.
pub fn entries_path(n: u64, width: usize) -> String {
    with_width(format!("tile/entries/{}", index_path(n)), width)
}

fn with_width(path: String, width: usize) -> String {
    if width == TILE_WIDTH {
        path
    } else {
        format!("{path}.p/{width}")
    }
}

/// `1234067` → `x001/x234/067`.
fn index_path(mut n: u64) -> String {
    let mut path = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        path = format!("x{:03}/{path}", n % 1000);
    }
    path
}

/// An entry bundle's bytes for the leaf data `block_hashes`.
fn bundle(block_hashes: &[Hash]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(block_hashes.len() * (2 + HASH));
    for hash in block_hashes {
        bytes.extend_from_slice(&(HASH as u16).to_be_bytes());
        bytes.extend_from_slice(hash);
    }
    bytes
}

/// What [`TileWriter::settle`] does with a tile that is missing or differs on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Write it (the daemon at start-up, `opdbus-chain tlog rebuild`).
    Repair,
    /// Only report it (`opdbus-chain verify`).
    Report,
}

/// What a check of the tiles on disk against the chain found.
#[derive(Clone, Debug, Default)]
pub struct TileCheck {
    /// Full tiles and bundles compared.
    pub compared: u64,
    /// Paths of tiles that were missing (rewritten under [`Settle::Repair`]).
    pub missing: Vec<String>,
    /// Paths of tiles whose bytes differed from what the chain gives (rewritten under
    /// [`Settle::Repair`]).
    pub differing: Vec<String>,
}

impl TileCheck {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.differing.is_empty()
    }
}

/// Appends leaves and writes the tiles they fill. Owned by one thread.
pub struct TileWriter {
    dir: PathBuf,
    range: CompactRange,
    /// Per tile level `L`: the level-`8L` hashes of the tile not yet full.
    levels: Vec<Vec<Hash>>,
    /// The leaf data of the entry bundle not yet full.
    entries: Vec<Hash>,
    /// Full tiles and bundles completed since the last flush or settle: (path, bytes).
    full: Vec<(String, Vec<u8>)>,
    /// The tree size the files on disk last described.
    flushed_size: u64,
}

impl TileWriter {
    /// An empty tree whose tiles go to `dir` (nothing is read or written yet).
    pub fn new(dir: &Path) -> TileWriter {
        TileWriter {
            dir: dir.to_path_buf(),
            range: CompactRange::default(),
            levels: Vec::new(),
            entries: Vec::new(),
            full: Vec::new(),
            flushed_size: 0,
        }
    }

    /// The tree's size (leaves appended).
    pub fn size(&self) -> u64 {
        self.range.size()
    }

    /// The tree's root.
    pub fn root(&self) -> Hash {
        self.range.root()
    }

    /// Appends the block with `block_hash` as the next leaf (in memory until the next flush).
    pub fn push(&mut self, block_hash: &Hash) {
        self.range.push(block_hash);
        let size = self.range.size();
        self.entries.push(*block_hash);
        if self.entries.len() == TILE_WIDTH {
            let n = size / TILE_WIDTH as u64 - 1;
            self.full
                .push((entries_path(n, TILE_WIDTH), bundle(&self.entries)));
            self.entries.clear();
        }
        let mut node = leaf_hash(block_hash);
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::with_capacity(TILE_WIDTH));
            }
            self.levels[level].push(node);
            if self.levels[level].len() < TILE_WIDTH {
                break;
            }
            let bytes = self.levels[level].concat();
            node = tlog_tiles::Tile::subtree_hash(&bytes).0;
            let n = (size >> (8 * (level as u32 + 1))) - 1;
            self.full
                .push((tile_path(level as u32, n, TILE_WIDTH), bytes));
            self.levels[level].clear();
            level += 1;
        }
    }

    /// Compares the full tiles completed since the last call with the files on disk, and under
    /// [`Settle::Repair`] rewrites (durably) those that are missing or differ. Start-up and
    /// `verify` call it every few thousand leaves so that memory stays flat on any chain.
    pub fn settle(&mut self, mode: Settle, check: &mut TileCheck) -> Result<(), TlogError> {
        let mut batch = Batch::default();
        for (path, bytes) in std::mem::take(&mut self.full) {
            check.compared += 1;
            let file = self.dir.join(&path);
            match files::read(&file) {
                Ok(on_disk) if on_disk == bytes => continue,
                Ok(_) => check.differing.push(path.clone()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    check.missing.push(path.clone())
                }
                Err(err) => return Err(TlogError::io(file, err)),
            }
            if mode == Settle::Repair {
                batch.write(&self.dir, &path, &bytes)?;
                batch.remove_partials(&self.dir, &path, 0)?;
            }
        }
        batch.sync()
    }

    /// Compares the partial tiles of the current size with the disk (the newest partial, or
    /// the full tile, must begin with them): what [`TileWriter::settle`] does for full ones.
    pub fn settle_partials(&self, mode: Settle, check: &mut TileCheck) -> Result<(), TlogError> {
        let reader = TileReader::new(&self.dir);
        for (path, bytes) in self.partials() {
            let (level, n, width) = parse_partial(&path);
            let found = match level {
                Some(level) => reader.tile(level, n, width),
                None => reader.bundle(n, width),
            };
            match found {
                Ok(on_disk) if on_disk == bytes => continue,
                Ok(_) => check.differing.push(path),
                Err(_) => check.missing.push(path),
            }
            if mode == Settle::Repair {
                // flush() writes every partial and removes the stale ones.
                break;
            }
        }
        Ok(())
    }

    /// Writes every tile completed since the last flush and the partial tiles of the current
    /// size, durably; removes partials they supersede.
    pub fn flush(&mut self) -> Result<(), TlogError> {
        let mut batch = Batch::default();
        // Kept until all is written: after a failure the next flush writes them again.
        for (path, bytes) in &self.full {
            batch.write(&self.dir, path, bytes)?;
            batch.remove_partials(&self.dir, path, 0)?;
        }
        for (path, bytes) in self.partials_changed_since(self.flushed_size) {
            batch.write(&self.dir, &path, &bytes)?;
            let (full, width) = path.rsplit_once(".p/").unwrap_or((path.as_str(), "256"));
            // Wider ones can only be left from a longer chain (a truncation the start-up
            // check reported): they would be read in place of this one.
            batch.remove_partials(&self.dir, full, width.parse().unwrap_or(TILE_WIDTH))?;
            // A full tile where this partial is would be read in its place: it can only be
            // left from a longer chain (a truncation the start-up check reported).
            batch.remove_file(&self.dir, full)?;
        }
        batch.sync()?;
        self.full.clear();
        self.flushed_size = self.size();
        Ok(())
    }

    /// Makes the next flush write every partial, whatever the disk holds.
    pub fn forget_flushed(&mut self) {
        self.flushed_size = 0;
    }

    /// (path, bytes) of the partial tiles and bundle of the current size.
    fn partials(&self) -> Vec<(String, Vec<u8>)> {
        self.partials_changed_since(u64::MAX)
    }

    fn partials_changed_since(&self, old_size: u64) -> Vec<(String, Vec<u8>)> {
        let size = self.size();
        let mut out = Vec::new();
        if !self.entries.is_empty() && (old_size == u64::MAX || old_size != size) {
            let n = size / TILE_WIDTH as u64;
            out.push((entries_path(n, self.entries.len()), bundle(&self.entries)));
        }
        for (level, hashes) in self.levels.iter().enumerate() {
            let shift = 8 * level as u32;
            let changed = old_size == u64::MAX || (old_size >> shift) != (size >> shift);
            if hashes.is_empty() || !changed {
                continue;
            }
            let n = (size >> shift) / TILE_WIDTH as u64;
            out.push((tile_path(level as u32, n, hashes.len()), hashes.concat()));
        }
        out
    }
}

/// (level or None for entries, tile number, width) of a partial path this module wrote.
fn parse_partial(path: &str) -> (Option<u32>, u64, usize) {
    let (full, width) = path.rsplit_once(".p/").unwrap_or((path, "256"));
    let mut parts = full.trim_start_matches("tile/").splitn(2, '/');
    let level = parts.next().and_then(|l| l.parse().ok());
    let n = parts
        .next()
        .unwrap_or("")
        .split('/')
        .fold(0u64, |n, group| {
            n * 1000 + group.trim_start_matches('x').parse::<u64>().unwrap_or(0)
        });
    (level, n, width.parse().unwrap_or(TILE_WIDTH))
}

/// Files written by one flush: each synced before its rename, each directory synced once after.
#[derive(Default)]
struct Batch {
    dirs: BTreeSet<PathBuf>,
}

impl Batch {
    fn write(&mut self, root: &Path, path: &str, bytes: &[u8]) -> Result<(), TlogError> {
        let target = root.join(path);
        let parent = target.parent().unwrap_or(root).to_path_buf();
        self.make_dirs(root, &parent)?;
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let temporary = parent.join(format!(".{name}.tmp"));
        let written = (|| {
            let _ = std::fs::remove_file(&temporary);
            let mut file = files::create_new(&temporary, files::FILE_MODE)?;
            file.write_all(bytes)?;
            file.sync_data()?;
            std::fs::rename(&temporary, &target)
        })();
        written.map_err(|err| TlogError::io(&target, err))?;
        self.dirs.insert(parent);
        Ok(())
    }

    /// Creates the directories down to `dir`; each one created makes its parent one to sync.
    fn make_dirs(&mut self, root: &Path, dir: &Path) -> Result<(), TlogError> {
        if dir.is_dir() || dir == root {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.make_dirs(root, parent)?;
            match files::create_dir(dir) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(TlogError::io(dir, err)),
            }
            self.dirs.insert(parent.to_path_buf());
        }
        Ok(())
    }

    /// Removes the partials of the tile at `full` (below `root`) wider than `keep_up_to`; with
    /// 0 (the full tile is written), all of them and their directory.
    fn remove_partials(
        &mut self,
        root: &Path,
        full: &str,
        keep_up_to: usize,
    ) -> Result<(), TlogError> {
        let dir = root.join(format!("{full}.p"));
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(TlogError::io(dir, err)),
        };
        for entry in entries {
            let entry = entry.map_err(|err| TlogError::io(&dir, err))?;
            let width = entry
                .file_name()
                .to_str()
                .and_then(|w| w.parse::<usize>().ok());
            if keep_up_to == 0 || width.is_none_or(|width| width > keep_up_to) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|err| TlogError::io(&path, err))?;
                self.dirs.insert(dir.clone());
            }
        }
        if keep_up_to == 0 {
            std::fs::remove_dir(&dir).map_err(|err| TlogError::io(&dir, err))?;
            self.dirs.remove(&dir);
            self.dirs.insert(dir.parent().unwrap_or(root).to_path_buf());
        }
        Ok(())
    }

    fn remove_file(&mut self, root: &Path, path: &str) -> Result<(), TlogError> {
        let file = root.join(path);
        match std::fs::remove_file(&file) {
            Ok(()) => {
                self.dirs
                    .insert(file.parent().unwrap_or(root).to_path_buf());
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(TlogError::io(file, err)),
        }
    }

    fn sync(self) -> Result<(), TlogError> {
        for dir in self.dirs {
            files::sync_dir(&dir).map_err(|err| TlogError::io(&dir, err))?;
        }
        Ok(())
    }
}

/// Reads tiles and serves proofs from them, for any tree size the tiles cover.
#[derive(Clone, Debug)]
pub struct TileReader {
    dir: PathBuf,
}

impl TileReader {
    pub fn new(dir: &Path) -> TileReader {
        TileReader {
            dir: dir.to_path_buf(),
        }
    }

    /// The first `width` hashes of level-`level` tile `n`: from the full tile, or else from the
    /// narrowest partial at least that wide.
    pub fn tile(&self, level: u32, n: u64, width: usize) -> Result<Vec<u8>, TlogError> {
        let full = tile_path(level, n, TILE_WIDTH);
        self.read_prefix(&full, width, HASH)
    }

    /// The first `width` entries of bundle `n`, as the bundle's bytes.
    pub fn bundle(&self, n: u64, width: usize) -> Result<Vec<u8>, TlogError> {
        self.read_prefix(&entries_path(n, TILE_WIDTH), width, 2 + HASH)
    }

    fn read_prefix(&self, full: &str, width: usize, item: usize) -> Result<Vec<u8>, TlogError> {
        let want = width * item;
        // A partial may be replaced by a wider one or the full tile between the listing and
        // the open, and the full tile may be renamed into place (and its partials removed)
        // between our look for it and the listing: look again.
        let mut missing = false;
        for _ in 0..3 {
            let path = match files::read(&self.dir.join(full)) {
                Ok(bytes) => return self.prefix(full, bytes, want),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    match self.narrowest_partial(full, width)? {
                        Some(path) => path,
                        None => {
                            missing = true;
                            continue;
                        }
                    }
                }
                Err(err) => return Err(TlogError::io(self.dir.join(full), err)),
            };
            missing = false;
            match files::read(&path) {
                Ok(bytes) => return self.prefix(full, bytes, want),
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(TlogError::io(path, err)),
            }
        }
        if missing {
            return Err(TlogError::Damaged(format!(
                "{full} is missing (and no partial of it holds {width} entries)"
            )));
        }
        Err(TlogError::Damaged(format!(
            "{full}: its partial tiles kept changing while being read"
        )))
    }

    fn prefix(&self, path: &str, mut bytes: Vec<u8>, want: usize) -> Result<Vec<u8>, TlogError> {
        if bytes.len() < want {
            return Err(TlogError::Damaged(format!(
                "{path} holds {} bytes; the tree needs {want}",
                bytes.len()
            )));
        }
        bytes.truncate(want);
        Ok(bytes)
    }

    fn narrowest_partial(&self, full: &str, width: usize) -> Result<Option<PathBuf>, TlogError> {
        let dir = self.dir.join(format!("{full}.p"));
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(TlogError::io(dir, err)),
        };
        let mut best: Option<usize> = None;
        for entry in entries {
            let entry = entry.map_err(|err| TlogError::io(&dir, err))?;
            let Some(w) = entry
                .file_name()
                .to_str()
                .and_then(|w| w.parse::<usize>().ok())
            else {
                continue;
            };
            if w >= width && best.is_none_or(|best| w < best) {
                best = Some(w);
            }
        }
        Ok(best.map(|w| dir.join(w.to_string())))
    }

    /// The root of the tree of `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, TlogError> {
        tlog_tiles::tree_hash(size, &Hashes { reader: self })
            .map(|hash| hash.0)
            .map_err(tree_error)
    }

    /// The RFC 9162 inclusion proof of leaf `index` in the tree of `size` leaves.
    /// The caller checks `index < size`.
    pub fn inclusion_proof(&self, size: u64, index: u64) -> Result<Vec<Hash>, TlogError> {
        tlog_tiles::prove_record(size, index, &Hashes { reader: self })
            .map(|proof| proof.into_iter().map(|hash| hash.0).collect())
            .map_err(tree_error)
    }

    /// The RFC 9162 consistency proof from the tree of `old` leaves to the tree of `new`.
    /// The caller checks `1 <= old <= new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, TlogError> {
        tlog_tiles::prove_tree(new, old, &Hashes { reader: self })
            .map(|proof| proof.into_iter().map(|hash| hash.0).collect())
            .map_err(tree_error)
    }
}

fn tree_error(err: tlog_tiles::Error) -> TlogError {
    match err {
        tlog_tiles::Error::InvalidInput(message) => TlogError::Damaged(message),
        other => TlogError::Tree(other.to_string()),
    }
}

/// The tree's stored hashes (in the numbering of `tlog_tiles`), read from tile files.
struct Hashes<'a> {
    reader: &'a TileReader,
}

impl tlog_tiles::HashReader for Hashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        let mut tiles: Vec<((u32, u64, usize), Vec<u8>)> = Vec::new();
        let mut out = Vec::with_capacity(indexes.len());
        for &index in indexes {
            let (level, n) = tlog_tiles::split_stored_hash_index(index);
            let (tile_level, below) = (level as u32 / 8, level as u32 % 8);
            let first = n << below;
            let (tile, start) = (
                first / TILE_WIDTH as u64,
                (first % TILE_WIDTH as u64) as usize,
            );
            let end = start + (1 << below);
            let key = (tile_level, tile, end);
            let position = match tiles.iter().position(|(k, _)| *k == key) {
                Some(position) => position,
                None => {
                    let bytes = self
                        .reader
                        .tile(tile_level, tile, end)
                        .map_err(|err| tlog_tiles::Error::InvalidInput(err.to_string()))?;
                    tiles.push((key, bytes));
                    tiles.len() - 1
                }
            };
            let bytes = &tiles[position].1;
            out.push(tlog_tiles::Tile::subtree_hash(
                &bytes[start * HASH..end * HASH],
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162 §2.1.1, written from the text: the split at the largest power of two.
    fn rfc_root(leaves: &[Hash]) -> Hash {
        use sha2::{Digest, Sha256};
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => Sha256::digest([&[0u8][..], &leaves[0]].concat()).into(),
            n => {
                let k = n.next_power_of_two() / 2;
                let (l, r) = (rfc_root(&leaves[..k]), rfc_root(&leaves[k..]));
                Sha256::digest([&[1u8][..], &l, &r].concat()).into()
            }
        }
    }

    fn block_hashes(n: usize) -> Vec<Hash> {
        (0..n as u32)
            .map(|i| {
                use sha2::{Digest, Sha256};
                Sha256::digest(i.to_le_bytes()).into()
            })
            .collect()
    }

    #[test]
    fn paths_follow_the_c2sp_layout() {
        assert_eq!(tile_path(0, 1234067, 256), "tile/0/x001/x234/067");
        assert_eq!(tile_path(1, 0, 7), "tile/1/000.p/7");
        assert_eq!(entries_path(1000, 256), "tile/entries/x001/000");
        assert_eq!(
            parse_partial("tile/2/x001/x234/067.p/9"),
            (Some(2), 1234067, 9)
        );
        assert_eq!(parse_partial("tile/entries/005.p/3"), (None, 5, 3));
    }

    #[test]
    fn the_root_and_the_tiles_agree_with_the_rfc_at_every_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hashes = block_hashes(70_000);
        let mut writer = TileWriter::new(dir.path());
        let reader = TileReader::new(dir.path());
        let checks = [
            1usize, 2, 3, 7, 8, 255, 256, 257, 511, 65_535, 65_536, 65_537, 69_999, 70_000,
        ];
        for (i, hash) in hashes.iter().enumerate() {
            writer.push(hash);
            let size = i + 1;
            if checks.contains(&size) {
                writer.flush().expect("flush");
                let expected = rfc_root(&hashes[..size]);
                assert_eq!(writer.root(), expected, "compact range at {size}");
                assert_eq!(
                    reader.root(size as u64).expect("root"),
                    expected,
                    "tiles at {size}"
                );
            }
        }
        // Older sizes stay provable from the newer files.
        for size in [1u64, 300, 65_536] {
            let root = rfc_root(&hashes[..size as usize]);
            assert_eq!(reader.root(size).expect("old root"), root);
        }
        assert!(dir.path().join("tile/0/000").is_file());
        assert!(dir.path().join("tile/2/000.p/1").is_file());
        assert!(!dir.path().join("tile/0/000.p").exists());
        // Partials stay until their full tile exists (c2sp.org/tlog-tiles), older ones too.
        assert!(dir.path().join("tile/0/273.p/111").is_file());
        assert!(dir.path().join("tile/0/273.p/112").is_file());
        let bundle = std::fs::read(dir.path().join("tile/entries/273.p/112")).expect("bundle");
        assert_eq!(bundle.len(), 112 * 34);
        assert_eq!(&bundle[..2], &[0, 32]);
        assert_eq!(&bundle[2..34], &hashes[273 * 256]);
    }

    #[test]
    fn settle_finds_and_repairs_missing_and_damaged_tiles() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hashes = block_hashes(1000);
        let mut writer = TileWriter::new(dir.path());
        for hash in &hashes {
            writer.push(hash);
        }
        writer.flush().expect("flush");
        std::fs::remove_file(dir.path().join("tile/0/001")).expect("remove");
        std::fs::write(dir.path().join("tile/entries/000"), b"junk").expect("damage");
        let replay = |mode| {
            let mut writer = TileWriter::new(dir.path());
            let mut check = TileCheck::default();
            for hash in &hashes {
                writer.push(hash);
            }
            writer.settle(mode, &mut check).expect("settle");
            writer.settle_partials(mode, &mut check).expect("partials");
            check
        };
        let found = replay(Settle::Report);
        assert_eq!(found.missing, vec!["tile/0/001".to_string()]);
        assert_eq!(found.differing, vec!["tile/entries/000".to_string()]);
        let repaired = replay(Settle::Repair);
        assert!(!repaired.is_clean());
        assert!(replay(Settle::Report).is_clean());
        assert_eq!(
            TileReader::new(dir.path()).root(1000).expect("root"),
            rfc_root(&hashes)
        );
    }
}
