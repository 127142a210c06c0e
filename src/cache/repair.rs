//! Repair from the cache: a chain block that fails its hash is rewritten in place from the
//! cache's verified copy ("dual storage for redundancy").
//!
//! Offline only: the chain directory's writer lock is held throughout, so no daemon can be
//! appending. Repeats verify → repair the first bad block until the chain verifies or a block
//! cannot be repaired.
//!
//! A copy is used only when it is provably the block that belongs there:
//! - the cache loaded it by hash and re-hashed it (so it is intact);
//! - its height is the damaged height and its `prev_hash` is the hash of the (good) block
//!   before;
//! - its hash is what the chain itself says the block's hash is: the next record's `prev_hash`,
//!   or, for the newest block, the hash stored in the damaged record's own trailer;
//! - its record is exactly as long as the damaged one (the length field when intact, else the
//!   next record starts right after it), so the rewrite never moves another record.

use super::{BlockCache, CacheOptions};
use crate::chain::block::{Block, Hash, ZERO_HASH};
use crate::chain::segment::{self, Parsed, HEADER_LEN, RECORD_HEAD_LEN};
use crate::chain::store;
use crate::chain::verify::{verify_dir, VerifyReport};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One block rewritten from the cache.
#[derive(Debug, Clone)]
pub struct Repaired {
    pub height: u64,
    pub hash: Hash,
    pub segment: PathBuf,
}

/// What a repair did and where the chain stands after it.
#[derive(Debug, Clone)]
pub struct RepairReport {
    pub repaired: Vec<Repaired>,
    /// The last verification: `ok()` when the chain is intact now.
    pub verify: VerifyReport,
    /// The first bad block that could not be repaired, and why.
    pub unrepaired: Option<(u64, String)>,
}

/// Why a repair could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Chain(#[from] crate::chain::error::ChainError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Verifies the chain in `chain_dir` and rewrites every bad block the cache in `cache_dir` has
/// a provably right copy of. Takes the chain's writer lock (`InUse` if a daemon runs).
pub fn repair_from_cache(chain_dir: &Path, cache_dir: &Path) -> Result<RepairReport, RepairError> {
    let _lock = store::take_lock(chain_dir)?;
    let mut options = CacheOptions::new(cache_dir);
    options.hot_bytes = 1 << 20;
    let cache = BlockCache::open(&options).map_err(|e| RepairError::Io {
        context: format!("opening the cache in {}", cache_dir.display()),
        source: std::io::Error::other(e),
    })?;
    let mut repaired: Vec<Repaired> = Vec::new();
    loop {
        let verify = verify_dir(chain_dir, None, &mut |_| {})?;
        let Some((height, reason)) = verify.first_bad.clone() else {
            return Ok(RepairReport {
                repaired,
                verify,
                unrepaired: None,
            });
        };
        let already = repaired.iter().any(|r| r.height == height);
        let attempt = if already {
            Err(format!("still bad after its repair: {reason}"))
        } else {
            let prev = match (height, verify.head) {
                (0, _) => Ok(ZERO_HASH),
                (_, Some((h, hash))) if h + 1 == height => Ok(hash),
                _ => Err("the block before it is not intact".to_owned()),
            };
            prev.and_then(|prev| repair_one(chain_dir, &cache, height, &prev))
        };
        match attempt {
            Ok(done) => repaired.push(done),
            Err(why) => {
                return Ok(RepairReport {
                    repaired,
                    verify,
                    unrepaired: Some((height, format!("{reason}; not repaired: {why}"))),
                })
            }
        }
    }
}

fn repair_one(
    chain_dir: &Path,
    cache: &BlockCache,
    height: u64,
    prev: &Hash,
) -> Result<Repaired, String> {
    let segments = segment::list(chain_dir).map_err(|e| e.to_string())?;
    let index = segments
        .iter()
        .rposition(|(first, _)| *first <= height)
        .ok_or("no segment holds it")?;
    let (first, path) = &segments[index];
    let bytes = crate::files::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    // Records before `height` in this segment verified good: their length fields are right.
    let mut at = HEADER_LEN;
    for _ in *first..height {
        let len = read_len(&bytes, at).ok_or("a record before it is cut short")?;
        at += segment::record_len(len);
    }
    if at >= bytes.len() {
        return Err("its record is missing".into());
    }
    let damaged = &bytes[at..];
    let intact_len = read_len(damaged, 0).filter(|len| {
        let check = damaged
            .get(4..8)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        check == Some(*len as u32 ^ u32::MAX) && segment::record_len(*len) <= damaged.len()
    });
    // What the chain says the block's hash is, from the records around it.
    let next_start = |len: usize| at + segment::record_len(len);
    let next_prev_hash = |len: usize| -> Option<Hash> {
        let start = next_start(len);
        if start < bytes.len() {
            return match segment::parse_record(&bytes[start..], bytes.len() - start, start as u64) {
                Parsed::Record { block, .. } => Some(block.prev_hash),
                _ => None,
            };
        }
        // The next block opens the next segment.
        let (_, next_path) = segments.get(index + 1)?;
        let next = crate::files::read(next_path).ok()?;
        match segment::parse_record(
            next.get(HEADER_LEN..)?,
            next.len() - HEADER_LEN,
            HEADER_LEN as u64,
        ) {
            Parsed::Record { block, .. } => Some(block.prev_hash),
            _ => None,
        }
    };
    let mut candidates: Vec<Hash> = Vec::new();
    if let Some(len) = intact_len {
        if let Some(hash) = next_prev_hash(len) {
            candidates.push(hash);
        }
        let trailer = at + RECORD_HEAD_LEN + len;
        if let Some(stored) = bytes.get(trailer..trailer + 32) {
            candidates.push(stored.try_into().expect("32 bytes"));
        }
    }
    if candidates.is_empty() {
        // The length field itself is damaged: look through the cache for the block of this
        // height that links to the block before.
        let found = cache
            .inner
            .disk
            .find(|block| block.height == height && &block.prev_hash == prev);
        candidates.extend(found.map(|block| block.hash));
    }
    let mut why_not = String::from("the cache has no copy of it");
    for hash in candidates {
        let Some(block) = cache.load_verified(&hash) else {
            continue;
        };
        if block.height != height || &block.prev_hash != prev {
            continue;
        }
        match proves_genuine(&block, at, &bytes, intact_len, &next_prev_hash) {
            Ok(()) => {
                rewrite(path, at, &block)?;
                return Ok(Repaired {
                    height,
                    hash: block.hash,
                    segment: path.clone(),
                });
            }
            Err(reason) => why_not = reason,
        }
    }
    Err(why_not)
}

/// Checks that `block` is the one the chain expects at `at` (see the module text).
fn proves_genuine(
    block: &Block,
    at: usize,
    bytes: &[u8],
    intact_len: Option<usize>,
    next_prev_hash: &dyn Fn(usize) -> Option<Hash>,
) -> Result<(), String> {
    let len = block.encoded_len();
    if intact_len.is_some_and(|intact| intact != len) {
        return Err("the cached copy's length differs from the record's".into());
    }
    let end = at + segment::record_len(len);
    if end > bytes.len() {
        return Err("the cached copy is longer than the space its record occupies".into());
    }
    match next_prev_hash(len) {
        Some(expected) if expected == block.hash => Ok(()),
        Some(_) => Err("the next block does not link to the cached copy".into()),
        // The newest block: nothing links to it; its record's trailer must name it and the
        // record must end the file.
        None if end == bytes.len() => {
            let stored = &bytes[end - segment::RECORD_TAIL_LEN..end - 4];
            if stored == block.hash {
                Ok(())
            } else {
                Err("the newest block's record does not name the cached copy".into())
            }
        }
        None => Err("the record after it cannot be read to confirm the cached copy".into()),
    }
}

fn rewrite(path: &Path, at: usize, block: &Block) -> Result<(), String> {
    let mut record = Vec::with_capacity(segment::record_len(block.encoded_len()));
    segment::encode_record(block, &mut record);
    let file = crate::files::open(
        crate::files::options(crate::files::FILE_MODE).write(true),
        path,
    )
    .map_err(|e| format!("opening {} for writing: {e}", path.display()))?;
    file.write_all_at(&record, at as u64)
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("rewriting {}: {e}", path.display()))
}

fn read_len(bytes: &[u8], at: usize) -> Option<usize> {
    let field = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes(field.try_into().expect("4 bytes")) as usize)
}
