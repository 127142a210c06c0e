//! What hwloc does not tell us, read from sysfs and procfs: a node's free memory, a thread's
//! CPU affinity as the kernel sees it, and which NUMA node a block device hangs off.
//!
//! Every reader takes its root as a parameter so tests can point it at a fake tree.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Total and free memory of one node, in kB, from `<root>/node<N>/meminfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeMemInfo {
    pub total_kb: Option<u64>,
    pub free_kb: Option<u64>,
}

/// Reads `<root>/node<id>/meminfo`, whose lines read `Node 0 MemFree:   3340976 kB`.
pub fn read_node_meminfo(root: &Path, id: u32) -> std::io::Result<NodeMemInfo> {
    let text = fs::read_to_string(root.join(format!("node{id}")).join("meminfo"))?;
    Ok(parse_node_meminfo(&text, id))
}

pub fn parse_node_meminfo(text: &str, id: u32) -> NodeMemInfo {
    let mut info = NodeMemInfo {
        total_kb: None,
        free_kb: None,
    };
    let prefix = format!("Node {id} ");
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix(&prefix) else {
            continue;
        };
        let Some((key, value)) = rest.split_once(':') else {
            continue;
        };
        let kb = value
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok());
        match key.trim() {
            "MemTotal" => info.total_kb = kb,
            "MemFree" => info.free_kb = kb,
            _ => {}
        }
    }
    info
}

/// Parses a kernel CPU list such as `0-3,8,10-11` into sorted, distinct CPU numbers.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = BTreeSet::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (u32, u32) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                if lo > hi {
                    return None;
                }
                cpus.extend(lo..=hi);
            }
            None => {
                cpus.insert(part.trim().parse().ok()?);
            }
        }
    }
    Some(cpus.into_iter().collect())
}

/// Formats CPU numbers the way the kernel does (`0-3,8`), for logs and reasons.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut out = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// The CPUs the kernel lets thread `tid` of this process run on, from
/// `/proc/self/task/<tid>/status` `Cpus_allowed_list`. This is the ground truth a binding is
/// checked against.
pub fn thread_cpus_allowed(tid: i32) -> std::io::Result<Vec<u32>> {
    let path = format!("/proc/self/task/{tid}/status");
    let text = fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(parse_cpu_list)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{path} has no readable Cpus_allowed_list"),
            )
        })
}

/// The NUMA node of the block device holding `dir`, with how it was found; or why not.
///
/// Method: `stat(dir)` gives the device number; `<block_root>/MAJ:MIN` links into
/// `/sys/devices/...`; the first ancestor directory with a `numa_node` file (the PCI
/// function, which is also where hwloc gets I/O locality on Linux) gives the node. A loop
/// device is followed to its backing file's device; a device-mapper/md device to its
/// `slaves/` when they all agree. A file system without a real block device (btrfs reports an
/// anonymous one) is mapped to its mount source through `/proc/self/mountinfo`.
pub fn block_device_node(dir: &Path, block_root: &Path) -> Result<(u32, String), String> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| format!("{} does not exist", dir.display()))?;
    let meta = fs::metadata(existing).map_err(|e| format!("stat {}: {e}", existing.display()))?;
    node_of_devnum(meta.dev(), block_root, 0)
        .map(|(node, how)| (node, format!("{} is on {how}", existing.display())))
}

const MAX_DEPTH: usize = 4;

fn node_of_devnum(dev: u64, block_root: &Path, depth: usize) -> Result<(u32, String), String> {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let link = block_root.join(format!("{major}:{minor}"));
    if !link.exists() {
        // No block device by that number: btrfs and overlay report anonymous devices. Map the
        // mount back to its source device, once.
        if depth == 0 {
            if let Some(rdev) = mount_source_rdev(major, minor) {
                return node_of_devnum(rdev, block_root, depth + 1);
            }
        }
        return Err(format!(
            "device {major}:{minor} is not a block device known to {}",
            block_root.display()
        ));
    }
    let sys_dir = fs::canonicalize(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    node_of_sys_block_dir(&sys_dir, block_root, depth)
}

pub(super) fn node_of_sys_block_dir(
    sys_dir: &Path,
    block_root: &Path,
    depth: usize,
) -> Result<(u32, String), String> {
    let name = sys_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if depth > MAX_DEPTH {
        return Err(format!("gave up following stacked devices at {name}"));
    }
    // A loop device's locality is that of the disk holding its backing file.
    if let Ok(backing) = fs::read_to_string(sys_dir.join("loop").join("backing_file")) {
        let backing = PathBuf::from(backing.trim());
        let meta = fs::metadata(&backing).map_err(|e| {
            format!(
                "loop device {name}: backing file {}: {e}",
                backing.display()
            )
        })?;
        return node_of_devnum(meta.dev(), block_root, depth + 1)
            .map(|(node, how)| (node, format!("loop device {name} backed by {how}")));
    }
    // Stacked devices (dm, md): follow the underlying devices; they must agree.
    if let Ok(entries) = fs::read_dir(sys_dir.join("slaves")) {
        let mut nodes = BTreeSet::new();
        let mut hows = Vec::new();
        for entry in entries.flatten() {
            let target = fs::canonicalize(entry.path()).map_err(|e| format!("{name}: {e}"))?;
            let (node, how) = node_of_sys_block_dir(&target, block_root, depth + 1)?;
            nodes.insert(node);
            hows.push(how);
        }
        match (nodes.first(), nodes.len()) {
            (Some(&node), 1) => {
                return Ok((node, format!("{name} over {}", hows.join(" and "))));
            }
            (Some(_), _) => return Err(format!("{name} spans several NUMA nodes ({hows:?})")),
            (None, _) => {}
        }
    }
    // A partition's own directory has no device link; its parent disk's has. Walking all
    // ancestors covers both and reaches the PCI function, which carries numa_node.
    let mut saw_unknown = None;
    for ancestor in sys_dir.ancestors() {
        let file = ancestor.join("numa_node");
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match text.trim().parse::<i64>() {
            Ok(n) if n >= 0 => {
                let node = u32::try_from(n).map_err(|_| format!("{}: {n}", file.display()))?;
                return Ok((node, format!("{name} ({} = {node})", file.display())));
            }
            _ => {
                saw_unknown.get_or_insert(file);
            }
        }
    }
    Err(match saw_unknown {
        Some(file) => format!(
            "{name}: firmware gives no NUMA locality ({} = -1)",
            file.display()
        ),
        None => format!("{name}: no numa_node in its sysfs ancestry (virtual device?)"),
    })
}

/// The device number of the block device mounted as `major:minor` (an anonymous device
/// number, as btrfs gives), taken from the mount source in `/proc/self/mountinfo`.
fn mount_source_rdev(major: u64, minor: u64) -> Option<u64> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let source = mount_source_for(&text, major, minor)?;
    let meta = fs::metadata(source).ok()?;
    meta.file_type().is_block_device().then(|| meta.rdev())
}

/// From mountinfo text, the mount source (`/dev/...`) of a mount of device `major:minor`.
/// Lines read `36 35 0:44 / /mnt rw,relatime shared:1 - btrfs /dev/loop0 rw,...`.
pub fn mount_source_for(mountinfo: &str, major: u64, minor: u64) -> Option<String> {
    let wanted = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let devnum = fields.nth(2)?;
        if devnum != wanted {
            return None;
        }
        let mut after_sep = line.split(" - ").nth(1)?.split_whitespace();
        let source = after_sep.nth(1)?;
        source.starts_with("/dev/").then(|| source.to_owned())
    })
}
