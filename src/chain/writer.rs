//! Group commit: the single writer thread that owns the `ChainWriter`.
//!
//! Callers queue footprints; the thread takes everything queued (up to a bound), appends it as
//! one batch with one `fdatasync`, and only then answers each caller. Footprints that arrive
//! while a sync runs form the next batch, so throughput grows with concurrency while every
//! caller still waits for its own durable acknowledgement.
//!
//! Callers that await their ack come back right after it, a few at a time. Committing the first
//! one alone would make the rest wait a whole extra `fdatasync`, and batches would alternate
//! small and large. So when the last batch held more awaiting callers than have arrived yet, the
//! thread gathers a little longer (at most half the last commit's duration, and never more than
//! [`MAX_GATHER`]) until as many are there. A lone sequential caller never waits: its last batch
//! held one.
//!
//! The queue is a crossbeam channel (the writer waits on it with a precise timeout while it
//! gathers) bounded by an async semaphore: a sender waits without blocking its task's thread
//! while [`QUEUE_LEN`] writes are queued.

use super::block::{Caller, EncodedBlock, Hash};
use super::error::{ChainError, Result};
use super::store::ChainWriter;
use crate::footprint::PluginFootprint;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Most footprints committed by one `fdatasync`.
const MAX_BATCH: usize = 4096;
/// Queue bound: senders wait (asynchronously) when the writer is this far behind.
const QUEUE_LEN: usize = 16 * 1024;
/// Longest wait for the awaiting callers of the last batch to come back.
const MAX_GATHER: Duration = Duration::from_millis(1);

/// The ack: the committed block itself, shared (no copy of its strings for the caller).
type Reply = oneshot::Sender<Result<Arc<EncodedBlock>>>;

enum Command {
    Write {
        footprint: PluginFootprint,
        caller: Caller,
        reply: Option<Reply>,
        /// A place in the bounded queue, given back when the writer takes the footprint.
        room: OwnedSemaphorePermit,
    },
    /// Stop at a block boundary: report the head, then wait until `resume` fires or drops.
    Pause {
        paused: oneshot::Sender<(u64, Hash)>,
        resume: std::sync::mpsc::Receiver<()>,
    },
    /// Answer once everything queued before it is durable.
    Flush(oneshot::Sender<()>),
    Shutdown,
}

/// Counters of the writer, readable at any time.
#[derive(Debug, Default)]
pub struct CommitCounters {
    /// Batches committed (one `fdatasync` each).
    pub batches: AtomicU64,
    /// Blocks committed.
    pub blocks: AtomicU64,
    /// Footprints that failed to commit.
    pub failed: AtomicU64,
}

/// Called on the writer thread with each committed batch, after the callers were answered.
pub type CommitHook = Box<CommitFn>;
type CommitFn = dyn Fn(Vec<Arc<EncodedBlock>>) + Send;

/// Handle to the writer thread.
pub struct GroupCommit {
    tx: Sender<Command>,
    room: Arc<Semaphore>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: Arc<CommitCounters>,
    /// Set (once) to the reason when the store latched after a failed flush.
    latched: tokio::sync::watch::Receiver<Option<String>>,
}

impl GroupCommit {
    /// Starts the writer thread. `on_start` runs first on that thread (CPU and memory binding);
    /// `on_commit` runs after every committed batch.
    pub fn start(
        mut writer: ChainWriter,
        on_start: impl FnOnce() + Send + 'static,
        on_commit: Option<CommitHook>,
    ) -> std::io::Result<GroupCommit> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let room = Arc::new(Semaphore::new(QUEUE_LEN));
        let thread_room = room.clone();
        let counters = Arc::new(CommitCounters::default());
        let thread_counters = counters.clone();
        let (latched_tx, latched) = tokio::sync::watch::channel(None);
        let thread = std::thread::Builder::new()
            .name("chain-writer".into())
            .spawn(move || {
                on_start();
                // Gathering waits for a few tens of microseconds; the default 50 µs timer
                // slack would stretch each wait. Failing to lower it only costs some latency.
                let _ = nix::sys::prctl::set_timerslack(1_000);
                let on_latch = move |reason: &str| {
                    latched_tx.send_replace(Some(reason.to_owned()));
                };
                let hooks = Hooks {
                    on_commit: on_commit.as_deref(),
                    on_latch: &on_latch,
                };
                run(&mut writer, &rx, &thread_counters, &hooks);
                // Wake and refuse senders still waiting for room.
                thread_room.close();
            })?;
        Ok(GroupCommit {
            tx,
            room,
            thread: parking_lot::Mutex::new(Some(thread)),
            counters,
            latched,
        })
    }

    /// Queues a footprint and waits until its block is durable.
    pub async fn commit(
        &self,
        footprint: PluginFootprint,
        caller: Caller,
    ) -> Result<Arc<EncodedBlock>> {
        let (reply, answer) = oneshot::channel();
        self.queue(footprint, caller, Some(reply)).await?;
        answer.await.map_err(|_| ChainError::Closed)?
    }

    /// Queues a footprint without waiting for it (the streaming receiver's path); waits only
    /// while the queue is full.
    pub async fn enqueue(&self, footprint: PluginFootprint, caller: Caller) -> Result<()> {
        self.queue(footprint, caller, None).await
    }

    async fn queue(
        &self,
        footprint: PluginFootprint,
        caller: Caller,
        reply: Option<Reply>,
    ) -> Result<()> {
        let room = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ChainError::Closed)?;
        self.tx
            .send(Command::Write {
                footprint,
                caller,
                reply,
                room,
            })
            .map_err(|_| ChainError::Closed)
    }

    /// Waits until everything queued before this call is durable (or has failed).
    pub async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Flush(done))
            .map_err(|_| ChainError::Closed)?;
        wait.await.map_err(|_| ChainError::Closed)
    }

    /// Stops the writer at a block boundary and returns the head there; writing resumes when
    /// the returned guard is dropped. Footprints queue up meanwhile.
    pub async fn pause(&self) -> Result<((u64, Hash), PauseGuard)> {
        let (paused, at) = oneshot::channel();
        let (resume, resume_rx) = std::sync::mpsc::channel();
        self.tx
            .send(Command::Pause {
                paused,
                resume: resume_rx,
            })
            .map_err(|_| ChainError::Closed)?;
        let head = at.await.map_err(|_| ChainError::Closed)?;
        Ok((head, PauseGuard { _resume: resume }))
    }

    /// Commits everything queued so far, then stops the thread and waits for it.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    pub fn counters(&self) -> &CommitCounters {
        &self.counters
    }

    /// `Ok` while the writer thread runs and the store takes writes; otherwise why not. Cheap
    /// (no round trip to the thread): the daemon asks it for every watchdog ping.
    pub fn health(&self) -> std::result::Result<(), WriterDown> {
        if let Some(reason) = self.latched.borrow().clone() {
            return Err(WriterDown::Latched(reason));
        }
        match &*self.thread.lock() {
            Some(thread) if !thread.is_finished() => Ok(()),
            Some(_) => Err(WriterDown::Ended),
            None => Err(WriterDown::ShutDown),
        }
    }

    /// Resolves with the reason once the store has latched after a failed flush: from then on
    /// every write fails until a restart, so a daemon should exit and let systemd restart it.
    pub async fn latched(&self) -> String {
        let mut latched = self.latched.clone();
        let reason = match latched.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The writer thread is gone without latching: never resolves.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

/// Why the writer takes no writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriterDown {
    /// A flush failed; every write fails until a restart (the reason says which flush).
    #[error("the store is latched: {0}")]
    Latched(String),
    #[error("the chain writer thread has ended")]
    Ended,
    #[error("the chain writer has been shut down")]
    ShutDown,
}

/// Keeps the writer paused while alive.
pub struct PauseGuard {
    _resume: std::sync::mpsc::Sender<()>,
}

struct Hooks<'a> {
    on_commit: Option<&'a CommitFn>,
    on_latch: &'a dyn Fn(&str),
}

fn run(
    writer: &mut ChainWriter,
    rx: &Receiver<Command>,
    counters: &CommitCounters,
    hooks: &Hooks<'_>,
) {
    let mut held: Option<Command> = None;
    let mut entries = Vec::new();
    let mut replies = Vec::new();
    let mut gather = Gather::default();
    loop {
        let Some(command) = held.take().or_else(|| rx.recv().ok()) else {
            break;
        };
        match command {
            Command::Write {
                footprint,
                caller,
                reply,
                room,
            } => {
                drop(room);
                entries.push((footprint, caller));
                replies.push(reply);
                held = gather.collect(rx, &mut entries, &mut replies);
                let awaited = replies.iter().filter(|r| r.is_some()).count();
                let started = Instant::now();
                commit_batch(writer, &mut entries, &mut replies, counters, hooks);
                gather.committed(awaited, started.elapsed());
            }
            Command::Pause { paused, resume } => {
                let head = writer.reader().head();
                if paused.send(head).is_ok() {
                    // Returns when the guard is dropped (its sender hangs up).
                    let _ = resume.recv();
                }
            }
            Command::Flush(done) => {
                let _ = done.send(());
            }
            Command::Shutdown => break,
        }
    }
    tracing::debug!("chain writer stopped");
}

/// How the next batch is gathered, learnt from the last one.
#[derive(Default)]
struct Gather {
    /// Awaiting callers in the last batch: as many are expected back.
    expected: usize,
    /// How long the last commit (write and `fdatasync`) took.
    last_commit: Duration,
}

impl Gather {
    fn committed(&mut self, awaited: usize, took: Duration) {
        self.expected = awaited;
        self.last_commit = took;
    }

    /// Adds queued writes to the batch: everything already queued, then, while fewer awaiting
    /// callers are there than the last batch had, whatever arrives within the gather window.
    /// Returns a non-write command that ended the batch, to be handled after it.
    fn collect(
        &self,
        rx: &Receiver<Command>,
        entries: &mut Vec<(PluginFootprint, Caller)>,
        replies: &mut Vec<Option<Reply>>,
    ) -> Option<Command> {
        let window = (self.last_commit / 2).min(MAX_GATHER);
        let deadline = Instant::now() + window;
        let mut awaited = replies.iter().filter(|r| r.is_some()).count();
        while entries.len() < MAX_BATCH {
            let wanted = awaited > 0 && awaited < self.expected;
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(left) if wanted => rx.recv_timeout(left),
                _ => rx.try_recv().map_err(|_| RecvTimeoutError::Timeout),
            };
            match next {
                Ok(Command::Write {
                    footprint,
                    caller,
                    reply,
                    room,
                }) => {
                    drop(room);
                    awaited += usize::from(reply.is_some());
                    entries.push((footprint, caller));
                    replies.push(reply);
                }
                Ok(other) => return Some(other),
                Err(_) => break,
            }
        }
        None
    }
}

fn commit_batch(
    writer: &mut ChainWriter,
    entries: &mut Vec<(PluginFootprint, Caller)>,
    replies: &mut Vec<Option<Reply>>,
    counters: &CommitCounters,
    hooks: &Hooks<'_>,
) {
    let footprints = entries.len() as u64;
    match writer.append_owned(std::mem::take(entries)) {
        Ok(blocks) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters
                .blocks
                .fetch_add(blocks.len() as u64, Ordering::Relaxed);
            for (block, reply) in blocks.iter().zip(replies.drain(..)) {
                if let Some(reply) = reply {
                    // A caller that gave up still has its block committed.
                    let _ = reply.send(Ok(Arc::clone(block)));
                }
            }
            if let Some(hook) = hooks.on_commit {
                hook(blocks);
            }
        }
        Err(err) => {
            counters.failed.fetch_add(footprints, Ordering::Relaxed);
            match writer.latched() {
                // The store logged the latch once (STORAGE_LATCHED); every later batch fails
                // the same way until the restart.
                Some(reason) => {
                    tracing::debug!(%err, footprints, "a batch failed to commit");
                    (hooks.on_latch)(reason);
                }
                // Throttled: on a full disk every new batch fails the same way.
                None => {
                    if let Some(left_out) = crate::journal::WRITE_FAILURES.admit() {
                        tracing::warn!(
                            message_id = crate::journal::WRITE_FAILED,
                            %err,
                            footprints,
                            LEFT_OUT = (left_out > 0).then_some(left_out),
                            "a batch of {footprints} footprint(s) failed to commit and was rolled \
                             back: {err}"
                        );
                    }
                }
            }
            let mut unanswered = 0;
            for reply in replies.drain(..) {
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    None => unanswered += 1,
                }
            }
            if unanswered > 0 {
                tracing::error!(
                    lost = unanswered,
                    %err,
                    "streamed footprints could not be committed and are dropped"
                );
            }
        }
    }
    entries.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::store::{self, StoreOptions};

    #[tokio::test]
    async fn health_is_ok_while_the_writer_runs_and_an_error_once_it_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (writer, _reader, _) =
            store::open(dir.path(), StoreOptions::default()).expect("open the store");
        let commit = GroupCommit::start(writer, || {}, None).expect("start the writer");
        assert_eq!(commit.health(), Ok(()));
        commit
            .commit(
                PluginFootprint::new("network", "create", serde_json::json!({})),
                Caller::this_process(),
            )
            .await
            .expect("commit");
        assert_eq!(commit.health(), Ok(()));
        commit.shutdown().await;
        let reason = commit.health().expect_err("no writer any more");
        assert_eq!(reason, WriterDown::ShutDown);
        assert_eq!(reason.to_string(), "the chain writer has been shut down");
    }
}
