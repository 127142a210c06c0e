//! The chain-id marker: a small file OUTSIDE the chain directory that records which chain the
//! daemon serves, so that a missing or emptied chain directory is an error and never quietly
//! becomes a fresh genesis (a new, unrelated chain with an empty history).
//!
//! It lives beside the chain directory: `/var/lib/op-dbus/blockchain` has
//! `/var/lib/op-dbus/blockchain.chain-id`, one line with the chain id in hex (32 digits). The
//! daemon writes it on the first start (after creating or opening the chain) and checks it on
//! every later one; `opdbus-chain restore` sets it to the restored chain's id. Removing it is
//! how an operator says "start a new chain here on purpose".

use crate::chain::rewrite::{self, RewriteError};
use crate::chain::segment::ChainId;
use crate::files;
use std::io;
use std::path::{Path, PathBuf};

/// Suffix of the marker's file name after the chain directory's name.
pub const MARKER_SUFFIX: &str = ".chain-id";

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error(
        "{chain_dir} holds no chain, but {marker} records that chain {id} was served from \
         there; the daemon will not start a new, unrelated chain in its place. Restore the \
         chain (`opdbus-chain restore --from BACKUP --chain-dir {chain_dir} --cache-dir …`, \
         see docs/operations.md) or move it back; to start a new chain on purpose, remove {marker}",
        chain_dir = .chain_dir.display(),
        marker = .marker.display(),
        id = hex::encode(.id)
    )]
    ChainMissing {
        chain_dir: PathBuf,
        marker: PathBuf,
        id: ChainId,
    },
    #[error(
        "{chain_dir} holds chain {found}, but {marker} records chain {recorded} as the one \
         served from there; put that chain back, or, if {found} is the chain to serve from now \
         on, remove {marker} (the next start records the new id)",
        chain_dir = .chain_dir.display(),
        marker = .marker.display(),
        found = hex::encode(.found),
        recorded = hex::encode(.recorded)
    )]
    OtherChain {
        chain_dir: PathBuf,
        marker: PathBuf,
        recorded: ChainId,
        found: ChainId,
    },
    #[error("chain-id marker {}: {reason}", .marker.display())]
    Invalid { marker: PathBuf, reason: String },
    #[error("chain-id marker {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The marker of one chain directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainMarker {
    pub chain_dir: PathBuf,
    pub path: PathBuf,
}

/// What a chain directory holds, as far as the marker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDisk {
    /// No directory, or no segment in it.
    NoChain,
    /// The chain id of the first segment's header.
    Chain(ChainId),
    /// Segments whose first header cannot be read: opening the chain reports why.
    Unreadable,
}

impl ChainMarker {
    /// The marker beside `chain_dir` (`<chain_dir>.chain-id`).
    pub fn beside(chain_dir: &Path) -> ChainMarker {
        let name = chain_dir
            .file_name()
            .map_or_else(|| "chain".into(), |n| n.to_string_lossy().into_owned());
        let parent = match chain_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        ChainMarker {
            chain_dir: chain_dir.to_owned(),
            path: parent.join(format!("{name}{MARKER_SUFFIX}")),
        }
    }

    /// The recorded chain id; `None` when there is no marker.
    pub fn read(&self) -> Result<Option<ChainId>, MarkerError> {
        let bytes = match files::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(MarkerError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let invalid = || MarkerError::Invalid {
            marker: self.path.clone(),
            reason: "expected one line with a chain id of 32 hex digits".into(),
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| invalid())?
            .trim_end();
        let mut id: ChainId = [0; 16];
        hex::decode_to_slice(text, &mut id).map_err(|_| invalid())?;
        Ok(Some(id))
    }

    /// Records `id` (atomically, mode 0640).
    pub fn write(&self, id: &ChainId) -> Result<(), MarkerError> {
        files::write_atomic(
            &self.path,
            format!("{}\n", hex::encode(id)).as_bytes(),
            files::FILE_MODE,
        )
        .map_err(|source| MarkerError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Before opening the chain: refuses a missing chain, or another chain, where the marker
    /// records one. Returns the recorded id.
    pub fn check_before_open(&self) -> Result<Option<ChainId>, MarkerError> {
        let Some(recorded) = self.read()? else {
            return Ok(None);
        };
        match self.on_disk()? {
            OnDisk::NoChain => Err(MarkerError::ChainMissing {
                chain_dir: self.chain_dir.clone(),
                marker: self.path.clone(),
                id: recorded,
            }),
            OnDisk::Chain(found) if found != recorded => Err(self.other(recorded, found)),
            _ => Ok(Some(recorded)),
        }
    }

    /// After the chain is open: records its id on the first start, or checks it again.
    pub fn record_after_open(&self, recorded: Option<ChainId>) -> Result<(), MarkerError> {
        let OnDisk::Chain(found) = self.on_disk()? else {
            return Err(MarkerError::Invalid {
                marker: self.path.clone(),
                reason: format!(
                    "cannot read the chain id of {} to record it",
                    self.chain_dir.display()
                ),
            });
        };
        match recorded {
            None => {
                self.write(&found)?;
                tracing::info!(
                    marker = %self.path.display(),
                    chain_id = %hex::encode(found),
                    "recorded the chain id served from {}",
                    self.chain_dir.display()
                );
                Ok(())
            }
            Some(recorded) if recorded != found => Err(self.other(recorded, found)),
            Some(_) => Ok(()),
        }
    }

    fn other(&self, recorded: ChainId, found: ChainId) -> MarkerError {
        MarkerError::OtherChain {
            chain_dir: self.chain_dir.clone(),
            marker: self.path.clone(),
            recorded,
            found,
        }
    }

    /// The chain id in the chain directory's first segment header.
    pub fn on_disk(&self) -> Result<OnDisk, MarkerError> {
        Ok(match rewrite::chain_id(&self.chain_dir) {
            Ok(Some(id)) => OnDisk::Chain(id),
            Ok(None) => OnDisk::NoChain,
            Err(RewriteError::Mismatch(_)) => OnDisk::Unreadable,
            Err(RewriteError::Io { path, source }) => return Err(MarkerError::Io { path, source }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::segment;

    fn make_chain(dir: &Path, id: ChainId) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(
            dir.join(segment::file_name(0)),
            segment::encode_header(0, &id),
        )
        .expect("write");
    }

    #[test]
    fn the_marker_sits_beside_the_chain_dir() {
        let marker = ChainMarker::beside(Path::new("/var/lib/op-dbus/blockchain"));
        assert_eq!(
            marker.path,
            Path::new("/var/lib/op-dbus/blockchain.chain-id")
        );
    }

    #[test]
    fn a_missing_or_other_chain_is_refused_once_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        let marker = ChainMarker::beside(&chain);
        // First start: nothing recorded, nothing refused.
        assert_eq!(marker.check_before_open().expect("first start"), None);
        make_chain(&chain, [7; 16]);
        marker.record_after_open(None).expect("recorded");
        assert_eq!(marker.read().expect("read"), Some([7; 16]));
        assert_eq!(marker.check_before_open().expect("same"), Some([7; 16]));

        std::fs::rename(&chain, dir.path().join("aside")).expect("move aside");
        let err = marker.check_before_open().expect_err("missing chain");
        assert!(matches!(err, MarkerError::ChainMissing { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&marker.path.display().to_string()), "{text}");
        assert!(text.contains(&hex::encode([7u8; 16])), "{text}");

        std::fs::create_dir(&chain).expect("empty dir");
        assert!(matches!(
            marker.check_before_open(),
            Err(MarkerError::ChainMissing { .. })
        ));
        make_chain(&chain, [9; 16]);
        assert!(matches!(
            marker.check_before_open(),
            Err(MarkerError::OtherChain { .. })
        ));
    }
}
