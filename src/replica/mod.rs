//! A replica: a verified copy of another host's chain, in the same on-disk format, that also
//! witnesses the source's checkpoints.
//!
//! One [`Replica::round`] brings the copy up to the source's newest signed checkpoint:
//! 1. the copy is scanned up to the checkpoint it accepted last (`DIR/tlog/checkpoint`, signed
//!    by the source's key, which the replica is given and never fetches) and must give its root;
//!    anything past it (a round a crash interrupted) is cut;
//! 2. the source's checkpoint is fetched and must be signed by that key, name the same log and
//!    not be smaller than the accepted one (a rollback);
//! 3. the source's copy of the newest verified record is fetched and must be byte for byte the
//!    replica's (a truncation, rewrite or fork below it fails here);
//! 4. the records after it, up to the checkpoint's size, are read, each re-hashed, linked and
//!    checked as start-up recovery checks them, and appended verbatim (segments are cut where
//!    the source cut them);
//! 5. the Merkle tree over the copy must give the checkpoint's root; then the segments are
//!    synced, the tiles written, the checkpoint cosigned (c2sp.org/tlog-cosignature) and
//!    published in `DIR/tlog`, its history first, as the daemon publishes its own.
//!
//! A check that fails stops the round: the records it appended are cut again, so the copy keeps
//! exactly what it verified before. A source whose history no longer contains the copy's is
//! [`ReplicaError::Diverged`] at the exact tree size where they part, found by comparing the
//! source's segments with the copy's from the newest back.

pub mod http;
pub mod run;
pub mod ssh;
pub mod stream;

use crate::chain::block::{Block, Hash};
use crate::chain::scan::{self, RecordReader, ScanState};
use crate::chain::segment::{self, ChainId, Parsed, HEADER_LEN};
use crate::chain::store;
use crate::tlog::checkpoint::History;
use crate::tlog::cosign::Cosigner;
use crate::tlog::tiles::{Settle, TileCheck, TileWriter};
use crate::tlog::Checkpoint;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The largest checkpoint note a source may send (a signed note with a few signatures is well
/// under 1 KiB; `signed_note` itself refuses notes over 1 MB).
pub const MAX_CHECKPOINT_BYTES: u64 = 64 * 1024;

/// The longest wait between two tries of a source that cannot be read.
pub const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Marks a replica directory whose first round has not finished: its segments may be cut.
const FIRST_ROUND: &str = "first-round";

/// Leaves replayed between two tile checks when the copy is opened (memory stays flat).
const SETTLE_EVERY: u64 = 1 << 16;

/// Where a replica reads from: the source's published chain and checkpoint.
pub trait Source {
    /// What to call the source in messages (its URL).
    fn describe(&self) -> String;
    /// The source's newest signed checkpoint, at most [`MAX_CHECKPOINT_BYTES`].
    fn checkpoint(&self) -> Result<Vec<u8>, SourceError>;
    /// The segment whose first height is `first`, from byte `offset` to its end; `None` when
    /// the source has no such segment. A segment shorter than `offset` reads as empty.
    fn segment(&self, first: u64, offset: u64) -> Result<Option<Box<dyn Read>>, SourceError>;
}

/// The source could not be reached or answered outside the protocol (retry later).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Why a round did not bring the copy up to the source's checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The source no longer extends what the replica verified: it parts from the copy after
    /// `size` blocks. The copy is kept as it was.
    #[error("the source diverged at tree size {size}: {reason}")]
    Diverged { size: u64, reason: String },
    /// The source sent something that is not a valid continuation (garbage, a record that does
    /// not link or hash, another chain, a checkpoint not signed by the key given). Nothing of
    /// it was kept.
    #[error("the source sent invalid data: {0}")]
    BadSource(String),
    /// The source could not be read.
    #[error("cannot read the source: {0}")]
    Source(#[from] SourceError),
    /// The replica's own directory cannot be used.
    #[error("{0}")]
    Local(String),
}

type Result<T, E = ReplicaError> = std::result::Result<T, E>;

fn local(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> ReplicaError {
    move |err| ReplicaError::Local(format!("{what}: {err}"))
}

/// What a round achieved.
#[derive(Debug, Clone)]
pub struct Round {
    /// The checkpoint the copy is now verified up to, with this replica's cosignature.
    pub checkpoint: Checkpoint,
    /// Blocks appended in this round.
    pub copied: u64,
}

/// A replica directory: the chain's segments, and `tlog/` with the tiles of the copy and the
/// newest checkpoint it verified (cosigned).
pub struct Replica {
    dir: PathBuf,
    tlog: PathBuf,
    vkey: String,
    witness: Option<Witness>,
    /// The copy as the last successful round left it, with the checkpoint it is verified up
    /// to: the next round goes on from it instead of re-reading the whole copy (nothing else
    /// writes the directory while the lock is held; a failed round drops it).
    verified: Option<(Checkpoint, Copy)>,
    /// Kept up to date when the copy's blocks are served ([`Replica::serve`]).
    index: Option<SharedIndex>,
    _lock: nix::fcntl::Flock<File>,
}

/// The newest record of the copy: where the tail check reads it back from the source.
#[derive(Clone)]
struct Tail {
    segment: u64,
    offset: u64,
    bytes: Vec<u8>,
}

/// The copy as it stands after [`Replica::open_copy`].
struct Copy {
    chain_id: Option<ChainId>,
    state: Option<ScanState>,
    tail: Option<Tail>,
    tiles: TileWriter,
    /// What the witness cosigned last for this log (size, root), and the copy's root at that
    /// size once the copy reaches it.
    remembered: Option<(u64, Hash)>,
    root_at_remembered: Option<Hash>,
    /// Blocks read or appended since the index was last brought up to date: (segment, offset,
    /// record length, hash), in height order; `rebuilt` when they start at height 0.
    staged: Vec<(u64, u64, u32, Hash)>,
    rebuilt: bool,
}

impl Replica {
    /// Opens (or makes) the replica directory `dir` for the log whose verifier key is `vkey`;
    /// takes the chain's lock, so no daemon or other replica writes it meanwhile.
    pub fn open(dir: &Path, vkey: &str, witness: Option<Witness>) -> Result<Replica> {
        if !dir.exists() {
            crate::files::create_dir_all(dir).map_err(local(dir.display()))?;
        }
        let lock = store::take_lock(dir).map_err(|err| ReplicaError::Local(err.to_string()))?;
        let tlog = dir.join("tlog");
        if !tlog.exists() {
            crate::files::create_dir(&tlog).map_err(local(tlog.display()))?;
        }
        for checked in [dir, tlog.as_path()] {
            crate::files::check_dir(checked).map_err(|err| ReplicaError::Local(err.to_string()))?;
        }
        if std::fs::symlink_metadata(&tlog)
            .map_err(local(tlog.display()))?
            .is_symlink()
        {
            return Err(ReplicaError::Local(format!(
                "{} is a symbolic link: the replica writes its tiles and checkpoints only into \
                 its own directory",
                tlog.display()
            )));
        }
        Ok(Replica {
            dir: dir.to_path_buf(),
            tlog,
            vkey: vkey.trim().to_string(),
            witness,
            verified: None,
            index: None,
            _lock: lock,
        })
    }

    /// Adds the blocks `copy` verified (checked against a durable checkpoint) to the index.
    fn commit_index(&self, copy: &mut Copy) {
        if let Some(index) = &self.index {
            let mut index = index.write();
            if copy.rebuilt {
                index.locations.clear();
                index.by_hash.clear();
                index.hashes.clear();
            }
            for (segment, offset, len, hash) in copy.staged.drain(..) {
                index.push(segment, offset, len, &hash);
            }
        }
        copy.staged.clear();
        copy.rebuilt = false;
    }

    /// Keeps `index` up to date with the copy's verified blocks from the next round on.
    pub fn serve(&mut self, index: SharedIndex) {
        index.write().dir = self.dir.clone();
        self.index = Some(index);
        // The next round reads the copy again, so that the index gets every block.
        self.verified = None;
    }

    /// The checkpoint the copy was last verified up to (`None` before the first round).
    pub fn accepted(&self) -> Result<Option<Checkpoint>> {
        let path = self.tlog.join("checkpoint");
        let note = match crate::files::read(&path) {
            Ok(note) => note,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(local(path.display())(err)),
        };
        Checkpoint::open(&note, &self.vkey)
            .map(Some)
            .map_err(|err| {
                ReplicaError::Local(format!(
                    "{}: {err}: this replica was made for another log (another --vkey)",
                    path.display()
                ))
            })
    }

    /// Brings the copy up to `source`'s newest checkpoint; see the module documentation.
    pub fn round(&mut self, source: &dyn Source) -> Result<Round> {
        let accepted = self.accepted()?;
        let first_round = self.tlog.join(FIRST_ROUND);
        if accepted.is_none() {
            let listed = segment::list(&self.dir).map_err(local(self.dir.display()))?;
            if !listed.is_empty() && !first_round.exists() {
                return Err(ReplicaError::Local(format!(
                    "{} holds segments but no verified checkpoint ({}): not a replica, or its \
                     checkpoint was removed; nothing was changed. Restore the checkpoint, or \
                     replicate into an empty directory",
                    self.dir.display(),
                    self.tlog.join("checkpoint").display()
                )));
            }
            // What the first round writes before its checkpoint may be cut by the next one.
            crate::files::write_atomic(&first_round, b"", crate::files::FILE_MODE)
                .map_err(local(first_round.display()))?;
        }
        let mut copy = match self.verified.take() {
            Some((checkpoint, copy))
                if accepted
                    .as_ref()
                    .is_some_and(|a| (a.size, a.root) == (checkpoint.size, checkpoint.root)) =>
            {
                copy
            }
            _ => {
                let mut copy = self.open_copy(accepted.as_ref())?;
                // What the copy holds up to its accepted checkpoint is served at once, also
                // while the source cannot be read or has diverged.
                self.commit_index(&mut copy);
                copy
            }
        };
        copy.remembered = None;
        copy.root_at_remembered = None;
        // Nothing below changes the copy until it is copied to: a failure keeps it for the
        // next round (no re-read of the whole copy for a source that is down).
        let offered = match source
            .checkpoint()
            .map_err(ReplicaError::from)
            .and_then(|note| {
                Checkpoint::open(&note, &self.vkey)
                    .map_err(|err| ReplicaError::BadSource(format!("its checkpoint: {err}")))
            }) {
            Ok(offered) => offered,
            Err(err) => {
                if let Some(accepted) = &accepted {
                    self.verified = Some((accepted.clone(), copy));
                }
                return Err(err);
            }
        };
        let accepted_size = accepted.as_ref().map_or(0, |c| c.size);
        if let Some(accepted) = &accepted {
            if offered.origin != accepted.origin {
                return Err(ReplicaError::BadSource(format!(
                    "its checkpoint names the log {:?}, the copy is of {:?}",
                    offered.origin, accepted.origin
                )));
            }
            if offered.size < accepted.size {
                let (size, why) = self.locate(source)?;
                return Err(ReplicaError::Diverged {
                    size: size.min(offered.size),
                    reason: format!(
                        "its checkpoint covers {} blocks, the replica verified {} (a rollback); {why}",
                        offered.size, accepted.size
                    ),
                });
            }
            if offered.size == accepted.size && offered.root != accepted.root {
                let (size, why) = self.locate(source)?;
                return Err(ReplicaError::Diverged {
                    size,
                    reason: format!(
                        "its checkpoint of {} blocks has another root than the one verified (a fork); {why}",
                        offered.size
                    ),
                });
            }
        }
        // What the witness remembers now; read again under its lock before cosigning (the
        // lock is not held over the network: a slow source must not stall other replicas).
        if let Some(witness) = &self.witness {
            copy.remembered = witness.last(&offered.origin)?;
            if let Some((size, _)) = copy.remembered {
                if size <= copy.tiles.size() && size > 0 {
                    let root = crate::tlog::TileReader::new(&self.tlog)
                        .root(size)
                        .map_err(|err| ReplicaError::Local(err.to_string()))?;
                    copy.root_at_remembered = Some(root);
                }
            }
        }
        let before = copy.state.as_ref().map_or(0, |s| s.next_height);
        let appended = match self.copy_up_to(source, &mut copy, offered.size) {
            Ok(appended) => appended,
            Err(err) => {
                cut_chain_to(&self.dir, accepted_size)?;
                return Err(match err {
                    Fetched::Diverged => {
                        let (size, why) = self.locate(source)?;
                        ReplicaError::Diverged { size, reason: why }
                    }
                    Fetched::Failed(err) => err,
                });
            }
        };
        if copy.tiles.root() != offered.root {
            cut_chain_to(&self.dir, accepted_size)?;
            return Err(ReplicaError::Diverged {
                size: accepted_size,
                reason: format!(
                    "its blocks {accepted_size}..{} link and hash but do not give its checkpoint's \
                     root {}: the chain it serves is not the tree it signed",
                    offered.size,
                    hex::encode(offered.root)
                ),
            });
        }
        let _held = self.witness.as_ref().map(Witness::hold).transpose()?;
        let checked = match &self.witness {
            Some(witness) if witness.last(&offered.origin)? != copy.remembered => {
                Err(ReplicaError::Source(SourceError(
                    "the witness cosigned another tree of this log meanwhile (another replica \
                     directory); trying again"
                        .into(),
                )))
            }
            _ => self.check_witness_memory(&offered, &copy),
        };
        if let Err(err) = checked {
            cut_chain_to(&self.dir, accepted_size)?;
            return Err(err);
        }
        for file in &appended {
            file.sync_data().map_err(local(self.dir.display()))?;
        }
        crate::files::sync_dir(&self.dir).map_err(local(self.dir.display()))?;
        copy.tiles
            .flush()
            .map_err(|err| ReplicaError::Local(err.to_string()))?;
        let published = match &accepted {
            // Nothing new: the published checkpoint stays as it is.
            Some(accepted) if accepted.size == offered.size => accepted.clone(),
            _ => self.publish(&offered)?,
        };
        if first_round.exists() {
            std::fs::remove_file(&first_round).map_err(local(first_round.display()))?;
        }
        let copied = offered.size - before;
        self.commit_index(&mut copy);
        self.verified = Some((published.clone(), copy));
        Ok(Round {
            checkpoint: published,
            copied,
        })
    }

    /// Runs rounds one after the other, `interval` apart, until `each` (called with every
    /// round's outcome) returns false or the source diverges or sends invalid data (the copy is
    /// then kept as verified and the error returned). A source that cannot be read is retried,
    /// waiting twice as long each time up to [`MAX_RETRY_WAIT`]. `wait` waits between rounds
    /// and returns false to stop.
    pub fn follow(
        &mut self,
        source: &dyn Source,
        interval: std::time::Duration,
        mut each: impl FnMut(&Result<Round>) -> bool,
        mut wait: impl FnMut(std::time::Duration) -> bool,
    ) -> Result<()> {
        let mut pause = interval;
        loop {
            let outcome = self.round(source);
            let go_on = each(&outcome);
            match outcome {
                Err(err @ (ReplicaError::Diverged { .. } | ReplicaError::BadSource(_))) => {
                    return Err(err)
                }
                Err(ReplicaError::Local(why)) => return Err(ReplicaError::Local(why)),
                Err(ReplicaError::Source(_)) => {
                    pause = (pause * 2).min(MAX_RETRY_WAIT.max(interval))
                }
                Ok(_) => pause = interval,
            }
            if !go_on || !wait(pause) {
                return Ok(());
            }
        }
    }

    /// Scans the copy up to the accepted checkpoint, checks it gives that checkpoint's root,
    /// cuts what lies past it and replays its leaves into the tiles.
    fn open_copy(&self, accepted: Option<&Checkpoint>) -> Result<Copy> {
        let size = accepted.map_or(0, |c| c.size);
        cut_chain_to(&self.dir, size)?;
        let mut tiles = TileWriter::new(&self.tlog);
        if size == 0 {
            return Ok(Copy {
                chain_id: None,
                state: None,
                tail: None,
                tiles,
                remembered: None,
                root_at_remembered: None,
                staged: Vec::new(),
                rebuilt: true,
            });
        }
        let listed = segment::list(&self.dir).map_err(local(self.dir.display()))?;
        let mut check = TileCheck::default();
        let mut settle_error = None;
        let mut last = None;
        let serving = self.index.is_some();
        let mut staged = Vec::new();
        let scan = scan::scan_chain(
            &listed,
            None,
            Some(size - 1),
            false,
            &mut |i, block, at, len| {
                tiles.push(&block.hash);
                last = Some((listed[i].0, at, len));
                if serving {
                    staged.push((listed[i].0, at, len, block.hash));
                }
                if tiles.size().is_multiple_of(SETTLE_EVERY) && settle_error.is_none() {
                    settle_error = tiles.settle(Settle::Repair, &mut check).err();
                }
            },
        )
        .map_err(|err| ReplicaError::Local(format!("the copy in {}: {err}", self.dir.display())))?;
        if let Some(err) = settle_error {
            return Err(ReplicaError::Local(err.to_string()));
        }
        tiles
            .settle(Settle::Repair, &mut check)
            .and_then(|()| tiles.settle_partials(Settle::Repair, &mut check))
            .map_err(|err| ReplicaError::Local(err.to_string()))?;
        tiles.forget_flushed();
        let accepted = accepted.expect("size > 0");
        if scan.state.next_height != size || tiles.root() != accepted.root {
            return Err(ReplicaError::Local(format!(
                "the copy in {} holds {} blocks that do not give the checkpoint of {size} it \
                 accepted (damaged or changed locally); `opdbus-chain verify --dir {}` says where",
                self.dir.display(),
                scan.state.next_height,
                self.dir.display()
            )));
        }
        let (segment, offset, len) = last.expect("size > 0");
        let path = self.dir.join(segment::file_name(segment));
        let mut bytes = vec![0; len as usize];
        crate::files::open_read(&path)
            .and_then(|file| file.read_exact_at(&mut bytes, offset))
            .map_err(local(path.display()))?;
        Ok(Copy {
            chain_id: Some(scan.chain_id),
            state: Some(scan.state),
            tail: Some(Tail {
                segment,
                offset,
                bytes,
            }),
            tiles,
            remembered: None,
            root_at_remembered: None,
            staged,
            rebuilt: true,
        })
    }

    /// Reads the source from the copy's newest record on and appends every block up to `size`.
    /// Returns the segment files written to (to sync).
    fn copy_up_to(
        &self,
        source: &dyn Source,
        copy: &mut Copy,
        size: u64,
    ) -> Result<Vec<File>, Fetched> {
        let mut written: Vec<File> = Vec::new();
        let mut tail = copy.tail.clone();
        let mut next_segment = tail.as_ref().map_or(0, |t| t.segment);
        // The tail is read back even when there is nothing to copy: a source cut or rewritten
        // below a checkpoint that did not move shows there.
        let mut check_tail = tail.is_some();
        while check_tail || copy.state.as_ref().map_or(0, |s| s.next_height) < size {
            check_tail = false;
            let height = copy.state.as_ref().map_or(0, |s| s.next_height);
            let offset = tail.as_ref().map_or(0, |t| t.offset);
            let Some(mut stream) = source.segment(next_segment, offset)? else {
                if tail.is_some() {
                    return Err(Fetched::Diverged);
                }
                return Err(Fetched::Failed(cut_off(height, size)));
            };
            let mut out = match &tail {
                Some(tail) => {
                    let mut theirs = vec![0; tail.bytes.len()];
                    if read_full(&mut stream, &mut theirs)? != theirs.len() || theirs != tail.bytes
                    {
                        return Err(Fetched::Diverged);
                    }
                    let path = self.dir.join(segment::file_name(tail.segment));
                    crate::files::open(
                        crate::files::options(crate::files::FILE_MODE).append(true),
                        &path,
                    )
                    .map_err(|err| Fetched::Failed(local(path.display())(err)))?
                }
                None => self.start_segment(&mut stream, next_segment, copy)?,
            };
            let start = offset
                + tail
                    .as_ref()
                    .map_or(HEADER_LEN as u64, |t| t.bytes.len() as u64);
            // Where the next record goes in the copy's own segment (the copy's segments are cut
            // where the source's are, so the offsets are the same).
            let mut local_at = start;
            let name = segment::file_name(next_segment);
            let mut records = RecordReader::new(stream, start);
            loop {
                if copy.state.as_ref().map_or(0, |s| s.next_height) == size {
                    break;
                }
                let height = copy.state.as_ref().map_or(0, |s| s.next_height);
                let next = records
                    .next_record()
                    .map_err(|err| SourceError(format!("reading {name}: {err}")))?;
                match next {
                    None | Some((_, Parsed::Free)) => break,
                    Some((at, Parsed::Torn)) => {
                        return Err(Fetched::Failed(ReplicaError::BadSource(format!(
                            "{name} ends inside the record of height {height} (offset {at}), \
                             which its checkpoint covers"
                        ))))
                    }
                    Some((at, Parsed::Damaged(why))) => {
                        return Err(Fetched::Failed(ReplicaError::BadSource(format!(
                            "{name} at offset {at}, height {height}: {why}"
                        ))))
                    }
                    Some((at, Parsed::Record { block, .. })) => {
                        self.check(copy, &block, &name, at)?;
                        let bytes = records.record_bytes();
                        out.write_all(bytes)
                            .map_err(|err| Fetched::Failed(local(name.as_str())(err)))?;
                        copy.tail = Some(Tail {
                            segment: next_segment,
                            offset: local_at,
                            bytes: bytes.to_vec(),
                        });
                        if self.index.is_some() {
                            copy.staged.push((
                                next_segment,
                                local_at,
                                bytes.len() as u32,
                                block.hash,
                            ));
                        }
                        local_at += bytes.len() as u64;
                        // Held in memory until the root is checked: no tile of an unverified
                        // block is ever written (32 bytes per leaf, ~2 % more in full tiles).
                        copy.tiles.push(&block.hash);
                        if copy
                            .remembered
                            .is_some_and(|(size, _)| size == copy.tiles.size())
                        {
                            copy.root_at_remembered = Some(copy.tiles.root());
                        }
                        let state = copy.state.as_mut().expect("set by check");
                        state.next_height += 1;
                        state.prev_hash = block.hash;
                        state.prev_timestamp_ns = block.timestamp_ns;
                    }
                }
            }
            written.push(out);
            let now = copy.state.as_ref().map_or(0, |s| s.next_height);
            if now == height && tail.is_none() {
                // A new segment with no record: the source has none past this height.
                return Err(Fetched::Failed(cut_off(height, size)));
            }
            // The rest is in the segment that starts at the next height.
            tail = None;
            next_segment = now;
        }
        Ok(written)
    }

    /// Checks `block` where the copy stands; the first block sets the chain.
    fn check(&self, copy: &mut Copy, block: &Block, name: &str, at: u64) -> Result<(), Fetched> {
        let chain_id = copy.chain_id.expect("a segment header was read");
        let state = copy.state.get_or_insert(ScanState {
            chain_id,
            next_height: 0,
            prev_hash: crate::chain::block::ZERO_HASH,
            prev_timestamp_ns: 0,
        });
        scan::check_block(block, state).map_err(|err| {
            Fetched::Failed(ReplicaError::BadSource(format!(
                "{name} at offset {at}: {err}"
            )))
        })
    }

    /// Reads the header of the source's segment starting at `first` and makes the copy's.
    fn start_segment(
        &self,
        stream: &mut Box<dyn Read>,
        first: u64,
        copy: &mut Copy,
    ) -> Result<File, Fetched> {
        let name = segment::file_name(first);
        let mut header = [0u8; HEADER_LEN];
        if read_full(stream, &mut header)? != HEADER_LEN {
            return Err(Fetched::Failed(ReplicaError::BadSource(format!(
                "{name} is shorter than a segment header"
            ))));
        }
        let id = segment::check_header(&header, first)
            .map_err(|err| Fetched::Failed(ReplicaError::BadSource(format!("{name}: {err}"))))?;
        match copy.chain_id {
            Some(ours) if ours != id => {
                return Err(Fetched::Failed(ReplicaError::BadSource(format!(
                    "{name} belongs to chain {}, the copy is of chain {}",
                    hex::encode(id),
                    hex::encode(ours)
                ))))
            }
            _ => copy.chain_id = Some(id),
        }
        let path = self.dir.join(&name);
        let mut file = crate::files::create_new(&path, crate::files::FILE_MODE)
            .map_err(|err| Fetched::Failed(local(path.display())(err)))?;
        file.write_all(&header)
            .map_err(|err| Fetched::Failed(local(path.display())(err)))?;
        Ok(file)
    }

    /// Where the source parts from the copy: (tree size, why), comparing the source's segments
    /// with the copy's record by record, from the newest segment back.
    fn locate(&self, source: &dyn Source) -> Result<(u64, String)> {
        let listed = segment::list(&self.dir).map_err(local(self.dir.display()))?;
        let mut later = String::from("the source still holds every block of the copy");
        for (first, path) in listed.iter().rev() {
            let name = segment::file_name(*first);
            let Some(mut theirs) = source.segment(*first, 0)? else {
                later = format!(
                    "the source has no segment {name}: blocks from {first} on were cut off"
                );
                continue;
            };
            let mut ours = crate::files::open_read(path).map_err(local(path.display()))?;
            let mut our_header = [0u8; HEADER_LEN];
            ours.read_exact(&mut our_header)
                .map_err(local(path.display()))?;
            let mut header = [0u8; HEADER_LEN];
            if read_full(&mut theirs, &mut header).map_err(Fetched::into_error)? != HEADER_LEN
                || header != our_header
            {
                later = format!("the source's {name} has another header: the chain was replaced");
                continue;
            }
            let mut ours = RecordReader::new(ours, HEADER_LEN as u64);
            let mut theirs = RecordReader::new(theirs, HEADER_LEN as u64);
            let mut matched = 0u64;
            let why = loop {
                let Some((_, Parsed::Record { .. })) =
                    ours.next_record().map_err(local(path.display()))?
                else {
                    break None;
                };
                let height = first + matched;
                match theirs
                    .next_record()
                    .map_err(|err| SourceError(format!("reading {name}: {err}")))?
                {
                    Some((_, Parsed::Record { .. }))
                        if theirs.record_bytes() == ours.record_bytes() =>
                    {
                        matched += 1;
                    }
                    Some((_, Parsed::Record { block, .. })) => {
                        break Some(format!(
                            "its block at height {height} ({}) is not the one the replica \
                             verified: the chain was rewritten or forked there",
                            block.hash_hex()
                        ))
                    }
                    Some((at, Parsed::Damaged(why))) => {
                        break Some(format!(
                            "its {name} at offset {at} (height {height}): {why}"
                        ))
                    }
                    _ => {
                        break Some(format!(
                            "its chain ends before height {height}: blocks from {height} on were \
                             cut off (a truncation)"
                        ))
                    }
                }
            };
            match why {
                Some(why) if matched > 0 => return Ok((first + matched, why)),
                Some(why) => later = why,
                None => return Ok((first + matched, later)),
            }
        }
        Ok((0, later))
    }

    /// Cosigns `checkpoint` and publishes it in `DIR/tlog` (history first, then the file).
    fn publish(&mut self, checkpoint: &Checkpoint) -> Result<Checkpoint> {
        let mut published = checkpoint.clone();
        if let Some(Witness { cosigner, .. }) = &mut self.witness {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            published.note = cosigner
                .cosign(checkpoint, now)
                .map_err(|err| ReplicaError::Local(err.to_string()))?;
        }
        if let Some(witness) = &self.witness {
            witness.remember(checkpoint)?;
        }
        let history = self.tlog.join("checkpoints");
        History::new(&history)
            .append(&published)
            .map_err(local(history.display()))?;
        let path = self.tlog.join("checkpoint");
        crate::files::write_atomic(&path, published.note.as_bytes(), 0o644)
            .map_err(local(path.display()))?;
        Ok(published)
    }
}

impl Replica {
    /// Whether cosigning `offered` keeps the witness consistent with what it cosigned last for
    /// this log, from any replica directory: never a smaller tree, never another root at a size
    /// it cosigned, and the copy must give that root at that size.
    fn check_witness_memory(&self, offered: &Checkpoint, copy: &Copy) -> Result<()> {
        let Some((size, root)) = copy.remembered else {
            return Ok(());
        };
        let parted = |reason: String| ReplicaError::Diverged {
            size: size.min(offered.size),
            reason,
        };
        if offered.size < size {
            // Consistent or not cannot be told from here (the copy does not reach that size):
            // not a divergence of this source, but nothing this witness may cosign. Retried.
            return Err(ReplicaError::Source(SourceError(format!(
                "this witness already cosigned tree size {size} of {} (from another replica \
                 directory); it cosigns nothing smaller, waiting for the source to reach it",
                offered.origin
            ))));
        }
        if copy.root_at_remembered != Some(root) {
            return Err(parted(format!(
                "the copy's tree at size {size} is not the one this witness cosigned for {} \
                 (maybe from another replica directory): a split view",
                offered.origin
            )));
        }
        Ok(())
    }
}

/// A witness: its cosigning key, and what it cosigned last for each log in a file beside the
/// key (`<key>.cosigned`, one JSON object: origin → size and root), locked while a round runs.
/// So one key never cosigns two inconsistent checkpoints of a log, whichever replica directory
/// asks (c2sp.org/tlog-cosignature: "the largest consistent tree the cosigner has observed").
pub struct Witness {
    cosigner: Cosigner,
    state: PathBuf,
    lock: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Cosigned {
    size: u64,
    root: String,
}

impl Witness {
    /// The witness whose key file is `key`.
    pub fn open(cosigner: Cosigner, key: &Path) -> Result<Witness> {
        let mut name = key.as_os_str().to_owned();
        name.push(".cosigned");
        let state = PathBuf::from(name);
        let mut lock = state.as_os_str().to_owned();
        lock.push(".lock");
        Ok(Witness {
            cosigner,
            state,
            lock: PathBuf::from(lock),
        })
    }

    /// Holds the witness for one round (waits while a round of another replica directory
    /// with the same key runs): what it remembers is read and written under it.
    fn hold(&self) -> Result<nix::fcntl::Flock<File>> {
        let file = crate::files::open(
            crate::files::options(0o600)
                .create(true)
                .truncate(false)
                .write(true),
            &self.lock,
        )
        .map_err(local(self.lock.display()))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, err)| ReplicaError::Local(format!("{}: {err}", self.lock.display())))
    }

    fn all(&self) -> Result<std::collections::BTreeMap<String, Cosigned>> {
        match crate::files::read(&self.state) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| ReplicaError::Local(format!("{}: {err}", self.state.display()))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Default::default()),
            Err(err) => Err(local(self.state.display())(err)),
        }
    }

    fn last(&self, origin: &str) -> Result<Option<(u64, Hash)>> {
        let Some(cosigned) = self.all()?.remove(origin) else {
            return Ok(None);
        };
        let root = crate::chain::block::parse_hash(&cosigned.root).ok_or_else(|| {
            ReplicaError::Local(format!("{}: a root is not a hash", self.state.display()))
        })?;
        Ok(Some((cosigned.size, root)))
    }

    fn remember(&self, checkpoint: &Checkpoint) -> Result<()> {
        let mut all = self.all()?;
        all.insert(
            checkpoint.origin.clone(),
            Cosigned {
                size: checkpoint.size,
                root: hex::encode(checkpoint.root),
            },
        );
        let bytes =
            serde_json::to_vec_pretty(&all).map_err(|err| ReplicaError::Local(err.to_string()))?;
        crate::files::write_atomic(&self.state, &bytes, 0o600).map_err(local(self.state.display()))
    }
}

/// Where each verified block of a copy is, to read it back (the daemon serves its copies'
/// blocks): per height its segment, offset and record length, and the height of each hash.
/// Only what a checkpoint covered is in it. 84 bytes a block and the hash map's share.
#[derive(Default)]
pub struct CopyIndex {
    dir: PathBuf,
    locations: Vec<(u64, u64, u32)>,
    by_hash: std::collections::HashMap<Hash, u64>,
    hashes: Vec<Hash>,
}

/// A copy's index, shared by its replica (which extends it after each round) and readers.
pub type SharedIndex = std::sync::Arc<parking_lot::RwLock<CopyIndex>>;

impl CopyIndex {
    /// The verified tree size: blocks `0..size` can be read.
    pub fn size(&self) -> u64 {
        self.locations.len() as u64
    }

    pub fn height_of(&self, hash: &Hash) -> Option<u64> {
        self.by_hash.get(hash).copied()
    }

    /// The hash of the verified block at `height`.
    pub fn hash_at(&self, height: u64) -> Option<Hash> {
        self.hashes.get(height as usize).copied()
    }

    /// The copy's chain directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The copy's tlog directory (its tiles and cosigned checkpoint).
    pub fn tlog_dir(&self) -> PathBuf {
        self.dir.join("tlog")
    }

    /// Where the record of `height` is: (segment file, offset, length); `None` past the
    /// verified size. Read it with [`read_block`] after the index's lock is let go.
    pub fn location(&self, height: u64) -> Option<(PathBuf, u64, u32)> {
        let &(segment, offset, len) = self.locations.get(height as usize)?;
        Some((self.dir.join(segment::file_name(segment)), offset, len))
    }
}

/// The block of `height` at `location` ([`CopyIndex::location`]), checked again (its record's
/// hash): a copy changed on disk since it was verified is an error, never a wrong block.
pub fn read_block(location: (PathBuf, u64, u32), height: u64) -> Result<Block, String> {
    let (path, offset, len) = location;
    let mut bytes = vec![0; len as usize];
    crate::files::open_read(&path)
        .and_then(|file| file.read_exact_at(&mut bytes, offset))
        .map_err(|err| format!("{}: {err}", path.display()))?;
    match segment::parse_complete(&bytes) {
        Parsed::Record { block, .. } if block.height == height => Ok(block),
        _ => Err(format!(
            "{} at offset {offset}: the record of height {height} no longer checks out \
             (changed on disk since it was verified)",
            path.display()
        )),
    }
}

impl CopyIndex {
    fn push(&mut self, segment: u64, offset: u64, len: u32, hash: &Hash) {
        self.by_hash.insert(*hash, self.locations.len() as u64);
        self.locations.push((segment, offset, len));
        self.hashes.push(*hash);
    }
}

/// How copying stopped early.
enum Fetched {
    /// The source does not continue the copy: locate where it parts.
    Diverged,
    Failed(ReplicaError),
}

impl From<SourceError> for Fetched {
    fn from(err: SourceError) -> Fetched {
        Fetched::Failed(ReplicaError::Source(err))
    }
}

impl Fetched {
    fn into_error(self) -> ReplicaError {
        match self {
            Fetched::Diverged => ReplicaError::BadSource("unexpected end of data".into()),
            Fetched::Failed(err) => err,
        }
    }
}

/// The source's checkpoint covers `size` blocks but its chain ends before `height`, past what
/// the copy verified: the source contradicts itself (the copy has nothing to part from there).
fn cut_off(height: u64, size: u64) -> ReplicaError {
    ReplicaError::BadSource(format!(
        "its checkpoint covers {size} blocks but its chain ends before height {height} (cut \
         off after the checkpoint, or the connection ended early)"
    ))
}

/// Reads until `buf` is full or the stream ends; how many bytes were read.
fn read_full(stream: &mut dyn Read, buf: &mut [u8]) -> Result<usize, Fetched> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(SourceError(format!("reading: {err}")).into()),
        }
    }
    Ok(filled)
}

/// Cuts the chain in `dir` to its first `size` blocks: the segment holding height `size` is
/// truncated before it, later segments removed (synced).
pub fn cut_chain_to(dir: &Path, size: u64) -> Result<()> {
    let listed = segment::list(dir).map_err(local(dir.display()))?;
    let mut removed = false;
    for (first, path) in listed.iter().rev() {
        if *first >= size {
            std::fs::remove_file(path).map_err(local(path.display()))?;
            removed = true;
            continue;
        }
        // The segment holding the last block to keep: cut after it.
        let end = end_of_height(path, *first, size - 1)?;
        let file = crate::files::open(
            crate::files::options(crate::files::FILE_MODE).write(true),
            path,
        )
        .map_err(local(path.display()))?;
        let len = file.metadata().map_err(local(path.display()))?.len();
        if len > end {
            file.set_len(end).map_err(local(path.display()))?;
            file.sync_all().map_err(local(path.display()))?;
        }
        break;
    }
    if removed {
        crate::files::sync_dir(dir).map_err(local(dir.display()))?;
    }
    Ok(())
}

/// Whether `dir` is a replica's copy: segments and a verified checkpoint in `tlog/`, and no
/// `chain/` (a backup or snapshot holds its chain there).
pub fn is_copy(dir: &Path) -> bool {
    !dir.join("chain").exists()
        && dir.join("tlog").join("checkpoint").is_file()
        && segment::list(dir).is_ok_and(|listed| !listed.is_empty())
}

/// The file offset just past the record of `height` in the segment `path` (first height
/// `first`).
fn end_of_height(path: &Path, first: u64, height: u64) -> Result<u64> {
    let mut file = crate::files::open_read(path).map_err(local(path.display()))?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(HEADER_LEN as u64))
        .map_err(local(path.display()))?;
    let mut records = RecordReader::new(file, HEADER_LEN as u64);
    let mut end = HEADER_LEN as u64;
    for h in first..=height {
        match records.next_record().map_err(local(path.display()))? {
            Some((at, Parsed::Record { .. })) => end = at + records.record_bytes().len() as u64,
            _ => {
                return Err(ReplicaError::Local(format!(
                    "{} holds no record of height {h}",
                    path.display()
                )))
            }
        }
    }
    Ok(end)
}
