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
use crate::chain::block::{Hash, ZERO_HASH};
use crate::chain::rewrite::DamagedRecord;
use crate::chain::store;
use crate::chain::verify::{verify_dir, VerifyReport};
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

/// The one block of the chain a repair knows to be intact: the one below the damaged block.
struct Below {
    height: u64,
    hash: Hash,
}

impl super::ChainIndex for Below {
    fn hash_at(&self, height: u64) -> Option<Hash> {
        (height == self.height).then_some(self.hash)
    }
    fn height_of(&self, hash: &Hash) -> Option<u64> {
        (*hash == self.hash).then_some(self.height)
    }
}

fn repair_one(
    chain_dir: &Path,
    cache: &BlockCache,
    height: u64,
    prev: &Hash,
) -> Result<Repaired, String> {
    // Stored blocks leave their prev_hash to the chain: here it is the intact block below.
    if let Some(below) = height.checked_sub(1) {
        cache.set_links(std::sync::Arc::new(Below {
            height: below,
            hash: *prev,
        }));
    }
    let record = DamagedRecord::find(chain_dir, height)?;
    let mut candidates = record.claimed_hashes();
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
        match record.proves_genuine(&block) {
            Ok(()) => {
                record.rewrite(&block)?;
                return Ok(Repaired {
                    height,
                    hash: block.hash,
                    segment: record.segment().to_owned(),
                });
            }
            Err(reason) => why_not = reason,
        }
    }
    Err(why_not)
}
