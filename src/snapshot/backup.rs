//! Backups of unified snapshots with `btrfs send | btrfs receive`, their verification, and
//! restoring one as a working chain + cache.
//!
//! A directory target receives `TARGET/<name>/chain` and `TARGET/<name>/cache`. Both streams
//! go into `TARGET/.incoming-<name>/` first; only when both arrived and the copy verifies
//! (every block re-hashed and re-linked, the head equal to the manifest, the cache manifest at
//! the same height and hash) is it renamed to `TARGET/<name>`. A failure anywhere removes the
//! `.incoming-` directory, so only verified backups ever carry a snapshot name. The send is
//! incremental (`-p`) from the newest snapshot that both this side and the target hold.
//!
//! A command target (`--to-command`, e.g. `ssh host btrfs receive /srv/opdbus/{name}`) gets the
//! two streams on its stdin, one run each; `{name}` in its arguments is replaced by the
//! snapshot name so each snapshot lands in its own directory. Its incremental parent is the
//! one recorded for that command line after its last success. The received copy is on the far
//! side, out of our reach: it is verified there with `opdbus-chain verify-backup DIR`.
//!
//! After each success, `.snapshots/.backup-parents.json` records, per target, the newest
//! snapshot it holds; retention never deletes a snapshot named there.

use super::layout::{
    list_snapshot_names, prepare_dir, remove_snapshot_dir, SnapshotLayout, CACHE_LEAF, CHAIN_LEAF,
};
use super::manifest::{read_manifest, ManifestError, MANIFEST_FILE};
use super::naming::parse_snapshot_name;
use super::unified::{copy_tree, SnapshotError};
use crate::btrfs::{self, BtrfsError, ReceiveTarget};
use crate::chain::error::ChainError;
use crate::chain::verify::verify_dir;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The record of what each backup target holds, in the chain's `.snapshots`.
pub const BACKUP_PARENTS_FILE: &str = ".backup-parents.json";
/// Prefix of a backup being received (never counted as a backup).
pub const INCOMING_PREFIX: &str = ".incoming-";
/// Placeholder for the snapshot name in a `--to-command`.
pub const NAME_PLACEHOLDER: &str = "{name}";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no snapshot in {}; take one first (opdbus-chain snapshot, or the Snapshot D-Bus method)", .0.display())]
    NoSnapshot(PathBuf),
    #[error("{}: not a btrfs snapshot (the chain or cache is not a btrfs subvolume, so it was snapshotted by hard-link copy); btrfs send needs btrfs snapshots: copy the directory with cp -a or rsync instead", .0.display())]
    NotBtrfsSnapshot(PathBuf),
    #[error("{} does not exist (is the cache directory given right? --cache-dir)", .0.display())]
    MissingSnapshot(PathBuf),
    #[error("{}: not a directory on a btrfs filesystem; btrfs receive needs one", .0.display())]
    TargetNotBtrfs(PathBuf),
    #[error("{}: already exists; move it aside first", .0.display())]
    Exists(PathBuf),
    #[error("--to-command must contain {NAME_PLACEHOLDER} (replaced by the snapshot name) so that each snapshot is received into its own directory, e.g. 'ssh host btrfs receive /srv/opdbus/{NAME_PLACEHOLDER}'")]
    NoNamePlaceholder,
    #[error("backup {} does NOT verify: {reason}", .path.display())]
    Verification { path: PathBuf, reason: String },
    #[error(transparent)]
    Btrfs(#[from] BtrfsError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Copy(#[from] SnapshotError),
    #[error("{0}")]
    Marker(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { path, source }
}

/// Where a backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupTarget {
    /// A directory on a btrfs filesystem (usually another disk).
    Directory(PathBuf),
    /// A command line that runs `btrfs receive` elsewhere; split without a shell.
    Command(String),
}

impl BackupTarget {
    /// The key under which `.backup-parents.json` remembers this target.
    fn id(&self) -> String {
        match self {
            BackupTarget::Directory(dir) => {
                let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                format!("dir:{}", dir.display())
            }
            BackupTarget::Command(line) => format!("command:{line}"),
        }
    }
}

/// A backup that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBackup {
    pub height: u64,
    pub head_hash: String,
    pub blocks_checked: u64,
}

/// What [`backup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub name: String,
    /// The incremental parent, `None` for a full send.
    pub parent: Option<String>,
    /// `TARGET/<name>` for a directory target.
    pub dest: Option<PathBuf>,
    /// The verification of the received copy (`None` for a command target).
    pub verified: Option<VerifiedBackup>,
    /// The target already held this snapshot, verified; nothing was sent.
    pub already_there: bool,
}

/// Verifies a backup or snapshot directory holding `chain/` and `cache/`: the chain re-hashed
/// and re-linked from genesis to the manifest's height, its head equal to the manifest, the
/// cache manifest describing the same height and head, and the directory name (when it is a
/// snapshot name) the same height.
pub fn verify_backup(dir: &Path) -> Result<VerifiedBackup, BackupError> {
    let fail = |reason: String| BackupError::Verification {
        path: dir.to_owned(),
        reason,
    };
    let chain = dir.join(CHAIN_LEAF);
    let cache = dir.join(CACHE_LEAF);
    let manifest = read_manifest(&chain).map_err(|e| fail(e.to_string()))?;
    let report = verify_dir(&chain, Some(manifest.height), &mut |_| {})?;
    if let Some((height, reason)) = &report.first_bad {
        return Err(fail(format!(
            "chain: first bad block at height {height}: {reason}"
        )));
    }
    let head = report.head.map(|(h, hash)| (h, hex::encode(hash)));
    if head.as_ref() != Some(&(manifest.height, manifest.head_hash.clone())) {
        return Err(fail(format!(
            "chain head is {} but the manifest says height {} ({})",
            head.map_or("missing".into(), |(h, hash)| format!("height {h} ({hash})")),
            manifest.height,
            manifest.head_hash
        )));
    }
    let cache_manifest = read_manifest(&cache).map_err(|e| fail(e.to_string()))?;
    if (
        cache_manifest.height,
        &cache_manifest.head_hash,
        &cache_manifest.chain_id,
    ) != (manifest.height, &manifest.head_hash, &manifest.chain_id)
    {
        return Err(fail(format!(
            "the cache manifest (height {}) does not describe the chain's head (height {})",
            cache_manifest.height, manifest.height
        )));
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = name.strip_prefix(INCOMING_PREFIX).unwrap_or(name);
    if let Some(parsed) = parse_snapshot_name(name) {
        if parsed.height != manifest.height {
            return Err(fail(format!(
                "named for height {} but holds height {}",
                parsed.height, manifest.height
            )));
        }
    }
    Ok(VerifiedBackup {
        height: manifest.height,
        head_hash: manifest.head_hash,
        blocks_checked: report.blocks_checked,
    })
}

fn is_readonly_subvolume(path: &Path) -> bool {
    btrfs::is_subvolume(path) && matches!(btrfs::is_readonly(path), Ok(true))
}

/// Sends the newest snapshot of `layout` to `target`; see the module documentation.
pub fn backup(layout: &SnapshotLayout, target: &BackupTarget) -> Result<BackupReport, BackupError> {
    // Pruning waits while we send (it could otherwise delete our snapshot or its parent).
    let _lock = layout
        .lock(true)
        .map_err(io_err(&layout.chain_snapshots().join(".lock")))?;
    let names = layout.list().map_err(io_err(&layout.chain_snapshots()))?;
    let Some(name) = names.last().cloned() else {
        return Err(BackupError::NoSnapshot(layout.chain_snapshots()));
    };
    let sendable = |n: &str| {
        is_readonly_subvolume(&layout.chain_snapshot(n))
            && is_readonly_subvolume(&layout.cache_snapshot(n))
    };
    for path in [layout.chain_snapshot(&name), layout.cache_snapshot(&name)] {
        if path.symlink_metadata().is_err() {
            return Err(BackupError::MissingSnapshot(path));
        }
        if !is_readonly_subvolume(&path) {
            return Err(BackupError::NotBtrfsSnapshot(path));
        }
    }
    let report = match target {
        BackupTarget::Directory(dir) => {
            if !dir.is_dir() || !btrfs::is_btrfs(dir) {
                return Err(BackupError::TargetNotBtrfs(dir.clone()));
            }
            let dest = dir.join(&name);
            if dest.symlink_metadata().is_ok() {
                let verified = verify_backup(&dest)?;
                BackupReport {
                    name: name.clone(),
                    parent: None,
                    dest: Some(dest),
                    verified: Some(verified),
                    already_there: true,
                }
            } else {
                let held = list_snapshot_names(dir, CHAIN_LEAF).map_err(io_err(dir))?;
                let parent = names
                    .iter()
                    .rev()
                    .skip(1)
                    .find(|n| {
                        held.contains(n)
                            && sendable(n)
                            && is_readonly_subvolume(&dir.join(n).join(CHAIN_LEAF))
                            && is_readonly_subvolume(&dir.join(n).join(CACHE_LEAF))
                    })
                    .cloned();
                let verified = receive_into_directory(layout, &name, parent.as_deref(), dir)?;
                BackupReport {
                    name: name.clone(),
                    parent,
                    dest: Some(dest),
                    verified: Some(verified),
                    already_there: false,
                }
            }
        }
        BackupTarget::Command(line) => {
            if !line.contains(NAME_PLACEHOLDER) {
                return Err(BackupError::NoNamePlaceholder);
            }
            let argv: Vec<String> = btrfs::split_command_line(line)
                .map_err(BtrfsError::from)?
                .into_iter()
                .map(|arg| arg.replace(NAME_PLACEHOLDER, &name))
                .collect();
            let recorded = read_backup_parents(layout)
                .map_err(io_err(&layout.chain_snapshots()))?
                .remove(&target.id());
            let parent = recorded.filter(|p| *p != name && names.contains(p) && sendable(p));
            for (leaf_path, parent_path) in [
                (
                    layout.chain_snapshot(&name),
                    parent.as_ref().map(|p| layout.chain_snapshot(p)),
                ),
                (
                    layout.cache_snapshot(&name),
                    parent.as_ref().map(|p| layout.cache_snapshot(p)),
                ),
            ] {
                let stream = btrfs::send(&leaf_path, parent_path.as_deref())?;
                btrfs::receive(stream, &ReceiveTarget::Command(argv.clone()))?;
            }
            BackupReport {
                name: name.clone(),
                parent,
                dest: None,
                verified: None,
                already_there: false,
            }
        }
    };
    record_backup_parent(layout, &target.id(), &name)
        .map_err(io_err(&layout.chain_snapshots().join(BACKUP_PARENTS_FILE)))?;
    Ok(report)
}

/// Receives chain and cache into `TARGET/.incoming-<name>`, verifies, renames to
/// `TARGET/<name>`; on any failure removes the incoming directory.
fn receive_into_directory(
    layout: &SnapshotLayout,
    name: &str,
    parent: Option<&str>,
    target: &Path,
) -> Result<VerifiedBackup, BackupError> {
    let incoming = target.join(format!("{INCOMING_PREFIX}{name}"));
    remove_snapshot_dir(&incoming)?;
    crate::files::create_dir(&incoming).map_err(io_err(&incoming))?;
    let result = (|| {
        let pairs = [
            (
                layout.chain_snapshot(name),
                parent.map(|p| layout.chain_snapshot(p)),
            ),
            (
                layout.cache_snapshot(name),
                parent.map(|p| layout.cache_snapshot(p)),
            ),
        ];
        for (snapshot, parent) in pairs {
            let stream = btrfs::send(&snapshot, parent.as_deref())?;
            btrfs::receive(stream, &ReceiveTarget::Directory(incoming.clone()))?;
        }
        let verified = verify_backup(&incoming)?;
        let dest = target.join(name);
        fs::rename(&incoming, &dest).map_err(io_err(&dest))?;
        File::open(target)
            .and_then(|d| d.sync_all())
            .map_err(io_err(target))?;
        Ok(verified)
    })();
    if result.is_err() {
        if let Err(err) = remove_snapshot_dir(&incoming) {
            tracing::warn!(%err, dir = %incoming.display(), "cannot remove a failed incoming backup; it is not counted as a backup");
        }
    }
    result
}

/// Per target id, the newest snapshot that target holds. A missing file is an empty record.
pub fn read_backup_parents(layout: &SnapshotLayout) -> io::Result<BTreeMap<String, String>> {
    let path = layout.chain_snapshots().join(BACKUP_PARENTS_FILE);
    match crate::files::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(err) => Err(err),
    }
}

/// Records that `target_id` now holds `name` (atomically: temporary file, fsync, rename).
pub fn record_backup_parent(
    layout: &SnapshotLayout,
    target_id: &str,
    name: &str,
) -> io::Result<()> {
    let dir = layout.chain_snapshots();
    let mut record = read_backup_parents(layout)?;
    record.insert(target_id.to_owned(), name.to_owned());
    let mut json = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
    json.push(b'\n');
    crate::files::write_atomic(
        &dir.join(BACKUP_PARENTS_FILE),
        &json,
        crate::files::FILE_MODE,
    )
}

/// What [`restore`] put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub verified: VerifiedBackup,
    /// The chain was restored as a btrfs subvolume (else as a plain directory).
    pub chain_subvolume: bool,
    /// The chain-id marker beside `chain_dir`, now naming the restored chain.
    pub marker: PathBuf,
}

/// Puts the backup (or local snapshot) `from` (holding `chain/` and `cache/`) back as working
/// directories `chain_dir` and `cache_dir`, which must not exist. The backup is verified first;
/// the restored chain is verified again. On btrfs the result is a writable snapshot of a
/// received copy (a received subvolume itself must stay read-only); elsewhere a plain copy.
/// Last, the chain-id marker beside `chain_dir` is set to the restored chain's id, so the
/// daemon serves it (and would refuse to start a new chain if it went missing again).
pub fn restore(
    from: &Path,
    chain_dir: &Path,
    cache_dir: &Path,
) -> Result<RestoreReport, BackupError> {
    if crate::replica::is_copy(from) {
        return restore_copy(from, chain_dir, cache_dir);
    }
    let verified = verify_backup(from)?;
    refuse_existing(chain_dir, cache_dir)?;
    let mut made = Vec::new();
    let result = (|| {
        let chain_subvolume = restore_part(&from.join(CHAIN_LEAF), chain_dir, &mut made)?;
        restore_part(&from.join(CACHE_LEAF), cache_dir, &mut made)?;
        let report = verify_dir(chain_dir, None, &mut |_| {})?;
        let head = report.head.map(|(h, hash)| (h, hex::encode(hash)));
        if !report.ok() || head != Some((verified.height, verified.head_hash.clone())) {
            return Err(BackupError::Verification {
                path: chain_dir.to_owned(),
                reason: format!(
                    "the restored chain does not check out: {}",
                    report.summary()
                ),
            });
        }
        let marker = adopt_restored(chain_dir, cache_dir)?;
        Ok((chain_subvolume, marker))
    })();
    match result {
        Ok((chain_subvolume, marker)) => Ok(RestoreReport {
            verified,
            chain_subvolume,
            marker,
        }),
        Err(err) => {
            for dir in made {
                let _ = remove_snapshot_dir(&dir);
            }
            Err(err)
        }
    }
}

/// [`restore`] from a replica's copy (docs/operations.md, "Replicas"): its blocks up to the
/// checkpoint it verified, re-verified (hashes, links and the checkpoint's Merkle root), copied
/// into a new chain directory (plain files), with an empty cache. The copy's `tlog/` (the
/// source's checkpoints, signed with the source's key) is not taken: the daemon started on the
/// result begins its own log, signed with its own key. The copy itself is only read.
fn restore_copy(
    from: &Path,
    chain_dir: &Path,
    cache_dir: &Path,
) -> Result<RestoreReport, BackupError> {
    let fail = |reason: String| BackupError::Verification {
        path: from.to_owned(),
        reason,
    };
    let note = crate::files::read(&from.join("tlog").join("checkpoint"))
        .map_err(io_err(&from.join("tlog").join("checkpoint")))?;
    let checkpoint = crate::tlog::Checkpoint::parse_unverified(&note)
        .map_err(|err| fail(format!("its checkpoint: {err}")))?;
    let size = checkpoint.size;
    if size == 0 {
        return Err(fail("its checkpoint covers no block".into()));
    }
    refuse_existing(chain_dir, cache_dir)?;
    let mut tree = crate::tlog::CompactRange::default();
    let report =
        crate::chain::verify::verify_dir_each(from, Some(size - 1), &mut |_| {}, &mut |block| {
            tree.push(&block.hash)
        })?;
    if !report.ok() || report.head.map(|(h, _)| h) != Some(size - 1) {
        return Err(fail(format!(
            "the copy does not check out: {}",
            report.summary()
        )));
    }
    if tree.root() != checkpoint.root {
        return Err(fail(format!(
            "its blocks do not give the root of the checkpoint it verified (size {size})"
        )));
    }
    let head_hash = report
        .head
        .map(|(_, hash)| hex::encode(hash))
        .unwrap_or_default();
    let mut made = Vec::new();
    let result = (|| {
        crate::files::create_dir_all(chain_dir).map_err(io_err(chain_dir))?;
        made.push(chain_dir.to_owned());
        for (_, path) in crate::chain::segment::list(from).map_err(io_err(from))? {
            let name = path.file_name().unwrap_or_default();
            let dest = chain_dir.join(name);
            let mut src = crate::files::open_read(&path).map_err(io_err(&path))?;
            let mut out =
                crate::files::create_new(&dest, crate::files::FILE_MODE).map_err(io_err(&dest))?;
            io::copy(&mut src, &mut out).map_err(io_err(&dest))?;
            out.sync_all().map_err(io_err(&dest))?;
        }
        crate::replica::cut_chain_to(chain_dir, size).map_err(|err| fail(err.to_string()))?;
        crate::files::sync_dir(chain_dir).map_err(io_err(chain_dir))?;
        let again = verify_dir(chain_dir, None, &mut |_| {})?;
        if !again.ok() || again.head.map(|(h, _)| h) != Some(size - 1) {
            return Err(fail(format!(
                "the restored chain does not check out: {}",
                again.summary()
            )));
        }
        crate::files::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        made.push(cache_dir.to_owned());
        adopt_restored(chain_dir, cache_dir)
    })();
    match result {
        Ok(marker) => Ok(RestoreReport {
            verified: VerifiedBackup {
                height: size - 1,
                head_hash,
                blocks_checked: report.blocks_checked,
            },
            chain_subvolume: false,
            marker,
        }),
        Err(err) => {
            for dir in made {
                let _ = fs::remove_dir_all(&dir);
            }
            Err(err)
        }
    }
}

/// A restore makes its directories: existing ones (or links) are refused, never overwritten.
fn refuse_existing(chain_dir: &Path, cache_dir: &Path) -> Result<(), BackupError> {
    for dest in [chain_dir, cache_dir] {
        if dest.symlink_metadata().is_ok() {
            return Err(BackupError::Exists(dest.to_owned()));
        }
    }
    Ok(())
}

/// The last step of a restore: the chain-id marker beside `chain_dir` names the restored
/// chain, and what was made goes to the owner of its parent. Returns the marker's path.
fn adopt_restored(chain_dir: &Path, cache_dir: &Path) -> Result<PathBuf, BackupError> {
    let marker = crate::marker::ChainMarker::beside(chain_dir);
    match marker.on_disk() {
        Ok(crate::marker::OnDisk::Chain(id)) => marker.write(&id),
        Ok(_) => Err(crate::marker::MarkerError::Invalid {
            marker: marker.path.clone(),
            reason: format!("cannot read the chain id of {}", chain_dir.display()),
        }),
        Err(err) => Err(err),
    }
    .map_err(|err| BackupError::Marker(err.to_string()))?;
    give_to_parent_owner(&[chain_dir, cache_dir, &marker.path])?;
    Ok(marker.path)
}

/// Root restoring into a directory another user owns (the service user's `/var/lib/op-dbus`)
/// hands what it made to that user, who runs the daemon that writes there next.
fn give_to_parent_owner(paths: &[&Path]) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    for path in paths {
        let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
            continue;
        };
        let owner = fs::metadata(parent).map_err(io_err(parent))?;
        if owner.uid() == 0 {
            continue;
        }
        crate::files::give_tree(path, owner.uid(), owner.gid()).map_err(io_err(path))?;
    }
    Ok(())
}

/// Restores one side; pushes what it created onto `made`. Returns whether it is a subvolume.
fn restore_part(src: &Path, dest: &Path, made: &mut Vec<PathBuf>) -> Result<bool, BackupError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    crate::files::create_dir_all(&parent).map_err(io_err(&parent))?;
    let leaf = src
        .file_name()
        .map_or_else(|| "part".into(), |n| n.to_string_lossy().into_owned());
    let subvolume = if is_readonly_subvolume(src) && btrfs::is_btrfs(&parent) {
        // send | receive into a staging directory beside `dest`, then a writable snapshot.
        let staging = parent.join(format!(".restore-{}-{leaf}", std::process::id()));
        remove_snapshot_dir(&staging)?;
        crate::files::create_dir(&staging).map_err(io_err(&staging))?;
        let result = (|| {
            let received = btrfs::receive(
                btrfs::send(src, None)?,
                &ReceiveTarget::Directory(staging.clone()),
            )?;
            let received = received.path.unwrap_or_else(|| staging.join(&leaf));
            btrfs::snapshot(&received, dest, false)?;
            made.push(dest.to_owned());
            Ok::<_, BackupError>(())
        })();
        if let Err(err) = remove_snapshot_dir(&staging) {
            tracing::warn!(%err, dir = %staging.display(), "cannot remove the restore staging directory");
        }
        result?;
        true
    } else {
        let kind = prepare_dir(dest)?;
        made.push(dest.to_owned());
        copy_tree(src, dest)?;
        make_writable_tree(dest)?;
        kind == super::layout::DirKind::Subvolume
    };
    let manifest = dest.join(MANIFEST_FILE);
    if manifest.exists() {
        fs::remove_file(&manifest).map_err(io_err(&manifest))?;
    }
    Ok(subvolume)
}

/// Copies of read-only-by-mode snapshots: files 0640, directories 0750.
fn make_writable_tree(dir: &Path) -> Result<(), BackupError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o750)).map_err(io_err(dir))?;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_dir() {
            make_writable_tree(&path)?;
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).map_err(io_err(&path))?;
        }
    }
    Ok(())
}
