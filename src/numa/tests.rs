//! Synthetic topologies with fake sysfs trees for the choices; the real machine for binding.

use super::sysfs::{self, parse_node_meminfo};
use super::*;
use std::path::Path;
use tempfile::TempDir;

/// A fake `/sys/devices/system/node` with `(node, total_kb, free_kb)` meminfo files.
fn fake_node_root(nodes: &[(u32, u64, u64)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for &(id, total, free) in nodes {
        write_meminfo(dir.path(), id, total, free);
    }
    dir
}

fn write_meminfo(root: &Path, id: u32, total: u64, free: u64) {
    let node_dir = root.join(format!("node{id}"));
    std::fs::create_dir_all(&node_dir).expect("mkdir node");
    let text = format!(
        "Node {id} MemTotal:       {total} kB\nNode {id} MemFree:        {free} kB\n\
         Node {id} MemUsed:        {} kB\nNode {id} Active:          12 kB\n",
        total - free
    );
    std::fs::write(node_dir.join("meminfo"), text).expect("write meminfo");
}

fn opts(node_root: &Path, placement: CachePlacement, policy: MemoryPolicy) -> NumaOptions {
    NumaOptions {
        placement,
        memory_policy: policy,
        sysfs_node_root: node_root.to_path_buf(),
        sysfs_block_root: NumaOptions::default().sysfs_block_root,
        chain_dir: node_root.to_path_buf(),
        ..NumaOptions::default()
    }
}

fn synthetic(desc: &str, sysfs: &TempDir, placement: CachePlacement) -> NumaTopology {
    NumaTopology::from_synthetic(
        desc,
        &opts(sysfs.path(), placement, MemoryPolicy::Preferred),
    )
    .expect("synthetic topology")
}

#[test]
fn topology_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<NumaTopology>();
    assert_send_sync::<NumaInfo>();
}

#[test]
fn two_nodes_optimal_is_the_node_with_most_free_memory() {
    let root = fake_node_root(&[(0, 8_000_000, 1_000_000), (1, 8_000_000, 5_000_000)]);
    let topo = synthetic("node:2 core:2 pu:1", &root, CachePlacement::LocalNode);
    let info = topo.info();
    assert_eq!(info.node_count(), 2);
    assert!(info.numa_enabled(), "{}", info.reason());
    assert!(!info.this_system());
    assert_eq!(info.optimal_node(), 1, "{}", info.optimal_node_reason());
    assert!(info.optimal_node_reason().contains("most free memory"));
    let ids: Vec<u32> = info.nodes().keys().copied().collect();
    assert_eq!(ids, [0, 1]);
    assert_eq!(info.nodes()[&0].cpu_list, [0, 1]);
    assert_eq!(info.nodes()[&1].cpu_list, [2, 3]);
    assert_eq!(info.writer_cpus(), [2, 3]);
    for (id, node) in info.nodes() {
        assert_eq!(*id, node.id);
        assert_eq!(node.memory_total_kb, 8_000_000);
        assert!(node.memory_free_known);
    }
    assert_eq!(info.nodes()[&1].memory_free_kb, 5_000_000);
}

#[test]
fn four_nodes_optimal_is_the_node_with_most_free_memory() {
    let root = fake_node_root(&[
        (0, 4_000_000, 100_000),
        (1, 4_000_000, 300_000),
        (2, 4_000_000, 900_000),
        (3, 4_000_000, 200_000),
    ]);
    let topo = synthetic("node:4 core:1 pu:1", &root, CachePlacement::LocalNode);
    let info = topo.info();
    assert_eq!(info.node_count(), 4);
    assert_eq!(info.optimal_node(), 2, "{}", info.optimal_node_reason());
    assert_eq!(info.writer_cpus(), [2]);
    assert_eq!(topo.cache_node_for(0), Some(2));
    assert_eq!(topo.cache_node_for(7), Some(2));
}

#[test]
fn single_node_reports_numa_disabled_and_still_answers() {
    let root = fake_node_root(&[(0, 2_000_000, 1_500_000)]);
    let topo = synthetic("node:1 core:2 pu:1", &root, CachePlacement::RoundRobin);
    let info = topo.info();
    assert_eq!(info.node_count(), 1);
    assert!(!info.numa_enabled());
    assert!(
        info.reason().contains("single NUMA node"),
        "{}",
        info.reason()
    );
    assert_eq!(info.optimal_node(), 0);
    assert_eq!(info.nodes()[&0].cpu_list, [0, 1]);
    assert_eq!(topo.cache_node_for(0), Some(0));
    assert_eq!(topo.cache_node_for(5), Some(0));
}

#[test]
fn missing_meminfo_reports_free_memory_unknown_and_falls_back_to_node_0() {
    let empty = tempfile::tempdir().expect("tempdir");
    let topo = synthetic("node:2 core:1 pu:1", &empty, CachePlacement::MostMemory);
    let info = topo.info();
    assert_eq!(info.optimal_node(), 0);
    assert!(
        info.optimal_node_reason().contains("fallback to node 0"),
        "{}",
        info.optimal_node_reason()
    );
    assert!(
        info.memory_reason().contains("unknown"),
        "{}",
        info.memory_reason()
    );
    for node in info.nodes().values() {
        assert!(!node.memory_free_known);
        assert_eq!(node.memory_free_kb, 0);
    }
    // most_memory with nothing known stays on the optimal node rather than guessing.
    assert_eq!(topo.cache_node_for(3), Some(0));
}

#[test]
fn round_robin_cycles_through_every_node() {
    let root = fake_node_root(&[(0, 1000, 10), (1, 1000, 40), (2, 1000, 30), (3, 1000, 20)]);
    let topo = synthetic("node:4 core:1 pu:1", &root, CachePlacement::RoundRobin);
    let placed: Vec<Option<u32>> = (0..9).map(|s| topo.cache_node_for(s)).collect();
    let expected: Vec<Option<u32>> = [0, 1, 2, 3, 0, 1, 2, 3, 0].into_iter().map(Some).collect();
    assert_eq!(placed, expected);
}

#[test]
fn placement_disabled_places_nothing() {
    let root = fake_node_root(&[(0, 1000, 10), (1, 1000, 40)]);
    let topo = synthetic("node:2 core:1 pu:1", &root, CachePlacement::Disabled);
    assert!((0..4).all(|s| topo.cache_node_for(s).is_none()));
    assert_eq!(topo.info().placement(), CachePlacement::Disabled);
}

#[test]
fn most_memory_follows_free_memory_as_it_changes() {
    let root = fake_node_root(&[(0, 1000, 900), (1, 1000, 100)]);
    let topo = synthetic("node:2 core:1 pu:1", &root, CachePlacement::MostMemory);
    assert_eq!(topo.cache_node_for(0), Some(0));
    write_meminfo(root.path(), 1, 1000, 950);
    assert_eq!(topo.cache_node_for(0), Some(1));
    assert_eq!(topo.info().nodes()[&1].memory_free_kb, 950);
    // The writer's node was chosen at start and does not move.
    assert_eq!(topo.info().optimal_node(), 0);
}

#[test]
fn synthetic_binding_is_reported_not_applied_and_leaves_the_thread_alone() {
    let root = fake_node_root(&[(0, 1000, 10), (1, 1000, 40)]);
    let topo = std::sync::Arc::new(synthetic(
        "node:2 core:1 pu:1",
        &root,
        CachePlacement::LocalNode,
    ));
    let writer = std::sync::Arc::clone(&topo);
    let (before, outcome, after) = std::thread::spawn(move || {
        let tid = nix::unistd::gettid().as_raw();
        let before = thread_cpus_allowed(tid).expect("read affinity");
        let outcome = writer.bind_writer_thread();
        let after = thread_cpus_allowed(tid).expect("read affinity");
        (before, outcome, after)
    })
    .join()
    .expect("binding must not panic");
    assert!(!outcome.applied());
    assert!(!outcome.memory_applied);
    assert_eq!(
        outcome.cpu_reason,
        "not applied: topology is synthetic/XML, not this system"
    );
    assert_eq!(
        before, after,
        "a synthetic topology must not touch the real affinity"
    );
    let info = topo.info();
    assert!(!info.binding_applied());
    assert!(!info.memory_policy_applied());
    assert!(
        info.binding_reason().contains("synthetic/XML"),
        "{}",
        info.binding_reason()
    );
    assert_eq!(info.writer_cpus(), [1]);
}

#[test]
fn info_before_binding_says_not_applied_yet() {
    let root = fake_node_root(&[(0, 1000, 10)]);
    let info = synthetic("node:1 core:1 pu:1", &root, CachePlacement::LocalNode).info();
    assert!(!info.binding_applied());
    assert!(info.binding_reason().contains("not bound itself yet"));
    assert!(info.writer_cpus_observed().is_none());
}

#[test]
fn xml_topology_is_not_this_system() {
    let root = fake_node_root(&[(0, 1000, 10), (1, 1000, 40)]);
    let synthetic = synthetic("node:2 core:1 pu:1", &root, CachePlacement::LocalNode);
    let xml = synthetic
        .topology
        .export_xml(hwlocality::topology::export::xml::XMLExportFlags::empty())
        .expect("export xml");
    let file = root.path().join("topo.xml");
    std::fs::write(&file, xml.as_str()).expect("write xml");
    let topo = NumaTopology::from_xml_file(
        &file,
        &opts(root.path(), CachePlacement::LocalNode, MemoryPolicy::Bind),
    )
    .expect("xml topology");
    let info = topo.info();
    assert!(!info.this_system());
    assert_eq!(info.node_count(), 2);
    assert_eq!(info.optimal_node(), 1);
    assert!(!topo.bind_writer_thread().applied());
}

/// Runs `bind_writer_thread` on a fresh thread first narrowed to one CPU, so the binding has
/// to change something the kernel then reports.
fn bind_on_real_machine(policy: MemoryPolicy) -> Option<(NumaInfo, BindingOutcome, Vec<u32>)> {
    let opts = NumaOptions {
        memory_policy: policy,
        chain_dir: std::env::temp_dir(),
        ..NumaOptions::default()
    };
    let topo = std::sync::Arc::new(NumaTopology::detect(&opts).expect("detect real topology"));
    if !topo.info().this_system() {
        eprintln!("SKIPPED: HWLOC_SYNTHETIC/HWLOC_XMLFILE is set, this is not the real machine");
        return None;
    }
    let writer = std::sync::Arc::clone(&topo);
    let (outcome, read_back) = std::thread::spawn(move || {
        let tid = nix::unistd::gettid().as_raw();
        let start = thread_cpus_allowed(tid).expect("read affinity");
        let mut one = nix::sched::CpuSet::new();
        one.set(start[0] as usize).expect("cpu index");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).expect("narrow");
        assert_eq!(thread_cpus_allowed(tid).expect("read affinity"), [start[0]]);
        let outcome = writer.bind_writer_thread();
        (outcome, thread_cpus_allowed(tid).expect("read affinity"))
    })
    .join()
    .expect("binding must not panic");
    Some((topo.info(), outcome, read_back))
}

#[test]
fn real_writer_affinity_read_back_matches_numa_info() {
    let Some((info, outcome, read_back)) = bind_on_real_machine(MemoryPolicy::Preferred) else {
        return;
    };
    assert!(info.binding_applied(), "{}", info.binding_reason());
    assert_eq!(read_back, info.writer_cpus());
    assert_eq!(info.writer_cpus_observed(), Some(read_back.as_slice()));
    assert_eq!(outcome.cpus_requested, info.writer_cpus());
    assert_eq!(
        info.writer_cpus(),
        info.nodes()[&info.optimal_node()].cpu_list
    );
    assert!(
        info.memory_policy_applied(),
        "{}",
        info.memory_policy_reason()
    );
}

#[test]
fn real_memory_policies_read_back_as_configured() {
    for policy in [
        MemoryPolicy::Bind,
        MemoryPolicy::Interleaved,
        MemoryPolicy::Default,
    ] {
        let Some((info, outcome, _)) = bind_on_real_machine(policy) else {
            return;
        };
        assert_eq!(outcome.memory_policy, policy);
        assert!(
            outcome.memory_applied,
            "{policy}: {}",
            outcome.memory_reason
        );
        assert_eq!(info.memory_policy(), policy);
    }
}

#[test]
fn real_detection_has_at_least_one_node_with_cpus() {
    let topo = NumaTopology::detect(&NumaOptions::default()).expect("detect");
    let info = topo.info();
    assert!(info.node_count() >= 1);
    assert!(info.nodes().contains_key(&info.optimal_node()));
    assert!(!info.writer_cpus().is_empty());
    if info.node_count() == 1 {
        assert!(!info.numa_enabled());
    }
}

#[test]
fn unknown_values_are_errors_naming_the_accepted_ones() {
    let err = "fast".parse::<MemoryPolicy>().expect_err("unknown policy");
    let msg = err.to_string();
    assert!(msg.contains("\"fast\""), "{msg}");
    assert!(
        msg.contains("bind, preferred, interleaved, default"),
        "{msg}"
    );

    let err = "nearest"
        .parse::<CachePlacement>()
        .expect_err("unknown placement");
    assert!(err
        .to_string()
        .contains("local_node, round_robin, most_memory, disabled"));
}

#[test]
fn words_round_trip_and_defaults_match_the_design() {
    for p in [
        MemoryPolicy::Bind,
        MemoryPolicy::Preferred,
        MemoryPolicy::Interleaved,
        MemoryPolicy::Default,
    ] {
        assert_eq!(
            p.to_string().parse::<MemoryPolicy>().expect("round trip"),
            p
        );
    }
    for p in [
        CachePlacement::LocalNode,
        CachePlacement::RoundRobin,
        CachePlacement::MostMemory,
        CachePlacement::Disabled,
    ] {
        assert_eq!(
            p.to_string().parse::<CachePlacement>().expect("round trip"),
            p
        );
    }
    assert_eq!(MemoryPolicy::default(), MemoryPolicy::Preferred);
    assert_eq!(CachePlacement::default(), CachePlacement::LocalNode);
}

#[test]
fn numa_info_serializes_with_the_config_words() {
    let root = fake_node_root(&[(0, 1000, 10), (1, 1000, 40)]);
    let info = synthetic("node:2 core:1 pu:1", &root, CachePlacement::RoundRobin).info();
    let v = serde_json::to_value(&info).expect("serialize");
    assert_eq!(v["placement"], "round_robin");
    assert_eq!(v["memory_policy"], "preferred");
    assert_eq!(v["node_count"], 2);
    assert_eq!(v["nodes"]["1"]["memory_free_kb"], 40);
}

#[test]
fn sysfs_text_parsers() {
    assert_eq!(
        parse_cpu_list("0-3,8,10-11\n"),
        Some(vec![0, 1, 2, 3, 8, 10, 11])
    );
    assert_eq!(parse_cpu_list("5"), Some(vec![5]));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("x"), None);
    assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
    assert_eq!(format_cpu_list(&[]), "");

    let m = parse_node_meminfo(
        "Node 1 MemTotal:  7694112 kB\nNode 1 MemFree:   3340976 kB\nNode 1 MemUsed: 1 kB\n",
        1,
    );
    assert_eq!(m.total_kb, Some(7_694_112));
    assert_eq!(m.free_kb, Some(3_340_976));
    assert_eq!(
        parse_node_meminfo("Node 0 MemFree: 5 kB\n", 1).free_kb,
        None
    );

    let mountinfo = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                     97 22 0:44 /chain /var/lib/opdbus rw shared:5 - btrfs /dev/loop3 rw,ssd\n";
    assert_eq!(
        sysfs::mount_source_for(mountinfo, 0, 44).as_deref(),
        Some("/dev/loop3")
    );
    assert_eq!(sysfs::mount_source_for(mountinfo, 0, 45), None);
}

/// A fake `/sys`: `dev/block/<maj:min>` → a virtio disk under a PCI function with `numa_node`.
fn fake_block_tree(dev_of: &Path, numa_node: &str) -> (TempDir, PathBuf) {
    use std::os::unix::fs::MetadataExt;
    let sys = tempfile::tempdir().expect("tempdir");
    let pci = sys.path().join("devices/pci0000:00/0000:00:02.0");
    let disk = pci.join("virtio1/block/vda");
    std::fs::create_dir_all(&disk).expect("mkdir");
    std::fs::write(pci.join("numa_node"), numa_node).expect("numa_node");
    let block_root = sys.path().join("dev/block");
    std::fs::create_dir_all(&block_root).expect("mkdir");
    let dev = std::fs::metadata(dev_of).expect("stat").dev();
    let name = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    std::os::unix::fs::symlink(&disk, block_root.join(name)).expect("symlink");
    (sys, block_root)
}

use std::path::PathBuf;

#[test]
fn chain_disk_node_is_read_from_its_pci_function() {
    let chain = tempfile::tempdir().expect("tempdir");
    let (_sys, block_root) = fake_block_tree(chain.path(), "1\n");
    let (node, how) = sysfs::block_device_node(&chain.path().join("not/yet/created"), &block_root)
        .expect("locality");
    assert_eq!(node, 1, "{how}");
    assert!(how.contains("numa_node"), "{how}");

    let (_sys, block_root) = fake_block_tree(chain.path(), "-1\n");
    let err = sysfs::block_device_node(chain.path(), &block_root).expect_err("no locality");
    assert!(err.contains("-1"), "{err}");
}

#[test]
fn loop_device_follows_its_backing_file() {
    let chain = tempfile::tempdir().expect("tempdir");
    let (sys, block_root) = fake_block_tree(chain.path(), "3");
    let loop_dir = sys.path().join("devices/virtual/block/loop0");
    std::fs::create_dir_all(loop_dir.join("loop")).expect("mkdir");
    let image = chain.path().join("image.btrfs");
    std::fs::write(&image, b"").expect("image");
    std::fs::write(
        loop_dir.join("loop/backing_file"),
        format!("{}\n", image.display()),
    )
    .expect("backing_file");
    let (node, how) = sysfs::node_of_sys_block_dir(&loop_dir, &block_root, 0).expect("locality");
    assert_eq!(node, 3, "{how}");
    assert!(how.starts_with("loop device loop0 backed by"), "{how}");
}

fn node(id: u32, cpus: &[u32], free: Option<u64>) -> (u32, NumaNode) {
    let n = NumaNode {
        id,
        cpu_list: cpus.to_vec(),
        memory_total_kb: 1000,
        memory_free_kb: free.unwrap_or(0),
        memory_free_known: free.is_some(),
    };
    (id, n)
}

#[test]
fn optimal_prefers_disk_locality_then_memory_then_node_0() {
    let nodes: BTreeMap<u32, NumaNode> = [
        node(0, &[0], Some(10)),
        node(1, &[1], Some(50)),
        node(2, &[2], Some(20)),
    ]
    .into();
    let (id, why) = choose_optimal(&nodes, Ok((2, "vda".into())));
    assert_eq!(id, 2);
    assert!(why.contains("local to the chain directory's disk"), "{why}");
    let (id, why) = choose_optimal(&nodes, Ok((7, "vda".into())));
    assert_eq!(id, 1);
    assert!(why.contains("not in the topology"), "{why}");
    let (id, _) = choose_optimal(&nodes, Err("virtual".into()));
    assert_eq!(id, 1);

    // A memory-only node (no CPUs) cannot host the writer even with the most free memory.
    let nodes: BTreeMap<u32, NumaNode> =
        [node(0, &[0, 1], Some(10)), node(1, &[], Some(1_000_000))].into();
    assert_eq!(choose_optimal(&nodes, Err("x".into())).0, 0);

    let nodes: BTreeMap<u32, NumaNode> = [node(2, &[0], None), node(3, &[1], None)].into();
    let (id, why) = choose_optimal(&nodes, Err("x".into()));
    assert_eq!(id, 2, "no node 0: the lowest node");
    assert!(why.contains("fallback"), "{why}");
}

#[test]
fn synthetic_topology_ignores_this_machines_meminfo() {
    let topo = NumaTopology::from_synthetic("node:2 core:1 pu:1", &NumaOptions::default())
        .expect("synthetic topology");
    let info = topo.info();
    assert!(
        info.memory_reason().contains("not read"),
        "{}",
        info.memory_reason()
    );
    assert!(info.nodes().values().all(|n| !n.memory_free_known));
    assert!(
        info.nodes().values().all(|n| n.memory_total_kb > 0),
        "total from hwloc"
    );
    assert_eq!(info.optimal_node(), 0);
}

#[test]
fn real_binding_the_kernel_refuses_is_reported_not_applied() {
    use hwlocality::topology::builder::BuildFlags;
    // A synthetic topology hwloc is told is this system: node 1's CPUs 8-15 do not exist
    // here, so the kernel refuses the pinning and the read-back must say so.
    let root = fake_node_root(&[(0, 1000, 10), (1, 1000, 900)]);
    let topology = hwlocality::Topology::builder()
        .from_synthetic("node:2 core:8 pu:1")
        .expect("synthetic")
        .with_flags(BuildFlags::ASSUME_THIS_SYSTEM)
        .expect("flags")
        .build()
        .expect("build");
    let opts = opts(
        root.path(),
        CachePlacement::LocalNode,
        MemoryPolicy::Preferred,
    );
    let topo = std::sync::Arc::new(NumaTopology::from_topology(topology, &opts));
    assert!(topo.info().this_system());
    assert_eq!(topo.info().writer_cpus(), (8..16).collect::<Vec<u32>>());
    let writer = std::sync::Arc::clone(&topo);
    let outcome = std::thread::spawn(move || writer.bind_writer_thread())
        .join()
        .expect("a refused binding must not panic");
    assert!(!outcome.applied());
    assert!(
        outcome
            .cpu_reason
            .starts_with("not applied: kernel reports CPUs"),
        "{}",
        outcome.cpu_reason
    );
    let info = topo.info();
    assert!(!info.binding_applied());
    assert_ne!(info.writer_cpus_observed(), Some(info.writer_cpus()));
}

#[test]
fn a_replica_thread_goes_to_its_nics_node_else_the_chains() {
    for (desc, nic_node) in [("node:2 core:2 pu:1", 0u32), ("node:4 core:1 pu:1", 2)] {
        // The chain's (optimal) node is the one with most free memory: the last.
        let count: u32 = desc[5..6].parse().expect("count");
        let nodes: Vec<_> = (0..count)
            .map(|id| (id, 8_000_000, 1_000_000 + u64::from(id) * 1_000_000))
            .collect();
        let root = fake_node_root(&nodes);
        let topo = synthetic(desc, &root, CachePlacement::LocalNode);
        let chain_node = count - 1;
        assert_eq!(topo.optimal_node(), chain_node);
        let on_nic = topo.place_replica_thread("https://a/", Some("eth1".into()), Some(nic_node));
        assert_eq!(on_nic.node, nic_node, "{}", on_nic.reason);
        assert!(on_nic.reason.contains("eth1"), "{}", on_nic.reason);
        assert!(!on_nic.applied, "a synthetic topology is never bound");
        let unknown = topo.place_replica_thread("https://b/", Some("eth2".into()), Some(7));
        assert_eq!(unknown.node, chain_node, "{}", unknown.reason);
        let no_node = topo.place_replica_thread("https://c/", Some("lo".into()), None);
        assert_eq!(no_node.node, chain_node, "{}", no_node.reason);
        let no_route = topo.place_replica_thread("https://d/", None, None);
        assert_eq!(no_route.node, chain_node, "{}", no_route.reason);
        let shown = topo.info();
        assert_eq!(shown.replica_placements().len(), 4);
        assert_eq!(shown.replica_placements()[0].source, "https://a/");
    }
}
