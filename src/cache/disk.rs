//! The disk tier: zstd frames of blocks appended to pack files, found through an index in RAM.
//!
//! ```text
//! <cache dir>/
//!   state                        the writer's progress (see `feed.rs`); rebuilt when missing
//!   dict/<id, 8 hex>.zdict       zstd dictionaries, see `dictionary.rs`
//!   packs/<number, 8 digits>.pack  blocks, appended
//! ```
//! A pack starts with the 8 bytes `OPDBPAK1` and then holds records back to back:
//!
//! ```text
//! u32 LE   frame length
//! u64 LE   the block hash's first 8 bytes (its "prefix", the index key)
//! frame    one zstd frame of the block's canonical encoding (`chain::block`), the bytes the
//!          chain hashes; its header carries the content size and the dictionary id
//! ```
//! A block costs about 150 bytes appended to a pack instead of a file of its own (whose
//! creation dominated the cache's CPU), and a committed batch one `pwrite` for all its blocks.
//! The index maps each prefix to its newest record; it is built at start by reading the record
//! heads of every pack, newest record winning.
//!
//! Nothing here is synced: the cache never holds the only copy of a block, and every load
//! re-hashes what it read and compares it with the hash asked for, so a record lost or damaged
//! in a crash is a miss, never a wrong answer. A record that does not check out is dropped from
//! the index and counted; its bytes stay in the pack until the pack is rewritten. A pack's torn
//! or damaged tail ends its scan: the records past it are misses and are stored again. Each
//! process appends to packs of its own (a new one after a restart), so it never writes after
//! bytes it has not written itself.
//!
//! **Links left out.** When the cache knows the chain's hashes by height ([`Links`], the
//! daemon's chain index), a block above genesis is stored with its `prev_hash` zeroed and the
//! top bit of its first byte (the encoding version) set to say so: 32 random bytes that no
//! compressor can shrink, a fifth of a typical frame, and the hash of the block below, which
//! the chain knows. A load puts the chain's hash and the version back before it decodes and
//! re-hashes, so a frame whose link was not the chain's gives another hash and is refused as
//! any damage is. A frame without the bit (stored without links) is read as it is; one with it
//! read without the hash below it is a miss, not damage.
//!
//! Two blocks whose hashes share the first 8 bytes (2^32 work to make on purpose, never by
//! chance) share an index slot: the newer one stored is found, the other is a miss, which the
//! chain answers.

use super::dictionary::{Dictionaries, Encoder, Trained};
use super::sub_saturating;
use crate::chain::block::{hash_prefix, Block, Hash, ENCODED_HEIGHT, ENCODED_PREV_HASH};
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use zstd::dict::DecoderDictionary;

/// A block encoding larger than this is damage, not a block (the chain's own bound).
const MAX_ENCODING: u64 = crate::chain::segment::MAX_BODY_LEN as u64;
/// The first bytes of every pack.
const PACK_MAGIC: &[u8; 8] = b"OPDBPAK1";
/// Records of one batch are written together up to about this many bytes.
const WRITE_TOGETHER_BYTES: usize = 1024 * 1024;
/// A record's head: frame length and hash prefix.
const RECORD_HEAD: usize = 12;
/// A pack is closed for appends once it holds this much (a record may cross it).
const PACK_LIMIT: u64 = 64 * 1024 * 1024;
/// Set in a stored encoding's first byte (its version, 1) when its `prev_hash` was left out.
const LINK_LEFT_OUT: u8 = 0x80;
/// The largest zstd frame header (what the scan reads of each frame).
const FRAME_HEADER_MAX: usize = 18;

/// Sizes of what the disk tier holds, kept as entries come and go.
#[derive(Debug, Default)]
pub struct DiskCounters {
    pub entries: AtomicU64,
    /// Sum of the canonical encodings' sizes of the entries.
    pub canonical_bytes: AtomicU64,
    /// Sum of the entries' compressed frames' sizes.
    pub stored_bytes: AtomicU64,
    /// Sum of the pack files' sizes (record heads and records no longer indexed included).
    pub pack_bytes: AtomicU64,
    pub corrupt_dropped: AtomicU64,
}

/// The chain's index of its blocks: what a stored block's left-out `prev_hash` is taken from,
/// and what decides whether a block from the shared tier belongs to this chain.
pub trait ChainIndex: Send + Sync {
    /// The hash of the chain's block at `height` (`None` past its head).
    fn hash_at(&self, height: u64) -> Option<Hash>;
    /// The height of the chain's block with `hash`, if the chain has it.
    fn height_of(&self, hash: &Hash) -> Option<u64>;
    /// At least the length of the encoding of the chain's block at `height`, if known: a
    /// frame from the shared tier that claims more is refused before it is decompressed.
    fn encoded_len_at(&self, _height: u64) -> Option<u64> {
        None
    }
}

/// A cache's view of its chain's index.
pub type Links = Arc<dyn ChainIndex>;

impl ChainIndex for crate::chain::store::ChainReader {
    fn hash_at(&self, height: u64) -> Option<Hash> {
        crate::chain::store::ChainReader::hash_at(self, height)
    }
    fn height_of(&self, hash: &Hash) -> Option<u64> {
        crate::chain::store::ChainReader::height_of(self, hash)
    }
    fn encoded_len_at(&self, height: u64) -> Option<u64> {
        // The record holds the encoding and a little more.
        self.record_len(height).map(u64::from)
    }
}

/// The hashes of a chain held in RAM, by height and by hash (tests, the bench, repair).
pub struct ChainHashes {
    by_height: Vec<Hash>,
    by_hash: HashMap<Hash, u64>,
}

impl ChainHashes {
    /// `hashes[h]` is the hash at height `h`.
    pub fn new(hashes: Vec<Hash>) -> ChainHashes {
        let by_hash = (0u64..).zip(&hashes).map(|(h, hash)| (*hash, h)).collect();
        ChainHashes {
            by_height: hashes,
            by_hash,
        }
    }
}

impl ChainIndex for ChainHashes {
    fn hash_at(&self, height: u64) -> Option<Hash> {
        self.by_height.get(usize::try_from(height).ok()?).copied()
    }
    fn height_of(&self, hash: &Hash) -> Option<u64> {
        self.by_hash.get(hash).copied()
    }
}

/// Why a frame gave no block.
#[derive(Debug)]
pub enum FrameError {
    /// It was stored without its `prev_hash`, and the hash of block `height - 1` is not known
    /// here (no links, or a chain behind): a miss, nothing is wrong with it.
    Unlinked,
    /// It needs dictionary `.0`, which is not at hand.
    NoDictionary(u32),
    /// It does not check out; the reason is for the log.
    Bad(String),
}

/// What a disk load found.
pub enum Loaded {
    Block(Block),
    Absent,
    /// The record did not check out and was dropped; the reason is for the log.
    Dropped(String),
}

/// Where a block's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    pack: u32,
    /// Offset of the record (its head) in the pack.
    offset: u32,
    frame_len: u32,
    canonical_len: u32,
}

/// The pack this process appends to.
struct OpenPack {
    number: u32,
    end: u64,
    /// Closed while the cache is idle ([`DiskTier::close_pack`]) and reopened on the next
    /// write, so that an idle daemon holds no cache file open for writing.
    file: Option<File>,
}

#[derive(Default)]
struct Appender {
    pack: Option<OpenPack>,
    /// The number the next new pack tries first.
    next_number: u32,
}

pub struct DiskTier {
    packs_dir: PathBuf,
    pub dictionaries: Dictionaries,
    pub counters: DiskCounters,
    index: RwLock<HashMap<u64, Entry>>,
    /// Read handles of the packs, opened on first use.
    readers: RwLock<HashMap<u32, Arc<File>>>,
    appender: Mutex<Appender>,
    /// See [`Links`]; `None` until the cache is given them.
    links: RwLock<Option<Links>>,
}

fn pack_name(number: u32) -> String {
    format!("{number:08}.pack")
}

fn pack_number(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".pack")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl DiskTier {
    /// Opens (creating) the disk tier in `dir`; returns it with the dictionary new blocks
    /// should use. Problems (a read-only or unreadable directory) are logged: the tier then
    /// starts with what it could read, and writes will tell. The index is built by
    /// [`DiskTier::scan`]; until then every lookup is a miss.
    pub fn open(dir: &Path) -> (DiskTier, Option<Trained>) {
        let packs_dir = dir.join("packs");
        if let Err(err) = crate::files::create_dir_all(&packs_dir) {
            tracing::warn!(%err, path = %packs_dir.display(), "cannot create the cache directory; blocks are served from the chain until it can be written");
        }
        let dict_dir = dir.join("dict");
        let (dictionaries, current) = Dictionaries::load(&dict_dir).unwrap_or_else(|err| {
            tracing::warn!(%err, path = %dict_dir.display(), "cannot read the cache dictionaries; entries that need them will be dropped as unreadable");
            (Dictionaries::empty(&dict_dir), None)
        });
        let tier = DiskTier {
            packs_dir,
            dictionaries,
            counters: DiskCounters::default(),
            index: RwLock::default(),
            readers: RwLock::default(),
            appender: Mutex::default(),
            links: RwLock::default(),
        };
        (tier, current)
    }

    /// Whether the index has a record for `hash` (not whether it checks out).
    pub fn contains(&self, hash: &Hash) -> bool {
        self.index.read().contains_key(&hash_prefix(hash))
    }

    /// Reads, decompresses and re-hashes the block stored under `hash`.
    pub fn load(&self, hash: &Hash) -> Loaded {
        let key = hash_prefix(hash);
        let Some(entry) = self.index.read().get(&key).copied() else {
            return Loaded::Absent;
        };
        match self.read_entry(key, entry) {
            Ok(Some(block)) if &block.hash == hash => Loaded::Block(block),
            // Another block whose hash starts the same (see the module text).
            Ok(Some(_)) => Loaded::Absent,
            // Its pack was rewritten and deleted meanwhile.
            Ok(None) => Loaded::Absent,
            Err(reason) => Loaded::Dropped(self.drop_entry(key, entry, reason)),
        }
    }

    /// The block of `entry`, decoded and re-hashed, whose hash starts with `key`;
    /// `Ok(None)` if its pack is gone, `Err` if the record does not check out.
    fn read_entry(&self, key: u64, entry: Entry) -> Result<Option<Block>, String> {
        let Some(file) = self.reader(entry.pack) else {
            return Ok(None);
        };
        let mut record = vec![0u8; RECORD_HEAD + entry.frame_len as usize];
        file.read_exact_at(&mut record, u64::from(entry.offset))
            .map_err(|err| format!("unreadable: {err}"))?;
        let (len, stored_key) = record_head(&record);
        if len != entry.frame_len || stored_key != key {
            return Err("its record head changed since it was indexed".into());
        }
        let Some(block) = self.decode(&record[RECORD_HEAD..])? else {
            return Ok(None);
        };
        if hash_prefix(&block.hash) != key {
            return Err(format!(
                "holds a block whose hash is {}",
                hex::encode(block.hash)
            ));
        }
        Ok(Some(block))
    }

    /// The read handle of pack `number`; `None` if the pack is gone.
    fn reader(&self, number: u32) -> Option<Arc<File>> {
        if let Some(file) = self.readers.read().get(&number) {
            return Some(file.clone());
        }
        let file = Arc::new(crate::files::open_read(&self.packs_dir.join(pack_name(number))).ok()?);
        Some(self.readers.write().entry(number).or_insert(file).clone())
    }

    fn decode(&self, frame: &[u8]) -> Result<Option<Block>, String> {
        let links = self.links();
        match decode_frame(frame, |id| self.dictionaries.decoder(id), links.as_ref()) {
            Ok(block) => Ok(Some(block)),
            Err(FrameError::Unlinked) => Ok(None),
            Err(FrameError::NoDictionary(id)) => {
                Err(format!("needs dictionary {id:08x}, which is missing"))
            }
            Err(FrameError::Bad(reason)) => Err(reason),
        }
    }

    /// The chain's hashes by height, if the cache was given them.
    pub fn links(&self) -> Option<Links> {
        self.links.read().clone()
    }

    /// Gives the cache the chain's hashes by height: from now on blocks are stored without
    /// their `prev_hash`, and frames stored so are read.
    pub fn set_links(&self, links: Links) {
        *self.links.write() = Some(links);
    }

    /// What is compressed for `block`'s `encoding`: without its `prev_hash` when the cache's
    /// links give that very hash for the block below (see the module text).
    pub fn stored_form<'a>(&self, block: &Block, encoding: &'a [u8]) -> Cow<'a, [u8]> {
        let linked = block.height > 0
            && encoding.len() >= ENCODED_PREV_HASH.end
            && self
                .links()
                .and_then(|links| links.hash_at(block.height - 1))
                .is_some_and(|below| below == block.prev_hash);
        if !linked {
            return Cow::Borrowed(encoding);
        }
        let mut stored = encoding.to_vec();
        stored[0] |= LINK_LEFT_OUT;
        stored[ENCODED_PREV_HASH].fill(0);
        Cow::Owned(stored)
    }

    /// Forgets a bad record (its bytes stay in the pack) and counts it; returns the reason for
    /// the caller's log line.
    fn drop_entry(&self, key: u64, entry: Entry, reason: String) -> String {
        {
            let mut index = self.index.write();
            if index.get(&key) == Some(&entry) {
                index.remove(&key);
                self.uncount(entry);
            }
        }
        self.counters.corrupt_dropped.fetch_add(1, Relaxed);
        format!(
            "{} at offset {}: {reason}",
            self.packs_dir.join(pack_name(entry.pack)).display(),
            entry.offset
        )
    }

    fn count(&self, entry: Entry) {
        self.counters.entries.fetch_add(1, Relaxed);
        self.counters
            .canonical_bytes
            .fetch_add(entry.canonical_len.into(), Relaxed);
        self.counters
            .stored_bytes
            .fetch_add(entry.frame_len.into(), Relaxed);
    }

    fn uncount(&self, entry: Entry) {
        sub_saturating(&self.counters.entries, 1);
        sub_saturating(&self.counters.canonical_bytes, entry.canonical_len.into());
        sub_saturating(&self.counters.stored_bytes, entry.frame_len.into());
    }

    /// Puts `entry` under `key`, replacing (and uncounting) what was there.
    fn index_entry(&self, key: u64, entry: Entry) {
        let old = self.index.write().insert(key, entry);
        if let Some(old) = old {
            self.uncount(old);
        }
        self.count(entry);
    }

    /// Appends `block` unless the index has it; returns the frame it wrote (`None`: it was
    /// there). `replace` writes even then (used to recompress with a newer dictionary).
    pub fn store(
        &self,
        block: &Block,
        encoding: &[u8],
        encoder: &mut Encoder,
        replace: bool,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let stored = self
            .store_many(&[(block, encoding)], encoder, replace)
            .pop();
        Ok(stored.transpose()?.flatten().map(|stored| stored.frame))
    }

    /// [`DiskTier::store`] of several blocks with one write: their records go to the pack
    /// together and enter the index once written, so a reader never finds an entry whose bytes
    /// are not there yet. Per block, in order: `None` when it was there already (and not to be
    /// replaced), else what was stored (the frame, and the form it compressed for the encoder's
    /// samples). A failed write fails the blocks it held.
    pub fn store_many<'a>(
        &self,
        blocks: &[(&Block, &'a [u8])],
        encoder: &mut Encoder,
        replace: bool,
    ) -> Vec<std::io::Result<Option<Stored<'a>>>> {
        let mut results = Vec::with_capacity(blocks.len());
        let mut records = Vec::new();
        let mut unwritten = Vec::new();
        for (block, encoding) in blocks {
            if !replace && self.contains(&block.hash) {
                results.push(Ok(None));
                continue;
            }
            let form = self.stored_form(block, encoding);
            let frame = encoder.compress(&form).and_then(|frame| {
                let frame_len = u32::try_from(frame.len()).map_err(std::io::Error::other)?;
                Ok((frame, frame_len))
            });
            match frame {
                Ok((frame, frame_len)) => {
                    let key = hash_prefix(&block.hash);
                    unwritten.push(Unwritten {
                        result: results.len(),
                        key,
                        at: records.len(),
                        frame_len,
                        canonical_len: encoding.len() as u32,
                    });
                    push_record(&mut records, frame_len, key, &frame);
                    results.push(Ok(Some(Stored { frame, form })));
                }
                Err(err) => results.push(Err(err)),
            }
            if records.len() >= WRITE_TOGETHER_BYTES {
                self.write_records(&mut records, &mut unwritten, &mut results);
            }
        }
        self.write_records(&mut records, &mut unwritten, &mut results);
        results
    }

    /// Appends `records` (emptied) and indexes each of `unwritten` (emptied), or fails them.
    fn write_records(
        &self,
        records: &mut Vec<u8>,
        unwritten: &mut Vec<Unwritten>,
        results: &mut [std::io::Result<Option<Stored<'_>>>],
    ) {
        if unwritten.is_empty() {
            return;
        }
        let appended = self.append(records);
        for record in unwritten.drain(..) {
            let offset = appended
                .as_ref()
                .map_err(copy_error)
                .and_then(|&(pack, start)| {
                    let offset = u32::try_from(u64::from(start) + record.at as u64)
                        .map_err(std::io::Error::other)?;
                    Ok((pack, offset))
                });
            match offset {
                Ok((pack, offset)) => self.index_entry(
                    record.key,
                    Entry {
                        pack,
                        offset,
                        frame_len: record.frame_len,
                        canonical_len: record.canonical_len,
                    },
                ),
                Err(err) => results[record.result] = Err(err),
            }
        }
        records.clear();
    }

    /// Writes `record` at the end of this process's pack (a new one when there is none or it
    /// is full); returns the pack's number and the record's offset.
    fn append(&self, record: &[u8]) -> std::io::Result<(u32, u32)> {
        let mut appender = self.appender.lock();
        let full = appender.pack.as_ref().is_some_and(|p| {
            p.end > PACK_MAGIC.len() as u64 && p.end + record.len() as u64 > PACK_LIMIT
        });
        if full {
            appender.pack = None;
        }
        if let Some(pack) = &mut appender.pack {
            if pack.file.is_none() {
                match crate::files::open(
                    crate::files::options(crate::files::FILE_MODE).write(true),
                    &self.packs_dir.join(pack_name(pack.number)),
                ) {
                    Ok(file) => pack.file = Some(file),
                    // Deleted under us (the cache directory was removed): start afresh.
                    Err(err) if err.kind() == ErrorKind::NotFound => appender.pack = None,
                    Err(err) => return Err(err),
                }
            }
        }
        if appender.pack.is_none() {
            let pack = self.new_pack(&mut appender.next_number)?;
            appender.pack = Some(pack);
        }
        let pack = appender.pack.as_mut().expect("a pack is open");
        let file = pack.file.as_ref().expect("the pack's file is open");
        let offset = u32::try_from(pack.end).map_err(std::io::Error::other)?;
        if let Err(err) = file.write_all_at(record, pack.end) {
            // Cut what part of the record was written (best effort: a scan stops at a partial
            // record anyway) and leave this pack: the next write starts a new one, so it fails
            // too until the cause (a full or read-only filesystem) is gone, instead of filling
            // what room is left in the pack's last allocated block.
            let _ = file.set_len(pack.end);
            appender.pack = None;
            return Err(err);
        }
        pack.end += record.len() as u64;
        self.counters
            .pack_bytes
            .fetch_add(record.len() as u64, Relaxed);
        Ok((pack.number, offset))
    }

    /// Creates the next free pack number's file (and the directory, if it went away).
    fn new_pack(&self, next_number: &mut u32) -> std::io::Result<OpenPack> {
        loop {
            let number = *next_number;
            *next_number = number.checked_add(1).ok_or_else(|| {
                std::io::Error::other("the cache has used up its pack numbers; delete it")
            })?;
            let path = self.packs_dir.join(pack_name(number));
            let create = || crate::files::create_new(&path, crate::files::FILE_MODE);
            let created = create().or_else(|err| {
                if err.kind() == ErrorKind::NotFound {
                    crate::files::create_dir_all(&self.packs_dir)?;
                    create()
                } else {
                    Err(err)
                }
            });
            let file = match created {
                Ok(file) => file,
                Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            };
            if let Err(err) = file.write_all_at(PACK_MAGIC, 0) {
                let _ = std::fs::remove_file(&path);
                return Err(err);
            }
            self.counters
                .pack_bytes
                .fetch_add(PACK_MAGIC.len() as u64, Relaxed);
            return Ok(OpenPack {
                number,
                end: PACK_MAGIC.len() as u64,
                file: Some(file),
            });
        }
    }

    /// Closes the pack being appended to (the next write reopens it).
    pub fn close_pack(&self) {
        if let Some(pack) = &mut self.appender.lock().pack {
            pack.file = None;
        }
    }

    /// Builds the index from the packs on disk (once, at start, before the first write: one
    /// sequential read of every pack) and removes what an older layout left.
    pub fn scan(&self) {
        if let Err(err) = self.try_scan() {
            if err.kind() != ErrorKind::NotFound {
                tracing::warn!(%err, path = %self.packs_dir.display(), "cannot read all cache packs; the blocks in them are read from the chain");
            }
        }
        // Before packs, each block was a file under `blocks/`: the chain fills the packs.
        let old = self.packs_dir.with_file_name("blocks");
        if old.is_dir() {
            match std::fs::remove_dir_all(&old) {
                Ok(()) => {
                    tracing::info!(path = %old.display(), "removed the cache's old one-file-per-block layout; the packs are filled from the chain")
                }
                Err(err) => {
                    tracing::warn!(%err, path = %old.display(), "cannot remove the cache's old one-file-per-block layout")
                }
            }
        }
    }

    fn try_scan(&self) -> std::io::Result<()> {
        let mut numbers: Vec<u32> = std::fs::read_dir(&self.packs_dir)?
            .filter_map(|entry| pack_number(entry.ok()?.file_name().to_str()?))
            .collect();
        numbers.sort_unstable();
        if let Some(last) = numbers.last() {
            let mut appender = self.appender.lock();
            appender.next_number = appender.next_number.max(last.saturating_add(1));
        }
        for number in numbers {
            let path = self.packs_dir.join(pack_name(number));
            match self.scan_pack(number, &path) {
                Ok(None) => {}
                Ok(Some(stopped)) => tracing::info!(
                    path = %path.display(),
                    offset = stopped,
                    "a cache pack ends in a torn or damaged record; the blocks past it are stored again"
                ),
                Err(err) => {
                    tracing::warn!(%err, path = %path.display(), "cannot read a cache pack; its blocks are read from the chain")
                }
            }
        }
        Ok(())
    }

    /// Indexes the records of one pack; returns the offset where a bad record ended the scan.
    fn scan_pack(&self, number: u32, path: &Path) -> std::io::Result<Option<u64>> {
        let file = crate::files::open_read(path)?;
        let size = file.metadata()?.len();
        self.counters.pack_bytes.fetch_add(size, Relaxed);
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut magic = [0u8; 8];
        if reader.read_exact(&mut magic).is_err() || &magic != PACK_MAGIC {
            return Ok(Some(0));
        }
        let mut at = PACK_MAGIC.len() as u64;
        let mut head = [0u8; RECORD_HEAD + FRAME_HEADER_MAX];
        while at < size {
            let left = size - at;
            let want = head.len().min(left as usize);
            if want < RECORD_HEAD || reader.read_exact(&mut head[..want]).is_err() {
                return Ok(Some(at));
            }
            let (frame_len, key) = record_head(&head);
            let record_len = RECORD_HEAD as u64 + u64::from(frame_len);
            if frame_len == 0 || record_len > left || at > u64::from(u32::MAX) {
                return Ok(Some(at));
            }
            let frame_start = &head[RECORD_HEAD..want.min(RECORD_HEAD + frame_len as usize)];
            let canonical_len = match zstd::zstd_safe::get_frame_content_size(frame_start) {
                Ok(Some(size)) if size <= MAX_ENCODING => size as u32,
                // Indexed all the same: the load that finds it bad drops and counts it.
                _ => 0,
            };
            self.index_entry(
                key,
                Entry {
                    pack: number,
                    offset: at as u32,
                    frame_len,
                    canonical_len,
                },
            );
            reader.seek_relative(record_len as i64 - want as i64)?;
            at += record_len;
        }
        Ok(None)
    }

    /// The indexed entries, for a pass over every block.
    fn entries(&self) -> Vec<(u64, Entry)> {
        self.index.read().iter().map(|(k, e)| (*k, *e)).collect()
    }

    /// Calls `visit` with every block that checks out, until it returns `true`; returns that
    /// block (used by repair when the chain cannot say which hash it needs).
    pub fn find(&self, mut visit: impl FnMut(&Block) -> bool) -> Option<Block> {
        self.entries().into_iter().find_map(|(key, entry)| {
            self.read_entry(key, entry)
                .ok()
                .flatten()
                .filter(|block| visit(block))
        })
    }

    /// Writes every block again, compressed by `encoder`, into a new pack and deletes the
    /// older packs once all were written. Returns (rewritten, entries).
    pub fn rewrite_all(&self, encoder: &mut Encoder) -> (usize, usize) {
        let entries = self.entries();
        let first_new = {
            let mut appender = self.appender.lock();
            appender.pack = None;
            appender.next_number
        };
        let mut rewritten = 0;
        for (key, entry) in &entries {
            let Ok(Some(block)) = self.read_entry(*key, *entry) else {
                continue;
            };
            if self.store(&block, &block.encode(), encoder, true).is_ok() {
                rewritten += 1;
            }
        }
        if rewritten == entries.len() {
            self.remove_packs_before(first_new);
        }
        (rewritten, entries.len())
    }

    /// Deletes the packs numbered below `number` (nothing indexed points into them).
    fn remove_packs_before(&self, number: u32) {
        let Ok(dir) = std::fs::read_dir(&self.packs_dir) else {
            return;
        };
        for old in dir.filter_map(|e| pack_number(e.ok()?.file_name().to_str()?)) {
            if old < number {
                self.readers.write().remove(&old);
                let path = self.packs_dir.join(pack_name(old));
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                if std::fs::remove_file(&path).is_ok() {
                    sub_saturating(&self.counters.pack_bytes, size);
                }
            }
        }
    }

    /// Where the record of `hash` is: (pack file, offset of the frame, frame length).
    #[cfg(test)]
    pub fn locate(&self, hash: &Hash) -> Option<(PathBuf, u64, usize)> {
        let entry = *self.index.read().get(&hash_prefix(hash))?;
        Some((
            self.packs_dir.join(pack_name(entry.pack)),
            u64::from(entry.offset) + RECORD_HEAD as u64,
            entry.frame_len as usize,
        ))
    }

    /// Appends a record of `frame` under `hash`'s prefix, whatever the frame holds.
    #[cfg(test)]
    pub fn plant(&self, hash: &Hash, frame: &[u8]) {
        let mut record = Vec::new();
        push_record(&mut record, frame.len() as u32, hash_prefix(hash), frame);
        self.append(&record).expect("plant a record");
    }
}

/// Decompresses one zstd frame of a block encoding (with the dictionary its header names,
/// from `dictionary`), puts back a left-out `prev_hash` from `links`, and decodes the block,
/// whose hash is computed from what was decoded. Bounded: a frame claiming more than the
/// chain's largest block is refused undecompressed.
pub(super) fn decode_frame(
    frame: &[u8],
    dictionary: impl FnOnce(u32) -> Option<Arc<DecoderDictionary<'static>>>,
    links: Option<&Links>,
) -> Result<Block, FrameError> {
    let bad = FrameError::Bad;
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= MAX_ENCODING => size as usize,
        Ok(Some(size)) => return Err(bad(format!("claims {size} bytes of content"))),
        _ => return Err(bad("not a zstd frame with a content size".into())),
    };
    let mut encoding = match zstd::zstd_safe::get_dict_id_from_frame(frame) {
        Some(id) => {
            let dictionary = dictionary(id.get()).ok_or(FrameError::NoDictionary(id.get()))?;
            zstd::bulk::Decompressor::with_prepared_dictionary(&dictionary)
                .and_then(|mut d| d.decompress(frame, size))
        }
        None => zstd::bulk::decompress(frame, size),
    }
    .map_err(|e| bad(format!("does not decompress: {e}")))?;
    if encoding.len() >= ENCODED_PREV_HASH.end && encoding[0] & LINK_LEFT_OUT != 0 {
        let mut height = [0u8; 8];
        height.copy_from_slice(&encoding[ENCODED_HEIGHT]);
        let prev = u64::from_le_bytes(height)
            .checked_sub(1)
            .and_then(|below| links.and_then(|links| links.hash_at(below)))
            .ok_or(FrameError::Unlinked)?;
        encoding[0] &= !LINK_LEFT_OUT;
        encoding[ENCODED_PREV_HASH].copy_from_slice(&prev);
    }
    Block::decode(&encoding).map_err(|e| bad(format!("not a block: {e}")))
}

/// Appends a record to `records`: its head (frame length, hash prefix), then the frame.
fn push_record(records: &mut Vec<u8>, frame_len: u32, key: u64, frame: &[u8]) {
    records.extend_from_slice(&frame_len.to_le_bytes());
    records.extend_from_slice(&key.to_le_bytes());
    records.extend_from_slice(frame);
}

/// The same error again, for each block a failed write held.
fn copy_error(err: &std::io::Error) -> std::io::Error {
    std::io::Error::new(err.kind(), err.to_string())
}

/// A block stored by [`DiskTier::store_many`]: its frame, and the form it compressed.
pub struct Stored<'a> {
    pub frame: Vec<u8>,
    pub form: Cow<'a, [u8]>,
}

/// A record built by [`DiskTier::store_many`] and not yet written.
struct Unwritten {
    /// Its block's place in the results.
    result: usize,
    key: u64,
    /// Its offset in the records written together.
    at: usize,
    frame_len: u32,
    canonical_len: u32,
}

/// (frame length, hash prefix) of a record starting at `bytes`.
fn record_head(bytes: &[u8]) -> (u32, u64) {
    (
        u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")),
        u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")),
    )
}
