//! Writes a chain directory from blocks with the timestamps and callers a test or bench
//! chooses (the store's writer stamps its own clock and the caller it is given; a search by
//! time needs blocks spread over days, and a bench ten million of them in minutes).
//!
//! The files are those the daemon leaves (docs/format.md): segments of at most
//! `segment_bytes`, the genesis block first, and the index file, one entry per height. They
//! are written through buffers and synced once at the end: this is for scratch chains, not
//! for evidence.

use opdbus_blockchain::chain::block::{Block, Caller, Hash, ZERO_HASH};
use opdbus_blockchain::chain::scan::{GENESIS_OPERATION, GENESIS_PLUGIN};
use opdbus_blockchain::chain::segment::{self, ChainId, HEADER_LEN};
use opdbus_blockchain::chain::store::genesis_data;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const INDEX_MAGIC: &[u8; 8] = b"OPDBIDX\0";
const BUF: usize = 4 << 20;

/// Appends blocks to a new chain directory; see the module documentation.
pub struct ChainBuilder {
    dir: PathBuf,
    chain_id: ChainId,
    segment_bytes: u64,
    segment: BufWriter<File>,
    segment_first: u64,
    segment_len: u64,
    index: BufWriter<File>,
    next_height: u64,
    prev_hash: Hash,
    prev_timestamp_ns: u64,
    record: Vec<u8>,
}

impl ChainBuilder {
    /// Creates the chain in `dir` (which must hold no chain) with its genesis block at
    /// `created_ns`.
    pub fn create(dir: &Path, created_ns: u64, segment_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut chain_id: ChainId = [0; 16];
        getrandom(&mut chain_id);
        let mut index = BufWriter::with_capacity(BUF, File::create(dir.join("index"))?);
        let mut header = segment::encode_header(0, &chain_id);
        header[..8].copy_from_slice(INDEX_MAGIC);
        index.write_all(&header)?;
        let mut builder = ChainBuilder {
            dir: dir.to_path_buf(),
            chain_id,
            segment_bytes,
            segment: new_segment(dir, 0, &chain_id)?,
            segment_first: 0,
            segment_len: HEADER_LEN as u64,
            index,
            next_height: 0,
            prev_hash: ZERO_HASH,
            prev_timestamp_ns: created_ns,
            record: Vec::new(),
        };
        builder.push(
            created_ns,
            Caller {
                uid: Some(0),
                pid: Some(1),
                ..Caller::default()
            },
            GENESIS_PLUGIN,
            GENESIS_OPERATION,
            &genesis_data(&chain_id, created_ns),
        )?;
        Ok(builder)
    }

    /// Appends the next block; its timestamp is raised to the previous block's when earlier
    /// (time never runs backwards along a chain). Returns its height.
    pub fn push(
        &mut self,
        timestamp_ns: u64,
        caller: Caller,
        plugin: &str,
        operation: &str,
        data: &str,
    ) -> std::io::Result<u64> {
        let height = self.next_height;
        let block = Block::new(
            height,
            timestamp_ns.max(self.prev_timestamp_ns),
            self.prev_hash,
            caller,
            plugin.into(),
            operation.into(),
            data.into(),
        );
        self.record.clear();
        segment::encode_record(&block, &mut self.record);
        let len = self.record.len() as u64;
        if self.segment_len > HEADER_LEN as u64 && self.segment_len + len > self.segment_bytes {
            self.segment.flush()?;
            self.segment = new_segment(&self.dir, height, &self.chain_id)?;
            self.segment_first = height;
            self.segment_len = HEADER_LEN as u64;
        }
        self.segment.write_all(&self.record)?;
        let mut entry = [0u8; 56];
        entry[..32].copy_from_slice(&block.hash);
        entry[32..40].copy_from_slice(&self.segment_first.to_le_bytes());
        entry[40..48].copy_from_slice(&self.segment_len.to_le_bytes());
        entry[48..52].copy_from_slice(&(len as u32).to_le_bytes());
        self.index.write_all(&entry)?;
        self.segment_len += len;
        self.next_height += 1;
        self.prev_hash = block.hash;
        self.prev_timestamp_ns = block.timestamp_ns;
        Ok(height)
    }

    /// Flushes and syncs everything; returns the head's height and hash.
    pub fn finish(mut self) -> std::io::Result<(u64, Hash)> {
        self.segment.flush()?;
        self.segment.get_ref().sync_all()?;
        self.index.flush()?;
        self.index.get_ref().sync_all()?;
        Ok((self.next_height - 1, self.prev_hash))
    }
}

fn new_segment(dir: &Path, first: u64, chain_id: &ChainId) -> std::io::Result<BufWriter<File>> {
    let mut file =
        BufWriter::with_capacity(BUF, File::create(dir.join(segment::file_name(first)))?);
    file.write_all(&segment::encode_header(first, chain_id))?;
    Ok(file)
}

/// A chain id that differs between runs; nothing depends on its quality.
fn getrandom(out: &mut ChainId) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let mut rng = crate::SplitMix64(seed);
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
    }
}
