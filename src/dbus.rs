//! The D-Bus adapter: `org.opdbus.Blockchain` at `/org/opdbus/Blockchain`.
//!
//! Thin by design: validate arguments, find out who is calling (from the bus, never from the
//! payload), call the core, map its errors to typed D-Bus errors, and emit `BlockAdded` once
//! the reply has been sent, while any client is subscribed to it.

use crate::chain::block::{parse_hash, Caller, EncodedBlock};
use crate::service::{OptimizedBlockchain, ServiceError};
use crate::transparency::TransparencyError;
use std::collections::HashMap;
use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::names::{BusName, UniqueName};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedValue, Type};
use zbus::{interface, Connection};

pub mod replica;
pub mod socket;
mod subscribers;
mod writes;
pub use subscribers::{SubscribeError, Subscribers, MAX_SUBSCRIBERS, MAX_SUBSCRIBERS_PER_UID};
pub use writes::BlockchainInterface;

/// Well-known bus name and interface name.
pub const BUS_NAME: &str = "org.opdbus.Blockchain";
/// Object path of the one object.
pub const OBJECT_PATH: &str = "/org/opdbus/Blockchain";
/// Remembered callers; unique names are never reused on a bus, so entries never go stale,
/// they only accumulate: past this many the least recently used are forgotten.
const CALLER_CACHE_LEN: usize = 4096;

/// The errors callers see, each with a message meant for a person.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.opdbus.Blockchain.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The arguments were refused; nothing was written.
    InvalidArgument(String),
    /// No such block.
    NotFound(String),
    /// The store could not take or give the data (disk full, I/O error, corruption).
    StorageFailure(String),
    /// The caller may not do this.
    AccessDenied(String),
    /// Too many expensive calls (Verify, FindSimilar*, Query) in progress, or too many
    /// subscriptions (Subscribe), from this caller or from all; nothing was done. Retry once one
    /// has answered (or unsubscribed).
    LimitsExceeded(String),
    /// The transparency log cannot answer now: it is starting, halted because the chain no
    /// longer extends its checkpoint, or not running; or the bus did not take what Subscribe
    /// needs from it.
    Unavailable(String),
    /// A replica's copy takes no writes.
    ReadOnly(String),
}

/// The one mapping from the core's errors to the names callers see: the footprint refused is
/// their mistake, everything else is the store's (disk full, latched, I/O, corruption, a
/// blocking task lost).
impl From<ServiceError> for Error {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidFootprint(refused) => Error::InvalidArgument(refused.to_string()),
            ServiceError::InvalidBatch(refused) => Error::InvalidArgument(refused),
            ServiceError::Transparency(TransparencyError::OutOfRange(message)) => {
                Error::InvalidArgument(message)
            }
            ServiceError::Transparency(
                err @ (TransparencyError::NotYet | TransparencyError::Halted(_)),
            ) => Error::Unavailable(err.to_string()),
            err @ ServiceError::TransparencyOff => Error::Unavailable(err.to_string()),
            other => Error::StorageFailure(other.to_string()),
        }
    }
}

/// The served object.
pub struct BlockchainObject {
    chain: OptimizedBlockchain,
    callers: quick_cache::sync::Cache<String, Caller>,
    /// uids allowed to write besides root and the daemon's own.
    writer_uids: Vec<u32>,
    /// AddFootprint calls whose reply has not been sent yet.
    in_flight: InFlight,
    /// Verify, FindSimilar* and Query calls in progress, by caller.
    expensive: ExpensiveCalls,
    /// The chains this daemon follows as a replica (`--replica-of`).
    replicas: Option<crate::replica::run::Replicas>,
    /// The clients that asked for `BlockAdded`.
    subscribers: Subscribers,
}

impl BlockchainObject {
    pub fn new(chain: OptimizedBlockchain, writer_uids: Vec<u32>) -> Self {
        BlockchainObject {
            chain,
            callers: quick_cache::sync::Cache::new(CALLER_CACHE_LEN),
            writer_uids,
            in_flight: InFlight::default(),
            expensive: ExpensiveCalls::default(),
            replicas: None,
            subscribers: Subscribers::default(),
        }
    }

    /// Serves `ReplicaStatus` for these replicas.
    pub fn with_replicas(mut self, replicas: crate::replica::run::Replicas) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// The count of AddFootprint calls not yet answered, for the daemon to drain at shutdown.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// The clients that asked for `BlockAdded`, for the task that emits it.
    pub fn subscribers(&self) -> Subscribers {
        self.subscribers.clone()
    }

    /// Who sent `header`'s message, asked of the bus once per connection.
    async fn caller(&self, header: &Header<'_>, connection: &Connection) -> Result<Caller, Error> {
        let Some(sender) = header.sender() else {
            // Peer-to-peer connections have no bus to ask; the peer is whoever connected.
            return Ok(Caller::default());
        };
        if let Some(caller) = self.callers.get(sender.as_str()) {
            return Ok(caller);
        }
        let caller = ask_bus(connection, sender).await?;
        self.callers.insert(sender.to_string(), caller.clone());
        Ok(caller)
    }

    /// Counts an expensive call of the sender until the returned value is dropped, or refuses
    /// it with `LimitsExceeded`. Root and the daemon's own uid are not counted.
    async fn enter_expensive(
        &self,
        header: &Header<'_>,
        connection: &Connection,
    ) -> Result<Option<ExpensiveCall>, Error> {
        let caller = self.caller(header, connection).await?;
        if caller
            .uid
            .is_some_and(|uid| uid == 0 || uid == nix::unistd::getuid().as_raw())
        {
            return Ok(None);
        }
        self.expensive
            .enter(caller.uid)
            .map(Some)
            .map_err(Error::LimitsExceeded)
    }

    fn may_write(&self, caller: &Caller) -> bool {
        match caller.uid {
            Some(uid) => {
                uid == 0 || uid == nix::unistd::getuid().as_raw() || self.writer_uids.contains(&uid)
            }
            None => false,
        }
    }

    /// `AccessDenied` ("uid N may not {action}; …") unless the caller may write.
    fn require_writer(&self, caller: &Caller, action: &str) -> Result<(), Error> {
        if self.may_write(caller) {
            return Ok(());
        }
        Err(Error::AccessDenied(format!(
            "uid {} may not {action}; ask the administrator to add it to OPDBUS_WRITER_UIDS",
            caller.uid.map_or("unknown".into(), |u| u.to_string())
        )))
    }
}

async fn ask_bus(connection: &Connection, sender: &UniqueName<'_>) -> Result<Caller, Error> {
    let proxy = DBusProxy::new(connection).await?;
    let credentials = proxy
        .get_connection_credentials(BusName::Unique(sender.to_owned()))
        .await
        .map_err(|e| Error::AccessDenied(format!("cannot identify the caller {sender}: {e}")))?;
    let pid = credentials.process_id();
    Ok(Caller {
        uid: credentials.unix_user_id(),
        pid,
        bus_name: sender.to_string(),
        unit: pid.and_then(unit_of_pid).unwrap_or_default(),
    })
}

/// The systemd unit a process runs in, from its cgroup path (`…/foo.service`).
fn unit_of_pid(pid: u32) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .or_else(|| {
            cgroups
                .lines()
                .find_map(|l| l.split(":name=systemd:").nth(1))
        })?;
    path.rsplit('/')
        .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
        .map(str::to_owned)
}

impl BlockchainObject {
    async fn similar(
        &self,
        query: &str,
        k: u32,
        filter: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<Vec<(u64, String, f64)>, Error> {
        use crate::vector::query::{check_filter, check_k};
        let parsed: crate::vector::SimilarQuery = query.parse().map_err(Error::InvalidArgument)?;
        let k = check_k(k).map_err(Error::InvalidArgument)?;
        let filter = filter_from_dict(&filter).map_err(Error::InvalidArgument)?;
        check_filter(&filter).map_err(Error::InvalidArgument)?;
        match self.chain.find_similar(&parsed, k, &filter).await? {
            Some(matches) => Ok(matches
                .into_iter()
                .map(|m| (m.height, hex::encode(m.hash), m.score))
                .collect()),
            None => Err(not_found_by_hash(query.trim())),
        }
    }
}

/// Who is reading, for read prediction: the caller's unique bus name.
fn reader_name<'a>(header: &'a Header<'_>) -> &'a str {
    header.sender().map_or("unknown", |sender| sender.as_str())
}

fn not_found_by_hash(hash: &str) -> Error {
    Error::NotFound(format!("no block with hash {hash}"))
}

#[interface(name = "org.opdbus.Blockchain")]
impl BlockchainObject {
    /// The block with this hash, as JSON.
    #[zbus(out_args("block_json"))]
    async fn get_block(
        &self,
        hash: String,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, Error> {
        let Some(parsed) = parse_hash(&hash) else {
            return Err(Error::InvalidArgument(format!(
                "'{}' is not a block hash (64 hex digits)",
                hash.chars().take(80).collect::<String>()
            )));
        };
        let reader = reader_name(&header);
        // A block in RAM is answered here, its JSON rendered once; the rest reads on the
        // blocking pool.
        let hot = crate::service::BlockKey::Hash(parsed);
        if let Some(json) = self.chain.get_block_json_hot(reader, hot) {
            return Ok(String::from(&*json));
        }
        match self.chain.get_block_as(reader, &hash).await? {
            Some(block) => Ok(block.to_json()),
            None => Err(not_found_by_hash(&hash)),
        }
    }

    /// The block at this height, as JSON.
    #[zbus(out_args("block_json"))]
    async fn get_block_by_height(
        &self,
        height: u64,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, Error> {
        let reader = reader_name(&header);
        let hot = crate::service::BlockKey::Height(height);
        if let Some(json) = self.chain.get_block_json_hot(reader, hot) {
            return Ok(String::from(&*json));
        }
        match self.chain.get_block_by_height_as(reader, height).await? {
            Some(block) => Ok(block.to_json()),
            None => Err(Error::NotFound(format!(
                "no block at height {height}; the head is at {}",
                self.chain.head().0
            ))),
        }
    }

    /// Re-hashes and re-links every block up to the current head. Calls made while a run is
    /// going share it.
    #[zbus(out_args("ok", "blocks_checked", "message"))]
    async fn verify(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(bool, u64, String), Error> {
        let _counted = self.enter_expensive(&header, connection).await?;
        let report = self.chain.verify().await?;
        Ok((report.ok(), report.blocks_checked, report.summary()))
    }

    /// The NUMA topology, the node chosen for the writer and whether its binding took effect.
    /// Always answers: without a readable topology it reports one node and the reason.
    #[zbus(out_args("info"))]
    async fn numa_info(&self) -> NumaInfoDict {
        match self.chain.numa_info().await {
            Some(info) => NumaInfoDict::from(&info),
            None => {
                NumaInfoDict::unavailable(self.chain.numa_unavailable().unwrap_or("no topology"))
            }
        }
    }

    /// The `k` blocks most similar to `query` (a block hash, or a footprint
    /// `{"plugin":…,"operation":…,"data":…}`), best first: height, hash, cosine score.
    #[zbus(out_args("matches"))]
    async fn find_similar(
        &self,
        query: String,
        k: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Vec<(u64, String, f64)>, Error> {
        let _counted = self.enter_expensive(&header, connection).await?;
        self.similar(&query, k, HashMap::new()).await
    }

    /// As FindSimilar, among blocks passing `filter`: plugin (s), operation (s), uid (u),
    /// since_ns (t), until_ns (t).
    #[zbus(out_args("matches"))]
    async fn find_similar_filtered(
        &self,
        query: String,
        k: u32,
        filter: HashMap<String, zbus::zvariant::OwnedValue>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Vec<(u64, String, f64)>, Error> {
        let _counted = self.enter_expensive(&header, connection).await?;
        self.similar(&query, k, filter).await
    }

    /// Blocks passing `filter`, oldest first: up to `limit` (1 to 1000) of them, with where
    /// to continue. Filter keys (all optional): since_ns (t), until_ns (t), plugin (s),
    /// operation (s), uid (u), unit (s), from_height (t), to_height (t). A call examines at
    /// most 100 000 blocks after finding `since_ns` by binary search and returns at most
    /// 4 MiB: `complete` false and `next_height` say where the next call (the same filter with
    /// from_height = next_height) continues. Each block: height, timestamp_ns, hash,
    /// prev_hash, plugin, operation, caller uid (4294967295 unknown), caller pid (0 unknown),
    /// caller bus name, caller unit, data JSON.
    #[zbus(out_args("blocks", "next_height", "complete"))]
    async fn query(
        &self,
        filter: HashMap<String, OwnedValue>,
        limit: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(Vec<QueryBlock>, u64, bool), Error> {
        let filter = query_filter_from_dict(&filter).map_err(Error::InvalidArgument)?;
        filter.check().map_err(Error::InvalidArgument)?;
        if !(1..=MAX_QUERY_LIMIT).contains(&limit) {
            return Err(Error::InvalidArgument(format!(
                "limit must be between 1 and {MAX_QUERY_LIMIT}, not {limit}"
            )));
        }
        let _counted = self.enter_expensive(&header, connection).await?;
        let page = self
            .chain
            .query(
                filter,
                crate::query::Limits {
                    max_blocks: limit as usize,
                    max_examined: MAX_QUERY_EXAMINED,
                    max_bytes: MAX_QUERY_BYTES,
                },
            )
            .await?;
        let blocks = page
            .blocks
            .into_iter()
            .map(|b| {
                let hash = b.hash_hex();
                (
                    b.height,
                    b.timestamp_ns,
                    hash,
                    hex::encode(b.prev_hash),
                    b.plugin,
                    b.operation,
                    b.caller.uid.unwrap_or(crate::chain::block::UNKNOWN_UID),
                    b.caller.pid.unwrap_or(0),
                    b.caller.bus_name,
                    b.caller.unit,
                    b.data,
                )
            })
            .collect();
        Ok((blocks, page.next_height, page.complete))
    }

    /// The block cache's counters and sizes: `total_entries`, `hot_entries`,
    /// `disk_usage_bytes`, `hits`, `misses`, `hit_rate`, `compression_ratio`,
    /// `write_failures`, `evictions`, … (`t`, `x` or `d` values; see docs/dbus-api.md).
    #[zbus(out_args("stats"))]
    async fn cache_stats(&self) -> Result<CacheStatsDict, Error> {
        Ok(CacheStatsDict::from(self.chain.cache_stats().await?))
    }

    /// Snapshots chain and cache at one block height; returns [chain_snapshot, cache_snapshot].
    /// With no block since the newest snapshot, returns that one.
    #[zbus(out_args("paths"))]
    async fn snapshot(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Vec<String>, Error> {
        let caller = self.caller(&header, connection).await?;
        self.require_writer(&caller, "take snapshots")?;
        let paths = self
            .chain
            .create_unified_snapshot()
            .await
            .map_err(ServiceError::from)?;
        Ok(paths
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect())
    }

    /// The newest signed checkpoint (c2sp.org/tlog-checkpoint in a c2sp.org/signed-note):
    /// origin, tree size and root, then the Ed25519 signature. Check it with VerifyingKey.
    #[zbus(out_args("checkpoint"))]
    async fn get_checkpoint(&self) -> Result<String, Error> {
        Ok(self.chain.checkpoint()?.note)
    }

    /// The RFC 9162 inclusion proof of the block at `height` in the tree of `tree_size`
    /// leaves (a size up to the newest checkpoint's): the audit path, 32-byte hashes.
    #[zbus(out_args("proof"))]
    async fn get_inclusion_proof(
        &self,
        height: u64,
        tree_size: u64,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let proof = self.chain.inclusion_proof(height, tree_size).await?;
        Ok(proof.iter().map(|hash| hash.to_vec()).collect())
    }

    /// The RFC 9162 consistency proof from the tree of `old_size` leaves to the tree of
    /// `new_size` leaves (up to the newest checkpoint's size).
    #[zbus(out_args("proof"))]
    async fn get_consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let proof = self.chain.consistency_proof(old_size, new_size).await?;
        Ok(proof.iter().map(|hash| hash.to_vec()).collect())
    }

    /// The checkpoints' verifier key in signed-note vkey format, `<name>+<hash>+<base64>`
    /// (empty when the transparency log is not running).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn verifying_key(&self) -> String {
        self.chain.verifying_key().unwrap_or_default()
    }

    /// How each chain this daemon follows as a replica stands (`--replica-of`, in its order;
    /// empty when it follows none): `source`, `dir`, `verified_size` (the tree size the copy is
    /// verified up to), `source_size` (of the newest checkpoint the source served),
    /// `lag_blocks`, `lag_seconds` (since the copy last reached the source's checkpoint; absent
    /// before it did), `last_error` (empty when none), `diverged` and, when it did,
    /// `diverged_at` (the tree size where the source parts from the copy).
    #[zbus(out_args("replicas"))]
    async fn replica_status(&self) -> Vec<HashMap<String, OwnedValue>> {
        let Some(replicas) = &self.replicas else {
            return Vec::new();
        };
        replicas
            .statuses()
            .into_iter()
            .map(|status| {
                let mut dict: HashMap<String, OwnedValue> = HashMap::new();
                let mut put = |key: &str, value: zbus::zvariant::Value<'_>| {
                    if let Ok(value) = OwnedValue::try_from(value) {
                        dict.insert(key.to_string(), value);
                    }
                };
                put("source", status.source.as_str().into());
                put("dir", status.dir.to_string_lossy().as_ref().into());
                put("verified_size", status.verified_size.into());
                put("source_size", status.source_size.into());
                put("lag_blocks", status.lag_blocks().into());
                if let Some(lag) = status.lag_seconds() {
                    put("lag_seconds", lag.into());
                }
                put(
                    "last_error",
                    status.last_error.as_deref().unwrap_or("").into(),
                );
                put("diverged", status.diverged.is_some().into());
                if let Some((size, _)) = &status.diverged {
                    put("diverged_at", (*size).into());
                }
                dict
            })
            .collect()
    }

    /// Sent when a chain this daemon follows as a replica diverged (rollback, truncation,
    /// rewrite, fork) or sent invalid data: the replica stopped at tree size `size`.
    #[zbus(signal)]
    async fn replica_diverged(
        emitter: &SignalEmitter<'_>,
        source: &str,
        size: u64,
        reason: &str,
    ) -> zbus::Result<()>;

    /// Sent after each checkpoint is published.
    #[zbus(signal)]
    async fn checkpoint_issued(
        emitter: &SignalEmitter<'_>,
        size: u64,
        note: &str,
    ) -> zbus::Result<()>;

    /// Asks for `BlockAdded`, which is emitted only while at least one client that called
    /// this is on the bus. Ends with `Unsubscribe` or when the caller leaves the bus; calling it
    /// again changes nothing.
    async fn subscribe(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), Error> {
        let caller = self.caller(&header, connection).await?;
        let counted = !caller
            .uid
            .is_some_and(|uid| uid == 0 || uid == nix::unistd::getuid().as_raw());
        self.subscribers
            .subscribe(connection, header.sender(), caller.uid, counted)
            .await
            .map_err(|err| match err {
                SubscribeError::Limit(message) => Error::LimitsExceeded(message),
                SubscribeError::Bus(message) => Error::Unavailable(message),
            })
    }

    /// Ends the caller's `Subscribe`; not an error when there is none.
    async fn unsubscribe(&self, #[zbus(header)] header: Header<'_>) {
        self.subscribers.unsubscribe(header.sender());
    }

    /// Height of the newest durable block (not announced through PropertiesChanged).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn height(&self) -> u64 {
        self.chain.head().0
    }

    /// Hash of the newest durable block (not announced through PropertiesChanged).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn head_hash(&self) -> String {
        self.chain.head().1
    }

    /// Sent for each block added, after the reply to the AddFootprint or AddFootprints call
    /// that added it, while at least one client is subscribed (Subscribe).
    #[zbus(signal)]
    async fn block_added(
        emitter: &SignalEmitter<'_>,
        height: u64,
        hash: &str,
        plugin: &str,
        operation: &str,
    ) -> zbus::Result<()>;
}

/// Emits CheckpointIssued for every checkpoint the transparency log issues, until it stops.
pub async fn announce_checkpoints(
    connection: Connection,
    mut issued: tokio::sync::broadcast::Receiver<crate::tlog::Checkpoint>,
) {
    let Ok(emitter) = SignalEmitter::new(&connection, OBJECT_PATH) else {
        return;
    };
    loop {
        match issued.recv().await {
            Ok(checkpoint) => {
                if let Err(err) =
                    BlockchainObject::checkpoint_issued(&emitter, checkpoint.size, &checkpoint.note)
                        .await
                {
                    tracing::debug!(%err, "cannot emit CheckpointIssued");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Emits ReplicaDiverged for every replica that stops at a divergence.
pub async fn announce_divergences(
    connection: Connection,
    mut diverged: tokio::sync::broadcast::Receiver<crate::replica::run::Diverged>,
) {
    let Ok(emitter) = SignalEmitter::new(&connection, OBJECT_PATH) else {
        return;
    };
    loop {
        match diverged.recv().await {
            Ok(d) => {
                if let Err(err) =
                    BlockchainObject::replica_diverged(&emitter, &d.source, d.size, &d.reason).await
                {
                    tracing::debug!(%err, "cannot emit ReplicaDiverged");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The match rule a listener adds for `BlockAdded` (emitted only while someone is subscribed).
pub fn block_added_rule() -> zbus::Result<zbus::MatchRule<'static>> {
    Ok(zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(BUS_NAME)?
        .member("BlockAdded")?
        .path(OBJECT_PATH)?
        .build())
}

/// The next message of `stream`; `None` once its connection closed.
pub async fn next_message(stream: &mut zbus::MessageStream) -> Option<zbus::Result<zbus::Message>> {
    use zbus::export::futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

async fn emit_block_added(emitter: &SignalEmitter<'_>, block: &EncodedBlock) {
    if let Err(err) = BlockchainObject::block_added(
        emitter,
        block.height,
        &block.hash_hex(),
        &block.plugin,
        &block.operation,
    )
    .await
    {
        tracing::debug!(%err, "cannot emit BlockAdded");
    }
}

/// Counts calls that have started and whose reply has not been sent, so that shutdown can wait
/// for every acknowledgement to leave before it closes the connection.
#[derive(Debug, Clone)]
pub struct InFlight(std::sync::Arc<tokio::sync::watch::Sender<usize>>);

impl Default for InFlight {
    fn default() -> Self {
        InFlight(std::sync::Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl InFlight {
    /// Counts one call until the returned value is dropped.
    pub fn enter(&self) -> InFlightCall {
        self.0.send_modify(|count| *count += 1);
        InFlightCall(self.0.clone())
    }

    /// Calls counted right now.
    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Returns once no call is counted.
    pub async fn idle(&self) {
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = self.0.subscribe().wait_for(|count| *count == 0).await;
    }
}

/// One counted call; see [`InFlight::enter`].
#[derive(Debug)]
pub struct InFlightCall(std::sync::Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for InFlightCall {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count -= 1);
    }
}

/// Expensive calls (Verify, FindSimilar, FindSimilarFiltered, Query) one unprivileged uid may have in
/// progress at once.
pub const MAX_EXPENSIVE_PER_CALLER: usize = 2;
/// Expensive calls all unprivileged callers together may have in progress at once.
pub const MAX_EXPENSIVE_TOTAL: usize = 8;

/// Expensive calls in progress: in all, and per uid (`None`: a caller the bus could not name).
#[derive(Debug, Clone, Default)]
struct ExpensiveCalls(std::sync::Arc<parking_lot::Mutex<ExpensiveCounts>>);

#[derive(Debug, Default)]
struct ExpensiveCounts {
    total: usize,
    per_uid: HashMap<Option<u32>, usize>,
}

impl ExpensiveCalls {
    /// Counts one call of `uid` until the returned value is dropped, or says which limit it
    /// would exceed.
    fn enter(&self, uid: Option<u32>) -> Result<ExpensiveCall, String> {
        let mut counts = self.0.lock();
        let ExpensiveCounts { total, per_uid } = &mut *counts;
        let mine = per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_EXPENSIVE_PER_CALLER {
            return Err(format!(
                "uid {} has {mine} Verify/FindSimilar/Query calls in progress; the limit is \
                 {MAX_EXPENSIVE_PER_CALLER} per caller: retry once one has answered",
                uid.map_or("unknown".into(), |u| u.to_string())
            ));
        }
        if *total >= MAX_EXPENSIVE_TOTAL {
            return Err(format!(
                "{total} Verify/FindSimilar/Query calls are in progress; the limit is \
                 {MAX_EXPENSIVE_TOTAL} for all callers but root: retry later"
            ));
        }
        *total += 1;
        per_uid.insert(uid, mine + 1);
        Ok(ExpensiveCall {
            calls: self.clone(),
            uid,
        })
    }
}

/// One counted expensive call; see [`ExpensiveCalls::enter`].
#[derive(Debug)]
struct ExpensiveCall {
    calls: ExpensiveCalls,
    uid: Option<u32>,
}

impl Drop for ExpensiveCall {
    fn drop(&mut self) {
        let mut counts = self.calls.0.lock();
        let ExpensiveCounts { total, per_uid } = &mut *counts;
        *total -= 1;
        // Entries go when they reach 0, so the map holds only callers with calls in progress.
        if let Some(mine) = per_uid.get_mut(&self.uid) {
            *mine -= 1;
            if *mine == 0 {
                per_uid.remove(&self.uid);
            }
        }
    }
}

/// Blocks one Query call returns at most.
pub const MAX_QUERY_LIMIT: u32 = 1000;
/// Blocks one Query call reads at most after its binary search (about 0.1 s of reading).
pub const MAX_QUERY_EXAMINED: u64 = 100_000;
/// Text one Query reply carries at most, well under the bus's message size limit.
pub const MAX_QUERY_BYTES: usize = 4 << 20;

/// One block in Query's reply: height, timestamp_ns, hash, prev_hash, plugin, operation,
/// caller uid, caller pid, caller bus name, caller unit, data JSON.
pub type QueryBlock = (
    u64,
    u64,
    String,
    String,
    String,
    String,
    u32,
    u32,
    String,
    String,
    String,
);

const QUERY_FILTER_KEYS: &str = "since_ns (t), until_ns (t), plugin (s), operation (s), uid (u), \
unit (s), from_height (t), to_height (t)";

/// Query's filter from its `a{sv}`, by hand for the reason [`filter_from_dict`] gives.
fn query_filter_from_dict(
    dict: &HashMap<String, OwnedValue>,
) -> Result<crate::query::Filter, String> {
    use zbus::zvariant::Value;
    let mut filter = crate::query::Filter::default();
    for (key, value) in dict {
        let value: &Value = value;
        match (key.as_str(), value) {
            ("since_ns", Value::U64(n)) => filter.since_ns = Some(*n),
            ("until_ns", Value::U64(n)) => filter.until_ns = Some(*n),
            ("plugin", Value::Str(s)) => filter.plugin = Some(s.to_string()),
            ("operation", Value::Str(s)) => filter.operation = Some(s.to_string()),
            ("uid", Value::U32(n)) => filter.uid = Some(*n),
            ("unit", Value::Str(s)) => filter.unit = Some(s.to_string()),
            ("from_height", Value::U64(n)) => filter.from_height = Some(*n),
            ("to_height", Value::U64(n)) => filter.to_height = Some(*n),
            (
                "since_ns" | "until_ns" | "plugin" | "operation" | "uid" | "unit" | "from_height"
                | "to_height",
                _,
            ) => {
                return Err(format!(
                    "filter key {key} has the wrong type ({}); accepted: {QUERY_FILTER_KEYS}",
                    value.value_signature()
                ))
            }
            _ => {
                return Err(format!(
                    "unknown filter key {}; accepted: {QUERY_FILTER_KEYS}",
                    key.chars().take(64).collect::<String>()
                ))
            }
        }
    }
    Ok(filter)
}

const FILTER_KEYS: &str = "plugin (s), operation (s), uid (u), since_ns (t), until_ns (t)";

/// A search filter from the `a{sv}` of `FindSimilarFiltered`. Read by hand rather than as a
/// `DeserializeDict` parameter: zbus would refuse an unknown key or a wrong type with its own
/// error before the method runs, where callers get `InvalidArgument` naming the keys.
fn filter_from_dict(dict: &HashMap<String, OwnedValue>) -> Result<crate::vector::Filter, String> {
    use zbus::zvariant::Value;
    let mut filter = crate::vector::Filter::default();
    for (key, value) in dict {
        let value: &Value = value;
        match (key.as_str(), value) {
            ("plugin", Value::Str(s)) => filter.plugin = Some(s.to_string()),
            ("operation", Value::Str(s)) => filter.operation = Some(s.to_string()),
            ("uid", Value::U32(n)) => filter.uid = Some(*n),
            ("since_ns", Value::U64(n)) => filter.since_ns = Some(*n),
            ("until_ns", Value::U64(n)) => filter.until_ns = Some(*n),
            ("plugin" | "operation" | "uid" | "since_ns" | "until_ns", _) => {
                return Err(format!(
                    "filter key {key} has the wrong type; accepted: {FILTER_KEYS}"
                ))
            }
            _ => return Err(format!("unknown filter key {key}; accepted: {FILTER_KEYS}")),
        }
    }
    Ok(filter)
}

/// `CacheStats()`'s `a{sv}`: every counter of [`crate::cache::CacheStats`] as `t`, `x` or `d`.
#[derive(zbus::zvariant::SerializeDict, Type)]
#[zvariant(signature = "a{sv}", crate = "zbus::zvariant")]
pub struct CacheStatsDict {
    total_entries: u64,
    hot_entries: u64,
    hot_bytes: u64,
    hot_capacity_bytes: u64,
    disk_usage_bytes: u64,
    canonical_bytes: u64,
    compressed_bytes: u64,
    compression_ratio: f64,
    hot_hits: u64,
    disk_hits: u64,
    hits: u64,
    misses: u64,
    hit_rate: f64,
    hot_hit_rate: f64,
    evictions: u64,
    write_failures: u64,
    skipped_writes: u64,
    corrupt_dropped: u64,
    queued_blocks: u64,
    complete_through: i64,
    dictionaries: u64,
    dictionary_bytes: u64,
    dictionary_id: u64,
    shared_hits: u64,
    shared_misses: u64,
    shared_errors: u64,
    shared_bytes_written: u64,
    shared_dropped: u64,
    shared_skipped: u64,
}

impl From<crate::cache::CacheStats> for CacheStatsDict {
    fn from(s: crate::cache::CacheStats) -> Self {
        CacheStatsDict {
            total_entries: s.total_entries,
            hot_entries: s.hot_entries,
            hot_bytes: s.hot_bytes,
            hot_capacity_bytes: s.hot_capacity_bytes,
            disk_usage_bytes: s.disk_usage_bytes,
            canonical_bytes: s.canonical_bytes,
            compressed_bytes: s.compressed_bytes,
            compression_ratio: s.compression_ratio,
            hot_hits: s.hot_hits,
            disk_hits: s.disk_hits,
            hits: s.hits,
            misses: s.misses,
            hit_rate: s.hit_rate,
            hot_hit_rate: s.hot_hit_rate,
            evictions: s.evictions,
            write_failures: s.write_failures,
            skipped_writes: s.skipped_writes,
            corrupt_dropped: s.corrupt_dropped,
            queued_blocks: s.queued_blocks,
            complete_through: s.complete_through,
            dictionaries: s.dictionaries,
            dictionary_bytes: s.dictionary_bytes,
            dictionary_id: u64::from(s.dictionary_id),
            shared_hits: s.shared_hits,
            shared_misses: s.shared_misses,
            shared_errors: s.shared_errors,
            shared_bytes_written: s.shared_bytes_written,
            shared_dropped: s.shared_dropped,
            shared_skipped: s.shared_skipped,
        }
    }
}

/// `NumaInfo()`'s `a{sv}`; a `None` field is left out of the dictionary.
#[derive(zbus::zvariant::SerializeDict, Type)]
#[zvariant(signature = "a{sv}", crate = "zbus::zvariant")]
pub struct NumaInfoDict {
    node_count: u32,
    optimal_node: u32,
    optimal_node_reason: String,
    numa_enabled: bool,
    reason: String,
    this_system: Option<bool>,
    memory_reason: Option<String>,
    placement: Option<String>,
    memory_policy: Option<String>,
    writer_cpus: Vec<u32>,
    writer_cpus_observed: Option<Vec<u32>>,
    binding_applied: bool,
    binding_reason: String,
    memory_policy_applied: Option<bool>,
    memory_policy_reason: Option<String>,
    /// -1: interleaved over all nodes, or placement disabled.
    cache_node: Option<i64>,
    cache_placement_applied: Option<bool>,
    cache_placement_reason: Option<String>,
    nodes: Vec<NumaNodeDict>,
    /// Where each replica thread placed itself (absent when there is none).
    replicas: Option<Vec<ReplicaPlacementDict>>,
}

#[derive(zbus::zvariant::SerializeDict, Type)]
#[zvariant(signature = "a{sv}", crate = "zbus::zvariant")]
pub struct ReplicaPlacementDict {
    source: String,
    interface: Option<String>,
    node: u32,
    applied: bool,
    reason: String,
}

#[derive(zbus::zvariant::SerializeDict, Type)]
#[zvariant(signature = "a{sv}", crate = "zbus::zvariant")]
pub struct NumaNodeDict {
    id: u32,
    cpu_list: Vec<u32>,
    cpus: String,
    memory_total_kb: u64,
    memory_free_kb: u64,
    memory_free_known: bool,
}

impl From<&crate::numa::NumaNode> for NumaNodeDict {
    fn from(n: &crate::numa::NumaNode) -> Self {
        NumaNodeDict {
            id: n.id,
            cpu_list: n.cpu_list.clone(),
            cpus: crate::numa::format_cpu_list(&n.cpu_list),
            memory_total_kb: n.memory_total_kb,
            memory_free_kb: n.memory_free_kb,
            memory_free_known: n.memory_free_known,
        }
    }
}

impl From<&crate::numa::NumaInfo> for NumaInfoDict {
    fn from(info: &crate::numa::NumaInfo) -> Self {
        let cache = info.cache_binding();
        NumaInfoDict {
            node_count: info.node_count() as u32,
            optimal_node: info.optimal_node(),
            optimal_node_reason: info.optimal_node_reason().into(),
            numa_enabled: info.numa_enabled(),
            reason: info.reason().into(),
            this_system: Some(info.this_system()),
            memory_reason: Some(info.memory_reason().into()),
            placement: Some(info.placement().as_str().into()),
            memory_policy: Some(info.memory_policy().as_str().into()),
            writer_cpus: info.writer_cpus().to_vec(),
            writer_cpus_observed: info.writer_cpus_observed().map(<[u32]>::to_vec),
            binding_applied: info.binding_applied(),
            binding_reason: info.binding_reason().into(),
            memory_policy_applied: Some(info.memory_policy_applied()),
            memory_policy_reason: Some(info.memory_policy_reason().into()),
            cache_node: cache.map(|c| c.node.map_or(-1, i64::from)),
            cache_placement_applied: Some(cache.is_some_and(|c| c.applied)),
            cache_placement_reason: Some(cache.map_or_else(
                || "not applied: the cache thread has not started yet".into(),
                |c| c.reason.clone(),
            )),
            nodes: info.nodes().values().map(NumaNodeDict::from).collect(),
            replicas: (!info.replica_placements().is_empty()).then(|| {
                info.replica_placements()
                    .iter()
                    .map(|p| ReplicaPlacementDict {
                        source: p.source.clone(),
                        interface: p.interface.clone(),
                        node: p.node,
                        applied: p.applied,
                        reason: p.reason.clone(),
                    })
                    .collect()
            }),
        }
    }
}

impl NumaInfoDict {
    /// No topology could be read: the whole machine as node 0, NUMA disabled with `reason`,
    /// nothing bound.
    fn unavailable(reason: &str) -> Self {
        NumaInfoDict {
            node_count: 1,
            optimal_node: 0,
            optimal_node_reason: "the only node".into(),
            numa_enabled: false,
            reason: reason.into(),
            this_system: None,
            memory_reason: None,
            placement: None,
            memory_policy: None,
            writer_cpus: Vec::new(),
            writer_cpus_observed: None,
            binding_applied: false,
            binding_reason: format!("not applied: {reason}"),
            memory_policy_applied: None,
            memory_policy_reason: None,
            cache_node: None,
            cache_placement_applied: None,
            cache_placement_reason: None,
            nodes: vec![NumaNodeDict::from(&crate::numa::report::whole_machine())],
            replicas: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::error::ChainError;

    #[test]
    fn service_errors_map_to_the_documented_names_with_their_text() {
        let refused = crate::footprint::FootprintError::EmptyName { field: "plugin" };
        let text = refused.to_string();
        match Error::from(ServiceError::from(refused)) {
            Error::InvalidArgument(message) => assert_eq!(message, text),
            other => panic!("{other:?}"),
        }
        let full = ServiceError::from(ChainError::NoSpace("appending: ENOSPC".into()));
        let text = full.to_string();
        match Error::from(full) {
            Error::StorageFailure(message) => {
                assert_eq!(message, text);
                assert!(message.starts_with("no space left"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The dictionary as a client decodes it: key -> value signature.
    fn wire_types(dict: &(impl serde::Serialize + Type)) -> Vec<(String, String)> {
        use zbus::zvariant::{serialized::Context, to_bytes, LE};
        let bytes = to_bytes(Context::new_dbus(LE, 0), dict).expect("serialises");
        let (decoded, _): (HashMap<String, OwnedValue>, _) =
            bytes.deserialize().expect("decodes as a{sv}");
        let mut types: Vec<_> = decoded
            .iter()
            .map(|(k, v)| (k.clone(), v.value_signature().to_string()))
            .collect();
        types.sort();
        types
    }

    #[test]
    fn cache_stats_go_out_as_a_dictionary_of_t_x_and_d() {
        assert_eq!(CacheStatsDict::SIGNATURE.to_string(), "a{sv}");
        let types = wire_types(&CacheStatsDict::from(crate::cache::CacheStats::default()));
        assert_eq!(types.len(), 29);
        for (key, signature) in &types {
            let expected = match key.as_str() {
                "complete_through" => "x",
                "compression_ratio" | "hit_rate" | "hot_hit_rate" => "d",
                _ => "t",
            };
            assert_eq!(signature, expected, "{key}");
        }
    }

    #[test]
    fn numa_info_without_a_topology_has_its_keys_and_types() {
        assert_eq!(NumaInfoDict::SIGNATURE.to_string(), "a{sv}");
        let types = wire_types(&NumaInfoDict::unavailable("no hwloc"));
        let expected = [
            ("binding_applied", "b"),
            ("binding_reason", "s"),
            ("node_count", "u"),
            ("nodes", "aa{sv}"),
            ("numa_enabled", "b"),
            ("optimal_node", "u"),
            ("optimal_node_reason", "s"),
            ("reason", "s"),
            ("writer_cpus", "au"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, s)| (k.to_string(), s.to_string()))
            .collect();
        assert_eq!(types, expected);
    }

    #[test]
    fn expensive_calls_are_limited_per_caller_and_in_all() {
        let calls = ExpensiveCalls::default();
        let first = calls.enter(Some(1000)).expect("first");
        let _second = calls.enter(Some(1000)).expect("second");
        let refused = calls.enter(Some(1000)).expect_err("third of one uid");
        assert!(
            refused.starts_with(
                "uid 1000 has 2 Verify/FindSimilar/Query calls in progress; the limit is 2 per caller"
            ),
            "{refused}"
        );
        drop(first);
        let _third = calls.enter(Some(1000)).expect("one has answered");
        let mut others: Vec<_> = (0..6)
            .map(|uid| calls.enter(Some(uid)).expect("other uids"))
            .collect();
        assert_eq!(calls.0.lock().total, MAX_EXPENSIVE_TOTAL);
        let refused = calls.enter(None).expect_err("over the total");
        assert!(
            refused.starts_with("8 Verify/FindSimilar/Query calls are in progress; the limit is 8"),
            "{refused}"
        );
        others.clear();
        let _unknown = calls.enter(None).expect("room again");
        assert_eq!(
            calls.0.lock().per_uid.len(),
            2,
            "uids without calls are forgotten"
        );
    }
}
