//! What the transparency commands share (where the log and its checkpoint are, verifier keys,
//! how a failed check is reported), and the two that only read a file: `key show` and
//! `checkpoint`.

use crate::Outcome;
use opdbus_blockchain::files;
use opdbus_blockchain::tlog::{self, Checkpoint, CheckpointError, KeyError, SigningKey};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The file in the tlog directory holding the newest published checkpoint.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// A check that failed: its one-line reason goes to stderr (and, with --json, the one JSON
/// object on stdout says `"ok": false` with the same reason); the exit status is 1.
pub fn failed(json: bool, reason: &str) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "ok": false, "failure": reason }));
    }
    eprintln!("opdbus-chain: {reason}");
    ExitCode::FAILURE
}

/// The tlog directory: `--tlog-dir` / OPDBUS_TLOG_DIR, or `tlog` in the chain directory when
/// unset or empty (as the daemon resolves it).
pub fn tlog_dir(given: Option<&Path>, chain_dir: &Path) -> PathBuf {
    match given {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => chain_dir.join("tlog"),
    }
}

/// A verifier key given on the command line: the vkey itself (`name+hash+base64`), or a file
/// holding it on its first line. Checked here so that a typo is a usage error (exit 2).
pub fn vkey_arg(given: &str) -> Result<String, String> {
    let path = Path::new(given);
    let vkey = if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("reading the verifier key {given}: {err}"))?;
        text.lines().next().unwrap_or_default().trim().to_string()
    } else {
        given.trim().to_string()
    };
    signed_note::StandardVerifier::new(&vkey).map_err(|err| {
        format!(
            "--vkey {given}: not a verifier key ({err}); `opdbus-chain key show` prints the log's"
        )
    })?;
    Ok(vkey)
}

/// A witness's verifier key given on the command line (the key or a file holding it).
pub fn witness_arg(given: &str) -> Result<tlog::cosign::CosignatureVerifier, String> {
    let path = Path::new(given);
    let vkey = if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("reading the witness key {given}: {err}"))?;
        text.lines().next().unwrap_or_default().trim().to_string()
    } else {
        given.trim().to_string()
    };
    tlog::cosign::CosignatureVerifier::new(&vkey).map_err(|err| {
        format!("--witness {given}: {err}; `opdbus-chain key show --witness` prints a replica's")
    })
}

/// A checkpoint file's bytes; a missing or unreadable file is an error (exit 2).
pub fn read_note(path: &Path) -> Result<Vec<u8>, String> {
    files::read(path).map_err(|err| format!("reading the checkpoint {}: {err}", path.display()))
}

/// Opens a checkpoint note with `vkey`: `Err` is the failed check (exit 1), naming `path`.
pub fn open_signed(note: &[u8], vkey: &str, path: &Path) -> Result<Checkpoint, String> {
    Checkpoint::open(note, vkey).map_err(|err| match err {
        CheckpointError::Unsigned(_) => format!(
            "checkpoint {}: its signature does not check with the verifier key {vkey}",
            path.display()
        ),
        other => format!("checkpoint {}: {other}", path.display()),
    })
}

/// The newest checkpoint the daemon published in `tlog_dir`, unverified (its signature is the
/// reader's business): `None` when there is none yet, `Some(Err)` (a failed check) when the
/// file is not a checkpoint, `Err` (exit 2) when it cannot be read.
pub fn published(tlog_dir: &Path) -> Result<Option<Result<Checkpoint, String>>, String> {
    let path = tlog_dir.join(CHECKPOINT_FILE);
    match files::read(&path) {
        Ok(note) => Ok(Some(
            Checkpoint::parse_unverified(&note).map_err(|err| format!("{}: {err}", path.display())),
        )),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("reading {}: {err}", path.display())),
    }
}

/// Why there is no published checkpoint, for commands that need one.
pub fn no_checkpoint(tlog_dir: &Path) -> String {
    format!(
        "no checkpoint at {}: opdbus-blockchaind publishes one after it starts (is --tlog-dir right?)",
        tlog_dir.join(CHECKPOINT_FILE).display()
    )
}

/// `key show`: the verifier key of the signing key at `path`.
pub fn key_show(path: &Path, witness: bool, json: bool) -> Outcome {
    let key = match SigningKey::load(path) {
        Ok(key) => key,
        Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(failed(
                json,
                &format!(
                    "no signing key at {}: opdbus-blockchaind makes one at its first start",
                    path.display()
                ),
            ))
        }
        // A key others can read, or one that is not a key: the file fails a check.
        Err(err @ (KeyError::Exposed { .. } | KeyError::Format { .. })) => {
            return Ok(failed(json, &err.to_string()))
        }
        Err(err) => return Err(err.to_string()),
    };
    let vkey = if witness {
        tlog::cosign::Cosigner::new(&key).vkey()
    } else {
        key.vkey().to_string()
    };
    if json {
        let out = serde_json::json!({
            "ok": true,
            "key": path,
            "name": key.name(),
            "vkey": vkey,
        });
        println!("{out}");
    } else {
        println!("{vkey}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `checkpoint`: the newest published checkpoint, printed or copied to `out`, its signature
/// checked when `vkey` is given.
pub fn checkpoint(tlog_dir: &Path, out: Option<&Path>, vkey: Option<&str>, json: bool) -> Outcome {
    let vkey = vkey.map(vkey_arg).transpose()?;
    let path = tlog_dir.join(CHECKPOINT_FILE);
    let note = match files::read(&path) {
        Ok(note) => note,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok(failed(json, &no_checkpoint(tlog_dir)))
        }
        Err(err) => return Err(format!("reading {}: {err}", path.display())),
    };
    let opened = match &vkey {
        Some(vkey) => open_signed(&note, vkey, &path),
        None => {
            Checkpoint::parse_unverified(&note).map_err(|err| format!("{}: {err}", path.display()))
        }
    };
    let checkpoint = match opened {
        Ok(checkpoint) => checkpoint,
        Err(reason) => return Ok(failed(json, &reason)),
    };
    if let Some(out) = out {
        // Public data: readable by all, replaced whole so a reader never sees half of it.
        files::write_atomic(out, &note, 0o644)
            .map_err(|err| format!("writing {}: {err}", out.display()))?;
    }
    if json {
        let mut object = checkpoint.to_json();
        object["ok"] = true.into();
        object["signature_checked"] = vkey.is_some().into();
        if let Some(out) = out {
            object["out"] = out.display().to_string().into();
        }
        println!("{object}");
    } else if let Some(out) = out {
        println!(
            "checkpoint of {} (size {}, root {}) written to {}{}",
            checkpoint.origin,
            checkpoint.size,
            tlog::hex(&checkpoint.root),
            out.display(),
            if vkey.is_some() {
                "; signature checked"
            } else {
                ""
            }
        );
    } else {
        print!("{}", checkpoint.note);
    }
    Ok(ExitCode::SUCCESS)
}
