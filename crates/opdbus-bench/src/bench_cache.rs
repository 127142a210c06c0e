//! `opdbus-bench bench-cache` (also the last part of `bench`): the block cache's compression
//! on two corpora, for the disk tier and the shared tier, and the shared tier on a real
//! `redis-server` started here: a hit against a plain GET of the same values from the same
//! client library, and the hit rates of two daemons of one chain reading through it.
//!
//! The corpora: the project's own (`corpus`, which the cache's dictionary settings were
//! chosen on) and a held-out one (`corpus_fleet`, written apart from the cache and never used
//! to tune it). Each cache is given the chain's hashes by height, as the daemon's is, so blocks
//! are stored without their `prev_hash`. Figures are reported, never asserted.

use opdbus_blockchain::cache::shared::SharedCacheUrl;
use opdbus_blockchain::cache::{BlockCache, CacheOptions, CacheStats};
use opdbus_blockchain::Block;
use opdbus_testkit::redis::RedisServer;
use opdbus_testkit::{corpus, corpus_fleet, SplitMix64};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const CHAIN_ID: [u8; 16] = [0xbe; 16];
const TIMEOUT: Duration = Duration::from_millis(50);

/// How much to measure.
pub struct CacheBenchPlan {
    /// Blocks of each corpus.
    pub blocks: usize,
    /// Reads of the two-daemon mix, and hits timed against GETs.
    pub reads: usize,
}

impl CacheBenchPlan {
    pub fn new(quick: bool) -> CacheBenchPlan {
        if quick {
            CacheBenchPlan {
                blocks: 2_000,
                reads: 2_000,
            }
        } else {
            CacheBenchPlan {
                blocks: 20_000,
                reads: 20_000,
            }
        }
    }
}

/// The figures, printed and as flat JSON (`cache_*` keys).
pub fn run(plan: &CacheBenchPlan) -> Result<Map<String, Value>, String> {
    let work = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
    let redis = match RedisServer::start() {
        Ok(redis) => Some(redis),
        Err(why) => {
            eprintln!("bench-cache: no shared tier figures: {why}");
            None
        }
    };
    let mut json = Map::new();
    println!();
    println!("Block cache (corpus blocks, zstd level 3 with trained dictionaries):");
    println!(
        "  {:<34} {:>8} {:>12} {:>12} {:>14}",
        "corpus", "blocks", "block bytes", "disk ratio", "shared ratio"
    );
    let corpora: [(&str, Vec<Block>); 2] = [
        ("project (corpus)", corpus::blocks(101, plan.blocks)),
        (
            "held-out (corpus_fleet)",
            corpus_fleet::blocks(101, plan.blocks),
        ),
    ];
    for (i, (name, blocks)) in corpora.iter().enumerate() {
        let key = ["project", "heldout"][i];
        let stats = store(&work.path().join(key), redis.as_ref(), blocks)?;
        let shared_ratio = ratio(stats.canonical_bytes, stats.shared_bytes_written);
        println!(
            "  {name:<34} {:>8} {:>12.0} {:>11.2}x {:>13}",
            blocks.len(),
            stats.canonical_bytes as f64 / blocks.len() as f64,
            stats.compression_ratio,
            match redis {
                Some(_) => format!("{shared_ratio:.2}x"),
                None => "-".into(),
            }
        );
        json.insert(
            format!("cache_{key}_compression_ratio"),
            json!(stats.compression_ratio),
        );
        json.insert(
            format!("cache_{key}_block_bytes"),
            json!(stats.canonical_bytes as f64 / blocks.len() as f64),
        );
        if redis.is_some() {
            json.insert(format!("cache_{key}_shared_ratio"), json!(shared_ratio));
        }
    }
    println!(
        "  (disk ratio: canonical bytes / frame bytes, CacheStats compression_ratio; shared ratio: canonical bytes / bytes Redis took, dictionaries included)"
    );
    let Some(redis) = redis else {
        return Ok(json);
    };
    let blocks = &corpora[0].1;
    let (hit, get) = hit_against_get(&work.path().join("latency"), &redis, blocks, plan.reads)?;
    println!(
        "  shared-tier hit p50 {:.1} µs, plain GET of the same values p50 {:.1} µs (same client library, interleaved): {:.2}x",
        hit.as_secs_f64() * 1e6,
        get.as_secs_f64() * 1e6,
        hit.as_secs_f64() / get.as_secs_f64()
    );
    json.insert(
        "cache_shared_hit_p50_us".into(),
        json!(hit.as_secs_f64() * 1e6),
    );
    json.insert(
        "cache_redis_get_p50_us".into(),
        json!(get.as_secs_f64() * 1e6),
    );
    json.insert(
        "cache_shared_hit_to_get".into(),
        json!(hit.as_secs_f64() / get.as_secs_f64()),
    );
    let mix = two_daemon_mix(&work.path().join("mix"), &redis, blocks, plan.reads)?;
    println!(
        "  two daemons of one chain, {} skewed reads each over {} blocks, hot tiers of 2 MiB; the second with an empty cache directory:",
        plan.reads,
        blocks.len()
    );
    for (name, stats) in [
        ("first (its cache full)", &mix.0),
        ("second (cache empty)", &mix.1),
    ] {
        let lookups = (stats.hits + stats.misses).max(1) as f64;
        println!(
            "    {name:<24} hit rate {:.1}%: RAM {:.1}%, disk {:.1}%, shared {:.1}%, missed {:.1}%",
            100.0 * stats.hit_rate,
            100.0 * stats.hot_hits as f64 / lookups,
            100.0 * stats.disk_hits as f64 / lookups,
            100.0 * (stats.hits - stats.hot_hits - stats.disk_hits) as f64 / lookups,
            100.0 * stats.misses as f64 / lookups,
        );
    }
    let lookups = (mix.1.hits + mix.1.misses).max(1) as f64;
    json.insert("cache_mix_first_hit_rate".into(), json!(mix.0.hit_rate));
    json.insert("cache_mix_second_hit_rate".into(), json!(mix.1.hit_rate));
    json.insert(
        "cache_mix_second_shared_share".into(),
        json!((mix.1.hits - mix.1.hot_hits - mix.1.disk_hits) as f64 / lookups),
    );
    Ok(json)
}

fn ratio(of: u64, to: u64) -> f64 {
    if to == 0 {
        0.0
    } else {
        of as f64 / to as f64
    }
}

/// A cache in `dir` with the chain's links for `blocks`, as the daemon opens it, and the
/// shared tier when there is a Redis.
fn open(
    dir: &Path,
    redis: Option<&RedisServer>,
    hot_bytes: u64,
    blocks: &[Block],
) -> Result<BlockCache, String> {
    let mut options = CacheOptions::new(dir);
    options.hot_bytes = hot_bytes;
    let cache = BlockCache::open(&options).map_err(|e| format!("cannot open a cache: {e}"))?;
    cache.set_links(corpus::links(blocks));
    if let Some(redis) = redis {
        let url = SharedCacheUrl::parse(&redis.url()).map_err(|e| e.to_string())?;
        cache
            .attach_shared(url, TIMEOUT, &CHAIN_ID)
            .map_err(|e| e.to_string())?;
    }
    Ok(cache)
}

/// `blocks` stored in a fresh cache in `dir` (and uploaded); its stats.
fn store(dir: &Path, redis: Option<&RedisServer>, blocks: &[Block]) -> Result<CacheStats, String> {
    let cache = open(dir, redis, 64 << 20, blocks)?;
    for block in blocks {
        cache
            .put(block)
            .map_err(|e| format!("cannot store a block: {e}"))?;
        if block.height.is_multiple_of(256) {
            cache.flush_shared_and_wait(Duration::from_secs(30));
        }
    }
    cache.flush_shared_and_wait(Duration::from_secs(30));
    Ok(cache.stats())
}

/// p50 of a shared-tier hit (a cache with an empty directory, each block read once) and of a
/// plain GET of the same key, interleaved read by read.
fn hit_against_get(
    dir: &Path,
    redis: &RedisServer,
    blocks: &[Block],
    reads: usize,
) -> Result<(Duration, Duration), String> {
    let reader = open(dir, Some(redis), 64 << 20, blocks)?;
    let client = redis::Client::open(redis.url()).map_err(|e| e.to_string())?;
    let mut connection = client.get_connection().map_err(|e| e.to_string())?;
    let (mut hits, mut gets) = (Vec::new(), Vec::new());
    for block in blocks.iter().take(reads) {
        let key = format!(
            "opdbus:{}:b:{}",
            hex::encode(CHAIN_ID),
            hex::encode(block.hash)
        );
        let started = Instant::now();
        let value: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query(&mut connection)
            .map_err(|e| format!("GET: {e}"))?;
        gets.push(started.elapsed());
        if value.is_empty() {
            return Err(format!("{key} is not in Redis"));
        }
        let started = Instant::now();
        let found = reader.get(&block.hash);
        hits.push(started.elapsed());
        if found.as_deref() != Some(block) {
            return Err(format!(
                "{key}: the shared tier did not give the block back"
            ));
        }
    }
    Ok((p50(hits), p50(gets)))
}

/// Two caches of one chain sharing Redis: the first holds every block on disk (and uploaded
/// them), the second starts with an empty directory (a new host, a rebuilt cache; nothing
/// fills its disk here). Each reads `reads` blocks drawn with a Zipf-like skew (weight
/// 1/rank over a shuffled order), with a small hot tier; their stats.
fn two_daemon_mix(
    dir: &Path,
    redis: &RedisServer,
    blocks: &[Block],
    reads: usize,
) -> Result<(CacheStats, CacheStats), String> {
    let first = open(&dir.join("first"), Some(redis), 2 << 20, blocks)?;
    for block in blocks {
        first
            .put(block)
            .map_err(|e| format!("cannot store a block: {e}"))?;
    }
    first.flush_shared_and_wait(Duration::from_secs(30));
    let second = open(&dir.join("second"), Some(redis), 2 << 20, blocks)?;
    first.reset_lookup_counters();
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    let mut rng = SplitMix64(0x2da3);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    // Cumulative weights 1/rank, searched by bisection.
    let cumulative: Vec<f64> = (0..order.len())
        .scan(0.0, |sum, i| {
            *sum += 1.0 / (i + 1) as f64;
            Some(*sum)
        })
        .collect();
    let total = cumulative.last().copied().unwrap_or_default();
    for _ in 0..reads {
        for cache in [&first, &second] {
            let target = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
            let rank = cumulative
                .partition_point(|&c| c <= target)
                .min(order.len() - 1);
            let block = &blocks[order[rank]];
            if cache.get(&block.hash).as_deref() != Some(block) {
                return Err(format!("block {} was not found", block.height));
            }
        }
    }
    Ok((first.stats(), second.stats()))
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}
