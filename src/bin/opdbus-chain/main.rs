//! opdbus-chain: the operator's tool for the op-dbus audit chain.

mod offline;
mod torture;

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
        /// Also require the chain to hold this block (HASH@HEIGHT, e.g. a head exported
        /// earlier or from a snapshot manifest): detects removal of the newest blocks.
        #[arg(long, value_name = "HASH@HEIGHT")]
        expect_head: Option<String>,
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
        Command::Verify { dir, expect_head } => offline::verify(dir.chain_dir, expect_head),
        Command::Get { block, dir, pretty } => offline::get(dir.chain_dir, &block, pretty),
        Command::Tail { lines, json, dir } => offline::tail(dir.chain_dir, lines, json),
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
