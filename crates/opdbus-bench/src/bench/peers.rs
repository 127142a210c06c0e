//! The bench's peers, on the same disk and with the same footprints and hash as our chain:
//! SQLite (WAL, `synchronous=FULL`, one transaction per footprint, each row holding the previous
//! row's hash) and one JSON file per block with `fsync` (the original op-dbus layout, made
//! durable: file and directory are synced). Every writer is a thread awaiting its own commit.

use super::measure::{footprint_data, Sample};
use opdbus_blockchain::chain::block::{Block, Caller, Hash, ZERO_HASH};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Creates the SQLite peer's database in `dir`.
pub fn sqlite_create(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("chain.sqlite");
    let db = sqlite_open(&path)?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS blocks (
            height INTEGER PRIMARY KEY,
            timestamp_ns INTEGER NOT NULL,
            prev_hash BLOB NOT NULL,
            plugin TEXT NOT NULL,
            operation TEXT NOT NULL,
            data TEXT NOT NULL,
            hash BLOB NOT NULL UNIQUE
        );",
    )
    .map_err(|e| format!("sqlite: {e}"))?;
    Ok(path)
}

fn sqlite_open(path: &Path) -> Result<rusqlite::Connection, String> {
    let db = rusqlite::Connection::open(path).map_err(|e| format!("sqlite: {e}"))?;
    db.busy_timeout(Duration::from_secs(60))
        .map_err(|e| format!("sqlite: {e}"))?;
    db.pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| db.pragma_update(None, "synchronous", "FULL"))
        .map_err(|e| format!("sqlite: {e}"))?;
    Ok(db)
}

/// `writers` threads, each with its own connection, appending for `duration`.
pub fn sqlite_writers(path: &Path, writers: usize, duration: Duration) -> Result<Sample, String> {
    let start = Instant::now();
    let deadline = start + duration;
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let path = path.to_path_buf();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut db = sqlite_open(&path)?;
                let caller = Caller::this_process();
                let mut latencies = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    sqlite_append(&mut db, &caller, n).map_err(|e| format!("sqlite: {e}"))?;
                    latencies.push(t0.elapsed());
                    n += 1;
                }
                Ok(latencies)
            })
        })
        .collect();
    collect(threads, start)
}

fn sqlite_append(db: &mut rusqlite::Connection, caller: &Caller, n: u64) -> rusqlite::Result<()> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let head: Option<(u64, Vec<u8>)> = tx
        .query_row(
            "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let (height, prev_hash) = match head {
        Some((height, hash)) => (height + 1, hash.try_into().unwrap_or(ZERO_HASH)),
        None => (1, ZERO_HASH),
    };
    let block = new_block(height, prev_hash, caller, n);
    tx.execute(
        "INSERT INTO blocks (height, timestamp_ns, prev_hash, plugin, operation, data, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            block.height,
            block.timestamp_ns,
            &block.prev_hash[..],
            block.plugin,
            block.operation,
            block.data,
            &block.hash[..],
        ],
    )?;
    tx.commit()
}

fn new_block(height: u64, prev_hash: Hash, caller: &Caller, n: u64) -> Block {
    let timestamp_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Block::new(
        height,
        timestamp_ns,
        prev_hash,
        caller.clone(),
        "network".into(),
        "create".into(),
        footprint_data(n),
    )
}

/// `writers` threads writing one JSON file per block, each file and the directory synced
/// before the write counts. The head (height, hash) is taken under a lock, so the files form a
/// chain; the syncs run in parallel.
pub fn file_per_block_writers(
    dir: &Path,
    writers: usize,
    duration: Duration,
) -> Result<Sample, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let head = Arc::new(parking_lot::Mutex::new(head_of_files(dir)));
    let start = Instant::now();
    let deadline = start + duration;
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let dir = dir.to_path_buf();
            let head = head.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let caller = Caller::this_process();
                let directory = std::fs::File::open(&dir)
                    .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
                let mut latencies = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let block = {
                        let mut head = head.lock();
                        let block = new_block(head.0 + 1, head.1, &caller, n);
                        *head = (block.height, block.hash);
                        block
                    };
                    let path = dir.join(format!("{:012}-{}.json", block.height, block.hash_hex()));
                    let json: serde_json::Value = serde_json::from_str(&block.to_json())
                        .map_err(|e| format!("block JSON: {e}"))?;
                    let text =
                        serde_json::to_vec_pretty(&json).map_err(|e| format!("block JSON: {e}"))?;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .and_then(|mut f| {
                            f.write_all(&text)?;
                            f.sync_all()
                        })
                        .and_then(|()| directory.sync_all())
                        .map_err(|e| format!("writing {}: {e}", path.display()))?;
                    latencies.push(t0.elapsed());
                    n += 1;
                }
                Ok(latencies)
            })
        })
        .collect();
    collect(threads, start)
}

/// Continues a chain of files left by an earlier round: the newest file's height and hash.
fn head_of_files(dir: &Path) -> (u64, Hash) {
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .max();
    newest
        .and_then(|name| {
            let (height, rest) = name.split_once('-')?;
            let hash = opdbus_blockchain::chain::block::parse_hash(rest.strip_suffix(".json")?)?;
            Some((height.parse().ok()?, hash))
        })
        .unwrap_or((0, ZERO_HASH))
}

type Writer = std::thread::JoinHandle<Result<Vec<Duration>, String>>;

fn collect(threads: Vec<Writer>, start: Instant) -> Result<Sample, String> {
    let mut sample = Sample::default();
    for thread in threads {
        let latencies = thread
            .join()
            .map_err(|_| "a peer writer thread panicked".to_string())??;
        sample.ops += latencies.len() as u64;
        sample.latencies.extend(latencies);
    }
    sample.elapsed = start.elapsed();
    Ok(sample)
}
