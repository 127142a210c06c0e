//! `opdbus-bench bench-vectors`: similarity search and predictive caching, measured.

use crate::Outcome;
use opdbus_testkit::corpus;
use opdbus_testkit::read_bench;
use opdbus_testkit::vector_bench;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(sizes: &[u64], queries: usize, read_blocks: u64, json: Option<PathBuf>) -> Outcome {
    let mut vectors = Vec::new();
    println!(
        "{:>10} {:>9} {:>12} {:>12} {:>12} {:>12}",
        "blocks", "recall@10", "query p50", "query p99", "build", "index RAM"
    );
    for &blocks in sizes {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let report = vector_bench::run(dir.path(), blocks, queries, &|seed, n| {
            corpus::footprints(seed, n)
        })
        .map_err(|e| e.to_string())?;
        println!(
            "{:>10} {:>9.3} {:>9.0} µs {:>9.0} µs {:>10.1} s {:>9.1} MB",
            report.blocks,
            report.recall_at_10,
            report.query_p50_us,
            report.query_p99_us,
            report.build_seconds,
            report.index_bytes as f64 / 1e6
        );
        vectors.push(report);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
    let reads = runtime
        .block_on(read_bench::run(dir.path(), read_blocks, read_blocks))
        .map_err(|e| e.to_string())?;
    println!(
        "read mix over {} blocks, {} reads, hot tier {:.0}% of the data: hot hit rate {:.1}% with LRU, {:.1}% with prediction",
        reads.blocks,
        reads.reads,
        reads.hot_fraction * 100.0,
        reads.lru_hot_hit_rate * 100.0,
        reads.predictive_hot_hit_rate * 100.0
    );
    if let Some(path) = json {
        let out = serde_json::json!({ "vectors": vectors, "reads": reads });
        std::fs::write(&path, format!("{out:#}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
