//! opdbus-bench: measures opdbus-blockchain and runs its crash harness. Not shipped: built with
//! `cargo build --release --workspace`, it finds opdbus-blockchaind beside itself in target/.

mod bench;
mod bench_cache;
mod bench_log;
mod bench_tlog;
mod bench_vectors;
mod torture;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Measure and torture opdbus-blockchain on scratch directories.
///
/// Exit status: 0 success; 1 a check failed; 2 the command could not run.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure similarity search (recall@10 against exact search, query latency, index build
    /// time and memory) on chains of realistic footprints, and the cache's hot hit rate on a
    /// realistic read mix with plain LRU and with read prediction. Runs in-process on temp dirs.
    BenchVectors {
        /// Chain sizes to measure search on, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "100000,1000000",
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        blocks: Vec<u64>,
        /// Queries per size.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        queries: u64,
        /// Blocks (and about as many reads) for the read-prediction run.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
        read_blocks: u64,
        /// Also write the figures as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Measure the transparency log in-process: build the tiles of a tree of N random leaves,
    /// replay them as the daemon's start-up does, time inclusion proofs at random heights and
    /// consistency proofs between random sizes (tiles in the page cache), and check a sample
    /// of the proofs. Runs on a temporary directory ($TMPDIR, else /var/tmp).
    BenchTlog {
        /// Leaves of the tree (blocks of the chain).
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        leaves: u64,
        /// Inclusion proofs, and as many consistency proofs, to time.
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        proofs: u64,
        /// Also write the figures as one flat JSON object to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Measure finding events on a long chain (issue 17): build a chain of N blocks (one a
    /// second up to now, written as the daemon lays it out, in large buffered batches), then
    /// time `opdbus-chain log --since -1h` to its first byte and to its end, `report --since
    /// -1h`, and a Query-sized search in-process. Needs the opdbus-chain built next to it.
    BenchLog {
        /// Blocks of the chain.
        #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        blocks: u64,
        /// Build the chain in DIR and keep it (reused by the next run) [default: a temporary
        /// directory in $TMPDIR, else /var/tmp, removed at the end].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Runs of each measurement (the median is printed).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
        runs: u64,
    },
    /// Measure the block cache: its compression ratio on the project's corpus and on a
    /// held-out one, for the disk tier and the shared tier, and the shared tier on a real
    /// redis-server started here (a hit against a plain GET of the same values; the hit rates
    /// of two daemons of one chain reading through it). The last part of `bench` too.
    BenchCache {
        /// A short run (2,000 blocks per corpus instead of 20,000).
        #[arg(long)]
        quick: bool,
        /// Also write the figures as one flat JSON object to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Crash harness: kill -9 the real daemon under concurrent writers, restart, check.
    ///
    /// Starts a private dbus-daemon and opdbus-blockchaind on a scratch chain; in each cycle
    /// the writers call AddFootprint in a loop until the daemon is killed with SIGKILL at a
    /// random moment; then every acknowledged footprint must be in the chain at its height
    /// with the same hash and the chain must verify. Exit 0 when every cycle held.
    Torture {
        /// How many kill/restart cycles.
        #[arg(long, default_value_t = 20)]
        cycles: u64,
        /// Concurrent writers, each on its own bus connection.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Segment size for the daemon (OPDBUS_SEGMENT_BYTES): small, so that kills also
        /// land in segment rotation.
        #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
        segment_bytes: u64,
        /// Kill at a random moment up to this many milliseconds into each cycle.
        #[arg(long, default_value_t = 1500, value_name = "MS")]
        max_kill_ms: u64,
        /// Keep the chain, bus and daemon log in DIR (default: a temporary directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The daemon binary (default: opdbus-blockchaind next to this program).
        #[arg(long, value_name = "PATH")]
        daemon: Option<PathBuf>,
    },
    /// Measure write and read speed beside their floors and peers, in one run.
    ///
    /// Starts a private dbus-daemon and the opdbus-blockchaind next to this executable on a
    /// temporary directory ($TMPDIR, else /var/tmp), and prints a table; nothing is left behind.
    Bench(bench::BenchArgs),
    /// Serve the durable floor alone: the least a durable AddFootprint over D-Bus can cost.
    ///
    /// Owns org.opdbus.BenchDurableFloor on the bus at ADDRESS and answers
    /// org.opdbus.Blockchain.AddFootprint(s plugin, s operation, s data_json) → (t height,
    /// s hash) at /org/opdbus/Blockchain, as the daemon does (point any client at it by changing
    /// only the destination). One writer thread batches whatever is queued, hash-chains the
    /// blocks (SHA-256), appends them to DIR/durable-floor.chain (made anew) with one pwrite and
    /// one fdatasync, then replies. Nothing else: no JSON check, no caller lookup, no signal, no
    /// cache. The bus's policy must let this user own that name. Runs until killed.
    DurableFloor {
        /// The bus to serve on, e.g. unix:path=/run/dbus/system_bus_socket.
        #[arg(long, value_name = "BUS_ADDRESS")]
        address: String,
        /// Write on DIR's filesystem.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BenchVectors {
            blocks,
            queries,
            read_blocks,
            json,
        } => bench_vectors::run(&blocks, queries as usize, read_blocks, json),
        Command::Torture {
            cycles,
            writers,
            max_kill_ms,
            dir,
            daemon,
            segment_bytes,
        } => torture::torture(torture::TortureArgs {
            cycles,
            writers,
            dir,
            daemon,
            max_kill_ms,
            segment_bytes,
        }),
        Command::Bench(args) => bench::run(args),
        Command::BenchCache { quick, json } => {
            bench_cache::run(&bench_cache::CacheBenchPlan::new(quick)).and_then(|figures| {
                match json {
                    Some(path) => bench::write_json(&path, figures),
                    None => Ok(()),
                }
                .map(|()| ExitCode::SUCCESS)
            })
        }
        Command::DurableFloor { address, dir } => bench::serve_durable_floor(&address, &dir),
        Command::BenchLog { blocks, dir, runs } => bench_log::run(bench_log::LogArgs {
            blocks,
            dir,
            runs: runs as usize,
        }),
        Command::BenchTlog {
            leaves,
            proofs,
            json,
        } => bench_tlog::run(bench_tlog::TlogArgs {
            leaves,
            proofs: proofs as usize,
            json,
        }),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("opdbus-bench: {err}");
            ExitCode::from(2)
        }
    }
}

/// What a command returns: its exit code, or a one-line reason it could not run (exit 2).
pub type Outcome = Result<ExitCode, String>;
