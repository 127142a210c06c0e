//! Checkpoints (c2sp.org/tlog-checkpoint) in signed notes (c2sp.org/signed-note), and the
//! append-only history of every checkpoint issued.
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//!
//! — <key name> <base64 of key id and Ed25519 signature>
//! ```

use super::key::SigningKey;
use crate::chain::block::Hash;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A checkpoint: the tree head a signed note carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The whole signed note.
    pub note: String,
}

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a checkpoint: {0}")]
    Malformed(String),
    #[error("the verifier key is not valid: {0}")]
    BadVkey(String),
    #[error("no valid signature by {0}")]
    Unsigned(String),
    #[error("the checkpoint could not be signed: {0}")]
    Signing(String),
}

impl Checkpoint {
    /// Signs the checkpoint of the tree of `size` leaves with `root`.
    pub fn sign(
        key: &SigningKey,
        origin: &str,
        size: u64,
        root: &Hash,
    ) -> Result<Checkpoint, CheckpointError> {
        let body = tlog_tiles::Checkpoint::new(origin, size, tlog_tiles::Hash(*root), "")
            .map_err(|err| CheckpointError::Malformed(format!("origin {origin:?}: {err}")))?
            .to_bytes();
        let mut note = signed_note::Note::new(&body, &[])
            .map_err(|err| CheckpointError::Malformed(err.to_string()))?;
        note.add_sigs(&[key.signer()])
            .map_err(|err| CheckpointError::Signing(err.to_string()))?;
        let note = String::from_utf8(note.to_bytes())
            .map_err(|err| CheckpointError::Malformed(err.to_string()))?;
        Ok(Checkpoint {
            origin: origin.into(),
            size,
            root: *root,
            note,
        })
    }

    /// Reads a signed checkpoint without checking its signature (our own files, whose
    /// signature the verifier's key checks elsewhere).
    pub fn parse_unverified(note: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let malformed = |err: &dyn std::fmt::Display| CheckpointError::Malformed(err.to_string());
        let parsed = signed_note::Note::from_bytes(note).map_err(|err| malformed(&err))?;
        Checkpoint::from_body(parsed.text(), note)
    }

    /// Reads a signed checkpoint and checks that `vkey` signed it.
    pub fn open(note: &[u8], vkey: &str) -> Result<Checkpoint, CheckpointError> {
        let verifier = signed_note::StandardVerifier::new(vkey.trim())
            .map_err(|err| CheckpointError::BadVkey(err.to_string()))?;
        let parsed = signed_note::Note::from_bytes(note)
            .map_err(|err| CheckpointError::Malformed(err.to_string()))?;
        let verifiers = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        match parsed.verify(&verifiers) {
            Ok((verified, _)) if !verified.is_empty() => {}
            _ => return Err(CheckpointError::Unsigned(vkey.trim().to_string())),
        }
        Checkpoint::from_body(parsed.text(), note)
    }

    fn from_body(body: &[u8], note: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let parsed = tlog_tiles::Checkpoint::from_bytes(body)
            .map_err(|err| CheckpointError::Malformed(err.to_string()))?;
        Ok(Checkpoint {
            origin: parsed.origin().to_string(),
            size: parsed.size(),
            root: parsed.hash().0,
            note: String::from_utf8_lossy(note).into_owned(),
        })
    }

    /// The checkpoint as a JSON object (`size`, `root` in hex, `origin`, `note`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "origin": self.origin,
            "size": self.size,
            "root": hex::encode(self.root),
            "note": self.note,
        })
    }
}

/// The history file: one JSON object per line, `{"size":..,"root":"<hex>","note":".."}`,
/// appended and synced before the checkpoint is published.
pub struct History {
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HistoryLine {
    size: u64,
    root: String,
    note: String,
}

impl History {
    pub fn new(path: &Path) -> History {
        History {
            path: path.to_path_buf(),
        }
    }

    /// The newest checkpoint in the history, after dropping a last line a crash left torn
    /// (it was never published: the history is written before the checkpoint file).
    pub fn last(&self) -> io::Result<Option<Checkpoint>> {
        let mut file = match crate::files::open(
            crate::files::options(crate::files::FILE_MODE)
                .read(true)
                .write(true),
            &self.path,
        ) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        if complete < text.len() {
            tracing::warn!(
                path = %self.path.display(),
                "dropping the torn last line of the checkpoint history"
            );
            file.set_len(complete as u64)?;
            file.sync_data()?;
        }
        let Some(line) = text[..complete].lines().next_back() else {
            return Ok(None);
        };
        let line: HistoryLine = serde_json::from_str(line)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        Checkpoint::parse_unverified(line.note.as_bytes())
            .map(Some)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }

    /// Appends `checkpoint` and syncs it.
    pub fn append(&self, checkpoint: &Checkpoint) -> io::Result<()> {
        let line = serde_json::to_string(&HistoryLine {
            size: checkpoint.size,
            root: hex::encode(checkpoint.root),
            note: checkpoint.note.clone(),
        })
        .map_err(io::Error::other)?;
        let mut file = crate::files::open(
            crate::files::options(crate::files::FILE_MODE)
                .append(true)
                .create(true),
            &self.path,
        )?;
        file.write_all(format!("{line}\n").as_bytes())?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_with_its_vkey_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (key, _) =
            SigningKey::load_or_create(&dir.path().join("a.key"), "example.org/a").expect("key");
        let (other, _) =
            SigningKey::load_or_create(&dir.path().join("b.key"), "example.org/a").expect("key");
        let root = [7u8; 32];
        let signed = Checkpoint::sign(&key, "example.org/a", 42, &root).expect("sign");
        assert!(signed.note.starts_with("example.org/a\n42\n"));
        assert!(signed.note.contains("\n\n\u{2014} example.org/a "));
        let opened = Checkpoint::open(signed.note.as_bytes(), key.vkey()).expect("open");
        assert_eq!((opened.size, opened.root), (42, root));
        assert!(matches!(
            Checkpoint::open(signed.note.as_bytes(), other.vkey()),
            Err(CheckpointError::Unsigned(_))
        ));
        let forged = signed.note.replace("\n42\n", "\n43\n");
        assert!(Checkpoint::open(forged.as_bytes(), key.vkey()).is_err());
    }

    #[test]
    fn the_history_drops_a_torn_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (key, _) = SigningKey::load_or_create(&dir.path().join("k"), "log").expect("key");
        let history = History::new(&dir.path().join("checkpoints"));
        assert!(history.last().expect("empty").is_none());
        for size in 1..=3 {
            let checkpoint = Checkpoint::sign(&key, "log", size, &[size as u8; 32]).expect("sign");
            history.append(&checkpoint).expect("append");
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("checkpoints"))
            .expect("open");
        file.write_all(b"{\"size\":4,\"ro").expect("torn");
        assert_eq!(history.last().expect("last").expect("some").size, 3);
        let text = std::fs::read_to_string(dir.path().join("checkpoints")).expect("read");
        assert!(text.ends_with("\n") && text.lines().count() == 3);
    }
}
