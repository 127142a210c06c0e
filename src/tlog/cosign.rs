//! Witness cosignatures (c2sp.org/tlog-cosignature, the Ed25519 `cosignature/v1` type): a
//! replica that verified a checkpoint adds its own signature line to the note, stating that as
//! of a time this is the largest consistent tree it has seen for the log.
//!
//! ```text
//! key ID     = SHA-256(<name> || "\n" || 0x04 || 32-byte public key)[:4]
//! signature  = u64 BE timestamp || Ed25519 signature over
//!              "cosignature/v1\ntime <timestamp>\n" || <the checkpoint's note body>
//! verifier   = <name>+<key ID in hex>+base64(0x04 || public key)      (a signed-note vkey)
//! ```
//!
//! The note format (signature lines, key ids, checks) is the `signed_note` crate's: this module
//! only supplies the cosignature signer and verifier through its `Signer` and `Verifier` traits.

use super::key::SigningKey;
use super::Checkpoint;
use base64::Engine as _;
use ed25519_dalek::Signer as _;

/// The signature type byte of an Ed25519 cosignature key.
pub const COSIGNATURE_V1: u8 = 0x04;

/// Length of a cosignature after its key id: timestamp and Ed25519 signature.
const SIGNATURE_LEN: usize = 8 + 64;

/// Why a cosignature could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum CosignError {
    #[error("not a cosigner verifier key (name+id+base64 of 0x04 and 32 bytes): {0}")]
    BadVkey(String),
    #[error("not a signed note: {0}")]
    Note(String),
    #[error("cannot cosign: {0}")]
    Signing(String),
}

/// The message a `cosignature/v1` signs.
fn signed_message(timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    message.extend_from_slice(body);
    message
}

/// A witness's key, signing cosignatures (the key file is a signed-note private key, as the
/// checkpoint signing key; only the key id and the signed message differ).
#[derive(Clone)]
pub struct Cosigner {
    name: String,
    key: ed25519_dalek::SigningKey,
    id: u32,
    /// The time the next signature states; set by [`Cosigner::cosign`].
    timestamp: u64,
}

impl Cosigner {
    pub fn new(key: &SigningKey) -> Cosigner {
        let key_bytes = ed25519_dalek::SigningKey::from_bytes(key.seed());
        let public = cosigner_public(&key_bytes.verifying_key());
        Cosigner {
            name: key.name().to_string(),
            id: signed_note::key_id(key.name(), &public),
            key: key_bytes,
            timestamp: 0,
        }
    }

    /// The witness's verifier key: what `verify --witness` takes.
    pub fn vkey(&self) -> String {
        let public = cosigner_public(&self.key.verifying_key());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.id,
            base64::engine::general_purpose::STANDARD.encode(public)
        )
    }

    /// The note of `checkpoint` with this witness's cosignature for `timestamp` (seconds since
    /// the epoch) added after the signatures it has (replacing an older one of this key).
    pub fn cosign(
        &mut self,
        checkpoint: &Checkpoint,
        timestamp: u64,
    ) -> Result<String, CosignError> {
        let mut note = signed_note::Note::from_bytes(checkpoint.note.as_bytes())
            .map_err(|err| CosignError::Note(err.to_string()))?;
        self.timestamp = timestamp;
        note.add_sigs(&[&*self])
            .map_err(|err| CosignError::Signing(err.to_string()))?;
        String::from_utf8(note.to_bytes()).map_err(|err| CosignError::Note(err.to_string()))
    }
}

fn cosigner_public(key: &ed25519_dalek::VerifyingKey) -> Vec<u8> {
    let mut public = vec![COSIGNATURE_V1];
    public.extend_from_slice(key.as_bytes());
    public
}

impl signed_note::Signer for Cosigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        let signature = self.key.sign(&signed_message(self.timestamp, msg));
        let mut out = self.timestamp.to_be_bytes().to_vec();
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }
}

/// Checks cosignatures of one witness.
#[derive(Clone)]
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
    vkey: String,
}

impl CosignatureVerifier {
    /// Parses a cosigner verifier key (`name+id+base64(0x04 || key)`).
    pub fn new(vkey: &str) -> Result<CosignatureVerifier, CosignError> {
        let vkey = vkey.trim();
        let bad = || CosignError::BadVkey(vkey.to_string());
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(encoded)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let public = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| bad())?;
        if !signed_note::is_key_name_valid(name)
            || id.len() != 8
            || public.len() != 33
            || public[0] != COSIGNATURE_V1
        {
            return Err(bad());
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| bad())?;
        if id != signed_note::key_id(name, &public) {
            return Err(bad());
        }
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(public[1..].try_into().map_err(|_| bad())?)
                .map_err(|_| bad())?;
        Ok(CosignatureVerifier {
            name: name.to_string(),
            id,
            key,
            vkey: vkey.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    /// The witness's Ed25519 public key (one witness, however its vkey was written).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The time this witness's valid cosignature on `note` states, `None` when the note has
    /// none from this key (or one that does not check).
    pub fn cosigned_at(&self, note: &[u8]) -> Option<u64> {
        let parsed = signed_note::Note::from_bytes(note).ok()?;
        let list = signed_note::VerifierList::new(vec![Box::new(self.clone())]);
        let (verified, _) = parsed.verify(&list).ok()?;
        let signature = verified.first()?.signature();
        Some(u64::from_be_bytes(signature.get(..8)?.try_into().ok()?))
    }
}

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        if sig.len() != SIGNATURE_LEN {
            return false;
        }
        let timestamp = u64::from_be_bytes(sig[..8].try_into().expect("8 bytes"));
        if timestamp > i64::MAX as u64 {
            return false;
        }
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&sig[8..]) else {
            return false;
        };
        self.key
            .verify_strict(&signed_message(timestamp, msg), &signature)
            .is_ok()
    }
}

/// The witnesses among `witnesses` whose cosignature on `note` checks: (vkey, timestamp).
pub fn valid_cosignatures(note: &[u8], witnesses: &[CosignatureVerifier]) -> Vec<(String, u64)> {
    witnesses
        .iter()
        .filter_map(|witness| {
            witness
                .cosigned_at(note)
                .map(|at| (witness.vkey().to_string(), at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &std::path::Path, name: &str) -> SigningKey {
        SigningKey::load_or_create(&dir.join(name.replace('/', "_")), name)
            .expect("key")
            .0
    }

    #[test]
    fn a_cosignature_checks_with_its_witness_key_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = key(dir.path(), "example.org/log");
        let checkpoint = Checkpoint::sign(&log, "example.org/log", 5, &[3u8; 32]).expect("sign");
        let mut witness = Cosigner::new(&key(dir.path(), "witness.example/w1"));
        let other = Cosigner::new(&key(dir.path(), "witness.example/w2"));
        let cosigned = witness.cosign(&checkpoint, 1_679_315_147).expect("cosign");
        assert!(cosigned.starts_with(&checkpoint.note), "{cosigned}");
        assert!(
            cosigned.contains("\n\u{2014} witness.example/w1 "),
            "{cosigned}"
        );
        // The log's own signature still checks.
        Checkpoint::open(cosigned.as_bytes(), log.vkey()).expect("log signature");
        let verifier = CosignatureVerifier::new(&witness.vkey()).expect("vkey");
        assert_eq!(
            verifier.cosigned_at(cosigned.as_bytes()),
            Some(1_679_315_147)
        );
        let stranger = CosignatureVerifier::new(&other.vkey()).expect("vkey");
        assert_eq!(stranger.cosigned_at(cosigned.as_bytes()), None);
        // Another size under the same cosignature does not check.
        let forged = cosigned.replacen("\n5\n", "\n6\n", 1);
        assert_eq!(verifier.cosigned_at(forged.as_bytes()), None);
        // The checkpoint signing key is not a cosigner key (another type byte).
        assert!(CosignatureVerifier::new(log.vkey()).is_err());
        // Cosigning again replaces the line instead of adding one.
        let again = Checkpoint::parse_unverified(cosigned.as_bytes()).expect("parse");
        let twice = witness.cosign(&again, 1_679_315_200).expect("cosign");
        assert_eq!(twice.matches("witness.example/w1").count(), 1);
        assert_eq!(verifier.cosigned_at(twice.as_bytes()), Some(1_679_315_200));
    }

    #[test]
    fn the_signed_message_is_the_documented_one() {
        let message = signed_message(1_679_315_147, b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n");
        assert_eq!(
            String::from_utf8(message).expect("utf-8"),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }
}
