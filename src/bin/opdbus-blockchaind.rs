//! opdbus-blockchaind: serves the op-dbus audit chain on D-Bus as org.opdbus.Blockchain.

use clap::Parser;
use opdbus_blockchain::config::{BusChoice, Config};
use std::path::PathBuf;
use std::process::ExitCode;

/// Keeps op-dbus's tamper-evident audit trail and serves it on D-Bus.
///
/// Every footprint a plugin adds (AddFootprint) becomes a hash-linked block, durable on disk
/// before the call returns. The daemon owns org.opdbus.Blockchain at /org/opdbus/Blockchain.
///
/// Settings come from defaults, then --config FILE, then OPDBUS_* environment variables, then
/// these flags. Stop it with SIGTERM or SIGINT: it stops taking calls, commits what is queued
/// and exits 0. SIGHUP (systemctl reload) re-reads --config FILE and applies OPDBUS_LOG,
/// OPDBUS_SNAPSHOT_INTERVAL and OPDBUS_RETAIN_*; the log says which other changes need a
/// restart.
///
/// The chain id it serves is recorded beside the chain directory (DIR.chain-id): a missing
/// or different chain there is an error at start, never a new chain.
#[derive(Parser)]
#[command(version, after_help = ENVIRONMENT)]
struct Args {
    /// Bus to serve on: system, session, or a D-Bus address such as unix:path=/run/test/bus.
    /// [env: OPDBUS_BUS] [default: system]
    #[arg(long, value_name = "BUS")]
    bus: Option<BusChoice>,
    /// Directory of the chain's segment files. [env: OPDBUS_BLOCKCHAIN_DIR]
    /// [default: /var/lib/op-dbus/blockchain]
    #[arg(long, value_name = "DIR", value_parser = dir_flag)]
    chain_dir: Option<PathBuf>,
    /// Directory of the block cache. [env: OPDBUS_CACHE_DIR] [default: /var/lib/op-dbus/@cache]
    #[arg(long, value_name = "DIR", value_parser = dir_flag)]
    cache_dir: Option<PathBuf>,
    /// Read settings from FILE (KEY=VALUE lines, as /etc/default/opdbus-blockchain).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The flags get the check the environment and file values get (clap exits 2 naming the flag).
fn dir_flag(value: &str) -> Result<PathBuf, String> {
    opdbus_blockchain::config::absolute_dir(value)
}

const ENVIRONMENT: &str = "\
Environment:
  OPDBUS_BUS             system | session | D-Bus address          [system]
  OPDBUS_BLOCKCHAIN_DIR  chain directory                 [/var/lib/op-dbus/blockchain]
  OPDBUS_CACHE_DIR       cache directory                 [/var/lib/op-dbus/@cache]
  OPDBUS_MAX_DATA_BYTES  largest footprint data JSON accepted, bytes   [65536]
  OPDBUS_SEGMENT_BYTES   size at which a segment file is sealed, bytes [67108864]
  OPDBUS_WRITER_UIDS     uids besides root allowed to add footprints   []
  OPDBUS_LOG             log filter (error, warn, info, debug, ...)    [info]
  OPDBUS_SNAPSHOT_INTERVAL  every-N-minutes | hourly | daily | off       [off]
  OPDBUS_RETAIN_HOURLY/_DAILY/_WEEKLY  snapshots kept per period       [5/5/5]

Exit status: 0 after a clean stop, 1 when it cannot start (the reason is logged), 2 on a
flag it refuses (a relative --chain-dir, say).";

/// Threads of the runtime's blocking pool (docs/reliability.md, "Bounded cost of reads").
const MAX_BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match Config::load(args.config.as_deref(), |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("opdbus-blockchaind: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(bus) = args.bus {
        config.bus = bus;
    }
    if let Some(dir) = args.chain_dir {
        config.chain_dir = dir;
    }
    if let Some(dir) = args.cache_dir {
        config.cache_dir = dir;
    }
    // Logged with the config file's warnings once logging is up.
    config
        .warnings
        .extend(opdbus_blockchain::config::unknown_env_keys(
            std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
        ));
    opdbus_blockchain::daemon::init_logging(&config.log);
    // Blocking work (chain and cache reads, Verify, searches) queues for these threads rather
    // than adding one per call: tokio's default of 512 let a flood of calls the caller does not
    // wait for create hundreds of threads, each holding its reads in memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("opdbus-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("opdbus-blockchaind: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(opdbus_blockchain::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}
