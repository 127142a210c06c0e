//! NumaInfo from the real daemon on a real bus: under hwloc synthetic topologies (with a fake
//! sysfs for free memory), on this machine (the writer thread's affinity read back from
//! procfs), with NUMA switched off, and with an invalid setting that must stop start-up.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A fake `/sys/devices/system/node` with `(node, total_kb, free_kb)`.
fn fake_sysfs(root: &Path, nodes: &[(u32, u64, u64)]) {
    for &(id, total, free) in nodes {
        let dir = root.join(format!("node{id}"));
        std::fs::create_dir_all(&dir).expect("mkdir node");
        let text = format!("Node {id} MemTotal: {total} kB\nNode {id} MemFree: {free} kB\n");
        std::fs::write(dir.join("meminfo"), text).expect("write meminfo");
    }
}

fn numa_info(bus: &Bus) -> serde_json::Map<String, Value> {
    bus.call_dict("NumaInfo")
}

fn cpus(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("a CPU list: {value}"))
        .iter()
        .map(|v| v.as_u64().expect("cpu"))
        .collect()
}

/// Waits until the writer thread has bound itself (it does so first thing, but the daemon
/// owns its name independently of that).
fn bound_info(bus: &Bus) -> serde_json::Map<String, Value> {
    let mut info = numa_info(bus);
    wait_until(Duration::from_secs(10), "the writer binding", || {
        info = numa_info(bus);
        let pending = |key: &str, text: &str| info[key].as_str().unwrap_or_default().contains(text);
        !pending("binding_reason", "has not bound itself yet")
            && !pending("cache_placement_reason", "has not started yet")
    });
    info
}

#[test]
fn two_node_synthetic_topology_picks_the_node_with_most_free_memory() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sysfs = dir.path().join("sysfs");
    fake_sysfs(
        &sysfs,
        &[(0, 8_000_000, 1_000_000), (1, 8_000_000, 6_000_000)],
    );
    let _daemon = Daemon::start_with_env(
        &bus,
        &dir.path().join("chain"),
        &dir.path().join("cache"),
        &[
            ("HWLOC_SYNTHETIC", "node:2 core:2 pu:1"),
            (
                "OPDBUS_NUMA_SYSFS_ROOT",
                sysfs.to_str().expect("utf-8 path"),
            ),
            ("OPDBUS_CACHE_PLACEMENT", "round_robin"),
        ],
    );
    let info = bound_info(&bus);
    assert_eq!(info["node_count"], 2, "{info:?}");
    assert_eq!(info["numa_enabled"], true, "{info:?}");
    assert_eq!(
        info["optimal_node"], 1,
        "node 1 has most free memory: {info:?}"
    );
    assert!(
        info["optimal_node_reason"]
            .as_str()
            .expect("a string")
            .contains("free memory"),
        "{info:?}"
    );
    assert_eq!(info["placement"], "round_robin");
    assert_eq!(info["memory_policy"], "preferred", "the default");
    let nodes = info["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    assert_eq!(cpus(&nodes[0]["cpu_list"]), vec![0, 1]);
    assert_eq!(cpus(&nodes[1]["cpu_list"]), vec![2, 3]);
    assert_eq!(nodes[1]["memory_free_kb"], 6_000_000);
    assert_eq!(nodes[0]["memory_total_kb"], 8_000_000);
    assert_eq!(cpus(&info["writer_cpus"]), vec![2, 3]);
    // A synthetic topology is not this machine: nothing may be bound, and it must say so.
    assert_eq!(info["this_system"], false);
    assert_eq!(info["binding_applied"], false, "{info:?}");
    assert!(
        info["binding_reason"]
            .as_str()
            .expect("a string")
            .contains("synthetic"),
        "{info:?}"
    );

    // Round-robin over two nodes interleaves the cache thread's pages; not on a fake topology.
    assert_eq!(info["cache_node"], -1, "{info:?}");
    assert_eq!(info["cache_placement_applied"], false, "{info:?}");

    // The footprint path is unaffected.
    let (ok, _, err) = bus.call("AddFootprint", "sss", &["network", "create", "{}"]);
    assert!(ok, "{err}");

    // The CLI shows the same view.
    let (code, out, err) = cli(&["numa", "--bus", &bus.address]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NUMA enabled"), "{out}");
    assert!(out.contains("optimal node 1"), "{out}");
    let (code, out, err) = cli(&["numa", "--bus", &bus.address, "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).expect("numa --json");
    assert_eq!(json["optimal_node"], 1);
    assert_eq!(json["nodes"][1]["cpus"], "2-3");
}

#[test]
fn four_node_topology_reports_every_node() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sysfs = dir.path().join("sysfs");
    fake_sysfs(
        &sysfs,
        &[
            (0, 4_000, 100),
            (1, 4_000, 200),
            (2, 4_000, 3_900),
            (3, 4_000, 50),
        ],
    );
    let _daemon = Daemon::start_with_env(
        &bus,
        &dir.path().join("chain"),
        &dir.path().join("cache"),
        &[
            ("HWLOC_SYNTHETIC", "node:4 core:1 pu:1"),
            (
                "OPDBUS_NUMA_SYSFS_ROOT",
                sysfs.to_str().expect("utf-8 path"),
            ),
            ("OPDBUS_CACHE_MEMORY_POLICY", "interleaved"),
        ],
    );
    let info = bound_info(&bus);
    assert_eq!(info["node_count"], 4);
    assert_eq!(info["optimal_node"], 2, "{info:?}");
    assert_eq!(info["memory_policy"], "interleaved");
    assert_eq!(cpus(&info["writer_cpus"]), vec![2]);
    assert_eq!(info["memory_policy_applied"], false, "synthetic: {info:?}");
    assert_eq!(
        info["cache_node"], 2,
        "local_node: the optimal node: {info:?}"
    );
}

#[test]
fn on_this_machine_the_writer_thread_runs_where_numa_info_says() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let info = bound_info(&bus);
    assert!(info["node_count"].as_u64().expect("node_count") >= 1);
    assert_eq!(info["this_system"], true, "{info:?}");

    // Find the writer thread by name and read its affinity back from procfs.
    let tasks = format!("/proc/{}/task", daemon.pid());
    let writer = std::fs::read_dir(&tasks)
        .expect("the daemon's tasks")
        .filter_map(|entry| entry.ok())
        .find(|entry| {
            std::fs::read_to_string(entry.path().join("comm"))
                .map(|comm| comm.trim() == "chain-writer")
                .unwrap_or(false)
        })
        .expect("a thread named chain-writer");
    let status = std::fs::read_to_string(writer.path().join("status")).expect("thread status");
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned();
    let observed = opdbus_blockchain::numa::parse_cpu_list(&allowed).expect("cpu list");
    let reported: Vec<u32> = cpus(&info["writer_cpus_observed"])
        .into_iter()
        .map(|c| c as u32)
        .collect();
    assert_eq!(observed, reported, "NumaInfo must report the real affinity");
    if info["binding_applied"] == true {
        let wanted: Vec<u32> = cpus(&info["writer_cpus"])
            .into_iter()
            .map(|c| c as u32)
            .collect();
        assert_eq!(observed, wanted, "binding said applied: {info:?}");
    } else {
        eprintln!("binding not applied here: {}", info["binding_reason"]);
    }
    // The cache thread's memory goes to the optimal node (local_node, the default); the
    // policy was read back on that thread.
    assert_eq!(info["cache_node"], info["optimal_node"], "{info:?}");
    assert_eq!(info["cache_placement_applied"], true, "{info:?}");
}

#[test]
fn numa_switched_off_still_answers_with_one_node_and_the_reason() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let _daemon = Daemon::start_with_env(
        &bus,
        &dir.path().join("chain"),
        &dir.path().join("cache"),
        &[("OPDBUS_NUMA", "off")],
    );
    let info = numa_info(&bus);
    assert_eq!(info["node_count"], 1);
    assert_eq!(info["optimal_node"], 0);
    assert_eq!(info["numa_enabled"], false);
    assert!(
        info["reason"]
            .as_str()
            .expect("reason")
            .contains("OPDBUS_NUMA=off"),
        "{info:?}"
    );
    let nodes = info["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert!(!cpus(&nodes[0]["cpu_list"]).is_empty(), "{info:?}");
}

#[test]
fn an_unknown_placement_stops_start_up_naming_the_accepted_values() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(DAEMON)
        .args(["--bus", &bus.address, "--chain-dir"])
        .arg(dir.path().join("chain"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("OPDBUS_CACHE_PLACEMENT", "everywhere")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run the daemon");
    assert!(!out.status.success(), "the daemon must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OPDBUS_CACHE_PLACEMENT"), "{stderr}");
    for word in ["local_node", "round_robin", "most_memory", "disabled"] {
        assert!(stderr.contains(word), "{word} missing: {stderr}");
    }
    assert!(
        !dir.path().join("chain").exists(),
        "nothing is created before the configuration is valid"
    );
}

/// A replica's thread goes to the node of the NIC its source is routed through (a fake
/// `/sys/class/net` and routing table), on 2- and 4-node synthetic topologies; a source routed
/// through a device without a node gets the chain's node.
#[test]
fn replica_threads_are_placed_on_their_nics_node() {
    for (desc, nic_node) in [("node:2 core:2 pu:1", 1u64), ("node:4 core:1 pu:1", 2)] {
        let bus = Bus::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let sysfs = dir.path().join("sysfs");
        let count: u32 = desc[5..6].parse().expect("count");
        // Node 0 has the most free memory: the chain's node.
        let nodes: Vec<_> = (0..count)
            .map(|id| (id, 8_000_000, 6_000_000 - u64::from(id) * 1_000_000))
            .collect();
        fake_sysfs(&sysfs, &nodes);
        let net = dir.path().join("net");
        for (iface, node) in [("eth9", nic_node.to_string()), ("eth3", "-1".to_string())] {
            std::fs::create_dir_all(net.join(iface).join("device")).expect("mkdir");
            std::fs::write(
                net.join(iface).join("device/numa_node"),
                format!("{node}\n"),
            )
            .expect("numa_node");
        }
        // 10.77.0.0/16 via eth9, 10.78.0.0/16 via eth3.
        let route = dir.path().join("route");
        std::fs::write(
            &route,
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
             eth9\t00004D0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
             eth3\t00004E0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n",
        )
        .expect("route");
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let sources = format!("http://10.77.1.2:9/ {vkey}, http://10.78.1.2:9/ {vkey}");
        let mut daemon = Daemon::start_with_env(
            &bus,
            &dir.path().join("chain"),
            &dir.path().join("cache"),
            &[
                ("HWLOC_SYNTHETIC", desc),
                ("OPDBUS_NUMA_SYSFS_ROOT", sysfs.to_str().expect("utf-8")),
                ("OPDBUS_NUMA_SYSFS_NET_ROOT", net.to_str().expect("utf-8")),
                ("OPDBUS_NUMA_ROUTE_TABLE", route.to_str().expect("utf-8")),
                ("OPDBUS_REPLICA_OF", &sources),
                (
                    "OPDBUS_REPLICAS_DIR",
                    dir.path().join("replicas").to_str().expect("utf-8"),
                ),
                (
                    "OPDBUS_WITNESS_KEY",
                    dir.path().join("keys/witness.key").to_str().expect("utf-8"),
                ),
                (
                    "OPDBUS_SIGNING_KEY",
                    dir.path().join("keys/signing.key").to_str().expect("utf-8"),
                ),
            ],
        );
        let mut info = numa_info(&bus);
        wait_until(
            Duration::from_secs(10),
            "both replica threads placed",
            || {
                info = numa_info(&bus);
                info.get("replicas")
                    .and_then(Value::as_array)
                    .is_some_and(|r| r.len() == 2)
            },
        );
        assert_eq!(info["optimal_node"], 0, "{info:?}");
        let replicas = info["replicas"].as_array().expect("replicas");
        let of = |source: &str| {
            replicas
                .iter()
                .find(|r| r["source"] == source)
                .unwrap_or_else(|| panic!("{source} in {replicas:?}"))
        };
        let on_nic = of("http://10.77.1.2:9/");
        assert_eq!(on_nic["node"], nic_node, "{on_nic}");
        assert_eq!(on_nic["interface"], "eth9", "{on_nic}");
        assert_eq!(on_nic["applied"], false, "synthetic: never bound");
        let no_node = of("http://10.78.1.2:9/");
        assert_eq!(no_node["node"], 0, "the chain's node: {no_node}");
        assert!(
            no_node["reason"]
                .as_str()
                .unwrap_or("")
                .contains("no NUMA node"),
            "{no_node}"
        );
        daemon.stop();
    }
}
