//! A corpus of realistic op-dbus footprints, deterministic from a seed.
//!
//! The cache's compression figures, its tests and the benchmark all measure on this corpus, so
//! it imitates what op-dbus plugins really report: network interfaces and routes, systemd unit
//! state changes, firewall rules, package transactions, users and mounts, with the field names,
//! value ranges and repetition of real machines (a few dozen interfaces, units and packages that
//! recur with changing states, counters, addresses and versions).
//!
//! `footprints(seed, n)` gives the same `n` footprints for the same seed on every machine;
//! `blocks(seed, n)` chains them into hash-linked blocks (genesis excluded) for tests that need
//! blocks without a store.

use crate::chain::block::{Block, Caller, ZERO_HASH};
use crate::footprint::PluginFootprint;
use serde_json::{json, Value};

/// `n` footprints from `seed`, in the proportions of a busy op-dbus host.
pub fn footprints(seed: u64, n: usize) -> Vec<PluginFootprint> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|i| footprint(&mut rng, i as u64)).collect()
}

/// `n` blocks at heights 1..=n holding `footprints(seed, n)`, linked by `prev_hash` from a zero
/// hash, with the timestamps and callers a daemon would record.
pub fn blocks(seed: u64, n: usize) -> Vec<Block> {
    let mut prev = ZERO_HASH;
    let mut time_ns = 1_790_000_000_000_000_000u64 + (seed % 1_000_000) * 1_000_000_000;
    let mut rng = SplitMix64(seed ^ 0x5eed_b10c);
    footprints(seed, n)
        .into_iter()
        .enumerate()
        .map(|(i, footprint)| {
            time_ns += 1_000_000 + rng.below(2_000_000_000);
            let pid = 900 + rng.below(40) as u32;
            let block = Block::new(
                i as u64 + 1,
                time_ns,
                prev,
                Caller {
                    uid: Some(0),
                    pid: Some(pid),
                    bus_name: format!(":1.{}", 40 + rng.below(30)),
                    unit: "op-dbus.service".into(),
                },
                footprint.plugin_id.clone(),
                footprint.operation.clone(),
                footprint.data_json().to_owned(),
            );
            prev = block.hash;
            block
        })
        .collect()
}

/// The chain index a daemon would give its cache for [`blocks`]: the zero hash at height 0
/// (where `blocks` link from), then each block's hash at its height.
pub fn links(blocks: &[Block]) -> crate::cache::Links {
    let mut hashes = vec![ZERO_HASH];
    hashes.extend(blocks.iter().map(|b| b.hash));
    std::sync::Arc::new(crate::cache::ChainHashes::new(hashes))
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and identical on every platform, which is
/// all a corpus needs; nothing here is security-relevant.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    // Not an Iterator: it never ends, and `rng.next()` reads better than `rng.next().unwrap()`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const INTERFACES: &[&str] = &[
    "eth0",
    "eth1",
    "enp3s0",
    "enp4s0f1",
    "wlan0",
    "br0",
    "br-lan",
    "bond0",
    "vlan100",
    "vlan200",
    "veth3f2a1c",
    "veth91be07",
    "tap0",
    "wg0",
    "docker0",
    "virbr0",
];
const UNITS: &[&str] = &[
    "nginx.service",
    "postgresql@16-main.service",
    "sshd.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "docker.service",
    "containerd.service",
    "cron.service",
    "rsyslog.service",
    "node-exporter.service",
    "op-dbus.service",
    "backup.timer",
    "fstrim.timer",
    "logrotate.timer",
    "var-lib-docker.mount",
    "user@1000.service",
];
const PACKAGES: &[(&str, &str)] = &[
    ("openssl", "3.0.13-0ubuntu3.4"),
    ("libssl3t64", "3.0.13-0ubuntu3.4"),
    ("nginx", "1.24.0-2ubuntu7.1"),
    ("postgresql-16", "16.4-0ubuntu0.24.04.2"),
    ("systemd", "255.4-1ubuntu8.4"),
    ("libsystemd0", "255.4-1ubuntu8.4"),
    ("linux-image-6.8.0-45-generic", "6.8.0-45.45"),
    ("curl", "8.5.0-2ubuntu10.4"),
    ("libcurl4t64", "8.5.0-2ubuntu10.4"),
    ("python3.12", "3.12.3-1ubuntu0.2"),
    ("docker-ce", "5:27.3.1-1~ubuntu.24.04~noble"),
    ("containerd.io", "1.7.22-1"),
    ("tzdata", "2024a-3ubuntu1.1"),
    ("ca-certificates", "20240203"),
    ("btrfs-progs", "6.6.3-1.1build2"),
    ("dbus", "1.14.10-4ubuntu4.1"),
];
const USERS: &[&str] = &[
    "deploy",
    "backup",
    "postgres",
    "www-data",
    "alice",
    "bob",
    "ci-runner",
];
const MOUNTS: &[(&str, &str, &str)] = &[
    ("/var/lib/docker", "/dev/nvme0n1p3", "btrfs"),
    ("/srv/data", "/dev/sdb1", "xfs"),
    ("/mnt/backup", "backup.lan:/export/host1", "nfs4"),
    ("/var/lib/op-dbus", "/dev/nvme0n1p3", "btrfs"),
    ("/tmp", "tmpfs", "tmpfs"),
];

fn footprint(rng: &mut SplitMix64, i: u64) -> PluginFootprint {
    let (plugin, operation, data) = match rng.below(100) {
        0..=29 => network(rng, i),
        30..=54 => systemd(rng, i),
        55..=74 => firewall(rng, i),
        75..=87 => packages(rng),
        88..=93 => users(rng, i),
        _ => mounts(rng),
    };
    PluginFootprint::new(plugin, operation, data)
}

fn ipv4(rng: &mut SplitMix64, net: &str) -> String {
    format!("{net}.{}", 2 + rng.below(250))
}

fn mac(rng: &mut SplitMix64) -> String {
    let tail = rng.below(1 << 24);
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        tail >> 16,
        (tail >> 8) & 0xff,
        tail & 0xff
    )
}

fn network(rng: &mut SplitMix64, i: u64) -> (&'static str, &'static str, Value) {
    let interface = *rng.pick(INTERFACES);
    let operation = *rng.pick(&[
        "create",
        "modify",
        "modify",
        "modify",
        "delete",
        "route_add",
    ]);
    let net = *rng.pick(&["10.0.0", "10.0.1", "192.168.1", "172.17.0"]);
    let data = if operation == "route_add" {
        json!({
            "interface": interface,
            "destination": format!("{}.0/24", rng.pick(&["10.10.0", "10.20.0", "192.168.100"])),
            "gateway": ipv4(rng, net),
            "metric": *rng.pick(&[100u64, 200, 600, 1024]),
            "table": "main",
            "protocol": "static",
            "scope": "global",
        })
    } else {
        json!({
            "interface": interface,
            "kind": if interface.starts_with("br") { "bridge" } else if interface.starts_with("vlan") { "vlan" } else { "ethernet" },
            "state": if operation == "delete" { "absent" } else { *rng.pick(&["up", "up", "up", "down"]) },
            "mtu": *rng.pick(&[1500u64, 1500, 9000, 1420]),
            "mac_address": mac(rng),
            "addresses": [{"address": ipv4(rng, net), "prefix_length": 24, "family": "inet"}],
            "dhcp4": rng.chance(30),
            "ipv6": {"enabled": rng.chance(60), "addr_gen_mode": "stable-privacy"},
            "statistics": {
                "rx_bytes": rng.below(1 << 40),
                "tx_bytes": rng.below(1 << 38),
                "rx_errors": rng.below(3),
                "tx_dropped": rng.below(5),
            },
            "changed_by": "netplan",
            "generation": i,
        })
    };
    ("network", operation, data)
}

fn systemd(rng: &mut SplitMix64, i: u64) -> (&'static str, &'static str, Value) {
    let unit = *rng.pick(UNITS);
    let operation = *rng.pick(&[
        "start",
        "stop",
        "restart",
        "reload",
        "enable",
        "state_change",
    ]);
    let (active, sub) = *rng.pick(&[
        ("active", "running"),
        ("active", "running"),
        ("active", "exited"),
        ("inactive", "dead"),
        ("activating", "start-pre"),
        ("failed", "failed"),
    ]);
    let data = json!({
        "unit": unit,
        "job_type": operation,
        "active_state": active,
        "sub_state": sub,
        "load_state": "loaded",
        "unit_file_state": *rng.pick(&["enabled", "enabled", "static", "disabled"]),
        "main_pid": if active == "active" { 1000 + rng.below(60_000) } else { 0 },
        "exec_main_status": if active == "failed" { 1 + rng.below(3) } else { 0 },
        "n_restarts": rng.below(4),
        "memory_current": rng.below(1 << 31),
        "cpu_usage_nsec": rng.below(1 << 42),
        "fragment_path": format!("/usr/lib/systemd/system/{unit}"),
        "invocation_id": format!("{:016x}{:016x}", rng.next(), rng.next()),
        "result": if active == "failed" { "exit-code" } else { "success" },
        "sequence": i,
    });
    ("systemd", operation, data)
}

fn firewall(rng: &mut SplitMix64, i: u64) -> (&'static str, &'static str, Value) {
    let operation = *rng.pick(&[
        "rule_add",
        "rule_add",
        "rule_delete",
        "set_element_add",
        "policy",
    ]);
    let chain = *rng.pick(&["input", "forward", "output", "prerouting", "postrouting"]);
    let port = *rng.pick(&[22u64, 80, 443, 5432, 8080, 9100, 51820, 53]);
    let protocol = *rng.pick(&["tcp", "tcp", "udp"]);
    let data = json!({
        "backend": "nftables",
        "family": *rng.pick(&["inet", "inet", "ip", "ip6"]),
        "table": "filter",
        "chain": chain,
        "handle": 10 + rng.below(400),
        "rule": {
            "match": {
                "protocol": protocol,
                "dport": port,
                "saddr": format!("{}.0/{}", rng.pick(&["10.0.0", "192.168.1", "172.16.0"]), rng.pick(&[8u64, 16, 24])),
                "ct_state": ["established", "related", "new"],
                "iifname": *rng.pick(INTERFACES),
            },
            "verdict": *rng.pick(&["accept", "accept", "drop", "reject"]),
            "counter": {"packets": rng.below(1 << 30), "bytes": rng.below(1 << 40)},
            "comment": format!("op-dbus managed rule {}", rng.below(64)),
        },
        "expr": format!("{protocol} dport {port} ct state new counter accept"),
        "ruleset_generation": 1000 + i,
    });
    ("firewall", operation, data)
}

fn packages(rng: &mut SplitMix64) -> (&'static str, &'static str, Value) {
    let operation = *rng.pick(&["install", "upgrade", "upgrade", "remove", "hold"]);
    let count = 1 + rng.below(4) as usize;
    let list: Vec<Value> = (0..count)
        .map(|_| {
            let (name, version) = *rng.pick(PACKAGES);
            json!({
                "name": name,
                "version": version,
                "previous_version": if operation == "upgrade" { Some(format!("{version}~prev{}", rng.below(3))) } else { None },
                "architecture": *rng.pick(&["amd64", "amd64", "all"]),
                "installed_size_kb": 64 + rng.below(250_000),
                "origin": "Ubuntu",
                "archive": *rng.pick(&["noble-updates", "noble-security", "noble"]),
            })
        })
        .collect();
    let data = json!({
        "manager": "apt",
        "transaction_id": rng.below(1_000_000),
        "packages": list,
        "requested_by": "unattended-upgrades",
        "reboot_required": rng.chance(10),
    });
    ("packages", operation, data)
}

fn users(rng: &mut SplitMix64, i: u64) -> (&'static str, &'static str, Value) {
    let name = *rng.pick(USERS);
    let operation = *rng.pick(&["create", "modify", "lock", "key_add"]);
    let data = json!({
        "user": name,
        "uid": 1000 + rng.below(50),
        "gid": 1000 + rng.below(50),
        "home": format!("/home/{name}"),
        "shell": *rng.pick(&["/bin/bash", "/usr/sbin/nologin", "/bin/zsh"]),
        "groups": [*rng.pick(&["sudo", "docker", "adm"]), "users"],
        "password_locked": operation == "lock",
        "ssh_key_fingerprint": format!("SHA256:{:016x}{:016x}", rng.next(), rng.next()),
        "change": i,
    });
    ("users", operation, data)
}

fn mounts(rng: &mut SplitMix64) -> (&'static str, &'static str, Value) {
    let (target, source, fstype) = *rng.pick(MOUNTS);
    let operation = *rng.pick(&["mount", "remount", "unmount"]);
    let data = json!({
        "target": target,
        "source": source,
        "fstype": fstype,
        "options": *rng.pick(&["rw,relatime", "rw,noatime,compress=zstd:3,ssd,space_cache=v2", "ro,nosuid,nodev"]),
        "size_bytes": rng.below(1 << 42),
        "used_bytes": rng.below(1 << 40),
        "unit": format!("{}.mount", target.trim_start_matches('/').replace('/', "-")),
    });
    ("mounts", operation, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_corpus_and_another_seed_another() {
        assert_eq!(footprints(7, 200), footprints(7, 200));
        assert_ne!(footprints(7, 200), footprints(8, 200));
        let blocks = blocks(7, 50);
        assert_eq!(blocks, super::blocks(7, 50));
        for pair in blocks.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].height, pair[0].height + 1);
            assert!(pair[1].timestamp_ns > pair[0].timestamp_ns);
        }
    }

    #[test]
    fn every_footprint_is_valid_and_every_plugin_appears() {
        let corpus = footprints(1, 2000);
        let mut plugins = std::collections::BTreeSet::new();
        for footprint in &corpus {
            footprint
                .validate(crate::footprint::DEFAULT_MAX_DATA_BYTES)
                .expect("corpus footprints are valid");
            serde_json::from_str::<Value>(footprint.data_json()).expect("valid JSON");
            plugins.insert(footprint.plugin_id.clone());
        }
        let expected = [
            "firewall", "mounts", "network", "packages", "systemd", "users",
        ];
        assert_eq!(plugins.into_iter().collect::<Vec<_>>(), expected);
    }
}
