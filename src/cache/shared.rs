//! The shared tier: blocks in a Redis server or a Redis Cluster (or Valkey), shared by every
//! daemon pointed at it, looked up after RAM and the local disk tier and before the chain.
//!
//! What it stores, per chain (the 16-byte chain id of the genesis block, in hex):
//!
//! ```text
//! opdbus:<chain id>:b:<block hash>   the zstd frame the disk tier wrote for the block
//! opdbus:<chain id>:d:<dict id>      a dictionary such a frame names (8 hex digits)
//! ```
//! Every value is written once (`SET … NX`) and never overwritten; there is no expiry: what
//! goes is Redis's choice (`maxmemory` and `maxmemory-policy`, e.g. `allkeys-lru`). Keys carry
//! no hash tag, so a cluster spreads them over all its slots.
//!
//! Promises:
//! - Not trusted: a value is read with `GETRANGE` up to [`MAX_FRAME`] bytes (a dictionary up
//!   to [`MAX_DICTIONARY`]), decompressed within the chain's bound on a block, decoded and
//!   re-hashed, and used only if its hash is the one asked for. Anything else is counted
//!   (`shared_dropped`), logged, and the lookup goes on to the chain; it is never served and
//!   never stored locally. A dictionary must carry the id the frame names.
//! - Never in the way of writers, nor of the cache thread: the cache thread queues the frames
//!   it stored and hands each batch to the tier's own thread ("shared-cache"), which sends
//!   what waits in one pipeline; with [`UPLOADS_WAITING`] batches waiting a batch is dropped
//!   (`shared_skipped`), never waited for. Every command has a deadline
//!   (`OPDBUS_SHARED_CACHE_TIMEOUT`); a connection failure sets the tier aside for a backoff
//!   (1 s, doubling to 30 s), during which reads skip it and uploads are dropped. One warning
//!   per outage, one line when it works again. An error reply costs only its command.
//! - Bounded: at most [`MAX_CONNECTIONS`] idle connections are kept; dictionaries fetched from
//!   the shared tier are kept in RAM up to [`MAX_FETCHED_DICTIONARIES`].

use super::dictionary::Dictionaries;
use super::disk::{decode_frame, FrameError, Links};
use crate::chain::block::{Block, Hash};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zstd::dict::DecoderDictionary;

/// Default deadline of one command (`OPDBUS_SHARED_CACHE_TIMEOUT`); connecting may take
/// [`CONNECT_FACTOR`] times as long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
/// Connecting (TCP, TLS, AUTH) may take this many command deadlines.
const CONNECT_FACTOR: u32 = 10;
/// The largest value read as a block's frame: the chain's largest block, plus zstd's worst
/// case growth.
pub const MAX_FRAME: usize = crate::chain::segment::MAX_BODY_LEN + 4096;
/// The largest value read as a dictionary (ours are at most 16 KiB).
pub const MAX_DICTIONARY: usize = 256 * 1024;
/// Idle connections kept for readers and the uploader.
pub const MAX_CONNECTIONS: usize = 8;
/// Dictionaries fetched from the shared tier kept in RAM (then forgotten and fetched again).
pub const MAX_FETCHED_DICTIONARIES: usize = 64;
/// Uploads waiting for the cache thread's next flush; past this they are flushed at once.
const FLUSH_AT: usize = 512;
/// Batches waiting for the uploader thread; past this a batch is dropped (skipped).
const UPLOADS_WAITING: usize = 64;
/// Blocks between two uploads of the dictionaries in use (in case Redis evicted them).
const RESEND_DICTIONARIES_EVERY: u64 = 4096;
/// Blocks whose shared value was refused, remembered so as not to fetch it again.
const MAX_REFUSED_REMEMBERED: usize = 4096;
/// Error replies of Redis (OOM, NOPERM, WRONGTYPE…) are logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a shared cache address was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SharedCacheUrlError(String);

/// A parsed `OPDBUS_SHARED_CACHE` address: one server, or the seed nodes of a cluster.
#[derive(Clone)]
pub struct SharedCacheUrl {
    /// As written, for errors (the password is left out there).
    text: String,
    target: Target,
}

#[derive(Clone)]
enum Target {
    One(Box<redis::Client>),
    /// The seed nodes' URLs; the client is built with the deadlines ([`SharedTier::new`]).
    Cluster(Vec<String>),
}

/// A cluster client for `nodes` with these deadlines.
fn cluster_client(
    nodes: &[String],
    timeout: Duration,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    redis::cluster::ClusterClient::builder(nodes.to_vec())
        .connection_timeout(timeout * CONNECT_FACTOR)
        .response_timeout(timeout)
        // Bounded: a node failing over is a miss now, not a stall of the reader (the library
        // would otherwise wait 1.28 s or more between tries).
        .retries(1)
        .min_retry_wait(1)
        .max_retry_wait(timeout.as_millis().clamp(2, 1000) as u64)
        .build()
}

impl std::fmt::Debug for SharedCacheUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl SharedCacheUrl {
    /// Parses `redis://`, `rediss://` (TLS), `valkey://`, `valkeys://`, `redis+unix:///path`
    /// (one server), or `redis+cluster://` / `rediss+cluster://` followed by a comma-separated
    /// list of `host:port` seed nodes (a cluster). A user and password go before the first
    /// host (`redis+cluster://user:secret@h1:7000,h2:7001`); a `/db` number after the last.
    pub fn parse(text: &str) -> Result<SharedCacheUrl, SharedCacheUrlError> {
        let refuse = |why: String| SharedCacheUrlError(format!("{}: {why}", redact(text)));
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            refuse("not a URL (redis://host:port or redis+cluster://h1:p1,h2:p2)".into())
        })?;
        let target = match scheme {
            "redis+cluster" | "rediss+cluster" | "valkey+cluster" | "valkeys+cluster" => {
                let node_scheme = scheme.trim_end_matches("+cluster");
                let (authority, path) = match rest.split_once('/') {
                    Some((authority, path)) => (authority, format!("/{path}")),
                    None => (rest, String::new()),
                };
                let (user, hosts) = match authority.rsplit_once('@') {
                    Some((user, hosts)) => (format!("{user}@"), hosts),
                    None => (String::new(), authority),
                };
                let nodes: Vec<String> = hosts
                    .split(',')
                    .map(|host| format!("{node_scheme}://{user}{host}{path}"))
                    .collect();
                if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
                    return Err(refuse("names no seed node (h1:p1,h2:p2,…)".into()));
                }
                cluster_client(&nodes, DEFAULT_TIMEOUT).map_err(|err| refuse(err.to_string()))?;
                Target::Cluster(nodes)
            }
            "redis" | "rediss" | "valkey" | "valkeys" | "redis+unix" | "valkey+unix"
            | "unix" => Target::One(Box::new(
                redis::Client::open(text).map_err(|err| refuse(err.to_string()))?,
            )),
            other => {
                return Err(refuse(format!(
                    "unknown scheme {other:?} (redis, rediss, redis+unix, redis+cluster, rediss+cluster, or the valkey ones)"
                )))
            }
        };
        Ok(SharedCacheUrl {
            text: text.to_string(),
            target,
        })
    }

    /// The address without its password (shown to every local user).
    pub fn redacted(&self) -> String {
        redact(&self.text)
    }
}

/// `url` with the password of its `user:password@` left out. The user part ends at the last
/// `@` of the whole address, so a password holding `/` or `@` is left out too.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let url = match rest.rsplit_once('@') {
        Some((user, hosts)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{hosts}")
        }
        None => url.to_string(),
    };
    // A Unix socket's password goes in the query: `…/redis.sock?user=u&pass=secret`.
    match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _))
                        if key.eq_ignore_ascii_case("pass")
                            || key.eq_ignore_ascii_case("password") =>
                    {
                        format!("{key}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url,
    }
}

/// What connections are made from.
enum Client {
    One(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// One connection, to a server or a cluster.
enum Connection {
    One(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Connection {
    fn open(client: &Client, timeout: Duration) -> redis::RedisResult<Connection> {
        Ok(match client {
            Client::One(client) => {
                let connection = client.get_connection_with_timeout(timeout * CONNECT_FACTOR)?;
                connection.set_read_timeout(Some(timeout))?;
                connection.set_write_timeout(Some(timeout))?;
                Connection::One(connection)
            }
            Client::Cluster(client) => {
                let connection = client.get_connection()?;
                connection.set_read_timeout(Some(timeout))?;
                connection.set_write_timeout(Some(timeout))?;
                Connection::Cluster(Box::new(connection))
            }
        })
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::One(connection) => cmd.query(connection),
            Connection::Cluster(connection) => cmd.query(connection.as_mut()),
        }
    }

    /// Sends every `SET key value NX` of `uploads` in one pipeline; returns what each got.
    /// On a cluster, an error reply fails the whole pipeline (the client's way).
    fn set_new(&mut self, uploads: &[(String, Vec<u8>)]) -> redis::RedisResult<Vec<redis::Value>> {
        let replies: Vec<redis::Value> = match self {
            Connection::One(connection) => {
                let mut pipe = redis::pipe();
                for (key, value) in uploads {
                    pipe.cmd("SET").arg(key).arg(value).arg("NX");
                }
                // Each reply on its own: one refused SET (OOM, a key of another type) does
                // not hide what the others did.
                pipe.ignore_errors().query(connection)?
            }
            Connection::Cluster(connection) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for (key, value) in uploads {
                    pipe.cmd("SET").arg(key).arg(value).arg("NX");
                }
                pipe.query(connection.as_mut())?
            }
        };
        Ok(replies)
    }
}

/// The shared tier's counters (see [`super::CacheStats`]).
#[derive(Default)]
pub struct SharedCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_written: AtomicU64,
    pub dropped: AtomicU64,
    pub skipped: AtomicU64,
}

/// Whether the tier works, and when to try again if not.
#[derive(Default)]
struct Health {
    /// Failures since the outage began (`None`: no outage).
    failures: Option<u64>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What waits for the next upload: `(key, value)` in the order they must land (a
/// dictionary before the first frame that needs it).
#[derive(Default)]
struct Pending {
    uploads: Vec<(String, Vec<u8>)>,
    /// Blocks among `uploads` (for `shared_skipped` when they are dropped).
    blocks: u64,
    /// Dictionaries uploaded (or queued) by this process; forgotten every
    /// [`RESEND_DICTIONARIES_EVERY`] blocks, so that one Redis evicted is sent again.
    dictionaries: HashSet<u32>,
    /// Blocks queued since `dictionaries` was last forgotten.
    since_forgotten: u64,
}

/// The shared tier of one chain.
pub struct SharedTier {
    redis: Arc<Redis>,
    /// `opdbus:<chain id hex>:`
    prefix: String,
    fetched: parking_lot::RwLock<HashMap<u32, Arc<DecoderDictionary<'static>>>>,
    pending: Mutex<Pending>,
    /// Blocks whose value did not check out: not asked for again (up to
    /// [`MAX_REFUSED_REMEMBERED`], then forgotten all at once).
    refused: Mutex<HashSet<Hash>>,
    /// Batches for the uploader thread ("shared-cache"); it ends when this is dropped.
    uploads: crossbeam_channel::Sender<Batch>,
}

/// The connections to Redis and their state, shared by readers and the uploader thread.
struct Redis {
    url: SharedCacheUrl,
    client: Client,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    health: Mutex<Health>,
    /// When Redis last refused a command (an error reply) with a warning logged.
    refusal_logged: Mutex<Option<Instant>>,
    counters: SharedCounters,
    /// Set by the uploader when a batch was lost: the dictionaries are sent again.
    lost_batch: std::sync::atomic::AtomicBool,
    /// Batches handed to the uploader, and batches it has finished with.
    handed: AtomicU64,
    done: AtomicU64,
}

/// One pipeline of uploads, and the blocks among them.
struct Batch {
    uploads: Vec<(String, Vec<u8>)>,
    blocks: u64,
}

impl SharedTier {
    /// The tier of chain `chain_id` at `url`, each command given `timeout`. Connects on first
    /// use, not here.
    pub fn new(
        url: SharedCacheUrl,
        timeout: Duration,
        chain_id: &[u8; 16],
    ) -> Result<SharedTier, SharedCacheUrlError> {
        let client = match &url.target {
            Target::One(client) => Client::One(client.as_ref().clone()),
            Target::Cluster(nodes) => Client::Cluster(
                cluster_client(nodes, timeout)
                    .map_err(|err| SharedCacheUrlError(format!("{}: {err}", url.redacted())))?,
            ),
        };
        let redis = Arc::new(Redis {
            url,
            client,
            timeout,
            idle: Mutex::new(Vec::new()),
            health: Mutex::new(Health::default()),
            refusal_logged: Mutex::default(),
            counters: SharedCounters::default(),
            lost_batch: Default::default(),
            handed: AtomicU64::new(0),
            done: AtomicU64::new(0),
        });
        let (uploads, batches) = crossbeam_channel::bounded::<Batch>(UPLOADS_WAITING);
        let uploader = Arc::clone(&redis);
        std::thread::Builder::new()
            .name("shared-cache".into())
            .spawn(move || {
                // What waited meanwhile goes in the same pipeline (one round trip for many
                // batches when Redis is far or slow).
                while let Ok(mut batch) = batches.recv() {
                    let mut merged = 1;
                    while batch.uploads.len() < FLUSH_AT * 4 {
                        let Ok(more) = batches.try_recv() else { break };
                        batch.uploads.extend(more.uploads);
                        batch.blocks += more.blocks;
                        merged += 1;
                    }
                    uploader.upload(batch, merged);
                }
            })
            .map_err(|err| SharedCacheUrlError(format!("starting the uploader thread: {err}")))?;
        Ok(SharedTier {
            redis,
            prefix: format!("opdbus:{}:", hex::encode(chain_id)),
            fetched: Default::default(),
            pending: Mutex::new(Pending::default()),
            refused: Mutex::default(),
            uploads,
        })
    }

    /// The tier's counters.
    pub fn counters(&self) -> &SharedCounters {
        &self.redis.counters
    }

    /// The key of block `hash`.
    pub fn block_key(&self, hash: &Hash) -> String {
        format!("{}b:{}", self.prefix, hex::encode(hash))
    }

    /// The key of dictionary `id`.
    pub fn dictionary_key(&self, id: u32) -> String {
        format!("{}d:{id:08x}", self.prefix)
    }

    /// The block `hash`, which this chain's index has at `height`, from the shared tier:
    /// decompressed, its link put back from `links`, re-hashed, and used only if it is that
    /// block. Counted as a hit or a miss (or an error, or a drop). `local` are the disk tier's
    /// dictionaries, tried before fetching one. `None` also when the tier is set aside after a
    /// failure, and for a block whose value was refused before.
    pub fn get(
        &self,
        hash: &Hash,
        height: u64,
        local: &Dictionaries,
        links: &Links,
    ) -> Option<Block> {
        if self.refused.lock().contains(hash) {
            return None;
        }
        let key = self.block_key(hash);
        let frame = self
            .redis
            .with_connection(|c| c.query::<Vec<u8>>(&getrange(&key, MAX_FRAME)))?;
        // GETRANGE answers "" for a missing key; no frame is empty.
        if frame.is_empty() {
            self.redis.counters.misses.fetch_add(1, Relaxed);
            return None;
        }
        let mut fetched_dictionary = None;
        // The chain knows how long this block is: a frame claiming more is not decompressed.
        let claimed = zstd::zstd_safe::get_frame_content_size(&frame)
            .ok()
            .flatten();
        let too_long = claimed
            .zip(links.encoded_len_at(height))
            .filter(|(c, b)| c > b);
        let checked = if frame.len() > MAX_FRAME {
            Err(FrameError::Bad(format!("is longer than {MAX_FRAME} bytes")))
        } else if let Some((claimed, bound)) = too_long {
            Err(FrameError::Bad(format!(
                "claims {claimed} bytes of content; the chain's block is {bound} at most"
            )))
        } else {
            decode_frame(
                &frame,
                |id| {
                    local.decoder(id).or_else(|| {
                        fetched_dictionary = Some(id);
                        self.dictionary(id)
                    })
                },
                Some(links),
            )
            .and_then(
                |block| match block.hash == *hash && block.height == height {
                    true => Ok(block),
                    false => Err(FrameError::Bad(format!(
                        "holds a block whose hash is {} at height {}",
                        hex::encode(block.hash),
                        block.height
                    ))),
                },
            )
        };
        match checked {
            Ok(block) => {
                self.redis.counters.hits.fetch_add(1, Relaxed);
                Some(block)
            }
            // Stored without its link and this chain lacks the block below (it is behind), or
            // its dictionary is not (or no longer) in Redis: a miss, nothing is wrong.
            Err(FrameError::Unlinked | FrameError::NoDictionary(_)) => {
                self.redis.counters.misses.fetch_add(1, Relaxed);
                None
            }
            Err(FrameError::Bad(reason)) => {
                self.redis.counters.dropped.fetch_add(1, Relaxed);
                self.redis.counters.misses.fetch_add(1, Relaxed);
                // A dictionary fetched for it may be the forged part: fetched again next time.
                if let Some(id) = fetched_dictionary {
                    self.fetched.write().remove(&id);
                }
                let mut refused = self.refused.lock();
                if refused.len() >= MAX_REFUSED_REMEMBERED {
                    refused.clear();
                }
                refused.insert(*hash);
                drop(refused);
                tracing::warn!(
                    key,
                    %reason,
                    shared_cache = %self.redis.url.redacted(),
                    "ignored a shared cache value that does not check out (it is not asked for again)"
                );
                None
            }
        }
    }

    /// Dictionary `id` from RAM, else from the shared tier (kept if it carries that id).
    fn dictionary(&self, id: u32) -> Option<Arc<DecoderDictionary<'static>>> {
        if let Some(dictionary) = self.fetched.read().get(&id) {
            return Some(Arc::clone(dictionary));
        }
        let key = self.dictionary_key(id);
        let bytes = self
            .redis
            .with_connection(|c| c.query::<Vec<u8>>(&getrange(&key, MAX_DICTIONARY)))?;
        if bytes.len() > MAX_DICTIONARY
            || zstd::zstd_safe::get_dict_id_from_dict(&bytes).map(u32::from) != Some(id)
        {
            return None;
        }
        let dictionary = Arc::new(DecoderDictionary::copy(&bytes));
        let mut fetched = self.fetched.write();
        if fetched.len() >= MAX_FETCHED_DICTIONARIES {
            fetched.clear();
        }
        fetched.insert(id, Arc::clone(&dictionary));
        Some(dictionary)
    }

    /// Queues the upload of `frame` (of block `hash`), preceded by its dictionary the first
    /// time this process sees it; `local` holds that dictionary's file. Flushed by
    /// [`SharedTier::flush`] (at once past [`FLUSH_AT`] waiting).
    pub fn queue(&self, hash: &Hash, frame: Vec<u8>, local: &Dictionaries) {
        if !self.redis.usable() {
            self.redis.counters.skipped.fetch_add(1, Relaxed);
            return;
        }
        let full = {
            let mut pending = self.pending.lock();
            pending.since_forgotten += 1;
            if pending.since_forgotten >= RESEND_DICTIONARIES_EVERY
                || self.redis.lost_batch.swap(false, Relaxed)
            {
                pending.since_forgotten = 0;
                pending.dictionaries.clear();
            }
            if let Some(id) = zstd::zstd_safe::get_dict_id_from_frame(&frame).map(u32::from) {
                if !pending.dictionaries.contains(&id) {
                    match local.file_bytes(id) {
                        Ok(bytes) => {
                            pending.uploads.push((self.dictionary_key(id), bytes));
                            pending.dictionaries.insert(id);
                        }
                        // Retired meanwhile: this frame is useless to others without it.
                        Err(_) => {
                            self.redis.counters.skipped.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                }
            }
            pending.uploads.push((self.block_key(hash), frame));
            pending.blocks += 1;
            pending.uploads.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
    }

    /// Hands what is queued to the uploader thread as one pipeline; never waits for Redis.
    /// When [`UPLOADS_WAITING`] batches wait already (Redis slow), the batch is dropped and
    /// counted as skipped, and its dictionaries are sent again with a later one.
    pub fn flush(&self) {
        self.hand_over(false);
    }

    /// As [`SharedTier::flush`], but waits for room when [`UPLOADS_WAITING`] batches wait
    /// (a replica, which has no caller waiting on it, uploads every block it verified).
    pub fn flush_waiting(&self) {
        self.hand_over(true);
    }

    /// What is queued, as one batch, to the uploader: waiting for room (`wait`) or dropped.
    fn hand_over(&self, wait: bool) {
        let batch = {
            let mut pending = self.pending.lock();
            Batch {
                uploads: std::mem::take(&mut pending.uploads),
                blocks: std::mem::take(&mut pending.blocks),
            }
        };
        if batch.uploads.is_empty() {
            return;
        }
        let blocks = batch.blocks;
        self.redis.handed.fetch_add(1, Relaxed);
        let handed = match wait {
            true => self.uploads.send(batch).is_ok(),
            false => self.uploads.try_send(batch).is_ok(),
        };
        if !handed {
            self.redis.done.fetch_add(1, Relaxed);
            self.redis.counters.skipped.fetch_add(blocks, Relaxed);
            self.pending.lock().dictionaries.clear();
        }
    }

    /// Waits until the uploader thread has sent every batch handed to it so far (tests,
    /// the bench); gives up after `timeout`.
    pub fn wait_uploaded(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let handed = self.redis.handed.load(Relaxed);
        while self.redis.done.load(std::sync::atomic::Ordering::Acquire) < handed {
            if Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Redis {
    /// Sends one batch, made of `merged` handed ones (the uploader thread). A failure drops it (counted as skipped) and has
    /// the dictionaries sent again.
    fn upload(&self, batch: Batch, merged: u64) {
        match self.with_connection(|c| c.set_new(&batch.uploads)) {
            Some(replies) => {
                // Each reply on its own: what Redis took, and what it refused.
                let (mut bytes, mut refused, mut lost) = (0, None, 0);
                for (reply, (key, value)) in replies.iter().zip(&batch.uploads) {
                    match reply {
                        redis::Value::Okay => bytes += value.len() as u64,
                        redis::Value::ServerError(err) => {
                            refused.get_or_insert_with(|| err.clone());
                            if key.contains(":d:") {
                                self.lost_batch.store(true, Relaxed);
                            } else {
                                lost += 1;
                            }
                        }
                        _ => {} // nil: there already
                    }
                }
                self.counters.bytes_written.fetch_add(bytes, Relaxed);
                self.counters.skipped.fetch_add(lost, Relaxed);
                if let Some(err) = refused {
                    self.refused(&err.into());
                }
            }
            None => {
                self.counters.skipped.fetch_add(batch.blocks, Relaxed);
                self.lost_batch.store(true, Relaxed);
            }
        }
        self.done
            .fetch_add(merged, std::sync::atomic::Ordering::Release);
    }

    /// Whether the tier is not set aside after a failure.
    fn usable(&self) -> bool {
        self.health
            .lock()
            .retry_at
            .is_none_or(|at| Instant::now() >= at)
    }

    /// Runs `op` on an idle connection (or a new one); `None` when the tier is set aside or
    /// `op` fails. A failure is counted; one of the connection (refused, reset, timed out,
    /// unparsable) sets the tier aside and closes every idle connection; an error reply of
    /// Redis (OOM, NOPERM, WRONGTYPE, a cluster redirection) costs only this command.
    fn with_connection<T>(
        &self,
        op: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        if !self.usable() {
            return None;
        }
        let idle = self.idle.lock().pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => match Connection::open(&self.client, self.timeout) {
                Ok(connection) => connection,
                Err(err) => {
                    self.failed(&err);
                    return None;
                }
            },
        };
        match op(&mut connection) {
            Ok(answer) => {
                self.succeeded();
                self.idle_again(connection);
                Some(answer)
            }
            Err(err) if is_reply(&err) => {
                self.refused(&err);
                // The reply was read whole, so the connection can go on, except after a
                // redirection: a new cluster connection learns the slots again.
                if !err.is_cluster_error() {
                    self.idle_again(connection);
                }
                None
            }
            Err(err) => {
                // The connection may hold half a reply: it is not reused, nor are the idle
                // ones (a restarted server has closed them all).
                self.failed(&err);
                self.idle.lock().clear();
                None
            }
        }
    }

    fn idle_again(&self, connection: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_CONNECTIONS {
            idle.push(connection);
        }
    }

    /// An error reply: counted, and logged at most every [`REFUSAL_LOG_EVERY`].
    fn refused(&self, err: &redis::RedisError) {
        self.counters.errors.fetch_add(1, Relaxed);
        let mut logged = self.refusal_logged.lock();
        if logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            *logged = Some(Instant::now());
            tracing::warn!(
                %err,
                shared_cache = %self.url.redacted(),
                "the shared cache refused a command; that read is a miss and those uploads are skipped (further refusals within a minute are only counted)"
            );
        }
    }

    fn failed(&self, err: &redis::RedisError) {
        self.counters.errors.fetch_add(1, Relaxed);
        let mut health = self.health.lock();
        health.backoff = (health.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
        health.retry_at = Some(Instant::now() + health.backoff);
        match &mut health.failures {
            Some(failures) => *failures += 1,
            None => {
                health.failures = Some(1);
                tracing::warn!(
                    %err,
                    shared_cache = %self.url.redacted(),
                    "the shared cache does not answer; reads go to the local cache and the chain, and uploads are skipped until it does (retried after {} s, then less often)",
                    health.backoff.as_secs()
                );
            }
        }
    }

    fn succeeded(&self) {
        let mut health = self.health.lock();
        if let Some(failures) = health.failures.take() {
            tracing::info!(
                failures,
                shared_cache = %self.url.redacted(),
                "the shared cache works again"
            );
        }
        health.retry_at = None;
        health.backoff = Duration::ZERO;
    }
}

/// Whether `err` is an error reply of Redis (the server answered and refused), not a failure
/// of the connection.
fn is_reply(err: &redis::RedisError) -> bool {
    matches!(
        err.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    )
}

/// `GETRANGE key 0 limit`: at most `limit + 1` bytes of the value, so that a value longer
/// than any we write is seen as such without reading it whole.
fn getrange(key: &str, limit: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("GETRANGE");
    cmd.arg(key).arg(0).arg(limit);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_wherever_the_address_puts_them() {
        for (url, secret) in [
            ("redis://opdbus:s3cret@10.0.0.1:6379/0", "s3cret"),
            ("redis://:pa/ss@w@rd@10.0.0.1:6379", "pa/ss"),
            ("rediss+cluster://opdbus:s3cret@h1:7000,h2:7001", "s3cret"),
            (
                "redis+unix:///run/redis/redis.sock?user=opdbus&pass=s3cret",
                "s3cret",
            ),
            (
                "redis+unix:///run/redis/redis.sock?password=s3cret&db=2",
                "s3cret",
            ),
        ] {
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(
                shown.contains("opdbus") || !url.contains("opdbus"),
                "{shown}"
            );
        }
        let refused = SharedCacheUrl::parse("redis://opdbus:s3cret@").map(|_| ());
        if let Err(err) = refused {
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }
}
