//! `opdbus-bench bench`: our speed beside its floors and peers, all from one run.
//!
//! Floors (an empty D-Bus call on the same bus with the same client count, a minimal durable
//! AddFootprint server on the same bus and disk, a bare `fdatasync` on the same filesystem) and
//! our figures are measured in rounds, interleaved A B A B, so
//! machine noise hits both; every figure is also printed as a ratio to its floor or peer.
//! Nothing here is a test: figures are reported, never asserted.

mod cpus;
mod durable_floor;
mod independent;
mod measure;
mod peers;
mod report;
mod stage;
mod transparency_ab;
mod wakeups;

use crate::Outcome;
use clap::Args;
pub(crate) use measure::footprint_data;
use measure::{Call, Sample};
use opdbus_blockchain::service::{ChainOptions, OptimizedBlockchain};
use opdbus_blockchain::StreamingBlockchain;
pub(crate) use report::{machine, utc_now};
use report::{print_table, Extra, Figures};
use serde_json::Value;
use stage::Stage;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use wakeups::{Threads, Wakeups};

/// The seed's published figures, shown beside ours.
const SEED_WRITE_RATE: f64 = 500.0;

#[derive(Args)]
pub struct BenchArgs {
    /// A short run (seconds, not minutes) with the same figures, for smoke tests.
    #[arg(long)]
    quick: bool,
    /// Also write the figures as one flat JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Run on a fresh loop-mounted btrfs image instead of the temporary directory's
    /// filesystem (needs root and mkfs.btrfs).
    #[arg(long)]
    btrfs: bool,
    /// Only run AddFootprint with 16 clients for SECONDS (to profile the daemon meanwhile,
    /// e.g. with `perf record -g -p PID`); prints the daemon's pid and the rate.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    soak: Option<u64>,
    /// Only compare AddFootprint with 16 clients on the daemon with and without its
    /// transparency log (the rounds the full run ends its writes with).
    #[arg(long, conflicts_with = "soak")]
    transparency_only: bool,
    /// Run everything (bus, daemons, floor servers, clients, in-process chains) on these CPUs
    /// only, e.g. `0-1` or `0,2` (as taskset's list); default: wherever the bench may run.
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// (internal) Serve the empty-call floor on this bus address.
    #[arg(long, hide = true, value_name = "ADDRESS")]
    serve_floor: Option<String>,
}

/// How long and how often.
struct Plan {
    rounds: usize,
    slice: Duration,
    hot_reads: usize,
    cold_reads: usize,
    stream_count: u64,
    /// Rounds and slice of the comparison with and without the transparency log: slices a few
    /// checkpoint intervals (1 s) long, so that the log's work falls mostly inside them.
    transparency_rounds: usize,
    transparency_slice: Duration,
}

/// `opdbus-bench durable-floor`: the durable floor server alone.
pub fn serve_durable_floor(address: &str, dir: &Path) -> Outcome {
    durable_floor::serve(address, dir)
}

pub fn run(args: BenchArgs) -> Outcome {
    if let Some(address) = &args.serve_floor {
        return stage::serve_floor(address);
    }
    // Before any thread or child process exists: they all inherit it.
    if let Some(list) = &args.cpus {
        cpus::pin(list)?;
    }
    let plan = if args.quick {
        Plan {
            rounds: 2,
            slice: Duration::from_millis(300),
            hot_reads: 2_000,
            cold_reads: 20,
            stream_count: 50_000,
            transparency_rounds: 2,
            transparency_slice: Duration::from_millis(300),
        }
    } else {
        Plan {
            // The shared disk's fdatasync latency changes phase every few seconds (0.2 to
            // 4 ms): short slices, many rounds, so floor and figure see the same phases.
            rounds: 12,
            slice: Duration::from_millis(500),
            hot_reads: 20_000,
            cold_reads: 200,
            stream_count: 500_000,
            transparency_rounds: 16,
            transparency_slice: Duration::from_secs(2),
        }
    };
    // Fail before minutes of measuring, not after.
    let json_file = match &args.json {
        Some(path) => Some(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    if let Some(seconds) = args.soak {
        return runtime.block_on(soak(Duration::from_secs(seconds), args.btrfs));
    }
    let (figures, stage) = if args.transparency_only {
        runtime.block_on(measure_transparency(&plan, args.btrfs))?
    } else {
        runtime.block_on(measure_all(&plan, args.btrfs))?
    };
    print_table(&figures);
    let mut figures = figures;
    if args.soak.is_none() && !args.transparency_only {
        eprintln!("bench: the block cache's compression and shared tier");
        let cache = crate::bench_cache::run(&crate::bench_cache::CacheBenchPlan::new(args.quick))?;
        figures.json.extend(cache);
    }
    if let (Some(path), Some(mut file)) = (&args.json, json_file) {
        let text = serde_json::to_string_pretty(&Value::Object(figures.json))
            .map_err(|e| format!("cannot encode the figures: {e}"))?;
        std::io::Write::write_all(&mut file, (text + "\n").as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    // Removing the peers' files can take a while (one discard per file on some mounts).
    eprintln!("bench: cleaning up");
    drop(stage);
    Ok(ExitCode::SUCCESS)
}

/// Writes `figures` as one pretty JSON object to `path`.
pub fn write_json(path: &Path, figures: serde_json::Map<String, Value>) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&Value::Object(figures))
        .map_err(|e| format!("cannot encode the figures: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// AddFootprint with 16 clients for `duration`, nothing else.
async fn soak(duration: Duration, btrfs: bool) -> Outcome {
    let stage = Stage::start(btrfs, false).await?;
    let connections = measure::connect(&stage.address, 16).await?;
    println!("daemon pid {}", stage.daemon_pid());
    let before = measure::Cpu::now(stage.bus_pid(), stage.daemon_pid());
    let (sample, _) = measure::dbus_clients(&connections, Call::AddFootprint, duration).await?;
    let cpu = measure::Cpu::now(stage.bus_pid(), stage.daemon_pid()).since(before);
    let (bus, server, clients) = cpu.per_op_us(sample.ops);
    println!(
        "AddFootprint, 16 clients: {:.0}/s, p50 {:.0} µs, p99 {:.0} µs; CPU µs per call: bus {bus:.1}, daemon {server:.1}, clients {clients:.1}",
        sample.rate(),
        sample.p50_us(),
        sample.p99_us()
    );
    Ok(ExitCode::SUCCESS)
}

/// Everything measured in one run.
#[derive(Default)]
struct Samples {
    empty: [Sample; 4],
    /// The durable floor's AddFootprint, with as many clients as `empty`.
    durable: [Sample; 4],
    add: [Sample; 4],
    /// AddFootprint with 16 clients while one more client is subscribed to `BlockAdded` and
    /// reads every signal (the daemon emits none without a subscriber).
    subscribed: Sample,
    subscribed_cpu: measure::Cpu,
    /// `BlockAdded` signals that listener received.
    subscribed_signals: u64,
    /// AddFootprints (batches of [`measure::BATCH`]) with 16 clients; ops are footprints.
    batch: Sample,
    /// The same AddFootprint load through libdbus, on the daemon and on the durable floor.
    libdbus_add: Sample,
    libdbus_durable: Sample,
    fsync: Sample,
    inproc: [Sample; 2],
    /// In-process adds with 16 tasks through OptimizedBlockchain (cache on), with the chain
    /// writer bound to the optimal NUMA node, and without NUMA.
    numa_on: Sample,
    numa_off: Sample,
    sqlite: [Sample; 2],
    files: Sample,
    hot_dbus: Sample,
    empty_seq: Sample,
    ping_seq: Sample,
    empty_cpu: [measure::Cpu; 4],
    durable_cpu: [measure::Cpu; 4],
    add_cpu: [measure::Cpu; 4],
    batch_cpu: measure::Cpu,
    /// Thread wake-ups of the daemon and of the durable floor with 16 clients (AddFootprint),
    /// and of the daemon with 16 clients sending batches.
    add_wakeups: Wakeups,
    durable_wakeups: Wakeups,
    batch_wakeups: Wakeups,
}

const CLIENTS: [usize; 4] = [1, 4, 16, 64];
/// Where 16 clients are in [`CLIENTS`].
const AT_16: usize = 2;
const TASKS: [usize; 2] = [1, 16];

async fn measure_all(plan: &Plan, btrfs: bool) -> Result<(Figures, Stage), String> {
    let load_before = load_average();
    let mut stage = Stage::start(btrfs, true).await?;
    let work = stage.work.clone();
    let mut connections = Vec::new();
    for n in CLIENTS {
        connections.push(measure::connect(&stage.address, n).await?);
    }
    let plain = plain_connections(&stage).await?;
    // Warm-up (first calls pay for the caller lookup and connection setup).
    for set in &connections {
        measure::dbus_clients(set, Call::Empty, Duration::from_millis(50)).await?;
        measure::dbus_clients(set, Call::DurableFloor, Duration::from_millis(50)).await?;
        measure::dbus_clients(set, Call::AddFootprint, Duration::from_millis(50)).await?;
    }
    let batches = measure::dbus_clients(
        &connections[AT_16],
        Call::AddFootprints,
        Duration::from_millis(50),
    )
    .await?
    .0
    .ops > 0;
    if !batches {
        eprintln!("bench: this daemon has no AddFootprints: no batch figure");
    }
    let libdbus = independent::LibdbusClients::connect(&stage.address, 16)?;
    tokio::task::block_in_place(|| {
        libdbus.run(opdbus_blockchain::dbus::BUS_NAME, Duration::from_millis(50))?;
        libdbus.run(durable_floor::DURABLE_FLOOR_NAME, Duration::from_millis(50))
    })?;
    let inproc = StreamingBlockchain::new(work.join("inprocess-chain"))
        .await
        .map_err(|e| format!("cannot open the in-process chain: {e}"))?;
    let numa_chain = |numa: bool| {
        let mut options = ChainOptions::new(work.join(format!("numa-{numa}-chain")));
        if !numa {
            options.numa = None;
        }
        OptimizedBlockchain::with_options(options, work.join(format!("numa-{numa}-cache")))
    };
    let numa_on = numa_chain(true)
        .await
        .map_err(|e| format!("cannot open the NUMA-bound chain: {e}"))?;
    let numa_off = numa_chain(false)
        .await
        .map_err(|e| format!("cannot open the chain without NUMA: {e}"))?;
    let sqlite = peers::sqlite_create(&work.join("sqlite"))?;
    let files_dir = work.join("file-per-block");

    let listener = measure::BlockAddedListener::connect(&stage.address).await?;
    let mut s = Samples::default();
    let (bus_pid, floor_pid, daemon_pid) = (stage.bus_pid(), stage.floor_pid(), stage.daemon_pid());
    let durable_pid = stage.durable_floor_pid();
    let mut dbus_hashes = Vec::new();
    for round in 0..plan.rounds {
        eprintln!("bench: round {} of {}", round + 1, plan.rounds);
        for (i, set) in connections.iter().enumerate() {
            let before = measure::Cpu::now(bus_pid, floor_pid);
            s.empty[i].merge(measure::dbus_clients(set, Call::Empty, plan.slice).await?.0);
            s.empty_cpu[i].add(measure::Cpu::now(bus_pid, floor_pid).since(before));

            let threads = Threads::read(durable_pid);
            let before = measure::Cpu::now(bus_pid, durable_pid);
            s.durable[i].merge(
                measure::dbus_clients(set, Call::DurableFloor, plan.slice)
                    .await?
                    .0,
            );
            s.durable_cpu[i].add(measure::Cpu::now(bus_pid, durable_pid).since(before));
            if i == AT_16 {
                s.durable_wakeups.add(&threads, &Threads::read(durable_pid));
            }

            let threads = Threads::read(daemon_pid);
            let before = measure::Cpu::now(bus_pid, daemon_pid);
            let (sample, hashes) =
                measure::dbus_clients(set, Call::AddFootprint, plan.slice).await?;
            s.add_cpu[i].add(measure::Cpu::now(bus_pid, daemon_pid).since(before));
            if i == AT_16 {
                s.add_wakeups.add(&threads, &Threads::read(daemon_pid));
            }
            s.add[i].merge(sample);
            dbus_hashes.extend(hashes);
            if i == AT_16 {
                // What BlockAdded costs when someone listens: the same load with one more
                // client subscribed and reading every signal, right after it (not after the
                // batches, whose blocks the cache thread is still storing for a while).
                let listening = listener.subscribe().await?;
                let before = measure::Cpu::now(bus_pid, daemon_pid);
                let (sample, _) =
                    measure::dbus_clients(set, Call::AddFootprint, plan.slice).await?;
                s.subscribed_cpu
                    .add(measure::Cpu::now(bus_pid, daemon_pid).since(before));
                s.subscribed.merge(sample);
                listening.stop().await?;
            }
        }
        if batches {
            let threads = Threads::read(daemon_pid);
            let before = measure::Cpu::now(bus_pid, daemon_pid);
            let (sample, _) =
                measure::dbus_clients(&connections[AT_16], Call::AddFootprints, plan.slice).await?;
            s.batch_cpu
                .add(measure::Cpu::now(bus_pid, daemon_pid).since(before));
            s.batch_wakeups.add(&threads, &Threads::read(daemon_pid));
            s.batch.merge(sample);
        }
        // The second client, on both servers, back to back.
        let slice = plan.slice;
        let (on_daemon, on_floor) = tokio::task::block_in_place(|| {
            Ok::<_, String>((
                libdbus.run(opdbus_blockchain::dbus::BUS_NAME, slice)?,
                libdbus.run(durable_floor::DURABLE_FLOOR_NAME, slice)?,
            ))
        })?;
        s.libdbus_add.merge(on_daemon);
        s.libdbus_durable.merge(on_floor);
        let (dir, slice) = (work.clone(), plan.slice);
        s.fsync
            .merge(blocking(move || measure::fdatasync_floor(&dir, slice)).await?);
        for (i, tasks) in TASKS.into_iter().enumerate() {
            s.inproc[i].merge(measure::inprocess_add(&inproc, tasks, plan.slice).await?);
        }
        s.numa_on
            .merge(measure::inprocess_add(numa_on.chain(), 16, plan.slice / 2).await?);
        s.numa_off
            .merge(measure::inprocess_add(numa_off.chain(), 16, plan.slice / 2).await?);
        let (dir, slice) = (work.clone(), plan.slice);
        s.fsync
            .merge(blocking(move || measure::fdatasync_floor(&dir, slice)).await?);
        for (i, writers) in TASKS.into_iter().enumerate() {
            let (path, slice) = (sqlite.clone(), plan.slice);
            s.sqlite[i]
                .merge(blocking(move || peers::sqlite_writers(&path, writers, slice)).await?);
        }
        let (dir, slice) = (files_dir.clone(), plan.slice);
        s.files
            .merge(blocking(move || peers::file_per_block_writers(&dir, 16, slice)).await?);

        // Hot GetBlock against the empty call and a Ping to the daemon, interleaved call by
        // call on one connection (the block was read once before, so it is in RAM).
        let hot = &dbus_hashes[dbus_hashes.len() / 2];
        measure::dbus_get_block(&connections[0][0], std::slice::from_ref(hot), || {}).await?;
        let (empty, ping, got) =
            measure::dbus_hot_read_trio(&connections[0][0], hot, plan.hot_reads / plan.rounds)
                .await?;
        s.empty_seq.merge(empty);
        s.ping_seq.merge(ping);
        s.hot_dbus.merge(got);
    }

    s.subscribed_signals = listener.received();
    drop(listener);
    numa_on.shutdown().await;
    numa_off.shutdown().await;
    let transparency = transparency_ab::compare(
        &stage,
        &connections[2],
        &plain,
        plan.transparency_rounds,
        plan.transparency_slice,
    )
    .await?;
    eprintln!("bench: streaming, reads");
    let stream_chain = StreamingBlockchain::new(work.join("stream-chain"))
        .await
        .map_err(|e| format!("cannot open the streaming chain: {e}"))?;
    let stream = measure::inprocess_stream(&stream_chain, plan.stream_count).await?;
    stream_chain.shutdown().await;

    let inproc_hashes = hashes_of(&inproc, plan.cold_reads.max(1000)).await?;
    let hot_hash = vec![inproc_hashes[0].clone(); plan.hot_reads];
    let hot_inproc = measure::inprocess_get_block(&inproc, &hot_hash, || {}).await?;
    // Cold over D-Bus: a fresh daemon on the same chain with an empty cache and no pre-loading,
    // and the chain's page cache dropped before each read of a block not read before.
    eprintln!("bench: cold reads on a freshly started daemon");
    stage.restart_daemon_cold()?;
    let mut cold_pick = spread(&dbus_hashes, plan.cold_reads);
    cold_pick.dedup();
    let daemon_dir = stage.daemon_chain_dir.clone();
    let cold_dbus = measure::dbus_get_block(&connections[0][0], &cold_pick, || {
        measure::evict_page_cache(&daemon_dir)
    })
    .await?;
    let inproc_dir = inproc.chain_dir().to_path_buf();
    let cold_pick = spread(&inproc_hashes, plan.cold_reads);
    let cold_inproc = measure::inprocess_get_block(&inproc, &cold_pick, || {
        measure::evict_page_cache(&inproc_dir)
    })
    .await?;
    measure::evict_page_cache(&inproc_dir);
    let skewed_pick = measure::skewed_picks(&inproc_hashes, plan.hot_reads, 0x0bd5);
    let skewed = measure::inprocess_get_block(&inproc, &skewed_pick, || {}).await?;
    inproc.shutdown().await;
    drop(inproc);
    let skewed_hit_rate = measure::skewed_cache_hit_rate(
        &inproc_dir,
        &work.join("inprocess-cache"),
        &inproc_hashes,
        &skewed_pick,
    )
    .await?;

    let filesystem = stage.filesystem();
    let figures = Figures::new(
        plan,
        s,
        Extra {
            stream,
            hot_inproc,
            cold_dbus,
            cold_inproc,
            skewed,
            skewed_hit_rate,
            filesystem,
            load_before,
            btrfs,
            transparency,
            batches,
        },
    );
    Ok((figures, stage))
}

/// Only the comparison with and without the transparency log.
async fn measure_transparency(plan: &Plan, btrfs: bool) -> Result<(Figures, Stage), String> {
    let load_before = load_average();
    let stage = Stage::start(btrfs, true).await?;
    let with_log = measure::connect(&stage.address, 16).await?;
    measure::dbus_clients(&with_log, Call::AddFootprint, Duration::from_millis(50)).await?;
    let plain = plain_connections(&stage).await?;
    let comparison = transparency_ab::compare(
        &stage,
        &with_log,
        &plain,
        plan.transparency_rounds,
        plan.transparency_slice,
    )
    .await?;
    let figures = Figures::transparency_only(&comparison, &stage.filesystem(), &load_before, btrfs);
    Ok((figures, stage))
}

/// 16 warmed-up connections to the daemon without the transparency log.
async fn plain_connections(stage: &Stage) -> Result<Vec<zbus::Connection>, String> {
    let plain = measure::connect(&stage.plain_address, 16).await?;
    measure::dbus_clients(&plain, Call::AddFootprint, Duration::from_millis(50)).await?;
    Ok(plain)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a measurement thread failed: {e}"))?
}

/// Hashes of up to `count` blocks spread over the whole chain.
async fn hashes_of(chain: &StreamingBlockchain, count: usize) -> Result<Vec<String>, String> {
    let (head, _) = chain.head();
    let step = (head / count as u64).max(1);
    let mut hashes = Vec::new();
    let mut height = 1;
    while height <= head && hashes.len() < count {
        let block = chain
            .get_block_by_height(height)
            .await
            .map_err(|e| format!("reading block {height}: {e}"))?
            .ok_or_else(|| format!("block {height} is missing"))?;
        hashes.push(block.hash_hex());
        height += step;
    }
    if hashes.is_empty() {
        return Err("the in-process chain holds no blocks".into());
    }
    Ok(hashes)
}

/// `count` items spread evenly over `all`.
fn spread(all: &[String], count: usize) -> Vec<String> {
    let step = (all.len() / count.max(1)).max(1);
    all.iter().step_by(step).take(count).cloned().collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
