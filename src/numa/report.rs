//! What `NumaInfo()` reports when no topology could be read: the whole machine as one node.
//! (The D-Bus dictionary itself is built in `dbus.rs`.)

use super::{sysfs, NumaNode};

/// The machine as node 0: its online CPUs and its RAM as the kernel counts them.
pub fn whole_machine() -> NumaNode {
    let cpu_list = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|text| sysfs::parse_cpu_list(&text))
        .unwrap_or_default();
    let (memory_total_kb, memory_free_kb, memory_free_known) = match nix::sys::sysinfo::sysinfo() {
        Ok(info) => (info.ram_total() / 1024, info.ram_unused() / 1024, true),
        Err(_) => (0, 0, false),
    };
    NumaNode {
        id: 0,
        cpu_list,
        memory_total_kb,
        memory_free_kb,
        memory_free_known,
    }
}
