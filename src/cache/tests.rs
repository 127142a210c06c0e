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

/// The compressed frame of `hash`'s record in `cache`'s packs.
fn frame_of(cache: &BlockCache, hash: &Hash) -> Vec<u8> {
    let (pack, offset, len) = cache.inner.disk.locate(hash).expect("indexed");
    let bytes = std::fs::read(pack).expect("pack");
    bytes[offset as usize..offset as usize + len].to_vec()
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
    let (pack, offset, len) = cache.inner.disk.locate(&c.hash).expect("indexed");
    let mut damaged = std::fs::read(&pack).expect("pack");
    damaged[offset as usize + len / 2] ^= 0x40;
    std::fs::write(&pack, &damaged).expect("damage");

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
    assert!(!cache.on_disk(&c.hash));
    // Stored again (appended), it is found again, also by the next process.
    assert_eq!(cache.put(c).expect("put"), Put::Written);
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    assert_eq!(cache.stats().total_entries, 3);
    assert_eq!(cache.get(&c.hash).as_deref(), Some(c));
}

#[test]
fn a_record_holding_another_block_is_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(4, 3);
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    cache.put(&blocks[0]).expect("put");
    // A well-formed frame, but of another block, under the second block's hash; and bytes
    // that are not a zstd frame at all under the third's.
    let other = frame_of(&cache, &blocks[0].hash);
    cache.inner.disk.plant(&blocks[1].hash, &other);
    cache
        .inner
        .disk
        .plant(&blocks[2].hash, b"{\"not\":\"zstd\"}");
    drop(cache);
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

/// The pack files in `dir`, oldest first.
fn packs(dir: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = std::fs::read_dir(dir.join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .collect();
    packs.sort();
    packs
}

#[test]
fn a_torn_pack_tail_is_a_miss_and_each_run_appends_to_its_own_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(6, 10);
    {
        let cache = open(dir.path(), DEFAULT_HOT_BYTES);
        for block in &blocks {
            cache.put(block).expect("put");
        }
    }
    let [pack] = &packs(dir.path())[..] else {
        panic!("one pack: {:?}", packs(dir.path()));
    };
    // A crash mid-append: the last record is cut short.
    let mut bytes = std::fs::read(pack).expect("pack");
    bytes.truncate(bytes.len() - 5);
    std::fs::write(pack, &bytes).expect("tear");

    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    assert_eq!(cache.stats().total_entries, 9);
    for block in &blocks[..9] {
        assert_eq!(cache.get(&block.hash).as_deref(), Some(block));
    }
    assert!(cache.get(&blocks[9].hash).is_none());
    assert_eq!(cache.put(&blocks[9]).expect("put"), Put::Written);
    assert_eq!(packs(dir.path()).len(), 2, "a pack of its own");
    assert_eq!(
        std::fs::read(pack).expect("pack"),
        bytes,
        "the old pack is not written to"
    );
    drop(cache);

    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    let stats = cache.stats();
    assert_eq!(stats.total_entries, 10);
    let pack_bytes: u64 = packs(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert_eq!(stats.disk_usage_bytes, pack_bytes + stats.dictionary_bytes);
    for block in &blocks {
        assert_eq!(cache.get(&block.hash).as_deref(), Some(block));
    }
    assert_eq!(cache.stats().corrupt_dropped, 0);
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
fn young_caches_recompress_and_keep_one_dictionary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(5, 300);
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    for block in &blocks {
        cache.put(block).expect("put");
    }
    let stats = cache.stats();
    // Trained at 8, 16, … 256 blocks; each time every entry was recompressed.
    assert_eq!(stats.dictionaries, 1, "{stats:#?}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("dict"))
            .expect("dict")
            .count(),
        1
    );
    for block in &blocks {
        let frame = frame_of(&cache, &block.hash);
        let id = zstd::zstd_safe::get_dict_id_from_frame(&frame).map(u32::from);
        assert_eq!(id, Some(stats.dictionary_id));
    }
}

#[test]
fn records_of_an_older_dictionary_stay_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(5, 200);
    {
        let cache = open(dir.path(), DEFAULT_HOT_BYTES);
        for block in &blocks[..100] {
            cache.put(block).expect("put");
        }
    }
    let first_id = open(dir.path(), DEFAULT_HOT_BYTES).stats().dictionary_id;
    assert_ne!(first_id, 0, "a dictionary is trained after 8 blocks");
    {
        // Past its young phase (it has a dictionary): a retrain leaves older files alone.
        let cache = open(dir.path(), DEFAULT_HOT_BYTES);
        cache.set_retrain_every(60);
        for block in &blocks[100..] {
            cache.put(block).expect("put");
        }
        assert_ne!(cache.stats().dictionary_id, first_id, "retrained");
    }
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("dict"))
        .expect("dict")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        cache.stats().dictionaries,
        2,
        "{files:?} {:#?}",
        cache.stats()
    );
    let old = frame_of(&cache, &blocks[0].hash);
    let new = frame_of(&cache, &blocks[199].hash);
    let id = |frame: &[u8]| zstd::zstd_safe::get_dict_id_from_frame(frame).map(u32::from);
    assert_eq!(id(&old), Some(first_id));
    assert_ne!(id(&new), Some(first_id));
    for block in &blocks {
        assert_eq!(cache.get(&block.hash).as_deref(), Some(block));
    }
    assert_eq!(cache.stats().corrupt_dropped, 0);
    assert_eq!(cache.stats().disk_hits, 200);
}

/// Ranks 0..n drawn with probability ∝ 1/(rank+1)^s.
struct Zipf {
    cdf: Vec<f64>,
    rng: crate::corpus::SplitMix64,
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
        Zipf {
            cdf,
            rng: crate::corpus::SplitMix64(seed),
        }
    }

    fn sample(&mut self) -> usize {
        let u = (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64;
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
        let j = (zipf.rng.next() % (i as u64 + 1)) as usize;
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

/// A chain stand-in for the feed: blocks by height, genesis first.
#[derive(Clone)]
struct FakeChain(Arc<parking_lot::Mutex<Vec<Block>>>);

impl FakeChain {
    fn new(blocks: &[Block]) -> FakeChain {
        let genesis = Block::new(
            0,
            1,
            crate::chain::block::ZERO_HASH,
            crate::chain::block::Caller::default(),
            "opdbus-blockchain".into(),
            "genesis".into(),
            "{}".into(),
        );
        let mut all = vec![genesis];
        all.extend_from_slice(blocks);
        FakeChain(Arc::new(parking_lot::Mutex::new(all)))
    }
}

impl BlockSource for FakeChain {
    fn head(&self) -> (u64, Hash) {
        let blocks = self.0.lock();
        let last = blocks.last().expect("genesis at least");
        (last.height, last.hash)
    }
    fn block_at(&self, height: u64) -> Option<Block> {
        self.0.lock().get(height as usize).cloned()
    }
    fn chain_id(&self) -> [u8; 16] {
        [7; 16]
    }
}

#[tokio::test]
async fn a_full_queue_skips_without_blocking_and_the_gap_is_filled_from_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    let blocks = corpus::blocks(8, 200);
    let chain = FakeChain::new(&blocks);
    let feed = CacheFeed::new(cache.clone(), 32);
    // The thread is not running yet: the queue fills and the rest is skipped, without waiting.
    for batch in blocks.chunks(10) {
        feed.offer(batch.to_vec());
    }
    let stats = cache.stats();
    assert_eq!(stats.queued_blocks, 30);
    assert_eq!(stats.skipped_writes, 170);
    feed.start(chain.clone(), 0, Counted::Yes).expect("start");
    feed.caught_up(200).await.expect("caught up");
    let stats = cache.stats();
    assert_eq!(
        stats.total_entries, 201,
        "genesis and every block: {stats:#?}"
    );
    assert_eq!(stats.complete_through, 200);
    assert_eq!(stats.queued_blocks, 0);
    for block in &blocks {
        assert!(cache.on_disk(&block.hash));
    }
    feed.stop();
    assert!(matches!(
        feed.caught_up(200).await,
        Err(CacheError::Stopped)
    ));
    let state = std::fs::read_to_string(dir.path().join("state")).expect("state file");
    assert!(state.contains("complete_through=200"), "{state}");
}

#[tokio::test]
async fn a_restart_resumes_from_the_state_file_and_preloads_the_newest_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(9, 50);
    let chain = FakeChain::new(&blocks);
    {
        let feed = CacheFeed::new(open(dir.path(), DEFAULT_HOT_BYTES), 1024);
        feed.start(chain.clone(), 0, Counted::Yes).expect("start");
        feed.caught_up(50).await.expect("caught up");
        feed.stop();
    }
    let more = corpus::blocks(9, 60);
    chain.0.lock().extend_from_slice(&more[50..]);
    // As the daemon opens it: the cache thread counts the 51 entries before anything else.
    let cache = BlockCache::open_uncounted(&CacheOptions::new(dir.path())).expect("open");
    assert_eq!(cache.stats().total_entries, 0);
    let feed = CacheFeed::new(cache.clone(), 1024);
    feed.start(chain.clone(), 20, Counted::NotYet)
        .expect("start");
    feed.caught_up(60).await.expect("caught up");
    let stats = cache.stats();
    assert_eq!(stats.total_entries, 61);
    // The 20 newest blocks (41..=60), walked back from the head: 51..=60 from the chain (the
    // cache lacked them), 41..=50 from the disk tier; nothing older.
    for block in &more[40..60] {
        assert!(
            cache.is_hot(&block.hash),
            "height {} not pre-loaded",
            block.height
        );
    }
    for block in &more[..40] {
        assert!(
            !cache.is_hot(&block.hash),
            "height {} pre-loaded",
            block.height
        );
    }
    feed.stop();
}

#[tokio::test]
async fn caught_up_names_the_first_block_the_cache_could_not_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    let cache = open(&cache_dir, DEFAULT_HOT_BYTES);
    let blocks = corpus::blocks(10, 5);
    let chain = FakeChain::new(&blocks);
    let feed = CacheFeed::new(cache.clone(), 1024);
    feed.start(chain.clone(), 0, Counted::Yes).expect("start");
    feed.caught_up(5).await.expect("caught up");
    // A file where the packs should be: the next write fails (the pack is closed while the
    // thread is idle; closed here as well, so the thread cannot be mid-write).
    cache.idle();
    let next = corpus::blocks(10, 6).pop().expect("block 6");
    let packs = cache_dir.join("packs");
    std::fs::remove_dir_all(&packs).expect("remove the packs");
    std::fs::write(&packs, b"in the way").expect("block the packs");
    chain.0.lock().push(next.clone());
    feed.offer(vec![next.clone()]);
    match feed.caught_up(6).await {
        Err(CacheError::Incomplete {
            height: 6,
            first_missing: 6,
            reason,
        }) => assert!(!reason.is_empty()),
        other => panic!("expected Incomplete at 6, got {other:?}"),
    }
    let stats = cache.stats();
    assert_eq!(stats.write_failures, 1);
    assert_eq!(stats.complete_through, 5);
    // Still fine for the heights it has.
    feed.caught_up(5)
        .await
        .expect("heights up to 5 are complete");
    feed.stop();
}

#[tokio::test]
async fn get_block_reads_through_to_the_chain_and_fills_the_cache() {
    use crate::service::{ChainOptions, OptimizedBlockchain};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = ChainOptions::new(dir.path().join("chain"));
    options.numa = None;
    let mut cache_options = CacheOptions::new(dir.path().join("cache"));
    cache_options.preload_blocks = 0;
    let chain = OptimizedBlockchain::with_cache(options.clone(), cache_options.clone())
        .await
        .expect("open");
    let mut hashes = Vec::new();
    for footprint in corpus::footprints(12, 20) {
        hashes.push(chain.add_footprint(footprint).await.expect("add"));
    }
    chain.cache_caught_up(20).await.expect("caught up");
    chain.shutdown().await;
    // The cache is gone; a restart without pre-load starts cold and refills on reads.
    std::fs::remove_dir_all(dir.path().join("cache")).expect("delete cache");
    let chain = OptimizedBlockchain::with_cache(options, cache_options)
        .await
        .expect("reopen");
    let unknown = "00".repeat(32);
    assert_eq!(
        chain.get_cached_block(&unknown).await.expect("lookup"),
        None
    );
    assert_eq!(
        chain.get_cached_block("not a hash").await.expect("lookup"),
        None
    );
    let block = chain
        .get_block(&hashes[4])
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(block.hash_hex(), hashes[4]);
    let cached = chain
        .get_cached_block(&hashes[4])
        .await
        .expect("lookup")
        .expect("filled by get_block");
    assert_eq!(cached, block);
    chain.cache_caught_up(20).await.expect("rebuilt");
    let stats = chain.cache_stats().await.expect("stats");
    assert_eq!(stats.total_entries, 21);
    assert!(stats.hits >= 1);
    assert!(stats.misses >= 1);
    chain.shutdown().await;
}

#[test]
fn hot_json_is_rendered_once_from_the_cached_block_charged_and_never_read_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(21, 3);
    let (a, b, absent) = (&blocks[0], &blocks[1], &blocks[2]);
    {
        let cache = open(dir.path(), DEFAULT_HOT_BYTES);
        cache.put(a).expect("put");
        cache.put(b).expect("put");
        assert_eq!(cache.stats().hot_bytes, hot_weight(a) + hot_weight(b));
        assert!(cache.get_hot_json(&absent.hash).is_none());
        let (height, json) = cache.get_hot_json(&a.hash).expect("a is in RAM");
        assert_eq!((height, &*json), (a.height, a.to_json().as_str()));
        // Kept beside the block and charged to the bound; the next read shares it.
        let expected = hot_weight(a) + hot_json_weight(&json) + hot_weight(b);
        assert_eq!(cache.stats().hot_bytes, expected);
        let (_, again) = cache.get_hot_json(&a.hash).expect("still in RAM");
        assert!(Arc::ptr_eq(&json, &again));
        assert_eq!(cache.get_hot(&a.hash).as_deref(), Some(a));
        let stats = cache.stats();
        // A miss of the RAM-only lookup is left for the lookup that follows it to count.
        assert_eq!((stats.hot_hits, stats.disk_hits, stats.misses), (3, 0, 0));
    }
    // A new process: b is on disk only, and the RAM-only lookup does not go there.
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    assert!(cache.get_hot_json(&b.hash).is_none());
    assert_eq!(cache.stats().disk_hits, 0);
    assert_eq!(cache.get(&b.hash).as_deref(), Some(b)); // disk hit, re-hashed, promoted
    let (_, json) = cache.get_hot_json(&b.hash).expect("promoted");
    assert_eq!(&*json, b.to_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_accessor_answers_from_ram_only_and_feeds_the_predictor() {
    use crate::chain::block::parse_hash;
    use crate::service::{BlockKey, ChainOptions, OptimizedBlockchain};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = ChainOptions::new(dir.path().join("chain"));
    options.numa = None;
    let mut cache_options = CacheOptions::new(dir.path().join("cache"));
    cache_options.preload_blocks = 0;
    let chain = OptimizedBlockchain::with_cache(options.clone(), cache_options.clone())
        .await
        .expect("open");
    let mut hashes = Vec::new();
    for footprint in corpus::footprints(22, 20) {
        hashes.push(chain.add_footprint(footprint).await.expect("add"));
    }
    chain.cache_caught_up(20).await.expect("caught up");
    // Committed blocks are in RAM: by hash and by height, the block's own JSON.
    let block = chain
        .get_block(&hashes[5])
        .await
        .expect("get")
        .expect("exists");
    let hash = parse_hash(&hashes[5]).expect("hex");
    let by_hash = chain.get_block_json_hot("r0", BlockKey::Hash(hash));
    assert_eq!(by_hash.as_deref(), Some(block.to_json().as_str()));
    let by_height = chain.get_block_json_hot("r0", BlockKey::Height(block.height));
    assert_eq!(by_height.as_deref(), Some(block.to_json().as_str()));
    assert!(chain
        .get_block_json_hot("r0", BlockKey::Height(999))
        .is_none());
    chain.shutdown().await;

    // Restarted without pre-load: every block is in the disk tier, none in RAM, and the
    // accessor reads nothing from disk.
    let chain = OptimizedBlockchain::with_cache(options, cache_options)
        .await
        .expect("reopen");
    chain.cache_caught_up(20).await.expect("caught up");
    for height in 0..20 {
        assert!(chain
            .get_block_json_hot("r", BlockKey::Height(height))
            .is_none());
    }
    assert_eq!(chain.cache_stats().await.expect("stats").disk_hits, 0);
    // A reader walks 2, 3 (async path, filling RAM); 4 is in RAM through another reader. Its
    // read of 4 through the accessor continues the walk, so 5..8 are pre-loaded.
    for (reader, height) in [("r", 2), ("r", 3), ("other", 4)] {
        chain
            .get_block_by_height_as(reader, height)
            .await
            .expect("read")
            .expect("exists");
    }
    let hot = |height: u64| {
        let hash = chain.chain().reader().hash_at(height).expect("height");
        chain.cache().is_hot(&hash)
    };
    assert!(!(5..=8).any(hot), "nothing predicted yet");
    assert!(chain.get_block_json_hot("r", BlockKey::Height(4)).is_some());
    let predicted = async {
        while !(5..=8).all(hot) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), predicted)
        .await
        .expect("the blocks after the walk were pre-loaded");
    assert!(!hot(9), "only the lookahead is pre-loaded");
    chain.shutdown().await;
}

/// The figures of docs/cache.md: `cargo test --lib cache::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement for the docs, not a check"]
fn measure_compression_on_the_corpus() {
    for n in [5usize, 10, 20, 40, 100, 400, 2000, 10_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), DEFAULT_HOT_BYTES);
        let blocks = corpus::blocks(1, n);
        // As the daemon's cache: with the chain's links, so prev_hash is left out.
        cache.set_links(corpus::links(&blocks));
        let mut plain = 0usize;
        for block in &blocks {
            cache.put(block).expect("put");
            plain += zstd::bulk::compress(&block.encode(), ZSTD_LEVEL)
                .expect("zstd")
                .len();
        }
        let s = cache.stats();
        eprintln!(
            "{n:>6} blocks: avg block {:>4} B, per-block zstd without dictionary {:.2}x, with dictionary {:.2}x (avg file {} B), counting the {} dictionaries ({} B) too {:.2}x",
            s.canonical_bytes / n as u64,
            s.canonical_bytes as f64 / plain as f64,
            s.compression_ratio,
            s.compressed_bytes / n as u64,
            s.dictionaries,
            s.dictionary_bytes,
            s.canonical_bytes as f64 / s.disk_usage_bytes as f64,
        );
    }
}

/// What the cache costs the writer, in-process:
/// `cargo test --release --lib cache::tests::measure_streaming -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for the docs, not a check"]
async fn measure_streaming_with_and_without_the_cache() {
    use crate::service::{ChainOptions, OptimizedBlockchain, StreamingBlockchain};
    const N: usize = 100_000;
    let corpus = corpus::footprints(13, N);
    for with_cache in [false, true, false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = ChainOptions::new(dir.path().join("chain"));
        options.numa = None;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for footprint in &corpus {
            tx.send(footprint.clone()).expect("send");
        }
        drop(tx);
        let started = std::time::Instant::now();
        if with_cache {
            let chain = OptimizedBlockchain::with_cache(
                options,
                CacheOptions::new(dir.path().join("cache")),
            )
            .await
            .expect("open");
            chain.start_footprint_receiver(rx).await;
            let durable = started.elapsed();
            chain.cache_caught_up(N as u64).await.expect("caught up");
            let cached = started.elapsed();
            let stats = chain.cache_stats().await.expect("stats");
            eprintln!(
                "with cache:    {:>8.0} durable footprints/s; cache complete after {:.2} s ({:.0} blocks/s), skipped {} (filled in from the chain), ratio {:.2}",
                N as f64 / durable.as_secs_f64(),
                cached.as_secs_f64(),
                N as f64 / cached.as_secs_f64(),
                stats.skipped_writes,
                stats.compression_ratio
            );
            chain.shutdown().await;
        } else {
            let chain = StreamingBlockchain::open(options).await.expect("open");
            chain.start_footprint_receiver(rx).await;
            eprintln!(
                "without cache: {:>8.0} durable footprints/s",
                N as f64 / started.elapsed().as_secs_f64()
            );
            chain.shutdown().await;
        }
    }
}

#[tokio::test]
async fn an_unwritable_cache_costs_one_failed_write_not_one_per_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    std::fs::create_dir_all(&cache_dir).expect("cache dir");
    // A file where the packs directory belongs: every write fails.
    std::fs::write(cache_dir.join("packs"), b"in the way").expect("block it");
    let cache = open(&cache_dir, DEFAULT_HOT_BYTES);
    let chain = FakeChain::new(&corpus::blocks(14, 500));
    let feed = CacheFeed::new(cache.clone(), 1024);
    feed.start(chain, 0, Counted::Yes).expect("start");
    match feed.caught_up(500).await {
        Err(CacheError::Incomplete {
            first_missing: 0, ..
        }) => {}
        other => panic!("expected Incomplete from genesis, got {other:?}"),
    }
    let stats = cache.stats();
    assert_eq!(stats.write_failures, 1, "{stats:#?}");
    assert_eq!(stats.complete_through, -1);
    assert_eq!(stats.total_entries, 0);
    feed.stop();
}

/// Blocks per second the disk tier stores, alone (no chain):
/// `cargo test --release --lib cache::tests::measure_put -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement for the docs, not a check"]
fn measure_put_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    let blocks = corpus::blocks(15, 30_000);
    for block in &blocks[..5000] {
        cache.put(block).expect("put"); // past the young phase's recompressions
    }
    let started = std::time::Instant::now();
    for block in &blocks[5000..] {
        cache.put(block).expect("put");
    }
    let put = 25_000.0 / started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let mut encoder = dictionary::Encoder::new(ZSTD_LEVEL, None).expect("encoder");
    for block in &blocks[5000..] {
        encoder.compress(&block.encode()).expect("compress");
    }
    let compress = 25_000.0 / started.elapsed().as_secs_f64();
    let cache = open(dir.path(), 1 << 20);
    let started = std::time::Instant::now();
    for block in &blocks[5000..] {
        cache.get(&block.hash).expect("stored");
    }
    let load = 25_000.0 / started.elapsed().as_secs_f64();
    eprintln!("put {put:.0} blocks/s; compression alone {compress:.0} blocks/s; disk loads {load:.0} blocks/s");
}

#[test]
fn blocks_are_stored_without_their_link_and_read_back_with_the_chains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = corpus::blocks(5, 300);
    let plain_dir = tempfile::tempdir().expect("tempdir");
    let plain = open(plain_dir.path(), DEFAULT_HOT_BYTES);
    let linked = open(dir.path(), DEFAULT_HOT_BYTES);
    linked.set_links(corpus::links(&blocks));
    for block in &blocks {
        plain.put(block).expect("put");
        linked.put(block).expect("put");
    }
    let (plain, stats) = (plain.stats(), linked.stats());
    eprintln!(
        "ratio with the link stored {:.2}x, without {:.2}x",
        plain.compression_ratio, stats.compression_ratio
    );
    assert!(stats.compressed_bytes + 300 * 25 < plain.compressed_bytes);
    drop(linked);

    // Read by a process that has the chain: every block, re-hashed.
    let reader = open(dir.path(), DEFAULT_HOT_BYTES);
    reader.set_links(corpus::links(&blocks));
    for block in &blocks {
        assert_eq!(reader.get(&block.hash).as_deref(), Some(block));
    }
    assert_eq!(reader.stats().disk_hits, 300);

    // Without the chain's hashes: misses, and nothing is dropped as damage.
    let unlinked = open(dir.path(), DEFAULT_HOT_BYTES);
    assert!(unlinked.get(&blocks[10].hash).is_none());
    let stats = unlinked.stats();
    assert_eq!((stats.misses, stats.corrupt_dropped), (1, 0), "{stats:#?}");
    assert_eq!(stats.total_entries, 300);

    // With a link that is not the chain's (another chain's hashes): the block re-hashes to
    // something else and is refused as damage.
    let other = corpus::blocks(6, 300);
    let forged = open(dir.path(), DEFAULT_HOT_BYTES);
    forged.set_links(corpus::links(&other));
    assert!(forged.get(&blocks[10].hash).is_none());
    assert_eq!(forged.stats().corrupt_dropped, 1);
}

#[test]
fn a_batch_is_stored_back_to_back_and_reads_back_block_by_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = corpus::blocks(8, 300);
    let blocks: Vec<Arc<EncodedBlock>> = plain
        .iter()
        .map(|block| Arc::new(EncodedBlock::from(block.clone())))
        .collect();
    {
        let cache = open(dir.path(), DEFAULT_HOT_BYTES);
        cache.set_links(corpus::links(&plain));
        assert_eq!(cache.put_encoded(&blocks[5]).expect("put"), Put::Written);
        let before = cache.inner.disk.counters.pack_bytes.load(Relaxed);
        // Batches of 1, 7 and 292 blocks; the one stored already is left alone.
        let mut results = Vec::new();
        for range in [0..1, 1..8, 8..300] {
            results.extend(cache.put_encoded_many(&blocks[range]));
        }
        for (height, result) in results.iter().enumerate() {
            let expected = if height == 5 {
                Put::Present
            } else {
                Put::Written
            };
            assert_eq!(
                result.as_ref().expect("stored"),
                &expected,
                "height {height}"
            );
        }
        let stats = cache.stats();
        assert_eq!(stats.total_entries, 300, "{stats:#?}");
        // Every record went in whole, back to back after those before.
        let written = cache.inner.disk.counters.pack_bytes.load(Relaxed) - before;
        let [pack] = &packs(dir.path())[..] else {
            panic!("one pack: {:?}", packs(dir.path()));
        };
        assert_eq!(
            std::fs::metadata(pack).expect("stat").len(),
            before + written
        );
        for block in &blocks {
            let (_, offset, len) = cache.inner.disk.locate(&block.hash).expect("indexed");
            assert!(offset + len as u64 <= before + written);
        }
    }
    // A fresh process finds each block on disk, re-hashed.
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    cache.set_links(corpus::links(&plain));
    for block in &blocks {
        assert_eq!(cache.get(&block.hash).as_deref(), Some(&*block.block));
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.disk_hits, stats.corrupt_dropped),
        (300, 0),
        "{stats:#?}"
    );
}

#[test]
fn a_batch_that_cannot_be_written_fails_each_of_its_blocks_and_indexes_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file where the packs directory belongs: every write fails.
    std::fs::write(dir.path().join("packs"), b"in the way").expect("block it");
    let cache = open(dir.path(), DEFAULT_HOT_BYTES);
    let blocks: Vec<Arc<EncodedBlock>> = corpus::blocks(9, 20)
        .into_iter()
        .map(|block| Arc::new(EncodedBlock::from(block)))
        .collect();
    let results = cache.put_encoded_many(&blocks);
    assert_eq!(results.len(), 20);
    assert!(results.iter().all(Result::is_err), "{results:?}");
    let stats = cache.stats();
    assert_eq!(
        (stats.total_entries, stats.write_failures),
        (0, 20),
        "{stats:#?}"
    );
    assert!(blocks.iter().all(|b| !cache.on_disk(&b.hash)));
}
