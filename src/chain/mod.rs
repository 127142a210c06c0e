//! The chain: blocks, their on-disk segments, the group-commit writer and verification.

pub mod block;
pub mod error;
pub mod io;
pub mod rewrite;
pub mod scan;
pub mod segment;
pub mod store;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod recovery_tests;
