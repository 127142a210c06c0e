//! `MANIFEST.json`: what a snapshot holds, written inside it before it is made read-only.
//!
//! ```json
//! {
//!   "version": 1,
//!   "height": 42,
//!   "head_hash": "<64 lowercase hex digits>",
//!   "created_utc": "2026-11-25T13:05:00Z",
//!   "created_unix_ns": 1795611900123456789,
//!   "method": "btrfs-snapshot",
//!   "chain_id": "<lowercase hex>"
//! }
//! ```
//! `created_utc` is `created_unix_ns` truncated to the second; a reader checks they agree.
//! Writing is atomic and durable: a temporary file is written and fsynced, renamed over
//! `MANIFEST.json`, and the directory is fsynced. Readers ignore fields they do not know.

use super::utc::UtcDateTime;
use crate::chain::block::{parse_hash, Hash};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub const MANIFEST_FILE: &str = "MANIFEST.json";
const MANIFEST_TEMP_FILE: &str = "MANIFEST.json.tmp";
pub const MANIFEST_VERSION: u32 = 1;

/// How a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMethod {
    /// A read-only btrfs snapshot of the subvolume.
    BtrfsSnapshot,
    /// Not on btrfs: sealed segments hard-linked, the open one copied up to the barrier.
    HardlinkCopy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file, [`MANIFEST_VERSION`].
    pub version: u32,
    /// Height of the newest block in the snapshot.
    pub height: u64,
    /// Hash of that block, lowercase hex.
    pub head_hash: String,
    /// Creation time, RFC 3339 UTC to the second.
    pub created_utc: String,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    pub method: SnapshotMethod,
    /// The chain's id (from its segment headers), lowercase hex.
    pub chain_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: invalid manifest: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl Manifest {
    /// A manifest for a snapshot created at `created` (a time before 1970 counts as 1970).
    pub fn new(
        height: u64,
        head_hash: &Hash,
        created: SystemTime,
        method: SnapshotMethod,
        chain_id: &[u8],
    ) -> Manifest {
        let since_epoch = created.duration_since(UNIX_EPOCH).unwrap_or_default();
        let created_unix_ns = u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX);
        Manifest {
            version: MANIFEST_VERSION,
            height,
            head_hash: hex::encode(head_hash),
            created_utc: utc_of_ns(created_unix_ns),
            created_unix_ns,
            method,
            chain_id: hex::encode(chain_id),
        }
    }

    /// The head hash as bytes (checked valid by [`read_manifest`]).
    pub fn head_hash_bytes(&self) -> Option<Hash> {
        parse_hash(&self.head_hash)
    }

    fn check(&self) -> Result<(), String> {
        if self.version != MANIFEST_VERSION {
            return Err(format!(
                "version {} (this build reads {MANIFEST_VERSION})",
                self.version
            ));
        }
        if !is_lower_hex(&self.head_hash) || parse_hash(&self.head_hash).is_none() {
            return Err(format!(
                "head_hash {:?} is not 64 lowercase hex digits",
                self.head_hash
            ));
        }
        if self.chain_id.is_empty()
            || !self.chain_id.len().is_multiple_of(2)
            || !is_lower_hex(&self.chain_id)
        {
            return Err(format!("chain_id {:?} is not lowercase hex", self.chain_id));
        }
        let expected = utc_of_ns(self.created_unix_ns);
        if self.created_utc != expected {
            return Err(format!(
                "created_utc {:?} does not match created_unix_ns ({expected})",
                self.created_utc
            ));
        }
        Ok(())
    }
}

fn utc_of_ns(ns: u64) -> String {
    // u64 nanoseconds / 1e9 fits an i64 with room to spare.
    UtcDateTime::from_unix((ns / 1_000_000_000) as i64).rfc3339()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes `dir/MANIFEST.json` atomically and durably (see the module documentation).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ManifestError> {
    let temp = dir.join(MANIFEST_TEMP_FILE);
    let path = dir.join(MANIFEST_FILE);
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ManifestError::Io { path, source }
    };
    let mut json = serde_json::to_vec_pretty(manifest).map_err(|e| ManifestError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    let _ = fs::remove_file(&temp); // a leftover of a crash, or a planted link
    let mut file =
        crate::files::create_new(&temp, crate::files::FILE_MODE).map_err(io_error(&temp))?;
    file.write_all(&json).map_err(io_error(&temp))?;
    file.sync_all().map_err(io_error(&temp))?;
    drop(file);
    fs::rename(&temp, &path).map_err(io_error(&path))?;
    crate::files::sync_dir(dir).map_err(io_error(dir))?;
    Ok(())
}

/// Reads and checks `dir/MANIFEST.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ManifestError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = crate::files::read(&path).map_err(|source| ManifestError::Io {
        path: path.clone(),
        source,
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| ManifestError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    manifest
        .check()
        .map_err(|reason| ManifestError::Invalid { path, reason })?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Manifest {
        let created = UNIX_EPOCH + Duration::new(1_795_611_900, 123_456_789);
        Manifest::new(
            42,
            &[0xab; 32],
            created,
            SnapshotMethod::BtrfsSnapshot,
            &[0x01; 16],
        )
    }

    #[test]
    fn new_fills_every_field() {
        let m = sample();
        assert_eq!(m.version, 1);
        assert_eq!(m.height, 42);
        assert_eq!(m.head_hash, "ab".repeat(32));
        assert_eq!(m.created_utc, "2026-11-25T13:05:00Z");
        assert_eq!(m.created_unix_ns, 1_795_611_900_123_456_789);
        assert_eq!(m.chain_id, "01".repeat(16));
        assert_eq!(m.head_hash_bytes(), Some([0xab; 32]));
    }

    #[test]
    fn written_manifest_reads_back_and_has_the_documented_json() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let m = sample();
        write_manifest(dir.path(), &m).expect("write");
        assert_eq!(read_manifest(dir.path()).expect("read"), m);
        assert!(!dir.path().join(MANIFEST_TEMP_FILE).exists());

        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(MANIFEST_FILE)).expect("file"))
                .expect("JSON");
        assert_eq!(json["method"], "btrfs-snapshot");
        assert_eq!(json["created_utc"], "2026-11-25T13:05:00Z");
        assert_eq!(
            json["created_unix_ns"].as_u64(),
            Some(1_795_611_900_123_456_789)
        );

        let hardlink = Manifest {
            method: SnapshotMethod::HardlinkCopy,
            ..m
        };
        write_manifest(dir.path(), &hardlink).expect("overwrite");
        assert_eq!(
            read_manifest(dir.path()).expect("read").method,
            SnapshotMethod::HardlinkCopy
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut json = serde_json::to_value(sample()).expect("JSON");
        json["added_later"] = serde_json::json!("x");
        fs::write(dir.path().join(MANIFEST_FILE), json.to_string()).expect("write");
        assert_eq!(read_manifest(dir.path()).expect("read"), sample());
    }

    #[test]
    fn damaged_manifests_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("temporary directory");
        type Damage = fn(&mut Manifest);
        let cases: [(Damage, &str); 5] = [
            (|m| m.head_hash = "AB".repeat(32), "head_hash"),
            (|m| m.head_hash.truncate(62), "head_hash"),
            (|m| m.chain_id = "xyz".into(), "chain_id"),
            (
                |m| m.created_utc = "2026-11-25T13:05:01Z".into(),
                "created_utc",
            ),
            (|m| m.version = 2, "version"),
        ];
        for (damage, field) in cases {
            let mut m = sample();
            damage(&mut m);
            fs::write(
                dir.path().join(MANIFEST_FILE),
                serde_json::to_vec(&m).expect("JSON"),
            )
            .expect("write");
            let err = read_manifest(dir.path()).expect_err(field);
            assert!(
                matches!(err, ManifestError::Invalid { .. }) && err.to_string().contains(field),
                "{err}"
            );
        }
        fs::write(dir.path().join(MANIFEST_FILE), r#"{"height": 1}"#).expect("write");
        assert!(matches!(
            read_manifest(dir.path()),
            Err(ManifestError::Invalid { .. })
        ));
        fs::write(dir.path().join(MANIFEST_FILE), r#"{"method": "rsync"}"#).expect("write");
        assert!(matches!(
            read_manifest(dir.path()),
            Err(ManifestError::Invalid { .. })
        ));
        let missing = dir.path().join("nowhere");
        assert!(matches!(
            read_manifest(&missing),
            Err(ManifestError::Io { .. })
        ));
    }
}
