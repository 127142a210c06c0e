//! What the operator chooses: the writer's memory policy, where cache shards go, and where the
//! per-node sysfs files live. Parsed once at start-up; an unknown word is an error that lists
//! the accepted ones.

use super::NumaError;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Environment variable choosing [`MemoryPolicy`].
pub const ENV_MEMORY_POLICY: &str = "OPDBUS_CACHE_MEMORY_POLICY";
/// Environment variable choosing [`CachePlacement`].
pub const ENV_PLACEMENT: &str = "OPDBUS_CACHE_PLACEMENT";
/// Environment variable overriding [`NumaOptions::sysfs_node_root`].
pub const ENV_SYSFS_NODE_ROOT: &str = "OPDBUS_NUMA_SYSFS_ROOT";
/// Environment variable overriding [`NumaOptions::sysfs_block_root`].
pub const ENV_SYSFS_BLOCK_ROOT: &str = "OPDBUS_NUMA_SYSFS_BLOCK_ROOT";

pub const DEFAULT_SYSFS_NODE_ROOT: &str = "/sys/devices/system/node";
pub const DEFAULT_SYSFS_BLOCK_ROOT: &str = "/sys/dev/block";

/// The operator's words for each variant: `as_str`, `Display`, and a `FromStr` whose error
/// lists every accepted word (one list, so the message cannot drift from the parser).
macro_rules! config_words {
    ($ty:ident, $what:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl FromStr for $ty {
            type Err = NumaError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim() {
                    $($word => Ok(Self::$variant),)+
                    other => Err(NumaError::UnknownValue {
                        key: $what,
                        value: other.to_owned(),
                        accepted: Self::WORDS.join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The memory policy applied to the writer thread (and so to what it allocates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
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

config_words!(MemoryPolicy, "memory policy", {
    Bind => "bind",
    Preferred => "preferred",
    Interleaved => "interleaved",
    Default => "default",
});

/// Which NUMA node each cache shard's memory is placed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
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

config_words!(CachePlacement, "cache placement", {
    LocalNode => "local_node",
    RoundRobin => "round_robin",
    MostMemory => "most_memory",
    Disabled => "disabled",
});

/// Everything [`NumaTopology::detect`](super::NumaTopology::detect) needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaOptions {
    pub placement: CachePlacement,
    pub memory_policy: MemoryPolicy,
    /// Holds `nodeN/meminfo` (free memory, which hwloc does not know).
    pub sysfs_node_root: PathBuf,
    /// Holds `MAJOR:MINOR` links to block devices (used to find the chain disk's node).
    pub sysfs_block_root: PathBuf,
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
            chain_dir: PathBuf::from("/"),
        }
    }
}

impl NumaOptions {
    /// Defaults overridden by the `OPDBUS_CACHE_*` and `OPDBUS_NUMA_*` environment variables.
    /// An unknown policy or placement is an error naming the variable and the accepted values.
    pub fn from_env(chain_dir: &Path) -> Result<Self, NumaError> {
        Self::from_lookup(chain_dir, |key| std::env::var(key).ok())
    }

    /// [`from_env`](Self::from_env) with the environment given as a function (for tests and
    /// for a config layer that already merged file and environment).
    pub fn from_lookup(
        chain_dir: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, NumaError> {
        let mut opts = Self {
            chain_dir: chain_dir.to_path_buf(),
            ..Self::default()
        };
        if let Some(v) = lookup(ENV_MEMORY_POLICY) {
            opts.memory_policy = v.parse().map_err(|e| rekey(e, ENV_MEMORY_POLICY))?;
        }
        if let Some(v) = lookup(ENV_PLACEMENT) {
            opts.placement = v.parse().map_err(|e| rekey(e, ENV_PLACEMENT))?;
        }
        if let Some(v) = lookup(ENV_SYSFS_NODE_ROOT).filter(|v| !v.is_empty()) {
            opts.sysfs_node_root = PathBuf::from(v);
        }
        if let Some(v) = lookup(ENV_SYSFS_BLOCK_ROOT).filter(|v| !v.is_empty()) {
            opts.sysfs_block_root = PathBuf::from(v);
        }
        Ok(opts)
    }
}

fn rekey(err: NumaError, env_key: &'static str) -> NumaError {
    match err {
        NumaError::UnknownValue {
            value, accepted, ..
        } => NumaError::UnknownValue {
            key: env_key,
            value,
            accepted,
        },
        other => other,
    }
}
