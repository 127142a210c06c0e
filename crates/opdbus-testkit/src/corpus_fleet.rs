//! A held-out corpus: footprints from a fleet of twenty Linux hosts, deterministic from a seed.
//!
//! It was written from knowledge of real system state, without reading `corpus.rs` or the
//! cache's compressor, so that compression measured on it is honest. **Keep it held out: no
//! tuning of the cache or its compressor may use it**; tune on `corpus`, then report on this.
//!
//! It imitates what op-dbus plugins would record across a fleet: NetworkManager profiles and
//! systemd-networkd links, systemd unit state changes and full property dumps, `nft -j` rules
//! and whole rulesets, apt transactions with Debian version strings, users, mounts, sysctl,
//! X.509 certificates, `docker inspect`-style containers, kernel modules, timers, journald and
//! sshd settings. Hosts, interfaces, units, packages and images recur from fixed lists with
//! skew; identifiers, digests, serials, counters, pids and times change. Each plugin keeps the
//! naming and field order of the tool it imitates (PascalCase, kebab-case, snake_case), so the
//! JSON is written in order by `jo!` rather than through `serde_json::Value`'s sorted maps.

use crate::corpus::SplitMix64;
use opdbus_blockchain::chain::block::{Block, Caller, ZERO_HASH};
use opdbus_blockchain::footprint::PluginFootprint;
use std::collections::BTreeSet;

const NS: u64 = 1_000_000_000;

/// `n` footprints from `seed`, as a fleet's op-dbus daemons would record them.
pub fn footprints(seed: u64, n: usize) -> Vec<PluginFootprint> {
    let mut rng = SplitMix64(seed ^ 0x666c_6565_745f_6670);
    timeline(seed, n)
        .into_iter()
        .map(|now_ns| footprint(&mut rng, now_ns))
        .collect()
}

/// `n` blocks at heights 1..=n holding `footprints(seed, n)`, linked by `prev_hash` from a zero
/// hash; timestamps are the footprints' own clock, callers the plugin processes that sent them.
pub fn blocks(seed: u64, n: usize) -> Vec<Block> {
    let mut rng = SplitMix64(seed ^ 0x6361_6c6c_6572_7321);
    let mut processes = Processes::new(&mut rng);
    let mut prev = ZERO_HASH;
    footprints(seed, n)
        .into_iter()
        .zip(timeline(seed, n))
        .zip(1u64..)
        .map(|((fp, now_ns), height)| {
            let caller = processes.caller(&mut rng, &fp.plugin_id);
            let data = fp.data_json().to_owned();
            let block = Block::new(
                height,
                now_ns,
                prev,
                caller,
                fp.plugin_id,
                fp.operation,
                data,
            );
            prev = block.hash;
            block
        })
        .collect()
}

/// Strictly increasing nanosecond times: bursts a few ms apart, pauses of seconds to hours.
fn timeline(seed: u64, n: usize) -> Vec<u64> {
    let mut rng = SplitMix64(seed ^ 0x636c_6f63_6b00_0000);
    let mut now = (1_704_067_200 + rng.below(300 * 86_400)) * NS + rng.below(NS);
    (0..n)
        .map(|_| {
            now += match rng.below(100) {
                0..=54 => 300_000 + rng.below(40_000_000),
                55..=84 => NS + rng.below(59 * NS),
                85..=96 => 60 * NS + rng.below(840 * NS),
                _ => 900 * NS + rng.below(9_900 * NS),
            };
            now
        })
        .collect()
}

const PROCESS_UNITS: [&str; 4] = [
    "op-dbus.service",
    "op-dbus-plugin@network.service",
    "op-dbus-plugin@packages.service",
    "op-dbus-plugin@containers.service",
];

/// The op-dbus plugin processes: each keeps its pid and unique bus name until it restarts.
struct Processes {
    pids: [u32; 4],
    buses: [u32; 4],
    next_pid: u32,
    next_bus: u32,
}

impl Processes {
    fn new(rng: &mut SplitMix64) -> Self {
        let mut processes = Processes {
            pids: [0; 4],
            buses: [0; 4],
            next_pid: 600 + rng.below(2_000) as u32,
            next_bus: 8 + rng.below(60) as u32,
        };
        for slot in 0..PROCESS_UNITS.len() {
            (processes.pids[slot], processes.buses[slot]) = processes.spawn(rng);
        }
        processes
    }

    /// A new process: the next pid (wrapping at the kernel's pid_max) and unique bus name.
    fn spawn(&mut self, rng: &mut SplitMix64) -> (u32, u32) {
        self.next_pid += 1 + rng.below(4_000) as u32;
        if self.next_pid > 4_194_304 {
            self.next_pid = 300 + rng.below(1_000) as u32;
        }
        self.next_bus += 1 + rng.below(40) as u32;
        (self.next_pid, self.next_bus)
    }

    fn caller(&mut self, rng: &mut SplitMix64, plugin: &str) -> Caller {
        let roll = rng.below(1000);
        if roll < 20 {
            // An administrator running `op-dbus apply` from a login session.
            let (pid, bus) = self.spawn(rng);
            return Caller {
                uid: Some(1000 + rng.below(3) as u32),
                pid: Some(pid),
                bus_name: format!(":1.{bus}"),
                unit: format!("session-{}.scope", 3 + rng.below(400)),
            };
        }
        let slot = match plugin {
            "NetworkManager" | "systemd-networkd" | "nftables" => 1,
            "apt" | "users" | "mounts" | "certificates" => 2,
            "containers" => 3,
            _ => 0,
        };
        if roll < 35 {
            // The plugin process restarted (crash, upgrade, idle exit) before this change.
            (self.pids[slot], self.buses[slot]) = self.spawn(rng);
        }
        // Now and then the credentials lookup fails: the caller had already exited.
        let known = roll < 990;
        Caller {
            uid: known.then_some(0),
            pid: known.then_some(self.pids[slot]),
            bus_name: format!(":1.{}", self.buses[slot]),
            unit: if known { PROCESS_UNITS[slot] } else { "" }.to_owned(),
        }
    }
}

#[rustfmt::skip]
const HOSTS: [&str; 20] = [
    "web-01", "web-02", "db-01", "k8s-node-01", "web-03", "k8s-node-02", "ci-runner-01", "db-02",
    "cache-01", "k8s-node-03", "mon-01", "bastion-01", "edge-fra-1", "web-04", "ci-runner-02",
    "edge-ams-1", "build-01", "nas-01", "k8s-node-04", "dev-laptop-07",
];

/// A host's fixed facts, the same in every seed: the fleet does not change, its state does.
struct Host {
    name: &'static str,
    octet: u64,
    iface: &'static str,
    mac: String,
    machine_id: String,
    uses_nm: bool,
    kernel: &'static str,
}

fn host(rng: &mut SplitMix64) -> Host {
    let index = skewed(rng, HOSTS.len());
    let mut fixed = SplitMix64(0x686f_7374 ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let oui = one_of(&mut fixed, "3c:ec:ef 00:25:90 b4:96:91 52:54:00");
    let iface = one_of(&mut fixed, "eno1 enp3s0 ens18 enp0s31f6 eth0");
    let kernel = one_of(&mut fixed, "6.1.0-18-amd64 6.1.0-21-amd64 6.1.0-25-amd64");
    Host {
        name: HOSTS[index],
        octet: 10 + index as u64,
        iface,
        mac: format!("{oui}:{}", colon_hex(&mut fixed, 3, false)),
        machine_id: hex(&mut fixed, 16),
        uses_nm: index >= 12,
        kernel,
    }
}

type Generated = (&'static str, &'static str, Json);

fn footprint(rng: &mut SplitMix64, now_ns: u64) -> PluginFootprint {
    let h = host(rng);
    let (plugin, operation, data) = match rng.below(100) {
        0..=21 => systemd(rng, &h, now_ns),
        22..=35 if h.uses_nm => network_manager(rng, &h, now_ns),
        22..=35 => networkd(rng, &h),
        36..=43 => nftables(rng, &h),
        44..=53 => apt(rng, &h, now_ns),
        54..=61 => containers(rng, &h, now_ns),
        62..=66 => users(rng, &h),
        67..=71 => mounts(rng, &h),
        72..=78 => sysctl(rng, &h),
        79..=82 => certificates(rng, &h, now_ns),
        83..=86 => kernel_modules(rng, &h),
        87..=91 => timers(rng, now_ns),
        92..=94 => journald(rng, &h),
        _ => openssh(rng, &h),
    };
    PluginFootprint::from_json_text(plugin, operation, data.0)
        .expect("the fleet corpus writes valid JSON")
}

/// Units op-dbus manages: (name, main binary, Description).
#[rustfmt::skip]
const UNITS: [(&str, &str, &str); 12] = [
    ("nginx.service", "/usr/sbin/nginx", "A high performance web server and a reverse proxy server"),
    ("ssh.service", "/usr/sbin/sshd", "OpenBSD Secure Shell server"),
    ("docker.service", "/usr/bin/dockerd", "Docker Application Container Engine"),
    ("prometheus-node-exporter.service", "/usr/bin/prometheus-node-exporter", "Prometheus exporter for machine metrics"),
    ("postgresql@15-main.service", "/usr/bin/pg_ctlcluster", "PostgreSQL Cluster 15-main"),
    ("containerd.service", "/usr/bin/containerd", "containerd container runtime"),
    ("systemd-resolved.service", "/lib/systemd/systemd-resolved", "Network Name Resolution"),
    ("redis-server.service", "/usr/bin/redis-server", "Advanced key-value store"),
    ("kubelet.service", "/usr/bin/kubelet", "kubelet: The Kubernetes Node Agent"),
    ("chrony.service", "/usr/sbin/chronyd", "chrony, an NTP client/server"),
    ("haproxy.service", "/usr/sbin/haproxy", "HAProxy Load Balancer"),
    ("getty@tty1.service", "/sbin/agetty", "Getty on tty1"),
];

/// Operations on a unit: (operation, old and new ActiveState/SubState, job type).
#[rustfmt::skip]
const TRANSITIONS: [(&str, [&str; 2], [&str; 2], &str); 7] = [
    ("RestartUnit", ["active", "running"], ["active", "running"], "restart"),
    ("RestartUnit", ["active", "running"], ["active", "running"], "restart"),
    ("StartUnit", ["inactive", "dead"], ["active", "running"], "start"),
    ("StopUnit", ["active", "running"], ["inactive", "dead"], "stop"),
    ("ReloadUnit", ["active", "running"], ["active", "running"], "reload"),
    ("PropertiesChanged", ["active", "running"], ["failed", "failed"], ""),
    ("PropertiesChanged", ["failed", "failed"], ["activating", "auto-restart"], ""),
];

/// A unit's state change, or now and then its full property dump (a few KB).
fn systemd(rng: &mut SplitMix64, h: &Host, now_ns: u64) -> Generated {
    let (unit, exec, description) = UNITS[skewed(rng, UNITS.len())];
    let fragment = match unit.split_once('@') {
        Some((template, _)) => format!("/lib/systemd/system/{template}@.service"),
        None => format!("/lib/systemd/system/{unit}"),
    };
    let drop_ins: Vec<String> = ["override.conf", "50-opdbus-limits.conf"][..rng.below(3) as usize]
        .iter()
        .map(|file| format!("/etc/systemd/system/{unit}.d/{file}"))
        .collect();
    let (usec, pid) = (now_ns / 1000, 1_000 + rng.below(3_000_000));
    let memory = (8 << 20) + rng.below(900 << 20);
    let cpu_ns = rng.below(40_000 * NS);
    if rng.below(100) < 6 {
        let stem = unit.trim_end_matches(".service");
        let started = usec - rng.below(90 * 86_400_000_000);
        let argv = ja![exec, "--config", format!("/etc/{stem}/{stem}.conf")];
        let exec_start = jo! {
            "path": exec, "argv": argv, "ignore_errors": false, "start_time": started, "pid": pid,
            "code": "(null)", "status": 0u64,
        };
        let after = "network-online.target systemd-journald.socket basic.target".split(' ');
        let properties = jo! {
            "Type": "notify", "Restart": "on-failure", "PIDFile": "", "RestartUSec": 100_000u64,
            "TimeoutStartUSec": 90_000_000u64, "TimeoutStopUSec": 90_000_000u64, "WatchdogUSec": 0u64,
            "MainPID": pid, "ControlPID": 0u64, "StatusErrno": 0u64, "Result": "success",
            "NRestarts": rng.below(4), "ExecMainStartTimestamp": started, "ExecMainPID": pid,
            "ExecStart": ja![exec_start], "Slice": "system.slice", "ControlGroup": format!("/system.slice/{unit}"),
            "MemoryCurrent": memory, "MemoryPeak": memory + rng.below(200 << 20), "MemoryMax": u64::MAX,
            "MemoryHigh": u64::MAX, "CPUUsageNSec": cpu_ns, "TasksCurrent": 1 + rng.below(300), "TasksMax": 19_005u64,
            "IPIngressBytes": rng.below(1 << 40), "IPEgressBytes": rng.below(1 << 40),
            "IOReadBytes": rng.below(1 << 36), "IOWriteBytes": rng.below(1 << 38),
            "Delegate": false, "CPUAccounting": true, "CPUWeight": 100u64, "MemoryAccounting": true,
            "TasksAccounting": true, "IPAccounting": false,
            "Environment": ja!["LANG=C.UTF-8", format!("CONFIG_DIR=/etc/{stem}")],
            "UMask": 18u64, "LimitNOFILE": 524_288u64, "LimitNPROC": 63_348u64, "LimitCORE": u64::MAX,
            "OOMScoreAdjust": 0u64, "Nice": 0u64, "User": if stem == "nginx" { "www-data" } else { "" },
            "PrivateTmp": true, "PrivateDevices": false, "ProtectSystem": "full", "ProtectHome": "read-only",
            "NoNewPrivileges": rng.below(2) == 1, "CapabilityBoundingSet": 2_199_023_255_551u64,
            "KillMode": "mixed", "KillSignal": 15u64, "Id": unit, "Names": ja![unit],
            "Requires": ja!["system.slice", "sysinit.target"], "WantedBy": ja!["multi-user.target"],
            "After": arr(after), "Documentation": ja![format!("man:{stem}(8)")], "Description": description,
            "LoadState": "loaded", "ActiveState": "active", "SubState": "running",
            "FragmentPath": fragment, "DropInPaths": arr(&drop_ins), "UnitFileState": "enabled",
            "UnitFilePreset": "enabled", "StateChangeTimestamp": started, "ActiveEnterTimestamp": started,
            "ActiveEnterTimestampMonotonic": rng.below(1 << 42), "InvocationID": hex(rng, 16),
        };
        let data = jo! {"host": h.name, "unit": unit, "properties": properties};
        return ("systemd", "GetAll", data);
    }
    let (operation, from, to, job) = *pick(rng, &TRANSITIONS);
    let new = if to[1] == "running" {
        jo! {
            "ActiveState": to[0], "SubState": to[1], "ExecMainPID": pid, "MainPID": pid,
            "MemoryCurrent": memory, "CPUUsageNSec": cpu_ns, "TasksCurrent": 1 + rng.below(64),
            "NRestarts": rng.below(5), "StateChangeTimestamp": usec, "InvocationID": hex(rng, 16),
        }
    } else {
        // A stopped unit's memory is "[not set]", which systemd sends as u64::MAX.
        let codes: &[u64] = if to[0] == "failed" {
            &[1, 143, 203]
        } else {
            &[0]
        };
        let status = *pick(rng, codes);
        jo! {
            "ActiveState": to[0], "SubState": to[1], "ExecMainPID": 0u64, "MemoryCurrent": u64::MAX,
            "ExecMainStatus": status, "NRestarts": rng.below(5), "StateChangeTimestamp": usec,
        }
    };
    let mut fields = vec![("unit", unit.j())];
    if !job.is_empty() {
        let id = 1_000 + rng.below(90_000);
        fields.push(("job", jo! {"id": id, "type": job, "result": "done"}.j()));
    }
    fields.extend([
        ("old", jo! {"ActiveState": from[0], "SubState": from[1]}.j()),
        ("new", new.j()),
        ("FragmentPath", fragment.j()),
        ("DropInPaths", arr(&drop_ins).j()),
        ("machine_id", h.machine_id.j()),
    ]);
    ("systemd", operation, obj(&fields))
}

/// A NetworkManager connection profile, nested as the D-Bus settings API gives it.
fn network_manager(rng: &mut SplitMix64, h: &Host, now_ns: u64) -> Generated {
    let wifi = h.name.starts_with("dev-") && rng.below(2) == 0;
    let dns = ja!["10.20.0.53", one_of(rng, "1.1.1.1 9.9.9.9 10.20.0.54")];
    let ipv4 = if wifi {
        jo! {"method": "auto", "dns": dns, "ignore-auto-dns": true, "may-fail": true}
    } else {
        let address = format!("10.20.{}.{}", h.octet, 10 + rng.below(200));
        let routes = (0..rng.below(3)).map(|i| {
            jo! {
                "dest": format!("10.{}.0.0", 30 + i * 8), "prefix": 16u64,
                "next-hop": format!("10.20.{}.254", h.octet), "metric": 100 + i * 50,
            }
        });
        jo! {
            "method": "manual", "address-data": ja![jo! {"address": address, "prefix": 24u64}],
            "gateway": format!("10.20.{}.1", h.octet), "dns": dns,
            "dns-search": ja!["prod.example.net"], "route-data": arr(routes), "may-fail": false,
        }
    };
    let (id, kind, iface, link) = if wifi {
        let ssid = one_of(rng, "eduroam Office-5G Guest");
        let link = jo! {"ssid": ssid, "mode": "infrastructure", "mac-address-randomization": 2u64};
        (ssid, "802-11-wireless", "wlp0s20f3", link)
    } else {
        let mtu = *pick(rng, &[1500u64, 1500, 9000, 1420]);
        let link = jo! {"mac-address": h.mac, "mtu": mtu, "wake-on-lan": 1u64};
        ("Wired connection 1", "802-3-ethernet", h.iface, link)
    };
    let connection = jo! {
        "id": id, "uuid": uuid(rng), "type": kind, "interface-name": iface, "autoconnect": true,
        "autoconnect-priority": rng.below(3) * 10, "timestamp": now_ns / NS - rng.below(2_592_000),
    };
    let ipv6_method = one_of(rng, "auto ignore link-local");
    let ipv6 = jo! {"method": ipv6_method, "addr-gen-mode": "stable-privacy", "ip6-privacy": 2u64};
    let data = obj(&[
        ("connection", connection.j()),
        (kind, link.j()),
        ("ipv4", ipv4.j()),
        ("ipv6", ipv6.j()),
        ("proxy", "{}".into()),
    ]);
    let operation = one_of(rng, "Update2 AddAndActivateConnection Reapply");
    ("NetworkManager", operation, data)
}

/// A systemd-networkd `.network` file as parsed sections, with the link's state after reload.
fn networkd(rng: &mut SplitMix64, h: &Host) -> Generated {
    let v4 = format!("10.20.{}.{}/24", h.octet, 10 + rng.below(200));
    let v6 = format!(
        "2001:db8:{:x}::{:x}/64",
        0x100 + h.octet,
        1 + rng.below(0xfff)
    );
    let routes = (0..1 + rng.below(4)).map(|_| {
        jo! {
            "Destination": format!("172.{}.0.0/16", 16 + rng.below(16)),
            "Gateway": format!("10.20.{}.254", h.octet), "Metric": 256 + rng.below(4) * 128,
        }
    });
    let routes = arr(routes);
    let data = jo! {
        "File": format!("/etc/systemd/network/10-{}.network", h.iface),
        "Match": jo! {"Name": h.iface, "MACAddress": h.mac},
        "Link": jo! {"MTUBytes": *pick(rng, &[1500u64, 9000]), "RequiredForOnline": "routable"},
        "Network": jo! {
            "Address": ja![v4, v6], "Gateway": format!("10.20.{}.1", h.octet),
            "DNS": ja!["10.20.0.53", "10.20.0.54"], "Domains": "prod.example.net ~example.internal",
            "IPv6AcceptRA": rng.below(2) == 0, "LinkLocalAddressing": "ipv6",
        },
        "Route": routes,
        "State": jo! {
            "OperationalState": "routable", "CarrierState": "carrier",
            "RxBytes": rng.below(1 << 44), "TxBytes": rng.below(1 << 42), "IfIndex": 2u64,
        },
    };
    let operation = one_of(rng, "reconfigure reload apply");
    ("systemd-networkd", operation, data)
}

fn nft_match(op: &str, left: Json, right: impl J) -> Json {
    jo! {"match": jo! {"op": op, "left": left, "right": right}}
}

fn nft_field(protocol: &str, field: &str) -> Json {
    jo! {"payload": jo! {"protocol": protocol, "field": field}}
}

/// One rule as `nft -j` prints it: matches, a counter, a verdict.
fn nft_rule(rng: &mut SplitMix64, chain: &str, handle: u64) -> Json {
    let (saddr, dport) = (nft_field("ip", "saddr"), nft_field("tcp", "dport"));
    let mut expr = match rng.below(6) {
        0 => {
            let state = jo! {"ct": jo! {"key": "state"}};
            vec![nft_match("in", state, ja!["established", "related"])]
        }
        1 => vec![nft_match("==", jo! {"meta": jo! {"key": "iifname"}}, "lo")],
        2 => {
            let internal = jo! {"prefix": jo! {"addr": "10.20.0.0", "len": 16u64}};
            let port = *pick(rng, &[22u64, 9100, 5432, 6379]);
            vec![
                nft_match("==", saddr, internal),
                nft_match("==", dport, port),
            ]
        }
        3 => vec![nft_match("==", dport, jo! {"set": ja![80u64, 443u64]})],
        4 => vec![nft_match("==", saddr, "@blocklist_v4")],
        _ => {
            let port = *pick(rng, &[51_820u64, 123, 53]);
            vec![nft_match("==", nft_field("udp", "dport"), port)]
        }
    };
    let packets = rng.below(1 << 30);
    let bytes = packets * (60 + rng.below(1400));
    expr.push(jo! {"counter": jo! {"packets": packets, "bytes": bytes}});
    expr.push(match rng.below(8) {
        0 => jo! {"drop": Null},
        1 => jo! {"log": jo! {"prefix": "nft-drop: ", "level": "info"}},
        _ => jo! {"accept": Null},
    });
    jo! {"rule": jo! {
        "family": "inet", "table": "filter", "chain": chain, "handle": handle, "expr": arr(expr),
    }}
}

/// One rule added, deleted or replaced, or now and then the whole ruleset (several KB).
fn nftables(rng: &mut SplitMix64, h: &Host) -> Generated {
    let meta =
        jo! {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1u64};
    let mut items = vec![jo! {"metainfo": meta}];
    if rng.below(100) < 12 {
        items.push(jo! {"table": jo! {"family": "inet", "name": "filter", "handle": 1u64}});
        let hooks = [("input", "drop"), ("forward", "drop"), ("output", "accept")];
        for (handle, (hook, policy)) in (1u64..).zip(hooks) {
            items.push(jo! {"chain": jo! {
                "family": "inet", "table": "filter", "name": hook, "handle": handle,
                "type": "filter", "hook": hook, "prio": 0u64, "policy": policy,
            }});
        }
        // Blocked networks, as the abuse feeds list them.
        let elements: Vec<String> = (0..rng.below(12))
            .map(|_| rng.below(1 << 24))
            .map(|n| format!("{}.{}.{}.0/24", 1 + (n >> 16) % 223, n >> 8 & 255, n & 255))
            .collect();
        items.push(jo! {"set": jo! {
            "family": "inet", "name": "blocklist_v4", "table": "filter", "type": "ipv4_addr",
            "handle": 4u64, "flags": ja!["interval"], "elem": arr(&elements),
        }});
        for handle in 5..13 + rng.below(24) {
            let chain = if handle % 5 == 4 { "forward" } else { "input" };
            items.push(nft_rule(rng, chain, handle));
        }
        let data = jo! {"host": h.name, "nftables": arr(items)};
        return ("nftables", "replace-ruleset", data);
    }
    let chain = one_of(rng, "input input forward output");
    let handle = 4 + rng.below(400);
    items.push(nft_rule(rng, chain, handle));
    let operation = one_of(rng, "add-rule add-rule delete-rule replace-rule");
    ("nftables", operation, jo! {"nftables": arr(items)})
}

/// Debian packages with three successive versions; the first nine are never removed.
#[rustfmt::skip]
const PACKAGES: [(&str, &str, [&str; 3]); 14] = [
    ("libc6", "amd64", ["2.36-9+deb12u4", "2.36-9+deb12u7", "2.36-9+deb12u9"]),
    ("openssl", "amd64", ["3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "3.0.15-1~deb12u1"]),
    ("openssh-server", "amd64", ["1:9.2p1-2+deb12u2", "1:9.2p1-2+deb12u3", "1:9.2p1-2+deb12u5"]),
    ("systemd", "amd64", ["252.22-1~deb12u1", "252.26-1~deb12u2", "252.30-1~deb12u2"]),
    ("curl", "amd64", ["7.88.1-10+deb12u5", "7.88.1-10+deb12u7", "7.88.1-10+deb12u8"]),
    ("util-linux", "amd64", ["2.38.1-5+b1", "2.38.1-5+deb12u1", "2.38.1-5+deb12u3"]),
    ("tzdata", "all", ["2024a-0+deb12u1", "2024b-0+deb12u1", "2025b-0+deb12u1"]),
    ("libgnutls30", "amd64", ["3.7.9-2+deb12u2", "3.7.9-2+deb12u3", "3.7.9-2+deb12u4"]),
    ("ca-certificates", "all", ["20230311", "20230311+deb12u1", "20230311+deb12u1"]),
    ("docker-ce", "amd64", ["5:24.0.7-1~debian.12~bookworm", "5:26.1.4-1~debian.12~bookworm", "5:27.3.1-1~debian.12~bookworm"]),
    ("postgresql-15", "amd64", ["15.6-0+deb12u1", "15.8-0+deb12u1", "15.10-0+deb12u1"]),
    ("nginx", "amd64", ["1.22.1-9", "1.22.1-9+deb12u1", "1.22.1-9+deb12u2"]),
    ("python3.11", "amd64", ["3.11.2-6", "3.11.2-6+deb12u1", "3.11.2-6+deb12u5"]),
    ("vim-tiny", "amd64", ["2:9.0.1378-2", "2:9.0.1378-2+deb12u1", "2:9.0.1378-2+deb12u2"]),
];

/// An apt transaction; a point-release upgrade now and then touches dozens of packages.
fn apt(rng: &mut SplitMix64, h: &Host, now_ns: u64) -> Generated {
    let action = one_of(rng, "upgrade upgrade upgrade install remove");
    let count = match (action, rng.below(100)) {
        ("upgrade", 0..=9) => 10 + rng.below(30),
        ("remove", _) => 1,
        _ => 1 + rng.below(4),
    };
    let packages = (0..count).map(|_| {
        let index = match action {
            "remove" => 9 + rng.below(5) as usize,
            _ => skewed(rng, PACKAGES.len()),
        };
        let (name, arch, versions) = PACKAGES[index];
        let step = rng.below(2) as usize;
        let mut fields = vec![("package", name.j()), ("architecture", arch.j())];
        match action {
            "upgrade" => {
                fields.extend([("from", versions[step].j()), ("to", versions[step + 1].j())])
            }
            "install" => fields.push(("version", versions[2].j())),
            _ => fields.push(("version", versions[step].j())),
        }
        fields.push(("installed_size_kib", (20 + rng.below(60_000)).j()));
        if action != "remove" {
            fields.push(("deb_sha256", hex(rng, 32).j()));
        }
        obj(&fields)
    });
    let packages = arr(packages);
    let download = if action == "remove" {
        0
    } else {
        rng.below(200 << 20)
    };
    let start = now_ns / NS - 5 - rng.below(600);
    let mut fields = vec![
        ("transaction", (1_000 + rng.below(9_000)).j()),
        ("hostname", h.name.j()),
        ("command_line", format!("apt-get -y {action}").j()),
        ("requested_by", "op-dbus (uid 0)".j()),
    ];
    if action == "upgrade" {
        fields.push(("origin", "Debian-Security:12/stable-security".j()));
    }
    fields.extend([
        ("start", rfc3339(start).j()),
        ("packages", packages.j()),
        ("download_bytes", download.j()),
        ("end", rfc3339(now_ns / NS).j()),
        ("exit_status", 0u64.j()),
    ]);
    ("apt", action, obj(&fields))
}

/// Images: (repository, tag, the version variable its Dockerfile sets, exposed port).
#[rustfmt::skip]
const IMAGES: [(&str, &str, &str, u64); 6] = [
    ("docker.io/library/nginx", "1.25.4", "NGINX_VERSION", 80),
    ("quay.io/prometheus/node-exporter", "v1.7.0", "NODE_EXPORTER_VERSION", 9100),
    ("docker.io/library/postgres", "16.2", "PG_VERSION", 5432),
    ("docker.io/library/redis", "7.2.4-alpine", "REDIS_VERSION", 6379),
    ("docker.io/grafana/loki", "2.9.4", "LOKI_VERSION", 3100),
    ("docker.io/library/traefik", "v2.11.0", "TRAEFIK_VERSION", 8080),
];

/// An image pull, or a container's `docker inspect` after create, start or stop.
fn containers(rng: &mut SplitMix64, h: &Host, now_ns: u64) -> Generated {
    let index = skewed(rng, IMAGES.len());
    let (image, tag, env, port) = IMAGES[index];
    // An image's digest is its content: the same on every host and in every seed.
    let digest = hex(&mut SplitMix64(0x696d_6167 + index as u64), 32);
    let digest = format!("sha256:{digest}");
    let (operation, status) = match rng.below(4) {
        0 => ("start", "running"),
        1 => ("create", "created"),
        2 => ("stop", "exited"),
        _ => ("pull", ""),
    };
    if status.is_empty() {
        let layers = (0..2 + rng.below(8)).map(|_| format!("sha256:{}", hex(rng, 32)));
        let layers = arr(layers);
        let size = (5 << 20) + rng.below(400 << 20);
        let data = jo! {"Image": format!("{image}:{tag}"), "Digest": digest, "Layers": layers, "Size": size};
        return ("containers", operation, data);
    }
    let service = image.rsplit('/').next().unwrap_or(image);
    let pid = (status == "running").then(|| 2_000 + rng.below(2_000_000));
    let started = match status {
        "created" => "0001-01-01T00:00:00Z".to_owned(),
        _ => rfc3339(now_ns / NS),
    };
    let created = rfc3339(now_ns / NS - rng.below(86_400 * 60));
    let created = format!("{}.{:09}Z", &created[..19], rng.below(NS));
    let labels = jo! {
        "com.docker.compose.project": one_of(rng, "monitoring app edge"),
        "com.docker.compose.service": service, "com.docker.compose.container-number": "1",
        "com.docker.compose.config-hash": hex(rng, 32), "com.docker.compose.version": "2.24.6",
        "org.opencontainers.image.source": format!("https://{image}"),
    };
    let path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let config = jo! {
        "Hostname": hex(rng, 6), "Image": format!("{image}:{tag}"),
        "Env": ja![path, format!("{env}={tag}"), format!("HOST_NAME={}", h.name)], "Labels": labels,
    };
    let binding = jo! {"HostIp": "0.0.0.0", "HostPort": (port + rng.below(3)).to_string()};
    let exposed = format!("{port}/tcp");
    let host_config = jo! {
        "RestartPolicy": jo! {"Name": "unless-stopped", "MaximumRetryCount": 0u64},
        "PortBindings": obj(&[(exposed.as_str(), ja![binding].j())]), "Memory": rng.below(8) << 28,
    };
    let state = jo! {
        "Status": status, "Running": status == "running", "Pid": pid.unwrap_or(0), "ExitCode": 0u64,
        "StartedAt": started,
    };
    let data = jo! {
        "Id": hex(rng, 32), "Created": created, "Name": format!("/{service}-1"), "Image": digest,
        "State": state, "Config": config, "HostConfig": host_config,
    };
    ("containers", operation, data)
}

#[rustfmt::skip]
const PEOPLE: [(&str, &str); 6] = [
    ("alice", "Alice Martin"), ("bob", "Bob Okafor"), ("deploy", "Deploy user"),
    ("backup", "Backups"), ("carol", "Carol Nguyen"), ("svc-ci", "CI runner"),
];

/// An account change: passwd and shadow fields (no hashes) and supplementary groups.
fn users(rng: &mut SplitMix64, h: &Host) -> Generated {
    let index = skewed(rng, PEOPLE.len());
    let (name, gecos) = PEOPLE[index];
    let uid = 1000 + index as u64;
    let all = "sudo adm docker systemd-journal ssl-cert www-data";
    let groups: BTreeSet<&str> = (0..rng.below(5)).map(|_| one_of(rng, all)).collect();
    let shell = one_of(rng, "/bin/bash /bin/bash /usr/bin/zsh /usr/sbin/nologin");
    let passwd = jo! {
        "uid": uid, "gid": uid, "gecos": format!("{gecos},,,"), "home": format!("/home/{name}"),
        "shell": shell,
    };
    let shadow = jo! {
        "last_change_days": 19_700 + rng.below(400), "min": 0u64, "max": 99_999u64, "warn": 7u64,
        "inactive": Null, "expire": Null, "locked": rng.below(20) == 0,
    };
    let groups = arr(groups);
    let data =
        jo! {"user": name, "host": h.name, "passwd": passwd, "groups": groups, "shadow": shadow};
    let operation = one_of(rng, "usermod usermod useradd gpasswd");
    ("users", operation, data)
}

/// Mount points: (target, fstype, options, device).
#[rustfmt::skip]
const MOUNTS: [(&str, &str, &str, &str); 5] = [
    ("/srv/data", "xfs", "rw,noatime,inode64,logbufs=8,logbsize=256k", "/dev/nvme1n1p1"),
    ("/var/lib/docker", "ext4", "rw,relatime,errors=remount-ro", "/dev/sdb1"),
    ("/home", "btrfs", "rw,noatime,compress=zstd:3,ssd,space_cache=v2,subvol=/@home", "/dev/nvme0n1p3"),
    ("/mnt/backups", "nfs4", "rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,hard,proto=tcp,timeo=600,retrans=2,sec=sys", ""),
    ("/tmp", "tmpfs", "rw,nosuid,nodev,size=4194304k,nr_inodes=1048576,inode64", ""),
];

fn mounts(rng: &mut SplitMix64, h: &Host) -> Generated {
    let index = skewed(rng, MOUNTS.len());
    let (target, fstype, options, device) = MOUNTS[index];
    let source = match fstype {
        "nfs4" => "nas-01:/export/backups".to_owned(),
        "tmpfs" => "tmpfs".to_owned(),
        _ => format!(
            "UUID={}",
            uuid(&mut SplitMix64(h.octet * 31 + index as u64))
        ),
    };
    let size = if fstype == "tmpfs" {
        4 << 30
    } else {
        (8 + rng.below(4_000)) << 30
    };
    let unit = format!("{}.mount", target.trim_start_matches('/').replace('/', "-"));
    let data = jo! {
        "target": target, "source": source, "fstype": fstype, "options": options, "dump": 0u64,
        "passno": if device.is_empty() { 0u64 } else { 2 }, "device": device, "mount_unit": unit,
        "size_bytes": size, "used_bytes": rng.below(size), "inodes_free": rng.below(1 << 28),
    };
    let operation = one_of(rng, "fstab-update mount remount mount");
    ("mounts", operation, data)
}

/// sysctl keys and the values administrators set them to.
#[rustfmt::skip]
const SYSCTL: [(&str, &[&str]); 10] = [
    ("net.ipv4.ip_forward", &["0", "1"]),
    ("vm.swappiness", &["60", "10", "1"]),
    ("net.core.somaxconn", &["4096", "65535"]),
    ("fs.inotify.max_user_watches", &["65536", "524288", "1048576"]),
    ("net.ipv4.tcp_congestion_control", &["cubic", "bbr"]),
    ("vm.max_map_count", &["65530", "262144"]),
    ("net.ipv4.conf.all.rp_filter", &["0", "1", "2"]),
    ("net.core.rmem_max", &["212992", "16777216"]),
    ("net.ipv4.tcp_rmem", &["4096\t131072\t6291456", "4096\t87380\t16777216"]),
    ("kernel.kptr_restrict", &["0", "1", "2"]),
];

fn sysctl(rng: &mut SplitMix64, h: &Host) -> Generated {
    let changes = (0..1 + rng.below(4)).map(|_| {
        let (key, values) = SYSCTL[skewed(rng, SYSCTL.len())];
        let len = values.len() as u64;
        let old = rng.below(len);
        let new = (old + 1 + rng.below(len - 1)) % len;
        jo! {"key": key, "old": values[old as usize], "new": values[new as usize]}
    });
    let changes = arr(changes);
    let file = "/etc/sysctl.d/90-opdbus.conf";
    let data = jo! {"file": file, "changes": changes, "applied": true, "kernel": h.kernel};
    ("sysctl", "apply", data)
}

/// Issuers: (issuer DN, validity in days, public key).
#[rustfmt::skip]
const ISSUERS: [(&str, u64, &str); 3] = [
    ("C=US, O=Let's Encrypt, CN=R11", 90, "rsaEncryption 2048 bit"),
    ("C=US, O=Let's Encrypt, CN=E6", 90, "id-ecPublicKey prime256v1"),
    ("C=DE, O=Example Corp, CN=Example Internal CA 2023", 365, "id-ecPublicKey secp384r1"),
];

fn certificates(rng: &mut SplitMix64, h: &Host, now_ns: u64) -> Generated {
    let fqdn = format!("{}.prod.example.net", h.name);
    let (issuer, days, key) = *pick(rng, &ISSUERS);
    let not_before = now_ns / NS - rng.below(3_600);
    let names = ja![
        format!("DNS:{fqdn}"),
        format!("DNS:{}.example.internal", h.name)
    ];
    let reload = one_of(rng, "nginx.service haproxy.service postfix.service");
    let data = jo! {
        "path": format!("/etc/ssl/opdbus/{}.crt", h.name), "subject": format!("CN={fqdn}"),
        "issuer": issuer, "serial": hex(rng, 18).to_uppercase(), "not_before": rfc3339(not_before),
        "not_after": rfc3339(not_before + days * 86_400 - 1), "subject_alt_names": names,
        "public_key": key, "sha256_fingerprint": colon_hex(rng, 32, true), "chain_length": 2u64,
        "reload_units": ja![reload],
    };
    let operation = one_of(rng, "renew renew renew install");
    ("certificates", operation, data)
}

/// Modules: (name, size, the modules using it).
#[rustfmt::skip]
const MODULES: [(&str, u64, &[&str]); 6] = [
    ("wireguard", 118_784, &["ipv6"]),
    ("br_netfilter", 32_768, &["bridge"]),
    ("overlay", 200_704, &[]),
    ("nf_conntrack", 204_800, &["nf_nat", "xt_conntrack", "nf_conntrack_netlink"]),
    ("kvm_intel", 380_928, &["kvm"]),
    ("tcp_bbr", 20_480, &[]),
];

fn kernel_modules(rng: &mut SplitMix64, h: &Host) -> Generated {
    let index = skewed(rng, MODULES.len());
    let (name, size, used_by) = MODULES[index];
    // srcversion and the signing key belong to the module build, not to the seed.
    let mut fixed = SplitMix64(0x6b6d_6f64 + index as u64);
    let parameters = match name {
        "nf_conntrack" => {
            jo! {"hashsize": *pick(rng, &[65_536u64, 262_144]), "expect_hashsize": 1024u64}
        }
        "kvm_intel" => jo! {"nested": one_of(rng, "Y N"), "enable_apicv": "Y"},
        _ => jo! {},
    };
    let data = jo! {
        "module": name, "size": size, "refcnt": rng.below(6), "used_by": arr(used_by),
        "srcversion": hex(&mut fixed, 12).to_uppercase(),
        "vermagic": format!("{} SMP preempt mod_unload modversions", h.kernel),
        "signer": "Debian Secure Boot CA", "sig_key": colon_hex(&mut fixed, 20, true),
        "parameters": parameters, "persist": format!("/etc/modules-load.d/{name}.conf"),
    };
    ("kernel-modules", one_of(rng, "load load unload"), data)
}

/// Timers: (unit, OnCalendar, RandomizedDelaySec).
#[rustfmt::skip]
const TIMERS: [(&str, &str, &str); 6] = [
    ("apt-daily.timer", "*-*-* 6,18:00", "12h"),
    ("apt-daily-upgrade.timer", "*-*-* 6:00", "60m"),
    ("logrotate.timer", "daily", "1h"),
    ("fstrim.timer", "weekly", "100min"),
    ("backup-pg.timer", "*-*-* 02:30:00", "15m"),
    ("certbot.timer", "*-*-* 00,12:00:00", "12h"),
];

fn timers(rng: &mut SplitMix64, now_ns: u64) -> Generated {
    let (timer, calendar, delay) = *pick(rng, &TIMERS);
    let usec = now_ns / 1000;
    let data = jo! {
        "Id": timer, "Unit": timer.replace(".timer", ".service"), "OnCalendar": calendar,
        "RandomizedDelaySec": delay, "Persistent": true, "AccuracyUSec": 60_000_000u64,
        "LastTriggerUSec": usec - rng.below(86_400_000_000),
        "NextElapseUSecRealtime": usec + rng.below(86_400_000_000),
        "Result": one_of(rng, "success success success exit-code"),
    };
    let operation = one_of(rng, "enable set-properties set-properties");
    ("timers", operation, data)
}

#[rustfmt::skip]
const JOURNALD: [(&str, &str); 8] = [
    ("Storage", "persistent"), ("Compress", "yes"), ("SystemMaxUse", "4G"), ("SystemKeepFree", "1G"),
    ("MaxRetentionSec", "1month"), ("RateLimitIntervalSec", "30s"), ("RateLimitBurst", "10000"),
    ("ForwardToSyslog", "no"),
];

fn journald(rng: &mut SplitMix64, h: &Host) -> Generated {
    let chosen: Vec<(&str, String)> = JOURNALD
        .iter()
        .filter(|_| rng.below(3) > 0)
        .map(|(k, v)| (*k, v.j()))
        .collect();
    let data = jo! {
        "file": "/etc/systemd/journald.conf.d/50-opdbus.conf", "settings": obj(&chosen),
        "disk_usage_bytes": rng.below(4 << 30), "journal_files": 4 + rng.below(60),
        "boot_id": hex(rng, 16), "machine_id": h.machine_id,
    };
    ("journald", "set", data)
}

#[rustfmt::skip]
const SSHD: [(&str, &str); 8] = [
    ("PasswordAuthentication", "no"), ("PermitRootLogin", "prohibit-password"),
    ("KbdInteractiveAuthentication", "no"), ("X11Forwarding", "no"),
    ("AllowGroups", "sudo ssh-users"), ("MaxAuthTries", "3"), ("ClientAliveInterval", "300"),
    ("KexAlgorithms", "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org"),
];

fn openssh(rng: &mut SplitMix64, h: &Host) -> Generated {
    let chosen: Vec<Json> = SSHD
        .iter()
        .filter(|_| rng.below(2) == 0)
        .map(|(keyword, value)| jo! {"keyword": keyword, "value": value})
        .collect();
    // The host keys never change: their fingerprints come from the host, not the seed.
    let mut fixed = SplitMix64(h.octet ^ 0x7373_6868);
    let keys = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
        .map(|kind| jo! {"type": kind, "fingerprint": format!("SHA256:{}", base64ish(&mut fixed))});
    let data = jo! {
        "file": "/etc/ssh/sshd_config.d/40-opdbus.conf", "directives": arr(chosen),
        "sshd_test": "ok", "reloaded_pid": 500 + rng.below(5_000), "host_keys": arr(keys),
    };
    ("openssh", one_of(rng, "set-directives reload"), data)
}

/// JSON text, as opposed to a `String`, which [`J`] writes as a JSON string.
struct Json(String);

/// JSON `null`.
struct Null;

/// A value's JSON text.
trait J {
    fn j(&self) -> String;
}
impl<T: J + ?Sized> J for &T {
    fn j(&self) -> String {
        (**self).j()
    }
}
impl J for str {
    fn j(&self) -> String {
        serde_json::Value::String(self.to_owned()).to_string()
    }
}
impl J for String {
    fn j(&self) -> String {
        self.as_str().j()
    }
}
impl J for Json {
    fn j(&self) -> String {
        self.0.clone()
    }
}
impl J for Null {
    fn j(&self) -> String {
        "null".to_owned()
    }
}
impl J for u64 {
    fn j(&self) -> String {
        self.to_string()
    }
}
impl J for bool {
    fn j(&self) -> String {
        self.to_string()
    }
}

/// An object with its fields in the order written (`serde_json::json!` would sort them).
macro_rules! jo {
    ($($key:literal: $value:expr),* $(,)?) => {
        obj(&[$(($key, ($value).j())),*])
    };
}

/// An array of the values written.
macro_rules! ja {
    ($($value:expr),* $(,)?) => {
        Json(format!("[{}]", [$(($value).j()),*].join(",")))
    };
}
use {ja, jo};

/// An object from fields whose values are JSON text.
fn obj(fields: &[(&str, String)]) -> Json {
    let body: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", key.j()))
        .collect();
    Json(format!("{{{}}}", body.join(",")))
}

fn arr<T: J>(items: impl IntoIterator<Item = T>) -> Json {
    let items: Vec<String> = items.into_iter().map(|item| item.j()).collect();
    Json(format!("[{}]", items.join(",")))
}

/// One of the space-separated words of `words`.
fn one_of(rng: &mut SplitMix64, words: &'static str) -> &'static str {
    let words: Vec<&'static str> = words.split(' ').collect();
    words[rng.below(words.len() as u64) as usize]
}

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

/// An index below `n`, the low ones far more often (the busy hosts, the common units).
fn skewed(rng: &mut SplitMix64, n: usize) -> usize {
    rng.below(n as u64).min(rng.below(n as u64)) as usize
}

fn hex(rng: &mut SplitMix64, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.below(256)))
        .collect()
}

fn colon_hex(rng: &mut SplitMix64, bytes: usize, upper: bool) -> String {
    let pairs: Vec<String> = (0..bytes)
        .map(|_| format!("{:02x}", rng.below(256)))
        .collect();
    let text = pairs.join(":");
    if upper {
        text.to_uppercase()
    } else {
        text
    }
}

/// A version 4 UUID.
fn uuid(rng: &mut SplitMix64) -> String {
    let h = hex(rng, 16);
    let variant = *pick(rng, &['8', '9', 'a', 'b']);
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..]
    )
}

/// 32 bytes in unpadded base64, as OpenSSH prints fingerprints (43 characters).
fn base64ish(rng: &mut SplitMix64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text: String = (0..42).map(|_| char::from(*pick(rng, ALPHABET))).collect();
    text.push(char::from(*pick(rng, b"AEIMQUYcgkosw048")));
    text
}

/// UTC seconds since the epoch in RFC 3339 (days to date by Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (hour, minute, second) = (rem / 3_600, rem / 60 % 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opdbus_blockchain::footprint::DEFAULT_MAX_DATA_BYTES;
    use std::collections::BTreeMap;

    #[test]
    fn corpus_fleet_is_deterministic_valid_and_linked() {
        assert_eq!(rfc3339(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_825_599), "2000-02-29T11:59:59Z");
        assert_eq!(footprints(7, 300), footprints(7, 300));
        assert_ne!(footprints(7, 300), footprints(8, 300));

        let corpus = footprints(42, 2000);
        let mut plugins = BTreeMap::<&str, usize>::new();
        for fp in &corpus {
            if let Err(err) = fp.validate(DEFAULT_MAX_DATA_BYTES) {
                panic!(
                    "{} {}: {err}\n{}",
                    fp.plugin_id,
                    fp.operation,
                    fp.data_json()
                );
            }
            *plugins.entry(&fp.plugin_id).or_default() += 1;
        }
        assert_eq!(plugins.len(), 14, "every plugin appears: {plugins:?}");
        let mut sizes: Vec<usize> = corpus.iter().map(|fp| fp.data_json().len()).collect();
        sizes.sort_unstable();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        eprintln!(
            "corpus_fleet: 2000 footprints, mean data {mean} bytes, median {}, p99 {}, largest {}",
            sizes[1000], sizes[1980], sizes[1999]
        );
        eprintln!("corpus_fleet: {plugins:?}");

        let chain = blocks(42, 500);
        assert_eq!(chain, blocks(42, 500));
        assert_eq!(chain[0].prev_hash, ZERO_HASH);
        for (i, (block, fp)) in chain.iter().zip(footprints(42, 500)).enumerate() {
            assert_eq!(block.height, i as u64 + 1);
            assert_eq!(
                (block.plugin.as_str(), block.data.as_str()),
                (fp.plugin_id.as_str(), fp.data_json())
            );
            if i > 0 {
                assert_eq!(block.prev_hash, chain[i - 1].hash);
                assert!(block.timestamp_ns > chain[i - 1].timestamp_ns);
            }
        }
    }
}
