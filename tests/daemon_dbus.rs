//! The real daemon on a real private bus, driven with busctl and with a zbus client.

mod common;

use common::*;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;

fn start() -> (Bus, Daemon, tempfile::TempDir) {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    (bus, daemon, dir)
}

#[test]
fn busctl_round_trip_add_get_verify() {
    let (bus, _daemon, _dir) = start();
    let (ok, out, err) = bus.call(
        "AddFootprint",
        "sss",
        &["network", "create", r#"{"interface":"eth0","mtu":1500}"#],
    );
    assert!(ok, "AddFootprint failed: {err}");
    // busctl prints: ts 1 "<hash>"
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some("ts"));
    assert_eq!(
        words.next(),
        Some("1"),
        "first footprint is height 1: {out}"
    );
    let hash = words.next().expect("hash").trim_matches('"').to_owned();
    assert_eq!(hash.len(), 64);

    let out = bus.busctl(&[
        "--json=short",
        "call",
        BUS_NAME,
        OBJECT_PATH,
        BUS_NAME,
        "GetBlock",
        "s",
        &hash,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("busctl JSON");
    let block: serde_json::Value =
        serde_json::from_str(reply["data"][0].as_str().expect("string")).expect("block JSON");
    assert_eq!(block["hash"], hash.as_str());
    assert_eq!(block["height"], 1);
    assert_eq!(block["plugin"], "network");
    assert_eq!(block["operation"], "create");
    assert_eq!(block["data"]["interface"], "eth0");
    assert_eq!(block["caller"]["uid"], nix::unistd::getuid().as_raw());
    assert!(block["caller"]["pid"].as_u64().is_some_and(|p| p > 0));
    assert!(block["caller"]["bus_name"]
        .as_str()
        .is_some_and(|n| n.starts_with(':')));
    assert_eq!(block["prev_hash"].as_str().map(str::len), Some(64));

    let (ok, by_height, _) = bus.call("GetBlockByHeight", "t", &["1"]);
    assert!(ok);
    assert!(by_height.contains(&hash));

    let (ok, verify, _) = bus.call("Verify", "", &[]);
    assert!(ok);
    assert!(verify.starts_with("bts true 2 "), "{verify}");

    let out = bus.busctl(&[
        "get-property",
        BUS_NAME,
        OBJECT_PATH,
        BUS_NAME,
        "Height",
        "HeadHash",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("t 1"), "{text}");
    assert!(text.contains(&hash), "{text}");

    // Introspection names the out arguments and gives their real types.
    let out = bus.busctl(&["--xml-interface", "introspect", BUS_NAME, OBJECT_PATH]);
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        xml.contains(r#"<arg name="height" type="t" direction="out"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<arg name="hash" type="s" direction="out"/>"#),
        "{xml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zbus_client_round_trip_keeps_data_verbatim() {
    let (bus, _daemon, _dir) = start();
    let connection = bus.connect().await;
    let data = "{ \"unit\" : \"nginx.service\",\n  \"state\": \"restarted\" }";
    let (height, hash) = add_footprint(&connection, "systemd", "restart", data)
        .await
        .expect("add");
    assert_eq!(height, 1);
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "GetBlock",
            &(hash.as_str(),),
        )
        .await
        .expect("GetBlock");
    let json: String = reply.body().deserialize().expect("string");
    assert!(
        json.contains(data),
        "data must be embedded byte for byte: {json}"
    );
    let block: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(block["hash"], hash.as_str());
}

/// Calls a method of the daemon that takes and returns nothing (Subscribe, Unsubscribe).
async fn call_void(connection: &zbus::Connection, member: &str) {
    connection
        .call_method(Some(BUS_NAME), OBJECT_PATH, Some(BUS_NAME), member, &())
        .await
        .unwrap_or_else(|e| panic!("{member}: {e}"));
}

/// `BlockAdded` signals as `listener` receives them, with only a match rule (no Subscribe).
async fn block_added_stream(listener: &zbus::Connection) -> zbus::MessageStream {
    zbus::MessageStream::for_match_rule(block_added_rule(), listener, None)
        .await
        .expect("match")
}

fn block_added_rule() -> zbus::MatchRule<'static> {
    opdbus_blockchain::dbus::block_added_rule().expect("the BlockAdded rule")
}

/// The next message of `stream`, which must come within 10 s (`what` says what it is).
async fn next_within_10s(stream: &mut zbus::MessageStream, what: &str) -> zbus::Message {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"))
        .expect("stream open")
        .expect("a whole message")
}

async fn next_block_added(signals: &mut zbus::MessageStream) -> (u64, String, String, String) {
    let message = next_within_10s(signals, "BlockAdded").await;
    message.body().deserialize().expect("tsss")
}

/// BlockAdded goes out, broadcast, only while a client that called Subscribe is on the bus:
/// not before, not after its Unsubscribe, not after it left the bus. Signals arrive in order,
/// so a height the listener skips was not signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_added_is_emitted_while_a_client_is_subscribed() {
    let (bus, _daemon, _dir) = start();
    let listener = bus.connect().await;
    let mut signals = block_added_stream(&listener).await;
    let writer = bus.connect().await;
    let add = |data: &'static str| {
        let writer = writer.clone();
        async move {
            add_footprint(&writer, "firewall", "add_rule", data)
                .await
                .expect("add")
        }
    };
    let (unsignalled, _) = add("{}").await;

    let subscriber = bus.connect().await;
    call_void(&subscriber, "Subscribe").await;
    call_void(&subscriber, "Subscribe").await; // again: no error, one subscription
    let (height, hash) = add(r#"{"port":22}"#).await;
    assert_eq!(height, unsignalled + 1);
    assert_eq!(
        next_block_added(&mut signals).await,
        (height, hash, "firewall".into(), "add_rule".into()),
        "the first signal is the first block added after Subscribe"
    );

    call_void(&subscriber, "Unsubscribe").await;
    let (quiet, _) = add("{}").await;
    call_void(&subscriber, "Subscribe").await;
    let (loud, _) = add("{}").await;
    assert_eq!(
        next_block_added(&mut signals).await.0,
        loud,
        "{quiet} signalled"
    );

    // Leaving the bus ends the subscription once the daemon has seen the name go.
    drop(subscriber);
    for attempt in 0.. {
        let (quiet, _) = add("{}").await;
        let again = bus.connect().await;
        call_void(&again, "Subscribe").await;
        let (loud, _) = add("{}").await;
        let seen = next_block_added(&mut signals).await.0;
        call_void(&again, "Unsubscribe").await;
        if seen == loud {
            break;
        }
        assert_eq!(seen, quiet);
        assert_eq!(next_block_added(&mut signals).await.0, loud);
        assert!(
            attempt < 50,
            "BlockAdded still emitted 5 s after the subscriber left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_times_500_footprints_are_all_acked_dense_and_verified() {
    let (bus, mut daemon, _dir) = start();
    let acked = run_clients(&bus, 16, 500).await;
    assert_eq!(acked.len(), 16 * 500);
    let heights: HashSet<u64> = acked.iter().map(|(h, _)| *h).collect();
    assert_eq!(
        heights,
        (1..=8000).collect::<HashSet<u64>>(),
        "heights must be dense and unique"
    );
    let connection = bus.connect().await;
    for (height, hash) in acked.iter().step_by(97) {
        let block = get_block(&connection, hash).await.expect("readable");
        assert_eq!(block["height"], *height);
    }
    assert!(daemon.stop().success(), "SIGTERM must exit 0");
    let (code, out, _) = cli(&[
        "verify",
        "--chain-dir",
        daemon.chain_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("8001 blocks checked"), "{out}");
}

/// Runs `clients` separate bus connections, each adding `each` footprints; returns the acks.
async fn run_clients(bus: &Bus, clients: usize, each: usize) -> Vec<(u64, String)> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let connection = bus.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::with_capacity(each);
            for i in 0..each {
                let data = format!(r#"{{"client":{client},"seq":{i}}}"#);
                acked.push(
                    add_footprint(&connection, "load", "write", &data)
                        .await
                        .expect("acked"),
                );
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_footprints_survive_kill_9_under_load() {
    let (bus, mut daemon, dir) = start();
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<(u64, String)>::new()));
    let mut tasks = Vec::new();
    for client in 0..16 {
        let connection = bus.connect().await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let data = format!(r#"{{"client":{client},"seq":{i}}}"#);
                match add_footprint(&connection, "load", "write", &data).await {
                    Ok(ack) => acked.lock().push(ack),
                    Err(_) => return, // the daemon died under us: this one was never acked
                }
            }
        }));
    }
    // Let the load run, then crash the daemon in the middle of it.
    common::wait_until(std::time::Duration::from_secs(60), "1000 acks", || {
        acked.lock().len() >= 1000
    });
    daemon.kill9();
    for task in tasks {
        let _ = task.await;
    }
    let acked = acked.lock().clone();
    // The killed daemon's newest segment runs on into free space (zeros it was extended by);
    // both verifiers read it as the end of the data, with every acked block before it.
    let chain = dir.path().join("chain");
    let newest = opdbus_blockchain::chain::segment::list(&chain)
        .expect("list")
        .pop()
        .expect("segment")
        .1;
    let bytes = std::fs::read(&newest).expect("read");
    let data_end = opdbus_blockchain::chain::segment::trailing_zeros_start(&bytes);
    assert!(bytes.len() > data_end, "the segment is extended ahead");
    let max_acked = acked.iter().map(|(h, _)| *h).max().expect("some acks");
    let report =
        opdbus_blockchain::chain::verify::verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(report.ok(), "{}", report.summary());
    assert!(report.head.is_some_and(|(h, _)| h >= max_acked));
    let python = std::process::Command::new("python3")
        .arg(common::repo_path("tools/verify-chain.py"))
        .arg(&chain)
        .output()
        .expect("python3");
    let out = String::from_utf8_lossy(&python.stdout);
    assert!(
        python.status.success() && out.starts_with("intact"),
        "{out}"
    );
    daemon.restart(&bus);
    let connection = bus.connect().await;
    for (height, hash) in &acked {
        let block = get_block(&connection, hash)
            .await
            .unwrap_or_else(|e| panic!("acked block {height} {hash} lost after kill -9: {e}"));
        assert_eq!(block["height"], *height);
    }
    let (ok, verify, _) = bus.call("Verify", "", &[]);
    assert!(ok && verify.starts_with("bts true"), "{verify}");
    // The chain goes on from where it was.
    let (height, _) = add_footprint(&connection, "after", "restart", "{}")
        .await
        .expect("add after restart");
    assert!(height > max_acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_typed_errors_and_adds_nothing() {
    let (bus, _daemon, _dir) = start();
    let connection = bus.connect().await;
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(70 * 1024));
    let long_name = "p".repeat(300);
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("network", "create", "{not json", "data is not valid JSON"),
        ("", "create", "{}", "plugin is empty"),
        ("network", "", "{}", "operation is empty"),
        (&long_name, "create", "{}", "plugin is 300 bytes long"),
        ("net\u{7}work", "create", "{}", "control character"),
        ("network", "create", &big, "the limit is 65536"),
    ];
    for (plugin, operation, data, expected) in cases {
        assert_refused_as_invalid(&connection, plugin, operation, data, expected).await;
    }
    for (member, arg) in [("GetBlock", "zz"), ("GetBlock", &"0".repeat(64)[..])] {
        let err = connection
            .call_method(Some(BUS_NAME), OBJECT_PATH, Some(BUS_NAME), member, &(arg,))
            .await
            .expect_err("must fail");
        let name = error_name(&err);
        assert!(
            name == "org.opdbus.Blockchain.Error.InvalidArgument"
                || name == "org.opdbus.Blockchain.Error.NotFound",
            "{name}"
        );
    }
    let err = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "GetBlockByHeight",
            &(99u64,),
        )
        .await
        .expect_err("past the head");
    assert_eq!(error_name(&err), "org.opdbus.Blockchain.Error.NotFound");
    let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, BUS_NAME, "Height"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t 0",
        "nothing may have been added"
    );
}

#[test]
fn a_flipped_byte_is_reported_at_its_height() {
    let (bus, mut daemon, dir) = start();
    let mut hashes = Vec::new();
    for i in 1..=20 {
        let (ok, out, err) = bus.call(
            "AddFootprint",
            "sss",
            &["network", "create", &format!(r#"{{"n":{i}}}"#)],
        );
        assert!(ok, "{err}");
        hashes.push(out);
    }
    assert!(daemon.stop().success());
    // Tamper with a copy, as an operator checking a backup would.
    let copy = dir.path().join("copy");
    copy_dir(&daemon.chain_dir, &copy);
    let segment = std::fs::read_dir(&copy)
        .expect("read copy")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "chain"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    // Find height 13's data and flip one byte of it.
    let needle = br#"{"n":13}"#;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("height 13's data");
    bytes[at + 5] ^= 0x01;
    std::fs::write(&segment, bytes).expect("write tampered segment");
    let (code, out, _) = cli(&["verify", "--chain-dir", copy.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("first bad block at height 13"), "{out}");
    // The original is untouched and intact.
    let (code, out, _) = cli(&[
        "verify",
        "--chain-dir",
        daemon.chain_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{out}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        // The segments and index; the tlog directory is not what this test tampers with.
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

#[test]
fn a_second_daemon_on_the_same_chain_is_refused_with_a_reason() {
    let (bus, daemon, _dir) = start();
    let out = std::process::Command::new(DAEMON)
        .args(["--bus", &bus.address, "--chain-dir"])
        .arg(&daemon.chain_dir)
        .arg("--cache-dir")
        .arg(&daemon.cache_dir)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
}

#[test]
fn the_shipped_introspection_xml_matches_the_running_daemon() {
    let (bus, _daemon, _dir) = start();
    let out = bus.busctl(&["--xml-interface", "introspect", BUS_NAME, OBJECT_PATH]);
    let live = String::from_utf8_lossy(&out.stdout).into_owned();
    let shipped =
        std::fs::read_to_string(repo_path("dbus/org.opdbus.Blockchain.xml")).expect("xml");
    let interface = |xml: &str| -> String {
        let start = xml
            .find(r#"<interface name="org.opdbus.Blockchain">"#)
            .expect("our interface");
        let end = start + xml[start..].find("</interface>").expect("end");
        xml[start..end].to_owned()
    };
    assert_eq!(
        interface(&live),
        interface(&shipped),
        "dbus/org.opdbus.Blockchain.xml is out of date; regenerate it from the daemon"
    );
    // A program generated from the XML (gdbus-codegen, zbus-xmlgen) names its results after
    // the args: an unnamed one becomes arg_0.
    let ours = interface(&live);
    let args: Vec<&str> = ours.split("<arg ").skip(1).collect();
    assert!(args.len() > 20, "too few args introspected: {ours}");
    let unnamed: Vec<&str> = args
        .iter()
        .filter(|arg| !arg.trim_start().starts_with("name=\""))
        .map(|arg| arg.split("/>").next().unwrap_or(arg))
        .collect();
    assert!(unnamed.is_empty(), "unnamed args: {unnamed:?}");
}

/// AddFootprints: one reply with consecutive heights, each block readable by height with the
/// hash the reply gave, a BlockAdded per block after the reply; one bad footprint refuses the
/// whole batch and names it; busctl can send a batch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_footprints_is_one_all_or_nothing_write() {
    let (bus, _daemon, _dir) = start();
    let writer = bus.connect().await;
    // Every message this connection receives, replies and signals, in the order of arrival.
    zbus::fdo::DBusProxy::new(&writer)
        .await
        .expect("proxy")
        .add_match_rule(block_added_rule())
        .await
        .expect("match");
    call_void(&writer, "Subscribe").await;
    let mut incoming = zbus::MessageStream::from(&writer);
    let batch: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            (
                "network".to_owned(),
                "create".to_owned(),
                format!(r#"{{"interface":"br{i}"}}"#),
            )
        })
        .collect();
    let added = add_footprints(&writer, &batch)
        .await
        .expect("AddFootprints");
    assert_eq!(
        added.iter().map(|(h, _)| *h).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (height, hash) in &added {
        let (ok, out, err) = bus.call("GetBlockByHeight", "t", &[&height.to_string()]);
        assert!(ok, "{err}");
        assert!(out.contains(hash.as_str()), "{out}");
    }
    let mut seen_reply = false;
    let mut signals = Vec::new();
    while signals.len() < 3 {
        let message = next_within_10s(&mut incoming, "BlockAdded").await;
        let header = message.header();
        // The only method return this connection receives after its stream opened.
        if message.message_type() == zbus::message::Type::MethodReturn {
            seen_reply = true;
        } else if header.member().is_some_and(|m| m.as_str() == "BlockAdded") {
            assert!(seen_reply, "BlockAdded came before the reply");
            let (h, s, _, _): (u64, String, String, String) =
                message.body().deserialize().expect("tsss");
            signals.push((h, s));
        }
    }
    assert_eq!(signals, added, "one BlockAdded per block, in order");

    // One bad footprint refuses the batch, naming it; nothing is written.
    let mut bad: Vec<(&str, &str, &str)> = vec![("network", "create", "{}"); 4];
    bad[2] = ("network", "create", "{not json");
    let err = add_footprints(&writer, &bad).await.expect_err("refused");
    assert_eq!(
        error_name(&err),
        "org.opdbus.Blockchain.Error.InvalidArgument"
    );
    assert!(
        err.to_string()
            .contains("footprint 2 of 4 (counting from 0)"),
        "{err}"
    );
    for (size, expected) in [(0, "no footprint"), (1001, "the limit is 1000")] {
        let batch: Vec<(&str, &str, &str)> = vec![("network", "create", "{}"); size];
        let err = add_footprints(&writer, &batch).await.expect_err("refused");
        assert!(err.to_string().contains(expected), "{err}");
    }
    let (ok, out, _) = bus.call("GetBlockByHeight", "t", &["4"]);
    assert!(!ok, "nothing past height 3: {out}");

    // The admin's way: busctl with the count and the fields.
    let (ok, out, err) = bus.call(
        "AddFootprints",
        "a(sss)",
        &["2", "systemd", "restart", "{}", "systemd", "stop", "{}"],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("a(ts) 2 4 \""), "{out}");
    assert!(out.contains(" 5 \""), "{out}");
}

/// The daemon's own buffered connection (src/dbus/socket.rs) on a bus at an abstract socket
/// address: it says hello, and messages of every size (a few bytes to many times the read
/// buffer) come through whole and in order, with other messages queued behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffered_connection_reads_whole_messages_from_an_abstract_socket() {
    use opdbus_blockchain::config::BusChoice;
    use std::io::BufRead;
    let name = format!("opdbus-test-{}-buffered", std::process::id());
    let mut bus = std::process::Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .arg(format!("--address=unix:abstract={name}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("dbus-daemon");
    let mut address = String::new();
    std::io::BufReader::new(bus.stdout.take().expect("stdout"))
        .read_line(&mut address)
        .expect("the bus prints its address");
    let address = address.trim().to_string();
    assert!(address.starts_with("unix:abstract="), "{address}");

    let choice = BusChoice::Address(address.clone());
    let server = opdbus_blockchain::dbus::socket::DaemonBus::new(&choice)
        .expect("a Unix socket address")
        .connect()
        .await
        .expect("connect")
        .name("org.opdbus.BufferedTest")
        .expect("name")
        .build();
    let server = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the hello takes less than 10 s")
        .expect("the buffered connection says hello and owns its name");
    let client = zbus::connection::Builder::address(address.as_str())
        .expect("address")
        .build()
        .await
        .expect("client");
    // The client sends signals of growing size without waiting; the server must read each
    // whole, in order, whatever the boundaries of its reads.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.opdbus.BufferedTest")
        .expect("interface")
        .build();
    let mut received = zbus::MessageStream::for_match_rule(rule, &server, Some(64))
        .await
        .expect("match rule");
    let sizes = [
        0usize, 1, 15, 16, 17, 4095, 65_535, 65_536, 65_537, 300_000, 5, 1_000_000,
    ];
    let emit_sized = |index: u32, text: String| {
        let client = client.clone();
        async move {
            client
                .emit_signal(
                    None::<()>,
                    "/org/opdbus/BufferedTest",
                    "org.opdbus.BufferedTest",
                    "Sized",
                    &(index, text),
                )
                .await
                .expect("emit");
        }
    };
    for (i, size) in sizes.iter().enumerate() {
        emit_sized(i as u32, "y".repeat(*size)).await;
    }
    for (i, size) in sizes.iter().enumerate() {
        let message = next_within_10s(&mut received, "each message").await;
        let (index, text): (u32, String) = message.body().deserialize().expect("body");
        assert_eq!((index as usize, text.len()), (i, *size));
        assert!(text.bytes().all(|b| b == b'y'));
    }
    // After all of that, the connection reads on.
    emit_sized(99, "after".to_string()).await;
    let after = next_within_10s(&mut received, "a message after all of that").await;
    let (index, _): (u32, String) = after.body().deserialize().expect("body");
    assert_eq!(index, 99);
    drop((server, client));
    let _ = bus.kill();
    let _ = bus.wait();
}
