//! `--cpus LIST`: the whole stage on some of the machine's CPUs. The bench pins itself before it
//! starts any thread or process; the bus, the daemons, the floor servers and every thread
//! inherit the mask (as under `taskset -c LIST`), so a 2-core run can be made on any machine.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Restricts this process (and so everything it starts later) to the CPUs in `list`.
pub fn pin(list: &str) -> Result<(), String> {
    let cpus = parse_list(list)?;
    let mut set = CpuSet::new();
    for cpu in &cpus {
        set.set(*cpu)
            .map_err(|_| format!("--cpus {list}: CPU {cpu} is beyond what this system counts"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| {
        format!(
            "--cpus {list}: cannot run on those CPUs ({e}); online: {}",
            online()
        )
    })
}

/// The CPUs this process may run on, as a list (`0-1`).
pub fn affinity() -> String {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return "unknown".into();
    };
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect();
    format_list(&cpus)
}

/// The CPUs online, as the kernel lists them (`0-15`).
pub fn online() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// How many CPUs are online.
pub fn online_count() -> usize {
    parse_list(&online()).map_or(0, |cpus| cpus.len())
}

/// Parses a CPU list as taskset and sysfs write it: `0-3,8,10-11`.
fn parse_list(list: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("--cpus {list}: not a CPU list (e.g. 0-1 or 0,2,4-7)");
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let (first, last): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None => {
                let cpu = part.parse().map_err(|_| bad())?;
                (cpu, cpu)
            }
        };
        if first > last || last >= CpuSet::count() {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn format_list(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print_as_taskset_writes_them() {
        assert_eq!(parse_list("0-1").expect("valid"), vec![0, 1]);
        assert_eq!(parse_list("3,0-1,1").expect("valid"), vec![0, 1, 3]);
        assert_eq!(format_list(&[0, 1, 3, 5, 6, 7]), "0-1,3,5-7");
        for bad in ["", "a", "2-1", "0-", "1,,2", "99999"] {
            assert!(parse_list(bad).is_err(), "{bad} was accepted");
        }
    }
}
