//! The block vectors beside the chain (`<chain dir>/vectors`) and exact similarity search.
//!
//! Record `i` of the file is the vector of the block at height `i`, quantized to 8 bits, with
//! the block's timestamp, caller uid, keys of its plugin and operation and a prefix of its hash.
//! The file is never the only copy of anything: it is rebuilt from the chain when missing,
//! from another chain, or out of step with it, and caught up before every query, so a block is
//! searchable as soon as it is durable. Writes are buffered and never synced; a torn last record
//! is dropped at load.
//!
//! Search scans the quantized vectors of the blocks that pass the filter (exact, no
//! approximation: at 1 M blocks that is 256 MB of int8 dot products), keeps the best
//! candidates, and re-ranks them by the exact cosine of vectors recomputed from their blocks.

use super::embed::{cosine, quantize, Embedder, HashingEmbedder, DIM};
use crate::chain::block::{Block, Hash, UNKNOWN_UID};
use crate::chain::error::Result;
use crate::chain::segment::ChainId;
use crate::chain::store::ChainReader;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The vector file's name in the chain directory.
pub const FILE_NAME: &str = "vectors";
const MAGIC: &[u8; 8] = b"OPDBVEC\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 16;
/// Encoded records written at a time while catching up.
const WRITE_CHUNK: usize = 1 << 20;
/// Bytes per record: vector, timestamp, uid, plugin key, operation key, hash prefix.
pub const RECORD_LEN: usize = DIM + 8 + 4 + 8 + 8 + 8;

/// The 64-bit key a plugin or operation name is filtered by: SHA-256 bytes 0..8, LE.
pub fn name_key(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn hash_prefix(hash: &Hash) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    timestamp_ns: u64,
    uid: u32,
    plugin: u64,
    operation: u64,
    hash_prefix: u64,
}

impl Meta {
    fn of(block: &Block) -> Meta {
        Meta {
            timestamp_ns: block.timestamp_ns,
            uid: block.caller.uid.unwrap_or(UNKNOWN_UID),
            plugin: name_key(&block.plugin),
            operation: name_key(&block.operation),
            hash_prefix: hash_prefix(&block.hash),
        }
    }
}

/// Which blocks a search may return; `None` fields do not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub plugin: Option<String>,
    pub operation: Option<String>,
    pub uid: Option<u32>,
    /// Inclusive bounds on the block timestamp, nanoseconds since the Unix epoch.
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

struct KeyFilter {
    plugin: Option<u64>,
    operation: Option<u64>,
    uid: Option<u32>,
    since_ns: u64,
    until_ns: u64,
}

impl KeyFilter {
    fn new(filter: &Filter) -> Self {
        KeyFilter {
            plugin: filter.plugin.as_deref().map(name_key),
            operation: filter.operation.as_deref().map(name_key),
            uid: filter.uid,
            since_ns: filter.since_ns.unwrap_or(0),
            until_ns: filter.until_ns.unwrap_or(u64::MAX),
        }
    }

    fn passes(&self, meta: &Meta) -> bool {
        self.plugin.is_none_or(|k| k == meta.plugin)
            && self.operation.is_none_or(|k| k == meta.operation)
            && self.uid.is_none_or(|u| u == meta.uid)
            && (self.since_ns..=self.until_ns).contains(&meta.timestamp_ns)
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub height: u64,
    pub hash: Hash,
    /// Cosine similarity to the query, −1 to 1.
    pub score: f64,
}

struct State {
    vectors: Vec<i8>,
    meta: Vec<Meta>,
    /// Where new records are appended; `None` once writing failed (the index lives on in RAM).
    file: Option<BufWriter<File>>,
    /// The newest record was checked against its block since loading.
    checked: bool,
}

impl State {
    fn len(&self) -> u64 {
        self.meta.len() as u64
    }

    /// Appends encoded records to the file (buffered, not synced); on failure the index goes on
    /// in memory only.
    fn append_to_file(&mut self, bytes: &[u8], path: &Path) {
        if let Some(file) = self.file.as_mut() {
            if let Err(err) = file.write_all(bytes).and_then(|_| file.flush()) {
                tracing::warn!(path = %path.display(), %err, "cannot write the vector file; vectors are kept in memory only");
                self.file = None;
            }
        }
    }

    fn truncate(&mut self, records: u64) {
        self.meta.truncate(records as usize);
        self.vectors.truncate(records as usize * DIM);
        if let Some(file) = self.file.as_mut() {
            let result = file.flush().and_then(|_| {
                let len = (HEADER_LEN + records as usize * RECORD_LEN) as u64;
                file.get_mut().set_len(len)?;
                file.seek(SeekFrom::Start(len)).map(|_| ())
            });
            if let Err(err) = result {
                tracing::warn!(%err, "cannot shorten the vector file; keeping vectors in memory only");
                self.file = None;
            }
        }
    }
}

/// Block vectors of one chain, searchable.
pub struct VectorIndex {
    path: PathBuf,
    embedder: Arc<dyn Embedder>,
    state: RwLock<State>,
}

impl VectorIndex {
    /// Loads `<chain_dir>/vectors` if it belongs to this chain (else starts empty and rewrites
    /// it). Nothing is read from the chain yet: [`VectorIndex::catch_up`] does that.
    pub fn open(chain_dir: &Path, chain_id: ChainId, embedder: Arc<dyn Embedder>) -> Self {
        assert_eq!(
            embedder.dim(),
            DIM,
            "the vector file holds {DIM} dimensions"
        );
        let path = chain_dir.join(FILE_NAME);
        let (vectors, meta) = match load(&path, &chain_id) {
            Ok(loaded) => loaded,
            // A new chain, or one from before vectors were kept: the normal first start.
            Err(Unloaded::Missing(_)) => {
                tracing::debug!(path = %path.display(), "no vector file yet; building block vectors from the chain");
                (Vec::new(), Vec::new())
            }
            Err(Unloaded::Unusable(why)) => {
                tracing::info!(path = %path.display(), "building block vectors from the chain: {why}");
                (Vec::new(), Vec::new())
            }
        };
        let file = open_for_append(&path, &chain_id, meta.len())
            .map_err(|err| {
                tracing::warn!(path = %path.display(), %err, "cannot write the vector file; vectors are kept in memory only");
            })
            .ok();
        VectorIndex {
            path,
            embedder,
            state: RwLock::new(State {
                vectors,
                meta,
                file,
                checked: false,
            }),
        }
    }

    /// Where the vectors are stored.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks with a vector.
    pub fn len(&self) -> u64 {
        self.state.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vector of a block, as this index computes it.
    pub fn embed_block(&self, block: &Block) -> Vec<f32> {
        self.embedder
            .embed(&block.plugin, &block.operation, &block.data)
    }

    /// The query vector of a block in the chain: embedded from its data, or for data over
    /// [`RESCORE_BUDGET_BYTES`] (possible when `OPDBUS_MAX_DATA_BYTES` is raised) taken from its
    /// stored int8 vector, so that a search by hash costs no more than the budget.
    pub fn query_vector_of(&self, reader: &ChainReader, block: &Block) -> Result<Vec<f32>> {
        if block.data.len() <= RESCORE_BUDGET_BYTES {
            return Ok(self.embed_block(block));
        }
        self.catch_up(reader)?;
        let state = self.state.read();
        let at = block.height as usize * DIM;
        let Some(stored) = state.vectors.get(at..at + DIM) else {
            return Ok(self.embed_block(block));
        };
        let norm = stored
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        Ok(stored
            .iter()
            .map(|x| {
                if norm == 0.0 {
                    0.0
                } else {
                    (f64::from(*x) / norm) as f32
                }
            })
            .collect())
    }

    /// The vector of a footprint.
    pub fn embed(&self, plugin: &str, operation: &str, data_json: &str) -> Vec<f32> {
        self.embedder.embed(plugin, operation, data_json)
    }

    /// Adds vectors for every block up to the chain's head; first drops records the chain does
    /// not (or no longer) agree with.
    pub fn catch_up(&self, reader: &ChainReader) -> Result<()> {
        let head = reader.head().0;
        {
            let state = self.state.read();
            if state.checked && state.len() == head + 1 {
                return Ok(());
            }
        }
        let mut state = self.state.write();
        if state.len() > head + 1 {
            state.truncate(head + 1);
        }
        if !state.checked {
            if let Some(last) = state.len().checked_sub(1) {
                let agrees = reader.block_at(last)?.is_some_and(|block| {
                    hash_prefix(&block.hash) == state.meta[last as usize].hash_prefix
                });
                if !agrees {
                    tracing::warn!(
                        height = last,
                        "block vectors do not match the chain; rebuilding them"
                    );
                    state.truncate(0);
                }
            }
            state.checked = true;
        }
        let mut bytes = Vec::new();
        for height in state.len()..=head {
            let Some(block) = reader.block_at(height)? else {
                break;
            };
            let vector = quantize(&self.embed_block(&block));
            let meta = Meta::of(&block);
            encode_record(&vector, &meta, &mut bytes);
            state.vectors.extend_from_slice(&vector);
            state.meta.push(meta);
            // A rebuild of a long chain writes as it goes rather than holding it all.
            if bytes.len() >= WRITE_CHUNK {
                state.append_to_file(&bytes, &self.path);
                bytes.clear();
            }
        }
        state.append_to_file(&bytes, &self.path);
        Ok(())
    }

    /// The `k` blocks most similar to `query` (a unit vector) that pass `filter`, best first.
    /// The genesis block is never returned.
    pub fn search(
        &self,
        reader: &ChainReader,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Match>> {
        self.catch_up(reader)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let candidates = {
            let state = self.state.read();
            let keys = KeyFilter::new(filter);
            let q = quantize(query);
            let keep = (k * 4).max(32);
            let blocks = state.meta.len();
            // Large chains are scanned in parallel slices, each keeping its own best.
            let threads = if blocks >= PARALLEL_SCAN_BLOCKS {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
            } else {
                1
            };
            let slice = blocks.div_ceil(threads).max(1);
            let mut best: Vec<(i32, u64)> = std::thread::scope(|scope| {
                let scans: Vec<_> = (0..threads)
                    .map(|t| {
                        let range = (t * slice).max(1)..((t + 1) * slice).min(blocks);
                        let (state, keys, q) = (&state, &keys, &q);
                        scope.spawn(move || scan(&state.vectors, &state.meta, range, q, keys, keep))
                    })
                    .collect();
                scans
                    .into_iter()
                    .flat_map(|scan| scan.join().expect("a scan thread panicked"))
                    .collect()
            });
            best.sort_unstable_by(|a, b| b.cmp(a));
            best.truncate(keep);
            best.into_iter()
                .map(|(_, height)| {
                    let at = height as usize * DIM;
                    (height, state.vectors[at..at + DIM].to_vec())
                })
                .collect::<Vec<(u64, Vec<i8>)>>()
        };
        // The 64-bit keys could in theory collide; the block's own names decide.
        let names_pass = |block: &Block| {
            filter.plugin.as_ref().is_none_or(|p| *p == block.plugin)
                && filter
                    .operation
                    .as_ref()
                    .is_none_or(|o| *o == block.operation)
        };
        // Best candidates first, blocks are read and scored exactly (their data re-embedded)
        // until RESCORE_BUDGET_BYTES of data have been read; the rest are scored from their
        // stored int8 vectors, and only those among the best k are read, for their hashes.
        let mut scored: Vec<(f64, u64, Option<Hash>)> = Vec::with_capacity(candidates.len());
        let mut budget = RESCORE_BUDGET_BYTES;
        for (height, stored) in candidates {
            if budget == 0 {
                scored.push((cosine_quantized(query, &stored), height, None));
                continue;
            }
            let Some(block) = reader.block_at(height)? else {
                continue;
            };
            if !names_pass(&block) {
                continue;
            }
            let score = if block.data.len() <= budget {
                cosine(query, &self.embed_block(&block))
            } else {
                cosine_quantized(query, &stored)
            };
            budget = budget.saturating_sub(block.data.len());
            scored.push((score, height, Some(block.hash)));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut matches = Vec::with_capacity(k);
        for (score, height, hash) in scored {
            if matches.len() == k {
                break;
            }
            let hash = match hash {
                Some(hash) => hash,
                None => match reader.block_at(height)? {
                    Some(block) if names_pass(&block) => block.hash,
                    _ => continue,
                },
            };
            matches.push(Match {
                height,
                hash,
                score,
            });
        }
        Ok(matches)
    }
}

/// Reads `<chain_dir>/vectors` without writing anything and recomputes every stored record from
/// its block. Returns how many records the file holds and the heights whose record differs;
/// an error when the file is missing or belongs to another chain.
pub fn check_file(
    chain_dir: &Path,
    reader: &ChainReader,
) -> std::result::Result<(u64, Vec<u64>), String> {
    let path = chain_dir.join(FILE_NAME);
    let (vectors, meta) =
        load(&path, &reader.chain_id()).map_err(|why| format!("{}: {why}", path.display()))?;
    let mut bad = Vec::new();
    for (height, (vector, stored)) in vectors.chunks_exact(DIM).zip(&meta).enumerate() {
        let block = reader.block_at(height as u64).map_err(|e| e.to_string())?;
        let agrees = block.is_some_and(|block| {
            let embedded = HashingEmbedder.embed(&block.plugin, &block.operation, &block.data);
            *stored == Meta::of(&block) && quantize(&embedded) == vector
        });
        if !agrees {
            bad.push(height as u64);
        }
    }
    Ok((meta.len() as u64, bad))
}

/// Bytes of block data one search reads and re-embeds for exact scores (candidates are taken
/// best first): typical blocks of a few hundred bytes are all scored exactly, while a search
/// whose candidates are all 64 KiB blocks stops after 64 of them and reads only the best k of
/// the rest.
pub const RESCORE_BUDGET_BYTES: usize = 4 << 20;

/// Cosine of a unit vector with a stored int8 vector (within about 1% of the exact one).
fn cosine_quantized(query: &[f32], stored: &[i8]) -> f64 {
    let norm = stored
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return 0.0;
    }
    query
        .iter()
        .zip(stored)
        .map(|(q, x)| f64::from(*q) * f64::from(*x))
        .sum::<f64>()
        / norm
}

/// Chains from this many blocks on are scanned by several threads.
const PARALLEL_SCAN_BLOCKS: usize = 65_536;

/// The best `keep` (int8 score, height) among heights in `range` that pass `keys`.
fn scan(
    vectors: &[i8],
    meta: &[Meta],
    range: std::ops::Range<usize>,
    q: &[i8],
    keys: &KeyFilter,
    keep: usize,
) -> Vec<(i32, u64)> {
    // Min-heap of the best so far.
    let mut best: BinaryHeap<std::cmp::Reverse<(i32, u64)>> = BinaryHeap::new();
    for height in range {
        if !keys.passes(&meta[height]) {
            continue;
        }
        let vector = &vectors[height * DIM..(height + 1) * DIM];
        let score: i32 = vector
            .iter()
            .zip(q)
            .map(|(a, b)| i32::from(*a) * i32::from(*b))
            .sum();
        if best.len() < keep {
            best.push(std::cmp::Reverse((score, height as u64)));
        } else if best.peek().is_some_and(|worst| worst.0 .0 < score) {
            best.pop();
            best.push(std::cmp::Reverse((score, height as u64)));
        }
    }
    best.into_iter().map(|r| r.0).collect()
}

fn encode_record(vector: &[i8], meta: &Meta, out: &mut Vec<u8>) {
    out.extend(vector.iter().map(|x| *x as u8));
    out.extend_from_slice(&meta.timestamp_ns.to_le_bytes());
    out.extend_from_slice(&meta.uid.to_le_bytes());
    out.extend_from_slice(&meta.plugin.to_le_bytes());
    out.extend_from_slice(&meta.operation.to_le_bytes());
    out.extend_from_slice(&meta.hash_prefix.to_le_bytes());
}

fn decode_record(record: &[u8]) -> (&[u8], Meta) {
    let (vector, rest) = record.split_at(DIM);
    let u64_at = |at: usize| u64::from_le_bytes(rest[at..at + 8].try_into().expect("8 bytes"));
    let meta = Meta {
        timestamp_ns: u64_at(0),
        uid: u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")),
        plugin: u64_at(12),
        operation: u64_at(20),
        hash_prefix: u64_at(28),
    };
    (vector, meta)
}

fn header(chain_id: &ChainId) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(DIM as u32).to_le_bytes());
    out[16..].copy_from_slice(chain_id);
    out
}

/// Why [`load`] found no vectors to keep.
enum Unloaded {
    /// There is no vector file (the I/O error's text).
    Missing(String),
    /// The file cannot be read or is not this chain's.
    Unusable(String),
}

impl std::fmt::Display for Unloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unloaded::Missing(why) | Unloaded::Unusable(why) => f.write_str(why),
        }
    }
}

fn load(path: &Path, chain_id: &ChainId) -> std::result::Result<(Vec<i8>, Vec<Meta>), Unloaded> {
    let mut bytes = Vec::new();
    crate::files::open_read(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Unloaded::Missing(e.to_string()),
            _ => Unloaded::Unusable(e.to_string()),
        })?;
    if bytes.len() < HEADER_LEN || bytes[..HEADER_LEN] != header(chain_id) {
        return Err(Unloaded::Unusable(
            "the file is from another chain or format".into(),
        ));
    }
    let records = bytes[HEADER_LEN..].chunks_exact(RECORD_LEN);
    let mut vectors = Vec::with_capacity(records.len() * DIM);
    let mut meta = Vec::with_capacity(records.len());
    for record in records {
        let (vector, m) = decode_record(record);
        vectors.extend(vector.iter().map(|x| *x as i8));
        meta.push(m);
    }
    Ok((vectors, meta))
}

/// Opens the file for appending after `records` whole records, rewriting the header (and
/// dropping a torn tail) as needed.
fn open_for_append(
    path: &Path,
    chain_id: &ChainId,
    records: usize,
) -> std::io::Result<BufWriter<File>> {
    let mut file = crate::files::open(
        crate::files::options(crate::files::FILE_MODE)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
        path,
    )?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
        crate::files::FILE_MODE,
    ))?;
    let len = (HEADER_LEN + records * RECORD_LEN) as u64;
    file.set_len(len)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header(chain_id))?;
    file.seek(SeekFrom::Start(len))?;
    Ok(BufWriter::new(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_from_stored_vectors_are_close_to_exact_ones() {
        let e = HashingEmbedder;
        let query = e.embed("network", "create", r#"{"name":"eth0","mtu":1500}"#);
        for data in [
            r#"{"name":"eth1","mtu":1500}"#,
            r#"{"unit":"nginx.service"}"#,
            r#"{"name":"eth0","mtu":1500}"#,
        ] {
            let block = e.embed("network", "create", data);
            let exact = cosine(&query, &block);
            let stored = cosine_quantized(&query, &quantize(&block));
            assert!((exact - stored).abs() < 0.01, "{data}: {exact} vs {stored}");
        }
        assert_eq!(cosine_quantized(&query, &[0; DIM]), 0.0);
    }
}
