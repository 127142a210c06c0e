//! Hostile callers on the real bus: thousands of random and malformed calls, oversized data,
//! and a client that floods calls without ever reading its replies. The daemon stays up,
//! answers every call with a typed error or a valid result, other callers keep being served,
//! and the chain verifies afterwards.

mod common;

use common::*;
use opdbus_testkit::SplitMix64;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;
use zbus::zvariant::DynamicType;

/// Hostile inputs drawn from the kit's seeded generator, so a failing case replays from its seed.
trait Hostile {
    fn text(&mut self, max_len: u64) -> String;
    fn json_ish(&mut self) -> String;
    fn name(&mut self) -> String;
}

impl Hostile for SplitMix64 {
    fn text(&mut self, max_len: u64) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "0", "-", "_", ".", " ", "\u{7}", "\u{1}", "\t", "\n", "é", "€", "𝄞", "{",
            "}", "\"", "\\", ":", ",", "[", "]", "null", "true", "1e999", "\u{feff}", "\u{202e}",
        ];
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
            .collect()
    }

    fn json_ish(&mut self) -> String {
        match self.below(8) {
            0 => self.text(40),
            1 => format!(r#"{{"k":{}}}"#, self.next()),
            2 => format!(r#"{{"k":"{}"}}"#, self.text(20).replace(['"', '\\'], "")),
            3 => "[".repeat(self.below(200) as usize),
            4 => format!("[{}]", "1,".repeat(self.below(100) as usize) + "1"),
            5 => "{}".into(),
            6 => format!(r#"{{"pad":"{}"}}"#, "x".repeat(self.below(70_000) as usize)),
            _ => String::new(),
        }
    }

    fn name(&mut self) -> String {
        match self.below(6) {
            0 => String::new(),
            1 => "n".repeat(250 + self.below(20) as usize),
            2 => self.text(12),
            _ => ["network", "systemd", "login1"][self.below(3) as usize].into(),
        }
    }
}

/// Typed answers a hostile call may get. A call whose argument types do not match is refused
/// by zbus itself, before our code runs, as `org.freedesktop.zbus.Error` ("Signature
/// mismatch"). (A string holding NUL is not valid D-Bus: the bus disconnects its sender, so it
/// never reaches the daemon and is not sent here.)
const ALLOWED_ERRORS: &[&str] = &[
    "org.freedesktop.zbus.Error",
    "org.opdbus.Blockchain.Error.InvalidArgument",
    "org.opdbus.Blockchain.Error.NotFound",
    "org.freedesktop.DBus.Error.InvalidArgs",
    "org.freedesktop.DBus.Error.UnknownMethod",
];

async fn call<B>(
    connection: &zbus::Connection,
    member: &str,
    body: &B,
) -> zbus::Result<zbus::Message>
where
    B: serde::Serialize + DynamicType,
{
    connection
        .call_method(Some(BUS_NAME), OBJECT_PATH, Some(BUS_NAME), member, body)
        .await
}

/// One random call; returns the acked (height, hash) of an accepted AddFootprint.
async fn one_random_call(
    connection: &zbus::Connection,
    rng: &mut SplitMix64,
    known: &[String],
) -> Result<Option<(u64, String)>, String> {
    let reply = match rng.below(7) {
        0 | 1 => {
            let (plugin, operation, data) = (rng.name(), rng.name(), rng.json_ish());
            match call(connection, "AddFootprint", &(plugin, operation, data)).await {
                Ok(reply) => {
                    let (height, hash): (u64, String) =
                        reply.body().deserialize().map_err(|e| e.to_string())?;
                    if hash.len() != 64 {
                        return Err(format!("AddFootprint answered a bad hash {hash:?}"));
                    }
                    return Ok(Some((height, hash)));
                }
                Err(err) => Err(err),
            }
        }
        2 => {
            let hash = match rng.below(4) {
                0 if !known.is_empty() => known[rng.below(known.len() as u64) as usize].clone(),
                1 => format!("{:064x}", rng.next()),
                2 => rng.text(70),
                _ => "g".repeat(64),
            };
            match call(connection, "GetBlock", &(hash.clone(),)).await {
                Ok(reply) => {
                    let json: String = reply.body().deserialize().map_err(|e| e.to_string())?;
                    let block: serde_json::Value =
                        serde_json::from_str(&json).map_err(|e| format!("GetBlock JSON: {e}"))?;
                    if block["hash"] != hash.as_str() {
                        return Err(format!("GetBlock({hash}) answered block {}", block["hash"]));
                    }
                    return Ok(None);
                }
                Err(err) => Err(err),
            }
        }
        3 => {
            let height = match rng.below(3) {
                0 => rng.below(50),
                1 => u64::MAX - rng.below(3),
                _ => rng.next(),
            };
            match call(connection, "GetBlockByHeight", &(height,)).await {
                Ok(reply) => {
                    let json: String = reply.body().deserialize().map_err(|e| e.to_string())?;
                    let block: serde_json::Value =
                        serde_json::from_str(&json).map_err(|e| format!("block JSON: {e}"))?;
                    if block["height"] != height {
                        return Err(format!(
                            "GetBlockByHeight({height}) answered {}",
                            block["height"]
                        ));
                    }
                    return Ok(None);
                }
                Err(err) => Err(err),
            }
        }
        // Wrong argument types and counts.
        4 => call(connection, "AddFootprint", &(rng.next(),)).await,
        5 => call(connection, "GetBlock", &(rng.next() as u32, rng.text(5))).await,
        _ => call(connection, "GetBlockByHeight", &(rng.text(8),)).await,
    };
    match reply {
        Ok(_) => Err("a malformed call was accepted".into()),
        Err(err) => {
            let name = error_name(&err);
            if ALLOWED_ERRORS.contains(&name.as_str()) {
                Ok(None)
            } else {
                Err(format!("untyped answer {name}: {err}"))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_and_malformed_calls_get_typed_answers_and_the_chain_verifies() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let pid = daemon.pid();
    const TASKS: u64 = 8;
    const CALLS: u64 = 10_000;
    let known = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let connection = bus.connect().await;
        let known = known.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64(0x5eed_0000 + task * 7919 + 1);
            let mut acked = Vec::new();
            for i in 0..CALLS / TASKS {
                let snapshot = known.lock().clone();
                match one_random_call(&connection, &mut rng, &snapshot).await {
                    Ok(Some(ack)) => {
                        known.lock().push(ack.1.clone());
                        acked.push(ack);
                    }
                    Ok(None) => {}
                    Err(problem) => panic!("task {task} call {i}: {problem}"),
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("caller task"));
    }
    assert!(!acked.is_empty(), "some random footprints are valid");
    let heights: HashSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(
        heights.len(),
        acked.len(),
        "every accepted footprint got its own height"
    );
    assert_eq!(daemon.pid(), pid);
    let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, BUS_NAME, "Height"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("t {}", acked.len()),
        "exactly the accepted footprints were added"
    );
    let (ok, verify, _) = bus.call("Verify", "", &[]);
    assert!(ok && verify.starts_with("bts true"), "{verify}");
    eprintln!(
        "{CALLS} random calls, {} footprints accepted, chain verified",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_data_is_invalid_argument_before_the_write_path() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let pid = daemon.pid();
    let connection = bus.connect().await;
    for size in [65_537usize, 1 << 20, 16 << 20] {
        let data = format!(r#"{{"blob":"{}"}}"#, "x".repeat(size));
        let err = add_footprint(&connection, "network", "create", &data)
            .await
            .expect_err("too large");
        assert_eq!(
            error_name(&err),
            "org.opdbus.Blockchain.Error.InvalidArgument",
            "{size} bytes: {err}"
        );
        assert!(err.to_string().contains("the limit is 65536"), "{err}");
    }
    // Not valid JSON and oversized: refused all the same.
    let err = add_footprint(&connection, "network", "create", &"[".repeat(1 << 20))
        .await
        .expect_err("too large");
    assert_eq!(
        error_name(&err),
        "org.opdbus.Blockchain.Error.InvalidArgument"
    );
    // Past the bus's own limit (dbus-daemon's max_message_size, 32 MiB by default on the
    // system bus): the bus drops the message (and the sender); the daemon never sees it.
    let reckless = bus.connect().await;
    let huge = format!(r#"{{"blob":"{}"}}"#, "x".repeat(40 << 20));
    let err = add_footprint(&reckless, "network", "create", &huge)
        .await
        .expect_err("over the bus limit");
    eprintln!("40 MiB message: {err}");
    let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, BUS_NAME, "Height"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t 0");
    assert_eq!(daemon.pid(), pid, "the daemon is still the same process");
    add_footprint(&connection, "network", "create", "{}")
        .await
        .expect("still serving");
}

/// A raw bus client that authenticates, sends `calls` method calls and never reads a byte of
/// the replies; it also leaves a half-sent message on its connection.
fn stuck_client(address: &str, calls: usize) -> std::os::unix::net::UnixStream {
    let path = address
        .strip_prefix("unix:path=")
        .expect("unix path address");
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
    let uid_hex: String = nix::unistd::getuid()
        .as_raw()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    stream
        .write_all(format!("\0AUTH EXTERNAL {uid_hex}\r\n").as_bytes())
        .expect("auth");
    let mut line = String::new();
    BufReader::new(stream.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("auth reply");
    assert!(line.starts_with("OK "), "auth: {line}");
    stream.write_all(b"BEGIN\r\n").expect("begin");
    let hello = zbus::Message::method_call("/org/freedesktop/DBus", "Hello")
        .and_then(|b| b.destination("org.freedesktop.DBus"))
        .and_then(|b| b.interface("org.freedesktop.DBus"))
        .and_then(|b| b.build(&()))
        .expect("hello");
    stream.write_all(hello.data().bytes()).expect("send hello");
    let mut last = Vec::new();
    for i in 0..calls {
        let message = zbus::Message::method_call(OBJECT_PATH, "GetBlockByHeight")
            .and_then(|b| b.destination(BUS_NAME))
            .and_then(|b| b.interface(BUS_NAME))
            .and_then(|b| b.build(&((i % 2) as u64,)))
            .expect("message");
        last = message.data().bytes().to_vec();
        stream.write_all(&last).expect("send call");
    }
    // Half a message, then silence.
    stream
        .write_all(&last[..last.len() / 2])
        .expect("half a message");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_does_not_stall_other_callers() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let address = bus.address.clone();
    // 20,000 calls whose ~10 MB of replies are never read.
    let stuck = tokio::task::spawn_blocking(move || stuck_client(&address, 20_000))
        .await
        .expect("stuck client");
    let connection = bus.connect().await;
    // A hang guard, not a speed requirement: if other callers were stalled, this fails
    // instead of hanging the test suite.
    let served = tokio::time::timeout(Duration::from_secs(120), async {
        let mut heights = Vec::new();
        for i in 0..200 {
            let (height, hash) =
                add_footprint(&connection, "other", "write", &format!(r#"{{"i":{i}}}"#))
                    .await
                    .expect("another caller is served");
            let block = get_block(&connection, &hash).await.expect("read back");
            assert_eq!(block["height"], height);
            heights.push(height);
        }
        heights
    })
    .await
    .expect("other callers were stalled by a client that does not read");
    assert_eq!(served.len(), 200);
    let (ok, verify, _) = bus.call("Verify", "", &[]);
    assert!(ok && verify.starts_with("bts true"), "{verify}");
    drop(stuck);
    drop(daemon);
}
