//! Sequential checking of a chain's segments: the one code path of start-up recovery
//! (`store::load`) and `verify`, so both apply exactly the same rules.
//!
//! Segments are streamed: a [`RecordReader`] holds one record and a [`READ_BUF`]-byte buffer,
//! whatever the size of the segment, so memory per scan stays bounded by the largest record
//! (at most [`segment::MAX_BODY_LEN`], in practice a footprint of tens of KiB).
//!
//! Rules beyond the record format (see `docs/format.md`, "Verification rules" and "Recovery"):
//! heights dense, `prev_hash` links, timestamps never decrease, every footprint's fields obey
//! the hard rules every writer enforced (`footprint::check_recorded`). The writer's stricter
//! rules of today are not corruption here: older chains hold blocks written before them, and
//! start-up must not refuse those; `verify` reports them as a warning. Only the newest segment may end torn; only a newest segment that
//! holds no complete record after a missing, torn or zero header is an interrupted creation.
//! Any segment may end in free space (zeros from a record boundary to the end of the file,
//! `segment::Parsed::Free`): that is where its data ends.

use super::block::{Block, Hash, ZERO_HASH};
use super::error::{ChainError, Result};
use super::segment::{self, ChainId, Parsed, HEADER_LEN, RECORD_HEAD_LEN};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Plugin name of the genesis block.
pub const GENESIS_PLUGIN: &str = "opdbus-blockchain";
/// Operation of the genesis block.
pub const GENESIS_OPERATION: &str = "genesis";
/// Bytes a scan reads ahead from a segment file.
pub const READ_BUF: usize = 256 * 1024;

/// Where a sequential scan stands: the next height it expects, the hash it must link to and
/// the timestamp the next block may not be earlier than.
#[derive(Debug, Clone)]
pub struct ScanState {
    pub chain_id: ChainId,
    pub next_height: u64,
    pub prev_hash: Hash,
    pub prev_timestamp_ns: u64,
}

/// How the scanned records of one segment ended (file offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte up to `end` belonged to a valid record; the file ends there or holds only
    /// zeros after it (free space the writer extended the segment by).
    Clean { end: u64 },
    /// From `at` to `end` (the end of the file), an incomplete or zero-filled record.
    Torn { at: u64, end: u64 },
    /// The scan stopped before the record at `at`: the height asked for was reached.
    Stopped { at: u64 },
}

/// Reads the records of one segment, one at a time, through a bounded buffer.
pub struct RecordReader<R> {
    inner: BufReader<R>,
    /// File offset of the next byte `inner` yields.
    offset: u64,
    /// The record being parsed (reused).
    record: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    /// Reads records from `inner`, whose first byte is at file offset `offset`.
    pub fn new(inner: R, offset: u64) -> Self {
        RecordReader {
            inner: BufReader::with_capacity(READ_BUF, inner),
            offset,
            record: Vec::new(),
        }
    }

    /// The bytes of the record the last [`RecordReader::next_record`] parsed, as read (a
    /// replica copies them verbatim).
    pub fn record_bytes(&self) -> &[u8] {
        &self.record
    }

    /// Capacity of what this reader holds: the read buffer plus the largest record so far.
    pub fn held_bytes(&self) -> usize {
        self.inner.capacity() + self.record.capacity()
    }

    /// Parses the next record with the rules of [`segment::parse_record`] and returns its file
    /// offset with what it is; `None` when the file ends at a record boundary. Where the rules
    /// need to know whether the rest of the file is zero, the rest is read (and dropped) in
    /// chunks.
    pub fn next_record(&mut self) -> std::io::Result<Option<(u64, Parsed)>> {
        let at = self.offset;
        self.record.clear();
        if self.read_up_to(RECORD_HEAD_LEN)? == 0 {
            return Ok(None);
        }
        if self.record.len() == RECORD_HEAD_LEN {
            let len = u32::from_le_bytes(self.record[0..4].try_into().expect("4 bytes"));
            let check = u32::from_le_bytes(self.record[4..8].try_into().expect("4 bytes"));
            if check == len ^ u32::MAX && len as usize <= segment::MAX_BODY_LEN {
                let total = segment::record_len(len as usize);
                self.read_up_to(total - RECORD_HEAD_LEN)?;
            }
        }
        let zeros_from = self.zeros_from()?;
        Ok(Some((
            at,
            segment::parse_record(&self.record, zeros_from, at),
        )))
    }

    /// Appends up to `n` bytes to `record` (fewer only at the end of the file), growing it a
    /// buffer at a time so that a length field pointing past the end costs no more than the
    /// file holds. Returns how many were read.
    fn read_up_to(&mut self, n: usize) -> std::io::Result<usize> {
        let target = self.record.len() + n;
        // The common case: the buffer already holds all of it.
        let buffered = self.inner.buffer();
        if buffered.len() >= n {
            self.record.extend_from_slice(&buffered[..n]);
            self.inner.consume(n);
            self.offset += n as u64;
            return Ok(n);
        }
        while self.record.len() < target {
            let start = self.record.len();
            let step = (target - start).min(READ_BUF);
            self.record.resize(start + step, 0);
            let mut filled = 0;
            while filled < step {
                match self.inner.read(&mut self.record[start + filled..]) {
                    Ok(0) => break,
                    Ok(got) => filled += got,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        self.record.truncate(start);
                        return Err(err);
                    }
                }
            }
            self.record.truncate(start + filled);
            self.offset += filled as u64;
            if filled < step {
                break;
            }
        }
        Ok(self.record.len() - (target - n))
    }

    /// Where the zero run that ends the file starts, relative to the record held, when it
    /// starts inside it; the record's length when the record ends non-zero or non-zero bytes
    /// follow it. Reads the rest of the file only when the record ends in a zero byte.
    fn zeros_from(&mut self) -> std::io::Result<usize> {
        let start = segment::trailing_zeros_start(&self.record);
        if start == self.record.len() {
            return Ok(start);
        }
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(chunk) => chunk,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if chunk.is_empty() {
                return Ok(start);
            }
            if chunk.iter().any(|&b| b != 0) {
                return Ok(self.record.len());
            }
            let n = chunk.len();
            self.inner.consume(n);
            self.offset += n as u64;
        }
    }
}

/// Checks the records read by `records` (a segment from a record boundary to its end) in
/// order, calling `on_block(block, offset, len)` for each valid one, and stops before a height
/// above `up_to`. A torn tail is accepted only when `may_be_torn` (the newest segment);
/// everything else that fails is `Corrupted` at the height it concerns, naming `name` and the
/// offset.
pub fn scan_segment<R: Read>(
    records: &mut RecordReader<R>,
    name: &str,
    may_be_torn: bool,
    up_to: Option<u64>,
    state: &mut ScanState,
    on_block: &mut dyn FnMut(&Block, u64, u32),
) -> Result<ScanEnd> {
    loop {
        let height = state.next_height;
        let next = records.next_record().map_err(|e| {
            ChainError::io(format!("reading {name} at offset {}", records.offset), e)
        })?;
        let fail = |at: u64, reason: String| {
            Err(ChainError::Corrupted {
                height,
                reason: format!("{reason} ({name} at offset {at})"),
            })
        };
        match next {
            None => {
                return Ok(ScanEnd::Clean {
                    end: records.offset,
                })
            }
            Some((at, _)) if up_to.is_some_and(|limit| height > limit) => {
                return Ok(ScanEnd::Stopped { at });
            }
            Some((at, Parsed::Record { block, len })) => {
                match check_block(&block, state) {
                    Ok(()) => {}
                    Err(ChainError::Corrupted { reason, .. }) => return fail(at, reason),
                    Err(other) => return Err(other),
                }
                on_block(&block, at, len as u32);
                state.next_height += 1;
                state.prev_hash = block.hash;
                state.prev_timestamp_ns = block.timestamp_ns;
            }
            Some((at, Parsed::Free)) => return Ok(ScanEnd::Clean { end: at }),
            Some((at, Parsed::Torn)) if may_be_torn => {
                return Ok(ScanEnd::Torn {
                    at,
                    end: records.offset,
                })
            }
            Some((at, Parsed::Torn)) => {
                return fail(at, "a sealed segment ends in an incomplete record".into())
            }
            Some((at, Parsed::Damaged(reason))) => return fail(at, reason.to_string()),
        }
    }
}

/// [`scan_segment`] over bytes in memory (`bytes` start at file offset `file_offset`);
/// `on_block` gets offsets relative to `bytes`.
pub fn scan_records(
    bytes: &[u8],
    file_offset: u64,
    may_be_torn: bool,
    state: &mut ScanState,
    mut on_block: impl FnMut(&Block, usize, usize),
) -> Result<ScanEnd> {
    let mut records = RecordReader::new(bytes, file_offset);
    scan_segment(
        &mut records,
        "segment",
        may_be_torn,
        None,
        state,
        &mut |block, at, len| on_block(block, (at - file_offset) as usize, len as usize),
    )
}

/// Checks every rule a block must obey at its place: its link (see [`check_link`]), a
/// timestamp not earlier than the block before, and for footprints the hard field rules.
pub fn check_block(block: &Block, state: &ScanState) -> Result<()> {
    let height = state.next_height;
    check_link(block, height, &state.prev_hash, &state.chain_id)?;
    if height == 0 {
        return Ok(());
    }
    if block.timestamp_ns < state.prev_timestamp_ns {
        return Err(ChainError::Corrupted {
            height,
            reason: format!(
                "timestamp {} is earlier than {} of height {}: time never runs backwards along the chain",
                block.timestamp_ns,
                state.prev_timestamp_ns,
                height - 1
            ),
        });
    }
    crate::footprint::check_recorded(&block.plugin, &block.operation, &block.data).map_err(|err| {
        ChainError::Corrupted {
            height,
            reason: format!("the footprint breaks a hard field rule: {err}"),
        }
    })
}

/// Checks that `block` is the block expected at `height` after `prev_hash`; height 0 must be
/// the genesis block of `chain_id`.
pub fn check_link(block: &Block, height: u64, prev_hash: &Hash, chain_id: &ChainId) -> Result<()> {
    let fail = |reason: String| Err(ChainError::Corrupted { height, reason });
    if block.height != height {
        return fail(format!(
            "record holds height {} where {height} belongs",
            block.height
        ));
    }
    if height == 0 {
        if block.prev_hash != ZERO_HASH
            || block.plugin != GENESIS_PLUGIN
            || block.operation != GENESIS_OPERATION
        {
            return fail("the first block is not a genesis block".into());
        }
        let id = serde_json::from_str::<serde_json::Value>(&block.data)
            .ok()
            .and_then(|v| v["chain_id"].as_str().map(str::to_owned));
        if id.as_deref() != Some(hex::encode(chain_id).as_str()) {
            return fail("the genesis block names another chain id than the segments".into());
        }
    } else if &block.prev_hash != prev_hash {
        return fail(format!(
            "prev_hash {} does not match the hash {} of height {}",
            hex::encode(block.prev_hash),
            hex::encode(prev_hash),
            height - 1
        ));
    }
    Ok(())
}

/// Where a scan may start instead of at genesis: after a record the index vouches for.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Position of the segment in the listing.
    pub segment: usize,
    /// Offset of the first record to scan.
    pub offset: u64,
    pub state: ScanState,
}

/// A segment that belongs to the chain, open for reading.
pub struct ChainSegment {
    pub first_height: u64,
    pub path: PathBuf,
    pub file: File,
}

/// What a scan of a whole chain directory found.
pub struct ChainScan {
    pub chain_id: ChainId,
    /// The segments of the chain, in order (without an interrupted creation), when the scan
    /// was asked to keep them.
    pub segments: Vec<ChainSegment>,
    /// Where the scan stands after the last valid record.
    pub state: ScanState,
    /// Length of the newest segment up to its last valid record (where the scan stopped, when
    /// it stopped early).
    pub valid_len: u64,
    /// A torn tail of the newest segment: from `valid_len` to this length.
    pub torn_to: Option<u64>,
    /// The newest segment is an interrupted creation (path and size): it holds no complete
    /// record, so it is not part of the chain; the daemon removes it at start.
    pub interrupted: Option<(PathBuf, u64)>,
}

/// Checks the chain whose segments are `listed` (ordered by first height, as
/// [`segment::list`] returns them): every header, then every record from genesis, or from
/// `resume` on (the segments before it have their headers checked only). Stops after height
/// `up_to`. `on_block(segment, block, offset, len)` is called for each valid block. The
/// segments are returned open when `keep_files` (the store reads from them); otherwise each is
/// closed once scanned, so a scan holds one file descriptor whatever the number of segments.
pub fn scan_chain(
    listed: &[(u64, PathBuf)],
    resume: Option<Resume>,
    up_to: Option<u64>,
    keep_files: bool,
    on_block: &mut dyn FnMut(usize, &Block, u64, u32),
) -> Result<ChainScan> {
    let Some((_, first_path)) = listed.first() else {
        return Err(ChainError::Corrupted {
            height: 0,
            reason: "no segment files".into(),
        });
    };
    let (scan_from, mut state) = match resume {
        Some(resume) => (Some((resume.segment, resume.offset)), Some(resume.state)),
        None => (None, None),
    };
    let mut segments: Vec<ChainSegment> = Vec::with_capacity(listed.len());
    let mut chain_id: Option<ChainId> = None;
    let mut valid_len = 0;
    let mut torn_to = None;
    let mut interrupted = None;
    let last = listed.len() - 1;
    for (i, (first, path)) in listed.iter().enumerate() {
        let name = file_name(path);
        let file = crate::files::open_read(path)
            .map_err(|e| ChainError::io(format!("opening {}", path.display()), e))?;
        let header = read_header(&file, path)?;
        // Heights are known here when every record before this segment was scanned.
        let scanned = scan_from.is_none_or(|(from, _)| i > from);
        let here = match &state {
            Some(state) if scanned => state.next_height,
            _ => *first,
        };
        let id = match segment::check_header(&header, *first) {
            Ok(id) => id,
            Err(reason) => {
                let expected = chain_id.map(|id| segment::encode_header(*first, &id));
                let zeros = segment::trailing_zeros_start(&header);
                let torn_header = expected.is_some_and(|e| header[..zeros] == e[..zeros]);
                // Only the segment the writer would start next: one named past a gap may
                // follow a removed segment, and removing it would hide that.
                let next_one = scanned && state.as_ref().is_some_and(|s| s.next_height == *first);
                if i == last && i > 0 && torn_header {
                    match first_record_after_header(&file, path)? {
                        None if !next_one => {}
                        None => {
                            let len = file
                                .metadata()
                                .map_err(|e| {
                                    ChainError::io(format!("reading {}", path.display()), e)
                                })?
                                .len();
                            interrupted = Some((path.clone(), len));
                            break;
                        }
                        Some(found) => {
                            return Err(ChainError::Corrupted {
                                height: here,
                                reason: format!(
                                    "segment {}: {reason}, but {found}: its header is damaged, this is not an interrupted creation",
                                    path.display()
                                ),
                            })
                        }
                    }
                }
                return Err(ChainError::Corrupted {
                    height: here,
                    reason: format!("segment {}: {reason}", path.display()),
                });
            }
        };
        match chain_id {
            None if *first != 0 => {
                return Err(ChainError::Corrupted {
                    height: 0,
                    reason: format!(
                        "the first segment {} does not start at height 0",
                        first_path.display()
                    ),
                })
            }
            None => chain_id = Some(id),
            Some(expected) if expected != id => {
                return Err(ChainError::Corrupted {
                    height: here,
                    reason: format!("segment {} belongs to another chain", path.display()),
                })
            }
            Some(_) => {}
        }
        let own;
        let file: &File = if keep_files {
            segments.push(ChainSegment {
                first_height: *first,
                path: path.clone(),
                file,
            });
            &segments.last().expect("just pushed").file
        } else {
            own = file;
            &own
        };
        let offset = match scan_from {
            Some((from, _)) if i < from => continue,
            Some((from, offset)) if i == from => offset,
            _ => HEADER_LEN as u64,
        };
        let state = state.get_or_insert(ScanState {
            chain_id: id,
            next_height: 0,
            prev_hash: ZERO_HASH,
            prev_timestamp_ns: 0,
        });
        if scanned && *first != state.next_height {
            let expected = state.next_height;
            let reason = if *first > expected {
                format!(
                    "blocks {expected}..{} are missing (segment {} follows)",
                    first - 1,
                    path.display()
                )
            } else {
                format!("segment {} repeats heights from {first}", path.display())
            };
            return Err(ChainError::Corrupted {
                height: expected,
                reason,
            });
        }
        let mut file_at = file;
        file_at
            .seek(SeekFrom::Start(offset))
            .map_err(|e| ChainError::io(format!("reading {}", path.display()), e))?;
        let mut records = RecordReader::new(file_at, offset);
        let end = scan_segment(
            &mut records,
            &name,
            i == last,
            up_to,
            state,
            &mut |block, at, len| on_block(i, block, at, len),
        )?;
        match end {
            ScanEnd::Clean { end } => valid_len = end,
            ScanEnd::Torn { at, end } => {
                valid_len = at;
                torn_to = Some(end);
            }
            ScanEnd::Stopped { at } => {
                valid_len = at;
                break;
            }
        }
        if up_to.is_some_and(|limit| state.next_height > limit) {
            break;
        }
    }
    let chain_id = chain_id.expect("segment 0 was checked");
    Ok(ChainScan {
        chain_id,
        segments,
        state: state.unwrap_or(ScanState {
            chain_id,
            next_height: 0,
            prev_hash: ZERO_HASH,
            prev_timestamp_ns: 0,
        }),
        valid_len,
        torn_to,
        interrupted,
    })
}

/// The first bytes of a segment, up to a header's length.
fn read_header(file: &File, path: &Path) -> Result<Vec<u8>> {
    let mut header = vec![0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match file.read_at(&mut header[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ChainError::io(format!("reading {}", path.display()), err)),
        }
    }
    header.truncate(filled);
    Ok(header)
}

/// After a header that is missing, torn or zero: `None` when nothing but zeros or an
/// incomplete record follows (an interrupted creation), else what was found there.
fn first_record_after_header(file: &File, path: &Path) -> Result<Option<String>> {
    let mut file_at = file;
    file_at
        .seek(SeekFrom::Start(HEADER_LEN as u64))
        .map_err(|e| ChainError::io(format!("reading {}", path.display()), e))?;
    let next = RecordReader::new(file_at, HEADER_LEN as u64)
        .next_record()
        .map_err(|e| ChainError::io(format!("reading {}", path.display()), e))?;
    Ok(match next {
        None | Some((_, Parsed::Torn | Parsed::Free)) => None,
        Some((at, Parsed::Record { block, .. })) => Some(format!(
            "a complete record (height {}) follows at offset {at}",
            block.height
        )),
        Some((at, Parsed::Damaged(reason))) => {
            Some(format!("data follows at offset {at} ({reason})"))
        }
    })
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
