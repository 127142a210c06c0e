//! Group commit: the single writer thread that owns the `ChainWriter`.
//!
//! Callers queue footprints; the thread takes everything queued (up to a bound), appends it as
//! one batch with one `fdatasync`, and only then answers each caller. Footprints that arrive
//! while a sync runs form the next batch, so throughput grows with concurrency while every
//! caller still waits for its own durable acknowledgement. A caller may queue several
//! footprints as one write ([`GroupCommit::commit_many`]): they go into the same batch, in
//! order, and commit or fail together.
//!
//! The thread never waits for more writes to come: what is queued when it looks is the batch.
//! (Until issue 18 it waited up to half a commit for as many callers as the last batch had;
//! measured against a minimal durable server, that cost 5 to 10 % of the rate at 16 and 64
//! clients and gained nothing.)
//!
//! Wake-ups are counted, not free: the queue is a mutex-guarded list and a condition variable,
//! and a sender wakes the thread only when it sleeps (the first command after it went idle).
//! So a batch of sixteen callers costs the writer one wake-up, not sixteen. The queue is
//! bounded by an async semaphore counting footprints: a sender waits without blocking its
//! task's thread while [`QUEUE_LEN`] footprints are queued.

use super::block::{Caller, EncodedBlock, Hash};
use super::error::{ChainError, Result};
use super::store::ChainWriter;
use crate::footprint::PluginFootprint;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Most footprints committed by one `fdatasync` (a write of several is never split).
const MAX_BATCH: usize = 4096;
/// Queue bound in footprints: senders wait (asynchronously) when the writer is this far behind.
const QUEUE_LEN: usize = 16 * 1024;
/// Most footprints one write may hold; larger ones are refused before they are queued.
pub const MAX_WRITE_FOOTPRINTS: usize = 1024;

/// The blocks of a write, in order, or why none was committed.
pub type Outcome<'a> = std::result::Result<&'a [Arc<EncodedBlock>], &'a ChainError>;

/// Who waits for a write, and how they are told.
pub enum Ack {
    /// Nobody waits (the streaming receiver); a failure is logged.
    Streamed,
    /// One footprint's caller, answered with its block (shared: no copy of its strings).
    One(oneshot::Sender<Result<Arc<EncodedBlock>>>),
    /// A write of several footprints, answered with their blocks in order.
    Many(oneshot::Sender<Result<Vec<Arc<EncodedBlock>>>>),
    /// Run on the writer thread with the outcome, right after the `fdatasync`: it must only
    /// hand the outcome on (the D-Bus adapter queues its replies this way, one wake-up of its
    /// reply task per batch instead of one per caller).
    Call(Box<dyn FnOnce(Outcome<'_>) + Send>),
}

impl Ack {
    fn answer(self, outcome: Outcome<'_>) -> bool {
        match self {
            Ack::Streamed => return outcome.is_ok(),
            Ack::One(reply) => {
                let _ = reply.send(match outcome {
                    Ok(blocks) => Ok(Arc::clone(&blocks[0])),
                    Err(err) => Err(err.clone()),
                });
            }
            Ack::Many(reply) => {
                let _ = reply.send(outcome.map(<[_]>::to_vec).map_err(Clone::clone));
            }
            Ack::Call(call) => call(outcome),
        }
        true
    }
}

/// A place in the bounded queue for a write of some footprints, given back when the writer
/// takes the write.
pub struct Room(#[allow(dead_code)] OwnedSemaphorePermit);

enum Command {
    Write {
        footprints: Vec<PluginFootprint>,
        caller: Caller,
        ack: Ack,
        room: Room,
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

struct QueueState {
    commands: VecDeque<Command>,
    /// The thread sleeps until a command comes; senders read it to know whether to wake it.
    asleep: bool,
    /// The thread has ended: commands are answered with `Closed`.
    closed: bool,
}

struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                commands: VecDeque::new(),
                asleep: false,
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Queues `command`, waking the thread only if it sleeps. A command
    /// that comes after the thread ended is answered (or dropped, for its waiter to see) at once.
    fn push(&self, command: Command) -> Result<()> {
        let mut state = self.state.lock();
        if state.closed {
            drop(state);
            refuse(command);
            return Err(ChainError::Closed);
        }
        let wake = std::mem::take(&mut state.asleep);
        state.commands.push_back(command);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Refuses everything queued and everything sent from now on.
    fn close(&self) {
        let left = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.commands)
        };
        left.into_iter().for_each(refuse);
    }
}

fn refuse(command: Command) {
    if let Command::Write { ack, .. } = command {
        ack.answer(Err(&ChainError::Closed));
    }
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
    queue: Arc<Queue>,
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
        let queue = Arc::new(Queue::new());
        let thread_queue = queue.clone();
        let room = Arc::new(Semaphore::new(QUEUE_LEN));
        let thread_room = room.clone();
        let counters = Arc::new(CommitCounters::default());
        let thread_counters = counters.clone();
        let (latched_tx, latched) = tokio::sync::watch::channel(None);
        let thread = std::thread::Builder::new()
            .name("chain-writer".into())
            .spawn(move || {
                on_start();
                let on_latch = move |reason: &str| {
                    latched_tx.send_replace(Some(reason.to_owned()));
                };
                let hooks = Hooks {
                    on_commit: on_commit.as_deref(),
                    on_latch: &on_latch,
                };
                run(&mut writer, &thread_queue, &thread_counters, &hooks);
                // Refuse what is still queued, and wake senders still waiting for room.
                thread_queue.close();
                thread_room.close();
            })?;
        Ok(GroupCommit {
            queue,
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
        let room = self.room(1).await?;
        self.submit(vec![footprint], caller, Ack::One(reply), room);
        answer.await.map_err(|_| ChainError::Closed)?
    }

    /// Queues footprints as one write and waits until their blocks are durable: they are
    /// committed by the same `fdatasync`, at consecutive heights, or none is. At most
    /// [`MAX_WRITE_FOOTPRINTS`] (the caller checks); an empty write commits nothing.
    pub async fn commit_many(
        &self,
        footprints: Vec<PluginFootprint>,
        caller: Caller,
    ) -> Result<Vec<Arc<EncodedBlock>>> {
        if footprints.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let room = self.room(footprints.len()).await?;
        self.submit(footprints, caller, Ack::Many(reply), room);
        answer.await.map_err(|_| ChainError::Closed)?
    }

    /// Queues footprints as one write without waiting for it (the streaming receiver's path);
    /// waits only while the queue is full.
    pub async fn enqueue(&self, footprints: Vec<PluginFootprint>, caller: Caller) -> Result<()> {
        if footprints.is_empty() {
            return Ok(());
        }
        let room = self.room(footprints.len()).await?;
        self.submit(footprints, caller, Ack::Streamed, room);
        Ok(())
    }

    /// A place in the queue for a write of `count` footprints, at once, or `None` while the
    /// queue is full (then wait with [`GroupCommit::room`]).
    pub fn try_room(&self, count: usize) -> Option<Room> {
        self.room
            .clone()
            .try_acquire_many_owned(permits(count))
            .ok()
            .map(Room)
    }

    /// A place in the queue for a write of `count` footprints; waits while the queue is full.
    pub async fn room(&self, count: usize) -> Result<Room> {
        self.room
            .clone()
            .acquire_many_owned(permits(count))
            .await
            .map(Room)
            .map_err(|_| ChainError::Closed)
    }

    /// Queues a write of at least one footprint in the place `room` holds; never waits. `ack`
    /// is answered once the write is durable or has failed (with `Closed` at once if the writer
    /// has ended).
    pub fn submit(&self, footprints: Vec<PluginFootprint>, caller: Caller, ack: Ack, room: Room) {
        if footprints.is_empty() {
            ack.answer(Ok(&[]));
            return;
        }
        let _ = self.queue.push(Command::Write {
            footprints,
            caller,
            ack,
            room,
        });
    }

    /// Waits until everything queued before this call is durable (or has failed).
    pub async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.queue.push(Command::Flush(done))?;
        wait.await.map_err(|_| ChainError::Closed)
    }

    /// Stops the writer at a block boundary and returns the head there; writing resumes when
    /// the returned guard is dropped. Footprints queue up meanwhile.
    pub async fn pause(&self) -> Result<((u64, Hash), PauseGuard)> {
        let (paused, at) = oneshot::channel();
        let (resume, resume_rx) = std::sync::mpsc::channel();
        self.queue.push(Command::Pause {
            paused,
            resume: resume_rx,
        })?;
        let head = at.await.map_err(|_| ChainError::Closed)?;
        Ok((head, PauseGuard { _resume: resume }))
    }

    /// Commits everything queued so far, then stops the thread and waits for it.
    pub async fn shutdown(&self) {
        let _ = self.queue.push(Command::Shutdown);
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

/// A write fits [`MAX_BATCH`] and the queue's bound whatever its size (the service refuses
/// writes over [`MAX_WRITE_FOOTPRINTS`] before they get here).
fn permits(count: usize) -> u32 {
    count.clamp(1, QUEUE_LEN) as u32
}

struct Hooks<'a> {
    on_commit: Option<&'a CommitFn>,
    on_latch: &'a dyn Fn(&str),
}

/// The footprints of the next commit and who waits for them.
#[derive(Default)]
struct Batch {
    entries: Vec<(PluginFootprint, Caller)>,
    /// Each write's footprint count and ack, in queue order.
    acks: Vec<(usize, Ack)>,
}

impl Batch {
    /// Moves the writes at the front of the queue into the batch, while they fit; stops at
    /// anything else (a command, or a write for the next batch).
    fn take_writes(&mut self, state: &mut QueueState) {
        loop {
            match state.commands.front() {
                None => return,
                Some(Command::Write { footprints, .. })
                    if self.entries.is_empty()
                        || self.entries.len() + footprints.len() <= MAX_BATCH => {}
                Some(_) => return,
            }
            let Some(Command::Write {
                footprints,
                caller,
                ack,
                room,
            }) = state.commands.pop_front()
            else {
                unreachable!("the front was a write");
            };
            drop(room);
            self.acks.push((footprints.len(), ack));
            self.entries
                .extend(footprints.into_iter().map(|f| (f, caller.clone())));
        }
    }
}

fn run(writer: &mut ChainWriter, queue: &Queue, counters: &CommitCounters, hooks: &Hooks<'_>) {
    let mut batch = Batch::default();
    loop {
        let mut state = queue.state.lock();
        while state.commands.is_empty() {
            state.asleep = true;
            queue.wake.wait(&mut state);
        }
        state.asleep = false;
        if !matches!(state.commands.front(), Some(Command::Write { .. })) {
            let command = state.commands.pop_front().expect("not empty");
            drop(state);
            match command {
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
                Command::Write { .. } => unreachable!("writes are taken below"),
            }
            continue;
        }
        batch.take_writes(&mut state);
        drop(state);
        commit_batch(writer, &mut batch, counters, hooks);
    }
    tracing::debug!("chain writer stopped");
}

fn commit_batch(
    writer: &mut ChainWriter,
    batch: &mut Batch,
    counters: &CommitCounters,
    hooks: &Hooks<'_>,
) {
    let footprints = batch.entries.len() as u64;
    match writer.append_owned(std::mem::take(&mut batch.entries)) {
        Ok(blocks) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters
                .blocks
                .fetch_add(blocks.len() as u64, Ordering::Relaxed);
            let mut at = 0;
            for (count, ack) in batch.acks.drain(..) {
                // A caller that gave up still has its blocks committed.
                ack.answer(Ok(&blocks[at..at + count]));
                at += count;
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
            for (count, ack) in batch.acks.drain(..) {
                if !ack.answer(Err(&err)) {
                    unanswered += count;
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
