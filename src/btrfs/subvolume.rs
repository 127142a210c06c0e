//! Subvolumes and snapshots: detection by `statfs(2)` and inode number, changes by btrfs-progs.

use super::{BtrfsError, Tool};
use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT_INODE: u64 = 256;

/// Whether `path` lies on a btrfs filesystem. An unreadable or missing path is not.
pub fn is_btrfs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// Whether `path` is the root directory of a btrfs subvolume (or snapshot).
pub fn is_subvolume(path: &Path) -> bool {
    // `symlink_metadata`: a symlink to a subvolume is not one.
    let is_root_dir = std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && m.ino() == SUBVOLUME_ROOT_INODE);
    is_root_dir && is_btrfs(path)
}

/// Creates an empty subvolume at `path`, which must not exist and whose parent is on btrfs.
pub fn create_subvolume(path: &Path) -> Result<(), BtrfsError> {
    require_free_on_btrfs(path)?;
    Tool::btrfs(&["subvolume", "create"], &[path]).run()?;
    Ok(())
}

/// Snapshots the subvolume `source` as the new path `dest` (same filesystem), read-only if asked.
pub fn snapshot(source: &Path, dest: &Path, readonly: bool) -> Result<(), BtrfsError> {
    require_subvolume(source)?;
    require_free_on_btrfs(dest)?;
    let args: &[&str] = if readonly {
        &["subvolume", "snapshot", "-r"]
    } else {
        &["subvolume", "snapshot"]
    };
    Tool::btrfs(args, &[source, dest]).run()?;
    Ok(())
}

/// Sets or clears the read-only flag of the subvolume at `path`.
///
/// Clearing it on a *received* subvolume is refused by btrfs-progs (it would break later
/// incremental receives); take a writable snapshot of it instead.
pub fn set_readonly(path: &Path, readonly: bool) -> Result<(), BtrfsError> {
    require_subvolume(path)?;
    let value = if readonly { "true" } else { "false" };
    Tool::btrfs(&["property", "set", "-ts"], &[path])
        .with_args(&["ro", value])
        .run()?;
    Ok(())
}

/// Whether the subvolume at `path` is read-only.
pub fn is_readonly(path: &Path) -> Result<bool, BtrfsError> {
    require_subvolume(path)?;
    let tool = Tool::btrfs(&["property", "get", "-ts"], &[path]).with_args(&["ro"]);
    let stdout = tool.run()?;
    match stdout.trim() {
        "ro=true" => Ok(true),
        "ro=false" => Ok(false),
        other => Err(tool
            .failure_because(format!("unexpected output {other:?}"), b"")
            .into()),
    }
}

/// Deletes the subvolume (or snapshot, read-only or not) at `path`.
pub fn delete_subvolume(path: &Path) -> Result<(), BtrfsError> {
    require_subvolume(path)?;
    Tool::btrfs(&["subvolume", "delete"], &[path]).run()?;
    Ok(())
}

fn require_subvolume(path: &Path) -> Result<(), BtrfsError> {
    if !is_btrfs(path) {
        return Err(BtrfsError::NotBtrfs {
            path: path.to_owned(),
        });
    }
    if !is_subvolume(path) {
        return Err(BtrfsError::NotSubvolume {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// `path` does not exist yet and its parent directory is on btrfs.
fn require_free_on_btrfs(path: &Path) -> Result<(), BtrfsError> {
    if path.symlink_metadata().is_ok() {
        return Err(BtrfsError::AlreadyExists {
            path: path.to_owned(),
        });
    }
    let parent = parent_dir(path);
    if !is_btrfs(&parent) {
        return Err(BtrfsError::NotBtrfs { path: parent });
    }
    Ok(())
}

pub(super) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
