//! The library facade of the seed: `StreamingBlockchain` (the chain alone) and
//! `OptimizedBlockchain` (the chain with its cache and NUMA placement).
//!
//! Both are cheap to clone and safe to share between tasks. Every write goes through the one
//! group-commit writer thread; `add_footprint` resolves only when its block is durable.

use crate::cache::{BlockCache, CacheError, CacheFeed, CacheOptions, CacheStats, Counted};
use crate::chain::block::{parse_hash, Block, Caller, EncodedBlock, Hash};
use crate::chain::error::ChainError;
use crate::chain::store::{self, ChainReader, Recovery, StoreOptions};
use crate::chain::verify::{self, VerifyReport};
use crate::chain::writer::{Ack, CommitHook, GroupCommit, PauseGuard, Room, WriterDown};
use crate::footprint::{FootprintError, PluginFootprint, DEFAULT_MAX_DATA_BYTES};
use crate::numa::{NumaInfo, NumaOptions, NumaTopology};
use crate::predict::Predictor;
use crate::snapshot::layout::SnapshotLayout;
use crate::snapshot::{PausedAt, Pending, Snapshotter, WriterBarrier};
use crate::tlog::Checkpoint;
use crate::transparency::{Transparency, TransparencyError, TransparencyOptions};
use crate::vector::{Filter, HashingEmbedder, Match, SimilarQuery, VectorIndex};

/// Most footprints in one batch ([`StreamingBlockchain::append_batch`], `AddFootprints`).
pub const MAX_BATCH_FOOTPRINTS: usize = 1000;
/// Most bytes of data JSON in one batch, all footprints together (raised to the largest
/// footprint allowed when that is larger): a batch is held in memory whole until it commits.
pub const MAX_BATCH_DATA_BYTES: usize = 16 << 20;

/// The reader name of in-process reads through the plain `get_block*` methods.
const LIBRARY_READER: &str = "library";
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// Why a call into the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The footprint was refused before it reached the chain; nothing was written.
    #[error(transparent)]
    InvalidFootprint(#[from] FootprintError),
    /// A batch of footprints was refused as a whole (the reason names the footprint, counted
    /// from 0, or the limit); nothing was written.
    #[error("{0}")]
    InvalidBatch(String),
    /// The chain refused or failed; its variants say which.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The block cache could not be opened.
    #[error("opening the cache: {0}")]
    CacheOpen(#[source] CacheError),
    /// A thread the service runs on could not be started.
    #[error("starting the {thread} thread: {source}")]
    Thread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Work handed to the blocking pool ended without an answer (it panicked, or the runtime
    /// is shutting down).
    #[error("{context}: {source}")]
    Task {
        context: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A unified snapshot could not be taken.
    #[error("snapshot failed: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A verify run ended without a report (the runtime is shutting down).
    #[error("verifying: the run was stopped before it ended")]
    VerifyStopped,
    /// The transparency log refused or failed (a size out of range, not started, halted).
    #[error(transparent)]
    Transparency(#[from] TransparencyError),
    /// The chain was opened without a transparency log.
    #[error("this chain has no transparency log (opened without one)")]
    TransparencyOff,
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Runs `work` on the blocking pool (chain and cache disk reads, never on the async workers).
async fn blocking<T: Send + 'static>(
    context: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| ServiceError::Task { context, source })
}

/// Which block a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKey {
    Hash(Hash),
    Height(u64),
}

/// How to open a chain.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    pub chain_dir: PathBuf,
    pub store: StoreOptions,
    /// Largest footprint data JSON accepted, in bytes.
    pub max_data_bytes: usize,
    /// NUMA detection and writer binding; `None` leaves threads and memory where they are.
    pub numa: Option<NumaOptions>,
    /// Pre-load the blocks a reader is likely to read next into the cache's hot tier
    /// (see [`crate::predict`]).
    pub predict: bool,
    /// The Merkle tree, its tiles and signed checkpoints (see [`crate::transparency`]);
    /// `None`: none (the library's default; the daemon turns it on).
    pub transparency: Option<TransparencyOptions>,
}

impl ChainOptions {
    pub fn new(chain_dir: impl Into<PathBuf>) -> Self {
        let chain_dir: PathBuf = chain_dir.into();
        ChainOptions {
            numa: Some(NumaOptions {
                chain_dir: chain_dir.clone(),
                ..NumaOptions::default()
            }),
            chain_dir,
            store: StoreOptions::default(),
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
            predict: true,
            transparency: None,
        }
    }
}

/// The chain alone: durable, hash-linked, append-only.
#[derive(Clone)]
pub struct StreamingBlockchain {
    inner: Arc<Inner>,
}

struct Inner {
    reader: ChainReader,
    commit: GroupCommit,
    max_data_bytes: usize,
    recovery: Recovery,
    /// The verify run in progress, if any: a call arriving meanwhile waits for its outcome
    /// instead of reading the chain once more.
    verify_run: parking_lot::Mutex<Option<VerifyRun>>,
    /// Verify runs started so far.
    verify_runs: std::sync::atomic::AtomicU64,
}

/// Where the outcome of a verify run will appear.
type VerifyRun = tokio::sync::watch::Receiver<Option<Arc<Result<VerifyReport, ChainError>>>>;

impl StreamingBlockchain {
    /// Opens (or creates) the chain in `chain_dir` with default options.
    pub async fn new(chain_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open(ChainOptions::new(chain_dir.as_ref())).await
    }

    /// Opens (or creates) a chain: recovers its tail and starts the writer thread.
    pub async fn open(options: ChainOptions) -> Result<Self> {
        Self::open_with(options, || {}, None).await
    }

    /// As [`StreamingBlockchain::open`], with code to run first on the writer thread and a
    /// hook that sees every committed batch.
    pub(crate) async fn open_with(
        options: ChainOptions,
        on_writer_start: impl FnOnce() + Send + 'static,
        on_commit: Option<CommitHook>,
    ) -> Result<Self> {
        let dir = options.chain_dir.clone();
        let store_options = options.store.clone();
        let (writer, reader, recovery) = blocking("opening the chain", move || {
            store::open(&dir, store_options)
        })
        .await??;
        let commit = GroupCommit::start(writer, on_writer_start, on_commit).map_err(|source| {
            ServiceError::Thread {
                thread: "writer",
                source,
            }
        })?;
        Ok(StreamingBlockchain {
            inner: Arc::new(Inner {
                reader,
                commit,
                max_data_bytes: options.max_data_bytes,
                recovery,
                verify_run: parking_lot::Mutex::new(None),
                verify_runs: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// Adds a footprint as this process and returns the new block's hash (hex) once durable.
    pub async fn add_footprint(&self, footprint: PluginFootprint) -> Result<String> {
        self.append(footprint, Caller::this_process())
            .await
            .map(|block| block.hash_hex())
    }

    /// Adds a footprint on behalf of `caller`; returns the block once it is durable (the
    /// writer's own, shared: nothing is copied or encoded again).
    pub async fn append(
        &self,
        footprint: PluginFootprint,
        caller: Caller,
    ) -> Result<Arc<EncodedBlock>> {
        footprint.validate(self.inner.max_data_bytes)?;
        Ok(self.inner.commit.commit(footprint, caller).await?)
    }

    /// Adds footprints as one batch on behalf of `caller`: each its own block, at consecutive
    /// heights, committed by one `fdatasync`, all or nothing. Any invalid footprint refuses the
    /// whole batch ([`ServiceError::InvalidBatch`] names it) and nothing is written; a failed
    /// write rolls the whole batch back. Returns the blocks in order once durable.
    pub async fn append_batch(
        &self,
        footprints: Vec<PluginFootprint>,
        caller: Caller,
    ) -> Result<Vec<Arc<EncodedBlock>>> {
        self.validate_batch(&footprints)?;
        Ok(self.inner.commit.commit_many(footprints, caller).await?)
    }

    /// Checks a batch against the batch limits and every footprint's rules, cheapest first.
    pub fn validate_batch(&self, footprints: &[PluginFootprint]) -> Result<()> {
        let count = footprints.len();
        if count == 0 {
            return Err(ServiceError::InvalidBatch(format!(
                "the batch holds no footprint; it must hold 1 to {MAX_BATCH_FOOTPRINTS}"
            )));
        }
        if count > MAX_BATCH_FOOTPRINTS {
            return Err(ServiceError::InvalidBatch(format!(
                "the batch holds {count} footprints; the limit is {MAX_BATCH_FOOTPRINTS} (send \
                 several batches)"
            )));
        }
        let bytes: usize = footprints.iter().map(|f| f.data_json().len()).sum();
        let limit = MAX_BATCH_DATA_BYTES.max(self.inner.max_data_bytes);
        if bytes > limit {
            return Err(ServiceError::InvalidBatch(format!(
                "the batch holds {bytes} bytes of data JSON; the limit is {limit} (send several \
                 batches)"
            )));
        }
        for (index, footprint) in footprints.iter().enumerate() {
            footprint
                .validate(self.inner.max_data_bytes)
                .map_err(|err| {
                    ServiceError::InvalidBatch(format!(
                        "footprint {index} of {count} (counting from 0): {err}"
                    ))
                })?;
        }
        Ok(())
    }

    /// Checks one footprint (what [`StreamingBlockchain::append`] checks first).
    pub fn validate(&self, footprint: &PluginFootprint) -> Result<()> {
        Ok(footprint.validate(self.inner.max_data_bytes)?)
    }

    /// A place in the writer's queue for `count` footprints at once, `None` while it is full;
    /// with [`StreamingBlockchain::submit`], the D-Bus adapter's path that never waits.
    pub(crate) fn try_room(&self, count: usize) -> Option<Room> {
        self.inner.commit.try_room(count)
    }

    /// A place in the writer's queue for `count` footprints; waits while it is full.
    pub(crate) async fn room(&self, count: usize) -> Result<Room> {
        Ok(self.inner.commit.room(count).await?)
    }

    /// Queues checked footprints as one write in `room`; `ack` is answered on the writer thread.
    pub(crate) fn submit(
        &self,
        footprints: Vec<PluginFootprint>,
        caller: Caller,
        ack: Ack,
        room: Room,
    ) {
        self.inner.commit.submit(footprints, caller, ack, room);
    }

    /// Reads footprints from `rx` (the StateManager's channel) and commits them until the
    /// channel closes; returns once everything received is durable. A footprint that fails
    /// validation is logged and skipped.
    pub async fn start_footprint_receiver(&self, rx: UnboundedReceiver<PluginFootprint>) {
        self.receive(rx, |footprint| {
            let checked = self.validate(&footprint).map_err(|err| (err, 0));
            (vec![footprint], checked)
        })
        .await
    }

    /// As [`StreamingBlockchain::start_footprint_receiver`] for batches: each batch received is
    /// committed as one write, all or nothing; a batch with an invalid footprint is logged
    /// (naming it) and skipped whole.
    pub async fn start_batch_receiver(&self, rx: UnboundedReceiver<Vec<PluginFootprint>>) {
        self.receive(rx, |footprints| {
            let checked = self.validate_batch(&footprints).map_err(|err| {
                // The footprint a refusal names, for the log fields.
                let index = footprints
                    .iter()
                    .position(|f| f.validate(self.inner.max_data_bytes).is_err())
                    .unwrap_or(0);
                (err, index)
            });
            (footprints, checked)
        })
        .await
    }

    async fn receive<T>(
        &self,
        mut rx: UnboundedReceiver<T>,
        check: impl Fn(
            T,
        ) -> (
            Vec<PluginFootprint>,
            std::result::Result<(), (ServiceError, usize)>,
        ),
    ) {
        let caller = Caller::this_process();
        while let Some(item) = rx.recv().await {
            let (footprints, checked) = check(item);
            if let Err((err, index)) = checked {
                if let Some(left_out) = crate::journal::REFUSALS.admit() {
                    let refused = footprints.get(index);
                    tracing::warn!(
                        message_id = crate::journal::FOOTPRINT_REFUSED,
                        PLUGIN = refused.map(|f| f.plugin_id.as_str()),
                        OPERATION = refused.map(|f| f.operation.as_str()),
                        LEFT_OUT = (left_out > 0).then_some(left_out),
                        "footprint refused: {err}"
                    );
                }
                continue;
            }
            if self
                .inner
                .commit
                .enqueue(footprints, caller.clone())
                .await
                .is_err()
            {
                tracing::error!("the chain writer stopped; the footprint receiver ends");
                return;
            }
            // At the end of each burst, wait until it is durable: the producer is idle anyway,
            // and this bounds what a crash can lose to the burst in flight.
            if rx.is_empty() && self.inner.commit.flush().await.is_err() {
                tracing::error!("the chain writer stopped; the footprint receiver ends");
                return;
            }
        }
        let _ = self.inner.commit.flush().await;
    }

    /// The block with this hash (64 hex digits), read from the chain and hash-checked.
    pub async fn get_block(&self, hash: &str) -> Result<Option<Block>> {
        let Some(hash) = parse_hash(hash) else {
            return Ok(None);
        };
        let reader = self.inner.reader.clone();
        Ok(blocking("reading a block", move || reader.block_by_hash(&hash)).await??)
    }

    /// The block at `height`, read from the chain and hash-checked.
    pub async fn get_block_by_height(&self, height: u64) -> Result<Option<Block>> {
        let reader = self.inner.reader.clone();
        Ok(blocking("reading a block", move || reader.block_at(height)).await??)
    }

    /// Height and hash (hex) of the newest durable block.
    pub fn head(&self) -> (u64, String) {
        let (height, hash) = self.inner.reader.head();
        (height, hex::encode(hash))
    }

    /// Re-hashes and re-links every block up to the current head. Calls made while a run is
    /// going share it (and its report, up to the head when it began), so any number of callers
    /// cost one pass over the chain at a time; a call after a run has ended starts a new one.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let mut outcome = {
            let mut run = self.inner.verify_run.lock();
            match run.as_ref() {
                Some(outcome) => outcome.clone(),
                None => {
                    let outcome = self.start_verify_run();
                    *run = Some(outcome.clone());
                    outcome
                }
            }
        };
        // `None` only if the run's task was dropped (the runtime shutting down).
        let ended = match outcome.wait_for(Option::is_some).await {
            Ok(ended) => ended.clone(),
            Err(_) => None,
        };
        match ended.as_deref() {
            Some(Ok(report)) => Ok(report.clone()),
            Some(Err(err)) => Err(err.clone().into()),
            None => Err(ServiceError::VerifyStopped),
        }
    }

    /// Starts a verify run up to the current head on the blocking pool.
    fn start_verify_run(&self) -> VerifyRun {
        let (sender, outcome) = tokio::sync::watch::channel(None);
        let inner = Arc::clone(&self.inner);
        inner
            .verify_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let dir = inner.reader.dir().to_path_buf();
            let (head, _) = inner.reader.head();
            let report = tokio::task::spawn_blocking(move || {
                verify::verify_dir(&dir, Some(head), &mut |_| {})
            })
            .await
            .unwrap_or_else(|e| Err(ChainError::io("verifying", std::io::Error::other(e))));
            // Callers from now on start a new run, which sees the blocks added meanwhile.
            *inner.verify_run.lock() = None;
            let _ = sender.send(Some(Arc::new(report)));
        });
        outcome
    }

    /// Verify runs started so far (concurrent calls share one).
    pub fn verify_runs(&self) -> u64 {
        self.inner
            .verify_runs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What opening the chain found (created, torn bytes cut, index rebuilt).
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// Pauses the writer at a block boundary (for snapshots); see [`GroupCommit::pause`].
    pub async fn pause_writer(&self) -> Result<((u64, Hash), PauseGuard), ChainError> {
        self.inner.commit.pause().await
    }

    /// Footprints per `fdatasync` so far (group commit at work), and blocks committed.
    pub fn commit_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = self.inner.commit.counters();
        (
            counters.batches.load(Relaxed),
            counters.blocks.load(Relaxed),
        )
    }

    /// Commits everything queued, stops the writer and waits for it.
    pub async fn shutdown(&self) {
        self.inner.commit.shutdown().await;
    }

    pub fn chain_dir(&self) -> &Path {
        self.inner.reader.dir()
    }

    pub(crate) fn reader(&self) -> &ChainReader {
        &self.inner.reader
    }

    /// `Ok` while the writer thread runs and the store takes writes; otherwise why not.
    pub fn writer_health(&self) -> Result<(), WriterDown> {
        self.inner.commit.health()
    }

    /// Resolves with the reason once the store has latched after a failed flush (every later
    /// write fails until a restart); never resolves otherwise.
    pub async fn storage_latched(&self) -> String {
        self.inner.commit.latched().await
    }
}

/// The topology, or why there is none.
type NumaState = std::result::Result<Arc<NumaTopology>, Arc<str>>;

async fn detect_numa(options: NumaOptions) -> NumaState {
    let detected = tokio::task::spawn_blocking(move || NumaTopology::detect(&options)).await;
    match detected {
        // Detection logged the topology and its choice (one record, `NUMA: …`).
        Ok(Ok(topology)) => Ok(Arc::new(topology)),
        Ok(Err(err)) => {
            tracing::warn!(%err, "no NUMA topology could be read; running without NUMA placement");
            Err(format!("no topology could be read: {err}").into())
        }
        Err(err) => {
            tracing::warn!(%err, "NUMA detection failed; running without NUMA placement");
            Err(format!("detection failed: {err}").into())
        }
    }
}

/// The writer's own barrier, for unified snapshots.
impl WriterBarrier for StreamingBlockchain {
    fn head_height(&self) -> u64 {
        self.inner.reader.head().0
    }

    fn pause(&self) -> Pending<'_, Result<PausedAt, ChainError>> {
        Box::pin(self.pause_writer())
    }
}

/// The seed's `OptimizedBlockchain`: the chain plus its cache and NUMA placement.
#[derive(Clone)]
pub struct OptimizedBlockchain {
    chain: StreamingBlockchain,
    /// Unified snapshots of this chain and cache, one at a time.
    snapshots: Snapshotter,
    cache_dir: PathBuf,
    numa: NumaState,
    vectors: Arc<VectorIndex>,
    cache: BlockCache,
    feed: Arc<CacheFeed>,
    /// Learns read patterns (and is told of reads even when prediction is off).
    predictor: Arc<Predictor>,
    predict: bool,
    transparency: Option<Transparency>,
}

impl OptimizedBlockchain {
    /// Opens (or creates) the chain in `chain_dir` with its cache in `cache_dir`.
    pub async fn new(chain_dir: impl AsRef<Path>, cache_dir: impl AsRef<Path>) -> Result<Self> {
        let options = ChainOptions::new(chain_dir.as_ref());
        Self::with_options(options, cache_dir.as_ref().to_path_buf()).await
    }

    /// Opens the chain with `options` and the cache in `cache_dir` with default cache
    /// settings; see [`OptimizedBlockchain::with_cache`].
    pub async fn with_options(options: ChainOptions, cache_dir: PathBuf) -> Result<Self> {
        Self::with_cache(options, CacheOptions::new(cache_dir)).await
    }

    /// Opens the chain with `options` and the block cache with `cache_options`: detects the
    /// NUMA topology (when `options.numa` is set) and binds the writer thread to the optimal
    /// node before it writes anything; every committed block is handed to the cache thread
    /// (never waiting for it), which also pre-loads the newest blocks and fills in whatever
    /// the cache lacks from the chain.
    pub async fn with_cache(options: ChainOptions, cache_options: CacheOptions) -> Result<Self> {
        let opened = {
            let cache_options = cache_options.clone();
            blocking("opening the cache", move || {
                BlockCache::open_uncounted(&cache_options)
            })
            .await?
        };
        let cache = opened.map_err(ServiceError::CacheOpen)?;
        let feed = Arc::new(CacheFeed::new(cache.clone(), cache_options.queue_blocks));
        let predict = options.predict;
        let transparency_options = options.transparency.clone();
        let numa = match options.numa.clone() {
            Some(numa_options) => detect_numa(numa_options).await,
            None => Err("NUMA placement is switched off (OPDBUS_NUMA=off)".into()),
        };
        let on_writer_start = {
            let numa = numa.clone();
            move || {
                if let Ok(numa) = numa {
                    // Logged by the binding itself (`writer thread binding: …`).
                    numa.bind_writer_thread();
                }
            }
        };
        let chain =
            StreamingBlockchain::open_with(options, on_writer_start, Some(Box::new(feed.hook())))
                .await?;
        cache.set_links(Arc::new(chain.reader().clone()));
        if let Some(url) = cache_options.shared.clone() {
            let attached = cache.attach_shared(
                url,
                cache_options.shared_timeout,
                &chain.reader().chain_id(),
            );
            if let Err(err) = attached {
                chain.shutdown().await;
                return Err(ServiceError::CacheOpen(err));
            }
        }
        if let Ok(numa) = &numa {
            let numa = Arc::clone(numa);
            feed.on_thread_start(move || {
                numa.place_cache_thread();
            });
        }
        feed.start(
            chain.inner.reader.clone(),
            cache_options.preload_blocks,
            Counted::NotYet,
        )
        .map_err(|source| ServiceError::Thread {
            thread: "cache",
            source,
        })?;
        // Reading the vector file is blocking I/O (a quarter GB at a million blocks).
        let (dir, chain_id) = (chain.chain_dir().to_path_buf(), chain.reader().chain_id());
        let vectors = blocking("loading the block vectors", move || {
            Arc::new(VectorIndex::open(&dir, chain_id, Arc::new(HashingEmbedder)))
        })
        .await?;
        // Build missing vectors in the background; a query meanwhile waits for them.
        let (index, reader) = (Arc::clone(&vectors), chain.reader().clone());
        tokio::task::spawn_blocking(move || {
            if let Err(err) = index.catch_up(&reader) {
                tracing::warn!(%err, "cannot build the block vectors");
            }
        });
        let transparency = match transparency_options {
            Some(transparency_options) => {
                let reader = chain.reader().clone();
                let forbidden = [chain.chain_dir().to_path_buf(), cache_options.dir.clone()];
                let started = blocking("starting the transparency log", move || {
                    let forbidden: Vec<&Path> = forbidden.iter().map(PathBuf::as_path).collect();
                    Transparency::start(transparency_options, reader, &forbidden)
                })
                .await?;
                match started {
                    Ok(transparency) => Some(transparency),
                    Err(err) => {
                        chain.shutdown().await;
                        return Err(err.into());
                    }
                }
            }
            None => None,
        };
        let snapshots = Snapshotter::new(
            SnapshotLayout::new(chain.chain_dir().to_owned(), cache_options.dir.clone()),
            Arc::new(chain.clone()),
            feed.clone(),
        );
        Ok(OptimizedBlockchain {
            chain,
            snapshots,
            cache_dir: cache_options.dir,
            numa,
            vectors,
            cache,
            feed,
            predictor: Arc::new(Predictor::new()),
            predict,
            transparency,
        })
    }

    /// The NUMA topology, the choices made from it and whether binding took effect; `None`
    /// when NUMA is switched off or no topology could be read at all.
    pub async fn numa_info(&self) -> Option<NumaInfo> {
        self.numa.as_ref().ok().map(|numa| numa.info())
    }

    /// The NUMA topology, when there is one (replica threads place themselves with it).
    pub fn numa_topology(&self) -> Option<Arc<NumaTopology>> {
        self.numa.as_ref().ok().cloned()
    }

    /// Why [`OptimizedBlockchain::numa_info`] is `None`, if it is.
    pub fn numa_unavailable(&self) -> Option<&str> {
        self.numa.as_ref().err().map(|reason| &**reason)
    }

    /// See [`StreamingBlockchain::add_footprint`].
    pub async fn add_footprint(&self, footprint: PluginFootprint) -> Result<String> {
        self.chain.add_footprint(footprint).await
    }

    /// See [`StreamingBlockchain::append`].
    pub async fn append(
        &self,
        footprint: PluginFootprint,
        caller: Caller,
    ) -> Result<Arc<EncodedBlock>> {
        self.chain.append(footprint, caller).await
    }

    /// The block with this hash: from the cache (RAM, then disk), else from the chain, in
    /// which case the cache is filled.
    pub async fn get_block(&self, hash: &str) -> Result<Option<Block>> {
        self.get_block_as(LIBRARY_READER, hash).await
    }

    /// Cache, then chain (filling the cache); not seen by the predictor. A block in RAM is
    /// answered here; anything else is read on the blocking pool.
    async fn lookup(&self, hash: &Hash) -> Result<Option<Block>> {
        let hash = *hash;
        if let Some(block) = self.cache.get_hot(&hash) {
            return Ok(Some(block.as_ref().clone()));
        }
        let (cache, reader) = (self.cache.clone(), self.chain.reader().clone());
        let found = blocking("reading a block", move || match cache.get(&hash) {
            Some(block) => Ok((Some(block), false)),
            None => reader
                .block_by_hash(&hash)
                .map(|block| (block.map(Arc::new), true)),
        })
        .await??;
        Ok(match found {
            (Some(block), from_chain) => {
                let copy = block.as_ref().clone();
                if from_chain {
                    self.fill_cache(block);
                }
                Some(copy)
            }
            (None, _) => None,
        })
    }

    /// Puts a block read from the chain into the cache: RAM now, disk by the cache thread.
    fn fill_cache(&self, block: Arc<Block>) {
        self.cache.insert_hot(Arc::clone(&block));
        self.feed.fill(block);
    }

    /// The JSON ([`Block::to_json`]) of a block the cache's RAM tier holds, read on behalf of
    /// `reader` (seen by the predictor as [`OptimizedBlockchain::get_block_as`] is); `None`
    /// when RAM does not hold it, or no block has that height, and the caller then takes the
    /// async path ([`OptimizedBlockchain::get_block_as`], or `…_by_height_as`), which is
    /// counted as the lookup (a `None` here is not counted).
    ///
    /// Contract, for callers on an async worker or in a D-Bus dispatch loop:
    /// - synchronous and never blocking: no I/O, no thread hop, no await; it waits only on
    ///   in-memory locks held for map updates (the chain's height index, the hot tier's shard,
    ///   the predictor), never across I/O;
    /// - cheap: one hash-map lookup and two reference counts on a repeated read; the first
    ///   read of a block renders its JSON once and keeps it beside the block;
    /// - the same trust as every cache answer: the hot tier holds only blocks the writer
    ///   committed or that were hash-checked on the way in, and the JSON is rendered from that
    ///   block;
    /// - bounded: the answer is one block, and the blocks it predicts are pre-loaded on the
    ///   blocking pool (at most the predictor's lookahead per read, and only those not in RAM
    ///   yet), never here; outside a Tokio runtime nothing is pre-loaded.
    pub fn get_block_json_hot(&self, reader: &str, key: BlockKey) -> Option<Arc<str>> {
        let hash = match key {
            BlockKey::Hash(hash) => hash,
            BlockKey::Height(height) => self.chain.reader().hash_at(height)?,
        };
        let (height, json) = self.cache.get_hot_json(&hash)?;
        self.after_read(reader, height);
        Some(json)
    }

    /// The block at `height`.
    pub async fn get_block_by_height(&self, height: u64) -> Result<Option<Block>> {
        self.get_block_by_height_as(LIBRARY_READER, height).await
    }

    /// [`OptimizedBlockchain::get_block`] on behalf of `reader` (e.g. a bus connection's
    /// unique name): what it reads next is predicted from what it has read, and pre-loaded.
    pub async fn get_block_as(&self, reader: &str, hash: &str) -> Result<Option<Block>> {
        let Some(hash) = parse_hash(hash) else {
            return Ok(None);
        };
        let block = self.lookup(&hash).await?;
        if let Some(block) = &block {
            self.after_read(reader, block.height);
        }
        Ok(block)
    }

    /// [`OptimizedBlockchain::get_block_by_height`] on behalf of `reader`: the chain's
    /// index names the height's hash, the block comes as [`OptimizedBlockchain::get_block`]'s.
    pub async fn get_block_by_height_as(&self, reader: &str, height: u64) -> Result<Option<Block>> {
        let block = match self.chain.reader().hash_at(height) {
            Some(hash) => self.lookup(&hash).await?,
            None => None,
        };
        if let Some(block) = &block {
            self.after_read(reader, block.height);
        }
        Ok(block)
    }

    /// Learns from a read and pre-loads the predicted blocks in the background.
    fn after_read(&self, reader: &str, height: u64) {
        let mut predicted = self.predictor.record(reader, height);
        if !self.predict {
            return;
        }
        // Most predictions are in RAM already (a reader going over the same blocks again):
        // only the others are worth a trip to the blocking pool.
        let chain = self.chain.reader();
        let hot = |height: u64| chain.hash_at(height).is_some_and(|h| self.cache.is_hot(&h));
        predicted.retain(|&height| !hot(height));
        if predicted.is_empty() {
            return;
        }
        // A caller outside a runtime (the sync accessor from a plain thread) still learns.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (chain, cache) = (chain.clone(), self.cache.clone());
        runtime.spawn_blocking(move || {
            for height in predicted {
                if let Ok(Some(block)) = chain.block_at(height) {
                    cache.insert_hot(Arc::new(block));
                }
            }
        });
    }

    /// See [`StreamingBlockchain::start_footprint_receiver`].
    pub async fn start_footprint_receiver(&self, rx: UnboundedReceiver<PluginFootprint>) {
        self.chain.start_footprint_receiver(rx).await
    }

    /// See [`StreamingBlockchain::start_batch_receiver`].
    pub async fn start_batch_receiver(&self, rx: UnboundedReceiver<Vec<PluginFootprint>>) {
        self.chain.start_batch_receiver(rx).await
    }

    /// See [`StreamingBlockchain::append_batch`].
    pub async fn append_batch(
        &self,
        footprints: Vec<PluginFootprint>,
        caller: Caller,
    ) -> Result<Vec<Arc<EncodedBlock>>> {
        self.chain.append_batch(footprints, caller).await
    }

    pub fn head(&self) -> (u64, String) {
        self.chain.head()
    }

    pub async fn verify(&self) -> Result<VerifyReport> {
        self.chain.verify().await
    }

    /// Stops the writer (committing what is queued), then the cache thread (storing what it
    /// was handed).
    pub async fn shutdown(&self) {
        self.chain.shutdown().await;
        let feed = self.feed.clone();
        let transparency = self.transparency.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // After the writer: the last checkpoint covers every acknowledged footprint.
            if let Some(transparency) = transparency {
                transparency.stop();
            }
            feed.stop()
        })
        .await;
    }

    /// The transparency log, when the chain was opened with one.
    pub fn transparency(&self) -> Option<&Transparency> {
        self.transparency.as_ref()
    }

    fn require_transparency(&self) -> Result<&Transparency> {
        self.transparency
            .as_ref()
            .ok_or(ServiceError::TransparencyOff)
    }

    /// The newest signed checkpoint.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(self.require_transparency()?.checkpoint()?)
    }

    /// The checkpoints' verifier key in note vkey format.
    pub fn verifying_key(&self) -> Result<String> {
        Ok(self.require_transparency()?.verifying_key().to_owned())
    }

    /// The RFC 9162 inclusion proof of the block at `height` in the tree of `tree_size`
    /// leaves (at most the newest checkpoint's size).
    pub async fn inclusion_proof(&self, height: u64, tree_size: u64) -> Result<Vec<Hash>> {
        let transparency = self.require_transparency()?.clone();
        Ok(blocking("proving inclusion", move || {
            transparency.inclusion_proof(height, tree_size)
        })
        .await??)
    }

    /// The RFC 9162 consistency proof from the tree of `old_size` leaves to `new_size`.
    pub async fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
        let transparency = self.require_transparency()?.clone();
        Ok(blocking("proving consistency", move || {
            transparency.consistency_proof(old_size, new_size)
        })
        .await??)
    }

    /// The chain alone.
    pub fn chain(&self) -> &StreamingBlockchain {
        &self.chain
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The blocks passing `filter`, oldest first, within `limits` (see [`crate::query::page`]):
    /// a binary search on heights for `since_ns`, then a walk; read on the blocking pool.
    pub async fn query(
        &self,
        filter: crate::query::Filter,
        limits: crate::query::Limits,
    ) -> Result<crate::query::Page> {
        let reader = self.chain.reader().clone();
        blocking("searching", move || {
            crate::query::page(&reader, &filter, limits)
        })
        .await?
        .map_err(ServiceError::from)
    }

    /// The `k` blocks most similar to `query` that pass `filter`, best first (cosine of the
    /// block vectors; see docs/format.md). `None` when the query names a block the chain does
    /// not hold. Every durable block is searchable.
    pub async fn find_similar(
        &self,
        query: &SimilarQuery,
        k: usize,
        filter: &Filter,
    ) -> Result<Option<Vec<Match>>> {
        let (index, reader, filter, query) = (
            Arc::clone(&self.vectors),
            self.chain.reader().clone(),
            filter.clone(),
            query.clone(),
        );
        // Reading the block and embedding are work for the blocking pool, not the executor
        // that answers every other call.
        blocking("searching", move || {
            let vector = match &query {
                SimilarQuery::Block(hash) => match reader.block_by_hash(hash)? {
                    Some(block) => index.query_vector_of(&reader, &block)?,
                    None => return Ok(None),
                },
                SimilarQuery::Footprint {
                    plugin,
                    operation,
                    data,
                } => index.embed(plugin, operation, data),
            };
            index.search(&reader, &vector, k, &filter).map(Some)
        })
        .await?
        .map_err(ServiceError::from)
    }

    /// The block vectors (for checks and tools).
    pub fn vectors(&self) -> &VectorIndex {
        &self.vectors
    }

    /// See [`StreamingBlockchain::writer_health`].
    pub fn writer_health(&self) -> Result<(), WriterDown> {
        self.chain.writer_health()
    }

    /// The block with this hash (64 hex digits) if the cache holds it: from RAM, else from the
    /// disk tier (re-hashed, then kept in RAM). Counted as a hit or a miss.
    pub async fn get_cached_block(&self, hash: &str) -> Result<Option<Block>> {
        match parse_hash(hash) {
            Some(hash) => self.cached(&hash).await,
            None => Ok(None),
        }
    }

    async fn cached(&self, hash: &Hash) -> Result<Option<Block>> {
        let hash = *hash;
        if let Some(block) = self.cache.get_hot(&hash) {
            return Ok(Some(block.as_ref().clone()));
        }
        let cache = self.cache.clone();
        let block = blocking("reading the cache", move || cache.get(&hash)).await?;
        Ok(block.map(|b| b.as_ref().clone()))
    }

    /// The cache's counters and sizes.
    pub async fn cache_stats(&self) -> Result<CacheStats> {
        Ok(self.cache.stats())
    }

    /// Waits until the cache holds every block up to `height`, filling in from the chain
    /// whatever it skipped. The unified snapshot calls this with the height it paused the
    /// writer at, so that the cache snapshot describes the same height as the chain snapshot.
    /// `Err(CacheError::Incomplete)` names the first block the cache could not store (full or
    /// read-only cache filesystem); `Err(CacheError::Stopped)` after shutdown.
    pub async fn cache_caught_up(&self, height: u64) -> Result<(), CacheError> {
        self.feed.caught_up(height).await
    }

    /// Takes unified snapshots of this chain and cache (the timeline uses it too).
    pub fn snapshots(&self) -> &Snapshotter {
        &self.snapshots
    }

    /// The block cache itself.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// Snapshots chain and cache at one block height under one name; returns
    /// `[chain_snapshot, cache_snapshot]`. See [`crate::snapshot::unified`].
    pub async fn create_unified_snapshot(
        &self,
    ) -> std::result::Result<Vec<PathBuf>, crate::snapshot::SnapshotError> {
        let snapshot = self.snapshots.take().await?;
        Ok(vec![snapshot.chain, snapshot.cache])
    }
}
