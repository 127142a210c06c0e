//! Dual write: committed blocks reach the cache off the commit path.
//!
//! The chain writer calls [`CacheFeed::offer`] (through its commit hook) with every committed
//! batch. `offer` never blocks and never fails: when more than `queue_blocks` blocks are
//! waiting it drops the batch and counts it (`skipped_writes`). The cache thread drains the
//! queue and writes each block to the disk tier.
//!
//! The thread keeps a cursor `next`: every height below it has been handled. A block above the
//! cursor means blocks were skipped (or the cache was deleted, or is new): the thread first
//! fills the gap from the chain. When the queue is empty and the chain is ahead, it catches up
//! from the chain too, so the cache ends up holding every block whatever was skipped.
//!
//! A failed write is counted (`write_failures`) and logged once per burst (one warning when
//! writes start failing, one line when they work again). The first height that could not be
//! stored is remembered and retried every [`RETRY_EVERY`] while the queue is idle.
//!
//! `state` in the cache directory records `complete_through` (every block up to it is on disk)
//! and the chain id; it lets a restart skip what the cache already has. It is rewritten after
//! each batch, unsynced: after a crash it may be stale, and a record it vouches for may be gone —
//! a miss, refilled from the chain on the next read.

use super::{BlockCache, CacheError};
use crate::chain::block::{Block, EncodedBlock, Hash};
use crate::chain::store::ChainReader;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a failed write is retried while the queue is idle.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);
/// Bound of the queue in bytes of block encodings, besides `queue_blocks`: with the largest
/// footprints (64 KiB) the block bound alone would let gigabytes wait.
pub const QUEUE_BYTES: u64 = 64 * 1024 * 1024;
/// How long the queue stays empty before the pack being appended to is closed.
const CLOSE_AFTER: Duration = Duration::from_millis(500);
/// Blocks filled in from the chain between two looks at the queue.
const CATCH_UP_CHUNK: u64 = 1024;
const STATE_FILE: &str = "state";
/// The state file is rewritten at most this often (and at stop).
const STATE_EVERY: Duration = Duration::from_secs(1);

/// Where the cache thread reads blocks it did not get through the queue.
pub trait BlockSource: Send + 'static {
    /// Height and hash of the newest durable block.
    fn head(&self) -> (u64, Hash);
    /// The durable block at `height`, hash-checked; `None` past the head or when unreadable.
    fn block_at(&self, height: u64) -> Option<Block>;
    /// Identifies the chain, so a cache directory of another chain is not trusted.
    fn chain_id(&self) -> [u8; 16];
}

impl BlockSource for ChainReader {
    fn head(&self) -> (u64, Hash) {
        ChainReader::head(self)
    }
    fn block_at(&self, height: u64) -> Option<Block> {
        match ChainReader::block_at(self, height) {
            Ok(block) => block,
            Err(err) => {
                tracing::warn!(height, %err, "the cache cannot read this block from the chain");
                None
            }
        }
    }
    fn chain_id(&self) -> [u8; 16] {
        ChainReader::chain_id(self)
    }
}

enum Message {
    Committed(Vec<Arc<EncodedBlock>>),
    /// A block read from the chain on a cache miss (shared with the hot tier).
    Fill(Arc<Block>),
    /// Someone waits for the cache to catch up: do not idle.
    Wake,
    Stop,
}

/// Whether the cache's entries were counted when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// [`BlockCache::open`]: counted.
    Yes,
    /// [`BlockCache::open_uncounted`]: the cache thread counts them first.
    NotYet,
}

/// The cache thread's progress, watched by [`CacheFeed::caught_up`].
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every height below this was handled (stored, or failed and remembered).
    next: u64,
    /// The lowest height that could not be stored, and why.
    first_missing: Option<(u64, String)>,
    running: bool,
}

/// The sending side (held by the chain writer's hook) and the cache thread.
pub struct CacheFeed {
    shared: Arc<Shared>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    receiver: parking_lot::Mutex<Option<Receiver<Message>>>,
    /// Run first on the cache thread (NUMA placement of the hot tier's memory).
    on_thread_start: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

struct Shared {
    cache: BlockCache,
    tx: Sender<Message>,
    queue_blocks: u64,
    progress: watch::Sender<Progress>,
}

impl CacheFeed {
    /// A feed into `cache`; [`CacheFeed::offer`] may be called at once, the thread starts
    /// with [`CacheFeed::start`].
    pub fn new(cache: BlockCache, queue_blocks: usize) -> CacheFeed {
        let (tx, rx) = crossbeam_channel::unbounded();
        CacheFeed {
            shared: Arc::new(Shared {
                cache,
                tx,
                queue_blocks: queue_blocks as u64,
                progress: watch::channel(Progress::default()).0,
            }),
            thread: parking_lot::Mutex::new(None),
            receiver: parking_lot::Mutex::new(Some(rx)),
            on_thread_start: parking_lot::Mutex::new(None),
        }
    }

    /// Code to run first on the cache thread when [`CacheFeed::start`] starts it.
    pub fn on_thread_start(&self, f: impl FnOnce() + Send + 'static) {
        *self.on_thread_start.lock() = Some(Box::new(f));
    }

    /// The function for the chain writer's commit hook.
    pub fn hook(&self) -> impl Fn(Vec<Arc<EncodedBlock>>) + Send + 'static {
        let shared = self.shared.clone();
        move |blocks| shared.offer(blocks)
    }

    /// Hands committed blocks to the cache thread; never blocks (see the module text).
    pub fn offer(&self, blocks: Vec<Block>) {
        let encoded = blocks.into_iter().map(|b| Arc::new(b.into())).collect();
        self.shared.offer(encoded)
    }

    /// Hands a block read from the chain (a cache miss) to the thread to store; best effort
    /// (dropped, uncounted, when the queue is full).
    pub fn fill(&self, block: Arc<Block>) {
        let bytes = block.encoded_len() as u64;
        if self.shared.reserve(1, bytes) && self.shared.tx.send(Message::Fill(block)).is_err() {
            self.shared.release(1, bytes);
        }
    }

    /// Starts the cache thread on `source`: counts what the cache holds (when it was opened
    /// with [`BlockCache::open_uncounted`]), loads the newest `preload_blocks` into RAM, then
    /// stores every block from where the cache left off.
    pub fn start(
        &self,
        source: impl BlockSource,
        preload_blocks: u64,
        counted: Counted,
    ) -> std::io::Result<()> {
        let Some(rx) = self.receiver.lock().take() else {
            return Ok(()); // already started
        };
        let shared = self.shared.clone();
        shared.progress.send_modify(|p| p.running = true);
        let on_start = self.on_thread_start.lock().take();
        let handle = std::thread::Builder::new()
            .name("block-cache".into())
            .spawn(move || {
                if let Some(on_start) = on_start {
                    on_start();
                }
                run_when_idle("cache");
                if counted == Counted::NotYet {
                    shared.cache.inner.disk.scan();
                }
                let mut worker = Worker::new(shared.clone(), source);
                worker.preload(preload_blocks);
                worker.run(&rx);
                shared.progress.send_modify(|p| p.running = false);
            })?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    /// Waits until the cache holds every block up to `height` (the snapshot engine calls this
    /// with the height it paused the writer at, so that the cache snapshot matches the chain
    /// snapshot). Fills in whatever the queue skipped from the chain first.
    ///
    /// `Err(Incomplete)` when the cache handled every block up to `height` but could not store
    /// one of them (full or read-only disk): the cache is then behind until a retry succeeds.
    /// `Err(Stopped)` when the thread is not running.
    pub async fn caught_up(&self, height: u64) -> Result<(), CacheError> {
        let mut progress = self.shared.progress.subscribe();
        let _ = self.shared.tx.send(Message::Wake);
        let seen = progress
            .wait_for(|p| !p.running || p.next > height)
            .await
            .map_err(|_| CacheError::Stopped)?
            .clone();
        if !seen.running {
            return Err(CacheError::Stopped);
        }
        match seen.first_missing {
            Some((first_missing, reason)) if first_missing <= height => {
                Err(CacheError::Incomplete {
                    height,
                    first_missing,
                    reason,
                })
            }
            _ => Ok(()),
        }
    }

    /// Stores what is queued, writes the state file and stops the thread.
    pub fn stop(&self) {
        let _ = self.shared.tx.send(Message::Stop);
        if let Some(handle) = self.thread.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn offer(&self, blocks: Vec<Arc<EncodedBlock>>) {
        let n = blocks.len() as u64;
        let bytes = queue_bytes(&blocks);
        if !self.reserve(n, bytes) {
            let counters = &self.cache.inner.counters;
            counters.skipped_writes.fetch_add(n, Relaxed);
            return;
        }
        if self.tx.send(Message::Committed(blocks)).is_err() {
            self.release(n, bytes);
            let counters = &self.cache.inner.counters;
            counters.skipped_writes.fetch_add(n, Relaxed);
        }
    }

    /// Counts `blocks` (of `bytes`) as queued if they fit under both bounds. Only the writer
    /// thread and readers filling misses reserve, so the check-then-add race can overshoot by
    /// one batch at most, which the bounds allow for.
    fn reserve(&self, blocks: u64, bytes: u64) -> bool {
        let counters = &self.cache.inner.counters;
        if counters.queued_blocks.load(Relaxed) + blocks > self.queue_blocks
            || counters.queued_bytes.load(Relaxed) + bytes > QUEUE_BYTES
        {
            return false;
        }
        counters.queued_blocks.fetch_add(blocks, Relaxed);
        counters.queued_bytes.fetch_add(bytes, Relaxed);
        true
    }

    fn release(&self, blocks: u64, bytes: u64) {
        let counters = &self.cache.inner.counters;
        super::sub_saturating(&counters.queued_blocks, blocks);
        super::sub_saturating(&counters.queued_bytes, bytes);
    }
}

/// What queued blocks weigh against [`QUEUE_BYTES`].
fn queue_bytes(blocks: &[Arc<EncodedBlock>]) -> u64 {
    blocks.iter().map(|b| b.encoding.len() as u64).sum()
}

impl Drop for CacheFeed {
    /// Lets the thread end when the last handle goes without `stop` (it drains what is queued
    /// and exits; nobody waits for it).
    fn drop(&mut self) {
        let _ = self.shared.tx.send(Message::Stop);
    }
}

struct Worker<S> {
    shared: Arc<Shared>,
    source: S,
    next: u64,
    first_missing: Option<(u64, String)>,
    last_retry: Instant,
    /// Failures since the last warning (one warning per burst).
    failing: Option<u64>,
    state_saved: Option<(u64, Instant)>,
}

impl<S: BlockSource> Worker<S> {
    fn new(shared: Arc<Shared>, source: S) -> Self {
        // Trust the state file only if the chain still has that block and the cache holds
        // it (a chain restored from an older backup, or a cache of another chain, fail this);
        // otherwise check everything from genesis, which costs a read per block.
        let next = read_state(&shared.cache, &source.chain_id())
            .filter(|&through| {
                source
                    .block_at(through)
                    .is_some_and(|block| shared.cache.on_disk(&block.hash))
            })
            .map_or(0, |through| through + 1);
        let mut worker = Worker {
            shared,
            source,
            next,
            first_missing: None,
            last_retry: Instant::now(),
            failing: None,
            state_saved: None,
        };
        worker.publish(false);
        worker
    }

    fn cache(&self) -> &BlockCache {
        &self.shared.cache
    }

    /// Loads the newest `count` blocks into RAM, walking back from the head through each
    /// block's `prev_hash`: from the disk tier when it has them, else from the shared tier,
    /// else from the chain.
    fn preload(&mut self, count: u64) {
        let (head, mut hash) = self.source.head();
        let mut loaded = 0;
        let mut height = head;
        while loaded < count {
            let block = match self.cache().load_local_or_shared(&hash) {
                Some(block) => block,
                None => match self.source.block_at(height) {
                    Some(block) if block.hash == hash => {
                        let block = Arc::new(block);
                        self.cache().insert_hot(block.clone());
                        block
                    }
                    _ => break,
                },
            };
            loaded += 1;
            if height == 0 {
                break;
            }
            height -= 1;
            hash = block.prev_hash;
        }
        if loaded > 0 {
            tracing::info!(
                blocks = loaded,
                head,
                "pre-loaded the newest blocks into the cache"
            );
        }
    }

    fn run(&mut self, rx: &Receiver<Message>) {
        loop {
            let behind = self.next <= self.source.head().0;
            let message = if behind {
                match rx.try_recv() {
                    Ok(message) => Some(message),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                // The pack is closed once the queue has stayed empty for a while, not at every
                // pause between two commits: under load that cost an open and a close per batch.
                let next = rx
                    .try_recv()
                    .or_else(|_| match rx.recv_timeout(CLOSE_AFTER) {
                        Err(RecvTimeoutError::Timeout) => {
                            self.cache().idle();
                            rx.recv_timeout(RETRY_EVERY)
                        }
                        received => received,
                    });
                match next {
                    Ok(message) => Some(message),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            match message {
                Some(Message::Committed(blocks)) => {
                    // Stored with one write; heights the queue skipped before a block are
                    // then filled in from the chain.
                    self.dequeued(&blocks);
                    let puts = self.shared.cache.put_encoded_many(&blocks);
                    for (block, put) in blocks.iter().zip(puts) {
                        self.catch_up_to(block.height);
                        self.stored(block.height, put);
                        self.next = self.next.max(block.height + 1);
                    }
                }
                Some(Message::Fill(block)) => {
                    self.shared.release(1, block.encoded_len() as u64);
                    self.store(&block);
                }
                Some(Message::Wake) => {}
                Some(Message::Stop) => {
                    self.drain_and_stop(rx);
                    return;
                }
                None if behind => {
                    let head = self.source.head().0;
                    self.catch_up_to((self.next + CATCH_UP_CHUNK).min(head + 1));
                }
                None => {}
            }
            if self.first_missing.is_some() && self.last_retry.elapsed() >= RETRY_EVERY {
                self.retry();
            }
            self.cache().flush_shared();
            self.publish(false);
        }
    }

    fn dequeued(&self, blocks: &[Arc<EncodedBlock>]) {
        self.shared
            .release(blocks.len() as u64, queue_bytes(blocks));
    }

    /// Stores blocks `next..until` read from the chain and advances the cursor to `until`.
    /// While writes fail, it does not try (the periodic retry probes from the first missing
    /// height): a read-only cache must not cost a failed write per block of the chain.
    fn catch_up_to(&mut self, until: u64) {
        while self.next < until {
            if self.failing.is_some() {
                self.missing(self.next, "not tried while cache writes fail".into());
                self.next = until;
                return;
            }
            match self.source.block_at(self.next) {
                Some(block) => self.store(&block),
                None => self.missing(self.next, "unreadable in the chain".into()),
            }
            self.next += 1;
        }
    }

    fn store(&mut self, block: &Block) {
        let put = self.shared.cache.put(block);
        self.stored(block.height, put);
    }

    /// Stores a block just committed, from the encoding the writer made.
    fn store_encoded(&mut self, block: &EncodedBlock) {
        let put = self.shared.cache.put_encoded(block);
        self.stored(block.height, put);
    }

    fn stored(&mut self, height: u64, put: std::io::Result<super::Put>) {
        match put {
            Ok(_) => {
                if let Some(failures) = self.failing.take() {
                    tracing::info!(
                        failures,
                        cache_dir = %self.cache().dir().display(),
                        "cache writes work again"
                    );
                }
            }
            Err(err) => {
                match &mut self.failing {
                    Some(failures) => *failures += 1,
                    None => {
                        tracing::warn!(
                            %err,
                            height,
                            cache_dir = %self.cache().dir().display(),
                            "cannot write to the block cache; blocks are served from the chain and writes are retried (further failures are only counted until writes work again)"
                        );
                        self.failing = Some(1);
                    }
                }
                self.missing(height, err.to_string());
            }
        }
    }

    fn missing(&mut self, height: u64, reason: String) {
        if self.first_missing.as_ref().is_none_or(|(h, _)| height < *h) {
            self.first_missing = Some((height, reason));
            self.last_retry = Instant::now();
        }
    }

    /// Stores again from the first missing height up to the cursor; stops at the first
    /// failure, which stays the first missing height.
    fn retry(&mut self) {
        self.last_retry = Instant::now();
        let Some((from, _)) = self.first_missing.take() else {
            return;
        };
        for height in from..self.next {
            let Some(block) = self.source.block_at(height) else {
                self.missing(height, "unreadable in the chain".into());
                return;
            };
            if self.cache().on_disk(&block.hash) {
                continue;
            }
            self.store(&block);
            if self.first_missing.is_some() {
                return;
            }
        }
    }

    fn drain_and_stop(&mut self, rx: &Receiver<Message>) {
        while let Ok(message) = rx.try_recv() {
            match message {
                Message::Committed(blocks) => {
                    self.dequeued(&blocks);
                    for block in &blocks {
                        self.store_encoded(block);
                        if block.height == self.next {
                            self.next += 1;
                        }
                    }
                }
                Message::Fill(block) => {
                    self.shared.release(1, block.encoded_len() as u64);
                    self.store(&block);
                }
                Message::Wake | Message::Stop => {}
            }
        }
        self.cache().flush_shared();
        self.publish(true);
    }

    /// Tells waiters and stats how far the cache is, and saves the state file when it moved.
    fn publish(&mut self, force_save: bool) {
        let complete_until = match &self.first_missing {
            Some((h, _)) => *h,
            None => self.next,
        };
        self.cache()
            .inner
            .counters
            .complete_until
            .store(complete_until, Relaxed);
        let (next, first_missing) = (self.next, self.first_missing.clone());
        self.shared.progress.send_modify(|p| {
            p.next = next;
            p.first_missing = first_missing;
        });
        let due = match self.state_saved {
            Some((saved, at)) => {
                saved != complete_until && (force_save || at.elapsed() >= STATE_EVERY)
            }
            None => true,
        };
        if complete_until > 0 && due {
            write_state(self.cache(), &self.source.chain_id(), complete_until - 1);
            self.state_saved = Some((complete_until, Instant::now()));
        }
    }
}

/// `complete_through` from the state file, if it is there, readable and of this chain.
fn read_state(cache: &BlockCache, chain_id: &[u8; 16]) -> Option<u64> {
    let bytes = crate::files::read(&cache.dir().join(STATE_FILE)).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut id = None;
    let mut through = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("chain_id", value)) => id = Some(value.to_owned()),
            Some(("complete_through", value)) => through = value.parse().ok(),
            _ => {}
        }
    }
    (id? == hex::encode(chain_id)).then_some(through?)
}

fn write_state(cache: &BlockCache, chain_id: &[u8; 16], complete_through: u64) {
    let text = format!(
        "# opdbus-blockchaind cache progress; safe to delete\nchain_id={}\ncomplete_through={complete_through}\n",
        hex::encode(chain_id)
    );
    let path = cache.dir().join(STATE_FILE);
    let tmp = cache.dir().join(".state.tmp");
    // Unsynced on purpose (see the module text); failures show up as write failures already.
    // A leftover (or planted link) in place of the temporary file is removed, never followed.
    let _ = std::fs::remove_file(&tmp);
    let written = crate::files::create_new(&tmp, crate::files::FILE_MODE)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// Puts the calling thread (the `thread` named in a warning when it fails) under `SCHED_IDLE`:
/// it gets only the CPU that nothing else wants, so it never slows the writes it follows. The
/// cache thread then lags (its queue overflows into `skipped_writes`, and it fills in from the
/// chain once idle); the transparency log thread issues later, larger checkpoints.
pub(crate) fn run_when_idle(thread: &str) {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    use thread_priority::ThreadPriority;
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(err) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle)
    {
        tracing::warn!(
            %err,
            "cannot give the {thread} thread idle priority; it competes with writes"
        );
    }
}
