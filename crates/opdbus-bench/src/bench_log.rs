//! `opdbus-bench bench-log`: the cost of finding events on a long chain (issue 17).
//!
//! Builds a chain of N blocks with the testkit's ChainBuilder (segments and index as the
//! daemon leaves them; one block a second, the newest "now", so the last hour holds 3600),
//! then times the opdbus-chain built next to this program: `log --since -1h` to its first
//! byte on stdout and to its end, and `report --since -1h`; and in-process a Query-sized
//! search (`query::page` with the daemon's limits) through the offline reader. Runs against
//! the page cache as it stands after the build (warm), then reports each figure's median.

use crate::Outcome;
use opdbus_blockchain::chain::block::Caller;
use opdbus_blockchain::query::offline::OfflineReader;
use opdbus_blockchain::query::{self, Filter, Limits};
use opdbus_testkit::chain_files::ChainBuilder;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct LogArgs {
    pub blocks: u64,
    /// Build here and keep it; reused when it already holds a chain.
    pub dir: Option<PathBuf>,
    pub runs: usize,
}

const PLUGINS: [&str; 4] = ["network", "systemd", "firewall", "packages"];

pub fn run(args: LogArgs) -> Outcome {
    let cli = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable: {e}"))?
        .with_file_name("opdbus-chain");
    if !cli.exists() {
        return Err(format!(
            "{} not found: bench-log runs the opdbus-chain built next to it (cargo build \
             --release --workspace)",
            cli.display()
        ));
    }
    let scratch;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            scratch = tempfile::Builder::new()
                .prefix("opdbus-bench-log")
                .tempdir_in(std::env::var_os("TMPDIR").map_or("/var/tmp".into(), PathBuf::from))
                .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
            scratch.path().join("chain")
        }
    };
    if !dir.join("index").exists() {
        build(&dir, args.blocks)?;
    } else {
        eprintln!("reusing the chain in {}", dir.display());
    }
    let chain = dir.to_str().ok_or("the directory's name is not UTF-8")?;

    let mut first_byte = Vec::new();
    let mut whole = Vec::new();
    let mut lines = 0;
    for _ in 0..args.runs {
        let (first, all, n) = time_log(&cli, &["log", "--since", "-1h", "--chain-dir", chain])?;
        first_byte.push(first);
        whole.push(all);
        lines = n;
    }
    let mut report = Vec::new();
    for _ in 0..args.runs {
        let (_, all, _) = time_log(&cli, &["report", "--since", "-1h", "--chain-dir", chain])?;
        report.push(all);
    }
    let mut query_times = Vec::new();
    let mut open_times = Vec::new();
    let mut found = 0;
    let now = now_ns();
    for _ in 0..args.runs {
        let started = Instant::now();
        let reader = OfflineReader::open(&dir).map_err(|e| e.to_string())?;
        open_times.push(started.elapsed());
        if let Some(reason) = reader.fallback() {
            return Err(format!("the index was not used: {reason}"));
        }
        let filter = Filter {
            since_ns: Some(now - 3600 * 1_000_000_000),
            plugin: Some("network".into()),
            ..Filter::default()
        };
        let limits = Limits {
            max_blocks: 1000,
            max_examined: 100_000,
            max_bytes: 4 << 20,
        };
        let page = query::page(&reader, &filter, limits).map_err(|e| e.to_string())?;
        query_times.push(started.elapsed());
        found = page.blocks.len();
    }
    println!("chain: {} blocks in {}", args.blocks, dir.display());
    println!(
        "log --since -1h: first byte {} ms, all {lines} lines {} ms (median of {})",
        ms(&mut first_byte),
        ms(&mut whole),
        args.runs
    );
    println!("report --since -1h: {} ms", ms(&mut report));
    println!(
        "Query-sized search in-process (open + since -1h, plugin network, {found} blocks): {} ms, of which opening {} ms",
        ms(&mut query_times),
        ms(&mut open_times)
    );
    Ok(ExitCode::SUCCESS)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn ms(times: &mut [Duration]) -> String {
    times.sort();
    format!("{:.2}", times[times.len() / 2].as_secs_f64() * 1000.0)
}

fn build(dir: &Path, blocks: u64) -> Result<(), String> {
    let started = Instant::now();
    let newest = now_ns();
    let first = newest - blocks * 1_000_000_000;
    let fail = |e: std::io::Error| format!("building the chain in {}: {e}", dir.display());
    let mut builder = ChainBuilder::create(dir, first, 64 << 20).map_err(fail)?;
    let mut data = String::new();
    for h in 1..=blocks {
        data.clear();
        use std::fmt::Write as _;
        let _ = write!(data, r#"{{"name":"eth{}","mtu":1500,"seq":{h}}}"#, h % 16);
        builder
            .push(
                first + h * 1_000_000_000,
                Caller {
                    uid: Some(0),
                    pid: Some(900 + (h % 40) as u32),
                    bus_name: format!(":1.{}", 40 + h % 30),
                    unit: "op-dbus.service".into(),
                },
                PLUGINS[(h % 4) as usize],
                if h % 2 == 0 { "create" } else { "update" },
                &data,
            )
            .map_err(fail)?;
        if h % 1_000_000 == 0 {
            eprintln!(
                "built {h} blocks ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    builder.finish().map_err(fail)?;
    eprintln!(
        "built {blocks} blocks in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the CLI; returns the time to its first byte on stdout, to its end, and its line count.
fn time_log(cli: &Path, args: &[&str]) -> Result<(Duration, Duration, usize), String> {
    let started = Instant::now();
    let mut child = Command::new(cli)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut first = [0u8; 1];
    let got = stdout.read(&mut first).map_err(|e| e.to_string())?;
    let first_byte = started.elapsed();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() || got == 0 {
        return Err(format!("{args:?} failed ({status}) or printed nothing"));
    }
    let lines = rest.iter().filter(|&&b| b == b'\n').count() + usize::from(first[0] == b'\n');
    Ok((first_byte, started.elapsed(), lines))
}
