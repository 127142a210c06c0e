//! Pinning the calling thread (the chain writer) to the optimal node and applying its memory
//! policy, and judging whether that really happened.
//!
//! hwloc "succeeds" without doing anything on a topology that is not this system, and a
//! kernel or cgroup can narrow what was asked, so success is decided by reading back: the
//! thread's `Cpus_allowed_list` from procfs, and its memory policy from `get_mempolicy` (via
//! hwloc). hwloc's return value only adds detail to the reason.

use super::{sysfs, MemoryPolicy, NumaTopology};
use hwlocality::cpu::binding::CpuBindingFlags;
use hwlocality::memory::binding::{MemoryBindingFlags, MemoryBindingPolicy};
use hwlocality::memory::nodeset::NodeSet;
use serde::Serialize;

/// What [`NumaTopology::bind_writer_thread`] achieved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindingOutcome {
    /// Kernel thread id of the thread that bound itself.
    pub tid: i32,
    pub cpus_requested: Vec<u32>,
    /// The thread's CPUs as the kernel reports them afterwards, if they could be read.
    pub cpus_observed: Option<Vec<u32>>,
    /// The kernel confirms the thread runs on exactly `cpus_requested`.
    pub cpu_applied: bool,
    pub cpu_reason: String,
    pub memory_policy: MemoryPolicy,
    /// The thread's memory policy read back as configured.
    pub memory_applied: bool,
    pub memory_reason: String,
}

impl BindingOutcome {
    /// The CPU pinning took effect (the memory policy is reported separately).
    pub fn applied(&self) -> bool {
        self.cpu_applied
    }
}

const NOT_THIS_SYSTEM: &str = "not applied: topology is synthetic/XML, not this system";

impl NumaTopology {
    /// Pins the *calling* thread to the optimal node's CPUs and applies the configured memory
    /// policy to it. Call it first thing on the writer thread. Never panics: a refused or
    /// meaningless binding is recorded as not applied, with the reason, and [`info`] reports
    /// it from then on.
    ///
    /// [`info`]: NumaTopology::info
    pub fn bind_writer_thread(&self) -> BindingOutcome {
        let tid = nix::unistd::gettid().as_raw();
        let requested = self.writer_cpus();
        let policy = self.opts.memory_policy;
        let outcome = if !self.topology.is_this_system() {
            BindingOutcome {
                tid,
                cpus_requested: requested,
                cpus_observed: sysfs::thread_cpus_allowed(tid).ok(),
                cpu_applied: false,
                cpu_reason: NOT_THIS_SYSTEM.to_owned(),
                memory_policy: policy,
                memory_applied: false,
                memory_reason: NOT_THIS_SYSTEM.to_owned(),
            }
        } else {
            let (observed, cpu_applied, cpu_reason) = self.pin_cpus(tid, &requested);
            let (memory_applied, memory_reason) = self.apply_memory_policy(policy);
            BindingOutcome {
                tid,
                cpus_requested: requested,
                cpus_observed: observed,
                cpu_applied,
                cpu_reason,
                memory_policy: policy,
                memory_applied,
                memory_reason,
            }
        };
        if outcome.cpu_applied || !self.topology.is_this_system() {
            tracing::info!(
                tid,
                node = self.optimal,
                cpus = %sysfs::format_cpu_list(&outcome.cpus_requested),
                cpu_applied = outcome.cpu_applied,
                memory_policy = %policy,
                memory_applied = outcome.memory_applied,
                "writer thread binding: {}; memory policy {}: {}",
                outcome.cpu_reason,
                policy,
                outcome.memory_reason
            );
        } else {
            tracing::warn!(
                tid,
                node = self.optimal,
                cpus = %sysfs::format_cpu_list(&outcome.cpus_requested),
                cpu_applied = outcome.cpu_applied,
                memory_policy = %policy,
                memory_applied = outcome.memory_applied,
                "writer thread binding: {}; memory policy {}: {}",
                outcome.cpu_reason,
                policy,
                outcome.memory_reason
            );
        }
        *self.binding.lock() = Some(outcome.clone());
        outcome
    }

    fn pin_cpus(&self, tid: i32, requested: &[u32]) -> (Option<Vec<u32>>, bool, String) {
        if requested.is_empty() {
            let observed = sysfs::thread_cpus_allowed(tid).ok();
            let why = format!("not applied: node {} has no CPUs", self.optimal);
            return (observed, false, why);
        }
        let call = self
            .topology
            .bind_cpu(&self.writer_cpuset, CpuBindingFlags::THREAD);
        let hwloc_note = match &call {
            Ok(()) => String::new(),
            Err(e) => format!("; hwloc: {e}"),
        };
        match sysfs::thread_cpus_allowed(tid) {
            Ok(observed) if observed == requested => {
                let why = format!(
                    "applied: thread {tid} runs on CPUs {} of node {} (read back from /proc){hwloc_note}",
                    sysfs::format_cpu_list(&observed),
                    self.optimal
                );
                (Some(observed), true, why)
            }
            Ok(observed) => {
                let why = format!(
                    "not applied: kernel reports CPUs {} for thread {tid}, wanted {}{hwloc_note}",
                    sysfs::format_cpu_list(&observed),
                    sysfs::format_cpu_list(requested)
                );
                (Some(observed), false, why)
            }
            Err(e) => {
                let why = format!(
                    "not applied: cannot read thread {tid}'s affinity back: {e}{hwloc_note}"
                );
                (None, false, why)
            }
        }
    }

    fn apply_memory_policy(&self, policy: MemoryPolicy) -> (bool, String) {
        let thread = MemoryBindingFlags::THREAD;
        let strict = thread | MemoryBindingFlags::STRICT;
        // `None`: back to the kernel default, which hwloc reads back as first touch.
        let (expected_set, expected_policy, flags) = match policy {
            MemoryPolicy::Default => (None, MemoryBindingPolicy::FirstTouch, thread),
            MemoryPolicy::Bind => (
                Some(&self.optimal_nodeset),
                MemoryBindingPolicy::Bind,
                strict,
            ),
            // hwloc's non-strict bind is the kernel's MPOL_PREFERRED.
            MemoryPolicy::Preferred => (
                Some(&self.optimal_nodeset),
                MemoryBindingPolicy::Bind,
                thread,
            ),
            MemoryPolicy::Interleaved => (
                Some(&self.all_nodeset),
                MemoryBindingPolicy::Interleave,
                thread,
            ),
        };
        self.apply_membind(expected_set, expected_policy, flags)
    }

    /// Sets the calling thread's memory binding and judges it by reading it back.
    fn apply_membind(
        &self,
        expected_set: Option<&NodeSet>,
        expected_policy: MemoryBindingPolicy,
        flags: MemoryBindingFlags,
    ) -> (bool, String) {
        let thread = MemoryBindingFlags::THREAD;
        let call = match expected_set {
            None => self
                .topology
                .unbind_memory(flags)
                .map_err(|e| e.to_string()),
            Some(set) => self
                .topology
                .bind_memory(set, expected_policy, flags)
                .map_err(|e| e.to_string()),
        };
        let hwloc_note = match &call {
            Ok(()) => String::new(),
            Err(e) => format!("; hwloc: {e}"),
        };
        match self.topology.memory_binding::<NodeSet>(thread) {
            Ok((set, got)) => {
                let policy_ok = got == Some(expected_policy);
                let set_ok = expected_set.is_none_or(|want| *want == set);
                if policy_ok && set_ok {
                    (
                        true,
                        format!(
                            "applied: thread policy reads back as {} on nodes {}{hwloc_note}",
                            policy_name(got),
                            node_list(&set)
                        ),
                    )
                } else {
                    (
                        false,
                        format!(
                            "not applied: thread policy reads back as {} on nodes {}, wanted {}{}{hwloc_note}",
                            policy_name(got),
                            node_list(&set),
                            policy_name(Some(expected_policy)),
                            expected_set
                                .map(|s| format!(" on nodes {}", node_list(s)))
                                .unwrap_or_default()
                        ),
                    )
                }
            }
            Err(e) => (
                false,
                format!(
                    "not applied: cannot read the thread's memory policy back: {e}{hwloc_note}"
                ),
            ),
        }
    }
}

/// What [`NumaTopology::place_cache_thread`] achieved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheBinding {
    /// The node the cache's memory goes to; `None` when interleaved over all nodes or when
    /// placement is disabled.
    pub node: Option<u32>,
    pub applied: bool,
    pub reason: String,
}

impl NumaTopology {
    /// Places the memory the *calling* thread (the cache thread, which decodes and keeps the
    /// blocks of the hot tier) allocates from now on, by `OPDBUS_CACHE_PLACEMENT`:
    /// `local_node` and `most_memory` prefer one node, `round_robin` interleaves pages over all
    /// nodes (the cache has one thread, so its "shards" are pages), `disabled` leaves it alone.
    /// Judged by reading the policy back, as for the writer.
    pub fn place_cache_thread(&self) -> CacheBinding {
        let placement = self.opts.placement;
        let interleave = placement == super::CachePlacement::RoundRobin && self.nodes.len() > 1;
        let node = if interleave {
            None
        } else {
            self.cache_node_for(0)
        };
        let binding = if placement == super::CachePlacement::Disabled {
            CacheBinding {
                node: None,
                applied: false,
                reason: "not applied: OPDBUS_CACHE_PLACEMENT=disabled".into(),
            }
        } else if !self.topology.is_this_system() {
            CacheBinding {
                node,
                applied: false,
                reason: NOT_THIS_SYSTEM.to_owned(),
            }
        } else {
            let thread = MemoryBindingFlags::THREAD;
            let (applied, reason) = if interleave {
                self.apply_membind(
                    Some(&self.all_nodeset),
                    MemoryBindingPolicy::Interleave,
                    thread,
                )
            } else {
                let mut set = NodeSet::new();
                set.set(node.unwrap_or(self.optimal) as usize);
                // Non-strict bind: the kernel's MPOL_PREFERRED, so a full node spills over.
                self.apply_membind(Some(&set), MemoryBindingPolicy::Bind, thread)
            };
            CacheBinding {
                node,
                applied,
                reason,
            }
        };
        tracing::info!(
            placement = %placement,
            node = binding.node,
            applied = binding.applied,
            "cache memory placement: {}",
            binding.reason
        );
        *self.cache_binding.lock() = Some(binding.clone());
        binding
    }
}

fn node_list(set: &NodeSet) -> String {
    let ids: Vec<u32> = set
        .iter_set()
        .filter_map(|i| u32::try_from(usize::from(i)).ok())
        .collect();
    sysfs::format_cpu_list(&ids)
}

/// hwloc's policy in the kernel's words (hwloc reads MPOL_PREFERRED back as `Bind`).
fn policy_name(policy: Option<MemoryBindingPolicy>) -> &'static str {
    match policy {
        Some(MemoryBindingPolicy::FirstTouch) => "default (first touch)",
        Some(MemoryBindingPolicy::Bind) => "bind/preferred",
        Some(MemoryBindingPolicy::Interleave) => "interleave",
        Some(MemoryBindingPolicy::NextTouch) => "next touch",
        _ => "unknown",
    }
}

/// Where a replica thread placed itself: on the NUMA node of the network interface that
/// carries its source's traffic, else on the chain's (the writer's) node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaPlacement {
    pub source: String,
    /// The interface the source is routed through, when it could be found.
    pub interface: Option<String>,
    pub node: u32,
    pub applied: bool,
    pub reason: String,
}

impl NumaTopology {
    /// Pins the *calling* thread (a replica's) to the CPUs of `nic_node` when the topology has
    /// that node, else to the writer's node, and records it for NumaInfo.
    pub fn place_replica_thread(
        &self,
        source: &str,
        interface: Option<String>,
        nic_node: Option<u32>,
    ) -> ReplicaPlacement {
        let (node, why) = match (&interface, nic_node) {
            (Some(iface), Some(node)) if self.nodes.contains_key(&node) => {
                (node, format!("{iface} (the source's route) is on node {node}"))
            }
            (Some(iface), Some(node)) => (
                self.optimal,
                format!("{iface} reports node {node}, which the topology does not have; the chain's node"),
            ),
            (Some(iface), None) => (
                self.optimal,
                format!("{iface} (the source's route) has no NUMA node; the chain's node"),
            ),
            (None, _) => (
                self.optimal,
                "no route to the source found; the chain's node".to_owned(),
            ),
        };
        let (applied, reason) = if !self.topology.is_this_system() {
            (false, format!("{why}; {NOT_THIS_SYSTEM}"))
        } else {
            match self.cpusets.get(&node) {
                Some(cpuset) if cpuset.weight() != Some(0) => {
                    match self.topology.bind_cpu(cpuset, CpuBindingFlags::THREAD) {
                        Ok(()) => (true, format!("{why}: applied")),
                        Err(err) => (false, format!("{why}: not applied: hwloc: {err}")),
                    }
                }
                _ => (
                    false,
                    format!("{why}: not applied: node {node} has no CPUs"),
                ),
            }
        };
        let placement = ReplicaPlacement {
            source: source.to_owned(),
            interface,
            node,
            applied,
            reason,
        };
        tracing::info!(
            SOURCE = %placement.source,
            node,
            applied,
            "replica thread placement: {}",
            placement.reason
        );
        self.replica_placements.lock().push(placement.clone());
        placement
    }
}
