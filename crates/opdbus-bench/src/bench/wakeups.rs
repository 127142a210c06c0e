//! Thread wake-ups of a server: how many times each of its threads was switched in (voluntary
//! and involuntary context switches, `/proc/PID/task/TID/status`) and how much CPU it ran
//! (`schedstat`, nanoseconds), grouped by thread name. On many cores each wake-up of another
//! thread is a cross-core hand-off, so the count per footprint says how the design scales.
//!
//! A thread that ends between two readings loses its counts of that span (tokio's blocking
//! threads linger 10 s idle, so within one slice that is rare); one that starts counts from zero.

use std::collections::{BTreeMap, HashMap};

/// One reading of every thread of a process.
#[derive(Debug, Default, Clone)]
pub struct Threads(HashMap<u32, Counts>);

#[derive(Debug, Default, Clone)]
struct Counts {
    name: String,
    switches: u64,
    cpu_ns: u64,
}

impl Threads {
    /// Reads `/proc/PID/task/*`; empty if the process is gone.
    pub fn read(pid: u32) -> Threads {
        let mut threads = HashMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Threads(threads);
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            let switches = status
                .lines()
                .filter_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    matches!(
                        key,
                        "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches"
                    )
                    .then(|| value.trim().parse::<u64>().ok())?
                })
                .sum();
            let cpu_ns = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            threads.insert(
                tid,
                Counts {
                    name: name.trim_end().to_string(),
                    switches,
                    cpu_ns,
                },
            );
        }
        Threads(threads)
    }
}

/// Wake-ups and CPU summed over spans, by thread name.
#[derive(Debug, Default, Clone)]
pub struct Wakeups {
    /// Thread name → (context switches, CPU ns).
    pub by_name: BTreeMap<String, (u64, u64)>,
}

impl Wakeups {
    /// Adds what each thread did between `before` and `after`.
    pub fn add(&mut self, before: &Threads, after: &Threads) {
        for (tid, now) in &after.0 {
            let (switches, cpu_ns) = match before.0.get(tid) {
                Some(then) => (
                    now.switches.saturating_sub(then.switches),
                    now.cpu_ns.saturating_sub(then.cpu_ns),
                ),
                None => (now.switches, now.cpu_ns),
            };
            let entry = self.by_name.entry(now.name.clone()).or_default();
            entry.0 += switches;
            entry.1 += cpu_ns;
        }
    }

    /// (context switches, CPU ns) of all threads.
    pub fn total(&self) -> (u64, u64) {
        self.by_name
            .values()
            .fold((0, 0), |(s, c), (s1, c1)| (s + s1, c + c1))
    }
}

/// A thread name as a JSON key part: lower case, anything but letters and digits as `_`.
pub fn key_of(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}
