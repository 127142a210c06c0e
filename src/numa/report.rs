//! `NumaInfo` as the D-Bus `a{sv}` that `NumaInfo()` returns, including the answer given when
//! no topology could be read (the method always answers: one node, NUMA disabled, the reason).

use super::{sysfs, NumaInfo};
use std::collections::HashMap;
use zbus::zvariant::{OwnedValue, Value};

/// A D-Bus dictionary of named values.
pub type Dict = HashMap<String, OwnedValue>;

fn put<'a>(dict: &mut Dict, key: &str, value: impl Into<Value<'a>>) {
    let value = OwnedValue::try_from(value.into()).expect("plain values hold no file descriptors");
    dict.insert(key.to_owned(), value);
}

fn node_dict(id: u32, cpus: &[u32], total_kb: u64, free_kb: u64, free_known: bool) -> Dict {
    let mut node = Dict::new();
    put(&mut node, "id", id);
    put(&mut node, "cpu_list", cpus.to_vec());
    put(&mut node, "cpus", sysfs::format_cpu_list(cpus));
    put(&mut node, "memory_total_kb", total_kb);
    put(&mut node, "memory_free_kb", free_kb);
    put(&mut node, "memory_free_known", free_known);
    node
}

/// The dictionary for a detected topology.
pub fn to_dict(info: &NumaInfo) -> Dict {
    let mut dict = Dict::new();
    put(&mut dict, "node_count", info.node_count() as u32);
    put(&mut dict, "optimal_node", info.optimal_node());
    put(&mut dict, "optimal_node_reason", info.optimal_node_reason());
    put(&mut dict, "numa_enabled", info.numa_enabled());
    put(&mut dict, "reason", info.reason());
    put(&mut dict, "this_system", info.this_system());
    put(&mut dict, "memory_reason", info.memory_reason());
    put(&mut dict, "placement", info.placement().as_str());
    put(&mut dict, "memory_policy", info.memory_policy().as_str());
    put(&mut dict, "writer_cpus", info.writer_cpus().to_vec());
    if let Some(observed) = info.writer_cpus_observed() {
        put(&mut dict, "writer_cpus_observed", observed.to_vec());
    }
    put(&mut dict, "binding_applied", info.binding_applied());
    put(&mut dict, "binding_reason", info.binding_reason());
    put(
        &mut dict,
        "memory_policy_applied",
        info.memory_policy_applied(),
    );
    put(
        &mut dict,
        "memory_policy_reason",
        info.memory_policy_reason(),
    );
    match info.cache_binding() {
        Some(cache) => {
            // -1: interleaved over all nodes, or placement disabled.
            put(&mut dict, "cache_node", cache.node.map_or(-1, i64::from));
            put(&mut dict, "cache_placement_applied", cache.applied);
            put(&mut dict, "cache_placement_reason", cache.reason.as_str());
        }
        None => {
            put(&mut dict, "cache_placement_applied", false);
            put(
                &mut dict,
                "cache_placement_reason",
                "not applied: the cache thread has not started yet",
            );
        }
    }
    let nodes: Vec<Dict> = info
        .nodes()
        .values()
        .map(|n| {
            node_dict(
                n.id,
                &n.cpu_list,
                n.memory_total_kb,
                n.memory_free_kb,
                n.memory_free_known,
            )
        })
        .collect();
    put(&mut dict, "nodes", nodes);
    dict
}

/// The dictionary when no topology could be read: the whole machine as node 0, NUMA disabled
/// with `reason`, nothing bound.
pub fn unavailable_dict(reason: &str) -> Dict {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|text| sysfs::parse_cpu_list(&text))
        .unwrap_or_default();
    let (total_kb, free_kb, known) = match nix::sys::sysinfo::sysinfo() {
        Ok(info) => (info.ram_total() / 1024, info.ram_unused() / 1024, true),
        Err(_) => (0, 0, false),
    };
    let mut dict = Dict::new();
    put(&mut dict, "node_count", 1u32);
    put(&mut dict, "optimal_node", 0u32);
    put(&mut dict, "optimal_node_reason", "the only node");
    put(&mut dict, "numa_enabled", false);
    put(&mut dict, "reason", reason);
    put(&mut dict, "binding_applied", false);
    put(
        &mut dict,
        "binding_reason",
        format!("not applied: {reason}"),
    );
    put(&mut dict, "writer_cpus", Vec::<u32>::new());
    put(
        &mut dict,
        "nodes",
        vec![node_dict(0, &cpus, total_kb, free_kb, known)],
    );
    dict
}
