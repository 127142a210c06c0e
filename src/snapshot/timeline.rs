//! The daemon's snapshot timeline: take a unified snapshot when `OPDBUS_SNAPSHOT_INTERVAL`
//! says one is due, then prune by the retention policy.
//!
//! Pruning never deletes the newest snapshot, nor one that `.backup-parents.json` names as
//! the newest a backup target holds (the parent of that target's next incremental send): both
//! are pinned in [`select_keep`]. A failed snapshot or deletion is logged and retried at the
//! next slot; it never stops the daemon.

use super::backup::read_backup_parents;
use super::layout::{remove_snapshot_dir, SnapshotLayout, INCOMPLETE_PREFIX};
use super::retention::{select_keep, KeepPlan, RetentionPolicy, SnapshotEntry};
use super::schedule::SnapshotInterval;
use super::unified::Snapshotter;
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What [`prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub plan: KeepPlan,
    /// Names whose deletion failed, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Applies `policy` to the snapshots of `layout`: deletes (chain and cache side) every snapshot
/// the plan does not keep, oldest first, and any half-made `.incomplete-*` left by a crash.
/// Nothing is deleted while a backup holds the snapshots lock (it is retried next time).
pub fn prune(layout: &SnapshotLayout, policy: RetentionPolicy) -> std::io::Result<Pruned> {
    prune_with(layout, policy, false)
}

/// What pruning would keep and delete now (`opdbus-chain prune --dry-run`): the retention plan
/// with the newest snapshot and the backup parents pinned.
pub fn retention_plan(
    layout: &SnapshotLayout,
    policy: RetentionPolicy,
) -> std::io::Result<KeepPlan> {
    let entries: Vec<SnapshotEntry> = layout
        .list()?
        .iter()
        .filter_map(|name| SnapshotEntry::from_name(name))
        .collect();
    let pinned: HashSet<String> = read_backup_parents(layout)
        .map(|parents| parents.into_values().collect())
        .unwrap_or_else(|err| {
            // Without the record we cannot tell which snapshots are parents: keep them all.
            tracing::warn!(%err, "cannot read the backup parents; pruning nothing");
            entries.iter().map(|e| e.name.clone()).collect()
        });
    Ok(select_keep(&entries, policy, &pinned))
}

/// As [`prune`]; with `wait`, waits for a running backup instead of skipping.
pub fn prune_with(
    layout: &SnapshotLayout,
    policy: RetentionPolicy,
    wait: bool,
) -> std::io::Result<Pruned> {
    let Some(_lock) = layout.lock(wait)? else {
        tracing::info!("a backup is running; pruning waits for the next snapshot");
        return Ok(Pruned::default());
    };
    let plan = retention_plan(layout, policy)?;
    let mut pruned = Pruned {
        plan,
        failed: Vec::new(),
    };
    for name in &pruned.plan.delete {
        let mut sides = vec![layout.chain_snapshots().join(name)];
        if layout.cache_snapshots() != layout.chain_snapshots() {
            sides.push(layout.cache_snapshots().join(name));
        }
        // The chain side last: while it exists the snapshot still counts, and is retried.
        for dir in sides.iter().rev() {
            if let Err(err) = remove_snapshot_dir(dir) {
                pruned.failed.push((name.clone(), err.to_string()));
                break;
            }
        }
    }
    remove_incomplete(layout, STALE_INCOMPLETE);
    Ok(pruned)
}

/// A snapshot in progress is never older than this; an `.incomplete-*` entry that is, is what
/// a crash (kill -9 during Snapshot) left.
const STALE_INCOMPLETE: Duration = Duration::from_secs(60);

/// Removes `.incomplete-*` entries (half-made snapshots, btrfs subvolumes included) older than
/// `older_than` from both snapshot directories; returns what was removed. At start-up, where
/// no snapshot can be in progress (the daemon holds the chain's lock), `older_than` is zero.
pub fn remove_incomplete(layout: &SnapshotLayout, older_than: Duration) -> Vec<std::path::PathBuf> {
    let mut removed = Vec::new();
    let mut dirs = vec![layout.chain_snapshots()];
    if layout.cache_snapshots() != layout.chain_snapshots() {
        dirs.push(layout.cache_snapshots());
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let stale = older_than.is_zero()
                || entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > older_than);
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(INCOMPLETE_PREFIX));
            if ours && stale {
                let path = entry.path();
                match remove_snapshot_dir(&path) {
                    Ok(()) => {
                        tracing::info!(dir = %path.display(), "removed a half-made snapshot");
                        removed.push(path);
                    }
                    Err(err) => {
                        tracing::warn!(%err, dir = %path.display(), "cannot remove a half-made snapshot")
                    }
                }
            }
        }
    }
    removed
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The schedule the timeline follows; SIGHUP sends a new one (see `daemon`).
pub type TimelineSettings = (SnapshotInterval, RetentionPolicy);

/// Runs until the task is aborted or `settings`' sender is gone: snapshot when due, then prune.
/// A new interval or retention sent on `settings` takes effect at once (a sleep is cut short).
pub async fn run(
    snapshots: Snapshotter,
    mut settings: tokio::sync::watch::Receiver<TimelineSettings>,
) {
    let layout = snapshots.layout().clone();
    let mut announced = None;
    // When the last scheduled snapshot was asked for: with no block since, that returns the
    // newest snapshot again, whose name keeps its older time, and the next one would be due
    // at once, again and again.
    let mut last_asked: Option<i64> = None;
    loop {
        let (interval, policy) = *settings.borrow_and_update();
        if announced != Some((interval, policy))
            && (announced.is_some() || interval != SnapshotInterval::Off)
        {
            tracing::info!(%interval, hourly = policy.hourly, daily = policy.daily, weekly = policy.weekly, "snapshot timeline");
        }
        announced = Some((interval, policy));
        let last = layout
            .list()
            .ok()
            .and_then(|names| names.last().and_then(|n| SnapshotEntry::from_name(n)))
            .map(|e| e.time_utc_secs)
            .max(last_asked);
        let now = now_secs();
        let due = match interval {
            SnapshotInterval::Off => None,
            _ => interval.next_due(last, now),
        };
        let wait = match due {
            None => None,
            // Sleep in steps of at most a minute so that a clock change is noticed.
            Some(due) if due > now => Some((due - now).min(60) as u64),
            Some(_) => Some(0),
        };
        if wait != Some(0) {
            let sleep = async {
                match wait {
                    Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                changed = settings.changed() => if changed.is_err() { return },
            }
            continue;
        }
        // `take` logs the snapshot or its failure.
        if snapshots.take().await.is_ok() {
            last_asked = Some(now);
        } else {
            tracing::debug!("the scheduled snapshot is tried again in a minute");
            tokio::time::sleep(Duration::from_secs(60)).await;
            continue;
        }
        let pruning = {
            // Not while a snapshot (e.g. an on-demand one) is being made.
            let _one_at_a_time = snapshots.turn().await;
            let layout = layout.clone();
            tokio::task::spawn_blocking(move || prune(&layout, policy)).await
        };
        match pruning {
            Ok(Ok(pruned)) => {
                for (name, reason) in &pruned.failed {
                    tracing::warn!(
                        message_id = crate::journal::PRUNE_FAILED,
                        %name,
                        %reason,
                        "cannot delete the expired snapshot {name}: {reason}"
                    );
                }
                let deleted: Vec<&String> = pruned
                    .plan
                    .delete
                    .iter()
                    .filter(|name| !pruned.failed.iter().any(|(failed, _)| failed == *name))
                    .collect();
                if !deleted.is_empty() {
                    tracing::info!(
                        message_id = crate::journal::SNAPSHOTS_PRUNED,
                        deleted = crate::journal::list(&deleted),
                        kept = pruned.plan.keep.len(),
                        "snapshots pruned: deleted {}, kept {}",
                        deleted.len(),
                        pruned.plan.keep.len()
                    );
                }
            }
            Ok(Err(err)) => tracing::warn!(
                message_id = crate::journal::PRUNE_FAILED,
                %err,
                "cannot list snapshots to prune: {err}"
            ),
            Err(err) => tracing::warn!(
                message_id = crate::journal::PRUNE_FAILED,
                %err,
                "pruning failed: {err}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::backup::record_backup_parent;
    use crate::snapshot::layout::{CACHE_LEAF, CHAIN_LEAF};
    use crate::snapshot::naming::snapshot_name;
    use crate::snapshot::utc::{days_from_civil, SECS_PER_DAY};

    /// A synthetic month of snapshot directories (every 6 hours through November 2026), pruned
    /// with 5/5/5: exactly the expected names survive on both sides, a pinned backup parent
    /// survives, half-made ones go.
    #[test]
    fn pruning_a_month_of_snapshots_keeps_exactly_the_expected_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = SnapshotLayout::new(dir.path().join("blockchain"), dir.path().join("@cache"));
        let start = days_from_civil(2026, 11, 1) * SECS_PER_DAY;
        let names: Vec<String> = (0..30 * 4u64)
            .map(|i| snapshot_name(start + i as i64 * 6 * 3600, i))
            .collect();
        for name in &names {
            std::fs::create_dir_all(layout.chain_snapshot(name)).expect("mkdir");
            std::fs::create_dir_all(layout.cache_snapshot(name)).expect("mkdir");
        }
        let parent = names[10].clone();
        record_backup_parent(&layout, "/backup", &parent).expect("record");
        let half = layout
            .chain_snapshots()
            .join(format!("{INCOMPLETE_PREFIX}{}", names[119]));
        std::fs::create_dir_all(half.join(CHAIN_LEAF)).expect("mkdir");
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(&half)
            .and_then(|f| f.set_modified(old))
            .expect("age it");

        let pruned = prune(&layout, RetentionPolicy::default()).expect("prune");
        assert!(pruned.failed.is_empty(), "{:?}", pruned.failed);
        // Every 6 hours: newest 30th 18:00 (i = 119); hourly 5 = the last five snapshots
        // (i = 115..=119, one per hour that holds one); daily = 18:00 of 30th..26th
        // (i = 119, 115, 111, 107, 103); weekly = Mon 30th (W49), Sun 29th 18:00 (i = 115,
        // W48), Sun 22nd (i = 87), 15th (i = 59), 8th (i = 31); pinned i = 10.
        let mut expected: Vec<String> = [10, 31, 59, 87, 103, 107, 111, 115, 116, 117, 118, 119]
            .iter()
            .map(|&i| names[i].clone())
            .collect();
        expected.sort();
        assert_eq!(layout.list().expect("list"), expected);
        let cache_side =
            crate::snapshot::layout::list_snapshot_names(&layout.cache_snapshots(), CACHE_LEAF)
                .expect("list");
        assert_eq!(cache_side, expected);
        assert!(!half.exists(), "a stale half-made snapshot is removed");
    }
}
