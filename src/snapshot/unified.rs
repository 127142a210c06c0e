//! The unified snapshot: chain and cache captured at the same block height, under one name.
//!
//! Promises:
//! - Both snapshots hold exactly the chain up to the height in their manifests: the cache is
//!   caught up to the head while writes flow, then the writer is paused at a block boundary
//!   (footprints queue meanwhile, none is lost or reordered) at a height the cache holds, both
//!   are captured, and the writer resumes. The pause never waits on the cache thread (see
//!   [`Snapshotter`]); a cache that cannot keep up is captured behind, with a warning.
//! - The snapshot module knows the daemon only through two narrow handles: the writer's
//!   barrier ([`WriterBarrier`]) and the cache's catch-up ([`CacheCatchUp`]).
//! - The pause covers only what must not see a new block: two btrfs snapshot calls (or, on
//!   the fallback, reading the open segment's length and copying the cache). Manifests,
//!   read-only flags, hard links and the copy of the open segment happen after the writer has
//!   resumed: appends never change bytes before the barrier, and sealed segments never change.
//! - A snapshot becomes visible under its name only when complete: it is built under
//!   `.snapshots/.incomplete-<name>` and renamed; a failure removes what was made.
//! - A snapshot asked for when no block was added since the newest one (same height, same
//!   head hash) is that one: it is returned again (`reused`), no directory is made.
//!
//! Methods, per directory: a btrfs subvolume gets a writable btrfs snapshot, then its manifest,
//! then the read-only flag (`btrfs-snapshot`). A plain directory (not on btrfs, or a directory
//! made before it was) gets a hard-link copy: sealed segments hard-linked (copied when across
//! filesystems), the open segment copied and cut at the barrier, files made read-only by mode
//! (`hardlink-copy`); a plain cache directory is copied while the writer is paused.

use super::layout::{DirKind, SnapshotLayout, CACHE_LEAF, CHAIN_LEAF, INCOMPLETE_PREFIX};
use super::manifest::{read_manifest, write_manifest, Manifest, ManifestError, SnapshotMethod};
use super::naming::snapshot_name;
use crate::btrfs::{self, BtrfsError};
use crate::cache::{CacheError, CacheFeed};
use crate::chain::block::Hash;
use crate::chain::error::ChainError;
use crate::chain::rewrite::{self, RewriteError};
use crate::chain::segment;
use crate::chain::writer::PauseGuard;
use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why a snapshot could not be taken. Nothing half-made is left under a snapshot name.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot pause the chain writer: {0}")]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Btrfs(#[from] BtrfsError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Inconsistent(String),
}

impl From<RewriteError> for SnapshotError {
    fn from(err: RewriteError) -> Self {
        match err {
            RewriteError::Io { path, source } => SnapshotError::Io { path, source },
            RewriteError::Mismatch(why) => SnapshotError::Inconsistent(why),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { path, source }
}

/// A unified snapshot that was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnifiedSnapshot {
    pub name: String,
    pub chain: PathBuf,
    pub cache: PathBuf,
    pub height: u64,
    pub head_hash: Hash,
    pub chain_method: SnapshotMethod,
    pub cache_method: SnapshotMethod,
    /// How long the writer was paused.
    pub pause: Duration,
    /// Taken earlier: the chain has not changed since.
    pub reused: bool,
}

/// A future a handle returns; boxed so that the handles can be trait objects.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The head (height, hash) the writer paused at, and the guard that resumes it.
pub type PausedAt = ((u64, Hash), PauseGuard);

/// The chain writer's barrier, as the writer itself offers it.
pub trait WriterBarrier: Send + Sync {
    /// The height of the newest block now, without pausing.
    fn head_height(&self) -> u64;
    /// Stops the writer at a block boundary: the head there, and a guard that resumes the
    /// writer when dropped. Footprints queue meanwhile.
    fn pause(&self) -> Pending<'_, Result<PausedAt, ChainError>>;
}

/// The cache's catch-up: resolves once the cache holds every block up to `height`.
pub trait CacheCatchUp: Send + Sync {
    fn caught_up(&self, height: u64) -> Pending<'_, Result<(), CacheError>>;
}

impl CacheCatchUp for CacheFeed {
    fn caught_up(&self, height: u64) -> Pending<'_, Result<(), CacheError>> {
        Box::pin(CacheFeed::caught_up(self, height))
    }
}

/// Pauses taken to find the cache caught up before one goes ahead with the cache behind.
const PAUSE_TRIES: u32 = 5;

/// Takes unified snapshots of one chain and its cache, one at a time (two in the same second
/// at the same height would share a staging name). The daemon's service holds one; the
/// timeline prunes under the same turn ([`Snapshotter::turn`]).
#[derive(Clone)]
pub struct Snapshotter {
    layout: SnapshotLayout,
    writer: Arc<dyn WriterBarrier>,
    cache: Arc<dyn CacheCatchUp>,
    /// Owned guards, so that a snapshot whose caller went away keeps its turn until its
    /// blocking part ends.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Snapshotter {
    pub fn new(
        layout: SnapshotLayout,
        writer: Arc<dyn WriterBarrier>,
        cache: Arc<dyn CacheCatchUp>,
    ) -> Snapshotter {
        Snapshotter {
            layout,
            writer,
            cache,
            turn: Arc::default(),
        }
    }

    pub fn layout(&self) -> &SnapshotLayout {
        &self.layout
    }

    /// Waits until no snapshot is being taken and keeps others from starting meanwhile.
    pub async fn turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.turn.clone().lock_owned().await
    }

    /// Takes a unified snapshot; see the module documentation. Logs it (SNAPSHOT_TAKEN) or its
    /// failure (SNAPSHOT_FAILED), whoever asked.
    pub async fn take(&self) -> Result<UnifiedSnapshot, SnapshotError> {
        let taken = self.take_unlogged().await;
        match &taken {
            Ok(snapshot) if snapshot.reused => tracing::info!(
                name = %snapshot.name,
                height = snapshot.height,
                "no block since the newest snapshot {}: returning it",
                snapshot.name
            ),
            Ok(snapshot) => tracing::info!(
                message_id = crate::journal::SNAPSHOT_TAKEN,
                name = %snapshot.name,
                height = snapshot.height,
                chain = %snapshot.chain.display(),
                cache = %snapshot.cache.display(),
                chain_method = method_name(snapshot.chain_method),
                cache_method = method_name(snapshot.cache_method),
                pause_us = snapshot.pause.as_micros() as u64,
                "unified snapshot taken: {} at height {}",
                snapshot.name,
                snapshot.height
            ),
            Err(err) => tracing::warn!(
                message_id = crate::journal::SNAPSHOT_FAILED,
                %err,
                "snapshot failed: {err}"
            ),
        }
        taken
    }

    async fn take_unlogged(&self) -> Result<UnifiedSnapshot, SnapshotError> {
        let one_at_a_time = self.turn().await;
        let layout = self.layout.clone();
        let chain_dir = layout.chain_dir.clone();
        // The capture runs on a thread of its own, not on the runtime's blocking pool: that
        // pool is capped and shared with unprivileged calls (Verify, FindSimilar, reads), and
        // the writer, paused below, would stay paused for as long as the pool was full.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (start, started) = std::sync::mpsc::channel::<Option<Paused>>();
        std::thread::Builder::new()
            .name("opdbus-snapshot".into())
            .spawn(move || {
                let _one_at_a_time = one_at_a_time;
                // `None`: the pause failed or the caller went away; nothing to capture.
                let Ok(Some(paused)) = started.recv() else {
                    return;
                };
                let _ = sender.send(capture_and_finish(&layout, paused));
            })
            .map_err(|source| SnapshotError::Io {
                path: chain_dir.clone(),
                source,
            })?;
        match self.pause_with_cache_caught_up().await {
            Ok(paused) => {
                let _ = start.send(Some(paused));
            }
            Err(err) => {
                let _ = start.send(None);
                return Err(err);
            }
        }
        let snapshot = receiver.await.map_err(|_| SnapshotError::Io {
            path: chain_dir,
            source: io::Error::other("the snapshot thread ended without a result"),
        })??;
        Ok(snapshot)
    }

    /// Pauses the writer at a height the cache already holds. The cache is caught up while
    /// writes still flow, and under the pause it is only asked, never waited for: its thread
    /// runs at SCHED_IDLE, so a pause waiting on it could last as long as the CPUs stay busy.
    /// If blocks arrived between the catch-up and the pause, the writer resumes and the
    /// cache catches up again; after [`PAUSE_TRIES`] the snapshot goes ahead with the cache
    /// behind, with a warning (the cache is never the only copy of a block and is refilled
    /// from the chain). A cache that could not store a block goes ahead the same way.
    async fn pause_with_cache_caught_up(&self) -> Result<Paused, SnapshotError> {
        let mut target = self.writer.head_height();
        for attempt in 1..=PAUSE_TRIES {
            let outside = self.cache.caught_up(target).await;
            let ((height, head_hash), guard) = self.writer.pause().await?;
            let paused_at = Instant::now();
            let under_pause = if height == target {
                Some(outside)
            } else {
                ready_now(self.cache.caught_up(height))
            };
            let paused = Paused {
                height,
                head_hash,
                guard,
                paused_at,
            };
            match under_pause {
                Some(Ok(())) => return Ok(paused),
                Some(Err(err)) => {
                    tracing::warn!(height, %err, "the cache snapshot will lack blocks the chain snapshot has");
                    return Ok(paused);
                }
                None if attempt == PAUSE_TRIES => {
                    tracing::warn!(height, "the cache snapshot will lack blocks the chain snapshot has: the cache did not keep up with the writes");
                    return Ok(paused);
                }
                None => target = height,
            }
        }
        unreachable!("the last try returns")
    }
}

/// As the manifest writes it.
fn method_name(method: SnapshotMethod) -> &'static str {
    match method {
        SnapshotMethod::BtrfsSnapshot => "btrfs-snapshot",
        SnapshotMethod::HardlinkCopy => "hardlink-copy",
    }
}

/// The future's output if it is ready at its first poll: the question "is it so now?"
/// asked of a handle that otherwise waits.
fn ready_now<T>(future: impl Future<Output = T>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

/// The writer paused at a block boundary.
struct Paused {
    height: u64,
    head_hash: Hash,
    guard: PauseGuard,
    paused_at: Instant,
}

/// On the snapshot thread: captures what must see no new block, resumes the writer, then
/// completes the snapshot.
fn capture_and_finish(
    layout: &SnapshotLayout,
    paused: Paused,
) -> Result<UnifiedSnapshot, SnapshotError> {
    let Paused {
        height,
        head_hash,
        guard,
        paused_at,
    } = paused;
    let created = SystemTime::now();
    let secs = created
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let name = snapshot_name(secs, height);
    let captured = match unchanged(layout, height, &head_hash) {
        Some(snapshot) => Ok(Captured::Existing(snapshot)),
        None => capture(layout, &name, height),
    };
    drop(guard);
    let pause = paused_at.elapsed();
    let snapshot = match captured? {
        Captured::Existing(snapshot) => snapshot,
        Captured::New(parts) => finish(layout, &name, parts, height, &head_hash, created)
            .inspect_err(|_| discard(layout, &name))?,
    };
    Ok(UnifiedSnapshot { pause, ..snapshot })
}

/// What was captured while the writer was paused.
enum Captured {
    /// A complete snapshot of this very head was taken before.
    Existing(UnifiedSnapshot),
    New(Parts),
}

struct Parts {
    chain: ChainCapture,
    cache_method: SnapshotMethod,
}

enum ChainCapture {
    /// Already a (writable) btrfs snapshot at the staging path.
    Btrfs,
    /// Plain directory: the segments at the barrier, the last one to be copied up to `len`.
    Barrier {
        sealed: Vec<PathBuf>,
        open: PathBuf,
        open_first: u64,
        len: u64,
    },
}

fn staging(layout: &SnapshotLayout, name: &str) -> (PathBuf, PathBuf) {
    let staged = format!("{INCOMPLETE_PREFIX}{name}");
    (
        layout.chain_snapshots().join(&staged),
        layout.cache_snapshots().join(&staged),
    )
}

/// Removes the staging directories of `name` (after a failure).
fn discard(layout: &SnapshotLayout, name: &str) {
    let (chain, cache) = staging(layout, name);
    for dir in [chain, cache] {
        if let Err(err) = super::layout::remove_snapshot_dir(&dir) {
            tracing::warn!(%err, dir = %dir.display(), "cannot remove a half-made snapshot; it is not counted as a snapshot");
        }
    }
}

/// Runs while the writer is paused: the minimum that must see no new block.
fn capture(layout: &SnapshotLayout, name: &str, height: u64) -> Result<Captured, SnapshotError> {
    let final_chain = layout.chain_snapshot(name);
    if final_chain.symlink_metadata().is_ok() {
        return existing(layout, name, height).map(Captured::Existing);
    }
    let (chain_stage, cache_stage) = staging(layout, name);
    for dir in [&chain_stage, &cache_stage] {
        // A stale one is what a crash in the middle left behind.
        super::layout::remove_snapshot_dir(dir)?;
        crate::files::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let capture_chain = || -> Result<ChainCapture, SnapshotError> {
        match super::layout::dir_kind(&layout.chain_dir) {
            DirKind::Subvolume => {
                btrfs::snapshot(&layout.chain_dir, &chain_stage.join(CHAIN_LEAF), false)?;
                Ok(ChainCapture::Btrfs)
            }
            DirKind::Plain => barrier(&layout.chain_dir, height),
        }
    };
    let capture_cache = || -> Result<SnapshotMethod, SnapshotError> {
        let cache_dest = cache_stage.join(CACHE_LEAF);
        match super::layout::dir_kind(&layout.cache_dir) {
            DirKind::Subvolume => {
                btrfs::snapshot(&layout.cache_dir, &cache_dest, false)?;
                Ok(SnapshotMethod::BtrfsSnapshot)
            }
            DirKind::Plain => {
                crate::files::create_dir(&cache_dest).map_err(io_err(&cache_dest))?;
                if layout.cache_dir.is_dir() {
                    copy_tree(&layout.cache_dir, &cache_dest)?;
                }
                Ok(SnapshotMethod::HardlinkCopy)
            }
        }
    };
    // Both at once: the pause is then about one snapshot's cost, not two.
    let (chain, cache_method) = std::thread::scope(|scope| {
        let cache = scope.spawn(capture_cache);
        let chain = capture_chain();
        let cache = cache.join().unwrap_or_else(|_| {
            Err(SnapshotError::Inconsistent(
                "the cache snapshot thread panicked".into(),
            ))
        });
        (chain, cache)
    });
    let result = chain.and_then(|chain| {
        Ok(Parts {
            chain,
            cache_method: cache_method?,
        })
    });
    match result {
        Ok(parts) => Ok(Captured::New(parts)),
        Err(err) => {
            discard(layout, name);
            Err(err)
        }
    }
}

/// The newest snapshot, when it holds the chain exactly as the writer paused it (`height`,
/// `head_hash`): a new one would describe the same state. Cheap enough for the pause: one
/// directory listing and two small manifests. A newest snapshot that cannot be read is left for
/// the operator (with a warning) and a new one taken.
fn unchanged(layout: &SnapshotLayout, height: u64, head_hash: &Hash) -> Option<UnifiedSnapshot> {
    let names = layout.list().ok()?;
    let newest = names.last()?;
    if super::naming::parse_snapshot_name(newest)?.height != height {
        return None;
    }
    match existing(layout, newest, height) {
        // The same height with another head: another chain's state (the chain directory was
        // replaced beside old snapshots).
        Ok(snapshot) if snapshot.head_hash != *head_hash => None,
        Ok(snapshot) => Some(snapshot),
        Err(err) => {
            tracing::warn!(%err, name = %newest, "the newest snapshot cannot be read; taking a new one");
            None
        }
    }
}

/// A snapshot with this name exists: fine if it is complete and of this height (two requests
/// in the same second with no block in between describe the same state).
fn existing(
    layout: &SnapshotLayout,
    name: &str,
    height: u64,
) -> Result<UnifiedSnapshot, SnapshotError> {
    let chain = layout.chain_snapshot(name);
    let cache = layout.cache_snapshot(name);
    let chain_manifest = read_manifest(&chain)?;
    let cache_manifest = read_manifest(&cache)?;
    if chain_manifest.height != height || cache_manifest.height != height {
        return Err(SnapshotError::Inconsistent(format!(
            "{} exists but does not hold height {height}",
            chain.display()
        )));
    }
    Ok(UnifiedSnapshot {
        name: name.to_owned(),
        chain,
        cache,
        height,
        head_hash: chain_manifest.head_hash_bytes().unwrap_or_default(),
        chain_method: chain_manifest.method,
        cache_method: cache_manifest.method,
        pause: Duration::ZERO,
        reused: true,
    })
}

/// The segments of a plain chain directory at the barrier (writer paused).
fn barrier(chain_dir: &Path, height: u64) -> Result<ChainCapture, SnapshotError> {
    let mut segments = segment::list(chain_dir).map_err(io_err(chain_dir))?;
    let Some((open_first, open)) = segments.pop() else {
        return Err(SnapshotError::Inconsistent(format!(
            "{} holds no segment",
            chain_dir.display()
        )));
    };
    let len = fs::metadata(&open).map_err(io_err(&open))?.len();
    if open_first > height + 1 {
        return Err(SnapshotError::Inconsistent(format!(
            "the open segment {} starts past the head {height}",
            open.display()
        )));
    }
    Ok(ChainCapture::Barrier {
        sealed: segments.into_iter().map(|(_, p)| p).collect(),
        open,
        open_first,
        len,
    })
}

/// Runs after the writer resumed: complete the copies, write manifests, make read-only,
/// and publish under the snapshot name.
fn finish(
    layout: &SnapshotLayout,
    name: &str,
    parts: Parts,
    height: u64,
    head_hash: &Hash,
    created: SystemTime,
) -> Result<UnifiedSnapshot, SnapshotError> {
    let (chain_stage, cache_stage) = staging(layout, name);
    let chain_snap = chain_stage.join(CHAIN_LEAF);
    let cache_snap = cache_stage.join(CACHE_LEAF);
    let chain_method = match parts.chain {
        ChainCapture::Btrfs => SnapshotMethod::BtrfsSnapshot,
        ChainCapture::Barrier {
            sealed,
            open,
            open_first,
            len,
        } => {
            crate::files::create_dir(&chain_snap).map_err(io_err(&chain_snap))?;
            for path in &sealed {
                link_or_copy(path, &chain_snap)?;
            }
            copy_open_segment(&open, open_first, len, height, head_hash, &chain_snap)?;
            SnapshotMethod::HardlinkCopy
        }
    };
    let chain_id = rewrite::chain_id(&chain_snap)?.ok_or_else(|| {
        SnapshotError::Inconsistent(format!("{} holds no segment", chain_snap.display()))
    })?;
    for (dir, method) in [
        (&chain_snap, chain_method),
        (&cache_snap, parts.cache_method),
    ] {
        let manifest = Manifest::new(height, head_hash, created, method, &chain_id);
        write_manifest(dir, &manifest)?;
        match method {
            SnapshotMethod::BtrfsSnapshot => btrfs::set_readonly(dir, true)?,
            SnapshotMethod::HardlinkCopy => set_mode_readonly(dir)?,
        }
    }
    // The cache side first: once the chain side carries the name, the snapshot counts.
    let chain_final = layout.chain_snapshots().join(name);
    let cache_final = layout.cache_snapshots().join(name);
    if cache_stage != chain_stage {
        fs::rename(&cache_stage, &cache_final).map_err(io_err(&cache_final))?;
    }
    fs::rename(&chain_stage, &chain_final).map_err(io_err(&chain_final))?;
    sync_dir(&layout.chain_snapshots());
    if cache_stage != chain_stage {
        sync_dir(&layout.cache_snapshots());
    }
    Ok(UnifiedSnapshot {
        name: name.to_owned(),
        chain: layout.chain_snapshot(name),
        cache: layout.cache_snapshot(name),
        height,
        head_hash: *head_hash,
        chain_method,
        cache_method: parts.cache_method,
        pause: Duration::ZERO,
        reused: false,
    })
}

/// Copies the open segment as it stood at the barrier (`len` bytes, cut right after `height`,
/// whose record must be the head the writer reported) into `dest_dir`.
fn copy_open_segment(
    open: &Path,
    first: u64,
    len: u64,
    height: u64,
    head_hash: &Hash,
    dest_dir: &Path,
) -> Result<(), SnapshotError> {
    let bytes = rewrite::segment_at_head(open, first, len, height, head_hash)?;
    let name = open.file_name().ok_or_else(|| {
        SnapshotError::Inconsistent(format!("{} has no file name", open.display()))
    })?;
    let dest = dest_dir.join(name);
    let mut file =
        crate::files::create_new(&dest, crate::files::FILE_MODE).map_err(io_err(&dest))?;
    io::Write::write_all(&mut file, &bytes).map_err(io_err(&dest))?;
    file.sync_all().map_err(io_err(&dest))?;
    Ok(())
}

/// Hard-links `path` into `dir` (sealed segments never change); copies across filesystems.
fn link_or_copy(path: &Path, dir: &Path) -> Result<(), SnapshotError> {
    let name = path
        .file_name()
        .ok_or_else(|| SnapshotError::Inconsistent(format!("{} has no name", path.display())))?;
    let dest = dir.join(name);
    match fs::hard_link(path, &dest) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            fs::copy(path, &dest).map(|_| ()).map_err(io_err(&dest))
        }
        Err(err) => Err(io_err(&dest)(err)),
    }
}

/// Copies a directory tree of regular files (the cache, when it is not a subvolume).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            crate::files::create_dir(&dest).map_err(io_err(&dest))?;
            copy_tree(&path, &dest)?;
        } else if kind.is_file() {
            fs::copy(&path, &dest).map_err(io_err(&dest))?;
        }
    }
    Ok(())
}

/// Read-only by mode: files 0444 (copies only; a hard link shares the live file's mode, which
/// is left alone), directories 0555.
fn set_mode_readonly(dir: &Path) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(io_err(&path))?;
        if meta.is_dir() {
            set_mode_readonly(&path)?;
        } else if meta.is_file() && meta.nlink() == 1 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).map_err(io_err(&path))?;
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(io_err(dir))
}

fn sync_dir(dir: &Path) {
    if let Err(err) = crate::files::sync_dir(dir) {
        tracing::warn!(%err, dir = %dir.display(), "cannot sync the snapshot directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::Caller;
    use crate::chain::store::{self, StoreOptions};
    use crate::chain::verify::verify_dir;
    use crate::footprint::PluginFootprint;

    /// A chain of `blocks` footprints in `dir`; returns the head and the open segment.
    fn chain_with(dir: &Path, blocks: usize) -> ((u64, Hash), u64, PathBuf) {
        let (mut writer, reader, _) = store::open(dir, StoreOptions::default()).expect("open");
        let items: Vec<_> = (0..blocks)
            .map(|i| {
                (
                    PluginFootprint::new("p", "o", serde_json::json!({ "i": i })),
                    Caller::default(),
                )
            })
            .collect();
        writer.append(&items).expect("append");
        let (first, open) = segment::list(dir).expect("list").pop().expect("a segment");
        (reader.head(), first, open)
    }

    /// Where the records of an open segment end: the writer preallocates past them.
    fn data_end(open: &Path) -> u64 {
        let bytes = fs::read(open).expect("read segment");
        segment::trailing_zeros_start(&bytes) as u64
    }

    #[test]
    fn the_open_segment_is_cut_right_after_the_head() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        let ((height, hash), first, open) = chain_with(&chain, 5);
        let len_at_barrier = data_end(&open);
        // Bytes past the barrier (a record written after the pause, or never acknowledged),
        // written where the next record would go: over the preallocated zeros.
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&open)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xAB; 100], len_at_barrier)
            .expect("junk");
        let dest = dir.path().join("snap");
        fs::create_dir(&dest).expect("mkdir");
        copy_open_segment(&open, first, len_at_barrier + 100, height, &hash, &dest).expect("copy");
        let report = verify_dir(&dest, None, &mut |_| {}).expect("verify");
        assert!(report.ok(), "{}", report.summary());
        assert_eq!(report.head, Some((height, hash)));
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(
            fs::metadata(dest.join(open.file_name().expect("name")))
                .expect("copy")
                .len(),
            len_at_barrier
        );
    }

    #[test]
    fn a_barrier_that_does_not_end_at_the_head_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        let ((height, hash), first, open) = chain_with(&chain, 3);
        let len = data_end(&open);
        let dest = dir.path().join("snap");
        fs::create_dir(&dest).expect("mkdir");
        let wrong_hash = [0u8; 32];
        let err = copy_open_segment(&open, first, len, height, &wrong_hash, &dest)
            .expect_err("not the head");
        assert!(err.to_string().contains("not the head"), "{err}");
        let err = copy_open_segment(&open, first, len, height + 1, &hash, &dest)
            .expect_err("past the end");
        assert!(err.to_string().contains("ends before height"), "{err}");
        assert!(
            fs::read_dir(&dest).expect("dest").next().is_none(),
            "nothing copied"
        );
    }

    /// A writer that commits one block just before each pause, so the cache is never caught up
    /// to the height paused at.
    struct BusyWriter(crate::service::StreamingBlockchain);

    impl WriterBarrier for BusyWriter {
        fn head_height(&self) -> u64 {
            self.0.head_height()
        }

        fn pause(&self) -> Pending<'_, Result<PausedAt, ChainError>> {
            Box::pin(async {
                let footprint = PluginFootprint::new("p", "o", serde_json::json!({}));
                self.0
                    .add_footprint(footprint)
                    .await
                    .map_err(|e| ChainError::io("adding a footprint", std::io::Error::other(e)))?;
                self.0.pause_writer().await
            })
        }
    }

    /// A cache that catches up only when waited on, slowly (as a SCHED_IDLE thread on busy
    /// CPUs would).
    #[derive(Default)]
    struct SlowCache {
        holds_below: std::sync::atomic::AtomicU64,
        waited: std::sync::atomic::AtomicU32,
    }

    const SLOW: Duration = Duration::from_millis(500);

    impl CacheCatchUp for SlowCache {
        fn caught_up(&self, height: u64) -> Pending<'_, Result<(), CacheError>> {
            use std::sync::atomic::Ordering::SeqCst;
            Box::pin(async move {
                if height >= self.holds_below.load(SeqCst) {
                    tokio::time::sleep(SLOW).await;
                    self.waited.fetch_add(1, SeqCst);
                    self.holds_below.fetch_max(height + 1, SeqCst);
                }
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn the_pause_never_waits_for_a_cache_that_lags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = SnapshotLayout::new(dir.path().join("chain"), dir.path().join("cache"));
        fs::create_dir(&layout.cache_dir).expect("cache dir");
        let chain = crate::service::StreamingBlockchain::new(&layout.chain_dir)
            .await
            .expect("chain");
        let cache = Arc::new(SlowCache::default());
        let snapshots = Snapshotter::new(
            layout.clone(),
            Arc::new(BusyWriter(chain.clone())),
            cache.clone(),
        );
        let taken = snapshots.take().await.expect("snapshot");
        assert!(taken.pause < SLOW, "paused {:?}", taken.pause);
        let waited = cache.waited.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            waited, PAUSE_TRIES,
            "one wait per try, each outside the pause"
        );
        assert_eq!(
            taken.height,
            u64::from(PAUSE_TRIES),
            "the last pause's head"
        );

        // No block between the catch-up and the pause: one try, one wait.
        let snapshots = Snapshotter::new(layout, Arc::new(chain.clone()), cache.clone());
        let taken = snapshots.take().await.expect("snapshot");
        assert_eq!(taken.height, u64::from(PAUSE_TRIES));
        let waited = cache.waited.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(waited, PAUSE_TRIES + 1);
        chain.shutdown().await;
    }
}
