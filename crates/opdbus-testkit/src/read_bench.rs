//! Predictive caching measured: the hot-tier hit rate of the real cache under a realistic read
//! mix, with plain LRU and with prediction, on the same chain (`opdbus-bench bench-vectors`).
//!
//! The read mix, from four concurrent readers with a short think time between reads:
//! - 40% audit walks: from a recent block back along the chain, 10–30 blocks;
//! - 30% investigation replays: one of 30 fixed paths of 6–12 blocks of one plugin, re-read
//!   by other admins;
//! - 30% point reads: 10 reads skewed to the newest fifth of the chain.

use crate::corpus::{self, SplitMix64};
use opdbus_blockchain::cache::{hot_weight, CacheOptions};
use opdbus_blockchain::chain::block::Hash;
use opdbus_blockchain::service::Result;
use opdbus_blockchain::service::{ChainOptions, OptimizedBlockchain};
use std::path::Path;
use std::time::Duration;

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadBench {
    pub blocks: u64,
    pub reads: u64,
    /// The hot tier's bound as a share of all blocks' hot weight.
    pub hot_fraction: f64,
    pub lru_hot_hit_rate: f64,
    pub predictive_hot_hit_rate: f64,
}

/// Builds a chain of `blocks` corpus footprints under `dir`, then runs the read mix (about
/// `reads` reads) twice: prediction off, then on.
pub async fn run(dir: &Path, blocks: u64, reads: u64) -> Result<ReadBench> {
    let chain_dir = dir.join("chain");
    let cache_dir = dir.join("cache");
    let options = |predict: bool| {
        let mut options = ChainOptions::new(&chain_dir);
        options.numa = None;
        options.predict = predict;
        options
    };
    let (hashes, total_weight) = {
        let chain = OptimizedBlockchain::with_options(options(false), cache_dir.clone()).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for footprint in corpus::footprints(11, blocks as usize) {
            let _ = tx.send(footprint);
        }
        drop(tx);
        chain.start_footprint_receiver(rx).await;
        let mut hashes = Vec::with_capacity(blocks as usize + 1);
        let mut weight = 0;
        for height in 0..=blocks {
            let block = chain.chain().get_block_by_height(height).await?;
            let block = block.expect("every height up to the head exists");
            weight += hot_weight(&block);
            hashes.push((block.hash, block.plugin.clone()));
        }
        let _ = chain.cache_caught_up(blocks).await;
        chain.shutdown().await;
        (hashes, weight)
    };
    let sessions = read_mix(&hashes, reads);
    let hot_fraction = 0.1;
    let mut rates = Vec::new();
    for predict in [false, true] {
        let mut cache = CacheOptions::new(&cache_dir);
        cache.hot_bytes = (total_weight as f64 * hot_fraction) as u64;
        cache.preload_blocks = 0;
        let chain = OptimizedBlockchain::with_cache(options(predict), cache).await?;
        chain.cache().reset_lookup_counters();
        replay(&chain, &sessions).await?;
        rates.push(chain.cache_stats().await?.hot_hit_rate);
        chain.shutdown().await;
    }
    Ok(ReadBench {
        blocks,
        reads: sessions.iter().map(|s| s.len() as u64).sum(),
        hot_fraction,
        lru_hot_hit_rate: rates[0],
        predictive_hot_hit_rate: rates[1],
    })
}

/// Sessions of block hashes to read, in order.
fn read_mix(blocks: &[(Hash, String)], reads: u64) -> Vec<Vec<Hash>> {
    let head = blocks.len() as u64 - 1;
    if head == 0 {
        return Vec::new(); // nothing but genesis to read
    }
    let mut rng = SplitMix64(0x7ead);
    let recent = |rng: &mut SplitMix64, span: u64| {
        // Skewed to the newest: the square of a uniform fraction, measured back from the head.
        let u = rng.below(1_000_000) as f64 / 1_000_000.0;
        head - ((u * u * span as f64) as u64).min(head - 1)
    };
    let paths: Vec<Vec<Hash>> = (0..30)
        .map(|_| {
            let plugin = &blocks[1 + rng.below(head) as usize].1;
            let mut path = Vec::new();
            while path.len() < 6 + rng.below(7) as usize {
                let (hash, p) = &blocks[1 + rng.below(head) as usize];
                if p == plugin {
                    path.push(*hash);
                }
            }
            path
        })
        .collect();
    let mut sessions = Vec::new();
    let mut total = 0;
    while total < reads {
        let session: Vec<Hash> = match rng.below(10) {
            0..=3 => {
                let start = recent(&mut rng, head / 2);
                let len = (10 + rng.below(21)).min(start);
                (0..len).map(|i| blocks[(start - i) as usize].0).collect()
            }
            4..=6 => paths[rng.below(paths.len() as u64) as usize].clone(),
            _ => (0..10)
                .map(|_| blocks[recent(&mut rng, head / 5) as usize].0)
                .collect(),
        };
        total += session.len() as u64;
        sessions.push(session);
    }
    sessions
}

/// Reads the sessions through `get_block_as`, four readers at a time.
async fn replay(chain: &OptimizedBlockchain, sessions: &[Vec<Hash>]) -> Result<()> {
    for (round, group) in sessions.chunks(4).enumerate() {
        let reads = group.iter().enumerate().map(|(i, session)| {
            let chain = chain.clone();
            let reader = format!("reader-{round}-{i}");
            let session = session.clone();
            async move {
                for hash in session {
                    chain.get_block_as(&reader, &hex::encode(hash)).await?;
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
                Ok::<_, opdbus_blockchain::service::ServiceError>(())
            }
        });
        let tasks: Vec<_> = reads.map(tokio::spawn).collect();
        for task in tasks {
            task.await.expect("a read task panicked")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prediction_raises_the_hot_hit_rate_on_the_read_mix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = run(dir.path(), 3_000, 1_500).await.expect("bench");
        assert!(report.reads >= 1_500, "{report:?}");
        assert!(
            report.predictive_hot_hit_rate > report.lru_hot_hit_rate,
            "{report:?}"
        );
    }
}
