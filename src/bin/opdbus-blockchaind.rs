//! opdbus-blockchaind: serves the op-dbus audit chain on D-Bus as org.opdbus.Blockchain.

// The man page and completion writer opdbus-chain uses too.
#[path = "opdbus-chain/docs.rs"]
mod docs;

use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser};
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
#[command(name = "opdbus-blockchaind", version, after_help = after_help())]
struct Args {
    /// Read settings from FILE (KEY=VALUE lines, as /etc/default/opdbus-blockchain).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Flags for the bench and for packaging, kept out of --help, the man page and completions
/// (clap_complete would offer hidden flags too): added only when parsing.
fn hidden_flags() -> [Arg; 2] {
    [
        // Runs without the transparency log: only for opdbus-bench's comparison of the write
        // path with and without it.
        Arg::new(BENCH_WITHOUT_TRANSPARENCY)
            .long(BENCH_WITHOUT_TRANSPARENCY)
            .action(ArgAction::SetTrue)
            .hide(true),
        // Writes the man page (DIR/man8) and completions (DIR/completions/{bash,zsh,fish}),
        // for packaging, and exits.
        Arg::new(GENERATE_DOCS)
            .long(GENERATE_DOCS)
            .value_name("DIR")
            .value_parser(clap::value_parser!(PathBuf))
            .hide(true),
    ]
}

const BENCH_WITHOUT_TRANSPARENCY: &str = "bench-without-transparency";
const GENERATE_DOCS: &str = "generate-docs";

/// The exit codes, for --help and the man page.
const EXIT_STATUS: [(&str, &str); 3] = [
    ("0", "After a clean stop (SIGTERM, SIGINT)."),
    (
        "1",
        "It cannot start: a bad config file or environment value, no bus, a chain it cannot \
         open or recover (the reason is logged).",
    ),
    (
        "2",
        "A flag it refuses (an unknown one, or a relative --chain-dir, say).",
    ),
];

fn after_help() -> String {
    EXIT_STATUS
        .iter()
        .fold(String::from("Exit status:"), |text, (code, meaning)| {
            text + &format!("\n  {code}  {meaning}")
        })
}

/// What the man page says beyond --help: each config key in ENVIRONMENT.
fn man_page() -> docs::Pages<'static> {
    docs::Pages {
        section: "8",
        exit_status: &EXIT_STATUS,
        environment: KEYS
            .iter()
            .map(|key| {
                let reload = if key.reload {
                    " Applied on SIGHUP."
                } else {
                    ""
                };
                let flag = key
                    .flag
                    .map_or(String::new(), |(flag, _)| format!(" Flag: --{flag}."));
                (
                    key.name.to_owned(),
                    format!(
                        "{} ({}). Default: {}.{flag}{reload}",
                        key.help,
                        key.accepts,
                        match key.default_value() {
                            empty if empty.is_empty() => "empty".to_owned(),
                            value => value,
                        }
                    ),
                )
            })
            .collect(),
        files: &[
            (
                "/etc/default/opdbus-blockchain",
                "The config file the unit passes with --config: KEY=VALUE lines, the keys of \
                 ENVIRONMENT.",
            ),
            (
                "/var/lib/op-dbus/blockchain",
                "The chain (OPDBUS_BLOCKCHAIN_DIR); its chain id in \
                 /var/lib/op-dbus/blockchain.chain-id.",
            ),
            (
                "/var/lib/op-dbus/@cache",
                "The block cache (OPDBUS_CACHE_DIR).",
            ),
            (
                "/var/lib/op-dbus/keys/signing.key",
                "The checkpoint signing key (OPDBUS_SIGNING_KEY), made at the first start.",
            ),
            (
                "/usr/share/dbus-1/interfaces/org.opdbus.Blockchain.xml",
                "The D-Bus interface it serves.",
            ),
        ],
        see_also: &[
            "opdbus-chain(1)",
            "systemctl(1)",
            "journalctl(1)",
            "busctl(1)",
        ],
    }
}

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

/// The documented command line: the derived flags, then one per config key that has one.
fn command() -> clap::Command {
    Args::command().args(key_flags()).after_long_help(format!(
        "{}\n{}",
        config::environment_help(),
        after_help()
    ))
}

fn main() -> ExitCode {
    let matches = command().args(hidden_flags()).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    if let Some(dir) = matches.get_one::<PathBuf>(GENERATE_DOCS) {
        return match docs::generate(command(), &man_page(), dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("opdbus-blockchaind: {err}");
                ExitCode::from(2)
            }
        };
    }
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
    config.transparency = !matches.get_flag(BENCH_WITHOUT_TRANSPARENCY);
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
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}
