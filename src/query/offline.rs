//! A reader of a chain directory for tools (`opdbus-chain log`, `report`): it never writes,
//! takes no lock, and costs a few reads to open whatever the chain's length.
//!
//! [`crate::chain::store::open_read_only`] loads the whole index into memory (seconds on ten
//! million blocks). This reader instead reads the index file in place, one 56-byte entry per
//! height asked for (docs/format.md, "Index file"), and each block from its segment by the
//! entry's location, checking that the record parses, hashes to the entry's hash and holds
//! that height. The index is written after each commit without sync, so it may lag the
//! segments: the records after its last entry that checks out are scanned, with every rule
//! start-up applies (`scan::scan_segment`), and the head is the last of them. [`advance`]
//! scans on from there: `log --follow` calls it to see blocks added since.
//!
//! Without a usable index (missing, of another chain, its last entries not matching the
//! segments) the reader falls back to `open_read_only`, which scans the segments.
//!
//! [`advance`]: OfflineReader::advance

use super::BlockSource;
use crate::chain::block::{Block, Hash, ZERO_HASH};
use crate::chain::error::{ChainError, Result};
use crate::chain::scan::{self, RecordReader, ScanEnd, ScanState};
use crate::chain::segment::{self, Parsed, HEADER_LEN};
use crate::chain::store::{self, ChainReader};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const INDEX_FILE: &str = "index";
const INDEX_MAGIC: &[u8; 8] = b"OPDBIDX\0";
const INDEX_ENTRY_LEN: u64 = 56;
/// Entries from the end of the index tried before it is called unusable: the daemon extends
/// it after each commit, so a reader may meet its newest entries half written.
const INDEX_ENTRIES_TRIED: u64 = 64;

/// How long a reader waits before it reads again a record of the newest segment that does not
/// check out: the writer copies a batch into the file in far less (it is already in memory).
pub const REREAD_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// Where a block's record is.
#[derive(Debug, Clone, Copy)]
struct Location {
    hash: Hash,
    segment_first: u64,
    offset: u64,
    len: u32,
}

/// Blocks up to the point where the scan of the segments took over.
enum Base {
    /// The first `entries` entries of the index file.
    Index { file: File, entries: u64 },
    /// A chain loaded by `open_read_only` (no usable index).
    Loaded(ChainReader),
}

/// Where the next record is expected, and what it must link to.
struct Cursor {
    segment_first: u64,
    offset: u64,
    state: ScanState,
}

/// See the module documentation.
pub struct OfflineReader {
    dir: PathBuf,
    base: Base,
    /// Blocks after the base, found by scanning the segments.
    tail: Vec<Location>,
    cursor: Cursor,
    segments: Vec<(u64, PathBuf)>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    fallback: Option<String>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ChainError {
    move |e| ChainError::io(context, e)
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let listed = segment::list(dir).map_err(io(format!("listing {}", dir.display())))?;
    if listed.is_empty() {
        return Err(ChainError::io(
            format!("no chain in {}", dir.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    Ok(listed)
}

impl OfflineReader {
    /// Opens the chain in `dir`: through its index when it checks out, else by loading it.
    pub fn open(dir: &Path) -> Result<Self> {
        let segments = list_segments(dir)?;
        match Self::open_indexed(dir, segments.clone()) {
            Ok(Ok(reader)) => Ok(reader),
            Ok(Err(unusable)) => {
                let mut reader = Self::over_loaded(dir, store::open_read_only(dir)?, segments)?;
                reader.fallback = Some(unusable);
                Ok(reader)
            }
            Err(err) => Err(err),
        }
    }

    /// Why the index was not used, when it was not.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Height and hash of the newest block found.
    pub fn head(&self) -> (u64, Hash) {
        (
            self.cursor.state.next_height - 1,
            self.cursor.state.prev_hash,
        )
    }

    fn base_len(&self) -> u64 {
        match &self.base {
            Base::Index { entries, .. } => *entries,
            Base::Loaded(reader) => reader.head().0 + 1,
        }
    }

    /// `Ok(Err(reason))` when the index cannot be used; `Err` when the segments cannot be read.
    fn open_indexed(
        dir: &Path,
        segments: Vec<(u64, PathBuf)>,
    ) -> Result<std::result::Result<Self, String>> {
        let (first, first_path) = &segments[0];
        let mut header = [0u8; HEADER_LEN];
        crate::files::open_read(first_path)
            .and_then(|f| f.read_exact_at(&mut header, 0))
            .map_err(io(format!("reading {}", first_path.display())))?;
        let chain_id =
            segment::check_header(&header, *first).map_err(|e| ChainError::Corrupted {
                height: 0,
                reason: format!("{}: {e}", first_path.display()),
            })?;
        let index_path = dir.join(INDEX_FILE);
        let file = match crate::files::open_read(&index_path) {
            Ok(file) => file,
            Err(err) => return Ok(Err(format!("{}: {err}", index_path.display()))),
        };
        let mut index_header = [0u8; HEADER_LEN];
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < HEADER_LEN as u64
            || file.read_exact_at(&mut index_header, 0).is_err()
            || &index_header[..8] != INDEX_MAGIC
            || index_header[24..40] != chain_id[..]
        {
            return Ok(Err("the index's header is not this chain's".into()));
        }
        let mut reader = OfflineReader {
            dir: dir.to_path_buf(),
            base: Base::Index { file, entries: 0 },
            tail: Vec::new(),
            cursor: Cursor {
                segment_first: 0,
                offset: 0,
                state: ScanState {
                    chain_id,
                    next_height: 0,
                    prev_hash: ZERO_HASH,
                    prev_timestamp_ns: 0,
                },
            },
            segments,
            files: Mutex::new(HashMap::new()),
            fallback: None,
        };
        let entries = (len - HEADER_LEN as u64) / INDEX_ENTRY_LEN;
        let mut trusted = None;
        let Base::Index { file, .. } = &reader.base else {
            return Ok(Err("no index".into()));
        };
        for height in (entries.saturating_sub(INDEX_ENTRIES_TRIED)..entries).rev() {
            let Ok(location) = index_entry(file, height) else {
                continue;
            };
            if let Ok(block) = reader.read(&location, height) {
                trusted = Some((height, location, block));
                break;
            }
        }
        let Some((height, location, block)) = trusted else {
            return Ok(Err(
                "the index's last entries do not match the segments".into()
            ));
        };
        if let Base::Index { entries, .. } = &mut reader.base {
            *entries = height + 1;
        }
        reader.cursor = Cursor {
            segment_first: location.segment_first,
            offset: location.offset + location.len as u64,
            state: ScanState {
                chain_id,
                next_height: height + 1,
                prev_hash: block.hash,
                prev_timestamp_ns: block.timestamp_ns,
            },
        };
        reader.advance()?;
        Ok(Ok(reader))
    }

    /// A reader over a loaded chain; the cursor is found by scanning the segment of its head.
    fn over_loaded(dir: &Path, loaded: ChainReader, segments: Vec<(u64, PathBuf)>) -> Result<Self> {
        let (head, _) = loaded.head();
        let (first, path) = segments
            .iter()
            .rev()
            .find(|(first, _)| *first <= head)
            .cloned()
            .expect("segment 0 holds height 0");
        let before = match first.checked_sub(1) {
            Some(prev) => loaded.block_at(prev)?,
            None => None,
        };
        let mut state = ScanState {
            chain_id: loaded.chain_id(),
            next_height: first,
            prev_hash: before.as_ref().map_or(ZERO_HASH, |b| b.hash),
            prev_timestamp_ns: before.as_ref().map_or(0, |b| b.timestamp_ns),
        };
        let mut file =
            crate::files::open_read(&path).map_err(io(format!("opening {}", path.display())))?;
        file.seek(SeekFrom::Start(HEADER_LEN as u64))
            .map_err(io(format!("reading {}", path.display())))?;
        let mut records = RecordReader::new(file, HEADER_LEN as u64);
        let end = scan::scan_segment(
            &mut records,
            &segment::file_name(first),
            true,
            Some(head),
            &mut state,
            &mut |_, _, _| {},
        )?;
        let offset = match end {
            ScanEnd::Clean { end } => end,
            ScanEnd::Torn { at, .. } | ScanEnd::Stopped { at } => at,
        };
        Ok(OfflineReader {
            dir: dir.to_path_buf(),
            base: Base::Loaded(loaded),
            tail: Vec::new(),
            cursor: Cursor {
                segment_first: first,
                offset,
                state,
            },
            segments,
            files: Mutex::new(HashMap::new()),
            fallback: None,
        })
    }

    /// Scans the records written after the head found so far; returns how many blocks were
    /// added. Each is checked by the rules start-up applies; a record still being written is
    /// left for the next call.
    ///
    /// The writer fills free space (zeros) that the segment already has, so a reader may see
    /// a record half copied: some of its bytes still zero, anywhere in it. Only a record that
    /// checks out is ever shown; while a writer holds the chain, one in the newest segment that
    /// does not is read again after [`REREAD_AFTER`] before it is called damage.
    pub fn advance(&mut self) -> Result<u64> {
        let mut added = 0;
        let mut reread = false;
        loop {
            self.segments = list_segments(&self.dir)?;
            let at = self
                .segments
                .iter()
                .position(|(first, _)| *first == self.cursor.segment_first)
                .ok_or_else(|| ChainError::Corrupted {
                    height: self.cursor.state.next_height,
                    reason: format!(
                        "{} vanished while it was being read",
                        segment::file_name(self.cursor.segment_first)
                    ),
                })?;
            let path = self.segments[at].1.clone();
            let newest = at + 1 == self.segments.len();
            let mut file = crate::files::open_read(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            file.seek(SeekFrom::Start(self.cursor.offset))
                .map_err(io(format!("reading {}", path.display())))?;
            let mut records = RecordReader::new(file, self.cursor.offset);
            let segment_first = self.cursor.segment_first;
            let (state_before, tail_before, added_before) =
                (self.cursor.state.clone(), self.tail.len(), added);
            let tail = &mut self.tail;
            let scanned = scan::scan_segment(
                &mut records,
                &segment::file_name(segment_first),
                newest,
                None,
                &mut self.cursor.state,
                &mut |block, offset, len| {
                    tail.push(Location {
                        hash: block.hash,
                        segment_first,
                        offset,
                        len,
                    });
                    added += 1;
                },
            );
            let end = match scanned {
                Err(ChainError::Corrupted { .. })
                    if newest && !reread && store::writer_active(&self.dir) =>
                {
                    self.cursor.state = state_before;
                    self.tail.truncate(tail_before);
                    added = added_before;
                    reread = true;
                    std::thread::sleep(REREAD_AFTER);
                    continue;
                }
                other => other?,
            };
            match end {
                ScanEnd::Clean { end } => self.cursor.offset = end,
                ScanEnd::Torn { at, .. } | ScanEnd::Stopped { at } => {
                    self.cursor.offset = at;
                    return Ok(added);
                }
            }
            let Some((next_first, next_path)) = self.segments.get(at + 1).cloned() else {
                return Ok(added);
            };
            let height = self.cursor.state.next_height;
            if next_first != height {
                return Err(ChainError::Corrupted {
                    height,
                    reason: format!(
                        "{} follows a segment that ends before height {height}",
                        segment::file_name(next_first)
                    ),
                });
            }
            let mut header = [0u8; HEADER_LEN];
            let read =
                crate::files::open_read(&next_path).and_then(|f| f.read_exact_at(&mut header, 0));
            if read.is_err() || header == [0; HEADER_LEN] {
                // Being created: the writer makes its header durable before any record.
                return Ok(added);
            }
            match segment::check_header(&header, next_first) {
                Ok(id) if id == self.cursor.state.chain_id => {}
                Ok(_) => {
                    return Err(ChainError::Corrupted {
                        height,
                        reason: format!("{} names another chain id", next_path.display()),
                    })
                }
                Err(err) => {
                    return Err(ChainError::Corrupted {
                        height,
                        reason: format!("{}: {err}", next_path.display()),
                    })
                }
            }
            self.cursor.segment_first = next_first;
            self.cursor.offset = HEADER_LEN as u64;
        }
    }
}

/// Entry `height` of the index file.
fn index_entry(file: &File, height: u64) -> Result<Location> {
    let mut raw = [0u8; INDEX_ENTRY_LEN as usize];
    file.read_exact_at(&mut raw, HEADER_LEN as u64 + height * INDEX_ENTRY_LEN)
        .map_err(io(format!("reading the index entry of height {height}")))?;
    let u64_at = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
    Ok(Location {
        hash: raw[..32].try_into().expect("32 bytes"),
        segment_first: u64_at(32),
        offset: u64_at(40),
        len: u32::from_le_bytes(raw[48..52].try_into().expect("4 bytes")),
    })
}

impl OfflineReader {
    fn segment_file(&self, first: u64, height: u64) -> Result<Arc<File>> {
        if let Some(file) = self.files.lock().get(&first) {
            return Ok(Arc::clone(file));
        }
        let path = self
            .segments
            .binary_search_by_key(&first, |(f, _)| *f)
            .ok()
            .map(|i| &self.segments[i].1)
            .ok_or_else(|| ChainError::Corrupted {
                height,
                reason: format!(
                    "the index places it in {}, which does not exist (delete the index while \
                     the daemon is stopped to have it rebuilt)",
                    segment::file_name(first)
                ),
            })?;
        let file = Arc::new(
            crate::files::open_read(path).map_err(io(format!("opening {}", path.display())))?,
        );
        self.files.lock().insert(first, Arc::clone(&file));
        Ok(file)
    }

    /// The block at `location`, which must parse, be `height` and hash to the location's hash.
    fn read(&self, location: &Location, height: u64) -> Result<Block> {
        let corrupted = |reason: String| ChainError::Corrupted { height, reason };
        if (location.len as usize) < segment::record_len(0)
            || location.len as usize > segment::record_len(segment::MAX_BODY_LEN)
        {
            return Err(corrupted(format!(
                "its index entry gives a record length of {}",
                location.len
            )));
        }
        let file = self.segment_file(location.segment_first, height)?;
        let mut bytes = vec![0u8; location.len as usize];
        file.read_exact_at(&mut bytes, location.offset)
            .map_err(|e| {
                corrupted(format!(
                    "cannot read its record ({} at offset {}): {e}",
                    segment::file_name(location.segment_first),
                    location.offset
                ))
            })?;
        let place = || {
            format!(
                "{} at offset {}",
                segment::file_name(location.segment_first),
                location.offset
            )
        };
        match segment::parse_complete(&bytes) {
            Parsed::Record { block, .. } if block.height != height => Err(corrupted(format!(
                "the record holds height {} ({})",
                block.height,
                place()
            ))),
            Parsed::Record { block, .. } if block.hash != location.hash => Err(corrupted(format!(
                "the record hashes to {}, the index says {} ({})",
                hex::encode(block.hash),
                hex::encode(location.hash),
                place()
            ))),
            Parsed::Record { block, .. } => Ok(block),
            Parsed::Damaged(damage) => Err(corrupted(format!("{damage} ({})", place()))),
            Parsed::Torn | Parsed::Free => {
                Err(corrupted(format!("its record is incomplete ({})", place())))
            }
        }
    }
}

impl BlockSource for OfflineReader {
    fn head_height(&self) -> u64 {
        self.head().0
    }

    fn block_at(&self, height: u64) -> Result<Option<Block>> {
        if height > self.head_height() {
            return Ok(None);
        }
        let base_len = self.base_len();
        if height < base_len {
            return match &self.base {
                Base::Index { file, .. } => {
                    self.read(&index_entry(file, height)?, height).map(Some)
                }
                Base::Loaded(reader) => reader.block_at(height),
            };
        }
        let location = self.tail[(height - base_len) as usize];
        self.read(&location, height).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::Caller;
    use crate::chain::store::{ChainWriter, StoreOptions};
    use crate::footprint::PluginFootprint;

    fn append(writer: &mut ChainWriter, from: u64, n: u64) {
        let batch: Vec<_> = (from..from + n)
            .map(|i| {
                let data = serde_json::json!({ "i": i, "pad": "p".repeat(50) });
                (
                    PluginFootprint::new("network", "create", data),
                    Caller::this_process(),
                )
            })
            .collect();
        writer.append(&batch).expect("append");
    }

    /// A chain of 1 + 300 blocks over several 4 KiB segments, and its writer.
    fn chain() -> (tempfile::TempDir, ChainWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            segment_bytes: 4096,
        };
        let (mut writer, _, _) = store::open(dir.path(), options).expect("open");
        for first in (1..=300).step_by(50) {
            append(&mut writer, first, 50);
        }
        (dir, writer)
    }

    fn same_blocks(reader: &OfflineReader, expected: &ChainReader) {
        assert_eq!(reader.head(), expected.head());
        for height in 0..=expected.head().0 {
            assert_eq!(
                reader.block_at(height).expect("read"),
                expected.block_at(height).expect("read"),
                "height {height}"
            );
        }
        assert!(reader
            .block_at(expected.head().0 + 1)
            .expect("read")
            .is_none());
    }

    #[test]
    fn reads_every_block_through_the_index() {
        let (dir, writer) = chain();
        assert!(segment::list(dir.path()).expect("list").len() > 3);
        let reader = OfflineReader::open(dir.path()).expect("open");
        assert_eq!(reader.fallback(), None);
        assert!(reader.tail.is_empty(), "the index covers the chain");
        same_blocks(&reader, &writer.reader());
    }

    #[test]
    fn a_lagging_index_is_completed_by_scanning_the_segments() {
        let (dir, writer) = chain();
        let index = dir.path().join(INDEX_FILE);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&index)
            .expect("index");
        // 120 entries and half of the next one.
        file.set_len(HEADER_LEN as u64 + 120 * INDEX_ENTRY_LEN + 20)
            .expect("cut");
        let reader = OfflineReader::open(dir.path()).expect("open");
        assert_eq!(reader.fallback(), None);
        assert_eq!(reader.base_len(), 120);
        assert_eq!(reader.tail.len(), 301 - 120);
        same_blocks(&reader, &writer.reader());
    }

    #[test]
    fn without_an_index_it_loads_the_chain() {
        let (dir, writer) = chain();
        std::fs::remove_file(dir.path().join(INDEX_FILE)).expect("rm index");
        let reader = OfflineReader::open(dir.path()).expect("open");
        assert!(reader.fallback().is_some());
        same_blocks(&reader, &writer.reader());
        // Garbage in the newest entries, too many of them to step back over.
        let (dir, writer) = chain();
        let index = dir.path().join(INDEX_FILE);
        let mut bytes = std::fs::read(&index).expect("index");
        let end = bytes.len();
        bytes[end - 100 * INDEX_ENTRY_LEN as usize..].fill(0x5a);
        std::fs::write(&index, bytes).expect("write");
        let reader = OfflineReader::open(dir.path()).expect("open");
        assert!(reader.fallback().is_some());
        same_blocks(&reader, &writer.reader());
    }

    #[test]
    fn advance_sees_blocks_added_after_opening_across_segments() {
        for drop_index in [false, true] {
            let (dir, mut writer) = chain();
            if drop_index {
                std::fs::remove_file(dir.path().join(INDEX_FILE)).expect("rm index");
            }
            let mut reader = OfflineReader::open(dir.path()).expect("open");
            assert_eq!(reader.advance().expect("advance"), 0);
            append(&mut writer, 301, 1);
            assert_eq!(reader.advance().expect("advance"), 1);
            append(&mut writer, 302, 120);
            assert_eq!(reader.advance().expect("advance"), 120);
            same_blocks(&reader, &writer.reader());
        }
    }

    #[test]
    fn a_follower_never_shows_a_record_half_copied_into_free_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut writer, _, _) = store::open(dir.path(), StoreOptions::default()).expect("open");
        append(&mut writer, 1, 5);
        let path = segment::list(dir.path())
            .expect("list")
            .pop()
            .expect("seg")
            .1;
        let before = std::fs::read(&path).expect("read");
        let data_end = segment::trailing_zeros_start(&before);
        append(&mut writer, 6, 1);
        let after = std::fs::read(&path).expect("read");
        assert_eq!(after.len(), before.len(), "written into the free space");
        let record = after[data_end..segment::trailing_zeros_start(&after)].to_vec();
        drop(writer);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.write_all_at(&vec![0; record.len()], data_end as u64)
            .expect("back to free space");
        let mut follower = OfflineReader::open(dir.path()).expect("open");
        assert_eq!(follower.head().0, 5);
        // As a reader may meet it while the writer copies it: a hole of zeros in the body, and
        // then only the first bytes of the trailer.
        // As a reader may meet it while the writer copies it: a hole of zeros in the body, the
        // copy not past the body yet.
        let body_end = record.len() - segment::RECORD_TAIL_LEN;
        let mut half = record[..body_end - 10].to_vec();
        half[30..60].fill(0);
        file.write_all_at(&half, data_end as u64).expect("half");
        assert_eq!(follower.advance().expect("not an error"), 0);
        assert_eq!(follower.head().0, 5);
        assert!(follower.block_at(6).expect("read").is_none());
        // The copy in the trailer, the hole still there: that looks like damage until the
        // writer, in the meantime, finishes the record; the follower reads it again.
        let mut half = record[..body_end + 7].to_vec();
        half[30..60].fill(0);
        file.write_all_at(&half, data_end as u64).expect("half");
        // A writer holds the chain meanwhile (the daemon would).
        let lock = store::take_lock(dir.path()).expect("lock");
        let finish = {
            let (path, record) = (path.clone(), record.clone());
            std::thread::spawn(move || {
                std::thread::sleep(REREAD_AFTER / 10);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.write_all_at(&record, data_end as u64))
                    .expect("whole");
            })
        };
        assert_eq!(follower.advance().expect("read again, whole"), 1);
        finish.join().expect("writer");
        drop(lock);
        assert_eq!(follower.head().0, 6);
        assert_eq!(
            follower.block_at(6).expect("read").map(|b| b.height),
            Some(6)
        );
        // Damage that stays is still damage once read again.
        let mut damaged = record.clone();
        damaged[40] ^= 0x20;
        file.write_all_at(&damaged, (data_end + record.len()) as u64)
            .expect("damaged");
        assert!(matches!(
            follower.advance(),
            Err(ChainError::Corrupted { height: 7, .. })
        ));
    }

    #[test]
    fn a_damaged_record_is_an_error_at_its_height() {
        let (dir, writer) = chain();
        let reader = writer.reader();
        drop(writer);
        // Flip a byte inside the data of some block in the middle.
        let segments = segment::list(dir.path()).expect("list");
        let (first, path) = &segments[2];
        let mut bytes = std::fs::read(path).expect("segment");
        bytes[HEADER_LEN + 100] ^= 0x01;
        std::fs::write(path, bytes).expect("write");
        let offline = OfflineReader::open(dir.path()).expect("open");
        match offline.block_at(*first) {
            Err(ChainError::Corrupted { height, .. }) => assert_eq!(height, *first),
            other => panic!("expected corruption at {first}, got {other:?}"),
        }
        assert!(offline.block_at(first - 1).is_ok());
        drop(reader);
    }
}
