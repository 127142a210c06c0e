//! Snapshots: names, manifests, the schedule and the retention plan (pure or file-local), where
//! snapshots live (`layout`), taking a unified snapshot of chain + cache (`unified`), and the
//! scheduled snapshot-and-prune task (`timeline`).

pub mod backup;
pub mod layout;
pub mod manifest;
pub mod naming;
pub mod retention;
pub mod schedule;
pub mod timeline;
pub mod unified;
pub mod utc;

pub use manifest::{
    read_manifest, write_manifest, Manifest, ManifestError, SnapshotMethod, MANIFEST_FILE,
};
pub use naming::{parse_snapshot_name, snapshot_name, SnapshotName, SnapshotNameError};
pub use retention::{select_keep, KeepPlan, KeepReason, Kept, RetentionPolicy, SnapshotEntry};
pub use schedule::{SnapshotInterval, SnapshotIntervalError, SNAPSHOT_INTERVAL_ENV};
pub use unified::{
    CacheCatchUp, PausedAt, Pending, SnapshotError, Snapshotter, UnifiedSnapshot, WriterBarrier,
};
