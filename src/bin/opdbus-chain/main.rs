//! opdbus-chain: the operator's tool for the op-dbus audit chain.

mod backup;
mod docs;
mod log;
mod log_check;
mod offline;
mod online;
mod proofs;
mod prune;
mod repair;
mod replicate;
mod report;
mod transparency;

use clap::{Args, CommandFactory, Parser, Subcommand};
use opdbus_blockchain::config::BusChoice;
use opdbus_blockchain::snapshot::backup::BackupTarget;
use std::path::PathBuf;
use std::process::ExitCode;

/// Inspect and check the op-dbus audit chain.
///
/// Offline commands (verify, get, log, report, verify-backup, and the transparency log's key show,
/// checkpoint, prove, consistency) read the chain directory directly and never write to it, so
/// they work on a live chain, a read-only snapshot or a received backup; only `verify --repair`
/// and `tlog rebuild` write, with the daemon stopped. Online commands (numa, similar, stats,
/// snapshot) talk to a running opdbus-blockchaind over D-Bus and take --bus. backup, restore
/// and prune manage snapshots and backups.
///
/// With --json a command prints one JSON object on stdout whose "ok" says whether it succeeded
/// (false with "failure" when a check fails, exit 1); log and similar print one object per
/// line. A command that cannot run prints only its one line on stderr (exit 2).
#[derive(Parser)]
#[command(
    name = "opdbus-chain",
    version,
    propagate_version = true,
    after_long_help = exit_status_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The exit codes of every command, for --help and the man pages.
const EXIT_STATUS: [(&str, &str); 3] = [
    (
        "0",
        "Success: the chain or backup is intact, the check passed, the command did what it says.",
    ),
    (
        "1",
        "A check failed: the chain or a backup is not intact, a checkpoint or proof does not \
         check, the block was not found, nothing matched. One line on stderr says what (with \
         --json, the object on stdout also says \"ok\": false).",
    ),
    (
        "2",
        "The command could not run: bad arguments, an unreadable directory or file, the daemon \
         not on the bus or refusing the call, a failed snapshot, backup or restore. One line on \
         stderr says why.",
    ),
];

fn exit_status_help() -> String {
    EXIT_STATUS
        .iter()
        .fold(String::from("Exit status:"), |text, (code, meaning)| {
            text + &format!("\n  {code}  {meaning}")
        })
}

#[derive(Subcommand)]
enum Command {
    /// Re-hash every block and check every link from genesis to the head, then the
    /// transparency log's tiles (and a checkpoint) against the chain.
    ///
    /// Prints one line saying the chain is intact (with its head) or naming the first bad
    /// height and why. On long chains a progress line goes to stderr every second.
    /// An incomplete record at the very end (a crash before the write was acknowledged) is
    /// reported but is not an error: the daemon cuts it at its next start.
    /// Exit 1 when a block breaks a hard rule of docs/format.md (hash, link, timestamp, names
    /// without control characters, data that is JSON). Blocks that break only the stricter
    /// rules the writer enforces now (safe name characters, depth, numbers, surrogates,
    /// repeated keys) end the line with "warning: N blocks break rules the writer enforces
    /// now": written by an older version, or by someone who rewrote the chain; exit 0.
    ///
    /// Then the tiles in the tlog directory are compared with the tree the chain's blocks
    /// give: a tile that differs is an error (exit 1, naming it); a missing one is a note
    /// (tiles lag the chain by up to a checkpoint interval; the daemon writes missing tiles at
    /// start, `tlog rebuild` offline), unless the published checkpoint (TLOG/checkpoint) needs
    /// it to serve proofs. The chain must also give the published checkpoint's root at its
    /// size. No tlog directory at all is a note.
    ///
    /// With --checkpoint FILE --vkey VKEY (a checkpoint kept outside this machine): its
    /// signature must check with VKEY and the chain's first SIZE blocks must give its root;
    /// exit 1 says whether blocks were cut off or which height was changed (when the tiles
    /// still hold the checkpoint's tree; otherwise that the tiles were rewritten too).
    Verify {
        #[command(flatten)]
        dir: ChainDir,
        #[command(flatten)]
        tlog: TlogDir,
        /// Rewrite blocks that fail their hash from the cache's verified copies (--cache-dir),
        /// then verify again. Needs the daemon stopped (takes the chain's lock); says what it
        /// repaired.
        #[arg(long, requires = "cache_dir")]
        repair: bool,
        /// The daemon's cache directory, for --repair.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Also require the chain to hold this block (HASH@HEIGHT, e.g. a head exported
        /// earlier or from a snapshot manifest): detects removal of the newest blocks.
        #[arg(long, value_name = "HASH@HEIGHT", conflicts_with = "repair")]
        expect_head: Option<String>,
        /// Also recompute every block's similarity vector and compare it with the stored one
        /// (DIR/vectors; derived data, rebuilt by the daemon when it does not match).
        #[arg(long, conflicts_with = "repair")]
        vectors: bool,
        /// Also check the chain against this signed checkpoint (a copy of TLOG/checkpoint
        /// taken earlier, e.g. with `opdbus-chain checkpoint --out`). Needs --vkey.
        #[arg(
            long,
            value_name = "FILE",
            requires = "vkey",
            conflicts_with = "repair"
        )]
        checkpoint: Option<PathBuf>,
        /// The log's verifier key (as `key show` prints it), or a file holding it.
        #[arg(long, value_name = "VKEY", requires = "checkpoint")]
        vkey: Option<String>,
        /// A witness's verifier key (`key show --witness` on the replica, or the
        /// witness_vkey `replicate --json` prints), or a file holding it; repeat for each
        /// witness. The --checkpoint must carry valid cosignatures
        /// (c2sp.org/tlog-cosignature) of at least --quorum of them.
        #[arg(long = "witness", value_name = "W_VKEY", requires = "checkpoint")]
        witnesses: Vec<String>,
        /// How many of the --witness keys must have cosigned [default: all of them].
        #[arg(long, value_name = "N", requires = "witnesses")]
        quorum: Option<usize>,
        /// Print one JSON object (ok, chain, tiles, published_checkpoint, checkpoint,
        /// failures) instead of lines.
        #[arg(long, conflicts_with = "repair")]
        json: bool,
    },
    /// Copy another host's chain, verifying it, up to its newest signed checkpoint, and
    /// cosign that checkpoint as a witness.
    ///
    /// SOURCE is the URL (http:// or https://) where the source's chain directory is published:
    /// its segment files at SOURCE/segment-<first height>.chain and its transparency log at
    /// SOURCE/tlog/ (--tlog-url otherwise), as docs/operations.md ("Replicas") serves them; or
    /// ssh://[USER@]HOST[:PORT]/CHAIN_DIR, read by running `opdbus-chain export` there over ssh
    /// (--ssh-command, --remote-program).
    /// The copy in DIR has the chain directory's format (segments, and tlog/ with tiles and
    /// checkpoints), so verify, prove, consistency and restore work on it as they are.
    ///
    /// Every record is re-hashed and linked as the daemon's start-up checks it, the Merkle
    /// tree recomputed, and the source's checkpoint must be signed by --vkey (given here,
    /// never fetched from the source) and give the root of the copied blocks. Run again, it
    /// first checks that the source still holds the newest block it verified, then copies only
    /// what is new. The checkpoint it verified is published in DIR/tlog/checkpoint with this
    /// replica's cosignature (c2sp.org/tlog-cosignature) added, so that `verify --checkpoint
    /// … --witness` can require it.
    ///
    /// Exit 0 when the copy is verified up to the source's newest checkpoint. Exit 1 when the
    /// source diverged (a rollback, truncation, rewrite or fork: the line names the tree size
    /// where it parts from the copy) or sent invalid data; the copy keeps exactly what it had
    /// verified. Exit 2 when the source cannot be reached or DIR cannot be used (another
    /// replicate or a daemon holds it).
    Replicate {
        /// The published chain's URL.
        #[arg(value_name = "SOURCE")]
        source: String,
        /// The replica's directory (made when missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The source log's verifier key (its `opdbus-chain key show`), or a file holding it.
        #[arg(long, value_name = "VKEY")]
        vkey: String,
        /// Where the source's transparency log is published [default: SOURCE/tlog/].
        #[arg(long, value_name = "URL")]
        tlog_url: Option<String>,
        /// This witness's cosigning key (a signed-note Ed25519 private key, mode 0600), made
        /// when missing. Keep it outside DIR.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/var/lib/op-dbus/keys/witness.key"
        )]
        witness_key: PathBuf,
        /// The name of a new witness key [default: <host name>/opdbus-witness].
        #[arg(long, value_name = "NAME")]
        witness_name: Option<String>,
        /// For an ssh:// SOURCE: the ssh command and its options, split as a POSIX shell
        /// would (no expansion), e.g. "ssh -i /root/.ssh/replica -o BatchMode=yes".
        #[arg(
            long,
            value_name = "COMMAND",
            default_value = opdbus_blockchain::replica::run::DEFAULT_SSH_COMMAND
        )]
        ssh_command: String,
        /// For an ssh:// SOURCE: the opdbus-chain program on the source.
        #[arg(long, value_name = "PATH", default_value = "opdbus-chain")]
        remote_program: String,
        /// Keep following the source: a round every --interval, one line for each round that
        /// copied blocks or failed (one JSON object per line with --json). A source that cannot
        /// be read is retried (waiting up to 30 s); it stops (exit 1) when the source diverges
        /// or sends invalid data, keeping the copy as verified. For a service: see
        /// docs/operations.md.
        #[arg(long)]
        follow: bool,
        /// The time between two rounds with --follow (e.g. 250ms, 1s, 1min): with the source's
        /// default 1 s checkpoints, 500ms keeps the copy within about 1.6 s of the source's
        /// acknowledgements (docs/benchmarks.md).
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "500ms",
            requires = "follow",
            value_parser = parse_interval
        )]
        interval: std::time::Duration,
        /// Print one JSON object: ok, source, dir, size, root, origin, copied, witness_vkey,
        /// note; or ok false with failure (and diverged_at).
        #[arg(long)]
        json: bool,
    },
    /// Show which replicas hold which tree of this log, with whose cosignatures.
    ///
    /// Each REPLICA is where a replica publishes its checkpoint: an http(s):// URL of its
    /// tlog/checkpoint, or a file. Each must be signed by --vkey (this log's key) and give, at
    /// its size, the root this log's own tiles give: a replica holding another tree is a split
    /// view (or this chain was rewritten), exit 1. Prints, per replica, its size, whether it is
    /// consistent, and the cosignatures on it: those of --witness keys checked, others listed by
    /// name as unchecked. A replica that cannot be read is a line too (exit 2 when none could).
    Witnesses {
        /// The replicas' published checkpoints (URLs or files).
        #[arg(value_name = "REPLICA", required = true)]
        replicas: Vec<String>,
        /// This log's verifier key (`key show`), or a file holding it.
        #[arg(long, value_name = "VKEY")]
        vkey: String,
        /// A witness's verifier key to check its cosignature with; repeat for each.
        #[arg(long = "witness", value_name = "W_VKEY")]
        witnesses: Vec<String>,
        #[command(flatten)]
        dir: ChainDir,
        #[command(flatten)]
        tlog: TlogDir,
        /// One JSON object: ok, replicas (source, size, root, consistent, cosigned, error).
        #[arg(long)]
        json: bool,
    },
    /// Serve a replica over ssh: write one published file of the chain to stdout.
    ///
    /// What `replicate ssh://…` runs on the source (as an HTTP server serves the same files):
    /// `export checkpoint` writes TLOG/checkpoint; `export segment FIRST [--offset N]` writes
    /// the segment file whose first height is FIRST from byte N on. Either is preceded by one
    /// byte, `+`; a segment that does not exist is exit 3 with nothing written (HTTP's 404).
    /// Files are opened without following symbolic links; nothing is written.
    ///
    /// To let a replica's key run only this, put
    /// `command="opdbus-chain export --from-ssh",restrict` before it in authorized_keys:
    /// --from-ssh takes the request from SSH_ORIGINAL_COMMAND and refuses anything but an
    /// export of this chain directory.
    Export {
        /// `checkpoint`, or `segment FIRST` (a decimal height).
        #[arg(value_name = "WHAT", num_args = 0..=2)]
        what: Vec<String>,
        /// For a segment: the byte to start at.
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: u64,
        /// Read the request from SSH_ORIGINAL_COMMAND (an authorized_keys forced command).
        #[arg(long, conflicts_with = "what")]
        from_ssh: bool,
        #[command(flatten)]
        dir: ChainDir,
        #[command(flatten)]
        tlog: TlogDir,
    },
    /// Show the checkpoint signing key's verifier key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Print the newest checkpoint the daemon published (TLOG/checkpoint), a signed note
    /// (c2sp.org/tlog-checkpoint) naming the log, its size and its Merkle root.
    ///
    /// Keep copies elsewhere (--out): `verify --checkpoint` and `consistency` check the chain
    /// and later checkpoints against them. Exit 1 when there is none yet or its signature does
    /// not check with --vkey.
    Checkpoint {
        #[command(flatten)]
        dir: ChainDir,
        #[command(flatten)]
        tlog: TlogDir,
        /// Write the note to FILE (replaced atomically, mode 0644) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Check its signature with this verifier key (or a file holding it).
        #[arg(long, value_name = "VKEY")]
        vkey: Option<String>,
        /// Print one JSON object: ok, origin, size, root (hex), note; or ok false and failure.
        #[arg(long)]
        json: bool,
    },
    /// Print the inclusion proof of the block at HEIGHT in the log's Merkle tree (RFC 9162
    /// §2.1.3), served from the tiles.
    ///
    /// The tree is that of the published checkpoint, or of --size N blocks (HEIGHT < N <= the
    /// checkpoint's size). The proof is checked before it is printed, against the root the
    /// chain's own block hashes give at that size. Prints the height, tree size, block hash,
    /// leaf hash (SHA-256 of 0x00 and the block hash), root and the proof's hashes, in hex.
    /// Exit 1 when the chain is shorter, the tiles cannot prove it or the proof does not check.
    Prove {
        /// The block's height.
        height: u64,
        /// The tree size to prove against [default: the published checkpoint's size].
        #[arg(long, value_name = "N")]
        size: Option<u64>,
        #[command(flatten)]
        dir: ChainDir,
        #[command(flatten)]
        tlog: TlogDir,
        /// Print one JSON object: ok, height, tree_size, block_hash, leaf_hash, root, proof; or
        /// ok false and failure.
        #[arg(long)]
        json: bool,
    },
    /// Check that checkpoint NEW extends checkpoint OLD: one log, no block changed or removed
    /// in between (RFC 9162 §2.1.4 consistency proof, from the tiles).
    ///
    /// Both signatures must check with --vkey, the origins must be the same and OLD's size at
    /// most NEW's; the proof built from the tiles in the tlog directory must lead from OLD's
    /// root to NEW's. Exit 1 naming what fails. Run it on each new checkpoint against the
    /// last one kept, to detect a log that was rewritten or forked between them.
    Consistency {
        /// The older checkpoint file.
        old: PathBuf,
        /// The newer checkpoint file.
        new: PathBuf,
        /// The log's verifier key (as `key show` prints it), or a file holding it.
        #[arg(long, value_name = "VKEY")]
        vkey: String,
        #[command(flatten)]
        dir: ChainDir,
        #[command(flatten)]
        tlog: TlogDir,
        /// Print one JSON object: ok, consistent, origin, old, new, proof; or ok false and
        /// failure.
        #[arg(long)]
        json: bool,
    },
    /// Maintain the transparency log's tiles.
    Tlog {
        #[command(subcommand)]
        command: TlogCommand,
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
        /// The block is JSON already; with --json, a block that is not there is one JSON
        /// object too: ok false and failure.
        #[arg(long)]
        json: bool,
    },
    /// Print blocks, oldest first: the newest 10, or those in a range (--since, --until,
    /// --height), of a plugin, operation or caller; follow new ones with -f.
    ///
    /// Reads the chain directory (no daemon needed, read access to the directory suffices).
    /// Without -n, every block in the range is printed when --since, --until or --height is
    /// given, else the newest 10 (what `tail`, the older name of this command, always did).
    /// --since is found by a binary search on heights (block times never decrease along the
    /// chain), so `log --since -1h` answers at once on any length of chain; the field filters
    /// (--plugin, --operation, --uid, --unit) are then tested block by block. All times are
    /// UTC, in the input and in the output. With --bus the running daemon is asked instead
    /// (its Query method), for a user who may read the bus but not the directory.
    ///
    /// Exit status: 0 when it ran, even when no block matches (as journalctl); 1 when a block
    /// met on the way does not check out (its height and the reason on stderr); 2 bad
    /// arguments or an unreadable directory.
    #[command(
        visible_alias = "tail",
        after_long_help = "Examples:\n  \
            opdbus-chain log --since -1h --plugin network\n  \
            opdbus-chain log --since \"2026-12-04 10:00\" --until \"2026-12-04 11:00\" -o json\n  \
            opdbus-chain log --height 1000..1100 --uid 0\n  \
            opdbus-chain log -n 50 --operation delete --reverse\n  \
            opdbus-chain log -f --unit op-dbus.service\n  \
            opdbus-chain log -f --bus system -o json"
    )]
    Log {
        #[command(flatten)]
        range: log::Range,
        /// Print the newest N matching blocks (oldest first), or all of them.
        #[arg(short = 'n', long = "lines", value_name = "N|all", value_parser = log::parse_lines)]
        lines: Option<log::Lines>,
        /// After the blocks asked for, keep printing new blocks as they are added, until
        /// interrupted: every 200 ms the segments are read for new complete records, each
        /// hash-checked (with --bus: on each BlockAdded signal, which it subscribes to with
        /// the daemon's Subscribe, and at least once a second).
        #[arg(short = 'f', long, conflicts_with = "until")]
        follow: bool,
        /// How to print each block.
        #[arg(short = 'o', long, value_enum, default_value_t = log::Output::Short)]
        output: log::Output,
        /// The same as -o json.
        #[arg(long, conflicts_with = "output")]
        json: bool,
        /// Newest first.
        #[arg(short = 'r', long, conflicts_with = "follow")]
        reverse: bool,
        /// Ask the running daemon on this bus (system, session or an address) with Query,
        /// and follow with its BlockAdded signal (subscribed), instead of reading the chain
        /// directory: for a user who may read the bus but not the directory. Same output.
        #[arg(long, value_name = "BUS")]
        bus: Option<BusChoice>,
        #[command(flatten)]
        dir: ChainDir,
    },
    /// Count blocks by plugin, operation, caller (uid and unit) and day (UTC) over a range,
    /// like aureport's summary.
    ///
    /// The range and filters are those of `log` (--since, --until, --height, --plugin,
    /// --operation, --uid, --unit); without any, the whole chain is counted (a progress line
    /// goes to stderr every second on long chains). Prints the total, the first and last
    /// height and time, then one table per grouping, largest first (days in calendar order).
    ///
    /// Exit status: 0 when it ran, also when nothing matches; 1 when a block met on the way
    /// does not check out; 2 bad arguments or an unreadable directory.
    #[command(after_long_help = "Examples:\n  \
        opdbus-chain report --since yesterday --until today\n  \
        opdbus-chain report --since -7d --plugin network --json")]
    Report {
        #[command(flatten)]
        range: log::Range,
        /// Print one JSON object: total, first_height, last_height, first_timestamp_ns,
        /// last_timestamp_ns, by_plugin and by_operation ({name: count}), by_caller ([{uid,
        /// unit, count}]; uid null when unknown) and by_day ({"YYYY-MM-DD": count}); the
        /// counts of each grouping add up to total.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: ChainDir,
    },
    /// Show the daemon's NUMA view: nodes with CPUs and memory, the node chosen for the chain
    /// writer and why, cache placement, memory policy, and whether the binding took effect.
    Numa {
        #[command(flatten)]
        bus: Bus,
        /// Print the NumaInfo dictionary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Find the blocks most similar to a block or a footprint (cosine of block vectors).
    ///
    /// QUERY is a block hash, or a footprint as JSON:
    /// '{"plugin":"network","operation":"create","data":{"name":"eth0"}}'.
    /// Prints height, score (1 = identical features) and hash, best first; exit status 1 when
    /// nothing matches.
    Similar {
        /// A block hash or a footprint JSON object.
        query: String,
        /// How many blocks (1 to 1000).
        #[arg(short = 'k', long, default_value_t = 10)]
        k: u32,
        /// Only blocks of this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Only blocks of this operation.
        #[arg(long)]
        operation: Option<String>,
        /// Only blocks added by this uid.
        #[arg(long)]
        uid: Option<u32>,
        /// Only blocks at or after this time (nanoseconds since the Unix epoch).
        #[arg(long, value_name = "NS")]
        since_ns: Option<u64>,
        /// Only blocks at or before this time (nanoseconds since the Unix epoch).
        #[arg(long, value_name = "NS")]
        until_ns: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: Bus,
    },
    /// Print the running daemon's cache counters and sizes (CacheStats over D-Bus): entries
    /// in RAM and on disk, hits, misses, hit rate, compression ratio, write failures, and the
    /// shared tier's hits, misses, errors and bytes written (OPDBUS_SHARED_CACHE).
    Stats {
        #[command(flatten)]
        bus: Bus,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon for a unified snapshot of chain and cache (online).
    ///
    /// Prints the chain snapshot's path, then the cache snapshot's. Both hold the same height
    /// (see MANIFEST.json inside each). With no block since the newest snapshot, that one is
    /// printed and no new one is made.
    Snapshot {
        #[command(flatten)]
        bus: Bus,
        /// Print one JSON object: ok, name, chain, cache.
        #[arg(long)]
        json: bool,
    },
    /// Send the newest snapshot to a backup target with btrfs send/receive, then verify it.
    ///
    /// Incremental from the newest snapshot the target already holds. With --to, the copy is
    /// received as DIR/<snapshot name>/{chain,cache} under a temporary name, re-hashed, checked
    /// against its manifest and only then renamed: a failed backup leaves no snapshot name.
    /// Exit 2 with a one-line reason on any failure.
    Backup {
        #[command(flatten)]
        dirs: ChainAndCache,
        /// A directory on another btrfs filesystem.
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "to_command",
            conflicts_with = "to_command"
        )]
        to: Option<PathBuf>,
        /// A command that runs btrfs receive elsewhere, split like a shell would but run without
        /// one; {name} is replaced by the snapshot name. Example:
        /// 'ssh backup@host "mkdir -p /srv/opdbus/{name} && btrfs receive /srv/opdbus/{name}"'
        #[arg(long, value_name = "CMD")]
        to_command: Option<String>,
        /// Print one JSON object: ok, name, full (null when the target held it already),
        /// parent, dest, already_there and verified (blocks_checked, height, head_hash; null
        /// when sent through a command).
        #[arg(long)]
        json: bool,
    },
    /// Check a backup (or snapshot) directory holding chain/ and cache/: every block re-hashed,
    /// the head equal to the manifest. Exit 1 when it does not check out.
    VerifyBackup {
        /// TARGET/<snapshot name>
        dir: PathBuf,
        /// Print one JSON object: ok, dir, blocks_checked, height, head_hash; or ok false and
        /// failure.
        #[arg(long)]
        json: bool,
    },
    /// Put a backup back as a working chain and cache (which must not exist yet).
    ///
    /// The backup is verified first and the restored chain again afterwards. Start the daemon
    /// on the restored directories; new footprints continue the chain.
    Restore {
        /// The backup: TARGET/<snapshot name> (or a local .snapshots/<snapshot name>), or a
        /// replica's directory (`replicate --to`, OPDBUS_REPLICAS_DIR/<name>): its blocks up to the
        /// checkpoint it verified, with an empty cache; the daemon then starts its own log.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        #[command(flatten)]
        dirs: ChainAndCache,
        /// Print one JSON object: ok, from, chain_dir, chain_subvolume, cache_dir, height,
        /// head_hash, marker; or ok false and failure.
        #[arg(long)]
        json: bool,
    },
    /// Apply the retention policy to the snapshots beside the chain (as the daemon does after
    /// each scheduled snapshot): keep the newest snapshot of each of the last N hours, days and
    /// ISO weeks that hold one, the newest, and every backup target's parent; delete the rest.
    Prune {
        #[command(flatten)]
        dirs: ChainAndCache,
        /// Keep the newest snapshot of each of the last N hours that hold one.
        #[arg(
            long,
            value_name = "N",
            env = "OPDBUS_RETAIN_HOURLY",
            default_value_t = 5
        )]
        hourly: u32,
        /// Keep the newest snapshot of each of the last N days (UTC) that hold one.
        #[arg(
            long,
            value_name = "N",
            env = "OPDBUS_RETAIN_DAILY",
            default_value_t = 5
        )]
        daily: u32,
        /// Keep the newest snapshot of each of the last N ISO weeks that hold one.
        #[arg(
            long,
            value_name = "N",
            env = "OPDBUS_RETAIN_WEEKLY",
            default_value_t = 5
        )]
        weekly: u32,
        /// Only print what would be kept (with why) and deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object: ok, dry_run, keep (name, reasons), delete (deleted, or would
        /// be with --dry-run), failed (name, reason: not deleted).
        #[arg(long)]
        json: bool,
    },
    /// Print the completion script for SHELL to stdout.
    ///
    /// The packages install them already (bash-completion, zsh's site-functions, fish's
    /// vendor_completions.d); by hand, for example:
    /// `opdbus-chain completions bash > ~/.local/share/bash-completion/completions/opdbus-chain`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `opdbus-chain generate-docs DIR`: writes the man pages (DIR/man1) and completions
/// (DIR/completions/{bash,zsh,fish}), for packaging. Parsed apart from [`Cli`] so that neither
/// the pages nor the completions offer it (clap_complete lists hidden subcommands too).
#[derive(Parser)]
#[command(name = "opdbus-chain generate-docs")]
struct GenerateDocs {
    /// The directory to write them under (created when missing).
    dir: PathBuf,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the verifier key (`<name>+<key id>+<base64 public key>`, c2sp.org/signed-note)
    /// of the checkpoint signing key: give it to whoever checks checkpoints (--vkey).
    ///
    /// Reads the private key file (root only); exit 1 when there is none yet (the daemon
    /// makes one at its first start) or others can read it.
    Show {
        #[command(flatten)]
        key: KeyFile,
        /// Print the key's cosigner verifier key instead (c2sp.org/tlog-cosignature): for a
        /// replica's witness key (--key /var/lib/op-dbus/keys/witness.key), what `verify
        /// --witness` takes.
        #[arg(long)]
        witness: bool,
        /// Print one JSON object: ok, key, name, vkey; or ok false and failure.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TlogCommand {
    /// Rewrite the tiles that are missing or differ from what the chain gives.
    ///
    /// Offline: takes the chain's lock, so it refuses while the daemon runs. Re-hashes the
    /// whole chain (as verify does), compares every tile with the tree its blocks give,
    /// rewrites those that are missing or differ (each synced before it is renamed into
    /// place), then every partial tile of the current size. Prints how many tiles were
    /// compared and rewritten. The checkpoints (TLOG/checkpoint, TLOG/checkpoints) are left as
    /// they are: they are what was published. Exit 1 when the chain is not intact.
    Rebuild {
        #[command(flatten)]
        dir: ChainDir,
        #[command(flatten)]
        tlog: TlogDir,
        /// Print one JSON object: ok, tlog_dir, size, root, compared, missing_rewritten,
        /// differing_rewritten, missing, differing; or ok false and failure.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct TlogDir {
    /// The transparency log's directory, TLOG (tiles, checkpoint, checkpoints) [default, also
    /// when empty: tlog in the chain directory].
    #[arg(long, value_name = "TLOG", env = "OPDBUS_TLOG_DIR", value_parser = path_or_empty())]
    tlog_dir: Option<PathBuf>,
}

#[derive(Args)]
struct KeyFile {
    /// The checkpoint signing key (a signed-note private key, mode 0600) [default, also when
    /// empty: /var/lib/op-dbus/keys/signing.key].
    #[arg(
        long = "key",
        value_name = "PATH",
        env = "OPDBUS_SIGNING_KEY",
        value_parser = path_or_empty()
    )]
    path: Option<PathBuf>,
}

impl KeyFile {
    /// As the daemon resolves it.
    fn path(&self) -> PathBuf {
        match &self.path {
            Some(path) if !path.as_os_str().is_empty() => path.clone(),
            _ => PathBuf::from("/var/lib/op-dbus/keys/signing.key"),
        }
    }
}

/// A path that may be empty: an empty OPDBUS_* variable means "the default", as for the daemon.
/// `--interval`: 100ms to 1h.
fn parse_interval(value: &str) -> Result<std::time::Duration, String> {
    opdbus_blockchain::config::duration(value, 100, 3_600_000)
}

fn path_or_empty() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

#[derive(Args)]
struct Bus {
    /// The bus the daemon is on: system, session or a D-Bus address (unix:path=/run/bus).
    #[arg(long, value_name = "BUS", default_value = "system")]
    bus: BusChoice,
}

#[derive(Args)]
struct ChainAndCache {
    /// The chain directory (its snapshots are in .snapshots beside it).
    #[arg(
        long,
        value_name = "DIR",
        env = "OPDBUS_BLOCKCHAIN_DIR",
        default_value = "/var/lib/op-dbus/blockchain"
    )]
    chain_dir: PathBuf,
    /// The cache directory [default: @cache beside the chain directory].
    #[arg(long, value_name = "DIR", env = "OPDBUS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

impl ChainAndCache {
    /// The cache directory, by default `@cache` beside the chain directory (the daemon's
    /// default layout: /var/lib/op-dbus/blockchain and /var/lib/op-dbus/@cache).
    fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            self.chain_dir
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("@cache")
        })
    }
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
    let result = if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "generate-docs")
    {
        let GenerateDocs { dir } = GenerateDocs::parse_from(
            std::iter::once("opdbus-chain generate-docs".into()).chain(std::env::args_os().skip(2)),
        );
        docs::generate(Cli::command(), &man_pages(), &dir).map(|()| ExitCode::SUCCESS)
    } else {
        run(Cli::parse())
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("opdbus-chain: {err}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::Completions { shell } => {
            docs::completion(&mut Cli::command(), shell, &mut std::io::stdout())
                .map_err(|err| format!("writing the completions: {err}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            dir,
            repair: true,
            cache_dir: Some(cache_dir),
            ..
        } => repair::verify_and_repair(&dir.chain_dir, &cache_dir),
        Command::Verify {
            dir,
            tlog,
            expect_head,
            vectors,
            checkpoint,
            vkey,
            witnesses,
            quorum,
            json,
            ..
        } => offline::verify(
            dir.chain_dir.clone(),
            offline::VerifyArgs {
                expect_head,
                vectors,
                tlog_dir: transparency::tlog_dir(tlog.tlog_dir.as_deref(), &dir.chain_dir),
                checkpoint: checkpoint.zip(vkey),
                witnesses,
                quorum,
                json,
            },
        ),
        Command::Key {
            command: KeyCommand::Show { key, witness, json },
        } => transparency::key_show(&key.path(), witness, json),
        Command::Witnesses {
            replicas,
            vkey,
            witnesses,
            dir,
            tlog,
            json,
        } => replicate::witnesses(
            &replicas,
            &vkey,
            &witnesses,
            &transparency::tlog_dir(tlog.tlog_dir.as_deref(), &dir.chain_dir),
            json,
        ),
        Command::Export {
            what,
            offset,
            from_ssh,
            dir,
            tlog,
        } => replicate::export(replicate::ExportArgs {
            what,
            offset,
            from_ssh,
            tlog_dir: transparency::tlog_dir(tlog.tlog_dir.as_deref(), &dir.chain_dir),
            chain_dir: dir.chain_dir,
        }),
        Command::Replicate {
            source,
            to,
            vkey,
            tlog_url,
            witness_key,
            witness_name,
            ssh_command,
            remote_program,
            follow,
            interval,
            json,
        } => replicate::replicate(replicate::ReplicateArgs {
            source: &source,
            tlog: tlog_url.as_deref(),
            to: &to,
            vkey: &vkey,
            witness_key: &witness_key,
            witness_name: witness_name.as_deref(),
            ssh_command: &ssh_command,
            remote_program: &remote_program,
            follow: follow.then_some(interval),
            json,
        }),
        Command::Checkpoint {
            dir,
            tlog,
            out,
            vkey,
            json,
        } => transparency::checkpoint(
            &transparency::tlog_dir(tlog.tlog_dir.as_deref(), &dir.chain_dir),
            out.as_deref(),
            vkey.as_deref(),
            json,
        ),
        Command::Prove {
            height,
            size,
            dir,
            tlog,
            json,
        } => proofs::prove(
            &dir.chain_dir,
            &transparency::tlog_dir(tlog.tlog_dir.as_deref(), &dir.chain_dir),
            height,
            size,
            json,
        ),
        Command::Consistency {
            old,
            new,
            vkey,
            dir,
            tlog,
            json,
        } => proofs::consistency(
            &old,
            &new,
            &vkey,
            &transparency::tlog_dir(tlog.tlog_dir.as_deref(), &dir.chain_dir),
            json,
        ),
        Command::Tlog {
            command: TlogCommand::Rebuild { dir, tlog, json },
        } => log_check::rebuild(
            &dir.chain_dir,
            &transparency::tlog_dir(tlog.tlog_dir.as_deref(), &dir.chain_dir),
            json,
        ),
        Command::Get {
            block,
            dir,
            pretty,
            json,
        } => offline::get(dir.chain_dir, &block, pretty, json),
        Command::Log {
            range,
            lines,
            follow,
            output,
            json,
            reverse,
            bus,
            dir,
        } => log::log(
            &dir.chain_dir,
            &range,
            log::LogArgs {
                lines,
                follow,
                output: if json { log::Output::Json } else { output },
                reverse,
                bus,
            },
        ),
        Command::Report { range, json, dir } => report::report(&dir.chain_dir, &range, json),
        Command::Numa { bus, json } => online::numa(&bus.bus, json),
        Command::Similar {
            query,
            k,
            plugin,
            operation,
            uid,
            since_ns,
            until_ns,
            json,
            bus,
        } => online::similar(
            &bus.bus,
            online::SimilarArgs {
                query,
                k,
                plugin,
                operation,
                uid,
                since_ns,
                until_ns,
                json,
            },
        ),
        Command::Stats { bus, json } => online::stats(&bus.bus, json),
        Command::Snapshot { bus, json } => online::snapshot(&bus.bus, json),
        Command::Backup {
            dirs,
            to,
            to_command,
            json,
        } => match (to, to_command) {
            (Some(dir), _) => Ok(BackupTarget::Directory(dir)),
            (None, Some(line)) => Ok(BackupTarget::Command(line)),
            (None, None) => Err("give --to DIR or --to-command CMD".into()),
        }
        .and_then(|target| backup::backup(dirs.chain_dir.clone(), dirs.cache_dir(), target, json)),
        Command::VerifyBackup { dir, json } => backup::verify_backup(&dir, json),
        Command::Restore { from, dirs, json } => {
            backup::restore(&from, &dirs.chain_dir, &dirs.cache_dir(), json)
        }
        Command::Prune {
            dirs,
            hourly,
            daily,
            weekly,
            dry_run,
            json,
        } => prune::prune(
            dirs.chain_dir.clone(),
            dirs.cache_dir(),
            opdbus_blockchain::snapshot::RetentionPolicy {
                hourly,
                daily,
                weekly,
            },
            dry_run,
            json,
        ),
    }
}

/// What opdbus-chain's man pages say beyond its --help.
fn man_pages() -> docs::Pages<'static> {
    docs::Pages {
        section: "1",
        exit_status: &EXIT_STATUS,
        environment: Vec::new(),
        files: &[
            (
                "/var/lib/op-dbus/blockchain",
                "The chain directory (--chain-dir): segments, index, block vectors, and the \
                 transparency log's tiles and checkpoints in tlog/.",
            ),
            (
                "/var/lib/op-dbus/@cache",
                "The daemon's block cache (--cache-dir).",
            ),
            (
                "/var/lib/op-dbus/.snapshots",
                "Unified snapshots of chain and cache, one directory per snapshot name.",
            ),
            (
                "/var/lib/op-dbus/keys/signing.key",
                "The checkpoint signing key (--key), root only.",
            ),
            (
                "/var/lib/op-dbus/keys/witness.key",
                "A replica's cosigning key (replicate --witness-key), root only.",
            ),
        ],
        see_also: &["opdbus-blockchaind(8)", "journalctl(1)", "busctl(1)"],
    }
}

/// What a command returns: its exit code, or a one-line reason it could not run (exit 2).
pub type Outcome = Result<ExitCode, String>;
