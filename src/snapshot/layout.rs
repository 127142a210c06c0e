//! Where snapshots live, and how directories become (or stop being) snapshots.
//!
//! ```text
//! <parent of chain dir>/.snapshots/<name>/chain    read-only snapshot of the chain (+ MANIFEST.json)
//! <parent of cache dir>/.snapshots/<name>/cache    read-only snapshot of the cache (+ MANIFEST.json)
//! <parent of chain dir>/.snapshots/.incomplete-<name>/   being made; never counted
//! <parent of chain dir>/.snapshots/.backup-parents.json  per backup target, the newest snapshot it holds
//! ```
//! When the chain and cache directories share a parent (the usual `/var/lib/op-dbus`), both
//! snapshots sit in the same `<name>` directory. Only entries whose name parses as a snapshot
//! name (see `naming`) count; a snapshot appears under that name only once it is complete
//! (manifest written, read-only), because it is made under `.incomplete-<name>` and renamed.
//! The fixed leaf names `chain` and `cache` are what `btrfs receive` recreates on the far side,
//! so a backup target holds `TARGET/<name>/chain` and `TARGET/<name>/cache`.

use super::naming::parse_snapshot_name;
use crate::btrfs;
use std::io;
use std::path::{Path, PathBuf};

/// The directory beside the chain and cache directories that holds their snapshots.
pub const SNAPSHOTS_DIR: &str = ".snapshots";
/// Leaf name of a chain snapshot (and of its received backup).
pub const CHAIN_LEAF: &str = "chain";
/// Leaf name of a cache snapshot (and of its received backup).
pub const CACHE_LEAF: &str = "cache";
/// Prefix of a snapshot still being made (or left half-made by a crash).
pub const INCOMPLETE_PREFIX: &str = ".incomplete-";

/// The snapshot locations of one chain + cache pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLayout {
    pub chain_dir: PathBuf,
    pub cache_dir: PathBuf,
}

impl SnapshotLayout {
    pub fn new(chain_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> SnapshotLayout {
        SnapshotLayout {
            chain_dir: chain_dir.into(),
            cache_dir: cache_dir.into(),
        }
    }

    /// `.snapshots` beside the chain directory.
    pub fn chain_snapshots(&self) -> PathBuf {
        snapshots_dir_beside(&self.chain_dir)
    }

    /// `.snapshots` beside the cache directory (often the same as the chain's).
    pub fn cache_snapshots(&self) -> PathBuf {
        snapshots_dir_beside(&self.cache_dir)
    }

    pub fn chain_snapshot(&self, name: &str) -> PathBuf {
        self.chain_snapshots().join(name).join(CHAIN_LEAF)
    }

    pub fn cache_snapshot(&self, name: &str) -> PathBuf {
        self.cache_snapshots().join(name).join(CACHE_LEAF)
    }

    /// Names of the complete snapshots, oldest first (byte order is time order).
    pub fn list(&self) -> io::Result<Vec<String>> {
        list_snapshot_names(&self.chain_snapshots(), CHAIN_LEAF)
    }
}

/// Held by a backup while it sends, and by pruning while it deletes, so that pruning never
/// removes a snapshot a backup is sending (`.snapshots/.lock`, `flock(2)`).
pub struct SnapshotsLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl SnapshotLayout {
    /// Takes the lock; waits for it when `wait`, else returns `None` when it is held.
    pub fn lock(&self, wait: bool) -> io::Result<Option<SnapshotsLock>> {
        use nix::fcntl::{Flock, FlockArg};
        let dir = self.chain_snapshots();
        crate::files::create_dir_all(&dir)?;
        let file = crate::files::open(
            crate::files::options(0o600)
                .create(true)
                .truncate(false)
                .write(true),
            &dir.join(".lock"),
        )?;
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        match Flock::lock(file, arg) {
            Ok(lock) => Ok(Some(SnapshotsLock { _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
            Err((_, errno)) => Err(io::Error::from(errno)),
        }
    }
}

/// `<parent of dir>/.snapshots`.
pub fn snapshots_dir_beside(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(SNAPSHOTS_DIR),
        _ => PathBuf::from(SNAPSHOTS_DIR),
    }
}

/// Names under `dir` that are snapshot names and hold `leaf`, oldest first. A missing `dir`
/// holds none.
pub fn list_snapshot_names(dir: &Path, leaf: &str) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if parse_snapshot_name(&name).is_some() && entry.path().join(leaf).is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// What a chain or cache directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// A btrfs subvolume: snapshots are btrfs snapshots.
    Subvolume,
    /// A plain directory: snapshots are hard-link copies.
    Plain,
}

/// Makes sure `dir` exists: as a new btrfs subvolume when it is absent and its parent is on
/// btrfs, as a plain directory otherwise. An existing directory is left as it is (a plain
/// directory on btrfs stays plain and is snapshotted by the fallback; the log says how to
/// convert it).
pub fn prepare_dir(dir: &Path) -> Result<DirKind, btrfs::BtrfsError> {
    if dir.symlink_metadata().is_err() {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        crate::files::create_dir_all(&parent).map_err(|source| btrfs::BtrfsError::Io {
            path: parent.clone(),
            source,
        })?;
        let explicit_mode = |kind| {
            crate::files::set_dir_mode(dir)
                .map(|()| kind)
                .map_err(|source| btrfs::BtrfsError::Io {
                    path: dir.to_owned(),
                    source,
                })
        };
        if btrfs::is_btrfs(&parent) {
            btrfs::create_subvolume(dir)?;
            return explicit_mode(DirKind::Subvolume);
        }
        crate::files::create_dir(dir).map_err(|source| btrfs::BtrfsError::Io {
            path: dir.to_owned(),
            source,
        })?;
        return explicit_mode(DirKind::Plain);
    }
    Ok(dir_kind(dir))
}

/// Whether `dir` is a btrfs subvolume or anything else (missing counts as plain).
pub fn dir_kind(dir: &Path) -> DirKind {
    if btrfs::is_subvolume(dir) {
        DirKind::Subvolume
    } else {
        DirKind::Plain
    }
}

/// Removes a snapshot directory such as `.snapshots/<name>` or `.incomplete-<name>`, with any
/// subvolumes in it (read-only ones included). Missing is fine.
pub fn remove_snapshot_dir(dir: &Path) -> Result<(), btrfs::BtrfsError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| btrfs::BtrfsError::Io { path, source }
    };
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    if btrfs::is_subvolume(dir) {
        match btrfs::delete_subvolume(dir) {
            Ok(()) => return Ok(()),
            // Without CAP_SYS_ADMIN (the shipped unit keeps none) btrfs refuses to destroy a
            // subvolume. Its owner may still make it writable, empty it and rmdir it: Linux
            // (since 4.18) removes an empty subvolume on rmdir.
            Err(err) if not_permitted(&err) => {
                if btrfs::is_readonly(dir)? {
                    btrfs::set_readonly(dir, false)?;
                }
            }
            Err(err) => return Err(err),
        }
    }
    make_writable(dir);
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let meta = path.symlink_metadata().map_err(io_error(&path))?;
        if meta.is_dir() {
            remove_snapshot_dir(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
    }
    std::fs::remove_dir(dir).map_err(io_error(dir))
}

fn not_permitted(err: &btrfs::BtrfsError) -> bool {
    matches!(err, btrfs::BtrfsError::Tool(failure) if failure.stderr.contains("Operation not permitted"))
}

/// Plain-directory snapshots are made read-only by mode; undo that so they can be removed.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = dir.metadata() {
        let mode = meta.permissions().mode();
        if mode & 0o200 == 0 {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_sit_beside_the_directories() {
        let layout = SnapshotLayout::new("/var/lib/op-dbus/blockchain", "/srv/@cache");
        assert_eq!(
            layout.chain_snapshot("N"),
            Path::new("/var/lib/op-dbus/.snapshots/N/chain")
        );
        assert_eq!(
            layout.cache_snapshot("N"),
            Path::new("/srv/.snapshots/N/cache")
        );
    }

    #[test]
    fn only_complete_snapshot_names_are_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = dir.path().join(SNAPSHOTS_DIR);
        let good = "2026-11-25T13-05-00Z-h000000000042";
        let older = "2026-11-25T13-04-00Z-h000000000040";
        for name in [good, older] {
            std::fs::create_dir_all(snapshots.join(name).join(CHAIN_LEAF)).expect("mkdir");
        }
        std::fs::create_dir_all(
            snapshots
                .join(format!("{INCOMPLETE_PREFIX}{good}"))
                .join("chain"),
        )
        .expect("mkdir");
        std::fs::create_dir_all(snapshots.join("2026-11-25T13-06-00Z-h000000000043"))
            .expect("mkdir without chain");
        let layout = SnapshotLayout::new(dir.path().join("chain"), dir.path().join("cache"));
        assert_eq!(layout.list().expect("list"), [older, good]);
        assert_eq!(
            list_snapshot_names(&dir.path().join("missing"), CHAIN_LEAF).expect("none"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn plain_directories_are_prepared_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("a/b/chain");
        assert_eq!(prepare_dir(&chain).expect("prepare"), DirKind::Plain);
        assert!(chain.is_dir());
        assert_eq!(prepare_dir(&chain).expect("again"), DirKind::Plain);
        let snap = dir.path().join("snap");
        std::fs::create_dir_all(snap.join("chain")).expect("mkdir");
        std::fs::write(snap.join("chain/file"), b"x").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(snap.join("chain"), std::fs::Permissions::from_mode(0o555))
            .expect("chmod");
        remove_snapshot_dir(&snap).expect("remove");
        assert!(!snap.exists());
        remove_snapshot_dir(&snap).expect("missing is fine");
    }
}
