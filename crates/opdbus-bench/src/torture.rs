//! `opdbus-bench torture`: the crash harness an operator can run for as long as they like.
//!
//! Starts a private dbus-daemon and the real opdbus-blockchaind on a scratch chain, runs N
//! concurrent writers (AddFootprint in a loop, each on its own connection), and in every cycle
//! kills the daemon with SIGKILL at a random moment, starts it again and checks that every
//! footprint whose AddFootprint returned is in the chain at its height with the same hash,
//! that heights are dense and that the whole chain verifies. Exit 0 when every cycle held,
//! 1 when any check failed, 2 when the harness could not run.

use crate::Outcome;
use opdbus_blockchain::chain::block::Hash;
use opdbus_blockchain::chain::verify::verify_dir;
use opdbus_blockchain::chain::{segment, store};
use opdbus_blockchain::dbus::{BUS_NAME, OBJECT_PATH};
use opdbus_testkit::process::{DaemonOptions, OPEN_POLICY};
use opdbus_testkit::{Bus, Daemon, SplitMix64};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct TortureArgs {
    pub cycles: u64,
    pub writers: usize,
    pub dir: Option<PathBuf>,
    pub daemon: Option<PathBuf>,
    pub max_kill_ms: u64,
    /// Passed to the daemon as OPDBUS_SEGMENT_BYTES, so that kills also hit segment rotation.
    pub segment_bytes: u64,
}

pub fn torture(args: TortureArgs) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(run(args))
}

/// A scratch directory, removed at the end unless the operator chose it.
struct Workdir {
    path: PathBuf,
    remove: bool,
}

impl Workdir {
    fn keep_for_inspection(&mut self) {
        if self.remove {
            println!("torture: keeping {} for inspection", self.path.display());
            self.remove = false;
        }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn run(args: TortureArgs) -> Outcome {
    if args.cycles == 0 || args.writers == 0 {
        return Err("--cycles and --writers must be at least 1".into());
    }
    let daemon_bin = match args.daemon {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program: {e}"))?
            .with_file_name("opdbus-blockchaind"),
    };
    if !daemon_bin.exists() {
        return Err(format!(
            "daemon binary {} not found (use --daemon PATH)",
            daemon_bin.display()
        ));
    }
    let mut work = match args.dir {
        Some(path) => Workdir {
            path,
            remove: false,
        },
        None => Workdir {
            path: std::env::temp_dir().join(format!(
                "opdbus-torture-{}-{}",
                std::process::id(),
                random_u64() % 1_000_000
            )),
            remove: true,
        },
    };
    std::fs::create_dir_all(&work.path)
        .map_err(|e| format!("cannot create {}: {e}", work.path.display()))?;
    let chain_dir = work.path.join("chain");
    let cache_dir = work.path.join("cache");
    let log = work.path.join("daemon.log");
    // Any user may run the harness: the bus lets anyone own and call.
    let bus = Bus::start_in(&work.path, &[OPEN_POLICY])?;
    let mut options = DaemonOptions::new(daemon_bin, &chain_dir, &cache_dir)
        .env("OPDBUS_LOG", "warn")
        .env("OPDBUS_SEGMENT_BYTES", &args.segment_bytes.to_string());
    options.log = log.clone();
    options.ready_within = Duration::from_secs(60);
    println!(
        "torture: {} cycles, {} writers, segments of {} bytes, chain {}, daemon log {}",
        args.cycles,
        args.writers,
        args.segment_bytes,
        chain_dir.display(),
        log.display()
    );

    let mut all_acked: Vec<(u64, Hash)> = Vec::new();
    let mut failures = 0u64;
    let started = Instant::now();
    for cycle in 1..=args.cycles {
        // Not starting after a crash is a broken guarantee, not a harness problem.
        let mut daemon = match start(&bus, &options) {
            Ok(daemon) => daemon,
            Err(reason) => {
                println!("cycle {cycle}/{}: FAILED: {reason}", args.cycles);
                work.keep_for_inspection();
                return Ok(ExitCode::FAILURE);
            }
        };
        let recovered_in = daemon.started_in;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for writer in 0..args.writers {
            let connection = bus.connect().await?;
            let (acked, stop, errors) = (acked.clone(), stop.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                for seq in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let data = format!(r#"{{"cycle":{cycle},"writer":{writer},"seq":{seq}}}"#);
                    match add_footprint(&connection, &data).await {
                        Ok((height, hash)) => acked.lock().push((height, hash)),
                        // The daemon died under the call: never acknowledged.
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }));
        }
        let kill_after = Duration::from_millis(20 + random_u64() % args.max_kill_ms.max(1));
        tokio::time::sleep(kill_after).await;
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        let acked: Vec<(u64, String)> = std::mem::take(&mut *acked.lock());
        let mut cycle_acked = Vec::with_capacity(acked.len());
        for (height, hash) in acked {
            match opdbus_blockchain::chain::block::parse_hash(&hash) {
                Some(hash) => cycle_acked.push((height, hash)),
                None => {
                    failures += 1;
                    println!(
                        "cycle {cycle}: FAILED: the daemon acknowledged a malformed hash {hash:?}"
                    );
                }
            }
        }
        // The restart is what the next cycle (or the final check) does; here the chain is
        // checked on disk exactly as the crash left it, the way the daemon will find it.
        let (lost, head) = check_acked(&chain_dir, &cycle_acked);
        let report = verify_dir(&chain_dir, None, &mut |_| {})
            .map_err(|e| format!("cannot verify {}: {e}", chain_dir.display()))?;
        let ok = lost.is_empty() && report.ok();
        if !ok {
            failures += 1;
        }
        println!(
            "cycle {cycle}/{}: started in {} ms, killed after {} ms, {} acked (total {}), head {}, {}{}",
            args.cycles,
            recovered_in.as_millis(),
            kill_after.as_millis(),
            cycle_acked.len(),
            all_acked.len() + cycle_acked.len(),
            head.map_or("-".into(), |h| h.to_string()),
            if ok { "ok" } else { "FAILED" },
            describe_problems(&lost, &report.summary(), report.ok())
        );
        all_acked.extend(cycle_acked);
    }

    // A last start: the daemon recovers, serves the chain, and every ack ever made is there.
    let mut daemon = match start(&bus, &options) {
        Ok(daemon) => daemon,
        Err(reason) => {
            println!("torture: FAILED at the last start: {reason}");
            work.keep_for_inspection();
            return Ok(ExitCode::FAILURE);
        }
    };
    let connection = bus.connect().await?;
    let after = add_footprint(&connection, r#"{"final":true}"#).await;
    daemon.kill9();
    let (lost, head) = check_acked(&chain_dir, &all_acked);
    let report = verify_dir(&chain_dir, None, &mut |_| {})
        .map_err(|e| format!("cannot verify {}: {e}", chain_dir.display()))?;
    let max_acked = all_acked.iter().map(|a| a.0).max().unwrap_or(0);
    let continued = matches!(after, Ok((height, _)) if height > max_acked);
    if !lost.is_empty() || !report.ok() || !continued {
        failures += 1;
    }
    println!(
        "torture: {} cycles in {:.1} s, {} acknowledged footprints checked, {} lost, head {} in {} segments, {}; write after the last restart {}; {} failures",
        args.cycles,
        started.elapsed().as_secs_f64(),
        all_acked.len(),
        lost.len(),
        head.map_or("-".into(), |h| h.to_string()),
        segment::list(&chain_dir).map_or(0, |s| s.len()),
        report.summary(),
        match &after {
            Ok((height, _)) if continued => format!("ok at height {height}"),
            Ok((height, _)) => format!("FAILED: height {height} not after {max_acked}"),
            Err(e) => format!("FAILED: {e}"),
        },
        failures
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        work.keep_for_inspection();
        ExitCode::FAILURE
    })
}

fn describe_problems(lost: &[String], summary: &str, verified: bool) -> String {
    let mut out = String::new();
    if !lost.is_empty() {
        out.push_str(&format!(
            "; {} acked footprints lost or changed, first: {}",
            lost.len(),
            lost[0]
        ));
    }
    if !verified {
        out.push_str(&format!("; {summary}"));
    }
    out
}

/// Every acked (height, hash) must be in the chain at that height; returns what is not, and
/// the head found. Heights are dense by construction of the reader, which scans and links every
/// record from genesis.
fn check_acked(chain_dir: &Path, acked: &[(u64, Hash)]) -> (Vec<String>, Option<u64>) {
    let reader = match store::open_read_only(chain_dir) {
        Ok(reader) => reader,
        Err(err) => return (vec![format!("the chain cannot be opened: {err}")], None),
    };
    let mut lost = Vec::new();
    for (height, hash) in acked {
        match reader.block_at(*height) {
            Ok(Some(block)) if &block.hash == hash => {}
            Ok(Some(block)) => lost.push(format!(
                "height {height} holds {} instead of {}",
                block.hash_hex(),
                hex::encode(hash)
            )),
            Ok(None) => lost.push(format!("height {height} ({}) is gone", hex::encode(hash))),
            Err(err) => lost.push(format!("height {height}: {err}")),
        }
    }
    (lost, Some(reader.head().0))
}

/// Starts the daemon off the async workers (the kit waits for its name synchronously).
fn start(bus: &Bus, options: &DaemonOptions) -> Result<Daemon, String> {
    tokio::task::block_in_place(|| Daemon::start(bus, options.clone()))
}

/// AddFootprint; a call that gets no answer within a minute counts as not acknowledged.
async fn add_footprint(connection: &zbus::Connection, data: &str) -> zbus::Result<(u64, String)> {
    let args = ("torture", "write", data);
    let call = connection.call_method(
        Some(BUS_NAME),
        OBJECT_PATH,
        Some(BUS_NAME),
        "AddFootprint",
        &args,
    );
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .map_err(|_| zbus::Error::Failure("no answer within 60 s".into()))??
        .body()
        .deserialize()
}

/// The test kit's one generator, seeded once per process from the OS (the kill moments differ
/// run to run; without OS randomness they are merely the same every run, the check still holds).
fn random_u64() -> u64 {
    static RNG: Mutex<Option<SplitMix64>> = Mutex::new(None);
    let mut rng = RNG.lock();
    rng.get_or_insert_with(|| {
        let mut bytes = [0u8; 8];
        let _ = getrandom::getrandom(&mut bytes);
        SplitMix64(u64::from_le_bytes(bytes))
    })
    .next()
}
