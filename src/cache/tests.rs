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
