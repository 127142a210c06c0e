//! The transparency log of a running chain: one thread ("opdbus-tlog") that follows the chain's
//! head, appends the new block hashes to the Merkle tree's tiles, and when the tree grew issues a
//! signed checkpoint, at most every `interval` and once more at a clean stop.
//!
//! It works off the AddFootprint path (the writer never waits for it) and in this order, so that
//! whatever is published can be proved:
//! 1. the tiles of the new size are written and synced ([`TileWriter::flush`]);
//! 2. the checkpoint is signed and appended (synced) to `checkpoints`, the history;
//! 3. it replaces `checkpoint` (renamed into place), is logged to the journal with fields and
//!    is announced to subscribers (the D-Bus signal `CheckpointIssued`).
//!
//! At start it refuses to go on from a checkpoint the chain does not extend (a rollback, a
//! truncation, a rewrite or a fork of the chain directory below a size it already published):
//! it then halts, touches no tile and issues nothing, while the chain itself keeps taking
//! footprints; the operator decides (docs/operations.md). Otherwise it checks every tile against
//! the chain and rewrites what is missing or differs before serving any proof.

use crate::chain::block::Hash;
use crate::chain::store::ChainReader;
use crate::tlog::tiles::{Settle, TileCheck, TileReader, TileWriter};
use crate::tlog::{checkpoint::History, Checkpoint, KeyError, SigningKey, TlogError};
use parking_lot::RwLock;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Leaves replayed between two tile checks at start-up (memory stays flat on any chain).
const REPLAY_CHUNK: usize = 1 << 16;

/// Where the signing key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A key file, made at first start when missing.
    File(PathBuf),
    /// A systemd credential (`LoadCredential=`): read, never written.
    Credential(PathBuf),
}

impl KeySource {
    pub fn path(&self) -> &Path {
        match self {
            KeySource::File(path) | KeySource::Credential(path) => path,
        }
    }
}

/// How to run the transparency log.
#[derive(Clone, Debug)]
pub struct TransparencyOptions {
    pub tlog_dir: PathBuf,
    pub key: KeySource,
    /// The checkpoints' origin line; `None`: `<host name>/opdbus-blockchain/<chain id>`.
    pub origin: Option<String>,
    /// Longest wait before a grown tree gets a checkpoint.
    pub interval: Duration,
}

/// Why the transparency log cannot serve what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TransparencyError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "the signing key {} is inside {}: it would be published, snapshotted or backed up with it; \
         keep it elsewhere (OPDBUS_SIGNING_KEY)",
        key.display(),
        dir.display()
    )]
    KeyInside { key: PathBuf, dir: PathBuf },
    #[error("transparency log: {0}")]
    Tlog(#[from] TlogError),
    #[error("starting the transparency log thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    UnsafeDir(#[from] crate::files::DirError),
    /// The chain does not extend the newest checkpoint this log published.
    #[error("the transparency log is halted: {0}")]
    Halted(String),
    /// Start-up has not finished checking the tiles, or no checkpoint was issued yet.
    #[error("no checkpoint has been issued yet (the log is starting); try again in a moment")]
    NotYet,
    /// A size or height outside the published tree.
    #[error("{0}")]
    OutOfRange(String),
}

type Result<T, E = TransparencyError> = std::result::Result<T, E>;

/// The running transparency log; cheap to clone.
#[derive(Clone)]
pub struct Transparency {
    shared: Arc<Shared>,
    control: Arc<parking_lot::Mutex<Control>>,
}

struct Control {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    origin: String,
    vkey: String,
    state: RwLock<State>,
    issued: tokio::sync::broadcast::Sender<Checkpoint>,
}

#[derive(Default)]
struct State {
    /// The newest published checkpoint; proofs are served up to its size.
    latest: Option<Checkpoint>,
    /// False until the start-up check of the tiles is done.
    ready: bool,
    halted: Option<String>,
}

impl Transparency {
    /// Loads (or makes) the signing key and starts the log's thread for the chain `reader`
    /// reads. `forbidden` are directories the key must not be in (chain, cache).
    pub fn start(
        options: TransparencyOptions,
        reader: ChainReader,
        forbidden: &[&Path],
    ) -> Result<Transparency> {
        let origin = match &options.origin {
            Some(origin) if !origin.is_empty() => origin.clone(),
            _ => default_origin(&reader.chain_id()),
        };
        let mut dirs: Vec<&Path> = forbidden.to_vec();
        dirs.push(&options.tlog_dir);
        refuse_key_inside(options.key.path(), &dirs)?;
        let key = match &options.key {
            KeySource::File(path) => {
                let (key, new) = SigningKey::load_or_create(path, &origin)?;
                if new {
                    tracing::info!(
                        key = %path.display(),
                        VKEY = %key.vkey(),
                        "made a new checkpoint signing key; its verifier key: {}",
                        key.vkey()
                    );
                }
                key
            }
            // systemd made it readable by this service alone, whatever its mode says.
            KeySource::Credential(path) => SigningKey::load_credential(path)?,
        };
        crate::files::create_dir_all(&options.tlog_dir)
            .map_err(|err| TlogError::io(&options.tlog_dir, err))?;
        // Its subdirectories are ours; whoever could write here could plant links in them.
        crate::files::check_dir(&options.tlog_dir)?;
        let (issued, _) = tokio::sync::broadcast::channel(16);
        let shared = Arc::new(Shared {
            dir: options.tlog_dir.clone(),
            origin,
            vkey: key.vkey().to_owned(),
            state: RwLock::new(State::default()),
            issued,
        });
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let run = Run {
            shared: Arc::clone(&shared),
            reader,
            key,
            interval: options.interval,
            history: History::new(&options.tlog_dir.join("checkpoints")),
            writer: TileWriter::new(&options.tlog_dir),
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("opdbus-tlog".into())
            .spawn(move || {
                // Only the CPU the writer and the bus leave: it never slows the footprints it
                // follows; under sustained load its checkpoints come later, each covering more.
                crate::cache::feed::run_when_idle("transparency log");
                run.run(stopped)
            })
            .map_err(TransparencyError::Thread)?;
        Ok(Transparency {
            shared,
            control: Arc::new(parking_lot::Mutex::new(Control {
                stop: Some(stop),
                thread: Some(thread),
            })),
        })
    }

    /// Issues a last checkpoint of whatever the chain holds, and stops the thread. Call after
    /// the writer has stopped, so that it covers every acknowledged footprint.
    pub fn stop(&self) {
        let (stop, thread) = {
            let mut control = self.control.lock();
            (control.stop.take(), control.thread.take())
        };
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// The verifier key of the checkpoints, `<name>+<hash>+<base64>`.
    pub fn verifying_key(&self) -> &str {
        &self.shared.vkey
    }

    /// The origin line of the checkpoints.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The tlog directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Checkpoints as they are issued.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Checkpoint> {
        self.shared.issued.subscribe()
    }

    /// The newest published checkpoint.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let state = self.shared.state.read();
        if let Some(reason) = &state.halted {
            return Err(TransparencyError::Halted(reason.clone()));
        }
        match (&state.latest, state.ready) {
            (Some(latest), true) => Ok(latest.clone()),
            _ => Err(TransparencyError::NotYet),
        }
    }

    /// Why the log is halted, if it is.
    pub fn halted(&self) -> Option<String> {
        self.shared.state.read().halted.clone()
    }

    /// The inclusion proof of the block at `height` in the tree of `tree_size` leaves, which
    /// must be at most the published size. Reads tiles: call off the async workers.
    pub fn inclusion_proof(&self, height: u64, tree_size: u64) -> Result<Vec<Hash>> {
        let published = self.checkpoint()?.size;
        if tree_size == 0 || tree_size > published {
            return Err(TransparencyError::OutOfRange(format!(
                "tree size {tree_size} is outside the published tree: valid sizes are 1 to \
                 {published}"
            )));
        }
        if height >= tree_size {
            return Err(TransparencyError::OutOfRange(format!(
                "height {height} is not in the tree of size {tree_size}: valid heights are 0 to {}",
                tree_size - 1
            )));
        }
        Ok(TileReader::new(&self.shared.dir).inclusion_proof(tree_size, height)?)
    }

    /// The consistency proof from the tree of `old_size` leaves to that of `new_size`
    /// (`1 <= old_size <= new_size <=` the published size). Reads tiles.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
        let published = self.checkpoint()?.size;
        if new_size == 0 || new_size > published {
            return Err(TransparencyError::OutOfRange(format!(
                "new size {new_size} is outside the published tree: valid sizes are 1 to \
                 {published}"
            )));
        }
        if old_size == 0 || old_size > new_size {
            return Err(TransparencyError::OutOfRange(format!(
                "old size {old_size} must be from 1 to the new size {new_size}"
            )));
        }
        Ok(TileReader::new(&self.shared.dir).consistency_proof(old_size, new_size)?)
    }
}

/// Hands the durable block hashes of heights `from..to` to `each`, [`REPLAY_CHUNK`] at a time
/// (memory stays flat on any chain).
fn each_chunk(
    reader: &ChainReader,
    from: u64,
    to: u64,
    mut each: impl FnMut(&[Hash]) -> Result<(), TlogError>,
) -> Result<(), TlogError> {
    let mut at = from;
    while at < to {
        let hashes = reader.hashes(at, REPLAY_CHUNK.min((to - at) as usize));
        if hashes.is_empty() {
            break;
        }
        each(&hashes)?;
        at += hashes.len() as u64;
    }
    Ok(())
}

/// `<host name>/opdbus-blockchain/<first 16 hex digits of the chain id>`.
pub fn default_origin(chain_id: &crate::chain::segment::ChainId) -> String {
    format!(
        "{}/opdbus-blockchain/{}",
        host_name(),
        &hex::encode(chain_id)[..16]
    )
}

/// This host's name as a key or origin name part: letters, digits, `.`, `-` and `_` only
/// (`localhost` when there is none).
pub fn host_name() -> String {
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

/// Refuses a key path inside any of `dirs` (compared after resolving links, and for a key
/// that does not exist yet, its nearest existing ancestor).
fn refuse_key_inside(key: &Path, dirs: &[&Path]) -> Result<()> {
    let resolved = resolve(key);
    for dir in dirs {
        if resolved.starts_with(resolve(dir)) {
            return Err(TransparencyError::KeyInside {
                key: key.to_path_buf(),
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut existing = path;
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |path, part| path.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The thread's own state.
struct Run {
    shared: Arc<Shared>,
    reader: ChainReader,
    key: SigningKey,
    interval: Duration,
    history: History,
    writer: TileWriter,
    /// A round failed and the failure was logged; the next success says so.
    failing: bool,
}

impl Run {
    fn run(mut self, stop: crossbeam_channel::Receiver<()>) {
        match self.start_up() {
            Ok(()) => {}
            Err(TransparencyError::Halted(reason)) => {
                let size = self.reader.head().0 + 1;
                tracing::error!(
                    message_id = crate::journal::CHECKPOINT_FAILED,
                    TLOG_DIR = %self.shared.dir.display(),
                    CHAIN_SIZE = size,
                    "{reason}; no checkpoint is issued until an operator acts (docs/operations.md, \
                     \"The chain no longer extends its checkpoint\")"
                );
                self.shared.state.write().halted = Some(reason);
                let _ = stop.recv();
                return;
            }
            Err(err) => {
                tracing::error!(
                    message_id = crate::journal::CHECKPOINT_FAILED,
                    %err,
                    "the transparency log could not start; no checkpoints: {err}"
                );
                self.shared.state.write().halted = Some(err.to_string());
                let _ = stop.recv();
                return;
            }
        }
        loop {
            let stopping = !matches!(
                stop.recv_timeout(self.interval),
                Err(crossbeam_channel::RecvTimeoutError::Timeout)
            );
            self.round();
            if stopping {
                return;
            }
        }
    }

    /// Checks the chain against the newest published checkpoint, then every tile against the
    /// chain, and publishes again a checkpoint the history holds but the file lacks.
    fn start_up(&mut self) -> Result<()> {
        let published = self.newest_published();
        let size = self.reader.head().0 + 1;
        if let Some(last) = &published {
            if last.size > size {
                return Err(TransparencyError::Halted(format!(
                    "the chain holds {size} blocks but checkpoint {} covered {}: blocks were \
                     cut off (a rollback or truncation of the chain directory)",
                    last.size, last.size
                )));
            }
            let mut range = crate::tlog::CompactRange::default();
            each_chunk(&self.reader, 0, last.size, |hashes| {
                hashes.iter().for_each(|hash| range.push(hash));
                Ok(())
            })?;
            if range.root() != last.root {
                return Err(TransparencyError::Halted(format!(
                    "the chain does not extend checkpoint {} (root {}): a block below height {} \
                     was rewritten or the chain was forked; `opdbus-chain verify --checkpoint` \
                     locates it",
                    last.size,
                    hex::encode(last.root),
                    last.size
                )));
            }
        }
        let mut check = TileCheck::default();
        let writer = &mut self.writer;
        each_chunk(&self.reader, 0, size, |hashes| {
            hashes.iter().for_each(|hash| writer.push(hash));
            writer.settle(Settle::Repair, &mut check)
        })?;
        // A partial narrower than the chain is the normal lag of a log stopped or killed
        // between two rounds (or a new one): rewritten below, said only when it differs.
        let mut partials = TileCheck::default();
        self.writer.settle_partials(Settle::Report, &mut partials)?;
        check.differing.extend(partials.differing);
        self.writer.forget_flushed();
        self.writer.flush()?;
        if !check.is_clean() {
            tracing::warn!(
                TLOG_DIR = %self.shared.dir.display(),
                missing = check.missing.len(),
                differing = check.differing.len(),
                first = %check.differing.first().or(check.missing.first()).map_or("", String::as_str),
                "rebuilt {} missing and {} damaged tile(s) from the chain",
                check.missing.len(),
                check.differing.len()
            );
        }
        if let Some(last) = &published {
            // The history is written before the file: a crash between them leaves the file
            // behind, and it is brought up to the history here.
            self.publish_file(last)?;
        }
        let mut state = self.shared.state.write();
        state.latest = published;
        state.ready = true;
        drop(state);
        self.round();
        Ok(())
    }

    /// The newer of `checkpoint` and the history's last line (the history can be one ahead).
    fn newest_published(&self) -> Option<Checkpoint> {
        let file = match crate::files::read(&self.shared.dir.join("checkpoint")) {
            Ok(bytes) => Checkpoint::parse_unverified(&bytes).ok(),
            Err(_) => None,
        };
        let history = self.history.last().unwrap_or_else(|err| {
            tracing::warn!(%err, "cannot read the checkpoint history");
            None
        });
        match (file, history) {
            (Some(file), Some(history)) if history.size > file.size => Some(history),
            (Some(file), _) => Some(file),
            (None, history) => history,
        }
    }

    /// Appends what the chain gained and, if the tree grew, issues a checkpoint. A failure is
    /// logged (once until it clears) and retried next round; the last checkpoint stays served.
    fn round(&mut self) {
        match self.grow_and_issue() {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("checkpoints are issued again");
            }
            Ok(()) => {}
            Err(err) if !self.failing => {
                self.failing = true;
                tracing::error!(
                    message_id = crate::journal::CHECKPOINT_FAILED,
                    %err,
                    "cannot issue a checkpoint; retrying every interval: {err}"
                );
            }
            Err(_) => {}
        }
    }

    fn grow_and_issue(&mut self) -> Result<()> {
        let size = self.reader.head().0 + 1;
        let writer = &mut self.writer;
        each_chunk(&self.reader, writer.size(), size, |hashes| {
            hashes.iter().for_each(|hash| writer.push(hash));
            Ok(())
        })?;
        let published = self.shared.state.read().latest.as_ref().map(|c| c.size);
        if published == Some(self.writer.size()) {
            return Ok(());
        }
        self.writer.flush()?;
        let checkpoint = Checkpoint::sign(
            &self.key,
            &self.shared.origin,
            self.writer.size(),
            &self.writer.root(),
        )
        .map_err(|err| TlogError::Tree(err.to_string()))?;
        let history = self.shared.dir.join("checkpoints");
        self.history
            .append(&checkpoint)
            .map_err(|err| TlogError::io(history, err))?;
        self.publish_file(&checkpoint)?;
        tracing::info!(
            message_id = crate::journal::CHECKPOINT_ISSUED,
            CHECKPOINT_SIZE = checkpoint.size,
            CHECKPOINT_ROOT = %hex::encode(checkpoint.root),
            CHECKPOINT_NOTE = %checkpoint.note,
            "checkpoint issued: tree size {}",
            checkpoint.size
        );
        self.shared.state.write().latest = Some(checkpoint.clone());
        let _ = self.shared.issued.send(checkpoint);
        Ok(())
    }

    fn publish_file(&self, checkpoint: &Checkpoint) -> Result<()> {
        let path = self.shared.dir.join("checkpoint");
        crate::files::write_atomic(&path, checkpoint.note.as_bytes(), crate::files::FILE_MODE)
            .map_err(|err| TlogError::io(path, err).into())
    }
}
