//! The daemon's configuration: one typed struct, built once at start-up from
//! defaults ← config file ← environment (`OPDBUS_*`) ← command-line flags, and validated with
//! errors that name the bad key and what it accepts.
//!
//! The config file has the format of the environment file systemd reads
//! (`/etc/default/opdbus-blockchain`): `KEY=VALUE` lines, `#` comments, optional quotes.

use crate::footprint::DEFAULT_MAX_DATA_BYTES;
use crate::numa::{self, CachePlacement, MemoryPolicy, NumaOptions};
use crate::snapshot::{RetentionPolicy, SnapshotInterval, SNAPSHOT_INTERVAL_ENV};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

impl BusChoice {
    /// A client connection to this bus.
    pub async fn connect(&self) -> zbus::Result<zbus::Connection> {
        match self {
            BusChoice::System => zbus::Connection::system().await,
            BusChoice::Session => zbus::Connection::session().await,
            BusChoice::Address(address) => {
                zbus::connection::Builder::address(address.as_str())?
                    .build()
                    .await
            }
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

/// Everything the daemon can be told.
#[derive(Debug, Clone)]
pub struct Config {
    pub bus: BusChoice,
    /// `OPDBUS_BLOCKCHAIN_DIR`
    pub chain_dir: PathBuf,
    /// `OPDBUS_CACHE_DIR`
    pub cache_dir: PathBuf,
    /// `OPDBUS_MAX_DATA_BYTES`: largest footprint data JSON accepted.
    pub max_data_bytes: usize,
    /// `OPDBUS_SEGMENT_BYTES`: size at which a segment file is sealed.
    pub segment_bytes: u64,
    /// `OPDBUS_WRITER_UIDS`: uids besides root (and the daemon's own) allowed to write.
    pub writer_uids: Vec<u32>,
    /// `OPDBUS_LOG`: tracing filter, e.g. `info` or `opdbus_blockchain=debug`.
    pub log: String,
    /// `OPDBUS_CACHE_PLACEMENT`: on which NUMA node(s) the cache's memory goes.
    pub cache_placement: CachePlacement,
    /// `OPDBUS_CACHE_MEMORY_POLICY`: memory policy of the writer thread.
    pub memory_policy: MemoryPolicy,
    /// `OPDBUS_NUMA`: `on` detects the topology and binds the writer; `off` skips both.
    pub numa: bool,
    /// `OPDBUS_NUMA_SYSFS_ROOT`: where `nodeN/meminfo` are read (tests point it elsewhere).
    pub numa_sysfs_root: Option<PathBuf>,
    /// `OPDBUS_NUMA_SYSFS_BLOCK_ROOT`: where block devices are looked up for disk locality.
    pub numa_block_root: Option<PathBuf>,
    /// `OPDBUS_CACHE_HOT_BYTES`: RAM for the cache's hot tier.
    pub cache_hot_bytes: u64,
    /// `OPDBUS_CACHE_PRELOAD_BLOCKS`: newest blocks loaded into RAM at start.
    pub cache_preload_blocks: u64,
    /// `OPDBUS_CACHE_QUEUE_BLOCKS`: blocks that may wait for the cache thread before skipping.
    pub cache_queue_blocks: usize,
    /// `OPDBUS_CACHE_PREDICT`: pre-load blocks readers are likely to read next.
    pub cache_predict: bool,
    /// `OPDBUS_SNAPSHOT_INTERVAL`: when the daemon takes unified snapshots by itself.
    pub snapshot_interval: SnapshotInterval,
    /// `OPDBUS_RETAIN_HOURLY`, `_DAILY`, `_WEEKLY`: which scheduled snapshots are kept.
    pub retention: RetentionPolicy,
    /// The config file these settings were read from (`--config`); SIGHUP reads it again.
    pub file: Option<PathBuf>,
    /// What loading noticed but let pass (a missing file, keys that are not ours); the daemon
    /// logs them at warn once logging is up, and on SIGHUP.
    pub warnings: Vec<String>,
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

/// Every key the config file and environment understand, with its default.
pub const KEYS: &[(&str, &str)] = &[
    ("OPDBUS_BUS", "system"),
    ("OPDBUS_BLOCKCHAIN_DIR", "/var/lib/op-dbus/blockchain"),
    ("OPDBUS_CACHE_DIR", "/var/lib/op-dbus/@cache"),
    ("OPDBUS_MAX_DATA_BYTES", "65536"),
    ("OPDBUS_SEGMENT_BYTES", "67108864"),
    ("OPDBUS_WRITER_UIDS", ""),
    ("OPDBUS_LOG", "info"),
    ("OPDBUS_CACHE_PLACEMENT", "local_node"),
    ("OPDBUS_CACHE_MEMORY_POLICY", "preferred"),
    ("OPDBUS_NUMA", "on"),
    ("OPDBUS_NUMA_SYSFS_ROOT", "/sys/devices/system/node"),
    ("OPDBUS_NUMA_SYSFS_BLOCK_ROOT", "/sys/dev/block"),
    ("OPDBUS_CACHE_HOT_BYTES", "67108864"),
    ("OPDBUS_CACHE_PRELOAD_BLOCKS", "1024"),
    ("OPDBUS_CACHE_QUEUE_BLOCKS", "65536"),
    ("OPDBUS_CACHE_PREDICT", "on"),
    ("OPDBUS_SNAPSHOT_INTERVAL", "off"),
    ("OPDBUS_RETAIN_HOURLY", "5"),
    ("OPDBUS_RETAIN_DAILY", "5"),
    ("OPDBUS_RETAIN_WEEKLY", "5"),
];

impl Default for Config {
    fn default() -> Self {
        Config {
            bus: BusChoice::System,
            chain_dir: PathBuf::from("/var/lib/op-dbus/blockchain"),
            cache_dir: PathBuf::from("/var/lib/op-dbus/@cache"),
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
            segment_bytes: 64 * 1024 * 1024,
            writer_uids: Vec::new(),
            log: "info".into(),
            cache_placement: CachePlacement::default(),
            memory_policy: MemoryPolicy::default(),
            numa: true,
            numa_sysfs_root: None,
            numa_block_root: None,
            cache_hot_bytes: crate::cache::DEFAULT_HOT_BYTES,
            cache_preload_blocks: crate::cache::DEFAULT_PRELOAD_BLOCKS,
            cache_queue_blocks: crate::cache::DEFAULT_QUEUE_BLOCKS,
            cache_predict: true,
            snapshot_interval: SnapshotInterval::Off,
            retention: RetentionPolicy::default(),
            file: None,
            warnings: Vec::new(),
        }
    }
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
        for (key, _) in KEYS {
            if let Some(value) = env(key) {
                values.insert((*key).to_owned(), value);
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
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        match key {
            "OPDBUS_BUS" => self.bus = value.parse().map_err(invalid)?,
            "OPDBUS_BLOCKCHAIN_DIR" => self.chain_dir = absolute_dir(value).map_err(invalid)?,
            "OPDBUS_CACHE_DIR" => self.cache_dir = absolute_dir(value).map_err(invalid)?,
            "OPDBUS_MAX_DATA_BYTES" => {
                self.max_data_bytes = parse_in_range(value, 1024, 64 * 1024 * 1024, "bytes")
                    .map_err(invalid)? as usize
            }
            "OPDBUS_SEGMENT_BYTES" => {
                self.segment_bytes =
                    parse_in_range(value, 64 * 1024, 1 << 40, "bytes").map_err(invalid)?
            }
            "OPDBUS_WRITER_UIDS" => {
                self.writer_uids = value
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u32>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        invalid("expected a comma-separated list of numeric uids".into())
                    })?
            }
            "OPDBUS_LOG" => self.log = log_filter(value).map_err(invalid)?,
            numa::ENV_PLACEMENT => {
                self.cache_placement = value.parse().map_err(|_| {
                    invalid(format!(
                        "accepted values: {}",
                        CachePlacement::WORDS.join(", ")
                    ))
                })?
            }
            numa::ENV_MEMORY_POLICY => {
                self.memory_policy = value.parse().map_err(|_| {
                    invalid(format!(
                        "accepted values: {}",
                        MemoryPolicy::WORDS.join(", ")
                    ))
                })?
            }
            "OPDBUS_NUMA" => self.numa = on_off(value).map_err(invalid)?,
            numa::ENV_SYSFS_NODE_ROOT => {
                self.numa_sysfs_root = Some(absolute_dir(value).map_err(invalid)?)
            }
            numa::ENV_SYSFS_BLOCK_ROOT => {
                self.numa_block_root = Some(absolute_dir(value).map_err(invalid)?)
            }
            "OPDBUS_CACHE_HOT_BYTES" => {
                self.cache_hot_bytes =
                    parse_in_range(value, 64 * 1024, 1 << 40, "bytes").map_err(invalid)?
            }
            "OPDBUS_CACHE_PRELOAD_BLOCKS" => {
                self.cache_preload_blocks =
                    parse_in_range(value, 0, 100_000_000, "blocks").map_err(invalid)?
            }
            "OPDBUS_CACHE_PREDICT" => self.cache_predict = on_off(value).map_err(invalid)?,
            "OPDBUS_CACHE_QUEUE_BLOCKS" => {
                self.cache_queue_blocks =
                    parse_in_range(value, 16, 16 * 1024 * 1024, "blocks").map_err(invalid)? as usize
            }
            SNAPSHOT_INTERVAL_ENV => {
                self.snapshot_interval = value.parse().map_err(|_| {
                    invalid(
                        "accepted values: every-N-minutes (N a whole number ≥ 1, e.g. \
                         every-15-minutes), hourly, daily, off"
                            .into(),
                    )
                })?
            }
            "OPDBUS_RETAIN_HOURLY" => {
                self.retention.hourly =
                    parse_in_range(value, 0, 10_000, "snapshots").map_err(invalid)? as u32
            }
            "OPDBUS_RETAIN_DAILY" => {
                self.retention.daily =
                    parse_in_range(value, 0, 10_000, "snapshots").map_err(invalid)? as u32
            }
            "OPDBUS_RETAIN_WEEKLY" => {
                self.retention.weekly =
                    parse_in_range(value, 0, 10_000, "snapshots").map_err(invalid)? as u32
            }
            _ => {
                return Err(invalid(format!(
                    "unknown key; known keys: {}",
                    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                )))
            }
        }
        Ok(())
    }
}

/// One warning per `OPDBUS_*` name in `names` that is not in [`KEYS`] (a typo such as
/// OPDBUS_SEGMNT_BYTES would otherwise be silently ignored), naming the closest known key.
pub fn unknown_env_keys(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut warnings: Vec<String> = names
        .into_iter()
        .filter(|name| name.starts_with("OPDBUS_") && !KEYS.iter().any(|(key, _)| key == name))
        .map(|name| {
            let closest = KEYS
                .iter()
                .map(|(key, _)| *key)
                .min_by_key(|key| edit_distance(key, &name))
                .unwrap_or("OPDBUS_LOG");
            format!("unknown environment variable {name} ignored; did you mean {closest}?")
        })
        .collect();
    warnings.sort();
    warnings
}

/// Levenshtein distance over bytes; the names are short ASCII.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Keys a running daemon applies on SIGHUP; every other key needs a restart.
pub const RELOADABLE_KEYS: &[&str] = &[
    "OPDBUS_LOG",
    SNAPSHOT_INTERVAL_ENV,
    "OPDBUS_RETAIN_HOURLY",
    "OPDBUS_RETAIN_DAILY",
    "OPDBUS_RETAIN_WEEKLY",
];

impl Config {
    /// The keys whose values differ between `self` and `other`, in [`KEYS`] order.
    pub fn changed_keys(&self, other: &Config) -> Vec<&'static str> {
        KEYS.iter()
            .map(|(key, _)| *key)
            .filter(|key| self.value_of(key) != other.value_of(key))
            .collect()
    }

    /// The setting behind `key` as text, for comparison; `None` for a key not in [`KEYS`].
    /// No wildcard arm: a key added to `set` must be added here (the test walks [`KEYS`]).
    fn value_of(&self, key: &str) -> Option<String> {
        fn text(value: &dyn std::fmt::Debug) -> Option<String> {
            Some(format!("{value:?}"))
        }
        match key {
            "OPDBUS_BUS" => text(&self.bus),
            "OPDBUS_BLOCKCHAIN_DIR" => text(&self.chain_dir),
            "OPDBUS_CACHE_DIR" => text(&self.cache_dir),
            "OPDBUS_MAX_DATA_BYTES" => text(&self.max_data_bytes),
            "OPDBUS_SEGMENT_BYTES" => text(&self.segment_bytes),
            "OPDBUS_WRITER_UIDS" => text(&self.writer_uids),
            "OPDBUS_LOG" => text(&self.log),
            numa::ENV_PLACEMENT => text(&self.cache_placement),
            numa::ENV_MEMORY_POLICY => text(&self.memory_policy),
            "OPDBUS_NUMA" => text(&self.numa),
            numa::ENV_SYSFS_NODE_ROOT => text(&self.numa_sysfs_root),
            numa::ENV_SYSFS_BLOCK_ROOT => text(&self.numa_block_root),
            "OPDBUS_CACHE_HOT_BYTES" => text(&self.cache_hot_bytes),
            "OPDBUS_CACHE_PRELOAD_BLOCKS" => text(&self.cache_preload_blocks),
            "OPDBUS_CACHE_QUEUE_BLOCKS" => text(&self.cache_queue_blocks),
            "OPDBUS_CACHE_PREDICT" => text(&self.cache_predict),
            SNAPSHOT_INTERVAL_ENV => text(&self.snapshot_interval),
            "OPDBUS_RETAIN_HOURLY" => text(&self.retention.hourly),
            "OPDBUS_RETAIN_DAILY" => text(&self.retention.daily),
            "OPDBUS_RETAIN_WEEKLY" => text(&self.retention.weekly),
            _ => None,
        }
    }
}

impl Config {
    /// The NUMA options these settings describe; `None` when NUMA is switched off.
    pub fn numa_options(&self) -> Option<NumaOptions> {
        let defaults = NumaOptions::default();
        self.numa.then(|| NumaOptions {
            placement: self.cache_placement,
            memory_policy: self.memory_policy,
            sysfs_node_root: self
                .numa_sysfs_root
                .clone()
                .unwrap_or(defaults.sysfs_node_root),
            sysfs_block_root: self
                .numa_block_root
                .clone()
                .unwrap_or(defaults.sysfs_block_root),
            chain_dir: self.chain_dir.clone(),
        })
    }
}

impl Config {
    /// The block cache's options these settings describe.
    pub fn cache_options(&self) -> crate::cache::CacheOptions {
        crate::cache::CacheOptions {
            dir: self.cache_dir.clone(),
            hot_bytes: self.cache_hot_bytes,
            preload_blocks: self.cache_preload_blocks,
            queue_blocks: self.cache_queue_blocks,
        }
    }
}

fn on_off(value: &str) -> Result<bool, String> {
    match value.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("accepted values: on, off".into()),
    }
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

/// A retention count: how many hours, days or weeks keep a snapshot.
/// A whole number of `unit` (bytes, blocks, snapshots) from `min` to `max`.
fn parse_in_range(value: &str, min: u64, max: u64, unit: &str) -> Result<u64, String> {
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
        if !KEYS.iter().any(|(known, _)| *known == key) {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.to_owned(),
                known: KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
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
        assert_eq!(
            before.changed_keys(&after),
            ["OPDBUS_WRITER_UIDS", "OPDBUS_LOG", "OPDBUS_RETAIN_HOURLY"]
        );
        assert!(before.changed_keys(&before).is_empty());
    }

    #[test]
    fn bad_values_name_the_key_and_what_is_accepted() {
        let env = |key: &str| (key == "OPDBUS_MAX_DATA_BYTES").then(|| "lots".to_owned());
        let err = Config::load(None, env).expect_err("invalid").to_string();
        assert!(err.contains("OPDBUS_MAX_DATA_BYTES=lots"), "{err}");
        assert!(err.contains("whole number"), "{err}");
        let env = |key: &str| (key == "OPDBUS_CACHE_PLACEMENT").then(|| "everywhere".to_owned());
        let err = Config::load(None, env).expect_err("invalid").to_string();
        assert!(err.contains("OPDBUS_CACHE_PLACEMENT=everywhere"), "{err}");
        assert!(
            err.contains("local_node, round_robin, most_memory, disabled"),
            "{err}"
        );
        let err = "nowhere".parse::<BusChoice>().expect_err("invalid");
        assert!(err.contains("system, session"), "{err}");
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
    fn relative_directories_are_refused_and_unknown_env_keys_named() {
        assert!(absolute_dir("relative/path").is_err());
        assert_eq!(absolute_dir("/srv/chain"), Ok(PathBuf::from("/srv/chain")));
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

    #[test]
    fn the_shipped_config_file_documents_every_key_with_its_default() {
        let shipped = include_str!("../config/opdbus-blockchain");
        for (key, default) in KEYS {
            let line = format!("#{key}={default}");
            assert!(
                shipped.lines().any(|l| l.trim() == line),
                "config/opdbus-blockchain lacks the line `{line}`"
            );
        }
        // And the file, uncommented, is a valid configuration.
        let uncommented: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#').filter(|l| l.starts_with("OPDBUS_")))
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("defaults");
        std::fs::write(&file, uncommented).expect("write");
        Config::load(Some(&file), |_| None).expect("the documented defaults load");
    }

    #[test]
    fn every_key_is_compared_for_reload() {
        let config = Config::default();
        for (key, default) in KEYS {
            assert!(
                config.value_of(key).is_some(),
                "{key} is missing from Config::value_of, so SIGHUP would never report it"
            );
            let mut changed = config.clone();
            let other = match *key {
                "OPDBUS_BUS" => "session",
                "OPDBUS_LOG" => "debug",
                "OPDBUS_NUMA" | "OPDBUS_CACHE_PREDICT" => "off",
                "OPDBUS_CACHE_PLACEMENT" => "round_robin",
                "OPDBUS_CACHE_MEMORY_POLICY" => "bind",
                "OPDBUS_SNAPSHOT_INTERVAL" => "hourly",
                "OPDBUS_WRITER_UIDS" => "1000",
                k if k.ends_with("_DIR") || k.ends_with("_ROOT") => "/elsewhere",
                k if k.starts_with("OPDBUS_RETAIN_") => "9",
                _ => "131072",
            };
            changed.set(key, other).expect(key);
            assert_ne!(*default, other, "{key}: the test must change the value");
            assert_eq!(config.changed_keys(&changed), [*key], "{key}={other}");
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
