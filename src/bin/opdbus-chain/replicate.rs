//! `replicate`: one round of a replica, from the command line.

use crate::transparency::{failed, vkey_arg};
use crate::Outcome;
use opdbus_blockchain::replica::http::HttpSource;
use opdbus_blockchain::replica::ssh::{SshSource, NOT_FOUND};
use opdbus_blockchain::replica::{Replica, ReplicaError, Source, Witness};
use opdbus_blockchain::tlog::cosign::Cosigner;
use opdbus_blockchain::tlog::SigningKey;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub struct ReplicateArgs<'a> {
    pub source: &'a str,
    pub tlog: Option<&'a str>,
    pub to: &'a Path,
    pub vkey: &'a str,
    pub witness_key: &'a Path,
    pub witness_name: Option<&'a str>,
    pub ssh_command: &'a str,
    pub remote_program: &'a str,
    /// `--follow`: the time between rounds.
    pub follow: Option<std::time::Duration>,
    pub json: bool,
}

pub fn replicate(args: ReplicateArgs) -> Outcome {
    let vkey = vkey_arg(args.vkey)?;
    let source: Box<dyn Source> = if args.source.starts_with("ssh://") {
        if args.tlog.is_some() {
            return Err(
                "--tlog-url is for http(s) sources: over ssh the source's export finds its \
                        transparency log"
                    .into(),
            );
        }
        Box::new(
            SshSource::new(args.source, args.ssh_command, args.remote_program)
                .map_err(|err| err.to_string())?,
        )
    } else {
        Box::new(HttpSource::new(args.source, args.tlog).map_err(|err| err.to_string())?)
    };
    let name = match args.witness_name {
        Some(name) => name.to_string(),
        None => format!(
            "{}/opdbus-witness",
            opdbus_blockchain::transparency::host_name()
        ),
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
    if let Some(interval) = args.follow {
        return follow(
            &mut replica,
            source.as_ref(),
            interval,
            &args,
            &witness_vkey,
        );
    }
    match replica.round(source.as_ref()) {
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

pub struct ExportArgs {
    pub what: Vec<String>,
    pub offset: u64,
    pub from_ssh: bool,
    pub chain_dir: PathBuf,
    pub tlog_dir: PathBuf,
}

/// `export`: one published file of the chain on stdout, after a `+` (see its --help).
pub fn export(args: ExportArgs) -> Outcome {
    let (what, offset) = if args.from_ssh {
        let request = std::env::var("SSH_ORIGINAL_COMMAND")
            .map_err(|_| "--from-ssh: SSH_ORIGINAL_COMMAND is not set (not run by sshd)")?;
        from_ssh(&request, &args.chain_dir)?
    } else {
        (args.what, args.offset)
    };
    let path = match what.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["checkpoint"] => args.tlog_dir.join("checkpoint"),
        ["segment", first] => {
            let first: u64 = first
                .parse()
                .map_err(|_| format!("segment {first:?}: not a height"))?;
            args.chain_dir
                .join(opdbus_blockchain::chain::segment::file_name(first))
        }
        _ => return Err("export what? `checkpoint`, or `segment FIRST`".into()),
    };
    let mut file = match opdbus_blockchain::files::open_read(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ExitCode::from(NOT_FOUND as u8))
        }
        Err(err) => return Err(format!("{}: {err}", path.display())),
    };
    file.seek(std::io::SeekFrom::Start(offset))
        .map_err(|err| format!("{}: {err}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let sent = out
        .write_all(b"+")
        .and_then(|()| std::io::copy(&mut file, &mut out).map(|_| ()))
        .and_then(|()| out.flush());
    match sent {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The replica had what it needed and hung up.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(err) => Err(format!("{}: {err}", path.display())),
    }
}

/// The request in SSH_ORIGINAL_COMMAND: only an export of `chain_dir` (what `replicate`
/// sends: `PROGRAM export checkpoint|segment FIRST [--offset N] --chain-dir DIR`).
fn from_ssh(request: &str, chain_dir: &Path) -> Result<(Vec<String>, u64), String> {
    let refused = || format!("--from-ssh: refusing {request:?}: only an export of this chain");
    let words = shlex::split(request).ok_or_else(refused)?;
    let mut words = words.into_iter().skip_while(|w| w != "export").skip(1);
    let (mut what, mut offset) = (Vec::new(), 0);
    while let Some(word) = words.next() {
        match word.as_str() {
            "--offset" => {
                offset = words
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(refused)?
            }
            "--chain-dir" => {
                if words.next().map(PathBuf::from).as_deref() != Some(chain_dir) {
                    return Err(refused());
                }
            }
            "checkpoint" | "segment" if what.is_empty() => what.push(word),
            _ if what.first().is_some_and(|w| w == "segment") && what.len() == 1 => what.push(word),
            _ => return Err(refused()),
        }
    }
    Ok((what, offset))
}

/// `--follow`: rounds until the source diverges; a line for each round that did something.
fn follow(
    replica: &mut Replica,
    source: &dyn Source,
    interval: std::time::Duration,
    args: &ReplicateArgs,
    witness_vkey: &str,
) -> Outcome {
    let mut failing = false;
    let ended = replica.follow(
        source,
        interval,
        |outcome| {
            match outcome {
                Ok(round) if round.copied > 0 || failing => {
                    failing = false;
                    let checkpoint = &round.checkpoint;
                    if args.json {
                        let line = serde_json::json!({
                            "ok": true,
                            "size": checkpoint.size,
                            "root": hex::encode(checkpoint.root),
                            "copied": round.copied,
                            "witness_vkey": witness_vkey,
                        });
                        println!("{line}");
                    } else {
                        println!(
                            "verified up to tree size {} (root {}): {} block(s) copied",
                            checkpoint.size,
                            hex::encode(checkpoint.root),
                            round.copied
                        );
                    }
                }
                Ok(_) => {}
                Err(ReplicaError::Source(err)) => {
                    if !failing {
                        eprintln!("opdbus-chain: cannot read the source, retrying: {err}");
                    }
                    failing = true;
                }
                Err(_) => {}
            }
            true
        },
        |pause| {
            std::thread::sleep(pause);
            true
        },
    );
    match ended {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err @ ReplicaError::Local(_)) => Err(err.to_string()),
        Err(err) => {
            if args.json {
                let mut line = serde_json::json!({ "ok": false, "failure": err.to_string() });
                if let ReplicaError::Diverged { size, .. } = &err {
                    line["diverged_at"] = (*size).into();
                }
                println!("{line}");
            }
            eprintln!("opdbus-chain: {}: {err}", source.describe());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `witnesses`: who holds which tree of this log.
pub fn witnesses(
    replicas: &[String],
    vkey: &str,
    witnesses: &[String],
    tlog_dir: &Path,
    json: bool,
) -> Outcome {
    let vkey = vkey_arg(vkey)?;
    let witnesses = witnesses
        .iter()
        .map(|given| crate::transparency::witness_arg(given))
        .collect::<Result<Vec<_>, _>>()?;
    let tiles = opdbus_blockchain::tlog::TileReader::new(tlog_dir);
    let http = opdbus_blockchain::replica::http::Http::default();
    let (mut rows, mut split, mut unread) = (Vec::new(), false, 0);
    for replica in replicas {
        let note = if replica.starts_with("http://") || replica.starts_with("https://") {
            http.note(replica).map_err(|err| err.to_string())
        } else {
            crate::transparency::read_note(Path::new(replica))
        };
        let row = note.and_then(|note| {
            let checkpoint = crate::transparency::open_signed(&note, &vkey, Path::new(replica))?;
            // This log's tree at that size: beyond its published checkpoint, the replica is
            // ahead of the log (which only a rewrite or truncation here explains); a tile that
            // cannot be read is this command's problem, not the replica's (exit 2).
            let published = crate::transparency::published(tlog_dir)?
                .transpose()?
                .map_or(0, |c| c.size);
            let ours = if checkpoint.size > published {
                Err(format!(
                    "size {}: beyond this log's published checkpoint ({published}): this log \
                     was cut or rolled back",
                    checkpoint.size
                ))
            } else {
                Ok(tiles
                    .root(checkpoint.size)
                    .map_err(|err| format!("cannot check against this log's tiles: {err}"))?)
            };
            let consistent = ours.as_ref().is_ok_and(|root| *root == checkpoint.root);
            let cosigned: Vec<serde_json::Value> =
                opdbus_blockchain::tlog::cosign::valid_cosignatures(&note, &witnesses)
                    .into_iter()
                    .map(|(vkey, at)| serde_json::json!({ "vkey": vkey, "timestamp": at }))
                    .collect();
            let others = other_signers(&note, &vkey, &witnesses);
            Ok(serde_json::json!({
                "source": replica,
                "size": checkpoint.size,
                "root": hex::encode(checkpoint.root),
                "consistent": consistent,
                "why": ours.err(),
                "cosigned": cosigned,
                "unchecked_signers": others,
            }))
        });
        match row {
            Ok(row) => {
                split |= row["consistent"] == false;
                rows.push(row);
            }
            Err(error) => {
                unread += 1;
                rows.push(serde_json::json!({ "source": replica, "error": error }));
            }
        }
    }
    if json {
        let out = serde_json::json!({ "ok": !split && unread < replicas.len(), "replicas": rows });
        println!("{out}");
    } else {
        for row in &rows {
            if let Some(error) = row["error"].as_str() {
                println!(
                    "{}: cannot read: {error}",
                    row["source"].as_str().unwrap_or("")
                );
                continue;
            }
            let cosigned: Vec<String> = row["cosigned"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let name = c["vkey"]
                        .as_str()
                        .unwrap_or("")
                        .split('+')
                        .next()
                        .unwrap_or("");
                    format!("{name} at {}", c["timestamp"])
                })
                .collect();
            println!(
                "{}: size {} root {} {}; cosigned by {}{}",
                row["source"].as_str().unwrap_or(""),
                row["size"],
                &row["root"].as_str().unwrap_or("")
                    [..16.min(row["root"].as_str().unwrap_or("").len())],
                if row["consistent"] == true {
                    "consistent with this log".to_string()
                } else {
                    format!(
                        "NOT consistent with this log ({})",
                        row["why"]
                            .as_str()
                            .unwrap_or("another root at that size: a split view")
                    )
                },
                if cosigned.is_empty() {
                    "no witness given".to_string()
                } else {
                    cosigned.join(", ")
                },
                match row["unchecked_signers"].as_array() {
                    Some(names) if !names.is_empty() => format!(
                        " (unchecked: {})",
                        names
                            .iter()
                            .filter_map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => String::new(),
                }
            );
        }
    }
    if split {
        eprintln!("opdbus-chain: a replica holds a tree this log does not give: a split view");
        return Ok(ExitCode::FAILURE);
    }
    if unread == replicas.len() {
        return Err("no replica could be read".into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Names of the signature lines on `note` that are neither the log's nor a given witness's.
fn other_signers(
    note: &[u8],
    vkey: &str,
    witnesses: &[opdbus_blockchain::tlog::cosign::CosignatureVerifier],
) -> Vec<String> {
    let Ok(parsed) = signed_note::Note::from_bytes(note) else {
        return Vec::new();
    };
    let mut known: Vec<Box<dyn signed_note::Verifier>> = Vec::new();
    if let Ok(log) = signed_note::StandardVerifier::new(vkey) {
        known.push(Box::new(log));
    }
    for witness in witnesses {
        known.push(Box::new(witness.clone()));
    }
    match parsed.verify(&signed_note::VerifierList::new(known)) {
        Ok((_, unverified)) => unverified.iter().map(|s| s.name().to_string()).collect(),
        Err(_) => Vec::new(),
    }
}
