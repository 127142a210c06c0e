//! Test and bench support for opdbus-blockchain, kept out of the product's API.
//!
//! The pieces live in the library behind its `testkit` feature because the library's own unit
//! tests use them too (a unit test cannot depend on a crate that depends on the library: the
//! types would come from a second copy of it). Everything outside `src/` reaches them here.

pub use opdbus_blockchain::btrfs::loop_image::LoopBtrfs;
pub use opdbus_blockchain::corpus;
/// The one seeded random source of tests, bench and torture.
pub use opdbus_blockchain::corpus::SplitMix64;
pub use opdbus_blockchain::predict::bench as read_bench;
pub use opdbus_blockchain::vector::bench as vector_bench;
