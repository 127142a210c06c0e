//! The chain: blocks, their on-disk segments, the group-commit writer and verification.

pub mod block;
pub mod segment;
