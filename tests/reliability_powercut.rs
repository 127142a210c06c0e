//! The power-cut model: the store writes through a test I/O backend that keeps what was written
//! apart from what was made durable (by `fdatasync`, and for new files by the directory sync).
//! At a random I/O operation the power goes: that operation and every later one fail, and the
//! files on disk are replaced by what a power cut may leave: the durable bytes plus none, some
//! or all of the bytes written after the last sync (in order, possibly with the end of them
//! zero-filled, as a filesystem that extended the size before the data reached the disk
//! leaves it). The store extends segments ahead with zeros, so those bytes are often written
//! over durable zeros rather than appended; the model treats both alike, from the first byte
//! that differs. A new file whose directory entry was never synced may vanish; the index (never
//! synced) may be kept, removed, cut or zeroed. Then the real store opens the directory and
//! must hold every acknowledged block with the same hash, with dense heights, verify clean and
//! accept new writes.
//!
//! The same backend also fails chosen calls (ENOSPC when extending, EIO on fdatasync) to
//! check the refusal and latch paths.

use opdbus_blockchain::chain::block::{Caller, Hash};
use opdbus_blockchain::chain::error::ChainError;
use opdbus_blockchain::chain::io::{RealIo, SegmentFile, SegmentIo, SharedIo};
use opdbus_blockchain::chain::store::{self, StoreOptions};
use opdbus_blockchain::chain::verify::verify_dir;
use opdbus_blockchain::chain::writer::GroupCommit;
use opdbus_blockchain::PluginFootprint;
use opdbus_testkit::SplitMix64;
use parking_lot::Mutex;
use proptest::prelude::*;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What happens to one I/O operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The power goes at this operation.
    PowerCut,
}

#[derive(Default)]
struct FileState {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// The directory entry is durable (the file existed at open, or the directory was synced).
    entry_durable: bool,
}

/// Tracks every segment file the store writes; real files underneath, so readers work.
struct ModelIo {
    files: Mutex<HashMap<PathBuf, FileState>>,
    ops: AtomicU64,
    faults: Mutex<HashMap<u64, Fault>>,
    /// Fail the next `n` operations of this kind (`"write"`, `"extend"`, `"sync"`, ...).
    fail_kind: Mutex<Option<(&'static str, i32, u32)>>,
    powered_off: AtomicBool,
}

impl ModelIo {
    fn new() -> Arc<ModelIo> {
        Arc::new(ModelIo {
            files: Mutex::new(HashMap::new()),
            ops: AtomicU64::new(0),
            faults: Mutex::new(HashMap::new()),
            fail_kind: Mutex::new(None),
            powered_off: AtomicBool::new(false),
        })
    }

    /// Counts one operation and says whether it must fail.
    fn step(&self, kind: &'static str) -> io::Result<()> {
        if self.powered_off.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut fail_kind = self.fail_kind.lock();
            if let Some((fail, errno, n)) = *fail_kind {
                if fail == kind {
                    *fail_kind = (n > 1).then_some((fail, errno, n - 1));
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
        }
        match self.faults.lock().get(&n) {
            Some(Fault::PowerCut) => {
                self.powered_off.store(true, Ordering::SeqCst);
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            None => Ok(()),
        }
    }

    /// Replaces the files on disk by what the power cut left, chosen by `rng`.
    fn apply_power_cut(&self, rng: &mut SplitMix64) {
        for (path, state) in self.files.lock().iter() {
            if !state.entry_durable && rng.below(2) == 0 {
                let _ = std::fs::remove_file(path);
                continue;
            }
            let (durable, written) = (&state.durable, &state.written);
            let mut image = durable.clone();
            // Unsynced bytes start where the two differ: appended past the durable size, or
            // written over zeros the segment was extended by (and made durable) earlier.
            let same = durable
                .iter()
                .zip(written)
                .position(|(d, w)| d != w)
                .unwrap_or(durable.len().min(written.len()));
            let extra = written.len().saturating_sub(same);
            if extra > 0 {
                // A prefix of them reached the disk; past it, what was durable stays. Where
                // they were written over durable bytes (the zeros a segment was extended by),
                // the disk keeps whole sectors, old or new: the prefix ends at a sector
                // boundary there. Past the durable size it ends where the file's size does.
                let keep = rng.below(extra as u64 + 1) as usize;
                let sector = opdbus_blockchain::chain::segment::SECTOR as usize;
                let end = match same + keep {
                    end if end < durable.len() => end / sector * sector,
                    end => end,
                };
                image = written[..end].to_vec();
                image.extend_from_slice(durable.get(end..).unwrap_or_default());
                if rng.below(2) == 0 {
                    // The size (or the extent) reached the disk, the newest sectors did not.
                    let from = same + rng.below(keep as u64 + 1) as usize;
                    let zero_from = from.div_ceil(sector) * sector;
                    if zero_from < end {
                        image[zero_from..end].fill(0);
                    }
                }
            }
            std::fs::write(path, &image).expect("write the crash image");
        }
    }
}

/// The backend handed to the store.
struct Handle(Arc<ModelIo>);

impl SegmentIo for Handle {
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        self.0.step("create")?;
        let real = RealIo.create(path)?;
        self.0
            .files
            .lock()
            .insert(path.to_path_buf(), FileState::default());
        Ok(Box::new(ModelFile {
            model: self.0.clone(),
            path: path.to_path_buf(),
            real,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        self.0.step("open")?;
        let real = RealIo.open(path)?;
        let bytes = std::fs::read(path)?;
        self.0.files.lock().insert(
            path.to_path_buf(),
            FileState {
                written: bytes.clone(),
                durable: bytes,
                entry_durable: true,
            },
        );
        Ok(Box::new(ModelFile {
            model: self.0.clone(),
            path: path.to_path_buf(),
            real,
        }))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.step("sync_dir")?;
        for (path, state) in self.0.files.lock().iter_mut() {
            if path.parent() == Some(dir) {
                state.entry_durable = true;
            }
        }
        Ok(())
    }
}

struct ModelFile {
    model: Arc<ModelIo>,
    path: PathBuf,
    real: Box<dyn SegmentFile>,
}

impl ModelFile {
    fn state<R>(&self, f: impl FnOnce(&mut FileState) -> R) -> R {
        let mut files = self.model.files.lock();
        f(files.get_mut(&self.path).expect("tracked file"))
    }
}

impl SegmentFile for ModelFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.model.step("write")?;
        self.real.write_all_at(buf, offset)?;
        self.state(|s| {
            let end = offset as usize + buf.len();
            if s.written.len() < end {
                s.written.resize(end, 0);
            }
            s.written[offset as usize..end].copy_from_slice(buf);
        });
        Ok(())
    }

    fn extend(&self, offset: u64, len: u64) -> io::Result<()> {
        self.model.step("extend")?;
        self.real.extend(offset, len)?;
        // The new size is written like data: durable at the next sync, zeros until written.
        self.state(|s| {
            let end = (offset + len) as usize;
            if s.written.len() < end {
                s.written.resize(end, 0);
            }
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        // Durability is what this model tracks; the real flush would only slow the test.
        self.model.step("sync")?;
        self.state(|s| s.durable = s.written.clone());
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.model.step("set_len")?;
        self.real.set_len(len)?;
        self.state(|s| s.written.resize(len as usize, 0));
        Ok(())
    }
}

fn install(model: &Arc<ModelIo>) -> SharedIo {
    Arc::new(Handle(model.clone()))
}

fn batch(rng: &mut SplitMix64, tag: u64) -> Vec<(PluginFootprint, Caller)> {
    let n = 1 + rng.below(12) as usize;
    (0..n)
        .map(|i| {
            let pad = "p".repeat(rng.below(600) as usize);
            (
                PluginFootprint::new(
                    "crash",
                    "write",
                    serde_json::json!({"tag": tag, "i": i, "pad": pad}),
                ),
                Caller::this_process(),
            )
        })
        .collect()
}

fn small_segments() -> StoreOptions {
    StoreOptions {
        segment_bytes: 16 * 1024,
    }
}

/// Runs writes until the power cut at operation `cut_at`, cuts, reopens and checks. Returns
/// the number of acknowledged blocks that were checked.
fn power_cut_case(cut_at: u64, seed: u64) -> Result<u64, TestCaseError> {
    let mut rng = SplitMix64(seed);
    let dir = scratch_dir();
    let chain = dir.path().join("chain");
    // Some history from an earlier run, so recovery also starts from an existing chain.
    {
        let (mut writer, _, _) = store::open(&chain, small_segments()).expect("create");
        for tag in 0..rng.below(4) {
            writer.append(&batch(&mut rng, tag)).expect("history");
        }
    }
    let model = ModelIo::new();
    model.faults.lock().insert(cut_at, Fault::PowerCut);
    let io = install(&model);
    let before = store::open_read_only(&chain).expect("read the history");
    let mut acked: Vec<(u64, Hash)> = (0..=before.head().0)
        .map(|h| {
            let block = before.block_at(h).expect("read").expect("present");
            (h, block.hash)
        })
        .collect();
    drop(before);
    // The power may also go while the store opens (cutting a torn tail, say).
    if let Ok((mut writer, _reader, _)) = store::open_with_io(&chain, small_segments(), io) {
        for tag in 100.. {
            match writer.append(&batch(&mut rng, tag)) {
                Ok(blocks) => acked.extend(blocks.iter().map(|b| (b.height, b.hash))),
                Err(_) => break,
            }
            if tag > 400 {
                break; // the cut point lies beyond this run; the check still holds
            }
        }
    }
    model.apply_power_cut(&mut rng);
    match rng.below(4) {
        0 => {}
        1 => {
            let _ = std::fs::remove_file(chain.join("index"));
        }
        2 => {
            if let Ok(bytes) = std::fs::read(chain.join("index")) {
                let cut = rng.below(bytes.len() as u64 + 1) as usize;
                let _ = std::fs::write(chain.join("index"), &bytes[..cut]);
            }
        }
        _ => {
            if let Ok(mut bytes) = std::fs::read(chain.join("index")) {
                let from = rng.below(bytes.len() as u64 + 1) as usize;
                bytes[from..].fill(0);
                let _ = std::fs::write(chain.join("index"), &bytes);
            }
        }
    }

    let (mut writer, reader, _) = store::open(&chain, small_segments())
        .map_err(|e| TestCaseError::fail(format!("cut {cut_at} seed {seed}: reopen: {e}")))?;
    let (head, _) = reader.head();
    let max_acked = acked.iter().map(|a| a.0).max().unwrap_or(0);
    prop_assert!(
        head >= max_acked,
        "cut {cut_at} seed {seed}: head {head} < acked {max_acked}"
    );
    for (height, hash) in &acked {
        let block = reader
            .block_at(*height)
            .map_err(|e| TestCaseError::fail(format!("cut {cut_at} seed {seed}: {e}")))?;
        let block = block.ok_or_else(|| {
            TestCaseError::fail(format!("cut {cut_at} seed {seed}: acked {height} lost"))
        })?;
        prop_assert_eq!(&block.hash, hash, "acked block {} changed", height);
        prop_assert_eq!(reader.height_of(hash), Some(*height));
    }
    for height in 0..=head {
        prop_assert!(reader.block_at(height).ok().flatten().is_some());
    }
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    prop_assert!(
        report.ok(),
        "cut {cut_at} seed {seed}: {}",
        report.summary()
    );
    prop_assert_eq!(report.blocks_checked, head + 1);
    let more = writer
        .append(&batch(&mut rng, 9999))
        .map_err(|e| TestCaseError::fail(format!("write after recovery: {e}")))?;
    prop_assert_eq!(more[0].height, head + 1);
    Ok(acked.len() as u64)
}

/// A directory on tmpfs when there is one: the real flushes under the model cost nothing there
/// (durability is what the model tracks), so hundreds of cases run in seconds.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

static CHECKED: AtomicU64 = AtomicU64::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Power cut at a random I/O operation, random survivors of unsynced bytes.
    #[test]
    fn acked_blocks_survive_a_power_cut_at_any_io_operation(cut_at in 1u64..600, seed in any::<u64>()) {
        let checked = power_cut_case(cut_at, seed)?;
        let total = CHECKED.fetch_add(checked, Ordering::Relaxed) + checked;
        if std::env::var_os("OPDBUS_REPORT").is_some() {
            eprintln!("power cut at op {cut_at}: {checked} acked blocks checked (total {total})");
        }
    }
}

/// Every operation index of a short run, one by one (no randomness in where the cut falls).
#[test]
fn acked_blocks_survive_a_power_cut_at_each_of_the_first_250_operations() {
    let mut checked = 0;
    for cut_at in 1..=250 {
        checked += power_cut_case(cut_at, 0x9e37_79b9_7f4a_7c15 ^ cut_at)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!("250 power cuts, {checked} acked blocks checked");
}

#[test]
fn a_full_disk_at_reservation_refuses_cleanly_and_writing_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let model = ModelIo::new();
    let io = install(&model);
    let (mut writer, reader, _) =
        store::open_with_io(&chain, StoreOptions::default(), io).expect("open");
    let mut rng = SplitMix64(7);
    writer.append(&batch(&mut rng, 1)).expect("first batch");
    let head = reader.head();
    let segment = opdbus_blockchain::chain::segment::list(&chain)
        .expect("list")
        .pop()
        .expect("segment")
        .1;
    let before = std::fs::read(&segment).expect("read");
    // A batch larger than the free space ahead needs a new extension; the disk is full.
    let big: Vec<_> = (0..80)
        .map(|i| {
            (
                PluginFootprint::new(
                    "p",
                    "o",
                    serde_json::json!({"i": i, "pad": "y".repeat(4000)}),
                ),
                Caller::this_process(),
            )
        })
        .collect();
    // Both the chunk ahead and the fallback (the batch alone) find the disk full.
    *model.fail_kind.lock() = Some(("extend", libc::ENOSPC, 2));
    let err = writer.append(&big).expect_err("no space");
    assert!(matches!(err, ChainError::NoSpace(_)), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(writer.latched().is_none(), "a full disk is not a latch");
    assert_eq!(
        reader.head(),
        head,
        "nothing of the refused batch is visible"
    );
    // The records are as they were; the free space after them may be cut (the rollback cuts
    // the segment to its data), never written.
    let records = |bytes: &[u8]| {
        bytes[..opdbus_blockchain::chain::segment::trailing_zeros_start(bytes)].to_vec()
    };
    let after = std::fs::read(&segment).expect("read");
    assert!(records(&after) == records(&before), "nothing was written");
    assert!(after.len() <= before.len());
    // Space is back.
    let blocks = writer.append(&big).expect("space is back");
    assert_eq!(blocks[0].height, head.0 + 1);
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.torn_tail_bytes == 0,
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn a_failed_fdatasync_latches_the_store_and_tells_the_daemon_to_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let model = ModelIo::new();
    let io = install(&model);
    let (writer, reader, _) =
        store::open_with_io(&chain, StoreOptions::default(), io).expect("open");
    let commit = GroupCommit::start(writer, || {}, None).expect("writer thread");
    let fp = || PluginFootprint::new("p", "o", serde_json::json!({}));
    let ok = commit
        .commit(fp(), Caller::this_process())
        .await
        .expect("first commit");
    *model.fail_kind.lock() = Some(("sync", libc::EIO, 1));
    let err = commit
        .commit(fp(), Caller::this_process())
        .await
        .expect_err("fdatasync fails");
    assert!(matches!(err, ChainError::Latched(_)), "{err}");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    // The daemon waits on this to exit non-zero (systemd restarts it).
    let reason = commit.latched().await;
    assert!(reason.contains("fdatasync"), "{reason}");
    // Latched: later writes fail even though the disk works again, and nothing is visible.
    let err = commit
        .commit(fp(), Caller::this_process())
        .await
        .expect_err("latched");
    assert!(matches!(err, ChainError::Latched(_)), "{err}");
    assert_eq!(reader.head().0, ok.height);
    commit.shutdown().await;
    drop(reader);
    // A restart recovers from disk: the acked block is there; the unacked ones are cut or,
    // if their bytes reached the disk whole, kept (they were never acknowledged either way).
    let (mut writer, reader, _) = store::open(&chain, StoreOptions::default()).expect("reopen");
    assert_eq!(
        reader.block_at(ok.height).expect("read").map(|b| b.hash),
        Some(ok.hash)
    );
    writer
        .append(&[(fp(), Caller::this_process())])
        .expect("writes work after the restart");
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(report.ok(), "{}", report.summary());
}

/// A case the property test found (2026-12-06): bytes written over a segment's extended zeros,
/// cut mid-sector by the model, a crash image no disk leaves (it keeps whole sectors).
#[test]
fn a_power_cut_over_extended_zeros_keeps_whole_sectors() {
    power_cut_case(520, 10691258923789553393).unwrap_or_else(|e| panic!("{e}"));
}
