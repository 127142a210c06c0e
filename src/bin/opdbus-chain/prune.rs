//! `opdbus-chain prune`: applies the retention policy to the snapshots beside a chain, as the
//! daemon does after each scheduled snapshot (for snapshots taken on demand or by a timer).

use crate::Outcome;
use opdbus_blockchain::snapshot::layout::SnapshotLayout;
use opdbus_blockchain::snapshot::timeline::{prune_with, retention_plan};
use opdbus_blockchain::snapshot::RetentionPolicy;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn prune(
    chain_dir: PathBuf,
    cache_dir: PathBuf,
    policy: RetentionPolicy,
    dry_run: bool,
    json: bool,
) -> Outcome {
    let layout = SnapshotLayout::new(chain_dir, cache_dir);
    let mut failed: Vec<(String, String)> = Vec::new();
    let plan = if dry_run {
        retention_plan(&layout, policy)
    } else {
        prune_with(&layout, policy, true).map(|pruned| {
            for (name, reason) in &pruned.failed {
                eprintln!("opdbus-chain: cannot delete {name}: {reason}");
            }
            failed = pruned.failed;
            pruned.plan
        })
    }
    .map_err(|e| format!("{}: {e}", layout.chain_snapshots().display()))?;
    let not_deleted = |name: &String| !failed.iter().any(|(failed, _)| failed == name);
    if json {
        // A snapshot that could not be deleted is reported (and on stderr) but does not make
        // the run fail, as in the text output: the next run tries it again.
        let out = serde_json::json!({
            "ok": true,
            "dry_run": dry_run,
            "keep": plan.keep.iter().map(|kept| serde_json::json!({
                "name": kept.name,
                "reasons": kept.reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "delete": plan.delete.iter().filter(|name| not_deleted(name)).collect::<Vec<_>>(),
            "failed": failed.iter().map(|(name, reason)| serde_json::json!({
                "name": name,
                "reason": reason,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    for kept in &plan.keep {
        let reasons: Vec<String> = kept.reasons.iter().map(ToString::to_string).collect();
        println!("keep    {}  ({})", kept.name, reasons.join(", "));
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    // Those that could not be deleted were reported above.
    for name in plan.delete.iter().filter(|name| not_deleted(name)) {
        println!("{verb}  {name}");
    }
    Ok(ExitCode::SUCCESS)
}
