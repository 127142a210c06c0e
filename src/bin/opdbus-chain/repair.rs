//! `opdbus-chain verify --repair`: rewrite damaged chain blocks from the cache's verified
//! copies. The only command that writes to the chain directory; it holds the writer's lock.

use crate::Outcome;
use opdbus_blockchain::cache::repair::{repair_from_cache, RepairError};
use opdbus_blockchain::chain::error::ChainError;
use std::path::Path;
use std::process::ExitCode;

pub fn verify_and_repair(chain_dir: &Path, cache_dir: &Path) -> Outcome {
    let report = repair_from_cache(chain_dir, cache_dir).map_err(|err| match err {
        RepairError::Chain(ChainError::InUse(dir)) => format!(
            "{} is in use (is opdbus-blockchaind running?); stop it before repairing",
            dir.display()
        ),
        other => other.to_string(),
    })?;
    for repaired in &report.repaired {
        println!(
            "repaired block at height {} ({}) in {} from the cache copy in {}",
            repaired.height,
            hex::encode(repaired.hash),
            repaired.segment.display(),
            cache_dir.display()
        );
    }
    if let Some((height, reason)) = &report.unrepaired {
        eprintln!("opdbus-chain: block at height {height} could not be repaired: {reason}");
    }
    println!("{}", report.verify.summary());
    Ok(if report.verify.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
