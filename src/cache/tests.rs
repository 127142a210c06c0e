use super::*;
use crate::corpus;

fn open(dir: &Path, hot_bytes: u64) -> BlockCache {
    let mut options = CacheOptions::new(dir);
    options.hot_bytes = hot_bytes;
    BlockCache::open(&options).expect("open cache")
}

#[test]
fn compression_ratio_reaches_3x_on_the_corpus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    let blocks = corpus::blocks(11, 2000);
    for block in &blocks {
        cache.put(block).expect("put");
    }
    let stats = cache.stats();
    eprintln!("{stats:#?}");
    assert_eq!(stats.total_entries, 2000);
    assert!(stats.compression_ratio >= 3.0, "{stats:#?}");
}

fn entry_path(dir: &Path, hash: &Hash) -> PathBuf {
    let hex = hex::encode(hash);
    dir.join("blocks")
        .join(&hex[..2])
        .join(format!("{hex}.zst"))
}

#[test]
fn scripted_hit_miss_accounting_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(3, 4);
    let (a, b, c, unknown) = (&blocks[0], &blocks[1], &blocks[2], &blocks[3]);
    {
        let cache = open(dir.path(), DEFAULT_HOT_BYTES);
        for block in [a, b, c] {
            assert_eq!(cache.put(block).expect("put"), Put::Written);
        }
        assert_eq!(cache.put(a).expect("put again"), Put::Present);
        assert_eq!(cache.get(&a.hash).as_deref(), Some(a)); // hot hit (put keeps it in RAM)
        assert!(cache.get(&unknown.hash).is_none()); // miss
        let stats = cache.stats();
        assert_eq!((stats.hot_hits, stats.disk_hits, stats.misses), (1, 0, 1));
        assert_eq!(stats.total_entries, 3);
    }
    // A new process: RAM is empty, the disk tier is not.
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    assert_eq!(cache.stats().total_entries, 3);
    assert_eq!(cache.stats().hot_entries, 0);
    let bytes = std::fs::read(entry_path(dir.path(), &c.hash)).expect("entry");
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(entry_path(dir.path(), &c.hash), &damaged).expect("damage");

    assert_eq!(cache.get(&a.hash).as_deref(), Some(a)); // disk hit, promoted
    assert_eq!(cache.get(&a.hash).as_deref(), Some(a)); // hot hit
    assert_eq!(cache.get(&b.hash).as_deref(), Some(b)); // disk hit
    assert!(cache.get(&unknown.hash).is_none()); // miss
    assert!(cache.get(&c.hash).is_none()); // damaged: dropped, a miss
    assert!(cache.get(&c.hash).is_none()); // gone: a miss
    let stats = cache.stats();
    assert_eq!(stats.hot_hits, 1);
    assert_eq!(stats.disk_hits, 2);
    assert_eq!(stats.hits, 3);
    assert_eq!(stats.misses, 3);
    assert_eq!(stats.hit_rate, 0.5);
    assert_eq!(stats.corrupt_dropped, 1);
    assert_eq!(stats.total_entries, 2);
    assert_eq!(stats.hot_entries, 2);
    assert!(!entry_path(dir.path(), &c.hash).exists());
}

#[test]
fn a_cache_file_holding_another_block_is_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(4, 3);
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    cache.put(&blocks[0]).expect("put");
    // A well-formed file, but of another block, under the second block's name; and a file
    // that is not a zstd frame at all under the third's.
    for (i, content) in [(1, None), (2, Some(&b"{\"not\":\"zstd\"}"[..]))] {
        let target = entry_path(dir.path(), &blocks[i].hash);
        std::fs::create_dir_all(target.parent().expect("shard")).expect("shard dir");
        match content {
            None => std::fs::copy(entry_path(dir.path(), &blocks[0].hash), &target).map(drop),
            Some(bytes) => std::fs::write(&target, bytes),
        }
        .expect("plant a bad file");
    }
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    assert_eq!(cache.stats().total_entries, 3);
    assert!(cache.get(&blocks[1].hash).is_none());
    assert!(cache.get(&blocks[2].hash).is_none());
    let stats = cache.stats();
    assert_eq!(stats.corrupt_dropped, 2);
    assert_eq!(stats.misses, 2);
    assert_eq!(stats.total_entries, 1);
    assert_eq!(cache.get(&blocks[0].hash).as_deref(), Some(&blocks[0]));
}

#[test]
fn a_rate_with_nothing_to_measure_is_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stats = open(dir.path(), DEFAULT_HOT_BYTES).stats();
    assert_eq!(stats.compression_ratio, 0.0);
    assert_eq!(stats.hit_rate, 0.0);
    assert_eq!(stats.hot_hit_rate, 0.0);
    assert_eq!(stats.total_entries, 0);
}

#[test]
fn files_of_an_older_dictionary_stay_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(5, 300);
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    for block in &blocks[..100] {
        cache.put(block).expect("put");
    }
    let first_id = cache.stats().dictionary_id;
    assert_ne!(first_id, 0, "a dictionary is trained after 64 blocks");
    let old_file = std::fs::read(entry_path(dir.path(), &blocks[0].hash)).expect("entry");
    for block in &blocks[100..] {
        cache.put(block).expect("put");
    }
    assert_ne!(
        cache.stats().dictionary_id,
        first_id,
        "retrained while young"
    );
    assert!(cache.stats().dictionaries >= 2);
    // Put the file compressed with the first dictionary back, and read it in a new process.
    std::fs::write(entry_path(dir.path(), &blocks[0].hash), &old_file).expect("restore");
    let frame_dict = zstd::zstd_safe::get_dict_id_from_frame(&old_file).map(u32::from);
    assert_eq!(frame_dict, Some(first_id));
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    assert_eq!(cache.get(&blocks[0].hash).as_deref(), Some(&blocks[0]));
    assert_eq!(cache.stats().corrupt_dropped, 0);
}

/// Ranks 0..n drawn with probability ∝ 1/(rank+1)^s.
struct Zipf {
    cdf: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(n: usize, s: f64, seed: u64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Zipf { cdf, state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        // SplitMix64, as in the corpus.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn sample(&mut self) -> usize {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|&p| p < u).min(self.cdf.len() - 1)
    }
}

/// A skewed read mix (Zipf, s = 1.2, popularity unrelated to write order) over 5,000 blocks
/// with RAM for 10% of them: the hot tier answers at least 85% of the lookups. (The best any
/// policy can do here is the top 10% ranks' share, about 89%.)
#[test]
fn zipf_read_mix_hits_the_hot_tier_85_percent() {
    const N: usize = 5000;
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(6, N);
    let total_weight: u64 = blocks.iter().map(hot_weight).sum();
    {
        let writer = open(dir.path(), DEFAULT_HOT_BYTES);
        for block in &blocks {
            writer.put(block).expect("put");
        }
    }
    let cache = open(dir.path(), total_weight / 10);
    let mut zipf = Zipf::new(N, 1.2, 42);
    let mut order: Vec<usize> = (0..N).collect();
    for i in (1..N).rev() {
        let j = (zipf.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let ideal: f64 = zipf.cdf[N / 10 - 1];
    let mut read = |count: usize| {
        for _ in 0..count {
            let block = &blocks[order[zipf.sample()]];
            let got = cache.get(&block.hash).expect("every block is on disk");
            assert_eq!(got.hash, block.hash);
        }
    };
    read(20_000); // warm-up
    cache.reset_lookup_counters();
    read(100_000);
    let stats = cache.stats();
    eprintln!("ideal {ideal:.3}: {stats:#?}");
    assert_eq!(stats.hits + stats.misses, 100_000);
    assert_eq!(stats.misses, 0);
    assert!(stats.hot_bytes <= total_weight / 10);
    assert!(stats.evictions > 0);
    assert!(
        stats.hot_hit_rate >= 0.85,
        "hot hit rate {:.3} (ideal {ideal:.3})",
        stats.hot_hit_rate
    );
}
