//! The segment store: opens (and on first use creates) a chain directory, recovers its tail,
//! appends batches of blocks durably and reads blocks back by height or hash.
//!
//! Promises:
//! - `ChainWriter::append` returns `Ok` only after every block of the batch is on stable storage
//!   (`fdatasync` of the segment; a new segment is also recorded in its directory with `fsync`).
//! - The active segment is extended ahead of its records (`fallocate` mode 0, [`EXTEND_CHUNK`]
//!   at a time) before anything is written to it: the zeros after the last record are free
//!   space (see `segment.rs`), an append overwrites them without changing the file's size, so
//!   its `fdatasync` writes the data and not also the inode, and a full disk is a refusal
//!   before the write and the sync, never a half-written batch. Writing resumes by itself once
//!   space is freed. A segment the writer moves on from is cut to its data.
//! - A segment grows past `segment_bytes` only by holding one record larger than that: the
//!   size is checked per record, and a batch may continue in a new segment (see
//!   [`ChainWriter::append`] for how such a batch stays all-or-nothing). The active
//!   segment's file may run past it into free space, up to the next [`EXTEND_CHUNK`]
//!   boundary; that is cut when the segment is sealed.
//! - Opening never removes or cuts a complete, valid record: only a torn tail or an
//!   interrupted creation of the newest segment (see `scan.rs`); anything else is `Corrupted`.
//! - A failed write is rolled back to the last durable length and nothing of the batch becomes
//!   visible. A failed `fdatasync` latches the store: every later append fails until a restart
//!   recovers from disk, because after such a failure the kernel no longer tells which bytes are
//!   durable.
//! - Readers (`ChainReader`, any thread) see a block only once it is durable.
//!
//! All writes to segment files go through the I/O seam of `io.rs`, so tests can cut power at
//! any point and check what survives.
//!
//! The index file (`index`) maps height → (segment, offset, length) and hash → height. It is a
//! start-up accelerator, written without sync after each commit: on open it is checked
//! (structure, and its last entry against the segment) and rebuilt from the segments when it
//! does not check out.

use super::block::{hash_prefix, Block, Caller, EncodedBlock, Hash, ZERO_HASH};
use super::error::{ChainError, Result};
use super::io::{RealIo, SegmentFile, SharedIo};
use super::scan::{self, GENESIS_OPERATION, GENESIS_PLUGIN};
use super::segment::{self, ChainId, Parsed, HEADER_LEN};
use crate::footprint::PluginFootprint;
use parking_lot::RwLock;
use std::collections::hash_map::{Entry, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const INDEX_FILE: &str = "index";
const LOCK_FILE: &str = "lock";
const INDEX_MAGIC: &[u8; 8] = b"OPDBIDX\0";
const INDEX_ENTRY_LEN: usize = 56;
/// The active segment is extended ahead in chunks of this size: small enough for a 4 MiB
/// filesystem, large enough that one sync in a thousand (200-byte footprints) writes the inode.
pub const EXTEND_CHUNK: u64 = 256 * 1024;

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A segment is sealed and a new one started once it would grow past this size.
    pub segment_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What opening the store found and did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The chain was created by this open (genesis written).
    pub created: bool,
    /// Bytes of an incomplete, never acknowledged tail that were cut.
    pub torn_bytes_cut: u64,
    /// The index file did not check out and was rebuilt from the segments.
    pub index_rebuilt: bool,
    /// Blocks whose records were scanned and hash-checked during the open.
    pub blocks_scanned: u64,
}

#[derive(Debug, Clone, Copy)]
struct Location {
    segment: u32,
    len: u32,
    offset: u64,
}

struct Segment {
    first_height: u64,
    file: File,
}

#[derive(Default)]
struct Index {
    locations: Vec<Location>,
    /// Block hash by height: reads by height use the hash-keyed cache, the index file needs it.
    hashes: Vec<Hash>,
    hashes_by_prefix: HashMap<u64, u64>,
    /// Heights whose hash prefix was already taken by another block (practically never used).
    collisions: HashMap<Hash, u64>,
    head_hash: Hash,
    head_timestamp_ns: u64,
}

impl Index {
    fn push(&mut self, location: Location, block: &Block) {
        let height = self.locations.len() as u64;
        debug_assert_eq!(height, block.height);
        self.locations.push(location);
        self.insert_hash(&block.hash, height);
        self.head_timestamp_ns = block.timestamp_ns;
    }

    fn insert_hash(&mut self, hash: &Hash, height: u64) {
        debug_assert_eq!(self.hashes.len() as u64, height);
        self.hashes.push(*hash);
        match self.hashes_by_prefix.entry(hash_prefix(hash)) {
            Entry::Vacant(slot) => {
                slot.insert(height);
            }
            // The first holder keeps the prefix; a later block is found through its full hash.
            Entry::Occupied(_) => {
                self.collisions.insert(*hash, height);
            }
        }
        self.head_hash = *hash;
    }
}

struct Shared {
    dir: PathBuf,
    chain_id: ChainId,
    segments: RwLock<Vec<Arc<Segment>>>,
    index: RwLock<Index>,
}

/// Reads durable blocks; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ChainReader {
    shared: Arc<Shared>,
}

/// Appends blocks; owned by the single writer thread.
pub struct ChainWriter {
    shared: Arc<Shared>,
    options: StoreOptions,
    io: SharedIo,
    active: Box<dyn SegmentFile>,
    active_len: u64,
    /// The active segment's size: it is extended (zeros, space allocated) up to this offset.
    extended_to: u64,
    /// False once the filesystem said it cannot allocate space ahead.
    extend_supported: bool,
    index_file: Option<File>,
    latched: Option<String>,
    _lock: nix::fcntl::Flock<File>,
}

/// Opens the chain in `dir` for writing, creating it (with its genesis block) when the
/// directory holds no segment. Takes an exclusive lock on the directory.
pub fn open(dir: &Path, options: StoreOptions) -> Result<(ChainWriter, ChainReader, Recovery)> {
    open_with_io(dir, options, RealIo::shared())
}

/// [`open`] with segment writes going through `io` (a fault-injecting backend in tests).
pub fn open_with_io(
    dir: &Path,
    options: StoreOptions,
    io: SharedIo,
) -> Result<(ChainWriter, ChainReader, Recovery)> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ChainError::io(format!("creating chain directory {}", dir.display()), e))?;
    let lock = take_lock(dir)?;
    let mut recovery = Recovery::default();
    if segment::list(dir)
        .map_err(|e| ChainError::io(format!("listing {}", dir.display()), e))?
        .is_empty()
    {
        create_genesis(dir)?;
        recovery.created = true;
    }
    let loaded = load(dir, true, &mut recovery)?;
    let shared = loaded.shared;
    let (active_first, active_path) = loaded.last_segment;
    let active = io
        .open(&active_path)
        .map_err(|e| ChainError::io(format!("opening {}", active_path.display()), e))?;
    let mut file_len = std::fs::metadata(&active_path)
        .map_err(|e| ChainError::io("reading segment size", e))?
        .len();
    if let Some(valid_len) = loaded.torn_from {
        tracing::warn!(
            segment = %active_path.display(),
            cut_bytes = file_len - valid_len,
            "cutting an incomplete record at the end of the chain (a write that was never acknowledged)"
        );
        active
            .set_len(valid_len)
            .and_then(|()| active.sync_data())
            .map_err(|e| ChainError::io("cutting the torn tail", e))?;
        recovery.torn_bytes_cut = file_len - valid_len;
        file_len = valid_len;
    }
    let active_len = loaded.valid_len;
    let index_file = rewrite_index(&shared, loaded.index_trusted);
    let writer = ChainWriter {
        shared: shared.clone(),
        options,
        io,
        active,
        active_len,
        // Free space after the data (zeros) is used as it is.
        extended_to: file_len.max(active_len),
        extend_supported: true,
        index_file,
        latched: None,
        _lock: lock,
    };
    debug_assert_eq!(
        shared.segments.read().last().map(|s| s.first_height),
        Some(active_first)
    );
    Ok((writer, ChainReader { shared }, recovery))
}

/// Opens the chain in `dir` for reading only: no lock, no tail cut, no index written. A torn
/// tail is left on disk and simply not shown.
pub fn open_read_only(dir: &Path) -> Result<ChainReader> {
    let mut recovery = Recovery::default();
    let loaded = load(dir, false, &mut recovery)?;
    Ok(ChainReader {
        shared: loaded.shared,
    })
}

/// Takes the exclusive lock a writer holds on the chain directory (`InUse` when a daemon or
/// another writer has it). Offline tools that rewrite a segment (repair) hold it meanwhile.
pub fn take_lock(dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = dir.join(LOCK_FILE);
    let file = crate::files::open(
        crate::files::options(0o600)
            .create(true)
            .truncate(false)
            .write(true),
        &path,
    )
    .map_err(|e| ChainError::io(format!("opening lock file {}", path.display()), e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| ChainError::InUse(dir.to_path_buf()))
}

/// Whether a writer (the daemon, or a tool holding [`take_lock`]) has the chain in `dir` open
/// now: its exclusive lock on the lock file is listed in `/proc/locks`. Reading that list takes
/// no lock itself (a probe with `flock` could make a starting daemon see the chain in use) and
/// creates nothing, so it works on read-only snapshots and backups (which have no writer).
pub fn writer_active(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir.join(LOCK_FILE)) else {
        return false;
    };
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    std::fs::read_to_string("/proc/locks").is_ok_and(|locks| {
        locks.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.contains(&"FLOCK") && fields.contains(&"WRITE") && fields.contains(&id.as_str())
        })
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The genesis block's data: format version, chain id and creation time.
pub fn genesis_data(chain_id: &ChainId, created_ns: u64) -> String {
    format!(
        r#"{{"format_version":{},"chain_id":"{}","created_ns":{created_ns}}}"#,
        segment::FORMAT_VERSION,
        hex::encode(chain_id)
    )
}

fn create_genesis(dir: &Path) -> Result<()> {
    let mut chain_id: ChainId = [0; 16];
    getrandom::getrandom(&mut chain_id)
        .map_err(|e| ChainError::io("drawing a chain id", std::io::Error::other(e.to_string())))?;
    let created = now_ns();
    let genesis = Block::new(
        0,
        created,
        ZERO_HASH,
        Caller::this_process(),
        GENESIS_PLUGIN.into(),
        GENESIS_OPERATION.into(),
        genesis_data(&chain_id, created),
    );
    let mut bytes = segment::encode_header(0, &chain_id).to_vec();
    segment::encode_record(&genesis, &mut bytes);
    let path = dir.join(segment::file_name(0));
    let tmp = dir.join(format!(".{}.new", segment::file_name(0)));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp); // a leftover of a crash, or a planted link
        let file = crate::files::create_new(&tmp, 0o640)?;
        file.write_all_at(&bytes, 0)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)
    };
    write().map_err(|e| ChainError::io(format!("creating the chain in {}", dir.display()), e))?;
    tracing::info!(chain_id = %hex::encode(chain_id), dir = %dir.display(), "created a new chain");
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    crate::files::sync_dir(dir)
}

struct Loaded {
    shared: Arc<Shared>,
    last_segment: (u64, PathBuf),
    /// Length of the last segment up to its last valid record.
    valid_len: u64,
    /// Set when bytes after `valid_len` are a torn tail.
    torn_from: Option<u64>,
    /// Number of leading index-file entries that were found valid.
    index_trusted: usize,
}

/// Reads the chain: the index where it checks out, then [`scan::scan_chain`] over every
/// header and every record the index does not cover (the same rules as `verify`). A newest
/// segment that is an interrupted creation is removed when `writable`, skipped otherwise.
fn load(dir: &Path, writable: bool, recovery: &mut Recovery) -> Result<Loaded> {
    let listed =
        segment::list(dir).map_err(|e| ChainError::io(format!("listing {}", dir.display()), e))?;
    if listed.is_empty() {
        return Err(ChainError::io(
            format!("no chain in {}", dir.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut index = Index::default();
    let mut index_trusted = 0;
    let resume = match load_index(dir, &listed) {
        Ok((entries, resume)) => {
            for (hash, location) in &entries {
                index.locations.push(*location);
                index.insert_hash(hash, index.locations.len() as u64 - 1);
            }
            index_trusted = entries.len();
            if let Some(resume) = &resume {
                // Time never runs backwards along the chain: the writer continues from here.
                index.head_timestamp_ns = resume.state.prev_timestamp_ns;
            }
            resume
        }
        Err(reason) => {
            if dir.join(INDEX_FILE).exists() {
                tracing::warn!(%reason, "the index does not check out; rebuilding it from the segments");
            }
            recovery.index_rebuilt = true;
            None
        }
    };
    // Every record the index does not cover is hash-checked, linked and checked by the rules.
    let scanned = scan::scan_chain(
        &listed,
        resume,
        None,
        true,
        &mut |seg_i, block, offset, len| {
            index.push(
                Location {
                    segment: seg_i as u32,
                    len,
                    offset,
                },
                block,
            );
            recovery.blocks_scanned += 1;
        },
    )?;
    if let Some((path, len)) = &scanned.interrupted {
        if writable {
            tracing::warn!(
                segment = %path.display(),
                bytes = len,
                "removing the newest segment: its creation was interrupted before any record was written"
            );
            std::fs::remove_file(path)
                .and_then(|()| sync_dir(dir))
                .map_err(|e| {
                    ChainError::io(
                        format!("removing the incomplete segment {}", path.display()),
                        e,
                    )
                })?;
        }
    }
    let newest = scanned
        .segments
        .last()
        .expect("segment 0 belongs to the chain");
    let last_segment = (newest.first_height, newest.path.clone());
    let segments = scanned
        .segments
        .into_iter()
        .map(|s| {
            Arc::new(Segment {
                first_height: s.first_height,
                file: s.file,
            })
        })
        .collect();
    Ok(Loaded {
        shared: Arc::new(Shared {
            dir: dir.to_path_buf(),
            chain_id: scanned.chain_id,
            segments: RwLock::new(segments),
            index: RwLock::new(index),
        }),
        last_segment,
        valid_len: scanned.valid_len,
        torn_from: scanned.torn_to.map(|_| scanned.valid_len),
        index_trusted,
    })
}

/// Hash and location of each block the index file holds, by height.
type IndexEntries = Vec<(Hash, Location)>;

/// Why the index file is not trusted (it is then rebuilt from the segments).
#[derive(Debug, thiserror::Error)]
enum IndexUnusable {
    #[error("reading {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the first segment's {0}")]
    SegmentHeader(#[from] segment::HeaderError),
    #[error("bad index header")]
    Header,
    #[error("entry {0} names an unexpected segment")]
    Segment(u64),
    #[error("entry {0} is not contiguous with the one before")]
    NotContiguous(u64),
    #[error("entry {0} does not match its record")]
    Mismatch(u64),
    #[error(transparent)]
    Record(#[from] ChainError),
}

/// Reads and checks the index file against the segments `listed`; returns its entries and
/// where a scan continues after them. `Err` says why it cannot be trusted.
fn load_index(
    dir: &Path,
    listed: &[(u64, PathBuf)],
) -> std::result::Result<(IndexEntries, Option<scan::Resume>), IndexUnusable> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IndexUnusable::Read { path, source }
    };
    let (first, first_path) = &listed[0];
    let mut header = [0u8; HEADER_LEN];
    crate::files::open_read(first_path)
        .and_then(|f| f.read_exact_at(&mut header, 0))
        .map_err(read_err(first_path))?;
    let chain_id = segment::check_header(&header, *first)?;
    let index_path = dir.join(INDEX_FILE);
    let bytes = crate::files::read(&index_path).map_err(read_err(&index_path))?;
    if bytes.len() < HEADER_LEN || &bytes[..8] != INDEX_MAGIC || bytes[24..40] != chain_id[..] {
        return Err(IndexUnusable::Header);
    }
    let mut entries = Vec::with_capacity((bytes.len() - HEADER_LEN) / INDEX_ENTRY_LEN);
    let mut seg_i = 0usize;
    let mut next_offset = HEADER_LEN as u64;
    for (height, raw) in bytes[HEADER_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .enumerate()
    {
        let height = height as u64;
        let hash: Hash = raw[..32].try_into().expect("32 bytes");
        let first = u64::from_le_bytes(raw[32..40].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(raw[40..48].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[48..52].try_into().expect("4 bytes"));
        if first != listed[seg_i].0 {
            seg_i += 1;
            next_offset = HEADER_LEN as u64;
            if listed.get(seg_i).map(|s| s.0) != Some(first) || first != height {
                return Err(IndexUnusable::Segment(height));
            }
        }
        if offset != next_offset || (len as usize) < segment::record_len(0) {
            return Err(IndexUnusable::NotContiguous(height));
        }
        next_offset = offset + len as u64;
        entries.push((
            hash,
            Location {
                segment: seg_i as u32,
                len,
                offset,
            },
        ));
    }
    let Some((hash, location)) = entries.last() else {
        return Ok((entries, None));
    };
    let height = entries.len() as u64 - 1;
    let path = &listed[location.segment as usize].1;
    let file = crate::files::open_read(path).map_err(read_err(path))?;
    let block = read_record(&file, location, height)?;
    if &block.hash != hash {
        return Err(IndexUnusable::Mismatch(height));
    }
    let resume = scan::Resume {
        segment: location.segment as usize,
        offset: location.offset + location.len as u64,
        state: scan::ScanState {
            chain_id,
            next_height: height + 1,
            prev_hash: block.hash,
            prev_timestamp_ns: block.timestamp_ns,
        },
    };
    Ok((entries, Some(resume)))
}

/// Writes the index file anew past its first `trusted` entries; the index is an accelerator,
/// so failing here is a warning, never an error.
fn rewrite_index(shared: &Shared, trusted: usize) -> Option<File> {
    let path = shared.dir.join(INDEX_FILE);
    let result = (|| -> std::io::Result<File> {
        let file = crate::files::open(
            crate::files::options(0o640)
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
            &path,
        )?;
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
        let mut header = segment::encode_header(0, &shared.chain_id);
        header[..8].copy_from_slice(INDEX_MAGIC);
        file.write_all_at(&header, 0)?;
        file.set_len((HEADER_LEN + trusted * INDEX_ENTRY_LEN) as u64)?;
        let index = shared.index.read();
        let segments = shared.segments.read();
        let mut buf = Vec::new();
        for (location, hash) in index.locations.iter().zip(&index.hashes).skip(trusted) {
            let first = segments[location.segment as usize].first_height;
            encode_index_entry(hash, first, location, &mut buf);
        }
        file.write_all_at(&buf, (HEADER_LEN + trusted * INDEX_ENTRY_LEN) as u64)?;
        Ok(file)
    })();
    match result {
        Ok(file) => Some(file),
        Err(err) => {
            tracing::warn!(%err, path = %path.display(), "cannot write the index; start-up will scan the segments");
            None
        }
    }
}

fn encode_index_entry(hash: &Hash, segment_first: u64, location: &Location, out: &mut Vec<u8>) {
    out.extend_from_slice(hash);
    out.extend_from_slice(&segment_first.to_le_bytes());
    out.extend_from_slice(&location.offset.to_le_bytes());
    out.extend_from_slice(&location.len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

fn read_record(file: &File, location: &Location, height: u64) -> Result<Block> {
    let mut buf = vec![0u8; location.len as usize];
    file.read_exact_at(&mut buf, location.offset)
        .map_err(|e| ChainError::Corrupted {
            height,
            reason: format!("cannot read its record: {e}"),
        })?;
    match segment::parse_complete(&buf) {
        Parsed::Record { block, .. } if block.height == height => Ok(block),
        Parsed::Record { block, .. } => Err(ChainError::Corrupted {
            height,
            reason: format!("record holds height {}", block.height),
        }),
        Parsed::Damaged(reason) => Err(ChainError::Corrupted {
            height,
            reason: reason.to_string(),
        }),
        Parsed::Torn | Parsed::Free => Err(ChainError::Corrupted {
            height,
            reason: "its record is incomplete".into(),
        }),
    }
}

impl ChainReader {
    /// Height and hash of the newest durable block.
    pub fn head(&self) -> (u64, Hash) {
        let index = self.shared.index.read();
        (index.locations.len() as u64 - 1, index.head_hash)
    }

    /// The random id fixed at genesis.
    pub fn chain_id(&self) -> ChainId {
        self.shared.chain_id
    }

    /// The chain directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The block at `height`, read from its segment and hash-checked; `None` past the head.
    pub fn block_at(&self, height: u64) -> Result<Option<Block>> {
        let (segment, location) = {
            let index = self.shared.index.read();
            let Some(location) = index.locations.get(height as usize).copied() else {
                return Ok(None);
            };
            (
                self.shared.segments.read()[location.segment as usize].clone(),
                location,
            )
        };
        read_record(&segment.file, &location, height).map(Some)
    }

    /// The length of the durable record at `height` (its block's encoding and the record's
    /// head and trailer); `None` past the head.
    pub fn record_len(&self, height: u64) -> Option<u32> {
        self.shared
            .index
            .read()
            .locations
            .get(usize::try_from(height).ok()?)
            .map(|location| location.len)
    }

    /// The hash of the durable block at `height`; `None` past the head.
    pub fn hash_at(&self, height: u64) -> Option<Hash> {
        self.shared
            .index
            .read()
            .hashes
            .get(height as usize)
            .copied()
    }

    /// The hashes of up to `limit` durable blocks from height `start` on (fewer at the head).
    pub fn hashes(&self, start: u64, limit: usize) -> Vec<Hash> {
        let index = self.shared.index.read();
        let start = (start as usize).min(index.hashes.len());
        let end = start.saturating_add(limit).min(index.hashes.len());
        index.hashes[start..end].to_vec()
    }

    /// The height of the block with `hash`, if the chain holds it.
    pub fn height_of(&self, hash: &Hash) -> Option<u64> {
        let index = self.shared.index.read();
        index
            .collisions
            .get(hash)
            .or_else(|| index.hashes_by_prefix.get(&hash_prefix(hash)))
            .copied()
    }

    /// The block with `hash`, hash-checked; `None` when the chain holds no such block.
    pub fn block_by_hash(&self, hash: &Hash) -> Result<Option<Block>> {
        let Some(height) = self.height_of(hash) else {
            return Ok(None);
        };
        match self.block_at(height)? {
            Some(block) if &block.hash == hash => Ok(Some(block)),
            _ => Ok(None),
        }
    }
}

impl ChainWriter {
    /// Appends one block per footprint, in order, and returns them once they are durable, each
    /// encoded once (the record written is made from that encoding).
    /// On error nothing of the batch is visible and the chain is as before.
    ///
    /// The segment size is checked per record: when the next record would take the active
    /// segment past `segment_bytes`, the batch continues in a new segment (a segment passes
    /// the size only when it holds one record larger than it). Each segment's part is written
    /// and synced in order, a new segment's header before its records, so a crash leaves a
    /// prefix of the batch (never acknowledged) followed at most by a torn record or an
    /// interrupted creation, which recovery accepts.
    pub fn append(
        &mut self,
        items: &[(PluginFootprint, Caller)],
    ) -> Result<Vec<Arc<EncodedBlock>>> {
        self.append_owned(items.to_vec())
    }

    /// [`ChainWriter::append`] of footprints the caller gives up: their strings move into the
    /// blocks (the group-commit writer's path).
    pub fn append_owned(
        &mut self,
        items: Vec<(PluginFootprint, Caller)>,
    ) -> Result<Vec<Arc<EncodedBlock>>> {
        if let Some(reason) = &self.latched {
            return Err(ChainError::Latched(reason.clone()));
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (head_height, mut prev_hash, mut timestamp) = {
            let index = self.shared.index.read();
            (
                index.locations.len() as u64 - 1,
                index.head_hash,
                index.head_timestamp_ns,
            )
        };
        let estimate: usize = items
            .iter()
            .map(|(f, c)| {
                f.data_json().len()
                    + f.plugin_id.len()
                    + f.operation.len()
                    + c.bus_name.len()
                    + c.unit.len()
                    + 200
            })
            .sum();
        let mut buf = Vec::with_capacity(estimate);
        let mut blocks = Vec::with_capacity(items.len());
        let mut lengths = Vec::with_capacity(items.len());
        // Index of the first block of each segment's part: the active segment's (possibly
        // empty), then one per new segment.
        let mut parts = vec![0usize];
        let mut segment_len = self.active_len;
        for (i, (mut footprint, caller)) in items.into_iter().enumerate() {
            // Time never runs backwards along the chain, even when the clock does.
            timestamp = timestamp.max(now_ns());
            let (plugin, operation) = (
                std::mem::take(&mut footprint.plugin_id),
                std::mem::take(&mut footprint.operation),
            );
            let block = EncodedBlock::seal(Block {
                height: head_height + 1 + i as u64,
                timestamp_ns: timestamp,
                prev_hash,
                caller,
                plugin,
                operation,
                data: footprint.into_data_json(),
                hash: ZERO_HASH,
            });
            let before = buf.len();
            segment::encode_record_of(&block, &mut buf);
            let len = (buf.len() - before) as u64;
            if segment_len > HEADER_LEN as u64 && segment_len + len > self.options.segment_bytes {
                parts.push(i);
                segment_len = HEADER_LEN as u64;
            }
            segment_len += len;
            lengths.push(len as u32);
            prev_hash = block.hash;
            blocks.push(Arc::new(block));
        }
        let new_segments = self.write_parts(&buf, &blocks, &lengths, &parts)?;
        self.publish(&blocks, &lengths, &parts, new_segments);
        Ok(blocks)
    }

    /// Writes and syncs each part of a batch in order, starting a segment for every part after
    /// the first. On failure undoes what was written (or latches) and nothing is visible.
    fn write_parts(
        &mut self,
        buf: &[u8],
        blocks: &[Arc<EncodedBlock>],
        lengths: &[u32],
        parts: &[usize],
    ) -> Result<Vec<NewSegment>> {
        let mut new_segments: Vec<NewSegment> = Vec::new();
        let mut active_synced = false;
        let mut at = 0usize;
        for (k, &first) in parts.iter().enumerate() {
            let end = parts.get(k + 1).copied().unwrap_or(blocks.len());
            let part_len: usize = lengths[first..end].iter().map(|&l| l as usize).sum();
            let bytes = &buf[at..at + part_len];
            at += part_len;
            // The batch goes on in a new segment: this one is sealed once its part is durable.
            let sealed = k + 1 < parts.len();
            let written = if k == 0 {
                let first_height = self.active_first_height();
                let mut target = Target {
                    file: &*self.active,
                    first_height,
                    len: self.active_len,
                    extended_to: &mut self.extended_to,
                    extend_supported: &mut self.extend_supported,
                };
                target.write_durably(bytes, sealed)
            } else {
                match self.start_segment(blocks[first].height) {
                    Ok(segment) => {
                        new_segments.push(segment);
                        let segment = new_segments.last_mut().expect("just pushed");
                        let mut target = Target {
                            file: &*segment.file,
                            first_height: segment.first_height,
                            len: HEADER_LEN as u64,
                            extended_to: &mut segment.extended_to,
                            extend_supported: &mut self.extend_supported,
                        };
                        target.write_durably(bytes, sealed)
                    }
                    Err(err) => Err(err),
                }
            };
            match written {
                Ok(()) => active_synced |= k == 0 && part_len > 0,
                Err(ChainError::Latched(reason)) => {
                    tracing::error!(
                        message_id = crate::journal::STORAGE_LATCHED,
                        %reason,
                        "latching the store: no more writes until restart: {reason}"
                    );
                    self.latched = Some(reason.clone());
                    return Err(ChainError::Latched(reason));
                }
                Err(err) => {
                    self.undo(new_segments, active_synced);
                    return Err(err);
                }
            }
        }
        Ok(new_segments)
    }

    /// Why the store refuses writes, if it does.
    pub fn latched(&self) -> Option<&str> {
        self.latched.as_deref()
    }

    fn active_first_height(&self) -> u64 {
        self.shared
            .segments
            .read()
            .last()
            .map_or(0, |s| s.first_height)
    }

    /// Takes back a batch that failed before it was durable: removes the segments it started
    /// (newest first, each removal made durable so no later segment can outlive an earlier
    /// one) and cuts the active segment back to its last committed length (free space after it
    /// goes too; the next batch extends again). Latches when that fails, since the files then
    /// no longer say what the store holds.
    fn undo(&mut self, new_segments: Vec<NewSegment>, active_synced: bool) {
        self.extended_to = self.active_len;
        let dir = self.shared.dir.clone();
        let mut result = Ok(());
        for segment in new_segments.into_iter().rev() {
            drop(segment.file);
            result = result
                .and_then(|()| std::fs::remove_file(&segment.path))
                .and_then(|()| self.io.sync_dir(&dir));
        }
        result = result.and_then(|()| self.active.set_len(self.active_len));
        if active_synced {
            result = result.and_then(|()| self.active.sync_data());
        }
        if let Err(err) = result {
            let reason = format!("could not roll back a failed write: {err}");
            tracing::error!(
                message_id = crate::journal::STORAGE_LATCHED,
                %reason,
                "latching the store: no more writes until restart: {reason}"
            );
            self.latched = Some(reason);
        }
    }

    /// Makes a durable batch visible: its new segments, then its index entries.
    fn publish(
        &mut self,
        blocks: &[Arc<EncodedBlock>],
        lengths: &[u32],
        parts: &[usize],
        new_segments: Vec<NewSegment>,
    ) {
        let active_segment = self.shared.segments.read().len() as u32 - 1;
        let mut firsts = vec![self.shared.segments.read()[active_segment as usize].first_height];
        if let Some(newest) = new_segments.last() {
            self.extended_to = newest.extended_to;
        }
        for segment in new_segments {
            firsts.push(segment.first_height);
            self.shared.segments.write().push(Arc::new(Segment {
                first_height: segment.first_height,
                file: segment.reader,
            }));
            self.active = segment.file;
        }
        let index_start = (HEADER_LEN + blocks[0].height as usize * INDEX_ENTRY_LEN) as u64;
        let mut entries = Vec::with_capacity(blocks.len() * INDEX_ENTRY_LEN);
        {
            let mut index = self.shared.index.write();
            let mut part = 0;
            let mut offset = self.active_len;
            for (i, (block, &len)) in blocks.iter().zip(lengths).enumerate() {
                if parts.get(part + 1) == Some(&i) {
                    part += 1;
                    offset = HEADER_LEN as u64;
                }
                let location = Location {
                    segment: active_segment + part as u32,
                    len,
                    offset,
                };
                offset += len as u64;
                index.push(location, block);
                encode_index_entry(&block.hash, firsts[part], &location, &mut entries);
            }
            self.active_len = offset;
        }
        if let Some(file) = &self.index_file {
            if let Err(err) = file.write_all_at(&entries, index_start) {
                tracing::warn!(%err, "cannot extend the index; it will be rebuilt at the next start");
                self.index_file = None;
            }
        }
    }

    /// Creates the segment whose first block is `first_height`, its header durable and its
    /// directory entry too, before any record is written to it.
    fn start_segment(&mut self, first_height: u64) -> Result<NewSegment> {
        let dir = self.shared.dir.clone();
        let path = dir.join(segment::file_name(first_height));
        let header = segment::encode_header(first_height, &self.shared.chain_id);
        let io = self.io.clone();
        let create = || -> std::io::Result<(Box<dyn SegmentFile>, File)> {
            let file = io.create(&path)?;
            file.write_all_at(&header, 0)?;
            file.sync_data()?;
            io.sync_dir(&dir)?;
            let reader = crate::files::open_read(&path)?;
            Ok((file, reader))
        };
        match create() {
            Ok((file, reader)) => Ok(NewSegment {
                first_height,
                path,
                file,
                reader,
                extended_to: HEADER_LEN as u64,
            }),
            Err(err) => {
                // Nothing of it is in use; a crash before this removal leaves an interrupted
                // creation, which recovery removes.
                let _ = std::fs::remove_file(&path);
                Err(ChainError::io(
                    format!("starting segment {}", path.display()),
                    err,
                ))
            }
        }
    }

    /// A reader of this chain.
    pub fn reader(&self) -> ChainReader {
        ChainReader {
            shared: self.shared.clone(),
        }
    }
}

/// A segment started by a batch: not visible until the whole batch is durable.
struct NewSegment {
    first_height: u64,
    path: PathBuf,
    file: Box<dyn SegmentFile>,
    reader: File,
    extended_to: u64,
}

/// The segment a part of a batch goes to, with how far it is extended.
struct Target<'a> {
    file: &'a dyn SegmentFile,
    /// First height of the segment, naming it in errors.
    first_height: u64,
    /// Committed length: the part is written from here.
    len: u64,
    extended_to: &'a mut u64,
    extend_supported: &'a mut bool,
}

impl Target<'_> {
    /// Extends the segment if need be, writes `bytes` after the data and syncs; then, when
    /// `sealed` (the batch goes on in a new segment), cuts the segment to its data. A failed
    /// write is undone (the caller rolls the file back); a failed sync is `Latched`.
    fn write_durably(&mut self, bytes: &[u8], sealed: bool) -> Result<()> {
        let end = self.len + bytes.len() as u64;
        if !bytes.is_empty() {
            self.extend(end)?;
            self.file
                .write_all_at(bytes, self.len)
                .map_err(|err| ChainError::io(format!("appending to {}", self.name()), err))?;
            self.file.sync_data().map_err(|err| {
                ChainError::Latched(format!("fdatasync of {} failed: {err}", self.name()))
            })?;
        }
        if sealed && *self.extended_to > end {
            // A sealed segment's size is its data, made durable, so that copies, backups and
            // readers that predate free space see exactly its records. Best effort: the records
            // are durable already, and free space left by a failure here (or a crash before it)
            // still reads as the end of the data.
            match self.file.set_len(end).and_then(|()| self.file.sync_data()) {
                Ok(()) => *self.extended_to = end,
                Err(err) => {
                    tracing::warn!(%err, segment = %self.name(), "cannot cut a sealed segment to its data; its free space stays")
                }
            }
        }
        Ok(())
    }

    fn name(&self) -> String {
        segment::file_name(self.first_height)
    }

    /// Makes sure the segment is extended up to `end`, a chunk ahead; on a full disk, nothing
    /// has been written yet and the batch is refused (a partial extension is zeros, free space).
    fn extend(&mut self, end: u64) -> Result<()> {
        if end <= *self.extended_to || !*self.extend_supported {
            return Ok(());
        }
        let start = self.len;
        let ahead = end + EXTEND_CHUNK - end % EXTEND_CHUNK;
        let extended = match self.file.extend(start, ahead - start) {
            Ok(()) => Ok(ahead),
            // The chunk does not fit; the batch alone may.
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => {
                self.file.extend(start, end - start).map(|()| end)
            }
            Err(err) => Err(err),
        };
        match extended {
            Ok(extended) => {
                *self.extended_to = extended;
                Ok(())
            }
            Err(err) if err.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!("the filesystem cannot allocate space ahead; segments grow with each write and a full disk shows as a failed write instead");
                *self.extend_supported = false;
                Ok(())
            }
            Err(err) => Err(ChainError::io(
                format!(
                    "allocating {} bytes for the batch in {}",
                    end - start,
                    self.name()
                ),
                err,
            )),
        }
    }
}
