//! Snapshot building blocks, all pure or file-local: names, manifests, the schedule and the
//! retention plan. Taking a unified snapshot (pausing the writer, btrfs or hard-link copy) is
//! built on these and on `crate::btrfs`; nothing here touches the chain or runs a tool.

pub mod manifest;
pub mod naming;
pub mod retention;
pub mod schedule;
pub mod utc;

pub use manifest::{
    read_manifest, write_manifest, Manifest, ManifestError, SnapshotMethod, MANIFEST_FILE,
};
pub use naming::{parse_snapshot_name, snapshot_name, SnapshotName, SnapshotNameError};
pub use retention::{select_keep, KeepPlan, KeepReason, Kept, RetentionPolicy, SnapshotEntry};
pub use schedule::{SnapshotInterval, SnapshotIntervalError, SNAPSHOT_INTERVAL_ENV};
