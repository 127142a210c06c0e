//! Segment bytes read or written outside the writer, for the two callers that need them: a
//! unified snapshot (the open segment as it stood at a writer barrier, the chain id) and the
//! offline repair from the cache (one damaged record replaced in place by a good copy).
//! Callers deal in heights, hashes and blocks; the byte layout stays under `chain/`.

use super::block::{Block, Hash};
use super::segment::{self, ChainId, Parsed, HEADER_LEN, RECORD_HEAD_LEN, RECORD_TAIL_LEN};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Why segment bytes could not be read or rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The bytes are not what the caller was told they hold.
    #[error("{0}")]
    Mismatch(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RewriteError {
    let path = path.to_owned();
    move |source| RewriteError::Io { path, source }
}

/// The open segment `open` (first height `first`) as it stood at a writer barrier: its first
/// `len` bytes, cut right after the record of `height`, which must hash to `head_hash`. Bytes
/// appended after the barrier are left out.
pub fn segment_at_head(
    open: &Path,
    first: u64,
    len: u64,
    height: u64,
    head_hash: &Hash,
) -> Result<Vec<u8>, RewriteError> {
    let mut bytes = Vec::with_capacity(len as usize);
    crate::files::open_read(open)
        .map_err(io_err(open))?
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(io_err(open))?;
    let mismatch =
        |why: String| RewriteError::Mismatch(format!("{} at the barrier: {why}", open.display()));
    if bytes.len() < HEADER_LEN {
        return Err(mismatch("shorter than its header".into()));
    }
    // Walk the records of heights first..=height.
    let mut at = HEADER_LEN;
    let mut last = None;
    for h in first..=height {
        let Some(body) = read_len(&bytes, at) else {
            return Err(mismatch(format!("ends before height {h}")));
        };
        let end = at + segment::record_len(body);
        if end > bytes.len() {
            return Err(mismatch(format!("ends inside height {h}")));
        }
        last = Some(at..end);
        at = end;
    }
    match last {
        Some(range) => match segment::parse_complete(&bytes[range]) {
            Parsed::Record { block, .. } if block.height == height && &block.hash == head_hash => {}
            _ => return Err(mismatch(format!("its record at {height} is not the head"))),
        },
        // The head is the last block of the previous (sealed) segment.
        None if first == height + 1 => {}
        None => return Err(mismatch("no record".into())),
    }
    bytes.truncate(at);
    Ok(bytes)
}

/// The chain id in the header of the first segment of `chain_dir`; `None` when the directory
/// holds no segment (or does not exist), `Mismatch` when the header is not a segment header.
pub fn chain_id(chain_dir: &Path) -> Result<Option<ChainId>, RewriteError> {
    let segments = match segment::list(chain_dir) {
        Ok(segments) => segments,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_err(chain_dir)(err)),
    };
    let Some((first, path)) = segments.first() else {
        return Ok(None);
    };
    let mut header = Vec::with_capacity(HEADER_LEN);
    crate::files::open_read(path)
        .and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(io_err(path))?;
    segment::check_header(&header, *first)
        .map(Some)
        .map_err(|why| RewriteError::Mismatch(format!("{}: {why}", path.display())))
}

/// The record of one height as it is on disk, to be replaced by a good copy of its block.
/// Records before it in its segment must have verified good (their length fields are used).
pub struct DamagedRecord {
    segment: PathBuf,
    /// The segment that follows, whose first record links to this block if this is its last.
    next_segment: Option<PathBuf>,
    bytes: Vec<u8>,
    at: usize,
    /// The record's length field, when it and its check agree and fit the file.
    intact_len: Option<usize>,
}

impl DamagedRecord {
    /// Finds the record of `height` in `chain_dir`; `Err` says why it cannot be rewritten.
    pub fn find(chain_dir: &Path, height: u64) -> Result<DamagedRecord, String> {
        let segments = segment::list(chain_dir).map_err(|e| e.to_string())?;
        let index = segments
            .iter()
            .rposition(|(first, _)| *first <= height)
            .ok_or("no segment holds it")?;
        let (first, path) = &segments[index];
        let bytes =
            crate::files::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut at = HEADER_LEN;
        for _ in *first..height {
            let len = read_len(&bytes, at).ok_or("a record before it is cut short")?;
            at += segment::record_len(len);
        }
        if is_free_space(&bytes[at.min(bytes.len())..]) {
            return Err("its record is missing".into());
        }
        let damaged = &bytes[at..];
        let intact_len = read_len(damaged, 0).filter(|len| {
            let check = read_len(damaged, 4).map(|c| c as u32);
            check == Some(*len as u32 ^ u32::MAX) && segment::record_len(*len) <= damaged.len()
        });
        Ok(DamagedRecord {
            segment: path.clone(),
            next_segment: segments.get(index + 1).map(|(_, p)| p.clone()),
            bytes,
            at,
            intact_len,
        })
    }

    /// The segment file that holds the record.
    pub fn segment(&self) -> &Path {
        &self.segment
    }

    /// What the chain itself says the block's hash is: the next record's `prev_hash` and the
    /// hash in the record's own trailer. Empty when the length field is damaged.
    pub fn claimed_hashes(&self) -> Vec<Hash> {
        let Some(len) = self.intact_len else {
            return Vec::new();
        };
        let trailer = self.at + RECORD_HEAD_LEN + len;
        let stored = self.bytes.get(trailer..trailer + 32);
        self.next_prev_hash(len)
            .into_iter()
            .chain(stored.map(|s| s.try_into().expect("32 bytes")))
            .collect()
    }

    /// The `prev_hash` of the record after this one, were this one `len` bytes of body.
    fn next_prev_hash(&self, len: usize) -> Option<Hash> {
        let start = self.at + segment::record_len(len);
        let first_prev = |bytes: &[u8], start: usize| match segment::parse_record(
            bytes.get(start..)?,
            bytes.len() - start,
            start as u64,
        ) {
            Parsed::Record { block, .. } => Some(block.prev_hash),
            _ => None,
        };
        if !is_free_space(&self.bytes[start.min(self.bytes.len())..]) {
            return first_prev(&self.bytes, start);
        }
        // The next block opens the next segment.
        let next = crate::files::read(self.next_segment.as_ref()?).ok()?;
        first_prev(&next, HEADER_LEN)
    }

    /// Checks that `block` is the one the chain expects here: as long as the record, and
    /// linked to by the next block (or, for the newest block, named by the record's trailer).
    pub fn proves_genuine(&self, block: &Block) -> Result<(), String> {
        let len = block.encoded_len();
        if self.intact_len.is_some_and(|intact| intact != len) {
            return Err("the cached copy's length differs from the record's".into());
        }
        let end = self.at + segment::record_len(len);
        if end > self.bytes.len() {
            return Err("the cached copy is longer than the space its record occupies".into());
        }
        match self.next_prev_hash(len) {
            Some(expected) if expected == block.hash => Ok(()),
            Some(_) => Err("the next block does not link to the cached copy".into()),
            // The newest block: nothing links to it; its record's trailer must name it and
            // the record must end the data (the file, or the free space after it).
            None if is_free_space(&self.bytes[end..]) => {
                if self.bytes[end - RECORD_TAIL_LEN..end - 4] == block.hash {
                    Ok(())
                } else {
                    Err("the newest block's record does not name the cached copy".into())
                }
            }
            None => Err("the record after it cannot be read to confirm the cached copy".into()),
        }
    }

    /// Writes `block`'s record over the damaged one, in place, and syncs the file. Call only
    /// after [`DamagedRecord::proves_genuine`]: the record must keep its length.
    pub fn rewrite(&self, block: &Block) -> Result<(), String> {
        let path = &self.segment;
        let mut record = Vec::with_capacity(segment::record_len(block.encoded_len()));
        segment::encode_record(block, &mut record);
        let file = crate::files::open(
            crate::files::options(crate::files::FILE_MODE).write(true),
            path,
        )
        .map_err(|e| format!("opening {} for writing: {e}", path.display()))?;
        file.write_all_at(&record, self.at as u64)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("rewriting {}: {e}", path.display()))
    }
}

/// Whether `rest` (a segment from a record boundary to its end) holds no more records: it is
/// empty or free space, zeros only (docs/format.md, "Free space after the last record").
fn is_free_space(rest: &[u8]) -> bool {
    rest.iter().all(|&b| b == 0)
}

/// The little-endian `u32` at `at`, if the bytes reach that far.
fn read_len(bytes: &[u8], at: usize) -> Option<usize> {
    let field = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes(field.try_into().expect("4 bytes")) as usize)
}
