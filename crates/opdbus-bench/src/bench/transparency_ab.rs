//! What the transparency log costs the write path: AddFootprint with 16 clients on the daemon
//! (transparency on) and on the same binary started with `--bench-without-transparency` (off),
//! in rounds of one slice each, the order swapped every round (A B, B A, …) so that drifts of the
//! shared machine hit both alike.
//!
//! Both daemons leave work behind a slice: the log works once per checkpoint interval, the block
//! cache at idle priority. After each slice the bench waits until the checkpoint of the daemon
//! with the log covers its head and both daemons are idle, so that one daemon's leftovers never
//! land in the other's slice. The wait is not counted in the throughput (which so sees the work
//! done during the slice only), but it is in the CPU per call, which therefore carries all of it.

use super::measure::{self, Call, Cpu, Sample};
use super::stage::Stage;
use opdbus_blockchain::dbus::{BUS_NAME, OBJECT_PATH};
use opdbus_blockchain::tlog::Checkpoint;
use std::time::{Duration, Instant};

/// The thread the daemon runs the transparency log on.
const TLOG_THREAD: &str = "opdbus-tlog";

/// The slices of both daemons and what they cost.
#[derive(Default)]
pub struct Comparison {
    /// One sample per round, transparency on and off; `on[i]` and `off[i]` are a pair.
    pub on: Vec<Sample>,
    pub off: Vec<Sample>,
    /// CPU of the bus, the daemon and the clients: for "on" from each slice's start until the
    /// checkpoint covered the head, for "off" over its slices.
    pub on_cpu: Cpu,
    pub off_cpu: Cpu,
    /// CPU of the daemon's transparency-log thread over the same spans as `on_cpu`.
    pub tlog_cpu: Duration,
    /// Time spent after the slices waiting for the checkpoint and for both daemons to be idle.
    pub waited: Duration,
    pub slice: Duration,
}

impl Comparison {
    pub fn on_rates(&self) -> Vec<f64> {
        self.on.iter().map(Sample::rate).collect()
    }

    pub fn off_rates(&self) -> Vec<f64> {
        self.off.iter().map(Sample::rate).collect()
    }

    /// Per round, the rate with the log over the rate without.
    pub fn paired_ratios(&self) -> Vec<f64> {
        self.on
            .iter()
            .zip(&self.off)
            .map(|(on, off)| {
                if off.rate() > 0.0 {
                    on.rate() / off.rate()
                } else {
                    0.0
                }
            })
            .collect()
    }

    pub fn ops_on(&self) -> u64 {
        self.on.iter().map(|s| s.ops).sum()
    }

    pub fn ops_off(&self) -> u64 {
        self.off.iter().map(|s| s.ops).sum()
    }

    /// Microseconds of the log thread's CPU per footprint written with it on.
    pub fn tlog_us_per_footprint(&self) -> f64 {
        self.tlog_cpu.as_secs_f64() * 1e6 / self.ops_on().max(1) as f64
    }

    /// Milliseconds of the log thread's CPU per second of writing with 16 clients (the share of
    /// one core it takes, in thousandths).
    pub fn tlog_ms_per_second(&self) -> f64 {
        let writing: Duration = self.on.iter().map(|s| s.elapsed).sum();
        if writing.is_zero() {
            0.0
        } else {
            self.tlog_cpu.as_secs_f64() * 1e3 / writing.as_secs_f64()
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Runs `rounds` rounds of one `slice` on each daemon, `on` and `off` being 16 connections to
/// the daemon with and without the log.
pub async fn compare(
    stage: &Stage,
    on: &[zbus::Connection],
    off: &[zbus::Connection],
    rounds: usize,
    slice: Duration,
) -> Result<Comparison, String> {
    let (on_bus, on_daemon) = (stage.bus_pid(), stage.daemon_pid());
    let (off_bus, off_daemon) = (stage.plain_bus_pid(), stage.plain_daemon_pid());
    let mut result = Comparison {
        slice,
        ..Comparison::default()
    };
    // What earlier measurements left behind is not this comparison's.
    let daemons = [on_daemon, off_daemon];
    wait_for_checkpoint(stage, &on[0]).await?;
    settle(&daemons).await;
    for round in 0..rounds {
        eprintln!(
            "bench: transparency on/off, round {} of {}",
            round + 1,
            rounds
        );
        let mut on_first = round % 2 == 0;
        for _ in 0..2 {
            if on_first {
                let before = Cpu::now(on_bus, on_daemon);
                let tlog_before = measure::thread_cpu(on_daemon, TLOG_THREAD);
                let (sample, _) = measure::dbus_clients(on, Call::AddFootprint, slice).await?;
                let clients = Cpu::now(on_bus, on_daemon).clients;
                result.waited += wait_for_checkpoint(stage, &on[0]).await?;
                result.waited += settle(&daemons).await;
                result
                    .on_cpu
                    .add(after_wait(before, clients, on_bus, on_daemon));
                result.tlog_cpu +=
                    measure::thread_cpu(on_daemon, TLOG_THREAD).saturating_sub(tlog_before);
                result.on.push(sample);
            } else {
                let before = Cpu::now(off_bus, off_daemon);
                let (sample, _) = measure::dbus_clients(off, Call::AddFootprint, slice).await?;
                let clients = Cpu::now(off_bus, off_daemon).clients;
                result.waited += settle(&daemons).await;
                result
                    .off_cpu
                    .add(after_wait(before, clients, off_bus, off_daemon));
                result.off.push(sample);
            }
            on_first = !on_first;
        }
    }
    Ok(result)
}

/// The CPU since `before`: the bus's and the daemon's until now, the clients' (this process,
/// which also polls while waiting) until the end of the slice, when they read `clients`.
fn after_wait(before: Cpu, clients: Duration, bus: u32, daemon: u32) -> Cpu {
    let mut used = Cpu::now(bus, daemon).since(before);
    used.clients = clients.saturating_sub(before.clients);
    used
}

/// Waits until the newest checkpoint of the daemon with the log covers its head; returns how
/// long that took.
async fn wait_for_checkpoint(
    stage: &Stage,
    connection: &zbus::Connection,
) -> Result<Duration, String> {
    let size = height(connection).await? + 1;
    let file = stage.daemon_chain_dir.join("tlog").join("checkpoint");
    let started = Instant::now();
    loop {
        let covered = std::fs::read(&file)
            .ok()
            .and_then(|note| Checkpoint::parse_unverified(&note).ok())
            .map(|checkpoint| checkpoint.size);
        if covered.is_some_and(|covered| covered >= size) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the daemon's checkpoint ({}) did not reach tree size {size} within 30 s: is its \
                 transparency log halted? see {}",
                covered.map_or("none".into(), |c| format!("size {c}")),
                stage.daemon_log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the processes `pids` used less than 2 % of a CPU over 100 ms (at most 10 s);
/// returns how long that took.
async fn settle(pids: &[u32]) -> Duration {
    let started = Instant::now();
    let busy = || {
        pids.iter()
            .map(|&pid| measure::process_cpu(pid))
            .sum::<Duration>()
    };
    let mut before = busy();
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = busy();
        if now.saturating_sub(before) < Duration::from_millis(2) {
            break;
        }
        before = now;
    }
    started.elapsed()
}

/// The daemon's `Height` property.
async fn height(connection: &zbus::Connection) -> Result<u64, String> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(BUS_NAME, "Height"),
        )
        .await
        .map_err(|e| format!("reading the daemon's Height failed: {e}"))?;
    let value: zbus::zvariant::OwnedValue = reply
        .body()
        .deserialize()
        .map_err(|e| format!("Height replied oddly: {e}"))?;
    u64::try_from(value).map_err(|e| format!("Height is not a u64: {e}"))
}
