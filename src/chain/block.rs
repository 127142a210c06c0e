//! One block of the chain: its fields, its canonical byte encoding and its hash.
//!
//! The encoding is the single source of truth: it is what the hash covers, what the segment
//! files store and what `docs/format.md` specifies. Every variable-length field is prefixed by its
//! length, so no two different blocks share an encoding.
//!
//! ```text
//! offset  size  field
//! 0       1     encoding version, always 1
//! 1       8     height, u64 little-endian
//! 9       8     timestamp, nanoseconds since the Unix epoch, u64 LE
//! 17      32    prev_hash (all zeros at height 0)
//! 49      4     caller uid, u32 LE (0xFFFF_FFFF = unknown)
//! 53      4     caller pid, u32 LE (0 = unknown)
//! 57      ...   caller bus name   (u32 LE length + UTF-8 bytes)
//!         ...   caller unit       (u32 LE length + UTF-8 bytes)
//!         ...   plugin            (u32 LE length + UTF-8 bytes)
//!         ...   operation         (u32 LE length + UTF-8 bytes)
//!         ...   data              (u32 LE length + the JSON text exactly as received)
//! ```
//! `hash = SHA-256(encoding)`.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Version byte at the start of every block encoding.
pub const ENCODING_VERSION: u8 = 1;
/// Size of the fixed part of the encoding, before the first length-prefixed field.
const FIXED_LEN: usize = 1 + 8 + 8 + 32 + 4 + 4;
/// Where [`Block::encode`] puts the height and the `prev_hash` (the block cache leaves the
/// latter out of what it stores, see `cache/disk.rs`).
pub const ENCODED_HEIGHT: std::ops::Range<usize> = 1..9;
pub const ENCODED_PREV_HASH: std::ops::Range<usize> = 17..49;
/// A SHA-256 digest.
pub type Hash = [u8; 32];
/// The `prev_hash` of the genesis block.
pub const ZERO_HASH: Hash = [0; 32];
/// `uid` of a caller whose uid is not known (as `(uid_t)-1` in POSIX).
pub const UNKNOWN_UID: u32 = u32::MAX;

/// Who asked for a block, as the bus saw it. Never taken from the payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// Unix uid, `None` when not known (in-process callers have the daemon's own).
    pub uid: Option<u32>,
    /// Process id, `None` when not known.
    pub pid: Option<u32>,
    /// Unique bus name (`:1.42`); empty for in-process callers.
    pub bus_name: String,
    /// systemd unit of the calling process when known; empty otherwise.
    pub unit: String,
}

impl Caller {
    /// From its fixed-width form (records, Query replies): `UNKNOWN_UID` and pid 0 mean not
    /// known.
    pub fn from_wire(uid: u32, pid: u32, bus_name: String, unit: String) -> Self {
        Caller {
            uid: (uid != UNKNOWN_UID).then_some(uid),
            pid: (pid != 0).then_some(pid),
            bus_name,
            unit,
        }
    }

    /// The calling process itself (library users, the footprint receiver).
    pub fn this_process() -> Self {
        Caller {
            uid: Some(nix::unistd::getuid().as_raw()),
            pid: Some(std::process::id()),
            bus_name: String::new(),
            unit: String::new(),
        }
    }
}

/// A block as stored in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub height: u64,
    pub timestamp_ns: u64,
    pub prev_hash: Hash,
    pub caller: Caller,
    pub plugin: String,
    pub operation: String,
    /// The footprint's data: JSON text, byte for byte as the caller sent it.
    pub data: String,
    /// SHA-256 of [`Block::encode`]; kept beside the fields so a reader need not recompute it.
    pub hash: Hash,
}

/// Why a byte string is not a block encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("block encoding is {0} bytes, shorter than its fixed fields")]
    TooShort(usize),
    #[error("unknown block encoding version {0}")]
    Version(u8),
    #[error("field {field} runs past the end of the block")]
    Truncated { field: &'static str },
    #[error("field {field} is not valid UTF-8")]
    Utf8 { field: &'static str },
    #[error("{0} bytes left over after the last field")]
    Trailing(usize),
}

impl Block {
    /// Builds a block and computes its hash.
    pub fn new(
        height: u64,
        timestamp_ns: u64,
        prev_hash: Hash,
        caller: Caller,
        plugin: String,
        operation: String,
        data: String,
    ) -> Self {
        let mut block = Block {
            height,
            timestamp_ns,
            prev_hash,
            caller,
            plugin,
            operation,
            data,
            hash: ZERO_HASH,
        };
        block.hash = sha256(&block.encode());
        block
    }

    /// Length of [`Block::encode`] in bytes.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN
            + 4 * 5
            + self.caller.bus_name.len()
            + self.caller.unit.len()
            + self.plugin.len()
            + self.operation.len()
            + self.data.len()
    }

    /// The canonical encoding (the layout in the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut buf);
        buf
    }

    /// Appends the canonical encoding to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        buf.push(ENCODING_VERSION);
        buf.extend_from_slice(&self.height.to_le_bytes());
        buf.extend_from_slice(&self.timestamp_ns.to_le_bytes());
        buf.extend_from_slice(&self.prev_hash);
        buf.extend_from_slice(&self.caller.uid.unwrap_or(UNKNOWN_UID).to_le_bytes());
        buf.extend_from_slice(&self.caller.pid.unwrap_or(0).to_le_bytes());
        for field in [
            &self.caller.bus_name,
            &self.caller.unit,
            &self.plugin,
            &self.operation,
            &self.data,
        ] {
            // Field lengths are bounded far below 4 GiB by the input limits.
            buf.extend_from_slice(&(field.len() as u32).to_le_bytes());
            buf.extend_from_slice(field.as_bytes());
        }
    }

    /// Decodes a canonical encoding and computes its hash. The caller compares that hash with
    /// whatever it expects (the stored trailer, the next block's `prev_hash`).
    pub fn decode(bytes: &[u8]) -> Result<Block, DecodeError> {
        if bytes.len() < FIXED_LEN {
            return Err(DecodeError::TooShort(bytes.len()));
        }
        if bytes[0] != ENCODING_VERSION {
            return Err(DecodeError::Version(bytes[0]));
        }
        let u64_at = |at: usize| u64::from_le_bytes(array(&bytes[at..at + 8]));
        let u32_at = |at: usize| u32::from_le_bytes(array(&bytes[at..at + 4]));
        let height = u64_at(1);
        let timestamp_ns = u64_at(9);
        let prev_hash: Hash = array(&bytes[17..49]);
        let uid = u32_at(49);
        let pid = u32_at(53);
        let mut rest = &bytes[FIXED_LEN..];
        let mut next = |field: &'static str| -> Result<String, DecodeError> {
            if rest.len() < 4 {
                return Err(DecodeError::Truncated { field });
            }
            let len = u32::from_le_bytes(array(&rest[..4])) as usize;
            if rest.len() - 4 < len {
                return Err(DecodeError::Truncated { field });
            }
            let text = std::str::from_utf8(&rest[4..4 + len])
                .map_err(|_| DecodeError::Utf8 { field })?
                .to_owned();
            rest = &rest[4 + len..];
            Ok(text)
        };
        let bus_name = next("caller bus name")?;
        let unit = next("caller unit")?;
        let plugin = next("plugin")?;
        let operation = next("operation")?;
        let data = next("data")?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        Ok(Block {
            height,
            timestamp_ns,
            prev_hash,
            caller: Caller::from_wire(uid, pid, bus_name, unit),
            plugin,
            operation,
            data,
            hash: sha256(bytes),
        })
    }

    /// Lowercase hex of the hash, the form used on D-Bus and in the CLI.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// The block as one JSON object with every field; `data` is embedded verbatim.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct View<'a> {
            height: u64,
            timestamp_ns: u64,
            prev_hash: String,
            hash: String,
            plugin: &'a str,
            operation: &'a str,
            caller: &'a Caller,
            data: &'a serde_json::value::RawValue,
        }
        let fallback;
        // Data was validated as JSON on the way in; a block from a foreign or damaged store
        // might not hold JSON, and is then shown as a JSON string rather than hidden.
        let data: &serde_json::value::RawValue = match serde_json::from_str(&self.data) {
            Ok(raw) => raw,
            Err(_) => {
                fallback = serde_json::value::to_raw_value(&self.data)
                    .expect("a string always serialises to JSON");
                &fallback
            }
        };
        serde_json::to_string(&View {
            height: self.height,
            timestamp_ns: self.timestamp_ns,
            prev_hash: hex::encode(self.prev_hash),
            hash: self.hash_hex(),
            plugin: &self.plugin,
            operation: &self.operation,
            caller: &self.caller,
            data,
        })
        .expect("serialising plain strings and numbers cannot fail")
    }
}

/// A block with its canonical encoding, made once when the writer builds it and shared (`Arc`)
/// by everything that takes a committed block: the segment record, the caller's ack, the
/// commit hook (cache), the `BlockAdded` signal.
#[derive(Debug)]
pub struct EncodedBlock {
    /// Shared with the cache's hot tier.
    pub block: Arc<Block>,
    /// [`Block::encode`] of `block`; its SHA-256 is `block.hash`.
    pub encoding: Box<[u8]>,
}

impl EncodedBlock {
    /// Encodes `block` once, sets its hash from that encoding and keeps both.
    pub fn seal(mut block: Block) -> Self {
        let encoding = block.encode();
        block.hash = sha256(&encoding);
        EncodedBlock {
            block: Arc::new(block),
            encoding: encoding.into_boxed_slice(),
        }
    }
}

impl From<Block> for EncodedBlock {
    /// Encodes a block that was built or read elsewhere.
    fn from(block: Block) -> Self {
        let encoding = block.encode().into_boxed_slice();
        EncodedBlock {
            block: Arc::new(block),
            encoding,
        }
    }
}

impl std::ops::Deref for EncodedBlock {
    type Target = Block;
    fn deref(&self) -> &Block {
        &self.block
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// The first 8 bytes of `hash` as a number: the key of the in-RAM hash indexes (the chain's
/// and the cache's), which keep the full hash on disk only.
pub fn hash_prefix(hash: &Hash) -> u64 {
    u64::from_le_bytes(array(&hash[..8]))
}

/// Parses a 64-digit hex hash.
pub fn parse_hash(text: &str) -> Option<Hash> {
    let mut hash = ZERO_HASH;
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    slice
        .try_into()
        .expect("callers pass slices of exactly N bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Block {
        Block::new(
            7,
            1_700_000_000_000_000_000,
            [0xab; 32],
            Caller {
                uid: Some(0),
                pid: Some(4242),
                bus_name: ":1.7".into(),
                unit: "op-dbus.service".into(),
            },
            "network".into(),
            "create".into(),
            r#"{"interface": "eth0"}"#.into(),
        )
    }

    #[test]
    fn decode_inverts_encode_and_recomputes_the_hash() {
        let block = sample();
        let decoded = Block::decode(&block.encode()).expect("valid encoding");
        assert_eq!(decoded, block);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                Block::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
    }

    #[test]
    fn unknown_caller_fields_round_trip_as_none() {
        let block = Block::new(
            1,
            2,
            ZERO_HASH,
            Caller::default(),
            "p".into(),
            "o".into(),
            "1".into(),
        );
        let decoded = Block::decode(&block.encode()).expect("valid encoding");
        assert_eq!(decoded.caller, Caller::default());
    }

    #[test]
    fn json_view_embeds_data_verbatim() {
        let json = sample().to_json();
        assert!(json.contains(r#""data":{"interface": "eth0"}"#), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["height"], 7);
        assert_eq!(value["caller"]["pid"], 4242);
        assert_eq!(value["hash"].as_str().map(str::len), Some(64));
    }
}
