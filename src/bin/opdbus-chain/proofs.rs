//! `prove` and `consistency`: proofs served from the tiles, each checked before it is printed
//! (an inclusion proof against the root the chain's own blocks give, a consistency proof
//! against the roots two signed checkpoints state).

use crate::transparency::{self, failed};
use crate::Outcome;
use opdbus_blockchain::chain::block::Hash;
use opdbus_blockchain::chain::store;
use opdbus_blockchain::tlog::{self, CompactRange, TileReader};
use std::path::Path;
use std::process::ExitCode;

/// `prove HEIGHT [--size N]`.
pub fn prove(
    chain_dir: &Path,
    tlog_dir: &Path,
    height: u64,
    size: Option<u64>,
    json: bool,
) -> Outcome {
    let published = match transparency::published(tlog_dir)? {
        Some(Ok(published)) => published,
        Some(Err(reason)) => return Ok(failed(json, &reason)),
        None => return Ok(failed(json, &transparency::no_checkpoint(tlog_dir))),
    };
    let size = match size {
        None if height < published.size => published.size,
        None => {
            return Err(format!(
                "height {height} is not in the published checkpoint's tree of size {}: heights \
                 0 to {} can be proved",
                published.size,
                published.size.saturating_sub(1)
            ))
        }
        Some(size) if size > height && size <= published.size => size,
        Some(size) => {
            return Err(format!(
                "--size {size} is outside {}..={} (one more than the height to prove, up to the \
                 published checkpoint's size)",
                height + 1,
                published.size
            ))
        }
    };
    let reader = store::open_read_only(chain_dir).map_err(|err| err.to_string())?;
    let (head, _) = reader.head();
    if head + 1 < size {
        return Ok(failed(
            json,
            &format!(
            "the chain holds {} blocks; the tree of size {size} covers {size}: blocks were cut off",
            head + 1
        ),
        ));
    }
    let mut range = CompactRange::default();
    for h in 0..size {
        let hash = reader
            .hash_at(h)
            .ok_or_else(|| format!("block {h} vanished while reading"))?;
        range.push(&hash);
    }
    let root = range.root();
    if size == published.size && root != published.root {
        return Ok(failed(
            json,
            &format!(
            "the chain's first {size} blocks give the root {}, but {} says {}: run `opdbus-chain \
             verify --checkpoint` to find the block that differs",
            tlog::hex(&root),
            tlog_dir.join(transparency::CHECKPOINT_FILE).display(),
            tlog::hex(&published.root)
        ),
        ));
    }
    let block_hash = reader
        .hash_at(height)
        .ok_or_else(|| format!("block {height} vanished while reading"))?;
    let leaf = tlog::leaf_hash(&block_hash);
    let proof = match TileReader::new(tlog_dir).inclusion_proof(size, height) {
        Ok(proof) => proof,
        Err(err) => {
            return Ok(failed(
                json,
                &format!(
                "the tiles in {} cannot prove block {height} in the tree of size {size}: {err} \
                 (`opdbus-chain tlog rebuild` rewrites missing tiles)",
                tlog_dir.display()
            ),
            ))
        }
    };
    let checked = tlog_tiles::check_record(
        &proof.iter().map(|hash| tlog_tiles::Hash(*hash)).collect(),
        size,
        tlog_tiles::Hash(root),
        height,
        tlog_tiles::Hash(leaf),
    );
    if checked.is_err() {
        return Ok(failed(
            json,
            &format!(
                "the inclusion proof the tiles in {} give for block {height} does not lead to the \
             chain's root at size {size} ({}): the tiles differ from the chain (run `opdbus-chain \
             verify`)",
                tlog_dir.display(),
                tlog::hex(&root)
            ),
        ));
    }
    if json {
        let out = serde_json::json!({
            "ok": true,
            "height": height,
            "tree_size": size,
            "block_hash": tlog::hex(&block_hash),
            "leaf_hash": tlog::hex(&leaf),
            "root": tlog::hex(&root),
            "proof": hexes(&proof),
        });
        println!("{out}");
    } else {
        println!("height {height}");
        println!("tree size {size}");
        println!("block hash {}", tlog::hex(&block_hash));
        println!("leaf hash {}", tlog::hex(&leaf));
        println!("root {}", tlog::hex(&root));
        println!("proof {} hashes", proof.len());
        for hash in &proof {
            println!("{}", tlog::hex(hash));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `consistency OLD NEW --vkey VKEY`.
pub fn consistency(
    old_path: &Path,
    new_path: &Path,
    vkey: &str,
    tlog_dir: &Path,
    json: bool,
) -> Outcome {
    let vkey = transparency::vkey_arg(vkey)?;
    let old_note = transparency::read_note(old_path)?;
    let new_note = transparency::read_note(new_path)?;
    let old = match transparency::open_signed(&old_note, &vkey, old_path) {
        Ok(old) => old,
        Err(reason) => return Ok(failed(json, &reason)),
    };
    let new = match transparency::open_signed(&new_note, &vkey, new_path) {
        Ok(new) => new,
        Err(reason) => return Ok(failed(json, &reason)),
    };
    if old.origin != new.origin {
        return Ok(failed(
            json,
            &format!(
                "the checkpoints are of two logs: {} is of {:?}, {} of {:?}",
                old_path.display(),
                old.origin,
                new_path.display(),
                new.origin
            ),
        ));
    }
    if old.size > new.size {
        return Ok(failed(
            json,
            &format!(
                "{} (size {}) is larger than {} (size {}): give the older checkpoint first",
                old_path.display(),
                old.size,
                new_path.display(),
                new.size
            ),
        ));
    }
    // The empty tree is a prefix of every tree: there is nothing to prove.
    let proof = if old.size == 0 {
        Vec::new()
    } else {
        let reader = TileReader::new(tlog_dir);
        let proof = match reader.consistency_proof(old.size, new.size) {
            Ok(proof) => proof,
            Err(err) => {
                return Ok(failed(
                    json,
                    &format!(
                        "the tiles in {} cannot prove size {} consistent with size {}: {err}",
                        tlog_dir.display(),
                        old.size,
                        new.size
                    ),
                ))
            }
        };
        let checked = tlog_tiles::check_tree(
            &proof.iter().map(|hash| tlog_tiles::Hash(*hash)).collect(),
            new.size,
            tlog_tiles::Hash(new.root),
            old.size,
            tlog_tiles::Hash(old.root),
        );
        if checked.is_err() {
            return Ok(failed(
                json,
                &inconsistent(&reader, tlog_dir, (old_path, &old), (new_path, &new)),
            ));
        }
        proof
    };
    if json {
        let out = serde_json::json!({
            "ok": true,
            "consistent": true,
            "origin": old.origin,
            "old": { "size": old.size, "root": tlog::hex(&old.root) },
            "new": { "size": new.size, "root": tlog::hex(&new.root) },
            "proof": hexes(&proof),
        });
        println!("{out}");
    } else {
        println!(
            "consistent: {} (size {}) is a prefix of {} (size {}) in the log {}; proof of {} hashes \
             from the tiles in {}",
            old_path.display(),
            old.size,
            new_path.display(),
            new.size,
            old.origin,
            proof.len(),
            tlog_dir.display()
        );
        for hash in &proof {
            println!("{}", tlog::hex(hash));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Why a consistency proof from the tiles failed: which checkpoint the tiles do not agree with.
fn inconsistent(
    reader: &TileReader,
    tlog_dir: &Path,
    (old_path, old): (&Path, &tlog::Checkpoint),
    (new_path, new): (&Path, &tlog::Checkpoint),
) -> String {
    let agrees = |size, root: &Hash| reader.root(size).is_ok_and(|found| &found == root);
    let (old_ok, new_ok) = (agrees(old.size, &old.root), agrees(new.size, &new.root));
    let which = match (old_ok, new_ok) {
        (true, false) => format!(
            "the tiles in {} hold the tree of {} but not that of {}",
            tlog_dir.display(),
            old_path.display(),
            new_path.display()
        ),
        (false, true) => format!(
            "the tiles in {} hold the tree of {} but not that of {}",
            tlog_dir.display(),
            new_path.display(),
            old_path.display()
        ),
        (false, false) => format!(
            "the tiles in {} hold neither checkpoint's tree",
            tlog_dir.display()
        ),
        (true, true) => format!(
            "the tiles in {} give both roots but not a proof between them: a tile is damaged",
            tlog_dir.display()
        ),
    };
    format!(
        "{} (size {}) is not a prefix of {} (size {}): the consistency proof does not check \
         against both roots; {which}",
        old_path.display(),
        old.size,
        new_path.display(),
        new.size
    )
}

fn hexes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(tlog::hex).collect()
}
