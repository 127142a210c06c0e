//! `opdbus-chain backup`, `restore` and `verify-backup`: btrfs send/receive of unified
//! snapshots, verified on arrival, and putting one back as a working chain + cache.

use crate::Outcome;
use opdbus_blockchain::snapshot::backup::{self, BackupTarget};
use opdbus_blockchain::snapshot::layout::SnapshotLayout;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn backup(chain_dir: PathBuf, cache_dir: PathBuf, target: BackupTarget) -> Outcome {
    let layout = SnapshotLayout::new(chain_dir, cache_dir);
    let report = backup::backup(&layout, &target).map_err(|e| e.to_string())?;
    let how = match &report.parent {
        Some(parent) => format!("incremental from {parent}"),
        None => "full".to_owned(),
    };
    match (&report.dest, &report.verified) {
        (Some(dest), Some(verified)) if report.already_there => println!(
            "{} already holds {}: verified, height {} ({})",
            dest.display(),
            report.name,
            verified.height,
            verified.head_hash
        ),
        (Some(dest), Some(verified)) => println!(
            "sent {} ({how}) to {}: verified, {} blocks, head at height {} ({})",
            report.name,
            dest.display(),
            verified.blocks_checked,
            verified.height,
            verified.head_hash
        ),
        _ => println!(
            "sent {} ({how}) through the command; verify it where it landed with \
             `opdbus-chain verify-backup DIR/{}`",
            report.name, report.name
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when the backup verifies, 1 when it does not, 2 when it cannot be read.
pub fn verify_backup(dir: &Path) -> Outcome {
    match backup::verify_backup(dir) {
        Ok(verified) => {
            println!(
                "backup {} is intact: {} blocks checked, head at height {} ({}), cache manifest agrees",
                dir.display(),
                verified.blocks_checked,
                verified.height,
                verified.head_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ backup::BackupError::Verification { .. }) => {
            println!("{err}");
            Ok(ExitCode::FAILURE)
        }
        Err(err) => Err(err.to_string()),
    }
}

pub fn restore(from: &Path, chain_dir: &Path, cache_dir: &Path) -> Outcome {
    match backup::restore(from, chain_dir, cache_dir) {
        Ok(report) => {
            println!(
                "restored {} to {} ({}) and {}: chain verified, head at height {} ({}); start the daemon on them",
                from.display(),
                chain_dir.display(),
                if report.chain_subvolume {
                    "btrfs subvolume"
                } else {
                    "plain directory"
                },
                cache_dir.display(),
                report.verified.height,
                report.verified.head_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ backup::BackupError::Verification { .. }) => {
            eprintln!("opdbus-chain: {err}; nothing was restored");
            Ok(ExitCode::FAILURE)
        }
        Err(err) => Err(err.to_string()),
    }
}
