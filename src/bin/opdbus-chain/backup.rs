//! `opdbus-chain backup`, `restore` and `verify-backup`: btrfs send/receive of unified
//! snapshots, verified on arrival, and putting one back as a working chain + cache.

use crate::transparency::failed;
use crate::Outcome;
use opdbus_blockchain::snapshot::backup::{self, BackupTarget, VerifiedBackup};
use opdbus_blockchain::snapshot::layout::SnapshotLayout;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What a verified copy holds, for --json.
fn verified_json(verified: &VerifiedBackup) -> serde_json::Value {
    serde_json::json!({
        "blocks_checked": verified.blocks_checked,
        "height": verified.height,
        "head_hash": verified.head_hash,
    })
}

pub fn backup(chain_dir: PathBuf, cache_dir: PathBuf, target: BackupTarget, json: bool) -> Outcome {
    let layout = SnapshotLayout::new(chain_dir, cache_dir);
    let report = backup::backup(&layout, &target).map_err(|e| e.to_string())?;
    if json {
        let out = serde_json::json!({
            "ok": true,
            "name": report.name,
            // Whether it was sent whole; null when the target held it already.
            "full": (!report.already_there).then_some(report.parent.is_none()),
            "parent": report.parent,
            "dest": report.dest,
            "already_there": report.already_there,
            "verified": report.verified.as_ref().map(verified_json),
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
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
pub fn verify_backup(dir: &Path, json: bool) -> Outcome {
    match backup::verify_backup(dir) {
        Ok(verified) if json => {
            let mut out = verified_json(&verified);
            out["ok"] = true.into();
            out["dir"] = dir.display().to_string().into();
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ backup::BackupError::Verification { .. }) if json => {
            Ok(failed(true, &err.to_string()))
        }
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

pub fn restore(from: &Path, chain_dir: &Path, cache_dir: &Path, json: bool) -> Outcome {
    // Held (stopped and masked) until the end of this function, so that no bus call activates
    // the daemon on a half-restored directory.
    let _unit = UnitHold::take()?;
    match backup::restore(from, chain_dir, cache_dir) {
        Ok(report) if json => {
            let mut out = verified_json(&report.verified);
            out["ok"] = true.into();
            out["from"] = from.display().to_string().into();
            out["chain_dir"] = chain_dir.display().to_string().into();
            out["chain_subvolume"] = report.chain_subvolume.into();
            out["cache_dir"] = cache_dir.display().to_string().into();
            out["marker"] = report.marker.display().to_string().into();
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ backup::BackupError::Verification { .. }) if json => {
            Ok(failed(true, &format!("{err}; nothing was restored")))
        }
        Ok(report) => {
            println!(
                "restored {} to {} ({}) and {}: chain verified, head at height {} ({}); {} \
                 records its chain id; start the daemon on them",
                from.display(),
                chain_dir.display(),
                if report.chain_subvolume {
                    "btrfs subvolume"
                } else {
                    "plain directory"
                },
                cache_dir.display(),
                report.verified.height,
                report.verified.head_hash,
                report.marker.display()
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

/// The daemon's unit, as systemd knows it.
const UNIT: &str = "opdbus-blockchaind.service";
/// While a restore runs into the chain directory the unit serves, the unit is stopped and
/// masked for this boot (`systemctl mask --runtime`), so that a bus call cannot activate the
/// daemon meanwhile; dropping the hold unmasks it again (unless it was masked before). Held
/// whenever the unit is loaded, whichever directory it serves: its directory can come from the
/// config file, `Environment=` drop-ins or an `ExecStart=` override, and guessing it wrong would
/// let activation start the daemon mid-restore. Without systemd or the unit, nothing is held.
struct UnitHold {
    /// It was masked before we came (by the operator): leave it masked.
    was_masked: bool,
}

impl UnitHold {
    fn take() -> Result<Option<UnitHold>, String> {
        let Some(load_state) = systemctl(&["show", "--property=LoadState", "--value", UNIT])
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        else {
            return Ok(None);
        };
        let was_masked = match load_state.as_str() {
            "loaded" => false,
            "masked" => true,
            _ => return Ok(None),
        };
        if !was_masked {
            // Ctrl-C ends the process without running Drop: say up front how to undo the mask.
            eprintln!(
                "opdbus-chain: masking {UNIT} for the restore; if this is interrupted, run: \
                 systemctl unmask --runtime {UNIT}"
            );
            run_systemctl(&["mask", "--runtime", UNIT])?;
        }
        let hold = UnitHold { was_masked };
        run_systemctl(&["stop", UNIT])?;
        eprintln!(
            "opdbus-chain: {UNIT} stopped and masked for the restore{}",
            if was_masked {
                " (it was masked already and stays so)"
            } else {
                "; it is unmasked again when the restore ends"
            }
        );
        Ok(Some(hold))
    }
}

impl Drop for UnitHold {
    fn drop(&mut self) {
        if !self.was_masked {
            if let Err(err) = run_systemctl(&["unmask", "--runtime", UNIT]) {
                eprintln!(
                    "opdbus-chain: {err}; unmask it with `systemctl unmask --runtime {UNIT}`"
                );
            }
        }
    }
}

fn systemctl(args: &[&str]) -> std::io::Result<std::process::Output> {
    std::process::Command::new("systemctl").args(args).output()
}

fn run_systemctl(args: &[&str]) -> Result<(), String> {
    let out = systemctl(args).map_err(|e| format!("cannot run systemctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
