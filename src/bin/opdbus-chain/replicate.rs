//! `replicate`: one round of a replica, from the command line.

use crate::transparency::{failed, vkey_arg};
use crate::Outcome;
use opdbus_blockchain::replica::http::HttpSource;
use opdbus_blockchain::replica::{Replica, ReplicaError, Source, Witness};
use opdbus_blockchain::tlog::cosign::Cosigner;
use opdbus_blockchain::tlog::SigningKey;
use std::path::Path;
use std::process::ExitCode;

pub struct ReplicateArgs<'a> {
    pub source: &'a str,
    pub tlog: Option<&'a str>,
    pub to: &'a Path,
    pub vkey: &'a str,
    pub witness_key: &'a Path,
    pub witness_name: Option<&'a str>,
    pub json: bool,
}

pub fn replicate(args: ReplicateArgs) -> Outcome {
    let vkey = vkey_arg(args.vkey)?;
    let source = HttpSource::new(args.source, args.tlog).map_err(|err| err.to_string())?;
    let name = match args.witness_name {
        Some(name) => name.to_string(),
        None => format!("{}/opdbus-witness", host_name()),
    };
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if absolute(args.witness_key).starts_with(absolute(args.to)) {
        return Err(format!(
            "the witness key {} is inside {}: it would be published with the copy; keep it \
             elsewhere (--witness-key)",
            args.witness_key.display(),
            args.to.display()
        ));
    }
    let (key, made) = SigningKey::load_or_create(args.witness_key, &name)
        .map_err(|err| format!("the witness key: {err}"))?;
    let cosigner = Cosigner::new(&key);
    let witness_vkey = cosigner.vkey();
    if made {
        eprintln!(
            "opdbus-chain: made the witness key {}; its verifier key: {witness_vkey}",
            args.witness_key.display()
        );
    }
    let witness = Witness::open(cosigner, args.witness_key).map_err(|err| err.to_string())?;
    let mut replica =
        Replica::open(args.to, &vkey, Some(witness)).map_err(|err| err.to_string())?;
    match replica.round(&source) {
        Ok(round) => {
            let checkpoint = &round.checkpoint;
            if args.json {
                let out = serde_json::json!({
                    "ok": true,
                    "source": source.describe(),
                    "dir": args.to,
                    "size": checkpoint.size,
                    "root": hex::encode(checkpoint.root),
                    "origin": checkpoint.origin,
                    "copied": round.copied,
                    "witness_vkey": witness_vkey,
                    "note": checkpoint.note,
                });
                println!("{out}");
            } else {
                println!(
                    "{} verified up to tree size {} (root {}): {} block(s) copied from {}; \
                     cosigned by {}",
                    args.to.display(),
                    checkpoint.size,
                    hex::encode(checkpoint.root),
                    round.copied,
                    source.describe(),
                    key.name()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ (ReplicaError::Diverged { .. } | ReplicaError::BadSource(_))) => {
            if args.json {
                if let ReplicaError::Diverged { size, .. } = &err {
                    let out = serde_json::json!({
                        "ok": false,
                        "source": source.describe(),
                        "diverged_at": size,
                        "failure": err.to_string(),
                    });
                    println!("{out}");
                    eprintln!("opdbus-chain: {err}");
                    return Ok(ExitCode::FAILURE);
                }
            }
            Ok(failed(args.json, &format!("{}: {err}", source.describe())))
        }
        Err(err) => Err(err.to_string()),
    }
}

fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || ".-_".contains(*c))
        .collect();
    if host.is_empty() {
        "localhost".into()
    } else {
        host
    }
}
