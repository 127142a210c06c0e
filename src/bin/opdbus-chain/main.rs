//! opdbus-chain: the operator's tool for the op-dbus audit chain.

mod bench;
mod offline;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Inspect and check the op-dbus audit chain.
///
/// Offline commands (verify, get, tail) read the chain directory directly and never write to
/// it, so they work on a live chain, a read-only snapshot or a received backup. Online commands
/// talk to a running opdbus-blockchaind over D-Bus and take --bus.
///
/// Exit status: 0 success; 1 the chain is not intact or the block was not found; 2 the command
/// could not run (bad arguments, unreadable directory).
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Re-hash every block and check every link from genesis to the head.
    ///
    /// Prints one line saying the chain is intact (with its head) or naming the first bad
    /// height and why. On long chains a progress line goes to stderr every second.
    /// An incomplete record at the very end (a crash before the write was acknowledged) is
    /// reported but is not an error: the daemon cuts it at its next start.
    Verify {
        #[command(flatten)]
        dir: ChainDir,
    },
    /// Print one block as JSON, by hash (64 hex digits) or by height.
    Get {
        /// A block hash or a height.
        block: String,
        #[command(flatten)]
        dir: ChainDir,
        /// Indent the JSON for reading.
        #[arg(long)]
        pretty: bool,
    },
    /// Print the newest blocks, oldest first.
    Tail {
        /// How many blocks.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: ChainDir,
    },
    /// Measure write and read speed beside their floors and peers, in one run.
    ///
    /// Starts a private dbus-daemon and the opdbus-blockchaind next to this executable on a
    /// temporary directory ($TMPDIR, else /var/tmp), and prints a table; nothing is left behind.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct ChainDir {
    /// The chain directory.
    #[arg(
        long,
        value_name = "DIR",
        env = "OPDBUS_BLOCKCHAIN_DIR",
        default_value = "/var/lib/op-dbus/blockchain"
    )]
    chain_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify { dir } => offline::verify(dir.chain_dir),
        Command::Get { block, dir, pretty } => offline::get(dir.chain_dir, &block, pretty),
        Command::Tail { lines, json, dir } => offline::tail(dir.chain_dir, lines, json),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("opdbus-chain: {err}");
            ExitCode::from(2)
        }
    }
}

/// What a command returns: its exit code, or a one-line reason it could not run (exit 2).
pub type Outcome = Result<ExitCode, String>;
