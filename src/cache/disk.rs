//! The disk tier: one zstd frame per block under `blocks/<first two hex digits>/<hash>.zst`.
//!
//! ```text
//! <cache dir>/
//!   state                         the writer's progress (see `feed.rs`); rebuilt when missing
//!   dict/<id, 8 hex>.zdict        zstd dictionaries, see `dictionary.rs`
//!   blocks/<hh>/<hash, 64 hex>.zst   a block: one zstd frame of its canonical encoding
//! ```
//! The frame holds the block's canonical encoding (`chain::block`), the same bytes the chain
//! hashes; its header carries the content size and the dictionary id. A file is written under a
//! temporary name and renamed, so a reader never sees half a file. Nothing here is synced: the
//! cache never holds the only copy of a block, and every load re-hashes what it read and
//! compares it with the file's name, so a file lost or damaged in a crash is a miss, never a
//! wrong answer. A file that does not check out is deleted and counted.

use super::dictionary::{Dictionaries, Encoder, Trained};
use crate::chain::block::{Block, Hash};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A block encoding larger than this is damage, not a block (the chain's own bound).
const MAX_ENCODING: u64 = crate::chain::segment::MAX_BODY_LEN as u64;

/// Sizes of what the disk tier holds, kept as entries come and go.
#[derive(Debug, Default)]
pub struct DiskCounters {
    pub entries: AtomicU64,
    /// Sum of the canonical encodings' sizes of the entries.
    pub canonical_bytes: AtomicU64,
    /// Sum of the entry files' sizes (the compressed frames).
    pub stored_bytes: AtomicU64,
    pub corrupt_dropped: AtomicU64,
}

/// What a disk load found.
pub enum Loaded {
    Block(Block),
    Absent,
    /// The file did not check out and was deleted; the reason is for the log.
    Dropped(String),
}

pub struct DiskTier {
    blocks_dir: PathBuf,
    pub dictionaries: Dictionaries,
    pub counters: DiskCounters,
}

impl DiskTier {
    /// Opens (creating) the disk tier in `dir`; returns it with the dictionary new blocks
    /// should use. Problems (a read-only or unreadable directory) are logged: the tier then
    /// starts with what it could read, and writes will tell. Entries are counted by
    /// [`DiskTier::count_entries`].
    pub fn open(dir: &Path) -> (DiskTier, Option<Trained>) {
        let blocks_dir = dir.join("blocks");
        if let Err(err) = std::fs::create_dir_all(&blocks_dir) {
            tracing::warn!(%err, path = %blocks_dir.display(), "cannot create the cache directory; blocks are served from the chain until it can be written");
        }
        let dict_dir = dir.join("dict");
        let (dictionaries, current) = Dictionaries::load(&dict_dir).unwrap_or_else(|err| {
            tracing::warn!(%err, path = %dict_dir.display(), "cannot read the cache dictionaries; entries that need them will be dropped as unreadable");
            (Dictionaries::empty(&dict_dir), None)
        });
        let tier = DiskTier {
            blocks_dir,
            dictionaries,
            counters: DiskCounters::default(),
        };
        (tier, current)
    }

    fn path(&self, hash: &Hash) -> PathBuf {
        let hex = hex::encode(hash);
        self.blocks_dir.join(&hex[..2]).join(format!("{hex}.zst"))
    }

    /// Whether a file for `hash` exists (not whether it checks out).
    pub fn contains(&self, hash: &Hash) -> bool {
        self.path(hash).exists()
    }

    /// Reads, decompresses and re-hashes the block stored under `hash`.
    pub fn load(&self, hash: &Hash) -> Loaded {
        let path = self.path(hash);
        let frame = match std::fs::read(&path) {
            Ok(frame) => frame,
            Err(err) if err.kind() == ErrorKind::NotFound => return Loaded::Absent,
            Err(err) => {
                return Loaded::Dropped(self.drop_file(&path, format!("unreadable: {err}")))
            }
        };
        match self.decode(&frame, hash) {
            Ok(block) => Loaded::Block(block),
            Err(reason) => Loaded::Dropped(self.drop_file(&path, reason)),
        }
    }

    fn decode(&self, frame: &[u8], hash: &Hash) -> Result<Block, String> {
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if size <= MAX_ENCODING => size as usize,
            Ok(Some(size)) => return Err(format!("claims {size} bytes of content")),
            _ => return Err("not a zstd frame with a content size".into()),
        };
        let encoding = match zstd::zstd_safe::get_dict_id_from_frame(frame) {
            Some(id) => {
                let dictionary = self.dictionaries.decoder(id.get()).ok_or_else(|| {
                    format!("needs dictionary {:08x}, which is missing", id.get())
                })?;
                zstd::bulk::Decompressor::with_prepared_dictionary(&dictionary)
                    .and_then(|mut d| d.decompress(frame, size))
            }
            None => zstd::bulk::decompress(frame, size),
        }
        .map_err(|e| format!("does not decompress: {e}"))?;
        let block = Block::decode(&encoding).map_err(|e| format!("not a block: {e}"))?;
        if &block.hash != hash {
            return Err(format!(
                "holds a block whose hash is {}",
                hex::encode(block.hash)
            ));
        }
        Ok(block)
    }

    /// Deletes a bad file and uncounts it; returns the reason for the caller's log line.
    fn drop_file(&self, path: &Path, reason: String) -> String {
        let sizes = entry_sizes(path);
        match std::fs::remove_file(path) {
            Ok(()) => {
                if let Some((canonical, stored)) = sizes {
                    self.uncount(canonical, stored);
                }
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot delete a bad cache file")
            }
        }
        self.counters.corrupt_dropped.fetch_add(1, Relaxed);
        format!("{}: {reason}", path.display())
    }

    fn uncount(&self, canonical: u64, stored: u64) {
        let sub = |counter: &AtomicU64, by: u64| {
            let _ = counter.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(by)));
        };
        sub(&self.counters.entries, 1);
        sub(&self.counters.canonical_bytes, canonical);
        sub(&self.counters.stored_bytes, stored);
    }

    /// Writes `block` unless a file for it exists; returns whether it wrote. `replace` writes
    /// even then (used to recompress a file with a newer dictionary).
    pub fn store(
        &self,
        block: &Block,
        encoding: &[u8],
        encoder: &mut Encoder,
        replace: bool,
    ) -> std::io::Result<bool> {
        let path = self.path(&block.hash);
        let old = if path.exists() {
            if !replace {
                return Ok(false);
            }
            entry_sizes(&path)
        } else {
            None
        };
        let frame = encoder.compress(encoding)?;
        let shard = path.parent().expect("entry paths have a shard directory");
        let tmp = shard.join(format!(".{}.tmp", hex::encode(block.hash)));
        let written = std::fs::write(&tmp, &frame).or_else(|err| {
            if err.kind() == ErrorKind::NotFound {
                // The shard (or the whole cache directory) is new or was deleted: rebuild it.
                std::fs::create_dir_all(shard)?;
                std::fs::write(&tmp, &frame)
            } else {
                Err(err)
            }
        });
        if let Err(err) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
        if let Some((canonical, stored)) = old {
            self.uncount(canonical, stored);
        }
        self.counters.entries.fetch_add(1, Relaxed);
        self.counters
            .canonical_bytes
            .fetch_add(encoding.len() as u64, Relaxed);
        self.counters
            .stored_bytes
            .fetch_add(frame.len() as u64, Relaxed);
        Ok(true)
    }

    /// Counts the entries already on disk (once, at start: one small read per file), and
    /// removes temporary files a crash left.
    pub fn count_entries(&self) {
        if let Err(err) = self.try_count_entries() {
            if err.kind() != ErrorKind::NotFound {
                tracing::warn!(%err, path = %self.blocks_dir.display(), "cannot count all cache entries; the stats will be low");
            }
        }
    }

    fn try_count_entries(&self) -> std::io::Result<()> {
        for shard in std::fs::read_dir(&self.blocks_dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                if !name.ends_with(".zst") {
                    continue;
                }
                if let Some((canonical, stored)) = entry_sizes(&entry.path()) {
                    self.counters.entries.fetch_add(1, Relaxed);
                    self.counters.canonical_bytes.fetch_add(canonical, Relaxed);
                    self.counters.stored_bytes.fetch_add(stored, Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Every entry's hash (for repair and tests); unreadable names are skipped.
    pub fn hashes(&self) -> std::io::Result<Vec<Hash>> {
        let mut hashes = Vec::new();
        for shard in std::fs::read_dir(&self.blocks_dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let name = entry?.file_name();
                if let Some(hash) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".zst"))
                    .and_then(crate::chain::block::parse_hash)
                {
                    hashes.push(hash);
                }
            }
        }
        Ok(hashes)
    }
}

/// (content size from the frame header, file size) of an entry file, `None` if unreadable.
fn entry_sizes(path: &Path) -> Option<(u64, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let stored = file.metadata().ok()?.len();
    let mut head = [0u8; 18]; // the largest zstd frame header
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(_) => return None,
        }
    }
    let canonical = match zstd::zstd_safe::get_frame_content_size(&head[..filled]) {
        Ok(Some(size)) => size,
        _ => 0,
    };
    Some((canonical, stored))
}
