//! The daemon's configuration: one typed struct, built once at start-up from
//! defaults ← config file ← environment (`OPDBUS_*`) ← command-line flags, and validated with
//! errors that name the bad key and what it accepts.
//!
//! [`KEYS`] is the one table of settings: each row holds a key's name, its flag (if any), what
//! it does, what it accepts, whether SIGHUP applies it, and the one parser that env, file and
//! flag values all go through. The default is the value in [`Config::default`] as that row
//! shows it. The `--help` text and docs/operations.md are rendered from the table; unit tests
//! hold config/opdbus-blockchain and docs/operations.md to it.
//!
//! The config file has the format of the environment file systemd reads
//! (`/etc/default/opdbus-blockchain`): `KEY=VALUE` lines, `#` comments, optional quotes.

use crate::chain::store::StoreOptions;
use crate::footprint::DEFAULT_MAX_DATA_BYTES;
use crate::numa::{CachePlacement, MemoryPolicy, NumaError, NumaOptions};
use crate::snapshot::{RetentionPolicy, SnapshotInterval};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Which bus the daemon serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    System,
    Session,
    /// A D-Bus address such as `unix:path=/run/test/bus`.
    Address(String),
}

impl std::str::FromStr for BusChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "system" => Ok(BusChoice::System),
            "session" => Ok(BusChoice::Session),
            "" => Err("empty bus; use system, session or a D-Bus address like unix:path=/run/bus".into()),
            address if address.contains(':') => Ok(BusChoice::Address(address.to_owned())),
            other => Err(format!(
                "'{other}' is not a bus; use system, session or a D-Bus address like unix:path=/run/bus"
            )),
        }
    }
}

impl std::fmt::Display for BusChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusChoice::System => f.write_str("system"),
            BusChoice::Session => f.write_str("session"),
            BusChoice::Address(address) => f.write_str(address),
        }
    }
}

/// Everything the daemon can be told; each field is set by one row of [`KEYS`].
#[derive(Debug, Clone)]
pub struct Config {
    pub bus: BusChoice,
    pub chain_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The group that may read the chain, tlog, cache and snapshots; `None`: no group.
    pub read_group: Option<String>,
    pub max_data_bytes: usize,
    pub segment_bytes: u64,
    pub writer_uids: Vec<u32>,
    pub log: String,
    pub numa: bool,
    pub memory_policy: MemoryPolicy,
    pub cache_placement: CachePlacement,
    pub numa_sysfs_root: PathBuf,
    pub numa_block_root: PathBuf,
    pub numa_net_root: PathBuf,
    pub numa_route_table: PathBuf,
    pub cache_hot_bytes: u64,
    pub cache_preload_blocks: u64,
    pub cache_queue_blocks: usize,
    pub cache_predict: bool,
    /// The shared cache tier (`None`: none) and each of its commands' deadline.
    pub shared_cache: Option<crate::cache::shared::SharedCacheUrl>,
    pub shared_cache_timeout: std::time::Duration,
    pub snapshot_interval: SnapshotInterval,
    pub retention: RetentionPolicy,
    /// Where the tiles and checkpoints go; `None`: `<chain dir>/tlog`.
    pub tlog_dir: Option<PathBuf>,
    /// The checkpoint signing key; `None`: the systemd credential `opdbus-signing-key` when
    /// one was passed, else [`DEFAULT_SIGNING_KEY`].
    pub signing_key: Option<PathBuf>,
    /// The checkpoints' origin line; empty: `<host name>/opdbus-blockchain/<chain id>`.
    pub origin: String,
    /// How often the tree's growth is checked for a new checkpoint.
    pub checkpoint_interval: std::time::Duration,
    /// Sources to follow as a replica (`--replica-of`).
    pub replica_of: Vec<ReplicaSpec>,
    pub replicas_dir: PathBuf,
    pub witness_key: PathBuf,
    /// Whether the transparency log runs: always, except for the bench's comparison run
    /// (a hidden flag, not a setting).
    pub transparency: bool,
    /// The config file these settings were read from (`--config`); SIGHUP reads it again.
    pub file: Option<PathBuf>,
    /// What loading noticed but let pass (a missing file, keys that are not ours); the daemon
    /// logs them at warn once logging is up, and on SIGHUP.
    pub warnings: Vec<String>,
}

/// The defaults: the library's own where it has one, so that daemon and library agree.
impl Default for Config {
    fn default() -> Self {
        let cache = crate::cache::CacheOptions::new("/var/lib/op-dbus/@cache");
        let numa = NumaOptions::default();
        Config {
            bus: BusChoice::System,
            chain_dir: PathBuf::from("/var/lib/op-dbus/blockchain"),
            cache_dir: cache.dir,
            read_group: Some(DEFAULT_READ_GROUP.to_owned()),
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
            segment_bytes: StoreOptions::default().segment_bytes,
            writer_uids: Vec::new(),
            log: "info".into(),
            numa: true,
            memory_policy: numa.memory_policy,
            cache_placement: numa.placement,
            numa_sysfs_root: numa.sysfs_node_root,
            numa_block_root: numa.sysfs_block_root,
            numa_net_root: numa.sysfs_net_root,
            numa_route_table: numa.route_table,
            cache_hot_bytes: cache.hot_bytes,
            cache_preload_blocks: cache.preload_blocks,
            cache_queue_blocks: cache.queue_blocks,
            cache_predict: true,
            shared_cache: cache.shared,
            shared_cache_timeout: cache.shared_timeout,
            snapshot_interval: SnapshotInterval::Off,
            retention: RetentionPolicy::default(),
            tlog_dir: None,
            signing_key: None,
            replica_of: Vec::new(),
            replicas_dir: PathBuf::from("/var/lib/op-dbus/replicas"),
            witness_key: PathBuf::from("/var/lib/op-dbus/keys/witness.key"),
            origin: String::new(),
            checkpoint_interval: std::time::Duration::from_secs(1),
            transparency: true,
            file: None,
            warnings: Vec::new(),
        }
    }
}

/// One setting: its names, its documentation and its one parser.
pub struct Key {
    /// The environment variable and config-file key.
    pub name: &'static str,
    /// `(--flag, VALUE_NAME)` for the keys that also have a command-line flag.
    pub flag: Option<(&'static str, &'static str)>,
    /// What it sets.
    pub help: &'static str,
    /// What it accepts; the parser's error for a value it refuses says the same words.
    pub accepts: &'static str,
    /// SIGHUP applies a change of it; every other key needs a restart.
    pub reload: bool,
    set: fn(&mut Config, &str) -> Result<(), String>,
    show: fn(&Config) -> String,
}

impl Key {
    /// The default, as it would be written in the config file.
    pub fn default_value(&self) -> String {
        (self.show)(&Config::default())
    }

    /// Whether `value` would be taken, with the reason when not (for a flag's value parser).
    pub fn check(&self, value: &str) -> Result<(), String> {
        (self.set)(&mut Config::default(), value)
    }
}

/// Every key the config file, the environment and the flags understand, in the order
/// config/opdbus-blockchain documents them.
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    Key { name: "OPDBUS_BUS", flag: Some(("bus", "BUS")), reload: false,
          help: "Bus to serve on",
          accepts: "system, session or a D-Bus address like unix:path=/run/bus",
          set: |c, v| v.parse().map(|x| c.bus = x),
          show: |c| c.bus.to_string() },
    Key { name: "OPDBUS_BLOCKCHAIN_DIR", flag: Some(("chain-dir", "DIR")), reload: false,
          help: "Directory of the chain's segment files",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.chain_dir = x),
          show: |c| c.chain_dir.display().to_string() },
    Key { name: "OPDBUS_CACHE_DIR", flag: Some(("cache-dir", "DIR")), reload: false,
          help: "Directory of the block cache",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.cache_dir = x),
          show: |c| c.cache_dir.display().to_string() },
    Key { name: "OPDBUS_READ_GROUP", flag: None, reload: false,
          help: "Group given read access to the chain, tlog, cache and snapshot directories \
                 (empty: none; the signing key stays private)",
          accepts: "a group name such as adm, or empty",
          set: |c, v| group_name(v).map(|x| c.read_group = x),
          show: |c| c.read_group.clone().unwrap_or_default() },
    Key { name: "OPDBUS_MAX_DATA_BYTES", flag: None, reload: false,
          help: "Largest footprint data JSON accepted",
          accepts: "a whole number of bytes from 1024 to 67108864",
          set: |c, v| in_range(v, 1024, 64 << 20, "bytes").map(|x| c.max_data_bytes = x as usize),
          show: |c| c.max_data_bytes.to_string() },
    Key { name: "OPDBUS_SEGMENT_BYTES", flag: None, reload: false,
          help: "Size at which a segment file is sealed",
          accepts: "a whole number of bytes from 65536 to 1099511627776",
          set: |c, v| in_range(v, 64 << 10, 1 << 40, "bytes").map(|x| c.segment_bytes = x),
          show: |c| c.segment_bytes.to_string() },
    Key { name: "OPDBUS_WRITER_UIDS", flag: None, reload: false,
          help: "Uids besides root (and the daemon's own) allowed to add footprints",
          accepts: "a comma-separated list of numeric uids",
          set: |c, v| uid_list(v).map(|x| c.writer_uids = x),
          show: |c| c.writer_uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",") },
    Key { name: "OPDBUS_LOG", flag: None, reload: true,
          help: "Log filter",
          accepts: "a level (off, error, warn, info, debug, trace) or comma-separated \
                    TARGET=LEVEL directives",
          set: |c, v| log_filter(v).map(|x| c.log = x),
          show: |c| c.log.clone() },
    Key { name: "OPDBUS_NUMA", flag: None, reload: false,
          help: "Detect the NUMA topology and bind the chain writer to the optimal node",
          accepts: "on, off",
          set: |c, v| on_off(v).map(|x| c.numa = x),
          show: |c| show_on_off(c.numa) },
    Key { name: "OPDBUS_CACHE_MEMORY_POLICY", flag: None, reload: false,
          help: "Memory policy of the chain writer thread",
          accepts: "bind, preferred, interleaved, default",
          set: |c, v| word(v).map(|x| c.memory_policy = x),
          show: |c| c.memory_policy.to_string() },
    Key { name: "OPDBUS_CACHE_PLACEMENT", flag: None, reload: false,
          help: "On which NUMA node(s) the cache's memory goes",
          accepts: "local_node, round_robin, most_memory, disabled",
          set: |c, v| word(v).map(|x| c.cache_placement = x),
          show: |c| c.cache_placement.to_string() },
    Key { name: "OPDBUS_NUMA_SYSFS_ROOT", flag: None, reload: false,
          help: "Where the per-node meminfo files are read",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.numa_sysfs_root = x),
          show: |c| c.numa_sysfs_root.display().to_string() },
    Key { name: "OPDBUS_NUMA_SYSFS_BLOCK_ROOT", flag: None, reload: false,
          help: "Where block devices are looked up for the chain disk's node",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.numa_block_root = x),
          show: |c| c.numa_block_root.display().to_string() },
    Key { name: "OPDBUS_NUMA_SYSFS_NET_ROOT", flag: None, reload: false,
          help: "Where network interfaces are looked up for a replica source's NIC node",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.numa_net_root = x),
          show: |c| c.numa_net_root.display().to_string() },
    Key { name: "OPDBUS_NUMA_ROUTE_TABLE", flag: None, reload: false,
          help: "The IPv4 routing table read to find which interface reaches a replica's source",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.numa_route_table = x),
          show: |c| c.numa_route_table.display().to_string() },
    Key { name: "OPDBUS_CACHE_HOT_BYTES", flag: None, reload: false,
          help: "RAM for the block cache's hot tier",
          accepts: "a whole number of bytes from 65536 to 1099511627776",
          set: |c, v| in_range(v, 64 << 10, 1 << 40, "bytes").map(|x| c.cache_hot_bytes = x),
          show: |c| c.cache_hot_bytes.to_string() },
    Key { name: "OPDBUS_CACHE_PRELOAD_BLOCKS", flag: None, reload: false,
          help: "Newest blocks loaded into the hot tier at start",
          accepts: "a whole number of blocks from 0 to 100000000",
          set: |c, v| in_range(v, 0, 100_000_000, "blocks").map(|x| c.cache_preload_blocks = x),
          show: |c| c.cache_preload_blocks.to_string() },
    Key { name: "OPDBUS_CACHE_QUEUE_BLOCKS", flag: None, reload: false,
          help: "Blocks that may wait for the cache thread before new ones skip the queue",
          accepts: "a whole number of blocks from 16 to 16777216",
          set: |c, v| in_range(v, 16, 16 << 20, "blocks").map(|x| c.cache_queue_blocks = x as usize),
          show: |c| c.cache_queue_blocks.to_string() },
    Key { name: "OPDBUS_CACHE_PREDICT", flag: None, reload: false,
          help: "Pre-load the blocks readers are likely to read next",
          accepts: "on, off",
          set: |c, v| on_off(v).map(|x| c.cache_predict = x),
          show: |c| show_on_off(c.cache_predict) },
    Key { name: "OPDBUS_SHARED_CACHE", flag: Some(("shared-cache", "URL")), reload: false,
          help: "A Redis server or cluster shared with other daemons of the same chain, read after \
                 the local cache and before the chain, and given every block the cache stores \
                 (empty: none). Its password is never shown",
          accepts: SHARED_CACHE_ACCEPTS,
          set: |c, v| shared_cache(v).map(|x| c.shared_cache = x),
          show: |c| c.shared_cache.as_ref().map(|u| u.redacted()).unwrap_or_default() },
    Key { name: "OPDBUS_SHARED_CACHE_TIMEOUT", flag: None, reload: false,
          help: "How long one command to the shared cache may take before it is a miss (and the \
                 shared cache is left alone for a while); connecting may take ten times as long",
          accepts: "a duration from 1ms to 10s",
          set: |c, v| duration(v, 1, 10_000).map(|x| c.shared_cache_timeout = x),
          show: |c| show_duration(c.shared_cache_timeout) },
    Key { name: "OPDBUS_SNAPSHOT_INTERVAL", flag: None, reload: true,
          help: "When the daemon takes unified snapshots by itself",
          accepts: "every-N-minutes (N a whole number ≥ 1, e.g. every-15-minutes), hourly, daily, off",
          set: |c, v| interval(v).map(|x| c.snapshot_interval = x),
          show: |c| c.snapshot_interval.to_string() },
    Key { name: "OPDBUS_RETAIN_HOURLY", flag: None, reload: true,
          help: "Hours whose newest scheduled snapshot is kept",
          accepts: "a whole number of snapshots from 0 to 10000",
          set: |c, v| in_range(v, 0, 10_000, "snapshots").map(|x| c.retention.hourly = x as u32),
          show: |c| c.retention.hourly.to_string() },
    Key { name: "OPDBUS_RETAIN_DAILY", flag: None, reload: true,
          help: "Days whose newest scheduled snapshot is kept",
          accepts: "a whole number of snapshots from 0 to 10000",
          set: |c, v| in_range(v, 0, 10_000, "snapshots").map(|x| c.retention.daily = x as u32),
          show: |c| c.retention.daily.to_string() },
    Key { name: "OPDBUS_RETAIN_WEEKLY", flag: None, reload: true,
          help: "ISO weeks whose newest scheduled snapshot is kept",
          accepts: "a whole number of snapshots from 0 to 10000",
          set: |c, v| in_range(v, 0, 10_000, "snapshots").map(|x| c.retention.weekly = x as u32),
          show: |c| c.retention.weekly.to_string() },
    Key { name: "OPDBUS_TLOG_DIR", flag: None, reload: false,
          help: "Directory of the Merkle tree's tiles and signed checkpoints (empty: <chain dir>/tlog)",
          accepts: "an absolute path, or empty",
          set: |c, v| optional_dir(v).map(|x| c.tlog_dir = x),
          show: |c| c.tlog_dir.as_ref().map_or(String::new(), |d| d.display().to_string()) },
    Key { name: "OPDBUS_SIGNING_KEY", flag: None, reload: false,
          help: "The checkpoint signing key, made at first start if missing (unset: the systemd \
                 credential opdbus-signing-key if passed, else this path); never in the chain dir",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.signing_key = Some(x)),
          show: |c| c.signing_key.as_deref().unwrap_or(Path::new(DEFAULT_SIGNING_KEY)).display().to_string() },
    Key { name: "OPDBUS_ORIGIN", flag: None, reload: false,
          help: "Origin line of the checkpoints, unique per log (empty: <host name>/opdbus-blockchain/<chain id>)",
          accepts: "letters, digits and . - _ / : ~ @ (like example.org/audit), or empty",
          set: |c, v| origin(v).map(|x| c.origin = x),
          show: |c| c.origin.clone() },
    Key { name: "OPDBUS_CHECKPOINT_INTERVAL", flag: None, reload: false,
          help: "Longest wait before a grown tree gets a signed checkpoint",
          accepts: "a duration from 100ms to 1h, such as 250ms, 1s, 30s, 5m or 1h",
          set: |c, v| duration(v, 100, 3_600_000).map(|x| c.checkpoint_interval = x),
          show: |c| show_duration(c.checkpoint_interval) },
    Key { name: "OPDBUS_REPLICA_OF", flag: Some(("replica-of", "SOURCE VKEY")), reload: false,
          help: "Other hosts' chains to follow as a verified, cosigning replica, each into its own \
                 directory under OPDBUS_REPLICAS_DIR (empty: none)",
          accepts: "empty, or entries SOURCE VKEY separated by commas: an http(s):// or ssh:// URL \
                    and that log's verifier key",
          set: |c, v| replica_list(v).map(|x| c.replica_of = x),
          show: |c| c.replica_of.iter().map(|r| format!("{} {}", r.source, r.vkey)).collect::<Vec<_>>().join(", ") },
    Key { name: "OPDBUS_REPLICAS_DIR", flag: None, reload: false,
          help: "Directory of the replicas' copies, one directory per source",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.replicas_dir = x),
          show: |c| c.replicas_dir.display().to_string() },
    Key { name: "OPDBUS_WITNESS_KEY", flag: None, reload: false,
          help: "The key a replica cosigns the checkpoints it verified with, made if missing; \
                 never in a replica's directory",
          accepts: "an absolute path",
          set: |c, v| absolute_dir(v).map(|x| c.witness_key = x),
          show: |c| c.witness_key.display().to_string() },
];

const SHARED_CACHE_ACCEPTS: &str = "empty, redis://[USER:PASSWORD@]HOST:PORT[/DB], rediss://… \
    (TLS), redis+unix:///PATH, or redis+cluster://[USER:PASSWORD@]H1:P1,H2:P2,… \
    (rediss+cluster:// for TLS); valkey in place of redis also";

/// `OPDBUS_SHARED_CACHE`: empty for none, else a Redis URL.
fn shared_cache(value: &str) -> Result<Option<crate::cache::shared::SharedCacheUrl>, String> {
    match value.trim() {
        "" => Ok(None),
        url => crate::cache::shared::SharedCacheUrl::parse(url)
            .map(Some)
            .map_err(|err| format!("{err}; expected {SHARED_CACHE_ACCEPTS}")),
    }
}

/// One `OPDBUS_REPLICA_OF` entry: a source and its log's verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    pub source: String,
    pub vkey: String,
}

/// `SOURCE VKEY, SOURCE VKEY, …` (empty: none).
fn replica_list(value: &str) -> Result<Vec<ReplicaSpec>, String> {
    let refused = || {
        "expected empty, or entries SOURCE VKEY separated by commas: an http(s):// or ssh:// URL \
         and that log's verifier key"
            .to_string()
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let mut words = entry.split_whitespace();
            let (Some(source), Some(vkey), None) = (words.next(), words.next(), words.next())
            else {
                return Err(refused());
            };
            let url = ["http://", "https://", "ssh://"]
                .iter()
                .any(|scheme| source.starts_with(scheme));
            if !url || signed_note::StandardVerifier::new(vkey).is_err() {
                return Err(refused());
            }
            Ok(ReplicaSpec {
                source: source.to_string(),
                vkey: vkey.to_string(),
            })
        })
        .collect()
}

/// The group that reads the chain by default: the one that reads the journal and /var/log.
pub const DEFAULT_READ_GROUP: &str = "adm";

/// Where the daemon keeps (and at first start makes) its checkpoint signing key.
pub const DEFAULT_SIGNING_KEY: &str = "/var/lib/op-dbus/keys/signing.key";

/// The systemd credential name the daemon reads its signing key from (`LoadCredential=`).
pub const SIGNING_KEY_CREDENTIAL: &str = "opdbus-signing-key";

/// The row of `name`, if it is one of ours.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|key| key.name == name)
}

fn known_keys() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}={value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("unknown key {key} in config file {path} (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
}

impl Config {
    /// Defaults, then `file` (if given), then the environment as read by `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut values = BTreeMap::new();
        let mut warnings = Vec::new();
        if let Some(path) = file {
            match read_env_file(path) {
                Ok((read, noticed)) => {
                    values.extend(read);
                    warnings.extend(noticed);
                }
                // A deleted conffile is what `EnvironmentFile=-` allowed: defaults, not a refusal.
                Err(ConfigError::File { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    warnings.push(format!(
                        "config file {} does not exist; using the defaults and the environment",
                        path.display()
                    ))
                }
                Err(err) => return Err(err),
            }
        }
        for key in KEYS {
            if let Some(value) = env(key.name) {
                values.insert(key.name.to_owned(), value);
            }
        }
        let mut config = Config::default();
        for (key, value) in &values {
            config.set(key, value)?;
        }
        config.file = file.map(Path::to_owned);
        config.warnings = warnings;
        Ok(config)
    }

    /// Sets one key; the error names the key, the value and what is accepted.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let result = match key(name) {
            Some(key) => (key.set)(self, value),
            None => Err(format!("unknown key; known keys: {}", known_keys())),
        };
        result.map_err(|reason| ConfigError::Invalid {
            key: name.to_owned(),
            // The error is logged: a password in the value is not.
            value: match name {
                "OPDBUS_SHARED_CACHE" => crate::cache::shared::redact(value),
                _ => value.to_owned(),
            },
            reason,
        })
    }

    /// The keys whose values differ between `self` and `other`, in [`KEYS`] order.
    pub fn changed_keys(&self, other: &Config) -> Vec<&'static Key> {
        KEYS.iter()
            .filter(|key| (key.show)(self) != (key.show)(other))
            .collect()
    }

    /// The NUMA options these settings describe; `None` when NUMA is switched off.
    pub fn numa_options(&self) -> Option<NumaOptions> {
        self.numa.then(|| NumaOptions {
            placement: self.cache_placement,
            memory_policy: self.memory_policy,
            sysfs_node_root: self.numa_sysfs_root.clone(),
            sysfs_block_root: self.numa_block_root.clone(),
            sysfs_net_root: self.numa_net_root.clone(),
            route_table: self.numa_route_table.clone(),
            chain_dir: self.chain_dir.clone(),
        })
    }

    /// The transparency log's options these settings describe; `credentials` is systemd's
    /// `$CREDENTIALS_DIRECTORY`, where an unset OPDBUS_SIGNING_KEY looks for the credential
    /// [`SIGNING_KEY_CREDENTIAL`]. `None` when switched off.
    pub fn transparency_options(
        &self,
        credentials: Option<&Path>,
    ) -> Option<crate::transparency::TransparencyOptions> {
        use crate::transparency::KeySource;
        if !self.transparency {
            return None;
        }
        let credential = credentials
            .map(|dir| dir.join(SIGNING_KEY_CREDENTIAL))
            .filter(|path| path.exists());
        let key = match (&self.signing_key, credential) {
            (Some(path), _) => KeySource::File(path.clone()),
            (None, Some(credential)) => KeySource::Credential(credential),
            (None, None) => KeySource::File(PathBuf::from(DEFAULT_SIGNING_KEY)),
        };
        Some(crate::transparency::TransparencyOptions {
            tlog_dir: self
                .tlog_dir
                .clone()
                .unwrap_or_else(|| self.chain_dir.join("tlog")),
            key,
            origin: Some(self.origin.clone()).filter(|origin| !origin.is_empty()),
            interval: self.checkpoint_interval,
        })
    }

    /// The block cache's options these settings describe.
    pub fn cache_options(&self) -> crate::cache::CacheOptions {
        crate::cache::CacheOptions {
            dir: self.cache_dir.clone(),
            hot_bytes: self.cache_hot_bytes,
            preload_blocks: self.cache_preload_blocks,
            queue_blocks: self.cache_queue_blocks,
            shared: self.shared_cache.clone(),
            shared_timeout: self.shared_cache_timeout,
        }
    }
}

/// One warning per `OPDBUS_*` name in `names` that is not in [`KEYS`] (a typo such as
/// OPDBUS_SEGMNT_BYTES would otherwise be silently ignored), naming the closest known key.
pub fn unknown_env_keys(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut warnings: Vec<String> = names
        .into_iter()
        .filter(|name| name.starts_with("OPDBUS_") && key(name).is_none())
        .map(|name| {
            let closest = KEYS
                .iter()
                .map(|key| key.name)
                .min_by_key(|key| strsim::levenshtein(key, &name))
                .unwrap_or("OPDBUS_LOG");
            format!("unknown environment variable {name} ignored; did you mean {closest}?")
        })
        .collect();
    warnings.sort();
    warnings
}

/// The `Environment:` part of `opdbus-blockchaind --help`.
pub fn environment_help() -> String {
    let mut text = String::from(
        "Environment (and --config FILE) keys, with their defaults; * = applied on SIGHUP:\n",
    );
    for key in KEYS {
        let reload = if key.reload { " *" } else { "" };
        text += &format!(
            "  {}={}{reload}\n      {}: {}\n",
            key.name,
            key.default_value(),
            key.help,
            key.accepts
        );
    }
    text
}

/// The table in docs/operations.md (a unit test keeps the two equal).
pub fn markdown_table() -> String {
    let mut text = String::from(
        "| key | flag | default | what it sets | accepted values | on SIGHUP |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for key in KEYS {
        let flag = key
            .flag
            .map_or(String::new(), |(flag, _)| format!("`--{flag}`"));
        let reload = if key.reload { "applied" } else { "restart" };
        let default = match key.default_value() {
            empty if empty.is_empty() => "(empty)".to_owned(),
            default => format!("`{default}`"),
        };
        text += &format!(
            "| `{}` | {flag} | {default} | {} | {} | {reload} |\n",
            key.name, key.help, key.accepts
        );
    }
    text
}

fn on_off(value: &str) -> Result<bool, String> {
    match value.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("accepted values: on, off".into()),
    }
}

fn uid_list(value: &str) -> Result<Vec<u32>, String> {
    value
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| "expected a comma-separated list of numeric uids".into())
}

fn interval(value: &str) -> Result<SnapshotInterval, String> {
    value.parse().map_err(|_| {
        "accepted values: every-N-minutes (N a whole number ≥ 1, e.g. every-15-minutes), hourly, \
         daily, off"
            .into()
    })
}

fn show_on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_owned()
}

/// A NUMA word (memory policy, cache placement); the error lists the accepted words.
fn word<T: FromStr<Err = NumaError>>(value: &str) -> Result<T, String> {
    value.parse().map_err(|err| match err {
        NumaError::UnknownValue { accepted, .. } => format!("accepted values: {accepted}"),
        other => other.to_string(),
    })
}

/// A directory setting, from the environment, the file or a flag alike: a relative path would
/// resolve against whatever directory the daemon happened to start in.
pub fn absolute_dir(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err("expected an absolute path".into())
    }
}

/// An absolute directory, or empty for the default.
fn optional_dir(value: &str) -> Result<Option<PathBuf>, String> {
    match value.trim() {
        "" => Ok(None),
        path => absolute_dir(path)
            .map(Some)
            .map_err(|_| "expected an absolute path, or empty".into()),
    }
}

/// A group name as `groupadd` takes it (letters, digits, `_`, `-`, `.`, not starting with `-`,
/// up to 32 characters), or empty for none. Whether it exists is checked at start.
fn group_name(value: &str) -> Result<Option<String>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let valid = value.len() <= 32
        && !value.starts_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if valid {
        Ok(Some(value.to_owned()))
    } else {
        Err("expected a group name such as adm, or empty".into())
    }
}

/// A checkpoint origin (also the signing key's name, so a note key name's rules apply).
fn origin(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_/:~@".contains(c))
    {
        Ok(value.to_owned())
    } else {
        Err("expected letters, digits and . - _ / : ~ @ (like example.org/audit), or empty".into())
    }
}

/// A duration written as a whole number and a unit (ms, s, m, h), from `min_ms` to `max_ms`
/// (also for the CLI's duration options).
pub fn duration(value: &str, min_ms: u64, max_ms: u64) -> Result<std::time::Duration, String> {
    let refused = || {
        format!(
            "expected a duration from {} to {}, such as 250ms, 1s, 30s, 5m or 1h",
            show_duration(std::time::Duration::from_millis(min_ms)),
            show_duration(std::time::Duration::from_millis(max_ms))
        )
    };
    let value = value.trim();
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().map_err(|_| refused())?;
    let ms = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" | "min" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => None,
    }
    .filter(|ms| (min_ms..=max_ms).contains(ms))
    .ok_or_else(refused)?;
    Ok(std::time::Duration::from_millis(ms))
}

/// A duration in the largest unit that writes it whole.
fn show_duration(duration: std::time::Duration) -> String {
    let ms = duration.as_millis() as u64;
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A whole number of `unit` (bytes, blocks, snapshots) from `min` to `max`.
fn in_range(value: &str, min: u64, max: u64, unit: &str) -> Result<u64, String> {
    let parsed: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number of {unit} from {min} to {max}"))?;
    if !(min..=max).contains(&parsed) {
        return Err(format!("must be from {min} to {max}"));
    }
    Ok(parsed)
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// An `OPDBUS_LOG` filter, checked strictly: every comma-separated directive is a level or
/// `TARGET=LEVEL`. `EnvFilter` takes `verbose` or `debug # note` as a target name and then logs
/// nothing at all, not even a fatal error, so such a value is refused here, at start-up.
fn log_filter(value: &str) -> Result<String, String> {
    let value = value.trim();
    let accepted = || {
        format!(
            "expected a level ({}) or comma-separated TARGET=LEVEL directives such as \
             opdbus_blockchain=debug; a comment must be on its own line",
            LEVELS.join(", ")
        )
    };
    if value.is_empty() {
        return Err(accepted());
    }
    for directive in value.split(',') {
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (Some(target), level),
            None => (None, directive),
        };
        let level_ok = LEVELS.contains(&level.to_ascii_lowercase().as_str());
        let target_ok = target.is_none_or(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
        });
        if !level_ok || !target_ok {
            return Err(format!(
                "'{directive}' is not a log directive; {}",
                accepted()
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map_err(|err| format!("{err}; {}", accepted()))?;
    Ok(value.to_owned())
}

/// Reads `KEY=VALUE` lines (the systemd environment-file format, without line continuations),
/// with what it let pass: keys not starting with `OPDBUS_` (`RUST_BACKTRACE=1` belongs to
/// others) are ignored with a warning, `export KEY=…` is read as `KEY=…`, a UTF-8 BOM skipped.
/// An unknown `OPDBUS_*` key is an error: it is a typo of one of ours.
pub type EnvFile = (BTreeMap<String, String>, Vec<String>);

/// See [`EnvFile`].
pub fn read_env_file(path: &Path) -> Result<EnvFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut values = BTreeMap::new();
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                reason: "expected KEY=VALUE".into(),
            });
        };
        let key = key.trim();
        if !key.starts_with("OPDBUS_") {
            warnings.push(format!(
                "config file {}, line {}: ignoring {key}, not a setting of opdbus-blockchaind \
                 (its keys start with OPDBUS_)",
                path.display(),
                i + 1
            ));
            continue;
        }
        if self::key(key).is_none() {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.to_owned(),
                known: known_keys(),
            });
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        values.insert(key.to_owned(), value.to_owned());
    }
    Ok((values, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config");
        std::fs::write(
            &file,
            "# comment\nOPDBUS_BLOCKCHAIN_DIR=\"/srv/chain\"\nOPDBUS_CACHE_DIR=/srv/cache\n",
        )
        .expect("write");
        let env = |key: &str| (key == "OPDBUS_CACHE_DIR").then(|| "/env/cache".to_owned());
        let config = Config::load(Some(&file), env).expect("valid");
        assert_eq!(config.chain_dir, PathBuf::from("/srv/chain"));
        assert_eq!(config.cache_dir, PathBuf::from("/env/cache"));
        assert_eq!(config.max_data_bytes, DEFAULT_MAX_DATA_BYTES);
    }

    #[test]
    fn changed_keys_name_what_differs() {
        let before = Config::default();
        let mut after = before.clone();
        after.log = "debug".into();
        after.retention.hourly = 9;
        after.writer_uids = vec![1000];
        let names: Vec<&str> = before.changed_keys(&after).iter().map(|k| k.name).collect();
        assert_eq!(
            names,
            ["OPDBUS_WRITER_UIDS", "OPDBUS_LOG", "OPDBUS_RETAIN_HOURLY"]
        );
        assert!(before.changed_keys(&before).is_empty());
    }

    #[test]
    fn cache_settings_are_read_and_checked() {
        let env = |key: &str| match key {
            "OPDBUS_CACHE_HOT_BYTES" => Some("1048576".to_owned()),
            "OPDBUS_CACHE_PRELOAD_BLOCKS" => Some("0".to_owned()),
            "OPDBUS_CACHE_QUEUE_BLOCKS" => Some("128".to_owned()),
            _ => None,
        };
        let options = Config::load(None, env).expect("valid").cache_options();
        assert_eq!(options.hot_bytes, 1 << 20);
        assert_eq!(options.preload_blocks, 0);
        assert_eq!(options.queue_blocks, 128);
        for (key, value, expected) in [
            ("OPDBUS_CACHE_HOT_BYTES", "1k", "whole number of bytes"),
            ("OPDBUS_CACHE_HOT_BYTES", "1024", "must be from 65536"),
            (
                "OPDBUS_CACHE_PRELOAD_BLOCKS",
                "-1",
                "whole number of blocks",
            ),
            ("OPDBUS_CACHE_QUEUE_BLOCKS", "0", "must be from 16"),
        ] {
            let env = |k: &str| (k == key).then(|| value.to_owned());
            let err = Config::load(None, env).expect_err("invalid").to_string();
            assert!(err.contains(&format!("{key}={value}")), "{err}");
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn snapshot_schedule_and_retention_are_read_and_checked() {
        let config = Config::load(None, |_| None).expect("defaults");
        assert_eq!(config.snapshot_interval, SnapshotInterval::Off);
        assert_eq!(config.retention, RetentionPolicy::default());
        let env = |key: &str| match key {
            "OPDBUS_SNAPSHOT_INTERVAL" => Some("every-15-minutes".to_owned()),
            "OPDBUS_RETAIN_HOURLY" => Some("24".to_owned()),
            "OPDBUS_RETAIN_WEEKLY" => Some("0".to_owned()),
            _ => None,
        };
        let config = Config::load(None, env).expect("valid");
        assert_eq!(config.snapshot_interval.to_string(), "every-15-minutes");
        assert_eq!(
            config.retention,
            RetentionPolicy {
                hourly: 24,
                daily: 5,
                weekly: 0
            }
        );
        let env = |key: &str| (key == "OPDBUS_SNAPSHOT_INTERVAL").then(|| "weekly".to_owned());
        let err = Config::load(None, env).expect_err("invalid").to_string();
        assert!(err.contains("OPDBUS_SNAPSHOT_INTERVAL=weekly"), "{err}");
        assert!(
            err.contains("every-N-minutes") && err.contains("off"),
            "{err}"
        );
        let env = |key: &str| (key == "OPDBUS_RETAIN_DAILY").then(|| "-1".to_owned());
        let err = Config::load(None, env).expect_err("invalid").to_string();
        assert!(err.contains("OPDBUS_RETAIN_DAILY=-1"), "{err}");
    }

    #[test]
    fn unknown_env_keys_are_named_with_the_closest_key() {
        let warnings =
            unknown_env_keys(["OPDBUS_SEGMNT_BYTES", "OPDBUS_LOG", "PATH"].map(String::from));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("OPDBUS_SEGMNT_BYTES"), "{warnings:?}");
        assert!(
            warnings[0].contains("did you mean OPDBUS_SEGMENT_BYTES"),
            "{warnings:?}"
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config");
        std::fs::write(&file, "OPDBUS_CHAIN_DIRECTORY=/x\n").expect("write");
        let err = Config::load(Some(&file), |_| None)
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("OPDBUS_CHAIN_DIRECTORY"), "{err}");
        assert!(err.contains("OPDBUS_BLOCKCHAIN_DIR"), "{err}");
    }

    /// The `#KEY=default` lines of `text`, in order.
    fn documented_keys(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("#OPDBUS_"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (format!("OPDBUS_{k}"), v.to_owned()))
            .collect()
    }

    #[test]
    fn the_shipped_config_file_documents_exactly_the_table() {
        let shipped = include_str!("../config/opdbus-blockchain");
        let table: Vec<(String, String)> = KEYS
            .iter()
            .map(|key| (key.name.to_owned(), key.default_value()))
            .collect();
        assert_eq!(
            documented_keys(shipped),
            table,
            "config/opdbus-blockchain must show every key of config::KEYS as #KEY=DEFAULT, in \
             the table's order, and no other"
        );
        // And the file, uncommented, is a valid configuration.
        let uncommented: String = table.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        load_file(uncommented.as_bytes()).expect("the documented defaults load");
    }

    #[test]
    fn the_operations_guide_shows_the_table() {
        let guide = include_str!("../docs/operations.md");
        let table = markdown_table();
        assert!(
            guide.contains(&table),
            "docs/operations.md, section Configure, must hold this table (from config::KEYS):\n{table}"
        );
        for key in KEYS {
            if let Some((flag, _)) = key.flag {
                assert!(guide.contains(&format!("`--{flag}`")), "--{flag}");
            }
        }
    }

    #[test]
    fn every_key_has_help_and_its_default_reads_back() {
        let help = environment_help();
        for key in KEYS {
            assert!(
                !key.help.is_empty() && !key.accepts.is_empty(),
                "{}",
                key.name
            );
            assert!(help.contains(&format!("{}=", key.name)), "{}", key.name);
            let default = key.default_value();
            let mut config = Config::default();
            config.set(key.name, &default).expect(key.name);
            assert_eq!((key.show)(&config), default, "{}", key.name);
        }
    }

    /// A value a key refuses, from a flag (`check`) or the environment and file (`load`) alike,
    /// is refused naming the key, the value and the words the table documents.
    #[test]
    fn every_key_refuses_garbage_in_the_words_it_documents() {
        for key in KEYS {
            let err = key.check("#garbage").expect_err(key.name);
            assert!(err.contains(key.accepts), "{}: {err}", key.name);
            let env = |name: &str| (name == key.name).then(|| "#garbage".to_owned());
            let err = Config::load(None, env).expect_err(key.name).to_string();
            assert!(err.contains(&format!("{}=#garbage", key.name)), "{err}");
            assert!(err.contains(key.accepts), "{err}");
        }
    }

    #[test]
    fn numa_settings_become_the_numa_options() {
        let env = |key: &str| match key {
            "OPDBUS_CACHE_MEMORY_POLICY" => Some("interleaved".to_owned()),
            "OPDBUS_CACHE_PLACEMENT" => Some("round_robin".to_owned()),
            "OPDBUS_NUMA_SYSFS_ROOT" => Some("/fake/node".to_owned()),
            "OPDBUS_BLOCKCHAIN_DIR" => Some("/chain".to_owned()),
            _ => None,
        };
        let options = Config::load(None, env)
            .expect("valid")
            .numa_options()
            .expect("on");
        assert_eq!(options.memory_policy, MemoryPolicy::Interleaved);
        assert_eq!(options.placement, CachePlacement::RoundRobin);
        assert_eq!(options.sysfs_node_root, Path::new("/fake/node"));
        assert_eq!(
            options.sysfs_block_root,
            Path::new(crate::numa::DEFAULT_SYSFS_BLOCK_ROOT)
        );
        assert_eq!(options.chain_dir, Path::new("/chain"));
        let env = |key: &str| (key == "OPDBUS_NUMA").then(|| "off".to_owned());
        assert!(Config::load(None, env)
            .expect("valid")
            .numa_options()
            .is_none());
    }

    #[test]
    fn a_refused_shared_cache_address_does_not_show_its_password() {
        let mut config = Config::default();
        for value in ["mysql://opdbus:s3cret@host", "redis://opdbus:s3cret@"] {
            let err = config
                .set("OPDBUS_SHARED_CACHE", value)
                .expect_err("refused")
                .to_string();
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("OPDBUS_SHARED_CACHE="), "{err}");
        }
    }

    #[test]
    fn every_key_is_compared_for_reload() {
        let config = Config::default();
        for key in KEYS {
            let mut changed = config.clone();
            let other = match key.name {
                "OPDBUS_BUS" => "session",
                "OPDBUS_LOG" => "debug",
                "OPDBUS_NUMA" | "OPDBUS_CACHE_PREDICT" => "off",
                "OPDBUS_CACHE_PLACEMENT" => "round_robin",
                "OPDBUS_CACHE_MEMORY_POLICY" => "bind",
                "OPDBUS_SNAPSHOT_INTERVAL" => "hourly",
                "OPDBUS_WRITER_UIDS" => "1000",
                "OPDBUS_READ_GROUP" => "auditors",
                "OPDBUS_SIGNING_KEY" => "/elsewhere/signing.key",
                "OPDBUS_ORIGIN" => "example.org/audit",
                "OPDBUS_CHECKPOINT_INTERVAL" => "5m",
                "OPDBUS_REPLICA_OF" => {
                    "https://host1.example.org/ PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
                }
                "OPDBUS_WITNESS_KEY" => "/elsewhere/witness.key",
                "OPDBUS_SHARED_CACHE" => "redis+cluster://:secret@127.0.0.1:7000,127.0.0.1:7001",
                "OPDBUS_SHARED_CACHE_TIMEOUT" => "5ms",
                "OPDBUS_NUMA_ROUTE_TABLE" => "/elsewhere/route",
                k if k.ends_with("_DIR") || k.ends_with("_ROOT") => "/elsewhere",
                k if k.starts_with("OPDBUS_RETAIN_") => "9",
                _ => "131072",
            };
            changed.set(key.name, other).expect(key.name);
            assert_ne!(
                key.default_value(),
                other,
                "{}: the test must change the value",
                key.name
            );
            let names: Vec<&str> = config
                .changed_keys(&changed)
                .iter()
                .map(|k| k.name)
                .collect();
            assert_eq!(names, [key.name], "{}={other}", key.name);
        }
    }

    fn load_file(text: &[u8]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config");
        std::fs::write(&file, text).expect("write");
        Config::load(Some(&file), |_| None)
    }

    #[test]
    fn a_missing_config_file_is_a_warning_and_the_defaults_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("deleted");
        let config = Config::load(Some(&file), |_| None).expect("defaults");
        assert_eq!(config.chain_dir, Config::default().chain_dir);
        assert_eq!(config.file.as_deref(), Some(file.as_path()));
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(
            config.warnings[0].contains("does not exist"),
            "{:?}",
            config.warnings
        );
        // Unreadable for another reason (a directory) stays an error.
        let err = Config::load(Some(dir.path()), |_| None).expect_err("a directory");
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
    }

    #[test]
    fn export_lines_a_bom_and_foreign_keys_are_read_like_systemd_would() {
        let config = load_file(
            "\u{feff}export OPDBUS_BLOCKCHAIN_DIR=/srv/chain\nRUST_BACKTRACE=1\n\
             export RUST_LOG=debug\nOPDBUS_RETAIN_DAILY=3\n"
                .as_bytes(),
        )
        .expect("valid");
        assert_eq!(config.chain_dir, PathBuf::from("/srv/chain"));
        assert_eq!(config.retention.daily, 3);
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(
            config.warnings[0].contains("RUST_BACKTRACE"),
            "{:?}",
            config.warnings
        );
        assert!(
            config.warnings[1].contains("line 3"),
            "{:?}",
            config.warnings
        );
        // A BOM before a key of ours, without `export`.
        let config = load_file("\u{feff}OPDBUS_LOG=warn\n".as_bytes()).expect("valid");
        assert_eq!(config.log, "warn");
        // An unknown key of ours is still a typo, refused.
        let err = load_file(b"export OPDBUS_LOGS=debug\n")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("unknown key OPDBUS_LOGS"), "{err}");
    }

    #[test]
    fn log_filters_that_would_log_nothing_are_refused() {
        for good in [
            "info",
            "DEBUG",
            "opdbus_blockchain=debug,zbus=warn",
            " warn ",
        ] {
            let config = load_file(format!("OPDBUS_LOG={good}\n").as_bytes()).expect(good);
            assert_eq!(config.log, good.trim());
        }
        for bad in [
            "verbose",
            "debug # comment",
            "",
            "info,",
            "=debug",
            "zbus=loud",
            "a b=info",
        ] {
            let err = load_file(format!("OPDBUS_LOG={bad}\n").as_bytes())
                .expect_err(bad)
                .to_string();
            assert!(err.contains(&format!("OPDBUS_LOG={}", bad.trim())), "{err}");
            assert!(err.contains("expected a level"), "{err}");
        }
    }
}
