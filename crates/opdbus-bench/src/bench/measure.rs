//! The bench's measurements: each one runs for a fixed time (or count) and returns a
//! [`Sample`]; the caller runs them in rounds, floor and project interleaved, and merges the
//! samples of each figure.

use super::durable_floor::DURABLE_FLOOR_NAME;
use super::stage::{FLOOR_NAME, FLOOR_PATH};
use opdbus_blockchain::dbus::{BUS_NAME, OBJECT_PATH};
use opdbus_blockchain::{PluginFootprint, StreamingBlockchain};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Operations done, the wall time they took, and each one's latency.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub ops: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    /// Batches (fdatasyncs) and blocks committed meanwhile, where the store reports them.
    pub batches: u64,
    pub blocks: u64,
}

impl Sample {
    pub fn merge(&mut self, other: Sample) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.batches += other.batches;
        self.blocks += other.blocks;
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q` quantile (0..=1) of the latencies, in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let at = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[at].as_secs_f64() * 1e6
    }

    pub fn p50_us(&self) -> f64 {
        self.quantile_us(0.5)
    }

    pub fn p99_us(&self) -> f64 {
        self.quantile_us(0.99)
    }

    /// Blocks per fdatasync.
    pub fn group_size(&self) -> f64 {
        if self.batches > 0 {
            self.blocks as f64 / self.batches as f64
        } else {
            0.0
        }
    }
}

/// CPU time used by the bus, the server (daemon or floor server) and this process (the
/// clients), read from `/proc/PID/stat` (all threads; 10 ms resolution, fine over seconds).
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu {
    pub bus: Duration,
    pub server: Duration,
    pub clients: Duration,
}

impl Cpu {
    pub fn now(bus_pid: u32, server_pid: u32) -> Cpu {
        Cpu {
            bus: cpu_of(&bus_pid.to_string()),
            server: cpu_of(&server_pid.to_string()),
            clients: cpu_of("self"),
        }
    }

    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            bus: self.bus.saturating_sub(before.bus),
            server: self.server.saturating_sub(before.server),
            clients: self.clients.saturating_sub(before.clients),
        }
    }

    pub fn add(&mut self, other: Cpu) {
        self.bus += other.bus;
        self.server += other.server;
        self.clients += other.clients;
    }

    /// Microseconds of CPU per operation: (bus, server, clients).
    pub fn per_op_us(&self, ops: u64) -> (f64, f64, f64) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / ops.max(1) as f64;
        (per(self.bus), per(self.server), per(self.clients))
    }
}

/// CPU time of the thread of process `pid` named `name` (its `comm`); zero if there is none.
/// From the scheduler's nanosecond count, for spans too short for `/proc/PID/stat`'s ticks.
pub fn thread_cpu(pid: u32, name: &str) -> Duration {
    threads_cpu(pid, |comm| comm == name)
}

/// CPU time of all the threads of process `pid` (nanosecond counts, as [`thread_cpu`]).
pub fn process_cpu(pid: u32) -> Duration {
    threads_cpu(pid, |_| true)
}

fn threads_cpu(pid: u32, wanted: impl Fn(&str) -> bool) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !wanted(comm.trim_end()) {
            continue;
        }
        let ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        total += Duration::from_nanos(ns);
    }
    total
}

fn cpu_of(pid: &str) -> Duration {
    // utime and stime are fields 14 and 15, counted in USER_HZ (100 on Linux) ticks.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The footprint every writer writes: a small op-dbus change record.
pub fn footprint_data(n: u64) -> String {
    format!(r#"{{"interface":"br0","type":"bridge","mtu":1500,"stp":false,"seq":{n}}}"#)
}

/// What a D-Bus client calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// The floor: an empty method on the floor server.
    Empty,
    /// AddFootprint on the daemon (durable reply).
    AddFootprint,
    /// The same AddFootprint on the durable floor (`org.opdbus.BenchDurableFloor`).
    DurableFloor,
    /// AddFootprints on the daemon with [`BATCH`] footprints per call; each footprint counts as
    /// one operation, the latency is the call's.
    AddFootprints,
}

/// Footprints per AddFootprints call.
pub const BATCH: usize = 100;

/// Whether a call failed because the daemon has no such method (an older daemon).
pub fn is_unknown_method(error: &zbus::Error) -> bool {
    matches!(error, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.DBus.Error.UnknownMethod")
}

/// Connects `n` separate bus connections.
pub async fn connect(address: &str, n: usize) -> Result<Vec<zbus::Connection>, String> {
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        let connection = zbus::connection::Builder::address(address)
            .map_err(|e| format!("bad bus address: {e}"))?
            .build()
            .await
            .map_err(|e| format!("cannot connect to the private bus: {e}"))?;
        connections.push(connection);
    }
    Ok(connections)
}

/// A client that receives every `BlockAdded` while it is subscribed, as a program watching the
/// chain would: its own connection, a match rule and a task reading each signal. It listens
/// only between [`BlockAddedListener::subscribe`] and [`Listening::stop`], so that a daemon
/// that always emits (one from before `Subscribe`) is measured without a listener elsewhere.
pub struct BlockAddedListener {
    connection: zbus::Connection,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A listener's match rule and reading task, until [`Listening::stop`].
pub struct Listening<'a> {
    listener: &'a BlockAddedListener,
    reader: tokio::task::JoinHandle<()>,
    subscribed: bool,
}

impl BlockAddedListener {
    pub async fn connect(address: &str) -> Result<BlockAddedListener, String> {
        Ok(BlockAddedListener {
            connection: connect(address, 1).await?.remove(0),
            received: Default::default(),
        })
    }

    /// Adds the match rule, starts reading, then calls `Subscribe` (an older daemon has none
    /// and emits anyway).
    pub async fn subscribe(&self) -> Result<Listening<'_>, String> {
        let rule = opdbus_blockchain::dbus::block_added_rule().map_err(|e| e.to_string())?;
        let mut signals =
            zbus::MessageStream::for_match_rule(rule, &self.connection, Some(1 << 16))
                .await
                .map_err(|e| format!("cannot listen to BlockAdded: {e}"))?;
        let counter = self.received.clone();
        let reader = tokio::spawn(async move {
            while opdbus_blockchain::dbus::next_message(&mut signals)
                .await
                .is_some()
            {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let subscribed = self.call("Subscribe").await.is_ok();
        Ok(Listening {
            listener: self,
            reader,
            subscribed,
        })
    }

    async fn call(&self, member: &str) -> Result<(), String> {
        self.connection
            .call_method(Some(BUS_NAME), OBJECT_PATH, Some(BUS_NAME), member, &())
            .await
            .map(drop)
            .map_err(|e| format!("{member}: {e}"))
    }

    /// Signals received so far.
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Listening<'_> {
    /// Unsubscribes and stops listening (dropping the stream removes its match rule).
    pub async fn stop(self) -> Result<(), String> {
        if self.subscribed {
            self.listener.call("Unsubscribe").await?;
        }
        self.reader.abort();
        Ok(())
    }
}

/// Each connection calls `call` back to back for `duration`; every call is awaited before the
/// next (a client that waits for its durable ack). Returns the hashes of some added blocks.
pub async fn dbus_clients(
    connections: &[zbus::Connection],
    call: Call,
    duration: Duration,
) -> Result<(Sample, Vec<String>), String> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (client, connection) in connections.iter().enumerate() {
        let connection = connection.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut hashes = Vec::new();
            let mut n = 0u64;
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match call {
                    Call::Empty => {
                        connection
                            .call_method(
                                Some(FLOOR_NAME),
                                FLOOR_PATH,
                                Some(FLOOR_NAME),
                                "Empty",
                                &(),
                            )
                            .await
                            .map_err(|e| format!("the empty call failed: {e}"))?;
                    }
                    Call::AddFootprint | Call::DurableFloor => {
                        let (destination, what) = if call == Call::AddFootprint {
                            (BUS_NAME, "AddFootprint")
                        } else {
                            (DURABLE_FLOOR_NAME, "AddFootprint on the durable floor")
                        };
                        let data = footprint_data(n);
                        let reply = connection
                            .call_method(
                                Some(destination),
                                OBJECT_PATH,
                                Some(BUS_NAME),
                                "AddFootprint",
                                &("network", "create", data.as_str()),
                            )
                            .await
                            .map_err(|e| format!("{what} failed: {e}"))?;
                        if call == Call::AddFootprint && n % 64 == client as u64 % 64 {
                            let (_height, hash): (u64, String) = reply
                                .body()
                                .deserialize()
                                .map_err(|e| format!("AddFootprint replied oddly: {e}"))?;
                            hashes.push(hash);
                        }
                    }
                    Call::AddFootprints => {
                        let data: Vec<String> =
                            (0..BATCH as u64).map(|i| footprint_data(n + i)).collect();
                        let batch: Vec<(&str, &str, &str)> = data
                            .iter()
                            .map(|d| ("network", "create", d.as_str()))
                            .collect();
                        let reply = match connection
                            .call_method(
                                Some(BUS_NAME),
                                OBJECT_PATH,
                                Some(BUS_NAME),
                                "AddFootprints",
                                &(batch,),
                            )
                            .await
                        {
                            Ok(reply) => reply,
                            // An older daemon: no figure rather than no bench.
                            Err(e) if is_unknown_method(&e) => break,
                            Err(e) => return Err(format!("AddFootprints failed: {e}")),
                        };
                        let blocks: Vec<(u64, String)> = reply
                            .body()
                            .deserialize()
                            .map_err(|e| format!("AddFootprints replied oddly: {e}"))?;
                        if blocks.len() != BATCH {
                            return Err(format!(
                                "AddFootprints answered {} blocks for {BATCH} footprints",
                                blocks.len()
                            ));
                        }
                        ops += BATCH as u64 - 1;
                        n += BATCH as u64 - 1;
                    }
                }
                latencies.push(t0.elapsed());
                n += 1;
                ops += 1;
            }
            Ok::<_, String>((latencies, hashes, ops))
        }));
    }
    let mut sample = Sample::default();
    let mut hashes = Vec::new();
    for task in tasks {
        let (latencies, mut some, ops) =
            task.await.map_err(|e| format!("a client failed: {e}"))??;
        sample.ops += ops;
        sample.latencies.extend(latencies);
        hashes.append(&mut some);
    }
    sample.elapsed = start.elapsed();
    Ok((sample, hashes))
}

/// GetBlock for each hash over one connection (hot: the same hash again and again).
/// The empty call, a Ping to the daemon and a hot GetBlock of `hash`, one after the other on
/// one connection, `n` times: the three see the same state of the machine, call by call.
/// Returns (empty, ping, GetBlock).
pub async fn dbus_hot_read_trio(
    connection: &zbus::Connection,
    hash: &str,
    n: usize,
) -> Result<(Sample, Sample, Sample), String> {
    let (mut empty, mut ping, mut hot) = (Sample::default(), Sample::default(), Sample::default());
    let record = |sample: &mut Sample, elapsed: Duration| {
        sample.elapsed += elapsed;
        sample.latencies.push(elapsed);
        sample.ops += 1;
    };
    for _ in 0..n {
        let t0 = Instant::now();
        connection
            .call_method(Some(FLOOR_NAME), FLOOR_PATH, Some(FLOOR_NAME), "Empty", &())
            .await
            .map_err(|e| format!("the empty call failed: {e}"))?;
        record(&mut empty, t0.elapsed());
        let t0 = Instant::now();
        connection
            .call_method(
                Some(BUS_NAME),
                OBJECT_PATH,
                Some("org.freedesktop.DBus.Peer"),
                "Ping",
                &(),
            )
            .await
            .map_err(|e| format!("Ping to the daemon failed: {e}"))?;
        record(&mut ping, t0.elapsed());
        let t0 = Instant::now();
        let reply = connection
            .call_method(
                Some(BUS_NAME),
                OBJECT_PATH,
                Some(BUS_NAME),
                "GetBlock",
                &(hash,),
            )
            .await
            .map_err(|e| format!("GetBlock {hash} failed: {e}"))?;
        record(&mut hot, t0.elapsed());
        let _json: String = reply
            .body()
            .deserialize()
            .map_err(|e| format!("GetBlock replied oddly: {e}"))?;
    }
    Ok((empty, ping, hot))
}

pub async fn dbus_get_block(
    connection: &zbus::Connection,
    hashes: &[String],
    before_each: impl Fn(),
) -> Result<Sample, String> {
    let mut sample = Sample::default();
    for hash in hashes {
        before_each();
        let t0 = Instant::now();
        let reply = connection
            .call_method(
                Some(BUS_NAME),
                OBJECT_PATH,
                Some(BUS_NAME),
                "GetBlock",
                &(hash.as_str(),),
            )
            .await
            .map_err(|e| format!("GetBlock {hash} failed: {e}"))?;
        let elapsed = t0.elapsed();
        let _json: String = reply
            .body()
            .deserialize()
            .map_err(|e| format!("GetBlock replied oddly: {e}"))?;
        sample.elapsed += elapsed;
        sample.latencies.push(elapsed);
        sample.ops += 1;
    }
    Ok(sample)
}

/// The floor of every durable write: append ~200 bytes and `fdatasync`, back to back, on the
/// filesystem under `dir`. The file has a directory of its own, as each chain's segments do:
/// on ext4 a file's `fdatasync` also writes its inode's table block, and waits while that block
/// is being written for a neighbour (the peers' thousands of files).
pub fn fdatasync_floor(dir: &Path, duration: Duration) -> Result<Sample, String> {
    let dir = dir.join("fdatasync-floor");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("appends");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(false)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut offset = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    let record = [0x5au8; 200];
    let mut sample = Sample::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t0 = Instant::now();
        file.write_all_at(&record, offset)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        sample.latencies.push(t0.elapsed());
        offset += record.len() as u64;
        sample.ops += 1;
    }
    sample.elapsed = start.elapsed();
    Ok(sample)
}

/// `tasks` tasks each adding footprints through the library and awaiting each durable ack.
pub async fn inprocess_add(
    chain: &StreamingBlockchain,
    tasks: usize,
    duration: Duration,
) -> Result<Sample, String> {
    let (batches0, blocks0) = chain.commit_counts();
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let chain = chain.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                let footprint =
                    PluginFootprint::from_json_text("network", "create", footprint_data(n))
                        .map_err(|e| e.to_string())?;
                let t0 = Instant::now();
                chain
                    .add_footprint(footprint)
                    .await
                    .map_err(|e| format!("add_footprint failed: {e}"))?;
                latencies.push(t0.elapsed());
                n += 1;
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut sample = Sample::default();
    for handle in handles {
        let latencies = handle.await.map_err(|e| format!("a task failed: {e}"))??;
        sample.ops += latencies.len() as u64;
        sample.latencies.extend(latencies);
    }
    sample.elapsed = start.elapsed();
    let (batches1, blocks1) = chain.commit_counts();
    sample.batches = batches1 - batches0;
    sample.blocks = blocks1 - blocks0;
    Ok(sample)
}

/// `count` footprints through `start_footprint_receiver`'s channel, timed from the first send
/// until the receiver returns (everything it received is durable then).
pub async fn inprocess_stream(chain: &StreamingBlockchain, count: u64) -> Result<Sample, String> {
    let footprints = (0..count)
        .map(|n| PluginFootprint::from_json_text("network", "create", footprint_data(n)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let (batches0, blocks0) = chain.commit_counts();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for footprint in footprints {
            if tx.send(footprint).is_err() {
                break;
            }
        }
    });
    chain.start_footprint_receiver(rx).await;
    let elapsed = start.elapsed();
    producer
        .await
        .map_err(|e| format!("the producer failed: {e}"))?;
    let (batches1, blocks1) = chain.commit_counts();
    if blocks1 - blocks0 != count {
        return Err(format!(
            "streamed {count} footprints but {} blocks were committed",
            blocks1 - blocks0
        ));
    }
    Ok(Sample {
        ops: count,
        elapsed,
        latencies: Vec::new(),
        batches: batches1 - batches0,
        blocks: blocks1 - blocks0,
    })
}

/// In-process reads of each hash (hot: the same one again and again).
pub async fn inprocess_get_block(
    chain: &StreamingBlockchain,
    hashes: &[String],
    before_each: impl Fn(),
) -> Result<Sample, String> {
    let mut sample = Sample::default();
    for hash in hashes {
        before_each();
        let t0 = Instant::now();
        let block = chain
            .get_block(hash)
            .await
            .map_err(|e| format!("get_block {hash} failed: {e}"))?;
        let elapsed = t0.elapsed();
        if block.is_none() {
            return Err(format!("get_block {hash}: not found"));
        }
        sample.elapsed += elapsed;
        sample.latencies.push(elapsed);
        sample.ops += 1;
    }
    Ok(sample)
}

/// Drops the page cache of every file under `dir` (its segments and indexes), so the next read
/// goes to disk.
pub fn evict_page_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            evict_page_cache(&entry.path());
        } else if let Ok(file) = std::fs::File::open(entry.path()) {
            let _ = nix::fcntl::posix_fadvise(
                file.as_raw_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}

/// A skewed read mix: hash `i` of `hashes` is read with probability ∝ 1/(i+1) (Zipf, s = 1).
pub fn skewed_picks(hashes: &[String], count: usize, seed: u64) -> Vec<String> {
    let weights: Vec<f64> = (0..hashes.len()).map(|i| 1.0 / (i + 1) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = opdbus_testkit::SplitMix64(seed);
    let mut picks = Vec::with_capacity(count);
    for _ in 0..count {
        let r = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let mut target = r * total;
        let mut chosen = hashes.len() - 1;
        for (i, w) in weights.iter().enumerate() {
            if target < *w {
                chosen = i;
                break;
            }
            target -= w;
        }
        picks.push(hashes[chosen].clone());
    }
    picks
}

/// The block cache's hot-tier hit rate on `picks` (a skewed mix over `hashes`) with plain LRU
/// and a hot tier of a tenth of the bytes of the blocks in `hashes`, on the chain in
/// `chain_dir` (not in use) with a fresh cache in `cache_dir`.
pub async fn skewed_cache_hit_rate(
    chain_dir: &Path,
    cache_dir: &Path,
    hashes: &[String],
    picks: &[String],
) -> Result<f64, String> {
    use opdbus_blockchain::cache::{hot_weight, CacheOptions};
    use opdbus_blockchain::service::{ChainOptions, OptimizedBlockchain};
    let mut options = ChainOptions::new(chain_dir);
    options.numa = None;
    options.predict = false;
    let mut cache = CacheOptions::new(cache_dir);
    cache.preload_blocks = 0;
    let chain = OptimizedBlockchain::with_cache(options.clone(), cache.clone())
        .await
        .map_err(|e| format!("cannot open the chain with a cache: {e}"))?;
    let mut weight = 0;
    for hash in hashes {
        if let Ok(Some(block)) = chain.chain().get_block(hash).await {
            weight += hot_weight(&block);
        }
    }
    chain.shutdown().await;
    cache.hot_bytes = (weight / 10).max(64 * 1024);
    let chain = OptimizedBlockchain::with_cache(options, cache)
        .await
        .map_err(|e| format!("cannot open the chain with a cache: {e}"))?;
    chain.cache().reset_lookup_counters();
    for hash in picks {
        chain
            .get_block(hash)
            .await
            .map_err(|e| format!("get_block {hash} failed: {e}"))?;
    }
    let rate = chain
        .cache_stats()
        .await
        .map_err(|e| format!("cache stats: {e}"))?
        .hot_hit_rate;
    chain.shutdown().await;
    Ok(rate)
}
