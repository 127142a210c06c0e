//! Which network interface carries the traffic to a host, and the NUMA node of its device: a
//! replica's threads belong on the node of the NIC they receive on.
//!
//! The interface comes from the kernel's IPv4 main routing table (`/proc/net/route`, the
//! longest matching prefix; `127.0.0.0/8` is the loopback device, which that table does not
//! list), the node from `/sys/class/net/<if>/device/numa_node` (-1 or absent: none).

use std::net::Ipv4Addr;
use std::path::Path;

/// The interface `/proc/net/route`'s text `table` routes `to` through.
pub fn route_interface(table: &str, to: Ipv4Addr) -> Option<String> {
    if to.is_loopback() {
        return Some("lo".into());
    }
    let target = u32::from(to);
    // RTF_UP, RTF_REJECT (linux/route.h).
    const UP: u32 = 0x0001;
    const REJECT: u32 = 0x0200;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask …; addresses are the
            // kernel's __be32 printed as a native u32 in hex.
            let iface = *fields.first()?;
            let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let metric: u32 = fields.get(6)?.parse().ok()?;
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
            if iface == "*" || flags & UP == 0 || flags & REJECT != 0 {
                return None;
            }
            let as_network = |raw: u32| u32::from(Ipv4Addr::from(raw.to_ne_bytes()));
            let (destination, mask) = (as_network(destination), as_network(mask));
            (target & mask == destination).then(|| (mask.count_ones(), metric, iface.to_string()))
        })
        // The longest prefix; among equal ones the lowest metric, as the kernel chooses.
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, _, iface)| iface)
}

/// The NUMA node of `iface`'s device under `sysfs_net` (`/sys/class/net`), if it has one.
pub fn interface_node(sysfs_net: &Path, iface: &str) -> Option<u32> {
    if iface.contains('/') || iface.starts_with('.') {
        return None;
    }
    let text = std::fs::read_to_string(sysfs_net.join(iface).join("device/numa_node")).ok()?;
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth1\t00004D0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
        wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
        *\t0000500A\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
        eth2\t0000510A\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn the_longest_prefix_names_the_interface() {
        assert_eq!(
            route_interface(TABLE, Ipv4Addr::new(10, 77, 1, 2)).as_deref(),
            Some("eth1")
        );
        assert_eq!(
            route_interface(TABLE, Ipv4Addr::new(192, 168, 0, 9)).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            route_interface(TABLE, Ipv4Addr::new(8, 8, 8, 8)).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            route_interface(TABLE, Ipv4Addr::LOCALHOST).as_deref(),
            Some("lo")
        );
        assert_eq!(route_interface("Iface\n", Ipv4Addr::new(8, 8, 8, 8)), None);
        // A reject route and a route that is down are no way out.
        assert_eq!(
            route_interface(TABLE, Ipv4Addr::new(10, 80, 0, 1)).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            route_interface(TABLE, Ipv4Addr::new(10, 81, 0, 1)).as_deref(),
            Some("eth0")
        );
    }

    #[test]
    fn a_device_without_a_node_has_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (iface, node) in [("eth0", "1\n"), ("eth1", "-1\n")] {
            std::fs::create_dir_all(dir.path().join(iface).join("device")).expect("mkdir");
            std::fs::write(dir.path().join(iface).join("device/numa_node"), node).expect("write");
        }
        assert_eq!(interface_node(dir.path(), "eth0"), Some(1));
        assert_eq!(interface_node(dir.path(), "eth1"), None);
        assert_eq!(interface_node(dir.path(), "lo"), None);
        assert_eq!(interface_node(dir.path(), "../eth0"), None);
    }
}
