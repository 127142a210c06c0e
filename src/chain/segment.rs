//! Segment files: the append-only files that hold the chain.
//!
//! A segment is named `segment-<first height, 20 decimal digits>.chain` and starts with a
//! 40-byte header, followed by records back to back:
//!
//! ```text
//! header  0   8   magic "OPDBSEG\0"
//!         8   4   format version, u32 LE = 1
//!         12  4   reserved, zero
//!         16  8   height of the first record, u64 LE
//!         24  16  chain id (random, fixed at genesis; the same in every segment)
//! record  0   4   body length N, u32 LE
//!         4   4   N xor 0xFFFF_FFFF (a damaged length is corruption, never a torn tail)
//!         8   N   the block's canonical encoding (see `block.rs`)
//!         8+N 32  SHA-256 of the encoding
//!         40+N 4  end marker "BLK\n"
//! ```
//! The writer extends the active segment ahead of its records (`fallocate`, see `store.rs`), so
//! a segment may end in a run of zero bytes after its last record: **free space**. Where a
//! record would start, eight zero bytes cannot be a record head (a zero length's check field is
//! `0xFFFF_FFFF`), so a position from which every byte to the end of the file is zero is the
//! end of the data, in any segment. Zeros followed by anything non-zero are not free space.
//!
//! A crash can leave the newest records of the newest segment incomplete or zero-filled; they
//! were never acknowledged (acks follow fdatasync) and recovery cuts them. Anything else that
//! does not check out is corruption and is reported with the height it concerns.
//!
//! Zero fill from a power cut starts at a sector boundary (the file's size reached the disk,
//! some of its newest sectors did not): when such a run starts inside a record's trailer, the
//! record is torn if everything before the run matches the record's own hash and marker.

use super::block::{Block, EncodedBlock, Hash};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"OPDBSEG\0";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 40;
pub const RECORD_HEAD_LEN: usize = 8;
pub const RECORD_TAIL_LEN: usize = 36;
pub const END_MARKER: &[u8; 4] = b"BLK\n";
/// A block encoding larger than this is not a record but damage (it bounds what a reader
/// allocates for a length it has not yet checked against the file size).
pub const MAX_BODY_LEN: usize = 64 * 1024 * 1024;
/// The unit in which a power cut loses the newest data: a zero run that a crash left starts at
/// a multiple of this many bytes in the file.
pub const SECTOR: u64 = 512;

pub type ChainId = [u8; 16];

/// File name of the segment whose first record has `first_height`.
pub fn file_name(first_height: u64) -> String {
    format!("segment-{first_height:020}.chain")
}

/// The first height encoded in a segment file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".chain")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The segment files of a chain directory, ordered by first height.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_file_name) {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

pub fn encode_header(first_height: u64, chain_id: &ChainId) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_height.to_le_bytes());
    header[24..40].copy_from_slice(chain_id);
    header
}

/// Why a segment header does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header is {0} bytes, expected {HEADER_LEN}")]
    Short(usize),
    #[error("not a segment file (bad magic)")]
    Magic,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("header says first height {stored}, file name says {named}")]
    FirstHeight { stored: u64, named: u64 },
}

/// Checks every byte of a segment header; returns the chain id it names.
pub fn check_header(bytes: &[u8], first_height: u64) -> Result<ChainId, HeaderError> {
    if bytes.len() < HEADER_LEN {
        return Err(HeaderError::Short(bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    if bytes[12..16] != [0; 4] {
        return Err(HeaderError::Reserved);
    }
    let stored = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if stored != first_height {
        return Err(HeaderError::FirstHeight {
            stored,
            named: first_height,
        });
    }
    Ok(bytes[24..40].try_into().expect("16 bytes"))
}

/// Appends the record for `block` to `out`.
pub fn encode_record(block: &Block, out: &mut Vec<u8>) {
    let len = block.encoded_len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(len ^ u32::MAX).to_le_bytes());
    let start = out.len();
    block.encode_into(out);
    debug_assert_eq!(out.len() - start, len as usize);
    out.extend_from_slice(&block.hash);
    out.extend_from_slice(END_MARKER);
}

/// As [`encode_record`], from the encoding made when the block was built (no second encoding).
pub fn encode_record_of(block: &EncodedBlock, out: &mut Vec<u8>) {
    let len = block.encoding.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(len ^ u32::MAX).to_le_bytes());
    out.extend_from_slice(&block.encoding);
    out.extend_from_slice(&block.hash);
    out.extend_from_slice(END_MARKER);
}

/// Total size on disk of the record of a block whose encoding is `body_len` bytes.
pub fn record_len(body_len: usize) -> usize {
    RECORD_HEAD_LEN + body_len + RECORD_TAIL_LEN
}

/// What the bytes at one position of a segment turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A complete record whose stored hash matches its content.
    Record { block: Block, len: usize },
    /// Only zero bytes from here to the end of the file: the data ended before, the rest is
    /// space the writer extended the segment by and has not used yet.
    Free,
    /// The record (or what is left of it) is incomplete or zero-filled: a torn write.
    Torn,
    /// Bytes that cannot be a torn write and are not a valid record.
    Damaged(Damage),
}

/// What is wrong with bytes that should be a complete record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("record length field is damaged")]
    Length,
    #[error("record end marker is damaged")]
    EndMarker,
    #[error("block does not decode: {0}")]
    Decode(#[from] super::block::DecodeError),
    #[error("content hashes to {} but the record says {}", hex::encode(.content), hex::encode(.stored))]
    Hash { content: Hash, stored: Hash },
}

/// Where the run of zero bytes that ends `bytes` starts (`bytes.len()` when it ends non-zero).
pub fn trailing_zeros_start(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

/// Parses the record at the start of `bytes`, which runs to the end of the file and starts at
/// file offset `file_offset`; from `zeros_from` on, `bytes` holds only zeros (see
/// [`trailing_zeros_start`]).
///
/// A record is torn when the file ends inside it, or when everything from inside it to the end
/// of the file is zero and that zero run covers at least its whole trailer (36 bytes, four of
/// them a non-zero marker: no single damaged byte can fake it), or when the zero run starts in
/// the trailer at a sector boundary and the bytes before it are the record's own (its body
/// hashes to the stored hash bytes that are left).
///
/// When `bytes` (and so the rest of the file) is nothing but zeros, it is [`Parsed::Free`]: the
/// end of the data, not a record.
pub fn parse_record(bytes: &[u8], zeros_from: usize, file_offset: u64) -> Parsed {
    if zeros_from == 0 && !bytes.is_empty() {
        return Parsed::Free;
    }
    if bytes.len() < RECORD_HEAD_LEN {
        return Parsed::Torn;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let check = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if check != len ^ u32::MAX || len as usize > MAX_BODY_LEN {
        return if zeros_from < RECORD_HEAD_LEN {
            Parsed::Torn
        } else {
            Parsed::Damaged(Damage::Length)
        };
    }
    let body_len = len as usize;
    let total = record_len(body_len);
    if bytes.len() < total {
        return Parsed::Torn;
    }
    if zeros_from <= total - RECORD_TAIL_LEN {
        return Parsed::Torn;
    }
    if zeros_from < total
        && (file_offset + zeros_from as u64).is_multiple_of(SECTOR)
        && torn_in_trailer(&bytes[..total], zeros_from)
    {
        return Parsed::Torn;
    }
    parse_complete(&bytes[..total])
}

/// Whether `record`, zero from `zeros_from` (inside its trailer) on, is its own block with the
/// end of the trailer lost.
fn torn_in_trailer(record: &[u8], zeros_from: usize) -> bool {
    let body_end = record.len() - RECORD_TAIL_LEN;
    let Ok(block) = Block::decode(&record[RECORD_HEAD_LEN..body_end]) else {
        return false;
    };
    let mut trailer = block.hash.to_vec();
    trailer.extend_from_slice(END_MARKER);
    record[body_end..zeros_from] == trailer[..zeros_from - body_end]
}

/// Parses exactly one complete record (a record the index points at, or one the scan found
/// whole): any mismatch is damage.
pub fn parse_complete(bytes: &[u8]) -> Parsed {
    if bytes.len() < RECORD_HEAD_LEN + RECORD_TAIL_LEN {
        return Parsed::Damaged(Damage::Short(bytes.len()));
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let check = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if check != len ^ u32::MAX || record_len(len as usize) != bytes.len() {
        return Parsed::Damaged(Damage::Length);
    }
    let body_end = RECORD_HEAD_LEN + len as usize;
    let body = &bytes[RECORD_HEAD_LEN..body_end];
    let tail = &bytes[body_end..];
    if &tail[32..] != END_MARKER {
        return Parsed::Damaged(Damage::EndMarker);
    }
    let block = match Block::decode(body) {
        Ok(block) => block,
        Err(err) => return Parsed::Damaged(err.into()),
    };
    let stored: Hash = tail[..32].try_into().expect("32 bytes");
    if block.hash != stored {
        return Parsed::Damaged(Damage::Hash {
            content: block.hash,
            stored,
        });
    }
    Parsed::Record {
        block,
        len: bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::{Caller, ZERO_HASH};

    fn record() -> (Block, Vec<u8>) {
        let block = Block::new(
            1,
            5,
            ZERO_HASH,
            Caller::default(),
            "network".into(),
            "create".into(),
            "{}".into(),
        );
        let mut bytes = Vec::new();
        encode_record(&block, &mut bytes);
        (block, bytes)
    }

    fn parse(bytes: &[u8]) -> Parsed {
        parse_record(bytes, trailing_zeros_start(bytes), HEADER_LEN as u64)
    }

    #[test]
    fn a_record_parses_back_to_its_block() {
        let (block, bytes) = record();
        match parse(&bytes) {
            Parsed::Record { block: parsed, len } => {
                assert_eq!(parsed, block);
                assert_eq!(len, bytes.len());
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn every_prefix_is_torn() {
        let (_, bytes) = record();
        for len in 0..bytes.len() {
            assert!(matches!(parse(&bytes[..len]), Parsed::Torn), "prefix {len}");
        }
    }

    #[test]
    fn zero_fill_covering_the_trailer_is_torn() {
        let (_, bytes) = record();
        for from in 1..=bytes.len() - RECORD_TAIL_LEN {
            let mut zero_filled = bytes.clone();
            zero_filled[from..].fill(0);
            zero_filled.extend_from_slice(&[0; 100]);
            assert!(
                matches!(parse(&zero_filled), Parsed::Torn),
                "zero-filled from {from}"
            );
        }
    }

    #[test]
    fn zeros_from_a_record_boundary_to_the_end_are_free_space() {
        for len in [1, RECORD_HEAD_LEN - 1, RECORD_HEAD_LEN, 4096] {
            assert!(matches!(parse(&vec![0; len]), Parsed::Free), "{len} zeros");
        }
        // Zeros followed by anything else are not free space.
        let (_, bytes) = record();
        for tail in [vec![1u8], bytes] {
            let mut zeros_then_data = vec![0; 64];
            zeros_then_data.extend_from_slice(&tail);
            assert!(matches!(parse(&zeros_then_data), Parsed::Damaged(_)));
        }
    }

    #[test]
    fn a_sector_tear_inside_the_trailer_is_torn_only_at_a_sector_boundary() {
        let (_, bytes) = record();
        let body_end = bytes.len() - RECORD_TAIL_LEN;
        for from in body_end + 1..bytes.len() {
            let mut torn = bytes.clone();
            torn[from..].fill(0);
            let zeros = trailing_zeros_start(&torn);
            // Place the record so that the zero run starts at a sector boundary.
            let aligned = SECTOR * 8 - from as u64;
            assert!(
                matches!(parse_record(&torn, zeros, aligned), Parsed::Torn),
                "tear at {from}"
            );
            // Not on a boundary: a torn write cannot end there, so it is damage.
            assert!(
                matches!(parse_record(&torn, zeros, aligned + 1), Parsed::Damaged(_)),
                "zeros at {from} off a sector boundary"
            );
            // A changed body with a torn trailer is damage wherever it lies.
            let mut changed = torn.clone();
            changed[RECORD_HEAD_LEN + 3] ^= 0x20;
            assert!(
                matches!(parse_record(&changed, zeros, aligned), Parsed::Damaged(_)),
                "changed body, tear at {from}"
            );
        }
    }

    #[test]
    fn every_single_flipped_byte_is_damage() {
        let (_, bytes) = record();
        for at in 0..bytes.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= mask;
                assert!(
                    matches!(parse(&bad), Parsed::Damaged(_)),
                    "flip {mask:#x} at {at} not detected"
                );
            }
        }
    }

    #[test]
    fn data_after_a_zeroed_record_is_damage() {
        let (_, bytes) = record();
        let mut bad = vec![0; bytes.len()];
        bad.extend_from_slice(&bytes);
        assert!(matches!(parse(&bad), Parsed::Damaged(_)));
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("segment-42.chain"), None);
        assert_eq!(parse_file_name("index"), None);
    }
}
