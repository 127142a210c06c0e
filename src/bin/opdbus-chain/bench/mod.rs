//! `opdbus-chain bench`: our speed beside its floors and peers, all from one run.
//!
//! Floors (an empty D-Bus call on the same bus with the same client count, a bare `fdatasync`
//! on the same filesystem) and our figures are measured in rounds, interleaved A B A B, so
//! machine noise hits both; every figure is also printed as a ratio to its floor or peer.
//! Nothing here is a test: figures are reported, never asserted.

mod measure;
mod peers;
mod stage;

use crate::Outcome;
use clap::Args;
use measure::{Call, Sample};
use opdbus_blockchain::StreamingBlockchain;
use serde_json::{json, Map, Value};
use stage::Stage;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    #[arg(long, value_name = "SECONDS")]
    soak: Option<u64>,
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
}

pub fn run(args: BenchArgs) -> Outcome {
    if let Some(address) = &args.serve_floor {
        return stage::serve_floor(address);
    }
    let plan = if args.quick {
        Plan {
            rounds: 2,
            slice: Duration::from_millis(300),
            hot_reads: 2_000,
            cold_reads: 20,
            stream_count: 50_000,
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
    let (figures, stage) = runtime.block_on(measure_all(&plan, args.btrfs))?;
    print_table(&figures);
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

/// AddFootprint with 16 clients for `duration`, nothing else.
async fn soak(duration: Duration, btrfs: bool) -> Outcome {
    let stage = Stage::start(btrfs).await?;
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
    empty: [Sample; 3],
    add: [Sample; 3],
    fsync: Sample,
    inproc: [Sample; 2],
    sqlite: [Sample; 2],
    files: Sample,
    hot_dbus: Sample,
    empty_seq: Sample,
    empty_cpu: [measure::Cpu; 3],
    add_cpu: [measure::Cpu; 3],
}

const CLIENTS: [usize; 3] = [1, 4, 16];
const TASKS: [usize; 2] = [1, 16];

async fn measure_all(plan: &Plan, btrfs: bool) -> Result<(Figures, Stage), String> {
    let load_before = load_average();
    let stage = Stage::start(btrfs).await?;
    let work = stage.work.clone();
    let mut connections = Vec::new();
    for n in CLIENTS {
        connections.push(measure::connect(&stage.address, n).await?);
    }
    // Warm-up (first calls pay for the caller lookup and connection setup).
    for set in &connections {
        measure::dbus_clients(set, Call::Empty, Duration::from_millis(50)).await?;
        measure::dbus_clients(set, Call::AddFootprint, Duration::from_millis(50)).await?;
    }
    let inproc = StreamingBlockchain::new(work.join("inprocess-chain"))
        .await
        .map_err(|e| format!("cannot open the in-process chain: {e}"))?;
    let sqlite = peers::sqlite_create(&work.join("sqlite"))?;
    let files_dir = work.join("file-per-block");

    let mut s = Samples::default();
    let (bus_pid, floor_pid, daemon_pid) = (stage.bus_pid(), stage.floor_pid(), stage.daemon_pid());
    let mut dbus_hashes = Vec::new();
    for round in 0..plan.rounds {
        eprintln!("bench: round {} of {}", round + 1, plan.rounds);
        for (i, set) in connections.iter().enumerate() {
            let before = measure::Cpu::now(bus_pid, floor_pid);
            s.empty[i].merge(measure::dbus_clients(set, Call::Empty, plan.slice).await?.0);
            s.empty_cpu[i].add(measure::Cpu::now(bus_pid, floor_pid).since(before));
            let before = measure::Cpu::now(bus_pid, daemon_pid);
            let (sample, hashes) =
                measure::dbus_clients(set, Call::AddFootprint, plan.slice).await?;
            s.add_cpu[i].add(measure::Cpu::now(bus_pid, daemon_pid).since(before));
            s.add[i].merge(sample);
            dbus_hashes.extend(hashes);
        }
        let (dir, slice) = (work.clone(), plan.slice);
        s.fsync
            .merge(blocking(move || measure::fdatasync_floor(&dir, slice)).await?);
        for (i, tasks) in TASKS.into_iter().enumerate() {
            s.inproc[i].merge(measure::inprocess_add(&inproc, tasks, plan.slice).await?);
        }
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

        // Hot GetBlock against the empty call, both sequential on one connection.
        let hot = vec![dbus_hashes[dbus_hashes.len() / 2].clone(); plan.hot_reads / plan.rounds];
        s.empty_seq.merge(
            measure::dbus_clients(&connections[0], Call::Empty, plan.slice / 2)
                .await?
                .0,
        );
        s.hot_dbus
            .merge(measure::dbus_get_block(&connections[0][0], &hot, || {}).await?);
    }

    eprintln!("bench: streaming, reads");
    let stream_chain = StreamingBlockchain::new(work.join("stream-chain"))
        .await
        .map_err(|e| format!("cannot open the streaming chain: {e}"))?;
    let stream = measure::inprocess_stream(&stream_chain, plan.stream_count).await?;
    stream_chain.shutdown().await;

    let inproc_hashes = hashes_of(&inproc, plan.cold_reads.max(1000)).await?;
    let hot_hash = vec![inproc_hashes[0].clone(); plan.hot_reads];
    let hot_inproc = measure::inprocess_get_block(&inproc, &hot_hash, || {}).await?;
    let cold_pick = spread(&dbus_hashes, plan.cold_reads);
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
            filesystem,
            load_before,
            btrfs,
        },
    );
    Ok((figures, stage))
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

struct Extra {
    stream: Sample,
    hot_inproc: Sample,
    cold_dbus: Sample,
    cold_inproc: Sample,
    skewed: Sample,
    filesystem: String,
    load_before: String,
    btrfs: bool,
}

/// One line of the table: a figure, and what it is compared with.
struct Row {
    label: String,
    value: f64,
    unit: &'static str,
    against: Option<(String, f64)>,
    target: &'static str,
    /// Shown in the "compared with" column when there is no comparison.
    note: String,
}

struct Figures {
    rows: Vec<Row>,
    json: Map<String, Value>,
    header: String,
}

impl Figures {
    fn new(plan: &Plan, s: Samples, x: Extra) -> Figures {
        let mut f = Figures {
            rows: Vec::new(),
            json: Map::new(),
            header: String::new(),
        };
        let fsync_rate = s.fsync.rate();
        let fsync_p50 = s.fsync.p50_us();
        let empty_p50 = s.empty[0].p50_us();

        f.put("empty_call_rate_1", s.empty[0].rate());
        f.put("empty_call_rate_4", s.empty[1].rate());
        f.put("empty_call_rate_16", s.empty[2].rate());
        f.put("empty_call_p50_us", empty_p50);
        f.put("empty_call_p99_us", s.empty[0].p99_us());
        f.put("fdatasync_rate", fsync_rate);
        f.put("fdatasync_p50_us", fsync_p50);
        f.put("fdatasync_p99_us", s.fsync.p99_us());
        for (i, n) in CLIENTS.into_iter().enumerate() {
            f.put(&format!("add_footprint_rate_{n}"), s.add[i].rate());
            f.put(&format!("add_footprint_p50_us_{n}"), s.add[i].p50_us());
            f.put(&format!("add_footprint_p99_us_{n}"), s.add[i].p99_us());
        }
        f.put("add_footprint_p50_us", s.add[0].p50_us());
        f.put("add_footprint_p99_us", s.add[0].p99_us());
        for (i, n) in TASKS.into_iter().enumerate() {
            f.put(&format!("inprocess_add_rate_{n}"), s.inproc[i].rate());
            f.put(&format!("inprocess_add_p50_us_{n}"), s.inproc[i].p50_us());
            f.put(
                &format!("inprocess_group_size_{n}"),
                s.inproc[i].group_size(),
            );
            f.put(&format!("sqlite_rate_{n}"), s.sqlite[i].rate());
            f.put(&format!("sqlite_p50_us_{n}"), s.sqlite[i].p50_us());
        }
        f.put("inprocess_stream_rate", x.stream.rate());
        f.put("inprocess_stream_group_size", x.stream.group_size());
        f.put("file_per_block_rate_16", s.files.rate());
        f.put("file_per_block_p50_us_16", s.files.p50_us());
        f.put("get_block_hot_p50_us_dbus", s.hot_dbus.p50_us());
        f.put("get_block_hot_empty_call_p50_us", s.empty_seq.p50_us());
        f.put("get_block_hot_p50_us_inprocess", x.hot_inproc.p50_us());
        f.put("get_block_cold_p50_us_dbus", x.cold_dbus.p50_us());
        f.put("get_block_cold_p50_us_inprocess", x.cold_inproc.p50_us());
        f.put("get_block_skewed_p50_us_inprocess", x.skewed.p50_us());
        f.put("get_block_skewed_rate_inprocess", x.skewed.rate());
        // No block cache in this build yet: reads go to the segment files (page cache).
        f.json.insert("cache_hit_rate_skewed".into(), Value::Null);

        for (name, cpu, sample) in [
            ("empty_call", &s.empty_cpu[2], &s.empty[2]),
            ("add_footprint", &s.add_cpu[2], &s.add[2]),
        ] {
            let (bus, server, clients) = cpu.per_op_us(sample.ops);
            f.put(&format!("{name}_cpu_us_per_op_16_bus"), bus);
            f.put(&format!("{name}_cpu_us_per_op_16_server"), server);
            f.put(&format!("{name}_cpu_us_per_op_16_clients"), clients);
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let add16_vs_empty = ratio(s.add[2].rate(), s.empty[2].rate());
        let p50_vs_floor = ratio(s.add[0].p50_us(), empty_p50 + fsync_p50);
        let inproc16_vs_fsync = ratio(s.inproc[1].rate(), 16.0 * fsync_rate);
        let hot_vs_empty = ratio(s.hot_dbus.p50_us(), s.empty_seq.p50_us());
        f.put("ratio_add_footprint_rate_16_to_empty_call", add16_vs_empty);
        f.put(
            "ratio_add_footprint_p50_to_empty_plus_fdatasync",
            p50_vs_floor,
        );
        f.put(
            "ratio_inprocess_add_rate_16_to_16_fdatasync",
            inproc16_vs_fsync,
        );
        f.put("ratio_get_block_hot_dbus_to_empty_call", hot_vs_empty);
        f.put(
            "ratio_add_footprint_rate_16_to_sqlite",
            ratio(s.add[2].rate(), s.sqlite[1].rate()),
        );
        f.put(
            "ratio_add_footprint_rate_16_to_file_per_block",
            ratio(s.add[2].rate(), s.files.rate()),
        );
        f.put(
            "ratio_add_footprint_rate_16_to_seed",
            ratio(s.add[2].rate(), SEED_WRITE_RATE),
        );

        let machine = machine(&x.filesystem);
        let date = opdbus_blockchain::snapshot::utc::UtcDateTime::from_unix(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        )
        .rfc3339();
        f.header = format!(
            "opdbus-chain bench — {date}\nmachine: {machine}\nload average before: {}; {} rounds of {:.1} s per figure{}",
            x.load_before,
            plan.rounds,
            plan.slice.as_secs_f64(),
            if x.btrfs { "; on a btrfs loop image" } else { "" }
        );
        f.json.insert("machine".into(), json!(machine));
        f.json.insert("date".into(), json!(date));
        f.json.insert("filesystem".into(), json!(x.filesystem));
        f.json
            .insert("load_average_before".into(), json!(x.load_before));
        f.json.insert("rounds".into(), json!(plan.rounds));
        f.json
            .insert("seconds_per_slice".into(), json!(plan.slice.as_secs_f64()));

        // The table.
        let empty = |i: usize| {
            (
                format!("empty call, {} conn", CLIENTS[i]),
                s.empty[i].rate(),
            )
        };
        for (i, n) in CLIENTS.into_iter().enumerate() {
            f.row(
                &format!("empty call, {n} connections"),
                s.empty[i].rate(),
                "/s",
                None,
                "floor",
            );
        }
        f.row(
            "empty call p50, 1 connection",
            empty_p50,
            "µs",
            None,
            "floor",
        );
        f.row(
            "fdatasync of a 200 B append",
            fsync_rate,
            "/s",
            None,
            "floor",
        );
        f.row("fdatasync p50", fsync_p50, "µs", None, "floor");
        for (i, n) in CLIENTS.into_iter().enumerate() {
            let target = if i == 2 { "≥ 0.45, ≥ 20000/s" } else { "" };
            f.row(
                &format!("AddFootprint, {n} clients"),
                s.add[i].rate(),
                "/s",
                Some(empty(i)),
                target,
            );
        }
        for (label, cpu, sample) in [
            ("CPU µs per empty call, 16", &s.empty_cpu[2], &s.empty[2]),
            ("CPU µs per AddFootprint, 16", &s.add_cpu[2], &s.add[2]),
        ] {
            let (bus, server, clients) = cpu.per_op_us(sample.ops);
            f.rows.push(Row {
                label: format!("{label}: bus/server/clients"),
                value: bus + server + clients,
                unit: "µs",
                against: None,
                target: "",
                note: format!("{bus:.1} / {server:.1} / {clients:.1}"),
            });
        }
        f.row(
            "AddFootprint p50, 1 client",
            s.add[0].p50_us(),
            "µs",
            Some(("empty call + fdatasync".into(), empty_p50 + fsync_p50)),
            "≤ 1.5",
        );
        f.row(
            "AddFootprint p99, 1 client",
            s.add[0].p99_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "AddFootprint p50, 16 clients",
            s.add[2].p50_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "AddFootprint p99, 16 clients",
            s.add[2].p99_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "in-process add_footprint, 1 task",
            s.inproc[0].rate(),
            "/s",
            Some(("fdatasync".into(), fsync_rate)),
            "",
        );
        f.row(
            "in-process add_footprint, 16 tasks",
            s.inproc[1].rate(),
            "/s",
            Some(("16 × fdatasync".into(), 16.0 * fsync_rate)),
            "≥ 0.7",
        );
        f.row(
            "  footprints per fdatasync, 16 tasks",
            s.inproc[1].group_size(),
            "",
            None,
            "",
        );
        f.row(
            "in-process streaming (durable)",
            x.stream.rate(),
            "/s",
            None,
            "≥ 200000/s",
        );
        f.row(
            "GetBlock hot p50, D-Bus",
            s.hot_dbus.p50_us(),
            "µs",
            Some(("empty call".into(), s.empty_seq.p50_us())),
            "≤ 1.2",
        );
        f.row(
            "GetBlock cold p50, D-Bus",
            x.cold_dbus.p50_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "get_block hot p50, in-process",
            x.hot_inproc.p50_us(),
            "µs",
            None,
            "≤ 5 µs",
        );
        f.row(
            "get_block cold p50, in-process",
            x.cold_inproc.p50_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "get_block skewed mix p50, in-process",
            x.skewed.p50_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "SQLite peer, 1 writer",
            s.sqlite[0].rate(),
            "/s",
            Some(("fdatasync".into(), fsync_rate)),
            "",
        );
        f.row(
            "SQLite peer, 16 writers",
            s.sqlite[1].rate(),
            "/s",
            None,
            "",
        );
        f.row(
            "file per block peer, 16 writers",
            s.files.rate(),
            "/s",
            None,
            "",
        );
        for (peer, rate) in [
            ("SQLite, 16 writers", s.sqlite[1].rate()),
            ("file per block, 16", s.files.rate()),
            ("the seed's 500/s", SEED_WRITE_RATE),
        ] {
            f.row(
                "AddFootprint, 16 clients",
                s.add[2].rate(),
                "/s",
                Some((peer.into(), rate)),
                if rate == SEED_WRITE_RATE {
                    "≥ 40"
                } else {
                    ""
                },
            );
        }
        f.row(
            "in-process add_footprint, 16 tasks",
            s.inproc[1].rate(),
            "/s",
            Some(("file per block, 16".into(), s.files.rate())),
            "",
        );
        f
    }

    fn put(&mut self, key: &str, value: f64) {
        // Two decimals are plenty for rates and microseconds alike.
        let rounded = (value * 100.0).round() / 100.0;
        self.json.insert(key.into(), json!(rounded));
    }

    fn row(
        &mut self,
        label: &str,
        value: f64,
        unit: &'static str,
        against: Option<(String, f64)>,
        target: &'static str,
    ) {
        self.rows.push(Row {
            label: label.into(),
            value,
            unit,
            against,
            target,
            note: String::new(),
        });
    }
}

fn machine(filesystem: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs, Linux {}, {filesystem}",
        kernel.trim()
    )
}

fn print_table(figures: &Figures) {
    println!("{}\n", figures.header);
    println!(
        "{:<40} {:>12} {:<3}  {:<24} {:>8}  target",
        "figure", "value", "", "compared with", "ratio"
    );
    for row in &figures.rows {
        let (against, ratio) = match &row.against {
            Some((label, reference)) if *reference > 0.0 => {
                (label.as_str(), format!("{:.2}", row.value / reference))
            }
            Some((label, _)) => (label.as_str(), "-".into()),
            None => (row.note.as_str(), String::new()),
        };
        println!(
            "{:<40} {:>12} {:<3}  {:<24} {:>8}  {}",
            row.label,
            format_value(row.value),
            row.unit,
            against,
            ratio,
            row.target
        );
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}
