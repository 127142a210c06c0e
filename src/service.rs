//! The library facade of the seed: `StreamingBlockchain` (the chain alone) and
//! `OptimizedBlockchain` (the chain with its cache and NUMA placement).
//!
//! Both are cheap to clone and safe to share between tasks. Every write goes through the one
//! group-commit writer thread; `add_footprint` resolves only when its block is durable.

use crate::chain::block::{parse_hash, Block, Caller};
use crate::chain::error::{ChainError, Result};
use crate::chain::store::{self, ChainReader, Recovery, StoreOptions};
use crate::chain::verify::{self, VerifyReport};
use crate::chain::writer::{CommitHook, GroupCommit, PauseGuard};
use crate::footprint::{PluginFootprint, DEFAULT_MAX_DATA_BYTES};
use crate::numa::{NumaInfo, NumaOptions, NumaTopology};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// How to open a chain.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    pub chain_dir: PathBuf,
    pub store: StoreOptions,
    /// Largest footprint data JSON accepted, in bytes.
    pub max_data_bytes: usize,
    /// NUMA detection and writer binding; `None` leaves threads and memory where they are.
    pub numa: Option<NumaOptions>,
}

impl ChainOptions {
    pub fn new(chain_dir: impl Into<PathBuf>) -> Self {
        let chain_dir: PathBuf = chain_dir.into();
        let chain_dir_for_numa = chain_dir.clone();
        ChainOptions {
            chain_dir,
            store: StoreOptions::default(),
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
            numa: Some(NumaOptions {
                chain_dir: chain_dir_for_numa.clone(),
                ..NumaOptions::default()
            }),
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
}

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
        let (writer, reader, recovery) =
            tokio::task::spawn_blocking(move || store::open(&dir, store_options))
                .await
                .map_err(|e| ChainError::io("opening the chain", std::io::Error::other(e)))??;
        let commit = GroupCommit::start(writer, on_writer_start, on_commit)
            .map_err(|e| ChainError::io("starting the writer thread", e))?;
        Ok(StreamingBlockchain {
            inner: Arc::new(Inner {
                reader,
                commit,
                max_data_bytes: options.max_data_bytes,
                recovery,
            }),
        })
    }

    /// Adds a footprint as this process and returns the new block's hash (hex) once durable.
    pub async fn add_footprint(&self, footprint: PluginFootprint) -> Result<String> {
        self.append(footprint, Caller::this_process())
            .await
            .map(|block| block.hash_hex())
    }

    /// Adds a footprint on behalf of `caller`; returns the block once it is durable.
    pub async fn append(&self, footprint: PluginFootprint, caller: Caller) -> Result<Block> {
        footprint
            .validate(self.inner.max_data_bytes)
            .map_err(|e| ChainError::InvalidFootprint(e.to_string()))?;
        self.inner.commit.commit(footprint, caller).await
    }

    /// Reads footprints from `rx` (the StateManager's channel) and commits them until the
    /// channel closes; returns once everything received is durable. A footprint that fails
    /// validation is logged and skipped.
    pub async fn start_footprint_receiver(&self, mut rx: UnboundedReceiver<PluginFootprint>) {
        let caller = Caller::this_process();
        while let Some(footprint) = rx.recv().await {
            if let Err(err) = footprint.validate(self.inner.max_data_bytes) {
                tracing::warn!(
                    plugin = %footprint.plugin_id,
                    operation = %footprint.operation,
                    %err,
                    "footprint refused"
                );
                continue;
            }
            if self
                .inner
                .commit
                .enqueue(footprint, caller.clone())
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
        self.inner.reader.block_by_hash(&hash)
    }

    /// The block at `height`, read from the chain and hash-checked.
    pub async fn get_block_by_height(&self, height: u64) -> Result<Option<Block>> {
        self.inner.reader.block_at(height)
    }

    /// Height and hash (hex) of the newest durable block.
    pub fn head(&self) -> (u64, String) {
        let (height, hash) = self.inner.reader.head();
        (height, hex::encode(hash))
    }

    /// Re-hashes and re-links every block up to the current head.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let dir = self.inner.reader.dir().to_path_buf();
        let (head, _) = self.inner.reader.head();
        tokio::task::spawn_blocking(move || verify::verify_dir(&dir, Some(head), &mut |_| {}))
            .await
            .map_err(|e| ChainError::io("verifying", std::io::Error::other(e)))?
    }

    /// What opening the chain found (created, torn bytes cut, index rebuilt).
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// Pauses the writer at a block boundary (for snapshots); see [`GroupCommit::pause`].
    pub async fn pause_writer(&self) -> Result<((u64, crate::chain::block::Hash), PauseGuard)> {
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

    /// Resolves with the reason once the store has latched after a failed flush (every later
    /// write fails until a restart); never resolves otherwise.
    pub async fn storage_latched(&self) -> String {
        self.inner.commit.latched().await
    }
}

async fn detect_numa(options: NumaOptions) -> Option<Arc<NumaTopology>> {
    let detected = tokio::task::spawn_blocking(move || NumaTopology::detect(&options)).await;
    match detected {
        Ok(Ok(topology)) => {
            let info = topology.info();
            tracing::info!(
                nodes = info.node_count(),
                numa_enabled = info.numa_enabled(),
                reason = %info.reason(),
                optimal_node = info.optimal_node(),
                optimal_node_reason = %info.optimal_node_reason(),
                placement = %info.placement(),
                memory_policy = %info.memory_policy(),
                "NUMA topology"
            );
            Some(Arc::new(topology))
        }
        Ok(Err(err)) => {
            tracing::warn!(%err, "no NUMA topology could be read; running without NUMA placement");
            None
        }
        Err(err) => {
            tracing::warn!(%err, "NUMA detection failed; running without NUMA placement");
            None
        }
    }
}

/// The seed's `OptimizedBlockchain`: the chain plus its cache and NUMA placement.
#[derive(Clone)]
pub struct OptimizedBlockchain {
    chain: StreamingBlockchain,
    cache_dir: PathBuf,
    numa: Option<Arc<NumaTopology>>,
}

impl OptimizedBlockchain {
    /// Opens (or creates) the chain in `chain_dir` with its cache in `cache_dir`.
    pub async fn new(chain_dir: impl AsRef<Path>, cache_dir: impl AsRef<Path>) -> Result<Self> {
        let mut options = ChainOptions::new(chain_dir.as_ref());
        options.max_data_bytes = DEFAULT_MAX_DATA_BYTES;
        Self::with_options(options, cache_dir.as_ref().to_path_buf()).await
    }

    /// Opens the chain with `options`: detects the NUMA topology (when `options.numa` is set)
    /// and binds the writer thread to the optimal node before it writes anything.
    pub async fn with_options(options: ChainOptions, cache_dir: PathBuf) -> Result<Self> {
        let numa = match options.numa.clone() {
            Some(numa_options) => detect_numa(numa_options).await,
            None => None,
        };
        let on_writer_start = {
            let numa = numa.clone();
            move || {
                if let Some(numa) = numa {
                    let outcome = numa.bind_writer_thread();
                    tracing::info!(
                        cpus = ?outcome.cpus_requested,
                        applied = outcome.cpu_applied,
                        reason = %outcome.cpu_reason,
                        memory_policy = %outcome.memory_policy,
                        memory_applied = outcome.memory_applied,
                        memory_reason = %outcome.memory_reason,
                        "chain writer thread binding"
                    );
                }
            }
        };
        let chain = StreamingBlockchain::open_with(options, on_writer_start, None).await?;
        Ok(OptimizedBlockchain {
            chain,
            cache_dir,
            numa,
        })
    }

    /// The NUMA topology, the choices made from it and whether binding took effect; `None`
    /// when NUMA is switched off or no topology could be read at all.
    pub async fn numa_info(&self) -> Option<NumaInfo> {
        self.numa.as_ref().map(|numa| numa.info())
    }

    /// See [`StreamingBlockchain::add_footprint`].
    pub async fn add_footprint(&self, footprint: PluginFootprint) -> Result<String> {
        self.chain.add_footprint(footprint).await
    }

    /// See [`StreamingBlockchain::append`].
    pub async fn append(&self, footprint: PluginFootprint, caller: Caller) -> Result<Block> {
        self.chain.append(footprint, caller).await
    }

    /// The block with this hash.
    pub async fn get_block(&self, hash: &str) -> Result<Option<Block>> {
        self.chain.get_block(hash).await
    }

    /// The block at `height`.
    pub async fn get_block_by_height(&self, height: u64) -> Result<Option<Block>> {
        self.chain.get_block_by_height(height).await
    }

    /// See [`StreamingBlockchain::start_footprint_receiver`].
    pub async fn start_footprint_receiver(&self, rx: UnboundedReceiver<PluginFootprint>) {
        self.chain.start_footprint_receiver(rx).await
    }

    pub fn head(&self) -> (u64, String) {
        self.chain.head()
    }

    pub async fn verify(&self) -> Result<VerifyReport> {
        self.chain.verify().await
    }

    pub async fn shutdown(&self) {
        self.chain.shutdown().await
    }

    /// The chain alone.
    pub fn chain(&self) -> &StreamingBlockchain {
        &self.chain
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }
}
