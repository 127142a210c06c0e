//! Sequential checking of segment contents: shared by start-up recovery and `verify`, so both
//! apply exactly the same rules.

use super::block::{Block, Hash, ZERO_HASH};
use super::error::{ChainError, Result};
use super::segment::{self, ChainId, Parsed};

/// Plugin name of the genesis block.
pub const GENESIS_PLUGIN: &str = "opdbus-blockchain";
/// Operation of the genesis block.
pub const GENESIS_OPERATION: &str = "genesis";

/// Where a sequential scan stands: the next height it expects and the hash it must link to.
#[derive(Debug, Clone)]
pub struct ScanState {
    pub chain_id: ChainId,
    pub next_height: u64,
    pub prev_hash: Hash,
}

/// How the scanned bytes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belonged to a valid record.
    Clean,
    /// From this offset (relative to the scanned bytes) on, an incomplete or zero-filled record.
    Torn(usize),
}

/// Checks the records in `bytes` (a segment's contents from a record boundary, at file offset
/// `file_offset`, to its end) in order, calling `on_block(block, offset, len)` for each valid one. A torn tail is accepted
/// only when `may_be_torn` (the newest segment); everything else that fails is `Corrupted` at
/// the height it concerns.
pub fn scan_records(
    bytes: &[u8],
    file_offset: u64,
    may_be_torn: bool,
    state: &mut ScanState,
    mut on_block: impl FnMut(&Block, usize, usize),
) -> Result<ScanEnd> {
    let zeros_from = segment::trailing_zeros_start(bytes);
    let mut at = 0usize;
    while at < bytes.len() {
        let height = state.next_height;
        match segment::parse_record(
            &bytes[at..],
            zeros_from.saturating_sub(at),
            file_offset + at as u64,
        ) {
            Parsed::Record { block, len } => {
                check_link(&block, height, &state.prev_hash, &state.chain_id)?;
                on_block(&block, at, len);
                state.next_height += 1;
                state.prev_hash = block.hash;
                at += len;
            }
            Parsed::Torn if may_be_torn => return Ok(ScanEnd::Torn(at)),
            Parsed::Torn => {
                return Err(ChainError::Corrupted {
                    height,
                    reason: "a sealed segment ends in an incomplete record".into(),
                })
            }
            Parsed::Damaged(reason) => return Err(ChainError::Corrupted { height, reason }),
        }
    }
    Ok(ScanEnd::Clean)
}

/// Checks that `block` is the block expected at `height` after `prev_hash`; height 0 must be
/// the genesis block of `chain_id`.
pub fn check_link(block: &Block, height: u64, prev_hash: &Hash, chain_id: &ChainId) -> Result<()> {
    let fail = |reason: String| Err(ChainError::Corrupted { height, reason });
    if block.height != height {
        return fail(format!(
            "record holds height {} where {height} belongs",
            block.height
        ));
    }
    if height == 0 {
        if block.prev_hash != ZERO_HASH
            || block.plugin != GENESIS_PLUGIN
            || block.operation != GENESIS_OPERATION
        {
            return fail("the first block is not a genesis block".into());
        }
        let id = serde_json::from_str::<serde_json::Value>(&block.data)
            .ok()
            .and_then(|v| v["chain_id"].as_str().map(str::to_owned));
        if id.as_deref() != Some(hex::encode(chain_id).as_str()) {
            return fail("the genesis block names another chain id than the segments".into());
        }
    } else if &block.prev_hash != prev_hash {
        return fail(format!(
            "prev_hash {} does not match the hash {} of height {}",
            hex::encode(block.prev_hash),
            hex::encode(prev_hash),
            height - 1
        ));
    }
    Ok(())
}
