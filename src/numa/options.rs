//! What the operator chooses: the writer's memory policy, where cache shards go, and where the
//! per-node sysfs files live. The daemon's config table (`crate::config`) reads them from the
//! operator; an unknown word is an error that lists the accepted ones.

use super::NumaError;
use serde::Serialize;
use std::path::PathBuf;
use std::str::FromStr;
use strum::VariantArray;

pub const DEFAULT_SYSFS_NODE_ROOT: &str = "/sys/devices/system/node";
pub const DEFAULT_SYSFS_BLOCK_ROOT: &str = "/sys/dev/block";

/// Parses an operator's word; the error lists every accepted word (the one list strum derives
/// from the enum, so the message cannot drift from the parser).
fn parse_word<T>(word: &str, what: &'static str) -> Result<T, NumaError>
where
    T: VariantArray + Copy + Into<&'static str>,
{
    let name = |v: &T| -> &'static str { (*v).into() };
    let word = word.trim();
    T::VARIANTS
        .iter()
        .find(|v| name(v) == word)
        .copied()
        .ok_or_else(|| NumaError::UnknownValue {
            key: what,
            value: word.to_owned(),
            accepted: T::VARIANTS.iter().map(name).collect::<Vec<_>>().join(", "),
        })
}

/// The memory policy applied to the writer thread (and so to what it allocates).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum MemoryPolicy {
    /// Allocate only on the optimal node (strict: fail over to nothing else).
    Bind,
    /// Allocate on the optimal node when it has room, elsewhere otherwise.
    #[default]
    Preferred,
    /// Spread pages over all nodes.
    Interleaved,
    /// Leave the kernel's default (first touch) in place.
    Default,
}

impl MemoryPolicy {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl FromStr for MemoryPolicy {
    type Err = NumaError;
    fn from_str(word: &str) -> Result<Self, NumaError> {
        parse_word(word, "memory policy")
    }
}

/// Which NUMA node each cache shard's memory is placed on.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CachePlacement {
    /// Every shard on the optimal node (the writer's).
    #[default]
    LocalNode,
    /// Shard `i` on the `i % node_count`-th node.
    RoundRobin,
    /// Every shard on the node with most free memory at the time it is placed.
    MostMemory,
    /// No placement: shards get whatever the allocator gives.
    Disabled,
}

impl CachePlacement {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl FromStr for CachePlacement {
    type Err = NumaError;
    fn from_str(word: &str) -> Result<Self, NumaError> {
        parse_word(word, "cache placement")
    }
}

/// Everything [`NumaTopology::detect`](super::NumaTopology::detect) needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaOptions {
    pub placement: CachePlacement,
    pub memory_policy: MemoryPolicy,
    /// Holds `nodeN/meminfo` (free memory, which hwloc does not know).
    pub sysfs_node_root: PathBuf,
    /// Holds `MAJOR:MINOR` links to block devices (used to find the chain disk's node).
    pub sysfs_block_root: PathBuf,
    /// Holds one directory per network interface (`/sys/class/net`): a replica's NIC node.
    pub sysfs_net_root: PathBuf,
    /// The kernel's IPv4 routing table (`/proc/net/route`): which NIC reaches a source.
    pub route_table: PathBuf,
    /// The chain directory; the node local to its block device is preferred.
    pub chain_dir: PathBuf,
}

impl Default for NumaOptions {
    fn default() -> Self {
        Self {
            placement: CachePlacement::default(),
            memory_policy: MemoryPolicy::default(),
            sysfs_node_root: PathBuf::from(DEFAULT_SYSFS_NODE_ROOT),
            sysfs_block_root: PathBuf::from(DEFAULT_SYSFS_BLOCK_ROOT),
            sysfs_net_root: PathBuf::from("/sys/class/net"),
            route_table: PathBuf::from("/proc/net/route"),
            chain_dir: PathBuf::from("/"),
        }
    }
}
