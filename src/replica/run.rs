//! The replicas a daemon follows (`--replica-of`): one thread each ("opdbus-replica"), running
//! [`Replica::follow`] into its own directory, with a status for `ReplicaStatus` and a
//! notice for the `ReplicaDiverged` signal and the journal when a source diverges (the thread
//! then stops, the copy kept as verified, until an operator acts and restarts the daemon).
//!
//! With a shared cache tier (`OPDBUS_SHARED_CACHE`), each replica also gives the blocks it
//! verified to that tier, compressed as the source's own cache would (through a block cache of
//! its own beside the copy, `<copy>.cache`): a source, or a host restored from the copy, whose
//! cache is empty then reads them there before its chain.

use super::http::HttpSource;
use super::ssh::SshSource;
use super::{Replica, ReplicaError, SharedIndex, Source, Witness};
use crate::cache::shared::SharedCacheUrl;
use crate::cache::{BlockCache, CacheOptions};
use crate::config::ReplicaSpec;
use crate::tlog::cosign::Cosigner;
use crate::tlog::SigningKey;
use parking_lot::RwLock;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// ssh for `--replica-of` (and `replicate`'s default): no prompt, and a dead connection is
/// noticed within half a minute instead of hanging a round.
pub const DEFAULT_SSH_COMMAND: &str =
    "ssh -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=10 -o ServerAliveCountMax=3";

/// Time between two rounds of a following replica (docs/benchmarks.md: p99 lag ~1.6 s with
/// the source's 1 s checkpoints).
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// How a replica stands.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub source: String,
    pub dir: PathBuf,
    /// The tree size the copy is verified up to.
    pub verified_size: u64,
    /// The size of the newest checkpoint the source served.
    pub source_size: u64,
    /// When the copy last reached the source's newest checkpoint.
    pub caught_up_at: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Where and why the source diverged: the replica stopped there.
    pub diverged: Option<(u64, String)>,
}

impl Status {
    /// Blocks the copy lacks of the source's newest checkpoint.
    pub fn lag_blocks(&self) -> u64 {
        self.source_size.saturating_sub(self.verified_size)
    }

    /// Seconds since the copy last reached the source's newest checkpoint.
    pub fn lag_seconds(&self) -> Option<f64> {
        self.caught_up_at
            .and_then(|at| at.elapsed().ok())
            .map(|lag| lag.as_secs_f64())
    }
}

/// A divergence, for the signal and the journal.
#[derive(Clone, Debug)]
pub struct Diverged {
    pub source: String,
    pub size: u64,
    pub reason: String,
}

/// The running replicas; cheap to clone.
#[derive(Clone)]
pub struct Replicas {
    statuses: Vec<Arc<RwLock<Status>>>,
    /// Each copy's name (its directory's) and index, for serving its blocks.
    indexes: Vec<(String, super::SharedIndex)>,
    /// Dropped to stop: every thread's receiver then reports the channel closed.
    stop: Arc<parking_lot::Mutex<Option<crossbeam_channel::Sender<()>>>>,
    threads: Arc<parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>>>,
    diverged: tokio::sync::broadcast::Sender<Diverged>,
}

impl Replicas {
    /// Starts one thread per source, each into `dir/<source's host>`, cosigning with the key at
    /// `witness_key` (made when missing).
    pub fn start(
        specs: &[ReplicaSpec],
        dir: &Path,
        witness_key: &Path,
        numa: Option<Arc<crate::numa::NumaTopology>>,
        shared: Option<(SharedCacheUrl, Duration)>,
    ) -> Result<Replicas, String> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let (diverged, _) = tokio::sync::broadcast::channel(16);
        let mut replicas = Replicas {
            statuses: Vec::new(),
            indexes: Vec::new(),
            stop: Arc::new(parking_lot::Mutex::new(Some(stop))),
            threads: Arc::default(),
            diverged,
        };
        if specs.is_empty() {
            return Ok(replicas);
        }
        let name = format!("{}/opdbus-witness", crate::transparency::host_name());
        let (key, made) = SigningKey::load_or_create(witness_key, &name)
            .map_err(|err| format!("the witness key: {err}"))?;
        if made {
            tracing::info!(
                key = %witness_key.display(),
                VKEY = %Cosigner::new(&key).vkey(),
                "made a new witness key; its verifier key: {}",
                Cosigner::new(&key).vkey()
            );
        }
        for spec in specs {
            let name = dir_name(&spec.source);
            let replica_dir = dir.join(&name);
            let index = super::SharedIndex::default();
            replicas.indexes.push((name, index.clone()));
            if witness_key.starts_with(&replica_dir) {
                return Err(format!(
                    "the witness key {} is inside the replica directory {}",
                    witness_key.display(),
                    replica_dir.display()
                ));
            }
            let source = source_of(&spec.source)?;
            let status = Arc::new(RwLock::new(Status {
                source: redacted(&spec.source),
                dir: replica_dir.clone(),
                ..Status::default()
            }));
            replicas.statuses.push(status.clone());
            let run = Run {
                numa: numa.clone(),
                url: spec.source.clone(),
                index,
                source,
                vkey: spec.vkey.clone(),
                dir: replica_dir,
                witness: Cosigner::new(&key),
                witness_key: witness_key.to_path_buf(),
                status,
                stopped: stopped.clone(),
                diverged: replicas.diverged.clone(),
                shared: shared.clone(),
            };
            let thread = std::thread::Builder::new()
                .name("opdbus-replica".into())
                .spawn(move || run.run())
                .map_err(|err| format!("starting a replica thread: {err}"))?;
            replicas.threads.lock().push(thread);
        }
        Ok(replicas)
    }

    /// Each copy's directory name and the index its blocks are read through.
    pub fn indexes(&self) -> &[(String, super::SharedIndex)] {
        &self.indexes
    }

    /// How each replica stands, in the order of `--replica-of`.
    pub fn statuses(&self) -> Vec<Status> {
        self.statuses.iter().map(|s| s.read().clone()).collect()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Diverged> {
        self.diverged.subscribe()
    }

    /// Stops every thread: each ends after its current round, waited for up to `grace`; a
    /// thread still in a round then (a slow source) is left to the process's exit, which cuts
    /// the round short (the next round cuts what it appended: nothing verified is lost).
    pub fn stop(&self, grace: Duration) {
        self.stop.lock().take();
        let threads = std::mem::take(&mut *self.threads.lock());
        let deadline = std::time::Instant::now() + grace;
        for thread in threads {
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("a replica is still in a round at the stop; it is cut short");
            }
        }
    }
}

/// One replica's thread.
struct Run {
    numa: Option<Arc<crate::numa::NumaTopology>>,
    url: String,
    index: super::SharedIndex,
    source: Box<dyn Source + Send>,
    vkey: String,
    dir: PathBuf,
    witness: Cosigner,
    witness_key: PathBuf,
    status: Arc<RwLock<Status>>,
    stopped: crossbeam_channel::Receiver<()>,
    diverged: tokio::sync::broadcast::Sender<Diverged>,
    /// The shared cache tier the verified blocks are given to.
    shared: Option<(SharedCacheUrl, Duration)>,
}

/// Where a replica's uploads to the shared tier stand.
enum Uploading {
    /// Not opened yet (or the copy has no genesis block yet).
    NotYet,
    To(Box<Upload>),
    /// Opening failed (logged).
    GaveUp,
}

/// A copy's verified blocks as the chain index of its cache.
struct CopyLinks(SharedIndex);

impl crate::cache::ChainIndex for CopyLinks {
    fn hash_at(&self, height: u64) -> Option<crate::chain::block::Hash> {
        self.0.read().hash_at(height)
    }
    fn height_of(&self, hash: &crate::chain::block::Hash) -> Option<u64> {
        self.0.read().height_of(hash)
    }
}

/// Gives a copy's verified blocks to the shared cache tier.
struct Upload {
    cache: BlockCache,
    /// Every verified block below this height was handed to the cache.
    next: u64,
}

impl Upload {
    /// A block cache in `<copy>.cache` of the copy's chain, with its links and the shared
    /// tier; `Ok(None)` while the copy has no genesis block yet.
    fn open(
        copy: &Path,
        index: &SharedIndex,
        (url, timeout): &(SharedCacheUrl, Duration),
    ) -> Result<Option<Upload>, String> {
        let chain_id = match crate::chain::rewrite::chain_id(copy) {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(None),
            Err(err) => return Err(err.to_string()),
        };
        let dir = PathBuf::from(format!("{}.cache", copy.display()));
        // The daemon writes there as root: its own directory, never one reached by a link.
        for checked in [dir.clone(), dir.join("packs"), dir.join("dict")] {
            if std::fs::symlink_metadata(&checked).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!(
                    "{} is a symbolic link; remove it (the daemon makes the directory)",
                    checked.display()
                ));
            }
        }
        if !dir.exists() {
            crate::files::create_dir(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        }
        crate::files::check_dir(&dir).map_err(|err| err.to_string())?;
        let mut options = CacheOptions::new(dir);
        options.hot_bytes = 1 << 20;
        let cache = BlockCache::open(&options).map_err(|err| err.to_string())?;
        cache.set_links(Arc::new(CopyLinks(index.clone())));
        cache
            .attach_shared(url.clone(), *timeout, &chain_id)
            .map_err(|err| err.to_string())?;
        Ok(Some(Upload { cache, next: 0 }))
    }

    /// Hands the blocks verified since the last call to the cache, which stores those it
    /// lacks and uploads them (blocks it has were uploaded before).
    fn verified(&mut self, index: &SharedIndex) {
        loop {
            let location = index.read().location(self.next);
            let Some(location) = location else { break };
            match super::read_block(location, self.next) {
                Ok(block) => {
                    if let Err(err) = self.cache.put(&block) {
                        tracing::debug!(%err, height = self.next, "replica: a block not cached");
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "replica: a verified block is not readable");
                    break;
                }
            }
            self.next += 1;
            if self.next.is_multiple_of(256) {
                self.cache.flush_shared_waiting();
            }
        }
        self.cache.flush_shared_waiting();
    }
}

impl Run {
    fn run(self) {
        if let Some(numa) = &self.numa {
            let (interface, node) = nic_of(&self.url, numa.options());
            numa.place_replica_thread(&self.shown(), interface, node);
        }
        let wait = |pause: Duration| -> bool {
            matches!(
                self.stopped.recv_timeout(pause),
                Err(crossbeam_channel::RecvTimeoutError::Timeout)
            )
        };
        loop {
            match self.follow_once(&wait) {
                // Stopped, or diverged (logged, reported): the thread ends.
                None => return,
                // The directory cannot be opened or written for now (full, in use): retried.
                Some(err) => {
                    self.fail(&err);
                    if !wait(super::MAX_RETRY_WAIT) {
                        return;
                    }
                }
            }
        }
    }

    /// Gives what the copy verified to the shared tier (opening the uploader on the first
    /// round that has a genesis block; a failure to open is logged once and not retried until
    /// the copy is opened again).
    fn upload(&self, upload: &mut Uploading) {
        let Some(shared) = &self.shared else { return };
        if let Uploading::NotYet = upload {
            match Upload::open(&self.dir, &self.index, shared) {
                Ok(Some(opened)) => *upload = Uploading::To(Box::new(opened)),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(
                        SOURCE = %self.shown(),
                        %err,
                        "replica: cannot give its blocks to the shared cache: {err}"
                    );
                    *upload = Uploading::GaveUp;
                }
            }
        }
        if let Uploading::To(upload) = upload {
            upload.verified(&self.index);
        }
    }

    /// Opens the copy and follows the source until a stop (`None`), a divergence (reported,
    /// `None`) or a local error, opening included (returned).
    fn follow_once(&self, wait: &dyn Fn(Duration) -> bool) -> Option<ReplicaError> {
        // The directory may be in use (another replicate) or unusable for now: returned, and
        // retried by the caller.
        let mut replica = match Witness::open(self.witness.clone(), &self.witness_key)
            .and_then(|witness| Replica::open(&self.dir, &self.vkey, Some(witness)))
        {
            Ok(replica) => replica,
            Err(err) => return Some(err),
        };
        replica.serve(self.index.clone());
        if let Ok(Some(accepted)) = replica.accepted() {
            let mut status = self.status.write();
            status.verified_size = accepted.size;
            status.source_size = status.source_size.max(accepted.size);
        }
        let mut failing = false;
        let mut upload = Uploading::NotYet;
        let ended = replica.follow(
            self.source.as_ref(),
            FOLLOW_INTERVAL,
            |outcome| {
                match outcome {
                    Ok(round) => {
                        self.upload(&mut upload);
                        let mut status = self.status.write();
                        status.verified_size = round.checkpoint.size;
                        status.source_size = round.checkpoint.size;
                        status.caught_up_at = Some(SystemTime::now());
                        status.last_error = None;
                        drop(status);
                        if failing {
                            failing = false;
                            tracing::info!(SOURCE = %self.shown(), "replica: the source is read again");
                        }
                    }
                    Err(ReplicaError::Source(err)) => {
                        if !failing {
                            let err = self.scrub(&err.to_string());
                            tracing::warn!(
                                SOURCE = %self.shown(),
                                %err,
                                "replica: cannot read the source, retrying: {err}"
                            );
                        }
                        failing = true;
                        self.status.write().last_error = Some(self.scrub(&err.to_string()));
                    }
                    Err(_) => {}
                }
                true
            },
            wait,
        );
        match ended {
            Ok(()) => None,
            Err(err @ (ReplicaError::Diverged { .. } | ReplicaError::BadSource(_))) => {
                let size = match &err {
                    ReplicaError::Diverged { size, .. } => *size,
                    _ => self.status.read().verified_size,
                };
                let reason = self.scrub(&err.to_string());
                tracing::error!(
                    message_id = crate::journal::REPLICA_DIVERGED,
                    SOURCE = %self.shown(),
                    REPLICA_DIR = %self.dir.display(),
                    SIZE = size,
                    REASON = %reason,
                    "replica of {} stopped at tree size {size}: {reason}; the copy keeps what it \
                     verified (docs/operations.md, Replicas)",
                    self.shown()
                );
                let mut status = self.status.write();
                status.diverged = Some((size, reason.clone()));
                status.last_error = Some(reason.clone());
                drop(status);
                let _ = self.diverged.send(Diverged {
                    source: self.shown(),
                    size,
                    reason,
                });
                None
            }
            Err(err) => Some(err),
        }
    }

    /// The source as everyone may see it (ReplicaStatus, NumaInfo and the signal are open to
    /// all local users): without a password.
    fn shown(&self) -> String {
        redacted(&self.url)
    }

    /// `text` without the source URL's password (transport errors quote the URL).
    fn scrub(&self, text: &str) -> String {
        match password(&self.url) {
            Some(secret) if !secret.is_empty() => text.replace(secret, "***"),
            _ => text.to_string(),
        }
    }

    fn fail(&self, err: &ReplicaError) {
        let err = self.scrub(&err.to_string());
        tracing::error!(
            SOURCE = %self.shown(),
            REPLICA_DIR = %self.dir.display(),
            %err,
            "replica of {}: {err}",
            self.shown()
        );
        self.status.write().last_error = Some(err);
    }
}

/// The source for a `--replica-of` URL (ssh with `ssh -o BatchMode=yes` and the
/// `opdbus-chain` on the source's PATH).
fn source_of(url: &str) -> Result<Box<dyn Source + Send>, String> {
    if url.starts_with("ssh://") {
        SshSource::new(url, DEFAULT_SSH_COMMAND, "opdbus-chain")
            .map(|s| Box::new(s) as Box<dyn Source + Send>)
            .map_err(|err| err.to_string())
    } else {
        HttpSource::new(url, None)
            .map(|s| Box::new(s) as Box<dyn Source + Send>)
            .map_err(|err| err.to_string())
    }
}

/// The interface the kernel routes `url`'s host through, and its device's NUMA node.
fn nic_of(url: &str, options: &crate::numa::NumaOptions) -> (Option<String>, Option<u32>) {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let default_port = if url.starts_with("https://") {
        443
    } else if url.starts_with("ssh://") {
        22
    } else {
        80
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().unwrap_or(default_port)),
        None => (host_port, default_port),
    };
    let address = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| {
            addresses.find_map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
        });
    let table = std::fs::read_to_string(&options.route_table).unwrap_or_default();
    let interface = address.and_then(|address| crate::numa::nic::route_interface(&table, address));
    let node = interface
        .as_deref()
        .and_then(|iface| crate::numa::nic::interface_node(&options.sysfs_net_root, iface));
    (interface, node)
}

/// The password in `url`'s `user:password@`, if any.
fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let (user, _) = authority.rsplit_once('@')?;
    user.split_once(':').map(|(_, password)| password)
}

/// `url` without a password (`user:password@` becomes `user@`): ReplicaStatus is open to all.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}/{path}")
        }
        _ => url.to_string(),
    }
}

/// A directory name for a source: its host (and port), letters, digits, `.`, `-` and `_`,
/// then 8 hex digits of the URL's SHA-256: the same source always gets the same directory,
/// whatever the order of `OPDBUS_REPLICA_OF`, and two sources on one host never share one.
fn dir_name(url: &str) -> String {
    let hash = hex::encode(&crate::chain::block::sha256(url.as_bytes())[..4]);
    format!("{}-{hash}", host_part(url))
}

fn host_part(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match name.trim_matches('.') {
        "" => "source".into(),
        name => name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_directory_named_after_its_host_and_url() {
        assert_eq!(
            host_part("https://host1.example.org/chain/"),
            "host1.example.org"
        );
        assert_eq!(host_part("http://127.0.0.1:8080/"), "127.0.0.1_8080");
        assert_eq!(
            host_part("ssh://replica@host2/var/lib/op-dbus/blockchain"),
            "host2"
        );
        assert_eq!(host_part("https://../"), "source");
        let one = dir_name("https://host1.example.org/a/");
        assert!(
            one.starts_with("host1.example.org-") && one.len() == "host1.example.org-".len() + 8
        );
        assert_ne!(one, dir_name("https://host1.example.org/b/"));
        assert_eq!(one, dir_name("https://host1.example.org/a/"));
    }

    #[test]
    fn a_password_in_a_source_url_is_not_shown() {
        assert_eq!(redacted("https://u:secret@h/x/"), "https://u@h/x/");
        assert_eq!(
            redacted("ssh://replica@h/var/lib"),
            "ssh://replica@h/var/lib"
        );
        assert_eq!(redacted("https://h/"), "https://h/");
    }
}
