//! The checkpoint signing key: an Ed25519 key in the signed-note private key format
//! (`PRIVATE+KEY+<name>+<id>+<base64>`), one line in a file of mode 0600 in a directory of
//! mode 0700, outside the chain directory so that it is in no snapshot and no backup.

use base64::Engine as _;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the key file and of the directory the daemon creates for it.
pub const KEY_MODE: u32 = 0o600;
pub const KEY_DIR_MODE: u32 = 0o700;

/// Why the signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("signing key {}: not a signed-note Ed25519 private key ({reason})", path.display())]
    Format { path: PathBuf, reason: String },
    #[error(
        "signing key {}: mode {mode:04o} lets others read it; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("signing key name {0:?}: a key name is non-empty and has no spaces or '+'")]
    Name(String),
}

/// A loaded signing key and its verifier key.
#[derive(Clone)]
pub struct SigningKey {
    signer: signed_note::StandardSigner,
    vkey: String,
    /// The Ed25519 private key (a witness signs cosignatures with it, see `cosign.rs`).
    seed: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("vkey", &self.vkey)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses a signed-note private key (`PRIVATE+KEY+name+id+base64`).
    pub fn parse(skey: &str, path: &Path) -> Result<SigningKey, KeyError> {
        let format = |reason: &str| KeyError::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let skey = skey.trim();
        let signer =
            signed_note::StandardSigner::new(skey).map_err(|err| format(&err.to_string()))?;
        // PRIVATE+KEY+<name>+<id>+<base64>: the base64 itself may hold '+'.
        let encoded = skey.splitn(5, '+').nth(4).unwrap_or_default();
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| format("bad base64"))?;
        let seed: [u8; 32] = key
            .get(1..)
            .and_then(|seed| seed.try_into().ok())
            .ok_or_else(|| format("not 32 bytes"))?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let vkey =
            signed_note::new_ed25519_verifier_key(signed_note::Signer::name(&signer), &public);
        Ok(SigningKey { signer, vkey, seed })
    }

    /// Reads the key at `path`. The file must not be readable by others (a systemd credential
    /// is 0400; a key the daemon made is 0600).
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = crate::files::open_read(path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::io::read_to_string(file).map_err(io)?;
        SigningKey::parse(&text, path)
    }

    /// Reads a systemd credential (`$CREDENTIALS_DIRECTORY/…`): systemd already made it
    /// readable by this service alone, so its mode is not judged.
    pub fn load_credential(path: &Path) -> Result<SigningKey, KeyError> {
        let text = crate::files::open_read(path)
            .and_then(std::io::read_to_string)
            .map_err(|source| KeyError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        SigningKey::parse(&text, path)
    }

    /// Reads the key at `path`, or makes a new one named `name` there when no file exists
    /// (its directory is created with mode 0700 if missing). Returns the key and whether it
    /// is new.
    pub fn load_or_create(path: &Path, name: &str) -> Result<(SigningKey, bool), KeyError> {
        match SigningKey::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other.map(|key| (key, false)),
        }
        if !signed_note::is_key_name_valid(name) {
            return Err(KeyError::Name(name.into()));
        }
        let io = |path: &Path, source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|err| io(dir, err))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(KEY_DIR_MODE))
                    .map_err(|err| io(dir, err))?;
            }
        }
        let (skey, _) = signed_note::generate_key(&mut rand_core::OsRng, name);
        let key = SigningKey::parse(&skey, path)?;
        // create_new: O_EXCL and O_NOFOLLOW, so a file or link planted meanwhile is refused.
        let mut file = crate::files::create_new(path, KEY_MODE).map_err(|err| io(path, err))?;
        file.write_all(format!("{skey}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|err| io(path, err))?;
        if let Some(dir) = path.parent() {
            crate::files::sync_dir(dir).map_err(|err| io(dir, err))?;
        }
        Ok((key, true))
    }

    /// The key's name (the origin it was made for).
    pub fn name(&self) -> &str {
        signed_note::Signer::name(&self.signer)
    }

    /// The verifier key in note vkey format, `<name>+<hash>+<base64>`.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    pub(crate) fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub(crate) fn signer(&self) -> &signed_note::StandardSigner {
        &self.signer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_private_and_loads_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys/signing.key");
        let (key, new) = SigningKey::load_or_create(&path, "example.org/log").expect("create");
        assert!(new);
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("stat")
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let (again, new) = SigningKey::load_or_create(&path, "other").expect("load");
        assert!(!new);
        assert_eq!(again.vkey(), key.vkey());
        assert!(key.vkey().starts_with("example.org/log+"));
        signed_note::StandardVerifier::new(key.vkey()).expect("a valid vkey");
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("signing.key");
        SigningKey::load_or_create(&path, "log").expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            SigningKey::load(&path),
            Err(KeyError::Exposed { mode: 0o644, .. })
        ));
    }
}
