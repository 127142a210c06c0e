//! Offline commands: they read the chain directory and never write to it.

use crate::log_check::LogCheck;
use crate::Outcome;
use opdbus_blockchain::chain::block::parse_hash;
use opdbus_blockchain::chain::store;
use opdbus_blockchain::chain::verify::{self, verify_dir_each};
use opdbus_blockchain::footprint;
use opdbus_blockchain::tlog::cosign::valid_cosignatures;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `verify`'s options besides the chain directory.
pub struct VerifyArgs {
    pub expect_head: Option<String>,
    pub vectors: bool,
    pub tlog_dir: PathBuf,
    /// `--checkpoint FILE --vkey VKEY`.
    pub checkpoint: Option<(PathBuf, String)>,
    /// `--witness W_VKEY...`: cosigners the checkpoint needs `quorum` of (default all).
    pub witnesses: Vec<String>,
    pub quorum: Option<usize>,
    pub json: bool,
}

pub fn verify(dir: PathBuf, args: VerifyArgs) -> Outcome {
    let expected = args
        .expect_head
        .as_deref()
        .map(verify::parse_expected_head)
        .transpose()?;
    let witnesses = args
        .witnesses
        .iter()
        .map(|given| crate::transparency::witness_arg(given))
        .collect::<Result<Vec<_>, _>>()?;
    // The same witness given twice (as a key and as a file) counts once.
    let mut seen = std::collections::HashSet::new();
    let witnesses: Vec<_> = witnesses
        .into_iter()
        .filter(|w| seen.insert(w.public_key()))
        .collect();
    let quorum = args.quorum.unwrap_or(witnesses.len());
    if quorum > witnesses.len() || (quorum == 0 && !witnesses.is_empty()) {
        return Err(format!(
            "--quorum {quorum}: between 1 and the number of --witness keys ({})",
            witnesses.len()
        ));
    }
    let mut log = LogCheck::prepare(
        args.tlog_dir,
        args.checkpoint
            .as_ref()
            .map(|(path, vkey)| (path.as_path(), vkey.as_str())),
    )?;
    let mut progress = progress("verifying", &dir);
    let mut report = verify_dir_each(&dir, None, &mut progress, &mut |block| {
        log.push(&block.hash)
    })
    .map_err(|e| e.to_string())?;
    if let Some((hash, height)) = expected {
        verify::check_expected_head(&dir, &mut report, &hash, height);
    }
    let vectors = if args.vectors && report.ok() {
        Some(check_vectors(&dir)?)
    } else {
        None
    };
    let mut log = log.finish(&dir, &report)?;
    if let (Some((path, _)), false) = (&args.checkpoint, witnesses.is_empty()) {
        let note = crate::transparency::read_note(path)?;
        let cosigned = valid_cosignatures(&note, &witnesses);
        let line = format!(
            "checkpoint {}: cosigned by {} of the {} witnesses given (quorum {quorum}){}",
            path.display(),
            cosigned.len(),
            witnesses.len(),
            cosigned
                .iter()
                .map(|(vkey, at)| format!("; {} at {at}", vkey.split('+').next().unwrap_or("")))
                .collect::<String>()
        );
        if cosigned.len() < quorum {
            log.failures.push(line.clone());
        }
        log.json.insert(
            "witnesses".into(),
            serde_json::json!({
                "given": witnesses.len(),
                "quorum": quorum,
                "cosigned": cosigned
                    .iter()
                    .map(|(vkey, at)| serde_json::json!({ "vkey": vkey, "timestamp": at }))
                    .collect::<Vec<_>>(),
            }),
        );
        log.lines.push(line);
    }
    let ok = report.ok() && vectors.as_ref().is_none_or(|(ok, _)| *ok) && log.failures.is_empty();
    if args.json {
        let mut out = serde_json::Map::new();
        out.insert("ok".into(), ok.into());
        out.insert(
            "chain".into(),
            serde_json::json!({
                "intact": report.ok(),
                "blocks_checked": report.blocks_checked,
                "head_height": report.head.map(|(height, _)| height),
                "head_hash": report.head.map(|(_, hash)| hex::encode(hash)),
                "first_bad_height": report.first_bad.as_ref().map(|(height, _)| height),
                "summary": report.summary(),
            }),
        );
        if let Some((ok, line)) = &vectors {
            out.insert(
                "vectors".into(),
                serde_json::json!({ "ok": ok, "summary": line }),
            );
        }
        out.extend(log.json);
        out.insert("failures".into(), log.failures.clone().into());
        println!("{}", serde_json::Value::Object(out));
    } else {
        println!("{}", report.summary());
        if let Some((_, line)) = &vectors {
            println!("{line}");
        }
        for line in &log.lines {
            println!("{line}");
        }
    }
    // The chain's own summary says why it failed; a log check adds its reason on stderr.
    if let Some(first) = log.failures.first() {
        eprintln!("opdbus-chain: {first}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A progress callback for a scan of the chain in `dir`: a line on stderr at most every
/// second, starting with `doing`.
pub fn progress<'a>(doing: &'a str, dir: &'a Path) -> impl FnMut(u64) + 'a {
    let started = Instant::now();
    let mut last_print = started;
    move |checked: u64| {
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "{doing} {}: {checked} blocks checked ({:.0} s)",
                dir.display(),
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Recomputes the stored block vectors: whether all match, and the line saying what was found.
fn check_vectors(dir: &Path) -> Result<(bool, String), String> {
    let reader = store::open_read_only(dir).map_err(|e| e.to_string())?;
    let (records, bad) = opdbus_blockchain::vector::index::check_file(dir, &reader)?;
    Ok(match bad.first() {
        None => (
            true,
            format!("block vectors: {records} records match their blocks"),
        ),
        Some(first) => (
            false,
            format!(
                "block vectors: {} of {records} records do not match their blocks, the first at \
                 height {first}; they are derived data: delete {}/vectors while the daemon is stopped \
                 and it rebuilds them from the chain",
                bad.len(),
                dir.display()
            ),
        ),
    })
}

/// `get`: the block is printed as its JSON object; with `json`, a block that is not there is a
/// JSON object too (`ok` false), as the other commands' failures are.
pub fn get(dir: PathBuf, which: &str, pretty: bool, json: bool) -> Outcome {
    let reader = store::open_read_only(&dir).map_err(|e| e.to_string())?;
    let block = if let Ok(height) = which.parse::<u64>() {
        reader.block_at(height)
    } else if let Some(hash) = parse_hash(which) {
        reader.block_by_hash(&hash)
    } else {
        return Err(format!(
            "'{which}' is neither a height nor a block hash (64 hex digits)"
        ));
    }
    .map_err(|e| e.to_string())?;
    let Some(block) = block else {
        return Ok(crate::transparency::failed(
            json,
            &format!("no block {which} in {}", dir.display()),
        ));
    };
    let json = block.to_json();
    if !pretty {
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    // Data the writer accepted always obeys the format's rules; a block from an older writer
    // may not (nesting 10,000 deep, say): it is printed as stored rather than not at all.
    match footprint::check_data_json(&block.data) {
        Ok(()) => println!("{}", indent_json(&json)),
        Err(err) => {
            eprintln!(
                "opdbus-chain: block {}'s data breaks the format's rules ({err}); printed as stored",
                block.height
            );
            println!("{json}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// JSON laid out one member or item per line, indented by two spaces per level. Only the
/// whitespace between tokens changes: numbers, strings and the order of keys stay as stored,
/// so what is shown is what the hash covers (no float re-formatting, no re-sorting). Never
/// fails, whatever `json` holds; nesting depth costs indentation, not stack.
pub fn indent_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', 2 * depth));
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push(c);
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                if let Some(close) =
                    chars.next_if(|&next| matches!((c, next), ('{', '}') | ('[', ']')))
                {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_json_changes_only_whitespace_between_tokens() {
        let stored = r#"{"a" : [1.0e5, {}, [ ], "x,\"{[:"],"b":{"c":-0}}"#;
        let shown = indent_json(stored);
        assert_eq!(
            shown,
            "{\n  \"a\": [\n    1.0e5,\n    {},\n    [],\n    \"x,\\\"{[:\"\n  ],\n  \"b\": {\n    \"c\": -0\n  }\n}"
        );
        let strip = |t: &str| t.split_whitespace().collect::<String>();
        assert_eq!(strip(&shown), strip(stored));
        // Anything at all is laid out without failing.
        for odd in ["[[[[", "}}]]", "\"unterminated", "", r#"{"k":"\"#] {
            let _ = indent_json(odd);
        }
    }
}
