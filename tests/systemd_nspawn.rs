//! The installed service under a real systemd: each test boots a minimal Debian 12 in a
//! `systemd-nspawn` container (systemd as PID 1, a real system bus, journald), installs this
//! build with `scripts/install.sh` and drives it with `systemctl`, `busctl` and `journalctl`.
//!
//! Root only; without root or without `systemd-nspawn`/`debootstrap` every test says why it is
//! SKIPPED (set `OPDBUS_REQUIRE_NSPAWN=1` to make that a failure instead). The rootfs is built
//! once with debootstrap (about a minute, network needed) and cached in
//! `/var/cache/opdbus-test-rootfs` (`OPDBUS_TEST_ROOTFS_CACHE` to move it); containers run it
//! with `--volatile=overlay`, so no test changes the cached tree.

mod common;
mod nspawn;

use nspawn::*;

use common::{wait_until, BUS_NAME, OBJECT_PATH};
use opdbus_testkit::LoopBtrfs;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn real_systemd_start_returns_after_ready_and_serves_the_system_bus() {
    let Some(ct) = Container::boot_with_service("ready") else {
        return;
    };
    ct.enable_debug_logging();
    ct.ok(&["systemctl", "start", UNIT]);
    // `systemctl start` of a Type=notify unit returns once READY=1 arrived: by then the unit is
    // active and the name is owned, so the very first call must work (no retry here, and no
    // bus activation that would wait for the start job and hide a READY sent too early).
    assert_eq!(ct.unit_property("ActiveState"), "active");
    let genesis = ct.ok(&[
        "busctl",
        "--auto-start=no",
        "call",
        BUS_NAME,
        OBJECT_PATH,
        BUS_NAME,
        "GetBlockByHeight",
        "t",
        "0",
    ]);
    assert!(genesis.contains("\\\"height\\\":0"), "{genesis}");
    let status = ct.unit_property("StatusText");
    assert!(status.contains("chain height 0"), "STATUS= is '{status}'");

    let (height, hash) = ct.add_footprint("network", "create", r#"{"interface":"eth0"}"#);
    assert_eq!(height, 1);
    let block = ct.busctl_call("GetBlock", &["s", &hash]);
    assert!(block.contains("eth0"), "{block}");
    // STATUS= follows the chain (refreshed every 5 s) and shows the cache hit rate.
    wait_until(Duration::from_secs(30), "STATUS= with height 1", || {
        ct.unit_property("StatusText")
            .contains("chain height 1, cache hit rate")
    });
    // The host reaches the container's system bus through its socket, like any client.
    let from_host = Command::new("busctl")
        .arg(format!(
            "--address=unix:path={}",
            ct.path("/run/dbus/system_bus_socket").display()
        ))
        .args(["get-property", BUS_NAME, OBJECT_PATH, BUS_NAME, "Height"])
        .output()
        .expect("busctl");
    assert_eq!(stdout(&from_host).trim(), "t 1", "{}", stderr(&from_host));
}

#[test]
fn real_systemd_unprivileged_writes_are_denied_reads_allowed() {
    let Some(ct) = Container::boot_with_service("deny") else {
        return;
    };
    ct.ok(&["systemctl", "start", UNIT]);
    let (_, hash) = ct.add_footprint("network", "create", "{}");
    let as_nobody = |member: &str, args: &[&str]| {
        let mut command = vec![
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--init-groups",
            "dbus-send",
            "--system",
            "--print-reply",
            "--dest=org.opdbus.Blockchain",
            OBJECT_PATH,
        ];
        let member = format!("{BUS_NAME}.{member}");
        command.push(&member);
        command.extend_from_slice(args);
        ct.run(&command)
    };
    // The bus policy refuses the write before it reaches the daemon.
    let write = as_nobody(
        "AddFootprint",
        &["string:network", "string:delete", "string:{}"],
    );
    assert!(!write.status.success(), "nobody could write");
    assert!(
        stderr(&write).contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{}",
        stderr(&write)
    );
    // Reads are open to everyone.
    let read = as_nobody("GetBlock", &[&format!("string:{hash}")]);
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(stdout(&read).contains(&hash));
    // In the writers' group the policy lets the call through, and the daemon's own uid check
    // (OPDBUS_WRITER_UIDS is empty) still refuses it, with its own error.
    ct.ok(&["usermod", "-a", "-G", "opdbus", "nobody"]);
    ct.ok(&[
        "busctl",
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "ReloadConfig",
    ]);
    let write = as_nobody(
        "AddFootprint",
        &["string:network", "string:delete", "string:{}"],
    );
    assert!(!write.status.success(), "nobody could write");
    assert!(
        stderr(&write).contains("org.opdbus.Blockchain.Error.AccessDenied"),
        "{}",
        stderr(&write)
    );
    assert_eq!(ct.busctl_call("GetBlockByHeight", &["t", "2"]).len(), 0);
    // The daemon's refusal is a warning with the footprint's fields.
    let warnings = ct.wait_for_journal(&["PRIORITY=4"], |records| {
        records
            .iter()
            .any(|r| field(r, "MESSAGE").starts_with("footprint refused"))
    });
    let refused = warnings
        .iter()
        .find(|r| field(r, "MESSAGE").starts_with("footprint refused"))
        .expect("found above");
    assert_eq!(field(refused, "PLUGIN"), "network");
    assert_eq!(field(refused, "OPERATION"), "delete");
    assert_eq!(field(refused, "CALLER_UID"), "65534");
}

#[test]
fn real_systemd_journal_has_structured_block_fields_and_start_up_facts() {
    let Some(ct) = Container::boot_with_service("journal") else {
        return;
    };
    ct.enable_debug_logging();
    ct.ok(&["systemctl", "start", UNIT]);
    let (height, hash) = ct.add_footprint("network", "create", r#"{"interface":"eth0"}"#);
    ct.add_footprint("storage", "mount", "{}");

    // journalctl -u opdbus-blockchaind PLUGIN=network: the network block, and only it.
    let records = ct.wait_for_journal(&["PLUGIN=network"], |records| {
        records.iter().any(|r| field(r, "BLOCK_HASH") == hash)
    });
    assert!(records.iter().all(|r| field(r, "PLUGIN") == "network"));
    let block = records
        .iter()
        .find(|r| field(r, "BLOCK_HASH") == hash)
        .expect("found above");
    assert_eq!(field(block, "BLOCK_HEIGHT"), height.to_string());
    assert_eq!(field(block, "OPERATION"), "create");
    assert_eq!(field(block, "PRIORITY"), "7", "per-block records are debug");
    assert!(
        block
            .as_object()
            .expect("object")
            .keys()
            .all(|k| !k.starts_with("F_")),
        "field names carry no prefix: {block}"
    );

    // Start-up: configuration, NUMA choice and chain height at info.
    let all = ct.wait_for_journal(&[], |records| {
        records
            .iter()
            .any(|r| field(r, "MESSAGE").starts_with("serving"))
    });
    let find = |prefix: &str| {
        all.iter()
            .find(|r| field(r, "MESSAGE").starts_with(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}…' record in the journal"))
    };
    assert_eq!(field(find("configuration"), "PRIORITY"), "6");
    assert_eq!(field(find("configuration"), "BUS"), "system");
    assert_eq!(field(find("chain opened"), "HEIGHT"), "0");
    assert_eq!(field(find("NUMA:"), "OPTIMAL_NODE"), "0");
    // The unit's system call filter and capability set leave the writer's binding possible.
    let binding = find("writer thread binding");
    assert_eq!(field(binding, "CPU_APPLIED"), "true", "{binding}");
    assert_eq!(field(binding, "MEMORY_APPLIED"), "true", "{binding}");
}

#[test]
fn real_systemd_checkpoints_reach_the_journal_and_the_key_stays_private() {
    let Some(ct) = Container::boot_with_service("tlog") else {
        return;
    };
    ct.ok(&["systemctl", "start", UNIT]);
    ct.add_footprint("network", "create", r#"{"interface":"eth0"}"#);
    // Genesis and one footprint: a tree of 2, checkpointed within the default second.
    let records = ct.wait_for_journal(&["CHECKPOINT_SIZE=2"], |records| !records.is_empty());
    // journalctl -o json writes a value with control characters (the note's newlines) as
    // an array of bytes.
    let note = match &records[0]["CHECKPOINT_NOTE"] {
        serde_json::Value::Array(bytes) => String::from_utf8(
            bytes
                .iter()
                .map(|b| b.as_u64().unwrap_or(0) as u8)
                .collect(),
        )
        .expect("utf-8"),
        other => other.as_str().unwrap_or_default().to_owned(),
    };
    assert!(note.contains("\n2\n"), "{note}");
    assert_eq!(field(&records[0], "CHECKPOINT_ROOT").len(), 64);
    let published = ct.ok(&["cat", "/var/lib/op-dbus/blockchain/tlog/checkpoint"]);
    assert_eq!(published, note, "the journal holds what was published");

    // The key: made at first start, outside the chain dir, private.
    let modes = ct.ok(&[
        "stat",
        "-c",
        "%a %U",
        "/var/lib/op-dbus/keys",
        "/var/lib/op-dbus/keys/signing.key",
    ]);
    assert_eq!(modes, "700 opdbus-blockchain\n600 opdbus-blockchain\n");
    let vkey = ct.ok(&["opdbus-chain", "key", "show"]);
    let property = ct.ok(&[
        "busctl",
        "get-property",
        BUS_NAME,
        OBJECT_PATH,
        BUS_NAME,
        "VerifyingKey",
    ]);
    assert_eq!(property.trim(), format!("s \"{}\"", vkey.trim()));

    // A key passed as a credential (LoadCredential=) replaces the default one, read only.
    ct.ok(&[
        "sh",
        "-c",
        "mkdir -p /etc/credstore /etc/systemd/system/opdbus-blockchaind.service.d && \
         mv /var/lib/op-dbus/keys/signing.key /etc/credstore/opdbus-signing-key && \
         chmod 0400 /etc/credstore/opdbus-signing-key && \
         printf '[Service]\\nLoadCredential=opdbus-signing-key:/etc/credstore/opdbus-signing-key\\n' \
           > /etc/systemd/system/opdbus-blockchaind.service.d/key.conf && \
         systemctl daemon-reload && systemctl restart opdbus-blockchaind",
    ]);
    ct.add_footprint("network", "delete", r#"{"interface":"eth0"}"#);
    let again = ct.ok(&[
        "busctl",
        "get-property",
        BUS_NAME,
        OBJECT_PATH,
        BUS_NAME,
        "VerifyingKey",
    ]);
    assert_eq!(again, property, "the credential is the same key");
    assert!(
        !ct.path("/var/lib/op-dbus/keys/signing.key").exists(),
        "with a credential, no key file is made"
    );
    ct.wait_for_journal(&["CHECKPOINT_SIZE=3"], |records| !records.is_empty());
}

#[test]
fn real_systemd_stop_answers_calls_in_flight_and_exits_cleanly() {
    let Some(ct) = Container::boot_with_service("stop") else {
        return;
    };
    ct.ok(&["systemctl", "start", UNIT]);
    // 16 clients on the host, each adding footprints one after the other through the
    // container's system bus, so that calls are in flight when the stop comes.
    let address = format!(
        "unix:path={}",
        ct.path("/run/dbus/system_bus_socket").display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcomes = runtime.block_on(async {
        let connection = zbus::connection::Builder::address(address.as_str())
            .expect("address")
            .build()
            .await
            .expect("connect to the container's system bus");
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> = (0..16)
            .map(|n| tokio::spawn(add_until_refused(connection.clone(), n, acked.clone())))
            .collect();
        while acked.load(std::sync::atomic::Ordering::Relaxed) < 300
            && !clients.iter().all(|client| client.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stop = ct.command(&["systemctl", "stop", UNIT]).output();
        let mut outcomes = Vec::new();
        for client in clients {
            outcomes.push(client.await.expect("client task"));
        }
        assert!(
            stop.expect("systemctl").status.success(),
            "systemctl stop failed"
        );
        outcomes
    });

    assert_eq!(ct.unit_property("ActiveState"), "inactive");
    assert_eq!(ct.unit_property("Result"), "success");
    assert_eq!(ct.unit_property("ExecMainStatus"), "0");
    // Every call got an answer: its block, or (sent after the name was released) no service.
    // None was cut off or refused because the daemon was going away.
    let mut acked = HashSet::new();
    for (hashes, last_error) in outcomes {
        acked.extend(hashes);
        assert!(
            [
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner",
                "org.freedesktop.DBus.Error.UnknownObject",
            ]
            .iter()
            .any(|name| last_error.starts_with(name)),
            "a call in flight at the stop ended with: {last_error}"
        );
    }
    let on_disk = ct.hashes_on_disk();
    let missing: Vec<_> = acked.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "acked but not in the chain: {missing:?}"
    );
    ct.ok(&["opdbus-chain", "verify"]);
    let records = ct.wait_for_journal(&[], |records| {
        records
            .iter()
            .any(|r| field(r, "MESSAGE").starts_with("stopped at height"))
    });
    let stopping = records
        .iter()
        .find(|r| field(r, "MESSAGE_ID") == opdbus_blockchain::journal::STOPPING)
        .expect("a 'stopping' record");
    eprintln!(
        "{} footprints acked; calls in flight at SIGTERM: {}",
        acked.len(),
        field(stopping, "IN_FLIGHT")
    );
    let stopped = records
        .iter()
        .find(|r| field(r, "MESSAGE").starts_with("stopped at height"))
        .expect("found above");
    assert_eq!(
        field(stopped, "HEIGHT"),
        (on_disk.len() - 1).to_string(),
        "the last record names the chain's height"
    );
}

/// Adds footprints until a call fails; returns the acknowledged hashes and that failure.
/// `NoAutoStart`: a call after the stop must not start the daemon again.
async fn add_until_refused(
    connection: zbus::Connection,
    client: usize,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<String>, String) {
    let proxy = zbus::Proxy::new(&connection, BUS_NAME, OBJECT_PATH, BUS_NAME)
        .await
        .expect("proxy");
    let mut hashes = Vec::new();
    for i in 0.. {
        let data = format!(r#"{{"client":{client},"i":{i}}}"#);
        let reply = proxy
            .call_with_flags::<_, _, (u64, String)>(
                "AddFootprint",
                zbus::proxy::MethodFlags::NoAutoStart.into(),
                &("load", "stop", data.as_str()),
            )
            .await;
        match reply {
            Ok(Some((_, hash))) => {
                hashes.push(hash);
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(None) => return (hashes, "no reply body".into()),
            Err(zbus::Error::MethodError(name, message, _)) => {
                return (hashes, format!("{name}: {}", message.unwrap_or_default()))
            }
            Err(err) => return (hashes, err.to_string()),
        }
    }
    unreachable!("the loop ends by returning")
}

#[test]
fn real_systemd_kill_9_and_automatic_restart_lose_no_acked_footprint() {
    let Some(ct) = Container::boot_with_service("kill") else {
        return;
    };
    ct.ok(&["systemctl", "start", UNIT]);
    let first_pid = ct.unit_property("MainPID");
    let writers = ct.start_writers("kill", 4, 500);
    ct.wait_for_acks("kill", 40);
    ct.ok(&["systemctl", "kill", "-s", "KILL", UNIT]);
    writers.finish();

    // Restart=on-failure brings it back by itself.
    wait_until(
        Duration::from_secs(60),
        "systemd to restart the unit",
        || ct.unit_property("ActiveState") == "active" && ct.unit_property("NRestarts") == "1",
    );
    assert_ne!(ct.unit_property("MainPID"), first_pid);
    let acked = ct.acked_hashes("kill");
    assert!(acked.len() >= 40);
    // Every acknowledged block is served by the restarted daemon.
    let missing = ct.sh("for h in $(cut -d'\"' -f2 /root/acks-kill-*); do \
           busctl --auto-start=no call org.opdbus.Blockchain /org/opdbus/Blockchain \
             org.opdbus.Blockchain GetBlock s $h >/dev/null 2>&1 || echo MISSING $h; \
         done");
    assert_eq!(
        stdout(&missing),
        "",
        "acked blocks lost: {}",
        stderr(&missing)
    );
    let verify = ct.busctl_call("Verify", &[]);
    assert!(verify.starts_with("bts true"), "{verify}");
}

#[test]
fn real_systemd_watchdog_pings_keep_a_healthy_daemon_running() {
    let Some(ct) = Container::boot_with_service("watchdog") else {
        return;
    };
    // A daemon that did not ping would be killed (SIGABRT) and restarted within 2 s.
    ct.set_short_watchdog();
    ct.ok(&["systemctl", "start", UNIT]);
    assert_eq!(ct.unit_property("WatchdogUSec"), "2s");
    let pid = ct.unit_property("MainPID");
    let mut pings = HashSet::new();
    wait_until(Duration::from_secs(60), "four watchdog pings", || {
        pings.insert(ct.unit_property("WatchdogTimestampMonotonic"));
        pings.len() >= 5
    });
    assert_eq!(ct.unit_property("ActiveState"), "active");
    assert_eq!(ct.unit_property("NRestarts"), "0");
    assert_eq!(ct.unit_property("MainPID"), pid, "the daemon was restarted");
}

#[test]
fn real_systemd_btrfs_snapshots_work_under_the_hardened_unit() {
    if missing_prerequisite().is_none() && !tool_exists("mkfs.btrfs") {
        eprintln!("SKIPPED btrfs: mkfs.btrfs is not installed (apt-get install btrfs-progs)");
        return;
    }
    let Some(fs) = LoopBtrfs::new(1024) else {
        return;
    };
    let Some(ct) = Container::boot_with_service_and("btrfs", Some(fs.path())) else {
        return;
    };
    ct.ok(&["systemctl", "start", UNIT]);
    for i in 0..3 {
        ct.add_footprint("network", "create", &format!(r#"{{"i":{i}}}"#));
    }
    // Chain and cache are subvolumes, so the snapshot is a pair of read-only btrfs snapshots:
    // the unit's system call filter, capabilities and read-only file system allow it.
    let reply = ct.busctl_call("Snapshot", &[]);
    let paths: Vec<&str> = reply.split('"').skip(1).step_by(2).collect();
    assert_eq!(paths.len(), 2, "{reply}");
    for path in &paths {
        let show = ct.ok(&["btrfs", "subvolume", "show", path]);
        assert!(
            show.lines()
                .any(|l| l.trim().starts_with("Flags:") && l.contains("readonly")),
            "{path} is not a read-only snapshot:\n{show}"
        );
    }
    ct.ok(&["opdbus-chain", "verify", "--chain-dir", paths[0]]);
}

#[test]
fn real_systemd_runs_as_its_own_user_continues_a_root_owned_chain_and_adm_reads_it() {
    if missing_prerequisite().is_none() && !tool_exists("mkfs.btrfs") {
        eprintln!("SKIPPED user: mkfs.btrfs is not installed (apt-get install btrfs-progs)");
        return;
    }
    let Some(fs) = LoopBtrfs::new(1024) else {
        return;
    };
    let Some(ct) = Container::boot_with_service_and("user", Some(fs.path())) else {
        return;
    };
    // Before: the unit of earlier releases ran as root and kept everything root's and private.
    ct.ok(&[
        "sh",
        "-c",
        "mkdir -p /etc/systemd/system/opdbus-blockchaind.service.d && \
         printf '[Service]\\nUser=root\\nGroup=root\\nExecStartPre=\\n\
                 Environment=OPDBUS_READ_GROUP=\\n' \
           > /etc/systemd/system/opdbus-blockchaind.service.d/old.conf && \
         systemctl daemon-reload && systemctl start opdbus-blockchaind",
    ]);
    let mut acked: Vec<String> = (0..3)
        .map(|i| {
            ct.add_footprint("network", "create", &format!(r#"{{"i":{i}}}"#))
                .1
        })
        .collect();
    let old_snapshot = ct.busctl_call("Snapshot", &[]);
    assert!(old_snapshot.contains("/.snapshots/"), "{old_snapshot}");
    ct.ok(&[
        "sh",
        "-c",
        "systemctl stop opdbus-blockchaind && \
         chmod 0750 /var/lib/op-dbus && \
         chmod 0700 /var/lib/op-dbus/blockchain /var/lib/op-dbus/@cache && \
         stat -c '%U %a' /var/lib/op-dbus/keys/signing.key > /root/key-before && \
         rm /etc/systemd/system/opdbus-blockchaind.service.d/old.conf && \
         systemctl daemon-reload",
    ]);
    assert_eq!(ct.ok(&["cat", "/root/key-before"]), "root 600\n");

    // The upgrade: systemd hands the state directory to the service user; the chain continues.
    let start = ct.run(&["systemctl", "start", UNIT]);
    assert!(
        start.status.success(),
        "the upgraded unit did not start:\n{}",
        stdout(&ct.run(&["journalctl", "-b", "-u", UNIT, "--no-pager"]))
    );
    let pid = ct.unit_property("MainPID");
    assert_eq!(
        ct.ok(&["ps", "-o", "user=", "-p", &pid]).trim(),
        "opdbus-blockchain"
    );
    let (height, hash) = ct.add_footprint("network", "after-upgrade", "{}");
    assert_eq!(height, 4, "continues the chain of the root daemon");
    acked.push(hash);
    assert_eq!(
        ct.ok(&[
            "stat",
            "-c",
            "%U %a",
            "/var/lib/op-dbus/keys",
            "/var/lib/op-dbus/keys/signing.key"
        ]),
        "opdbus-blockchain 700\nopdbus-blockchain 600\n"
    );
    assert_eq!(
        ct.ok(&[
            "stat",
            "-c",
            "%U %G %a",
            "/var/lib/op-dbus/blockchain",
            "/var/lib/op-dbus/@cache"
        ]),
        "opdbus-blockchain adm 2750\nopdbus-blockchain adm 2750\n"
    );
    ct.ok(&["opdbus-chain", "verify"]);

    // An admin in adm reads the chain with the CLI; anyone else is refused by the file system.
    ct.ok(&["useradd", "--groups", "adm", "auditor"]);
    let as_auditor = |args: &[&str]| {
        let mut command = vec!["runuser", "-u", "auditor", "--", "opdbus-chain"];
        command.extend_from_slice(args);
        ct.ok(&command)
    };
    as_auditor(&["verify"]);
    let tail = as_auditor(&["tail", "-n", "100", "--json"]);
    for hash in &acked {
        assert!(
            tail.contains(hash.as_str()),
            "{hash} not read by auditor:\n{tail}"
        );
    }
    let nobody = ct.run(&["runuser", "-u", "nobody", "--", "opdbus-chain", "verify"]);
    assert!(!nobody.status.success(), "nobody read the chain");
    assert!(
        stderr(&nobody).contains("Permission denied"),
        "{}",
        stderr(&nobody)
    );

    // Snapshots under the service user, readable by the admin; a read-only one is deleted
    // without any capability (a half-made one, removed at start).
    let reply = ct.busctl_call("Snapshot", &[]);
    let chain_snapshot = reply.split('"').nth(1).expect("snapshot paths").to_owned();
    as_auditor(&["verify", "--chain-dir", &chain_snapshot]);
    let half_made = "/var/lib/op-dbus/.snapshots/.incomplete-2026-01-01T00-00-00Z-h000000000001";
    ct.ok(&[
        "runuser",
        "-u",
        "opdbus-blockchain",
        "--",
        "btrfs",
        "subvolume",
        "snapshot",
        "-r",
        "/var/lib/op-dbus/blockchain",
        half_made,
    ]);
    ct.ok(&["systemctl", "restart", UNIT]);
    assert!(
        !ct.path(half_made).exists(),
        "the read-only half-made snapshot was not removed:\n{}",
        stdout(&ct.run(&["journalctl", "-b", "-u", UNIT, "--no-pager"]))
    );
    assert_eq!(ct.unit_property("ActiveState"), "active");
}

#[test]
fn real_systemd_a_failed_fdatasync_stops_the_daemon_and_systemd_restarts_it() {
    if missing_prerequisite().is_none() && !tool_exists("mkfs.btrfs") {
        eprintln!("SKIPPED latch: mkfs.btrfs is not installed (apt-get install btrfs-progs)");
        return;
    }
    // The state directory is a btrfs whose disk stops taking writes when we say so.
    let Some(mut fs) = LoopBtrfs::on_tmpfs(1024, 300) else {
        return;
    };
    let Some(ct) = Container::boot_with_service_and("latch", Some(fs.path())) else {
        return;
    };
    ct.set_short_watchdog();
    ct.ok(&["systemctl", "start", UNIT]);
    let (_, acked) = ct.add_footprint("network", "create", r#"{"before":"the disk failed"}"#);

    fs.fill_backing().expect("fill the tmpfs");
    // The block is written, but its fdatasync fails: the caller is told, the store latches.
    let refused = ct.run(&[
        "busctl",
        "--auto-start=no",
        "call",
        BUS_NAME,
        OBJECT_PATH,
        BUS_NAME,
        "AddFootprint",
        "sss",
        "network",
        "create",
        r#"{"after":"the disk failed"}"#,
    ]);
    assert!(
        !refused.status.success(),
        "a write was acked on a failed disk"
    );
    assert!(
        stderr(&refused).contains("fdatasync"),
        "{}",
        stderr(&refused)
    );
    // The daemon answers what it can, exits with a failure and systemd restarts the unit. (Should
    // the exit hang, the watchdog pings have stopped too: see the watchdog test above.)
    let records = ct.wait_for_journal(&[], |records| {
        records
            .iter()
            .any(|r| field(r, "MESSAGE").contains("Failed with result 'exit-code'"))
    });
    assert!(
        records
            .iter()
            .any(|r| field(r, "MESSAGE").contains("stopping so that systemd restarts the daemon")),
        "the daemon did not say why it stopped"
    );
    // Both with the ids the catalog explains, at error priority.
    for id in [
        opdbus_blockchain::journal::STORAGE_LATCHED,
        opdbus_blockchain::journal::STOPPING,
    ] {
        assert!(
            records
                .iter()
                .any(|r| field(r, "MESSAGE_ID") == id && field(r, "PRIORITY") == "3"),
            "no error record with MESSAGE_ID={id}"
        );
    }
    wait_until(
        Duration::from_secs(60),
        "systemd to restart the unit",
        || ct.unit_property("NRestarts") != "0",
    );
    // (The file system itself went read-only, so the restarted daemon cannot open the chain
    // until an operator looks: that is the file system's verdict, not ours.)
    let _ = ct.run(&["systemctl", "stop", UNIT]);
    drop(ct);

    // Once the disk takes writes again, the acknowledged block is there and the chain intact.
    fs.unfill_and_remount().expect("remount");
    let chain_dir = fs.path().join("blockchain");
    let chain_dir = chain_dir.to_str().expect("utf-8 path");
    let (code, out, err) = common::cli(&["verify", "--chain-dir", chain_dir]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = common::cli(&["get", &acked, "--chain-dir", chain_dir]);
    assert_eq!(code, 0, "the acked block is gone: {out}{err}");
}

#[test]
fn real_systemd_restore_masks_the_unit_while_it_runs() {
    let Some(ct) = Container::boot_with_service("restore") else {
        return;
    };
    ct.ok(&["systemctl", "start", UNIT]);
    ct.add_footprint("network", "create", "{}");
    let reply = ct.busctl_call("Snapshot", &[]);
    let chain_snapshot = reply.split('"').nth(1).expect("snapshot paths").to_owned();
    let snapshot = Path::new(&chain_snapshot)
        .parent()
        .expect("snapshot dir")
        .to_str()
        .expect("utf-8")
        .to_owned();
    ct.add_footprint("network", "after-snapshot", "{}");
    let marker = std::fs::read_to_string(ct.path("/var/lib/op-dbus/blockchain.chain-id"))
        .expect("the daemon recorded its chain id");
    // Stopped (not masked) and the directories moved aside, as docs/operations.md says; restore
    // must keep bus activation out while it puts the snapshot back. (Moving them under the
    // running daemon raced with its cache thread making `@cache` again.)
    ct.ok(&["systemctl", "stop", UNIT]);
    ct.ok(&[
        "sh",
        "-c",
        "mv /var/lib/op-dbus/blockchain /var/lib/op-dbus/blockchain.old && \
         mv /var/lib/op-dbus/@cache /var/lib/op-dbus/@cache.old",
    ]);
    let out = ct.run(&["opdbus-chain", "restore", "--from", &snapshot]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("stopped and masked for the restore"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ct.unit_property("ActiveState"), "inactive");
    assert_eq!(ct.unit_property("LoadState"), "loaded", "unmasked again");
    // The stop restore asked for was clean: no warning about flushing the bus queue (the
    // system bus refuses a Peer.Ping to ourselves once the name is released).
    let warnings = ct.run(&[
        "journalctl",
        "-b",
        "-u",
        UNIT,
        "-p",
        "warning",
        "--no-pager",
    ]);
    eprintln!("warnings of the unit:\n{}", stdout(&warnings));
    assert!(
        !stdout(&warnings).contains("cannot ping") && !stdout(&warnings).contains("flush"),
        "{}",
        stdout(&warnings)
    );
    assert_eq!(
        std::fs::read_to_string(ct.path("/var/lib/op-dbus/blockchain.chain-id")).expect("marker"),
        marker,
        "the marker names the restored chain"
    );
    // The next call activates the daemon on the restored chain: the snapshot's height + 1.
    let (height, _) = ct.add_footprint("network", "after-restore", "{}");
    assert_eq!(height, 2, "continues the restored chain, not a new one");

    // Masked by the operator beforehand: restore leaves it masked.
    ct.ok(&["systemctl", "mask", "--runtime", UNIT]);
    ct.ok(&["systemctl", "stop", UNIT]);
    ct.ok(&[
        "sh",
        "-c",
        "mv /var/lib/op-dbus/blockchain /var/lib/op-dbus/blockchain.old2 && \
         mv /var/lib/op-dbus/@cache /var/lib/op-dbus/@cache.old2",
    ]);
    let out = ct.run(&["opdbus-chain", "restore", "--from", &snapshot]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(ct.unit_property("LoadState"), "masked", "left masked");
}

#[test]
fn real_systemd_first_call_activates_the_unit() {
    let Some(ct) = Container::boot_with_service("activate") else {
        return;
    };
    assert_eq!(ct.unit_property("ActiveState"), "inactive");
    // No `systemctl start`: the bus starts the unit named in the activation file.
    let genesis = ct.busctl_call("GetBlockByHeight", &["t", "0"]);
    assert!(genesis.contains("\\\"height\\\":0"), "{genesis}");
    assert_eq!(ct.unit_property("ActiveState"), "active");
    let journal = ct.run(&["journalctl", "-b", "-u", "dbus.service", "--no-pager"]);
    assert!(
        stdout(&journal).contains("Activating via systemd: service name='org.opdbus.Blockchain'"),
        "{}",
        stdout(&journal)
    );
}

#[test]
fn real_systemd_unit_verifies_clean_and_rates_ok() {
    let Some(ct) = Container::boot_with_service("analyze") else {
        return;
    };
    // The minimal rootfs has no man(1) to look up Documentation=man:opdbus-blockchaind(8):
    // the page's presence is checked by the uninstall test and tests/install_nspawn.rs.
    let verify = ct.run(&["systemd-analyze", "verify", "--man=no", UNIT]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert_eq!(
        format!("{}{}", stdout(&verify), stderr(&verify)),
        "",
        "systemd-analyze verify is not clean"
    );
    let security = ct.ok(&["systemd-analyze", "security", "--no-pager", UNIT]);
    let score: f64 = security
        .lines()
        .find_map(|line| line.split("opdbus-blockchaind.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{security}"));
    eprintln!("systemd-analyze security: {score}");
    assert!(score <= 1.0, "exposure {score} > 1.0:\n{security}");
}

#[test]
fn real_systemd_uninstall_removes_the_files_and_keeps_the_chain() {
    let Some(ct) = Container::boot_with_service("uninstall") else {
        return;
    };
    ct.ok(&["systemctl", "start", UNIT]);
    ct.add_footprint("network", "create", "{}");
    for file in [
        "/usr/share/doc/opdbus-blockchain/operations.md",
        "/usr/share/man/man8/opdbus-blockchaind.8.gz",
        "/usr/share/fish/vendor_completions.d/opdbus-chain.fish",
    ] {
        assert!(ct.path(file).is_file(), "{file} was not installed");
    }
    ct.ok(&[&format!("{CT_SRC}/scripts/install.sh"), "uninstall"]);
    for file in [
        "/usr/bin/opdbus-blockchaind",
        "/usr/bin/opdbus-chain",
        "/usr/lib/systemd/system/opdbus-blockchaind.service",
        "/usr/share/dbus-1/system.d/org.opdbus.Blockchain.conf",
        "/usr/share/dbus-1/system-services/org.opdbus.Blockchain.service",
        "/usr/share/dbus-1/interfaces/org.opdbus.Blockchain.xml",
        "/usr/lib/systemd/catalog/opdbus-blockchain.catalog",
        "/usr/share/doc/opdbus-blockchain",
        "/usr/share/man/man8/opdbus-blockchaind.8.gz",
        "/usr/share/man/man1/opdbus-chain.1.gz",
        "/usr/share/bash-completion/completions/opdbus-chain",
        "/usr/share/bash-completion/completions/opdbus-blockchaind",
        "/usr/share/zsh/vendor-completions/_opdbus-chain",
        "/usr/share/zsh/vendor-completions/_opdbus-blockchaind",
        "/usr/share/fish/vendor_completions.d/opdbus-chain.fish",
        "/usr/share/fish/vendor_completions.d/opdbus-blockchaind.fish",
        "/etc/default/opdbus-blockchain",
    ] {
        assert!(!ct.path(file).exists(), "{file} is still there");
    }
    // Nothing else of ours is left in the man and completion directories.
    let left =
        ct.sh("ls /usr/share/man/man*/opdbus* /usr/share/*/*completion*/*opdbus* 2>/dev/null");
    assert_eq!(stdout(&left), "", "left behind");
    assert_ne!(ct.unit_property("ActiveState"), "active");
    assert!(
        ct.path("/var/lib/op-dbus/blockchain").is_dir(),
        "the chain was removed"
    );
    // No activation file any more: a call finds no service.
    let call = ct.run(&[
        "busctl",
        "call",
        BUS_NAME,
        OBJECT_PATH,
        BUS_NAME,
        "GetBlockByHeight",
        "t",
        "0",
    ]);
    assert!(!call.status.success(), "the service still answers");
}
