//! The bench's report: every figure as a table row (with what it is compared with, the ratio
//! and the target) and as a key of the flat JSON object.

use super::measure::{Cpu, Sample, BATCH};
use super::transparency_ab::{median, Comparison};
use super::wakeups::{key_of, Wakeups};
use super::{cpus, Plan, Samples, AT_16, CLIENTS, SEED_WRITE_RATE, TASKS};
use serde_json::{json, Map, Value};

/// What is measured once per run, outside the rounds.
pub(super) struct Extra {
    pub stream: Sample,
    pub hot_inproc: Sample,
    pub cold_dbus: Sample,
    pub cold_inproc: Sample,
    pub skewed: Sample,
    /// Hot-tier hit rate of the block cache (plain LRU, a tenth of the data) on the skewed mix.
    pub skewed_hit_rate: f64,
    pub filesystem: String,
    pub load_before: String,
    pub btrfs: bool,
    pub transparency: Comparison,
    /// Whether the daemon answers AddFootprints (an older one does not).
    pub batches: bool,
}

/// One line of the table: a figure, and what it is compared with.
struct Row {
    label: String,
    value: f64,
    unit: &'static str,
    against: Option<(String, f64)>,
    target: &'static str,
    /// Shown in the "compared with" column when there is no comparison.
    note: String,
}

pub(super) struct Figures {
    rows: Vec<Row>,
    pub json: Map<String, Value>,
    header: String,
}

impl Figures {
    pub(super) fn new(plan: &Plan, s: Samples, x: Extra) -> Figures {
        let mut f = Figures {
            rows: Vec::new(),
            json: Map::new(),
            header: String::new(),
        };
        let fsync_rate = s.fsync.rate();
        let fsync_p50 = s.fsync.p50_us();
        let empty_p50 = s.empty[0].p50_us();

        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let durable_p50 = s.durable[0].p50_us();
        f.put("empty_call_p50_us", empty_p50);
        f.put("empty_call_p99_us", s.empty[0].p99_us());
        f.put("fdatasync_rate", fsync_rate);
        f.put("fdatasync_p50_us", fsync_p50);
        f.put("fdatasync_p99_us", s.fsync.p99_us());
        for (i, n) in CLIENTS.into_iter().enumerate() {
            f.put(&format!("empty_call_rate_{n}"), s.empty[i].rate());
            f.put(&format!("durable_floor_rate_{n}"), s.durable[i].rate());
            f.put(&format!("durable_floor_p50_us_{n}"), s.durable[i].p50_us());
            f.put(&format!("durable_floor_p99_us_{n}"), s.durable[i].p99_us());
            f.put(
                &format!("ratio_add_footprint_rate_{n}_to_durable_floor"),
                ratio(s.add[i].rate(), s.durable[i].rate()),
            );
            f.put(&format!("add_footprint_rate_{n}"), s.add[i].rate());
            f.put(&format!("add_footprint_p50_us_{n}"), s.add[i].p50_us());
            f.put(&format!("add_footprint_p99_us_{n}"), s.add[i].p99_us());
        }
        f.put("add_footprint_p50_us", s.add[0].p50_us());
        f.put("add_footprint_p99_us", s.add[0].p99_us());
        f.put("durable_floor_p50_us", durable_p50);
        f.put("durable_floor_p99_us", s.durable[0].p99_us());
        f.put(
            "ratio_add_footprint_p50_to_durable_floor",
            ratio(s.add[0].p50_us(), durable_p50),
        );
        f.put("add_footprints_batch_rate_16", s.batch.rate());
        f.put("add_footprints_batch_p50_us_16", s.batch.p50_us());
        f.put("add_footprints_batch_size", BATCH as f64);
        f.put(
            "ratio_add_footprints_batch_rate_16_to_add_footprint",
            ratio(s.batch.rate(), s.add[AT_16].rate()),
        );
        f.put("add_footprint_rate_16_subscribed", s.subscribed.rate());
        f.put(
            "ratio_add_footprint_rate_16_subscribed_to_durable_floor",
            ratio(s.subscribed.rate(), s.durable[AT_16].rate()),
        );
        f.put(
            "block_added_signals_per_footprint_subscribed",
            ratio(s.subscribed_signals as f64, s.subscribed.ops as f64),
        );
        let (libdbus_add, libdbus_durable) = (s.libdbus_add.rate(), s.libdbus_durable.rate());
        f.put("independent_client_add_footprint_rate_16", libdbus_add);
        f.put("independent_client_durable_floor_rate_16", libdbus_durable);
        f.put(
            "ratio_independent_client_add_footprint_rate_16_to_durable_floor",
            ratio(libdbus_add, libdbus_durable),
        );
        f.put(
            "independent_client_add_footprint_p50_us_16",
            s.libdbus_add.p50_us(),
        );
        f.put(
            "independent_client_durable_floor_p50_us_16",
            s.libdbus_durable.p50_us(),
        );
        f.wakeups("", &s.add_wakeups, s.add[AT_16].ops);
        f.wakeups("durable_floor_", &s.durable_wakeups, s.durable[AT_16].ops);
        if x.batches {
            f.wakeups("add_footprints_batch_", &s.batch_wakeups, s.batch.ops);
        }
        for (i, n) in TASKS.into_iter().enumerate() {
            f.put(&format!("inprocess_add_rate_{n}"), s.inproc[i].rate());
            f.put(&format!("inprocess_add_p50_us_{n}"), s.inproc[i].p50_us());
            f.put(
                &format!("inprocess_group_size_{n}"),
                s.inproc[i].group_size(),
            );
            f.put(&format!("sqlite_rate_{n}"), s.sqlite[i].rate());
            f.put(&format!("sqlite_p50_us_{n}"), s.sqlite[i].p50_us());
        }
        f.put("inprocess_add_rate_16_numa_on", s.numa_on.rate());
        f.put("inprocess_add_rate_16_numa_off", s.numa_off.rate());
        f.put("inprocess_stream_rate", x.stream.rate());
        f.put("inprocess_stream_group_size", x.stream.group_size());
        f.put("file_per_block_rate_16", s.files.rate());
        f.put("file_per_block_p50_us_16", s.files.p50_us());
        f.put("get_block_hot_p50_us_dbus", s.hot_dbus.p50_us());
        f.put("get_block_hot_empty_call_p50_us", s.empty_seq.p50_us());
        f.put("get_block_hot_ping_p50_us", s.ping_seq.p50_us());
        f.put("get_block_hot_p50_us_inprocess", x.hot_inproc.p50_us());
        f.put("get_block_cold_p50_us_dbus", x.cold_dbus.p50_us());
        f.put("get_block_cold_reads", x.cold_dbus.ops as f64);
        f.put("get_block_cold_p50_us_inprocess", x.cold_inproc.p50_us());
        f.put("get_block_skewed_p50_us_inprocess", x.skewed.p50_us());
        f.put("get_block_skewed_rate_inprocess", x.skewed.rate());
        f.put("cache_hit_rate_skewed", x.skewed_hit_rate);

        for (name, cpu, sample) in [
            ("empty_call", &s.empty_cpu[AT_16], &s.empty[AT_16]),
            ("durable_floor", &s.durable_cpu[AT_16], &s.durable[AT_16]),
            ("add_footprint", &s.add_cpu[AT_16], &s.add[AT_16]),
            ("add_footprints_batch", &s.batch_cpu, &s.batch),
            ("add_footprint_subscribed", &s.subscribed_cpu, &s.subscribed),
        ] {
            let (bus, server, clients) = cpu.per_op_us(sample.ops);
            f.put(&format!("{name}_cpu_us_per_op_16_bus"), bus);
            f.put(&format!("{name}_cpu_us_per_op_16_server"), server);
            f.put(&format!("{name}_cpu_us_per_op_16_clients"), clients);
        }
        let add16_vs_empty = ratio(s.add[2].rate(), s.empty[2].rate());
        let p50_vs_floor = ratio(s.add[0].p50_us(), empty_p50 + fsync_p50);
        let inproc16_vs_fsync = ratio(s.inproc[1].rate(), 16.0 * fsync_rate);
        let hot_vs_empty = ratio(s.hot_dbus.p50_us(), s.empty_seq.p50_us());
        f.put("ratio_add_footprint_rate_16_to_empty_call", add16_vs_empty);
        f.put(
            "ratio_add_footprint_p50_to_empty_plus_fdatasync",
            p50_vs_floor,
        );
        f.put(
            "ratio_inprocess_add_rate_16_to_16_fdatasync",
            inproc16_vs_fsync,
        );
        f.put("ratio_get_block_hot_dbus_to_empty_call", hot_vs_empty);
        f.put(
            "ratio_add_footprint_rate_16_to_sqlite",
            ratio(s.add[2].rate(), s.sqlite[1].rate()),
        );
        f.put(
            "ratio_add_footprint_rate_16_to_file_per_block",
            ratio(s.add[2].rate(), s.files.rate()),
        );
        f.put(
            "ratio_add_footprint_rate_16_to_seed",
            ratio(s.add[2].rate(), SEED_WRITE_RATE),
        );

        f.stamp(
            "",
            &x.filesystem,
            &x.load_before,
            &format!(
                "{} rounds of {:.1} s per figure{}",
                plan.rounds,
                plan.slice.as_secs_f64(),
                if x.btrfs {
                    "; on a btrfs loop image"
                } else {
                    ""
                }
            ),
        );
        f.json.insert("rounds".into(), json!(plan.rounds));
        f.json
            .insert("seconds_per_slice".into(), json!(plan.slice.as_secs_f64()));

        // The table.
        let empty = |i: usize| {
            (
                format!("empty call, {} conn", CLIENTS[i]),
                s.empty[i].rate(),
            )
        };
        for (i, n) in CLIENTS.into_iter().enumerate() {
            f.row(
                &format!("empty call, {n} connection{}", plural(n)),
                s.empty[i].rate(),
                "/s",
                None,
                "floor",
            );
        }
        f.row(
            "empty call p50, 1 connection",
            empty_p50,
            "µs",
            None,
            "floor",
        );
        f.row(
            "fdatasync of a 200 B append",
            fsync_rate,
            "/s",
            None,
            "floor",
        );
        f.row("fdatasync p50", fsync_p50, "µs", None, "floor");
        for (i, n) in CLIENTS.into_iter().enumerate() {
            f.row(
                &format!("durable floor, {n} client{}", plural(n)),
                s.durable[i].rate(),
                "/s",
                Some(empty(i)),
                "floor",
            );
            f.row(
                &format!("AddFootprint, {n} client{}", plural(n)),
                s.add[i].rate(),
                "/s",
                Some((format!("durable floor, {n}"), s.durable[i].rate())),
                if n >= 16 { "≥ 0.85" } else { "" },
            );
        }
        f.row(
            "AddFootprint, 16, with a BlockAdded subscriber",
            s.subscribed.rate(),
            "/s",
            Some(("durable floor, 16".into(), s.durable[AT_16].rate())),
            "",
        );
        f.row(
            "durable floor p50, 1 client",
            durable_p50,
            "µs",
            Some(("empty call + fdatasync".into(), empty_p50 + fsync_p50)),
            "floor",
        );
        f.row(
            "AddFootprint p50, 1 client",
            s.add[0].p50_us(),
            "µs",
            Some(("durable floor".into(), durable_p50)),
            "≤ 1.1",
        );
        f.row(
            &format!("AddFootprints ×{BATCH}, 16 clients (footprints)"),
            s.batch.rate(),
            "/s",
            Some(("AddFootprint, 16".into(), s.add[AT_16].rate())),
            if x.batches {
                "≥ 100000/s"
            } else {
                "not in this daemon"
            },
        );
        f.row(
            "libdbus client: durable floor, 16",
            libdbus_durable,
            "/s",
            Some(("zbus: durable floor, 16".into(), s.durable[AT_16].rate())),
            "floor",
        );
        f.row(
            "libdbus client: AddFootprint, 16",
            libdbus_add,
            "/s",
            Some(("libdbus: durable floor".into(), libdbus_durable)),
            "≥ 0.85",
        );
        for (label, cpu, sample) in [
            (
                "CPU µs per empty call, 16",
                &s.empty_cpu[AT_16],
                &s.empty[AT_16],
            ),
            (
                "CPU µs per durable floor call, 16",
                &s.durable_cpu[AT_16],
                &s.durable[AT_16],
            ),
            (
                "CPU µs per AddFootprint, 16",
                &s.add_cpu[AT_16],
                &s.add[AT_16],
            ),
            ("CPU µs per batched footprint, 16", &s.batch_cpu, &s.batch),
            (
                "CPU µs per AddFootprint, 16, subscribed",
                &s.subscribed_cpu,
                &s.subscribed,
            ),
        ] {
            f.cpu_row(label, cpu, sample.ops);
        }
        let (add_server, floor_server) = (
            s.add_cpu[AT_16].per_op_us(s.add[AT_16].ops).1,
            s.durable_cpu[AT_16].per_op_us(s.durable[AT_16].ops).1,
        );
        f.row(
            "  daemon CPU µs per AddFootprint, 16",
            add_server,
            "µs",
            Some(("durable floor server".into(), floor_server)),
            "≤ 30 µs",
        );
        f.wakeup_rows(
            &s.add_wakeups,
            s.add[AT_16].ops,
            &s.durable_wakeups,
            s.durable[AT_16].ops,
        );
        f.row(
            "AddFootprint p50, 1 client",
            s.add[0].p50_us(),
            "µs",
            Some(("empty call + fdatasync".into(), empty_p50 + fsync_p50)),
            "",
        );
        f.row(
            "AddFootprint p99, 1 client",
            s.add[0].p99_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "AddFootprint p50, 16 clients",
            s.add[AT_16].p50_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "AddFootprint p99, 16 clients",
            s.add[AT_16].p99_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "in-process add_footprint, 1 task",
            s.inproc[0].rate(),
            "/s",
            Some(("fdatasync".into(), fsync_rate)),
            "",
        );
        f.row(
            "in-process add_footprint, 16 tasks",
            s.inproc[1].rate(),
            "/s",
            Some(("16 × fdatasync".into(), 16.0 * fsync_rate)),
            "≥ 0.7",
        );
        f.row(
            "  footprints per fdatasync, 16 tasks",
            s.inproc[1].group_size(),
            "",
            None,
            "",
        );
        f.row(
            "in-process 16 tasks, cache on, NUMA bound",
            s.numa_on.rate(),
            "/s",
            Some(("NUMA off".into(), s.numa_off.rate())),
            "",
        );
        f.row(
            "in-process streaming (durable)",
            x.stream.rate(),
            "/s",
            None,
            "≥ 200000/s",
        );
        f.row(
            "GetBlock hot p50, D-Bus",
            s.hot_dbus.p50_us(),
            "µs",
            Some(("empty call".into(), s.empty_seq.p50_us())),
            "≤ 1.2",
        );
        f.row(
            "  Ping to the daemon p50, D-Bus",
            s.ping_seq.p50_us(),
            "µs",
            Some(("empty call".into(), s.empty_seq.p50_us())),
            "",
        );
        f.row(
            "GetBlock cold p50, D-Bus (fresh daemon, no cache)",
            x.cold_dbus.p50_us(),
            "µs",
            Some(("empty call".into(), s.empty_seq.p50_us())),
            "",
        );
        f.rows.push(Row {
            label: "  blocks read, page cache dropped before each".into(),
            value: x.cold_dbus.ops as f64,
            unit: "",
            against: None,
            target: "",
            note: "each block once".into(),
        });
        f.row(
            "get_block hot p50, in-process",
            x.hot_inproc.p50_us(),
            "µs",
            None,
            "≤ 5 µs",
        );
        f.rows.push(Row {
            label: "get_block cold p50, in-process".into(),
            value: x.cold_inproc.p50_us(),
            unit: "µs",
            against: None,
            target: "",
            note: "no cache; page cache dropped".into(),
        });
        f.row(
            "get_block skewed mix p50, in-process",
            x.skewed.p50_us(),
            "µs",
            None,
            "",
        );
        f.row(
            "cache hot hit rate, skewed mix (RAM = 10%)",
            x.skewed_hit_rate * 100.0,
            "%",
            None,
            "",
        );
        f.row(
            "SQLite peer, 1 writer",
            s.sqlite[0].rate(),
            "/s",
            Some(("fdatasync".into(), fsync_rate)),
            "",
        );
        f.row(
            "SQLite peer, 16 writers",
            s.sqlite[1].rate(),
            "/s",
            None,
            "",
        );
        f.row(
            "file per block peer, 16 writers",
            s.files.rate(),
            "/s",
            None,
            "",
        );
        for (peer, rate) in [
            ("SQLite, 16 writers", s.sqlite[1].rate()),
            ("file per block, 16", s.files.rate()),
            ("the seed's 500/s", SEED_WRITE_RATE),
        ] {
            f.row(
                "AddFootprint, 16 clients",
                s.add[2].rate(),
                "/s",
                Some((peer.into(), rate)),
                if rate == SEED_WRITE_RATE {
                    "≥ 40"
                } else {
                    ""
                },
            );
        }
        f.row(
            "in-process add_footprint, 16 tasks",
            s.inproc[1].rate(),
            "/s",
            Some(("file per block, 16".into(), s.files.rate())),
            "",
        );
        f.transparency(&x.transparency);
        f
    }

    /// The figures of `bench --transparency-only`.
    pub(super) fn transparency_only(
        c: &Comparison,
        filesystem: &str,
        load_before: &str,
        btrfs: bool,
    ) -> Figures {
        let mut f = Figures {
            rows: Vec::new(),
            json: Map::new(),
            header: String::new(),
        };
        f.stamp(
            " --transparency-only",
            filesystem,
            load_before,
            &format!(
                "{} rounds of {:.1} s per daemon{}",
                c.on.len(),
                c.slice.as_secs_f64(),
                if btrfs { "; on a btrfs loop image" } else { "" }
            ),
        );
        f.transparency(c);
        f
    }

    /// The header (date, machine, load) and its JSON keys.
    fn stamp(&mut self, flags: &str, filesystem: &str, load_before: &str, plan: &str) {
        let machine = machine(filesystem);
        let date = utc_now();
        self.header = format!(
            "opdbus-bench bench{flags} — {date}\nmachine: {machine}\nload average before: {load_before}; {plan}"
        );
        self.json.insert("machine".into(), json!(machine));
        self.json.insert("date".into(), json!(date));
        self.json.insert("filesystem".into(), json!(filesystem));
        self.json
            .insert("load_average_before".into(), json!(load_before));
        let (on, online) = (cpus::affinity(), cpus::online_count());
        self.header
            .push_str(&format!("\nCPUs used: {on} of {online} online"));
        self.json.insert("cpus".into(), json!(on));
        self.json.insert("online_cpus".into(), json!(online));
    }

    /// AddFootprint with 16 clients with the transparency log and without it (issue 16: the
    /// medians within 5 %).
    fn transparency(&mut self, c: &Comparison) {
        let (on, off) = (median(&c.on_rates()), median(&c.off_rates()));
        let paired = c.paired_ratios();
        let paired_median = median(&paired);
        let min = paired.iter().copied().fold(f64::INFINITY, f64::min);
        let max = paired.iter().copied().fold(0.0, f64::max);
        let (on_bus, on_server, on_clients) = c.on_cpu.per_op_us(c.ops_on());
        let (off_bus, off_server, off_clients) = c.off_cpu.per_op_us(c.ops_off());
        self.put("add_footprint_rate_16_transparency_on", on);
        self.put("add_footprint_rate_16_transparency_off", off);
        self.put(
            "ratio_add_footprint_rate_16_transparency_on_to_off",
            if off > 0.0 { on / off } else { 0.0 },
        );
        self.put(
            "ratio_add_footprint_rate_16_transparency_paired_median",
            paired_median,
        );
        // Per round, as text: the object stays flat.
        let list = |values: &[f64], digits: usize| {
            let texts: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
            json!(texts.join(" "))
        };
        self.json.insert(
            "ratio_add_footprint_rate_16_transparency_paired_rounds".into(),
            list(&paired, 3),
        );
        for (key, rates) in [("on", c.on_rates()), ("off", c.off_rates())] {
            self.json.insert(
                format!("add_footprint_rate_16_transparency_{key}_rounds"),
                list(&rates, 0),
            );
        }
        for (key, value) in [
            ("on_bus", on_bus),
            ("on_server", on_server),
            ("on_clients", on_clients),
            ("off_bus", off_bus),
            ("off_server", off_server),
            ("off_clients", off_clients),
        ] {
            self.put(
                &format!("add_footprint_cpu_us_per_op_16_transparency_{key}"),
                value,
            );
        }
        self.put(
            "tlog_thread_cpu_us_per_footprint",
            c.tlog_us_per_footprint(),
        );
        self.put("tlog_thread_cpu_ms_per_s", c.tlog_ms_per_second());
        self.put("transparency_waited_s", c.waited.as_secs_f64());
        self.json
            .insert("transparency_rounds".into(), json!(c.on.len()));
        self.json.insert(
            "transparency_seconds_per_slice".into(),
            json!(c.slice.as_secs_f64()),
        );

        self.row(
            "AddFootprint 16, transparency on: median",
            on,
            "/s",
            Some(("transparency off: median".into(), off)),
            "≥ 0.95",
        );
        self.rows.push(Row {
            label: "  on ÷ off per round: median".into(),
            value: paired_median,
            unit: "×",
            against: None,
            target: "≥ 0.95",
            note: format!("{min:.3} – {max:.3} in {} rounds", paired.len()),
        });
        self.rows.push(Row {
            label: "  CPU µs per call, on: bus/daemon/clients".into(),
            value: on_bus + on_server + on_clients,
            unit: "µs",
            against: None,
            target: "",
            note: format!("{on_bus:.1} / {on_server:.1} / {on_clients:.1}"),
        });
        self.rows.push(Row {
            label: "  CPU µs per call, off: bus/daemon/clients".into(),
            value: off_bus + off_server + off_clients,
            unit: "µs",
            against: None,
            target: "",
            note: format!("{off_bus:.1} / {off_server:.1} / {off_clients:.1}"),
        });
        self.rows.push(Row {
            label: "  tlog thread CPU per footprint".into(),
            value: c.tlog_us_per_footprint(),
            unit: "µs",
            against: None,
            target: "",
            note: format!("{:.1} ms per s of writing", c.tlog_ms_per_second()),
        });
    }

    /// A server's wake-ups and CPU per footprint by thread, under keys starting with `prefix`.
    fn wakeups(&mut self, prefix: &str, w: &Wakeups, footprints: u64) {
        let per = |n: u64| n as f64 / footprints.max(1) as f64;
        for (name, (switches, cpu_ns)) in &w.by_name {
            let key = key_of(name);
            self.put(
                &format!("{prefix}wakeups_per_footprint_16_{key}"),
                per(*switches),
            );
            self.put(
                &format!("{prefix}cpu_us_per_footprint_16_{key}"),
                per(*cpu_ns) / 1e3,
            );
        }
        let (switches, cpu_ns) = w.total();
        self.put(
            &format!("{prefix}wakeups_per_footprint_16_total"),
            per(switches),
        );
        self.put(
            &format!("{prefix}cpu_us_per_footprint_16_total"),
            per(cpu_ns) / 1e3,
        );
    }

    /// Wake-ups per footprint: the daemon's total beside the durable floor's, then each
    /// thread of both with its CPU.
    fn wakeup_rows(&mut self, daemon: &Wakeups, ops: u64, floor: &Wakeups, floor_ops: u64) {
        let per = |n: u64, ops: u64| n as f64 / ops.max(1) as f64;
        self.row(
            "thread wake-ups per AddFootprint, 16",
            per(daemon.total().0, ops),
            "",
            Some(("durable floor".into(), per(floor.total().0, floor_ops))),
            "",
        );
        for (server, w, ops) in [("daemon", daemon, ops), ("floor", floor, floor_ops)] {
            for (name, (switches, cpu_ns)) in &w.by_name {
                if *switches == 0 {
                    continue;
                }
                self.rows.push(Row {
                    label: format!("  {server}: {name}"),
                    value: per(*switches, ops),
                    unit: "",
                    against: None,
                    target: "",
                    note: format!("{:.1} µs CPU", per(*cpu_ns, ops) / 1e3),
                });
            }
        }
    }

    /// CPU per operation of bus, server and clients: the sum, with the parts as its note.
    fn cpu_row(&mut self, label: &str, cpu: &Cpu, ops: u64) {
        let (bus, server, clients) = cpu.per_op_us(ops);
        self.rows.push(Row {
            label: format!("{label}: bus/server/clients"),
            value: bus + server + clients,
            unit: "µs",
            against: None,
            target: "",
            note: format!("{bus:.1} / {server:.1} / {clients:.1}"),
        });
    }

    fn put(&mut self, key: &str, value: f64) {
        // Two decimals are plenty for rates and microseconds alike.
        let rounded = (value * 100.0).round() / 100.0;
        self.json.insert(key.into(), json!(rounded));
    }

    fn row(
        &mut self,
        label: &str,
        value: f64,
        unit: &'static str,
        against: Option<(String, f64)>,
        target: &'static str,
    ) {
        self.rows.push(Row {
            label: label.into(),
            value,
            unit,
            against,
            target,
            note: String::new(),
        });
    }
}

/// Now, as RFC 3339 in UTC.
pub(crate) fn utc_now() -> String {
    opdbus_blockchain::snapshot::utc::UtcDateTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    )
    .rfc3339()
}

/// CPU model and count, kernel and `filesystem`, in one line.
pub(crate) fn machine(filesystem: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs, Linux {}, {filesystem}",
        kernel.trim()
    )
}

pub(super) fn print_table(figures: &Figures) {
    println!("{}\n", figures.header);
    println!(
        "{:<50} {:>10} {:<3}  {:<26} {:>7}  target",
        "figure", "value", "", "compared with", "ratio"
    );
    for row in &figures.rows {
        let (against, ratio) = match &row.against {
            Some((label, reference)) if *reference > 0.0 => {
                (label.as_str(), format!("{:.2}", row.value / reference))
            }
            Some((label, _)) => (label.as_str(), "-".into()),
            None => (row.note.as_str(), String::new()),
        };
        println!(
            "{:<50} {:>10} {:<3}  {:<26} {:>7}  {}",
            row.label,
            format_value(row.value, row.unit),
            row.unit,
            against,
            ratio,
            row.target
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn format_value(value: f64, unit: &str) -> String {
    if unit == "×" {
        format!("{value:.3}")
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}
