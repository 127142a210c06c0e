//! Similarity search measured: recall@10 against exact f32 search, query latency, index build
//! time and memory, on a chain of N realistic footprints (`opdbus-bench bench-vectors`).

use opdbus_blockchain::chain::block::Caller;
use opdbus_blockchain::chain::store::{self, StoreOptions};
use opdbus_blockchain::footprint::PluginFootprint;
use opdbus_blockchain::vector::embed::{cosine, Embedder, HashingEmbedder};
use opdbus_blockchain::vector::index::{Filter, VectorIndex, RECORD_LEN};
use std::sync::Arc;
use std::time::Instant;

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VectorBench {
    pub blocks: u64,
    pub queries: usize,
    /// Seconds to embed every block and build the index from the chain.
    pub build_seconds: f64,
    /// Bytes the index holds in RAM (int8 vectors and per-block fields).
    pub index_bytes: u64,
    pub query_p50_us: f64,
    pub query_p99_us: f64,
    /// Mean share of the exact top 10 (ties at the 10th score count as hits) found.
    pub recall_at_10: f64,
}

/// Builds a chain of `blocks` footprints from `generate(seed, n)` in `dir`, then measures.
pub fn run(
    dir: &std::path::Path,
    blocks: u64,
    queries: usize,
    generate: &dyn Fn(u64, usize) -> Vec<PluginFootprint>,
) -> opdbus_blockchain::chain::error::Result<VectorBench> {
    let (mut writer, reader, _) = store::open(dir, StoreOptions::default())?;
    let caller = Caller::this_process();
    let mut added = 0u64;
    while added < blocks {
        let n = (blocks - added).min(20_000) as usize;
        let items: Vec<_> = generate(added, n)
            .into_iter()
            .map(|f| (f, caller.clone()))
            .collect();
        writer.append(&items)?;
        added += n as u64;
    }
    drop(writer);

    let started = Instant::now();
    let index = VectorIndex::open(dir, reader.chain_id(), Arc::new(HashingEmbedder));
    index.catch_up(&reader)?;
    let build_seconds = started.elapsed().as_secs_f64();

    let probes: Vec<Vec<f32>> = generate(u64::MAX / 2, queries)
        .iter()
        .map(|f| HashingEmbedder.embed(&f.plugin_id, &f.operation, f.data_json()))
        .collect();
    // Exact scores of every block for every query, in one pass over the chain.
    let mut exact: Vec<Vec<f64>> = vec![Vec::with_capacity(blocks as usize); queries];
    for height in 1..=blocks {
        let Some(block) = reader.block_at(height)? else {
            break;
        };
        let vector = index.embed_block(&block);
        for (scores, probe) in exact.iter_mut().zip(&probes) {
            scores.push(cosine(probe, &vector));
        }
    }

    let mut latencies = Vec::with_capacity(queries);
    let mut recall_sum = 0.0;
    for (probe, scores) in probes.iter().zip(&exact) {
        let started = Instant::now();
        let found = index.search(&reader, probe, 10, &Filter::default())?;
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
        let mut sorted = scores.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let tenth = sorted.get(9).copied().unwrap_or(f64::MIN);
        let hits = found
            .iter()
            .filter(|m| scores[(m.height - 1) as usize] >= tenth - 1e-9)
            .count();
        recall_sum += hits as f64 / sorted.len().min(10) as f64;
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let last = latencies.len().saturating_sub(1);
        latencies
            .get((last as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(VectorBench {
        blocks,
        queries,
        build_seconds,
        index_bytes: index.len() * RECORD_LEN as u64,
        query_p50_us: pick(0.5),
        query_p99_us: pick(0.99),
        recall_at_10: recall_sum / queries.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(seed: u64, n: usize) -> Vec<PluginFootprint> {
        (0..n as u64)
            .map(|i| {
                let x = seed.wrapping_add(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                PluginFootprint::new(
                    ["network", "systemd", "firewall"][(x % 3) as usize],
                    ["create", "delete"][(x / 3 % 2) as usize],
                    serde_json::json!({"name": format!("eth{}", x % 50), "mtu": 1500 + x % 7}),
                )
            })
            .collect()
    }

    #[test]
    fn exact_search_recalls_the_exact_top_ten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = run(dir.path(), 2_000, 20, &simple).expect("bench");
        assert_eq!(report.blocks, 2_000);
        assert!(report.recall_at_10 >= 0.95, "{report:?}");
        assert!(report.index_bytes > 2_000 * 256, "{report:?}");
    }
}
