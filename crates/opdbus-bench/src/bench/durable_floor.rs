//! The durable floor: the least a durable AddFootprint over D-Bus can cost on this bus and disk.
//!
//! A zbus server in its own process, with the daemon's kind of tokio runtime, answering
//! `AddFootprint(s plugin, s operation, s data_json) → (t height, s hash)` on the daemon's object
//! path and interface (only the destination differs, so one client can call either). Calls go
//! through a channel to one std writer thread, which takes everything queued, builds each block
//! as the daemon does (the library's block encoding, SHA-256 over previous hash, height, caller,
//! plugin, operation and data), appends the whole batch to one file with one `pwrite` and makes
//! it durable with one `fdatasync`, then answers every caller of the batch.
//!
//! Deliberately nothing else: no JSON check, no caller lookup, no signal, no cache, no index.
//! A failed write or sync is not retried: every waiting and later call is refused.

use opdbus_blockchain::chain::block::{Block, Caller, EncodedBlock, Hash, ZERO_HASH};
use opdbus_blockchain::chain::segment::encode_record_of;
use opdbus_blockchain::dbus::OBJECT_PATH;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The bus name the durable floor owns (object and interface are the daemon's).
pub const DURABLE_FLOOR_NAME: &str = "org.opdbus.BenchDurableFloor";

/// The file it appends to, in the directory it is given.
pub const DURABLE_FLOOR_FILE: &str = "durable-floor.chain";

/// Names of its threads, as `/proc/PID/task/*/comm` shows them.
pub const WRITER_THREAD: &str = "floor-writer";
const WORKER_THREAD: &str = "floor-worker";

type Reply = Result<(u64, String), String>;

struct Request {
    plugin: String,
    operation: String,
    data: String,
    reply: oneshot::Sender<Reply>,
}

struct DurableFloor {
    queue: mpsc::Sender<Request>,
}

#[zbus::interface(name = "org.opdbus.Blockchain")]
impl DurableFloor {
    /// Appends a block; returns once it is durable.
    #[zbus(out_args("height", "hash"))]
    async fn add_footprint(
        &self,
        plugin: String,
        operation: String,
        data_json: String,
    ) -> zbus::fdo::Result<(u64, String)> {
        let stopped = || zbus::fdo::Error::Failed("the durable floor's writer stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request {
                plugin,
                operation,
                data: data_json,
                reply,
            })
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(zbus::fdo::Error::Failed)
    }
}

/// Serves the durable floor on the bus at `address`, appending to `dir`/[`DURABLE_FLOOR_FILE`]
/// (made anew), until it is killed.
pub fn serve(address: &str, dir: &Path) -> crate::Outcome {
    // Go when the bench goes, even if it is killed before it can stop us.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(DURABLE_FLOOR_FILE);
    let file = File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let (queue, requests) = mpsc::channel();
    let writer = std::thread::Builder::new()
        .name(WRITER_THREAD.into())
        .spawn(move || write_batches(&file, &requests))
        .map_err(|e| format!("cannot start the writer thread: {e}"))?;
    // As the daemon's runtime (src/bin/opdbus-blockchaind.rs): multi-threaded, one worker per
    // CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(WORKER_THREAD)
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let served: Result<(), String> = runtime.block_on(async {
        let _connection = zbus::connection::Builder::address(address)
            .and_then(|b| b.serve_at(OBJECT_PATH, DurableFloor { queue }))
            .and_then(|b| b.name(DURABLE_FLOOR_NAME))
            .map_err(|e| format!("bad durable floor setup: {e}"))?
            .build()
            .await
            .map_err(|e| {
                format!("the durable floor cannot own {DURABLE_FLOOR_NAME} on {address}: {e}")
            })?;
        eprintln!(
            "durable floor: serving {DURABLE_FLOOR_NAME} on {address}, appending to {}",
            path.display()
        );
        // Ends only when the writer does (its file failed): then every call is refused anyway.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        Err(format!(
            "the writer stopped: writing {} failed",
            path.display()
        ))
    });
    served.map(|()| ExitCode::SUCCESS)
}

/// The writer thread: one batch per wake-up, one `pwrite` and one `fdatasync` per batch.
fn write_batches(file: &File, requests: &mpsc::Receiver<Request>) {
    // What the daemon hashes for a caller on the bus: a unique name, uid and pid (no unit).
    let caller = Caller::from_wire(0, std::process::id(), ":1.42".into(), String::new());
    let mut head: (u64, Hash) = (0, ZERO_HASH);
    let mut offset = 0u64;
    let mut batch = Vec::new();
    let mut bytes = Vec::new();
    let mut answers = Vec::new();
    while let Ok(first) = requests.recv() {
        batch.push(first);
        batch.extend(requests.try_iter());
        let timestamp_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes.clear();
        for request in batch.drain(..) {
            let block = EncodedBlock::seal(Block {
                height: head.0 + 1,
                timestamp_ns,
                prev_hash: head.1,
                caller: caller.clone(),
                plugin: request.plugin,
                operation: request.operation,
                data: request.data,
                hash: ZERO_HASH,
            });
            encode_record_of(&block, &mut bytes);
            head = (block.height, block.hash);
            answers.push((request.reply, block.height, block.hash_hex()));
        }
        let written = file
            .write_all_at(&bytes, offset)
            .and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                offset += bytes.len() as u64;
                for (reply, height, hash) in answers.drain(..) {
                    let _ = reply.send(Ok((height, hash)));
                }
            }
            Err(e) => {
                eprintln!("durable floor: write failed: {e}");
                for (reply, _, _) in answers.drain(..) {
                    let _ = reply.send(Err(format!("write failed: {e}")));
                }
                return;
            }
        }
    }
}
