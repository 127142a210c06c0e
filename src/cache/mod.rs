//! The block cache: the chain's secondary copy, for fast reads and for repair.
//!
//! Two tiers, and a third when configured, looked up in order:
//! - **hot**: decoded blocks in RAM (`quick_cache`, bounded in bytes by
//!   `OPDBUS_CACHE_HOT_BYTES`), shared by every reader thread;
//! - **disk**: one zstd frame per block, appended to pack files under the cache directory and
//!   found through an index in RAM, compressed with dictionaries trained from recent blocks
//!   (see `disk.rs` and `dictionary.rs` for the layout);
//! - **shared** (`OPDBUS_SHARED_CACHE`): the same frames in a Redis server or cluster that
//!   other daemons of the same chain read too (`shared.rs`).
//!
//! Promises:
//! - Never a wrong block: a disk or shared load is decompressed, decoded and re-hashed, and
//!   compared with the hash asked for; a record that does not check out is dropped and counted
//!   (`corrupt_dropped`, `shared_dropped`), and the lookup is a miss.
//! - Never in the way of the chain: blocks arrive from the chain writer through a bounded queue
//!   drained by the cache's own thread (`feed.rs`); a full queue skips (counted, and filled in
//!   later from the chain), a failing disk is a warning and a counter, never an error of
//!   `add_footprint`.
//! - Never the only copy: the directory may be deleted while the daemon is stopped (or while it
//!   runs: the next write starts a new pack) and is rebuilt from the chain.

mod dictionary;
mod disk;
pub(crate) mod feed;
pub mod repair;
pub mod shared;
#[cfg(test)]
mod tests;

pub use disk::{ChainHashes, ChainIndex, Links};
pub use feed::{BlockSource, CacheFeed, Counted};

use crate::chain::block::{Block, EncodedBlock, Hash};
use disk::{DiskTier, Loaded};
use parking_lot::Mutex;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, Weighter};
use shared::{SharedCacheUrl, SharedTier};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Subtracts `by` from `counter`, stopping at 0 (a counter of what comes and goes).
fn sub_saturating(counter: &AtomicU64, by: u64) {
    let _ = counter.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(by)));
}

/// Default RAM for the hot tier (`OPDBUS_CACHE_HOT_BYTES`).
pub const DEFAULT_HOT_BYTES: u64 = 64 * 1024 * 1024;
/// Default number of newest blocks loaded into RAM at start (`OPDBUS_CACHE_PRELOAD_BLOCKS`).
pub const DEFAULT_PRELOAD_BLOCKS: u64 = 1024;
/// Default bound of the queue from the chain writer, in blocks (`OPDBUS_CACHE_QUEUE_BLOCKS`).
pub const DEFAULT_QUEUE_BLOCKS: usize = 65_536;
/// zstd level of the disk tier: with a dictionary, higher levels gain little on small blocks.
pub const ZSTD_LEVEL: i32 = 3;
/// RAM a hot block costs beyond its canonical encoding: the `Block` struct, its `Arc`, the
/// key and the cache's slot, rounded up.
pub const HOT_OVERHEAD_BYTES: u64 = 192;
/// A new dictionary recompresses the disk tier only while it holds at most this many blocks.
const RECOMPRESS_UP_TO: u64 = 4096;

/// How to open a cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub dir: PathBuf,
    /// Bound of the hot tier, in bytes of [`hot_weight`].
    pub hot_bytes: u64,
    /// Newest blocks loaded into the hot tier at start.
    pub preload_blocks: u64,
    /// Blocks that may wait between the chain writer and the cache thread; past this, blocks
    /// are skipped (and filled in from the chain later).
    pub queue_blocks: usize,
    /// The shared tier's address (`None`: no shared tier) and each command's deadline.
    pub shared: Option<SharedCacheUrl>,
    pub shared_timeout: Duration,
}

impl CacheOptions {
    pub fn new(dir: impl Into<PathBuf>) -> CacheOptions {
        CacheOptions {
            dir: dir.into(),
            hot_bytes: DEFAULT_HOT_BYTES,
            preload_blocks: DEFAULT_PRELOAD_BLOCKS,
            queue_blocks: DEFAULT_QUEUE_BLOCKS,
            shared: None,
            shared_timeout: shared::DEFAULT_TIMEOUT,
        }
    }
}

/// Errors of the cache layer. Reads and writes never fail outward (a failing read is a miss,
/// a failing write a counter); these are for opening and for waiting on the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The cache processed every block up to `height` but could not store them all.
    #[error("the cache lacks block {first_missing} (wanted every block up to {height}): {reason}")]
    Incomplete {
        height: u64,
        first_missing: u64,
        reason: String,
    },
    /// The shared tier's address cannot be used.
    #[error(transparent)]
    Shared(#[from] shared::SharedCacheUrlError),
    /// The cache thread has stopped (shutdown) or was never started.
    #[error("the cache thread is not running")]
    Stopped,
}

/// A snapshot of the cache's counters. Counters start at zero when the daemon starts; sizes
/// describe what the directory holds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CacheStats {
    /// Blocks stored on disk.
    pub total_entries: u64,
    /// Blocks in the RAM tier.
    pub hot_entries: u64,
    /// RAM used by the hot tier and its bound, in bytes of [`hot_weight`].
    pub hot_bytes: u64,
    pub hot_capacity_bytes: u64,
    /// Bytes of the pack files plus the dictionaries (apparent size; filesystem allocation
    /// and btrfs's own compression not counted).
    pub disk_usage_bytes: u64,
    /// Canonical encoding bytes of the blocks on disk, and the bytes of their compressed
    /// frames.
    pub canonical_bytes: u64,
    pub compressed_bytes: u64,
    /// `canonical_bytes / compressed_bytes`; 0 when nothing is stored.
    pub compression_ratio: f64,
    /// Lookups answered from RAM, from disk, and not at all.
    pub hot_hits: u64,
    pub disk_hits: u64,
    pub hits: u64,
    pub misses: u64,
    /// `hits / (hits + misses)`, and `hot_hits / (hits + misses)`; 0 before any lookup.
    pub hit_rate: f64,
    pub hot_hit_rate: f64,
    /// Blocks pushed out of the RAM tier to make room.
    pub evictions: u64,
    /// Block writes to the disk tier that failed (full disk, permissions, I/O errors).
    pub write_failures: u64,
    /// Blocks the chain writer did not hand over because the queue was full (filled in from
    /// the chain later).
    pub skipped_writes: u64,
    /// Disk entries that did not check out (decompression, decoding or hash) and were deleted.
    pub corrupt_dropped: u64,
    /// Blocks waiting in the queue from the chain writer.
    pub queued_blocks: u64,
    /// Every block up to this height is in the disk tier (-1: not even genesis yet).
    pub complete_through: i64,
    /// Dictionaries on disk, their total size, and the id new blocks use (0: none yet).
    pub dictionaries: u64,
    pub dictionary_bytes: u64,
    pub dictionary_id: u32,
    /// Shared tier (all 0 without one): blocks found there and not (by readers and by the
    /// start-up preload; a reader's shared hit also counts in `hits`), commands that failed,
    /// bytes of values it took, values that did not check out (ignored, never served), and
    /// blocks not uploaded because it was failing.
    pub shared_hits: u64,
    pub shared_misses: u64,
    pub shared_errors: u64,
    pub shared_bytes_written: u64,
    pub shared_dropped: u64,
    pub shared_skipped: u64,
}

/// RAM a block is charged in the hot tier: its canonical size plus [`HOT_OVERHEAD_BYTES`]
/// (and, once its JSON has been rendered for a reader, [`hot_json_weight`] more).
pub fn hot_weight(block: &Block) -> u64 {
    block.encoded_len() as u64 + HOT_OVERHEAD_BYTES
}

/// RAM the rendered JSON of a hot block is charged: its bytes plus its `Arc`'s counts.
pub fn hot_json_weight(json: &str) -> u64 {
    json.len() as u64 + 16
}

/// One block of the hot tier. `json`, when present, was rendered from `block` itself
/// ([`Block::to_json`]), so it is exactly as trustworthy as the block: it is never taken from
/// anywhere else.
#[derive(Clone)]
struct HotBlock {
    block: Arc<Block>,
    json: Option<Arc<str>>,
}

impl HotBlock {
    fn new(block: Arc<Block>) -> Self {
        HotBlock { block, json: None }
    }
}

#[derive(Clone)]
struct BlockWeight;

impl Weighter<Hash, HotBlock> for BlockWeight {
    fn weight(&self, _hash: &Hash, hot: &HotBlock) -> u64 {
        hot_weight(&hot.block) + hot.json.as_deref().map_or(0, hot_json_weight)
    }
}

#[derive(Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<Hash, HotBlock> for CountEvictions {
    type RequestState = ();
    fn begin_request(&self) {}
    fn on_evict(&self, _state: &mut (), _hash: Hash, _block: HotBlock) {
        self.0.fetch_add(1, Relaxed);
    }
}

type HotTier = Cache<Hash, HotBlock, BlockWeight, quick_cache::DefaultHashBuilder, CountEvictions>;

#[derive(Default)]
struct Counters {
    hot_hits: AtomicU64,
    disk_hits: AtomicU64,
    /// Reader lookups answered by the shared tier (the tier counts its preloads too).
    shared_hits: AtomicU64,
    misses: AtomicU64,
    write_failures: AtomicU64,
    skipped_writes: AtomicU64,
    queued_blocks: AtomicU64,
    queued_bytes: AtomicU64,
    /// The dictionary new blocks use, mirrored here so stats never wait for a write.
    dictionary_id: std::sync::atomic::AtomicU32,
    /// `complete_through + 1`, so that 0 can mean "nothing yet".
    complete_until: AtomicU64,
}

/// The two tiers and their counters; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct BlockCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    hot: HotTier,
    evictions: CountEvictions,
    disk: DiskTier,
    /// Set once the chain id is known ([`BlockCache::attach_shared`]).
    shared: OnceLock<SharedTier>,
    /// The writing side; only the cache thread (and tests, repair) write, so it is uncontended.
    encoder: Mutex<dictionary::Encoder>,
    counters: Counters,
}

/// What [`BlockCache::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Written,
    /// The disk tier had this block already.
    Present,
}

impl BlockCache {
    /// Opens (or creates) the cache in `options.dir` and indexes what its disk tier holds.
    /// A directory that cannot be created or read is a warning, not an error: the cache then
    /// starts empty and its writes fail (counted) until the directory works.
    pub fn open(options: &CacheOptions) -> Result<BlockCache, CacheError> {
        let cache = Self::open_uncounted(options)?;
        cache.inner.disk.scan();
        Ok(cache)
    }

    /// As [`BlockCache::open`], but leaves indexing the disk tier (one sequential read of its
    /// packs) to the cache thread, so that a large cache does not delay start-up; until then
    /// the disk tier answers misses, and `total_entries` and the byte counts grow as it goes.
    pub fn open_uncounted(options: &CacheOptions) -> Result<BlockCache, CacheError> {
        let (disk, current) = DiskTier::open(&options.dir);
        let encoder =
            dictionary::Encoder::new(ZSTD_LEVEL, current).map_err(|source| CacheError::Io {
                context: "creating a zstd compression context".into(),
                source,
            })?;
        let evictions = CountEvictions::default();
        let estimated_items = (options.hot_bytes / 1024).clamp(16, 1 << 24) as usize;
        let hot = Cache::with(
            estimated_items,
            options.hot_bytes,
            BlockWeight,
            quick_cache::DefaultHashBuilder::default(),
            evictions.clone(),
        );
        Ok(BlockCache {
            inner: Arc::new(Inner {
                dir: options.dir.clone(),
                hot,
                evictions,
                disk,
                shared: OnceLock::new(),
                counters: Counters {
                    dictionary_id: encoder.current_id().into(),
                    ..Counters::default()
                },
                encoder: Mutex::new(encoder),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Adds the shared tier (of the chain `chain_id`); once only, before the cache thread
    /// starts. It connects on first use.
    pub fn attach_shared(
        &self,
        url: SharedCacheUrl,
        timeout: Duration,
        chain_id: &[u8; 16],
    ) -> Result<(), CacheError> {
        let tier = SharedTier::new(url, timeout, chain_id)?;
        let _ = self.inner.shared.set(tier);
        Ok(())
    }

    /// Gives the cache the chain's hashes by height: blocks are then stored without their
    /// `prev_hash` (the chain has it), a fifth less to store per block (`disk.rs`). Set before
    /// the first write; frames stored before stay readable.
    pub fn set_links(&self, links: Links) {
        self.inner.disk.set_links(links);
    }

    /// The shared tier, if there is one.
    pub fn shared(&self) -> Option<&SharedTier> {
        self.inner.shared.get()
    }

    /// The block with `hash` from RAM, else from disk, else from the shared tier (re-hashed,
    /// then kept in RAM); counted as a hot, disk or shared hit, or a miss.
    pub fn get(&self, hash: &Hash) -> Option<Arc<Block>> {
        let counters = &self.inner.counters;
        if let Some(block) = self.get_hot(hash) {
            return Some(block);
        }
        if let Some(block) = self.load_from_disk(hash) {
            counters.disk_hits.fetch_add(1, Relaxed);
            return Some(block);
        }
        match self.load_from_shared(hash) {
            Some(block) => {
                counters.shared_hits.fetch_add(1, Relaxed);
                Some(block)
            }
            None => {
                counters.misses.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// The block from the shared tier if the chain's index has its hash (so without links
    /// there is no shared read), verified, and kept in RAM (the cache thread stores it on disk
    /// when it catches up); not counted as a reader lookup.
    fn load_from_shared(&self, hash: &Hash) -> Option<Arc<Block>> {
        let shared = self.shared()?;
        // Only blocks of this chain are asked for: a block whose hash the chain does not have
        // is not read from a store anyone may write to, however well it hashes.
        let links = self.inner.disk.links()?;
        let height = links
            .height_of(hash)
            .filter(|&height| links.hash_at(height) == Some(*hash))?;
        let block = Arc::new(shared.get(hash, height, &self.inner.disk.dictionaries, &links)?);
        self.inner.hot.insert(*hash, HotBlock::new(block.clone()));
        Some(block)
    }

    /// The block from disk, else from the shared tier, kept in RAM; not counted as a reader
    /// lookup (the start-up preload).
    fn load_local_or_shared(&self, hash: &Hash) -> Option<Arc<Block>> {
        self.load_from_disk(hash)
            .or_else(|| self.load_from_shared(hash))
    }

    /// Hands what waits for the shared tier to its uploader thread (the cache thread calls it
    /// after each batch); never waits for Redis.
    pub fn flush_shared(&self) {
        if let Some(shared) = self.shared() {
            shared.flush();
        }
    }

    /// [`BlockCache::flush_shared`], but waits for room among the batches waiting for the
    /// uploader instead of dropping one (replicas: nobody waits on them).
    pub fn flush_shared_waiting(&self) {
        if let Some(shared) = self.shared() {
            shared.flush_waiting();
        }
    }

    /// [`BlockCache::flush_shared`], then waits (up to `timeout`) until the uploader has sent
    /// it (tests, the bench).
    pub fn flush_shared_and_wait(&self, timeout: Duration) {
        if let Some(shared) = self.shared() {
            shared.flush();
            shared.wait_uploaded(timeout);
        }
    }

    /// The block with `hash` if RAM holds it (counted as a hot hit); `None` is not counted, so
    /// that [`BlockCache::get`] can follow. Never touches the disk.
    pub fn get_hot(&self, hash: &Hash) -> Option<Arc<Block>> {
        let hot = self.inner.hot.get(hash)?;
        self.inner.counters.hot_hits.fetch_add(1, Relaxed);
        Some(hot.block)
    }

    /// The height and JSON ([`Block::to_json`]) of the block with `hash` if RAM holds it,
    /// counted as [`BlockCache::get_hot`] counts. Never touches the disk and never waits on I/O
    /// (only on the hot tier's shard lock, held for map operations). The JSON is rendered from
    /// the cached block on its first read and kept beside it (charged to the hot tier's
    /// bound), so later reads share it; a block evicted meanwhile is rendered again next time.
    pub fn get_hot_json(&self, hash: &Hash) -> Option<(u64, Arc<str>)> {
        let hot = self.inner.hot.get(hash)?;
        self.inner.counters.hot_hits.fetch_add(1, Relaxed);
        let height = hot.block.height;
        if let Some(json) = hot.json {
            return Some((height, json));
        }
        let json: Arc<str> = hot.block.to_json().into();
        let rendered = HotBlock {
            block: hot.block,
            json: Some(Arc::clone(&json)),
        };
        // Only if still there (soft: a re-weighing, not a second access); an entry evicted
        // in between stays out, and this reader still gets its answer.
        let _ = self.inner.hot.replace(*hash, rendered, true);
        Some((height, json))
    }

    /// The block from the disk tier, re-hashed, and kept in RAM; not counted as a lookup.
    fn load_from_disk(&self, hash: &Hash) -> Option<Arc<Block>> {
        match self.inner.disk.load(hash) {
            Loaded::Block(block) => {
                let block = Arc::new(block);
                self.inner.hot.insert(*hash, HotBlock::new(block.clone()));
                Some(block)
            }
            Loaded::Absent => None,
            Loaded::Dropped(reason) => {
                tracing::warn!(%reason, "dropped a cache file that does not check out");
                None
            }
        }
    }

    /// The verified disk copy of `hash`, not counted and not kept in RAM (repair).
    pub fn load_verified(&self, hash: &Hash) -> Option<Block> {
        match self.inner.disk.load(hash) {
            Loaded::Block(block) => Some(block),
            Loaded::Absent => None,
            Loaded::Dropped(reason) => {
                tracing::warn!(%reason, "dropped a cache file that does not check out");
                None
            }
        }
    }

    /// Keeps `block` in RAM (nothing is written); a block already there stays as it is.
    pub fn insert_hot(&self, block: Arc<Block>) {
        if self.inner.hot.peek(&block.hash).is_none() {
            self.inner.hot.insert(block.hash, HotBlock::new(block));
        }
    }

    /// Whether RAM holds `hash` (no counting, no promotion).
    pub fn is_hot(&self, hash: &Hash) -> bool {
        self.inner.hot.peek(hash).is_some()
    }

    /// Whether the disk tier has a record for `hash`.
    pub fn on_disk(&self, hash: &Hash) -> bool {
        self.inner.disk.contains(hash)
    }

    /// Closes the file the disk tier appends to until the next write, so that an idle cache
    /// holds no file open for writing (its filesystem can be remounted read-only). The cache
    /// thread calls it once its queue has stayed empty for half a second.
    pub fn idle(&self) {
        self.inner.disk.close_pack();
    }

    /// Writes `block` to the disk tier (unless there already) and then keeps it in RAM. Blocks the
    /// calling thread for a file write; the daemon calls it only from the cache thread.
    /// A failure is returned (and counted) for the caller to log.
    pub fn put(&self, block: &Block) -> std::io::Result<Put> {
        self.put_with(block, None, || Arc::new(block.clone()))
    }

    /// [`BlockCache::put`] of a block just committed: its encoding is not made again and RAM
    /// shares the block instead of copying it.
    pub fn put_encoded(&self, block: &EncodedBlock) -> std::io::Result<Put> {
        self.put_with(&block.block, Some(&block.encoding), || {
            Arc::clone(&block.block)
        })
    }

    /// [`BlockCache::put_encoded`] of a batch just committed, with one file write for all of
    /// them (the cache thread's work per block was a third `pwrite`); results in order.
    pub fn put_encoded_many(&self, blocks: &[Arc<EncodedBlock>]) -> Vec<std::io::Result<Put>> {
        let items: Vec<(&Block, &[u8])> = blocks
            .iter()
            .map(|block| (&*block.block, &block.encoding[..]))
            .collect();
        let results = self.write_many(&items);
        for (block, result) in blocks.iter().zip(&results) {
            self.after_write(&block.hash, result, || Arc::clone(&block.block));
        }
        results
    }

    fn put_with(
        &self,
        block: &Block,
        encoding: Option<&[u8]>,
        shared: impl FnOnce() -> Arc<Block>,
    ) -> std::io::Result<Put> {
        let result = self.write(block, encoding);
        self.after_write(&block.hash, &result, shared);
        result
    }

    /// Keeps a block just written in RAM, or counts a failed write.
    fn after_write(
        &self,
        hash: &Hash,
        result: &std::io::Result<Put>,
        shared: impl FnOnce() -> Arc<Block>,
    ) {
        match result {
            // A block just written is likely read soon (BlockAdded listeners); one that was
            // there already (a catch-up pass over stored blocks) is not, and stays on disk.
            // (A block filled in after a miss is in RAM already: no copy then.)
            Ok(Put::Written) if !self.is_hot(hash) => self.insert_hot(shared()),
            Ok(Put::Written | Put::Present) => {}
            Err(_) => {
                self.inner.counters.write_failures.fetch_add(1, Relaxed);
            }
        }
    }

    fn write(&self, block: &Block, encoding: Option<&[u8]>) -> std::io::Result<Put> {
        if self.inner.disk.contains(&block.hash) {
            return Ok(Put::Present);
        }
        let made;
        let encoding = match encoding {
            Some(encoding) => encoding,
            None => {
                made = block.encode();
                &made
            }
        };
        self.write_many(&[(block, encoding)])
            .pop()
            .unwrap_or(Ok(Put::Present))
    }

    /// Writes `blocks` to the disk tier (those not there already) with one file write, hands
    /// each new frame to the shared tier and to the encoder's samples, and recompresses a young
    /// cache when that trained a new dictionary; results in order.
    fn write_many(&self, blocks: &[(&Block, &[u8])]) -> Vec<std::io::Result<Put>> {
        let dictionaries = &self.inner.disk.dictionaries;
        let mut encoder = self.inner.encoder.lock();
        let stored = self.inner.disk.store_many(blocks, &mut encoder, false);
        let mut young_dictionary = None;
        let results = blocks
            .iter()
            .zip(stored)
            .map(|((block, _), stored)| {
                stored.map(|stored| match stored {
                    None => Put::Present,
                    Some(disk::Stored { frame, form }) => {
                        if let Some(shared) = self.shared() {
                            shared.queue(&block.hash, frame, dictionaries);
                        }
                        if let dictionary::Training::Trained { id, young: true } =
                            encoder.observe(&form, dictionaries)
                        {
                            young_dictionary = Some(id);
                        }
                        Put::Written
                    }
                })
            })
            .collect();
        self.inner
            .counters
            .dictionary_id
            .store(encoder.current_id(), Relaxed);
        drop(encoder);
        if let Some(id) = young_dictionary {
            if self.inner.disk.counters.entries.load(Relaxed) <= RECOMPRESS_UP_TO {
                self.recompress_entries(id);
            }
        }
        results
    }

    /// While the cache is young (a few thousand blocks), each new dictionary is better than
    /// the last: the blocks already written are compressed again with it, so a young cache
    /// reaches its ratio too. Best effort.
    fn recompress_entries(&self, id: u32) {
        let mut encoder = self.inner.encoder.lock();
        let (rewritten, entries) = self.inner.disk.rewrite_all(&mut encoder);
        if rewritten == entries {
            // Nothing on disk needs the earlier dictionaries any more.
            self.inner.disk.dictionaries.retire_all_but(id);
        }
        tracing::debug!(
            rewritten,
            entries,
            dictionary_id = format_args!("{id:08x}"),
            "recompressed the cache entries with a new dictionary"
        );
    }

    /// The counters and sizes now.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let d = &self.inner.disk.counters;
        let (dictionaries, dictionary_bytes) = self.inner.disk.dictionaries.count_and_bytes();
        let hot_hits = c.hot_hits.load(Relaxed);
        let disk_hits = c.disk_hits.load(Relaxed);
        let misses = c.misses.load(Relaxed);
        let hits = hot_hits + disk_hits + c.shared_hits.load(Relaxed);
        let shared = |counter: fn(&shared::SharedCounters) -> &AtomicU64| {
            self.shared()
                .map_or(0, |tier| counter(tier.counters()).load(Relaxed))
        };
        let lookups = hits + misses;
        let canonical_bytes = d.canonical_bytes.load(Relaxed);
        let compressed_bytes = d.stored_bytes.load(Relaxed);
        let rate = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        CacheStats {
            total_entries: d.entries.load(Relaxed),
            hot_entries: self.inner.hot.len() as u64,
            hot_bytes: self.inner.hot.weight(),
            hot_capacity_bytes: self.inner.hot.capacity(),
            disk_usage_bytes: d.pack_bytes.load(Relaxed) + dictionary_bytes,
            canonical_bytes,
            compressed_bytes,
            compression_ratio: rate(canonical_bytes, compressed_bytes),
            hot_hits,
            disk_hits,
            hits,
            misses,
            hit_rate: rate(hits, lookups),
            hot_hit_rate: rate(hot_hits, lookups),
            evictions: self.inner.evictions.0.load(Relaxed),
            write_failures: c.write_failures.load(Relaxed),
            skipped_writes: c.skipped_writes.load(Relaxed),
            corrupt_dropped: d.corrupt_dropped.load(Relaxed),
            queued_blocks: c.queued_blocks.load(Relaxed),
            complete_through: c.complete_until.load(Relaxed) as i64 - 1,
            dictionaries,
            dictionary_bytes,
            dictionary_id: c.dictionary_id.load(Relaxed),
            shared_hits: shared(|s| &s.hits),
            shared_misses: shared(|s| &s.misses),
            shared_errors: shared(|s| &s.errors),
            shared_bytes_written: shared(|s| &s.bytes_written),
            shared_dropped: shared(|s| &s.dropped),
            shared_skipped: shared(|s| &s.skipped),
        }
    }

    /// Blocks between two dictionary trainings once the cache is past its young phase
    /// (default [`dictionary::RETRAIN_EVERY`]).
    pub fn set_retrain_every(&self, blocks: u64) {
        self.inner.encoder.lock().set_retrain_every(blocks);
    }

    /// Zeroes the lookup counters (hits, misses), e.g. after a warm-up.
    pub fn reset_lookup_counters(&self) {
        let c = &self.inner.counters;
        c.hot_hits.store(0, Relaxed);
        c.disk_hits.store(0, Relaxed);
        c.shared_hits.store(0, Relaxed);
        c.misses.store(0, Relaxed);
    }
}
