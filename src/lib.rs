//! opdbus-blockchain: a tamper-evident, durable audit trail for op-dbus.
//!
//! The core (`chain`, `service`, `numa`, `btrfs`, `snapshot`) is plain Rust on its own threads
//! and knows nothing of D-Bus; `dbus` is the thin adapter that serves it as
//! `org.opdbus.Blockchain`, and `daemon` wires everything together for `opdbus-blockchaind`.

pub mod btrfs;
pub mod cache;
pub mod chain;
pub mod config;
// One corpus for the cache's unit tests and everything outside src/: the file is the kit's
// (a unit test cannot use the kit crate: its types would come from a second copy of this one).
#[cfg(test)]
#[path = "../crates/opdbus-testkit/src/corpus.rs"]
mod corpus;
pub mod daemon;
pub mod dbus;
pub mod files;
pub mod footprint;
pub mod journal;
pub mod marker;
pub mod numa;
pub mod predict;
pub mod query;
pub mod replica;
pub mod service;
pub mod snapshot;
pub mod tlog;
pub mod transparency;
pub mod vector;

pub use chain::block::{Block, Caller};
pub use footprint::PluginFootprint;
pub use service::{OptimizedBlockchain, StreamingBlockchain};
