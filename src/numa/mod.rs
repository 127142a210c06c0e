//! NUMA placement: which node the chain writer runs on, what memory policy it follows, and on
//! which node each cache shard lives.
//!
//! [`NumaTopology`] is read once at start-up with hwloc (the real machine, or whatever
//! `HWLOC_SYNTHETIC` / `HWLOC_XMLFILE` describe). It promises:
//! - it always answers: a single node, or no NUMA at all, gives `numa_enabled = false` with the
//!   reason and a one-node view; only a topology hwloc cannot read at all is an error;
//! - the optimal node is chosen once (disk locality, else most free memory, else node 0) and
//!   the reason is kept and logged;
//! - [`NumaTopology::bind_writer_thread`] is called *from* the writer thread, never panics, and
//!   records whether the binding really took effect — judged from hwloc's is-this-system flag
//!   and the affinity the kernel reports back, never from a return code alone.
//!
//! It is `Send + Sync`: share it in an `Arc` between the writer and whoever reports
//! [`NumaInfo`].

mod binding;
pub mod nic;
mod options;
pub mod report;
mod sysfs;
#[cfg(test)]
mod tests;

pub use binding::{BindingOutcome, CacheBinding, ReplicaPlacement};
pub use options::{
    CachePlacement, MemoryPolicy, NumaOptions, DEFAULT_SYSFS_BLOCK_ROOT, DEFAULT_SYSFS_NODE_ROOT,
};
pub use sysfs::{format_cpu_list, parse_cpu_list, thread_cpus_allowed};

use hwlocality::cpu::cpuset::CpuSet;
use hwlocality::memory::nodeset::NodeSet;
use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::ObjectType;
use hwlocality::Topology;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    #[error("unknown {key} {value:?}; accepted values: {accepted}")]
    UnknownValue {
        key: &'static str,
        value: String,
        accepted: String,
    },
    #[error("hwloc could not read the topology: {0}")]
    Detection(String),
    #[error("invalid synthetic topology {desc:?}: {reason}")]
    Synthetic { desc: String, reason: String },
}

/// One NUMA node as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    /// The OS index (`nodeN` in sysfs).
    pub id: u32,
    /// OS indices of the node's CPUs; empty for a memory-only node.
    pub cpu_list: Vec<u32>,
    pub memory_total_kb: u64,
    /// 0 when unknown; see `memory_free_known`.
    pub memory_free_kb: u64,
    /// False when `nodeN/meminfo` could not be read (free memory is then reported as 0).
    pub memory_free_known: bool,
}

/// A snapshot of the topology, the choices made from it and the writer binding's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct NumaInfo {
    node_count: usize,
    nodes: BTreeMap<u32, NumaNode>,
    optimal_node: u32,
    optimal_node_reason: String,
    numa_enabled: bool,
    reason: String,
    this_system: bool,
    memory_reason: String,
    placement: CachePlacement,
    memory_policy: MemoryPolicy,
    writer_cpus: Vec<u32>,
    writer_cpus_observed: Option<Vec<u32>>,
    binding_applied: bool,
    binding_reason: String,
    memory_policy_applied: bool,
    memory_policy_reason: String,
    cache_binding: Option<CacheBinding>,
    replica_placements: Vec<ReplicaPlacement>,
}

impl NumaInfo {
    /// At least 1.
    pub fn node_count(&self) -> usize {
        self.node_count
    }
    pub fn nodes(&self) -> &BTreeMap<u32, NumaNode> {
        &self.nodes
    }
    pub fn optimal_node(&self) -> u32 {
        self.optimal_node
    }
    /// Why this node: disk locality, most free memory, or the node-0 fallback.
    pub fn optimal_node_reason(&self) -> &str {
        &self.optimal_node_reason
    }
    /// True only with more than one node on a topology that was read.
    pub fn numa_enabled(&self) -> bool {
        self.numa_enabled
    }
    /// Why NUMA is enabled or not.
    pub fn reason(&self) -> &str {
        &self.reason
    }
    /// False for a synthetic or XML topology: nothing is bound then.
    pub fn this_system(&self) -> bool {
        self.this_system
    }
    /// Where the memory figures come from (and which nodes had no meminfo).
    pub fn memory_reason(&self) -> &str {
        &self.memory_reason
    }
    pub fn placement(&self) -> CachePlacement {
        self.placement
    }
    pub fn memory_policy(&self) -> MemoryPolicy {
        self.memory_policy
    }
    /// The CPUs the writer is (to be) pinned to: the optimal node's.
    pub fn writer_cpus(&self) -> &[u32] {
        &self.writer_cpus
    }
    /// The writer thread's CPUs as the kernel reported them after binding; `None` before
    /// [`NumaTopology::bind_writer_thread`] ran or when they could not be read.
    pub fn writer_cpus_observed(&self) -> Option<&[u32]> {
        self.writer_cpus_observed.as_deref()
    }
    /// True only when the kernel confirms the writer thread runs on exactly `writer_cpus`.
    pub fn binding_applied(&self) -> bool {
        self.binding_applied
    }
    pub fn binding_reason(&self) -> &str {
        &self.binding_reason
    }
    /// True only when the writer thread's memory policy read back as configured.
    pub fn memory_policy_applied(&self) -> bool {
        self.memory_policy_applied
    }
    pub fn memory_policy_reason(&self) -> &str {
        &self.memory_policy_reason
    }
    /// Where the cache thread's memory was placed; `None` before the cache thread started.
    pub fn cache_binding(&self) -> Option<&CacheBinding> {
        self.cache_binding.as_ref()
    }

    /// Where each replica thread (`--replica-of`) placed itself.
    pub fn replica_placements(&self) -> &[ReplicaPlacement] {
        &self.replica_placements
    }
}

/// The machine's NUMA layout as hwloc reads it, plus the choices made from it.
pub struct NumaTopology {
    topology: Topology,
    opts: NumaOptions,
    /// Detection-time memory figures; `info()` refreshes the free memory.
    nodes: BTreeMap<u32, NumaNode>,
    optimal: u32,
    optimal_reason: String,
    numa_enabled: bool,
    reason: String,
    memory_reason: String,
    writer_cpuset: CpuSet,
    optimal_nodeset: NodeSet,
    all_nodeset: NodeSet,
    binding: Mutex<Option<BindingOutcome>>,
    cache_binding: Mutex<Option<CacheBinding>>,
    /// Each node's CPUs (a replica thread goes to its NIC's node).
    cpusets: BTreeMap<u32, CpuSet>,
    /// Where each replica thread was placed, in the order they placed themselves.
    replica_placements: Mutex<Vec<ReplicaPlacement>>,
}

impl std::fmt::Debug for NumaTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NumaTopology")
            .field("nodes", &self.nodes)
            .field("optimal", &self.optimal)
            .field("numa_enabled", &self.numa_enabled)
            .finish_non_exhaustive()
    }
}

impl NumaTopology {
    /// Reads this machine's topology, or the one `HWLOC_SYNTHETIC` / `HWLOC_XMLFILE` describe
    /// (hwloc honours those variables itself; such a topology is "not this system" and is
    /// never bound).
    pub fn detect(opts: &NumaOptions) -> Result<Self, NumaError> {
        let topology = Topology::new().map_err(|e| NumaError::Detection(e.to_string()))?;
        Ok(Self::from_topology(topology, opts))
    }

    /// A topology from an hwloc synthetic description such as `"node:2 core:2 pu:1"`.
    pub fn from_synthetic(desc: &str, opts: &NumaOptions) -> Result<Self, NumaError> {
        let synthetic_err = |reason: String| NumaError::Synthetic {
            desc: desc.to_owned(),
            reason,
        };
        let topology = Topology::builder()
            .from_synthetic(desc)
            .map_err(|e| synthetic_err(e.to_string()))?
            .build()
            .map_err(|e| synthetic_err(e.to_string()))?;
        Ok(Self::from_topology(topology, opts))
    }

    /// A topology from an hwloc XML export (`lstopo file.xml`).
    pub fn from_xml_file(path: &std::path::Path, opts: &NumaOptions) -> Result<Self, NumaError> {
        let topology = Topology::builder()
            .from_xml_file(path)
            .map_err(|e| NumaError::Detection(format!("{}: {e}", path.display())))?
            .build()
            .map_err(|e| NumaError::Detection(format!("{}: {e}", path.display())))?;
        Ok(Self::from_topology(topology, opts))
    }

    fn from_topology(topology: Topology, opts: &NumaOptions) -> Self {
        let this_system = topology.is_this_system();
        // The real machine's meminfo says nothing about a synthetic/XML topology's nodes;
        // read it for one only when the root was pointed somewhere on purpose.
        let read_sysfs =
            this_system || opts.sysfs_node_root != std::path::Path::new(DEFAULT_SYSFS_NODE_ROOT);
        let mut nodes = BTreeMap::new();
        let mut cpusets = BTreeMap::new();
        let mut nodesets = BTreeMap::new();
        for (node, cpuset, nodeset) in read_nodes(&topology, opts, read_sysfs) {
            cpusets.insert(node.id, cpuset);
            nodesets.insert(node.id, nodeset);
            nodes.insert(node.id, node);
        }
        let missing_meminfo: Vec<u32> = nodes
            .values()
            .filter(|n| !n.memory_free_known)
            .map(|n| n.id)
            .collect();

        let (numa_enabled, reason) = match (nodes.len(), this_system) {
            (0, _) => (
                false,
                "hwloc reported no NUMA node; treating the machine as one node".to_owned(),
            ),
            (1, true) => (false, "this machine has a single NUMA node".to_owned()),
            (1, false) => (
                false,
                "the synthetic/XML topology has a single NUMA node".to_owned(),
            ),
            (n, true) => (true, format!("{n} NUMA nodes detected by hwloc")),
            (n, false) => (
                true,
                format!("{n} NUMA nodes in a synthetic/XML topology (not this system)"),
            ),
        };
        if nodes.is_empty() {
            // hwloc always reports at least one node; keep every answer defined regardless.
            let cpuset = (*topology.cpuset()).clone();
            nodes.insert(
                0,
                NumaNode {
                    id: 0,
                    cpu_list: bitmap_indices(cpuset.iter_set().map(usize::from)),
                    memory_total_kb: 0,
                    memory_free_kb: 0,
                    memory_free_known: false,
                },
            );
            cpusets.insert(0, cpuset);
            nodesets.insert(0, (*topology.nodeset()).clone());
        }
        let memory_reason = if !read_sysfs {
            format!(
                "synthetic/XML topology: {} (this machine's) not read; free memory unknown, total from hwloc",
                opts.sysfs_node_root.display()
            )
        } else if missing_meminfo.is_empty() {
            format!("free memory from {}", opts.sysfs_node_root.display())
        } else {
            format!(
                "no MemFree in {}/node{{{}}}/meminfo: free memory unknown (reported 0), total from hwloc",
                opts.sysfs_node_root.display(),
                missing_meminfo.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            )
        };

        let device = if this_system {
            sysfs::block_device_node(&opts.chain_dir, &opts.sysfs_block_root)
        } else {
            Err(
                "the topology is synthetic/XML, so the disk's real node means nothing in it"
                    .to_owned(),
            )
        };
        let (optimal, optimal_reason) = choose_optimal(&nodes, device);
        let writer_cpuset = cpusets.get(&optimal).cloned().unwrap_or_default();
        let optimal_nodeset = nodesets.get(&optimal).cloned().unwrap_or_default();
        let all_nodeset = (*topology.nodeset()).clone();

        tracing::info!(
            node_count = nodes.len(),
            numa_enabled,
            this_system,
            optimal_node = optimal,
            writer_cpus = %format_cpu_list(nodes.get(&optimal).map_or(&[][..], |n| &n.cpu_list)),
            placement = %opts.placement,
            memory_policy = %opts.memory_policy,
            "NUMA: {reason}; optimal node {optimal}: {optimal_reason}"
        );

        Self {
            topology,
            opts: opts.clone(),
            nodes,
            optimal,
            optimal_reason,
            numa_enabled,
            reason,
            memory_reason,
            writer_cpuset,
            optimal_nodeset,
            all_nodeset,
            binding: Mutex::new(None),
            cache_binding: Mutex::new(None),
            cpusets,
            replica_placements: Mutex::new(Vec::new()),
        }
    }

    /// A snapshot: the nodes with current free memory, the choices, and the latest binding
    /// outcome.
    pub fn info(&self) -> NumaInfo {
        let nodes = self.current_nodes();
        let binding = self.binding.lock().clone();
        let writer_cpus = self.writer_cpus();
        let (binding_applied, binding_reason, observed, mem_applied, mem_reason) = match binding {
            Some(b) => (
                b.cpu_applied,
                b.cpu_reason,
                b.cpus_observed,
                b.memory_applied,
                b.memory_reason,
            ),
            None => {
                let why = "not applied: the writer thread has not bound itself yet".to_owned();
                (false, why.clone(), None, false, why)
            }
        };
        NumaInfo {
            node_count: nodes.len(),
            nodes,
            optimal_node: self.optimal,
            optimal_node_reason: self.optimal_reason.clone(),
            numa_enabled: self.numa_enabled,
            reason: self.reason.clone(),
            this_system: self.topology.is_this_system(),
            memory_reason: self.memory_reason.clone(),
            placement: self.opts.placement,
            memory_policy: self.opts.memory_policy,
            writer_cpus,
            writer_cpus_observed: observed,
            binding_applied,
            binding_reason,
            memory_policy_applied: mem_applied,
            memory_policy_reason: mem_reason,
            cache_binding: self.cache_binding.lock().clone(),
            replica_placements: self.replica_placements.lock().clone(),
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn optimal_node(&self) -> u32 {
        self.optimal
    }

    pub fn options(&self) -> &NumaOptions {
        &self.opts
    }

    /// The node cache shard `shard` should live on, by the configured placement; `None` when
    /// placement is disabled. `most_memory` looks at free memory now, not at start-up.
    pub fn cache_node_for(&self, shard: usize) -> Option<u32> {
        match self.opts.placement {
            CachePlacement::Disabled => None,
            CachePlacement::LocalNode => Some(self.optimal),
            CachePlacement::RoundRobin => {
                let ids: Vec<u32> = self.nodes.keys().copied().collect();
                ids.get(shard % ids.len().max(1))
                    .copied()
                    .or(Some(self.optimal))
            }
            CachePlacement::MostMemory => {
                Some(most_free(&self.current_nodes()).map_or(self.optimal, |(id, _)| id))
            }
        }
    }

    fn writer_cpus(&self) -> Vec<u32> {
        self.nodes
            .get(&self.optimal)
            .map(|n| n.cpu_list.clone())
            .unwrap_or_default()
    }

    /// The nodes with free memory re-read from sysfs (where it was readable at start-up).
    fn current_nodes(&self) -> BTreeMap<u32, NumaNode> {
        let mut nodes = self.nodes.clone();
        for node in nodes.values_mut().filter(|n| n.memory_free_known) {
            if let Ok(m) = sysfs::read_node_meminfo(&self.opts.sysfs_node_root, node.id) {
                if let Some(free) = m.free_kb {
                    node.memory_free_kb = free;
                }
            }
        }
        nodes
    }
}

/// Every NUMA node hwloc reports, with its CPU and node sets; memory from sysfs when
/// `read_sysfs` and readable, else hwloc's total and free unknown.
fn read_nodes(
    topology: &Topology,
    opts: &NumaOptions,
    read_sysfs: bool,
) -> Vec<(NumaNode, CpuSet, NodeSet)> {
    let mut out = Vec::new();
    for obj in topology.objects_with_type(ObjectType::NUMANode) {
        let Some(id) = obj.os_index().and_then(|i| u32::try_from(i).ok()) else {
            continue;
        };
        let cpuset = obj.cpuset().map(|s| (*s).clone()).unwrap_or_default();
        let nodeset = obj.nodeset().map(|s| (*s).clone()).unwrap_or_default();
        let hwloc_total_kb = match obj.attributes() {
            Some(ObjectAttributes::NUMANode(attr)) => {
                attr.local_memory().map_or(0, |b| b.get() / 1024)
            }
            _ => 0,
        };
        let meminfo = read_sysfs
            .then(|| sysfs::read_node_meminfo(&opts.sysfs_node_root, id).ok())
            .flatten();
        let free_kb = meminfo.and_then(|m| m.free_kb);
        let node = NumaNode {
            id,
            cpu_list: bitmap_indices(cpuset.iter_set().map(usize::from)),
            memory_total_kb: meminfo.and_then(|m| m.total_kb).unwrap_or(hwloc_total_kb),
            memory_free_kb: free_kb.unwrap_or(0),
            memory_free_known: free_kb.is_some(),
        };
        out.push((node, cpuset, nodeset));
    }
    out
}

fn bitmap_indices(indices: impl Iterator<Item = usize>) -> Vec<u32> {
    indices.filter_map(|i| u32::try_from(i).ok()).collect()
}

/// The node with most known free memory among those with CPUs (a memory-only node cannot
/// host the writer), lowest id on ties.
fn most_free(nodes: &BTreeMap<u32, NumaNode>) -> Option<(u32, u64)> {
    let with_cpus = nodes.values().any(|n| !n.cpu_list.is_empty());
    nodes
        .values()
        .filter(|n| n.memory_free_known && (!with_cpus || !n.cpu_list.is_empty()))
        .fold(None, |best: Option<(u32, u64)>, n| match best {
            Some((_, free)) if free >= n.memory_free_kb => best,
            _ => Some((n.id, n.memory_free_kb)),
        })
}

/// Disk locality, else most free memory, else node 0 (or the lowest node if there is no 0).
fn choose_optimal(
    nodes: &BTreeMap<u32, NumaNode>,
    device: Result<(u32, String), String>,
) -> (u32, String) {
    let device_note = match device {
        Ok((node, how)) if nodes.contains_key(&node) => {
            return (node, format!("local to the chain directory's disk: {how}"));
        }
        Ok((node, how)) => format!("disk is on node {node}, which is not in the topology ({how})"),
        Err(why) => format!("disk locality unknown: {why}"),
    };
    if nodes.len() == 1 {
        if let Some(&id) = nodes.keys().next() {
            return (id, format!("the only node ({device_note})"));
        }
    }
    if let Some((id, free)) = most_free(nodes) {
        return (id, format!("most free memory ({free} kB; {device_note})"));
    }
    let id = if nodes.contains_key(&0) {
        0
    } else {
        nodes.keys().next().copied().unwrap_or(0)
    };
    (
        id,
        format!("fallback to node {id}: free memory unknown ({device_note})"),
    )
}
