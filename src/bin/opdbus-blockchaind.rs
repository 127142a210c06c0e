//! opdbus-blockchaind: serves the op-dbus audit chain on D-Bus as org.opdbus.Blockchain.

use clap::{Arg, CommandFactory, FromArgMatches, Parser};
use opdbus_blockchain::config::{self, Config, KEYS};
use std::path::PathBuf;
use std::process::ExitCode;

/// Keeps op-dbus's tamper-evident audit trail and serves it on D-Bus.
///
/// Every footprint a plugin adds (AddFootprint) becomes a hash-linked block, durable on disk
/// before the call returns. The daemon owns org.opdbus.Blockchain at /org/opdbus/Blockchain.
///
/// Settings come from defaults, then --config FILE, then OPDBUS_* environment variables, then
/// these flags. Stop it with SIGTERM or SIGINT: it stops taking calls, commits what is queued
/// and exits 0. SIGHUP (systemctl reload) re-reads --config FILE and applies the keys marked
/// * below; the log says which other changes need a restart.
///
/// The chain id it serves is recorded beside the chain directory (DIR.chain-id): a missing
/// or different chain there is an error at start, never a new chain.
#[derive(Parser)]
#[command(version, after_help = AFTER_HELP)]
struct Args {
    /// Read settings from FILE (KEY=VALUE lines, as /etc/default/opdbus-blockchain).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Runs without the transparency log: only for opdbus-bench's comparison of the write
    /// path with and without it.
    #[arg(long, hide = true)]
    bench_without_transparency: bool,
}

const AFTER_HELP: &str = "\
Exit status: 0 after a clean stop, 1 when it cannot start (the reason is logged), 2 on a
flag it refuses (a relative --chain-dir, say).";

/// The flags of the config table's keys that have one. A flag's value goes through the key's
/// own parser, as the environment's and the file's do (clap exits 2 naming the flag).
fn key_flags() -> impl Iterator<Item = Arg> {
    KEYS.iter().filter_map(|key| {
        let (flag, value_name) = key.flag?;
        Some(
            Arg::new(key.name)
                .long(flag)
                .value_name(value_name)
                .help(format!(
                    "{} ({}). [env: {}] [default: {}]",
                    key.help,
                    key.accepts,
                    key.name,
                    key.default_value()
                ))
                .value_parser(move |value: &str| key.check(value).map(|()| value.to_owned())),
        )
    })
}

/// Threads of the runtime's blocking pool (docs/reliability.md, "Bounded cost of reads").
const MAX_BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let matches = Args::command()
        .args(key_flags())
        .after_long_help(format!("{}\n{AFTER_HELP}", config::environment_help()))
        .get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    let mut config = match Config::load(args.config.as_deref(), |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("opdbus-blockchaind: {err}");
            return ExitCode::FAILURE;
        }
    };
    for key in KEYS.iter().filter(|key| key.flag.is_some()) {
        if let Some(value) = matches.get_one::<String>(key.name) {
            if let Err(err) = config.set(key.name, value) {
                eprintln!("opdbus-blockchaind: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    config.transparency = !args.bench_without_transparency;
    // Logged with the config file's warnings once logging is up.
    config.warnings.extend(config::unknown_env_keys(
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
            err.log();
            ExitCode::FAILURE
        }
    }
}
