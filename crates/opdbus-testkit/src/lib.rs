//! Test and bench support for opdbus-blockchain, kept out of the product: the private bus and
//! the daemon process (tests, `opdbus-bench bench` and `torture`), the corpus and the one
//! seeded RNG, a loop-mounted btrfs, a real nginx serving a directory, sshd in a network namespace,
//! real Redis servers and a Redis Cluster, a small tmpfs, and the vector and
//! read-prediction bench workloads.
//!
//! `corpus.rs` and `loop_btrfs.rs` are also compiled into the library's own unit tests (by
//! `#[path]`, under `cfg(test)`): a unit test cannot depend on this crate, whose types would
//! come from a second copy of the library. So they name the library's items as `crate::chain`
//! and `crate::footprint`, which the two imports below make true here as well.

use opdbus_blockchain::{cache, chain, footprint};

pub mod chain_files;
pub mod corpus;
pub mod corpus_fleet;
mod loop_btrfs;
pub mod nginx;
pub mod process;
pub mod read_bench;
pub mod redis;
pub mod ssh;
pub mod tmpfs;
pub mod vector_bench;

pub use corpus::SplitMix64;
pub use loop_btrfs::LoopBtrfs;
pub use process::{Bus, Daemon};
