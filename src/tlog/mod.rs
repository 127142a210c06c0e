//! The chain as a transparency log: an RFC 9162 Merkle tree over the block hashes, stored as
//! C2SP tlog tiles, with signed checkpoints (C2SP tlog-checkpoint in a C2SP signed note).
//!
//! Leaf `i` is the block at height `i`; its leaf data is the block's 32-byte hash, so the tree
//! commits to exactly what the hash chain commits to. The tree arithmetic, the proofs and the
//! note format come from Cloudflare's `tlog_tiles` and `signed_note` crates; this module adds
//! the tile files on disk, the key file and the checkpoint history. Its tests check all of it
//! against code written from the RFC, and `tools/verify-checkpoint.py` checks it from outside.

pub mod checkpoint;
pub mod cosign;
pub mod key;
pub mod tiles;

use crate::chain::block::Hash;
use std::path::PathBuf;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use key::{KeyError, SigningKey};
pub use tiles::{TileReader, TileWriter};

/// The leaf hash of the block with `block_hash`: `SHA-256(0x00 || block_hash)`.
pub fn leaf_hash(block_hash: &Hash) -> Hash {
    tlog_tiles::record_hash(block_hash).0
}

/// The interior node over `left` and `right`: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    tlog_tiles::node_hash(tlog_tiles::Hash(*left), tlog_tiles::Hash(*right)).0
}

/// The root of the tree whose leaves are `block_hashes`, in order.
pub fn root_of(block_hashes: &[Hash]) -> Hash {
    let mut range = CompactRange::default();
    for hash in block_hashes {
        range.push(hash);
    }
    range.root()
}

/// The roots of the perfect subtrees that make up a tree of `size` leaves, largest first: all
/// that is needed to compute its root and to keep appending (RFC 9162 §2.1.1 splits a tree at
/// the largest power of two, so these are exactly its left-hand subtrees).
#[derive(Clone, Debug, Default)]
pub struct CompactRange {
    size: u64,
    /// (height of the subtree, its hash), heights strictly decreasing.
    peaks: Vec<(u32, Hash)>,
}

impl CompactRange {
    /// Appends the block with `block_hash` as the next leaf.
    pub fn push(&mut self, block_hash: &Hash) {
        let mut node = (0, leaf_hash(block_hash));
        while let Some(&(height, left)) = self.peaks.last() {
            if height != node.0 {
                break;
            }
            self.peaks.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// Leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root: the peaks folded from the right (the empty tree's root is SHA-256 of
    /// nothing, as RFC 9162 defines it).
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, mut root)) = peaks.next() else {
            return tlog_tiles::EMPTY_HASH.0;
        };
        for (_, left) in peaks {
            root = node_hash(left, &root);
        }
        root
    }
}

/// Why the transparency log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TlogError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tile on disk is shorter than the tree needs or does not hash as it should.
    #[error("{0}")]
    Damaged(String),
    /// The tree arithmetic refused (a size or index outside the tree).
    #[error("{0}")]
    Tree(String),
}

impl TlogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> TlogError {
        TlogError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Lowercase hex of a hash, as the CLI and the journal print it.
pub fn hex(hash: &Hash) -> String {
    hex::encode(hash)
}
