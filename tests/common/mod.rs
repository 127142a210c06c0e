//! Test harness over opdbus-testkit's private bus and daemon process: the binaries of this
//! package, panics instead of errors, and the busctl / dbus-send / zbus helpers tests call.
//! Everything is cleaned up on drop, also when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BUS_NAME: &str = "org.opdbus.Blockchain";
pub const OBJECT_PATH: &str = "/org/opdbus/Blockchain";
pub const DAEMON: &str = env!("CARGO_BIN_EXE_opdbus-blockchaind");
pub const CLI: &str = env!("CARGO_BIN_EXE_opdbus-chain");

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The kit's private bus (as strict as Debian's system bus), with panicking helpers for tests.
pub struct Bus(opdbus_testkit::Bus);

impl std::ops::Deref for Bus {
    type Target = opdbus_testkit::Bus;
    fn deref(&self) -> &opdbus_testkit::Bus {
        &self.0
    }
}

impl Bus {
    /// With our policy file.
    pub fn start() -> Bus {
        Bus(opdbus_testkit::Bus::start(&[opdbus_testkit::process::POLICY]).expect("private bus"))
    }

    /// The same bus with another policy file in place of ours.
    pub fn start_with_policy(policy: &Path) -> Bus {
        let policy = std::fs::read_to_string(policy).expect("policy file");
        Bus(opdbus_testkit::Bus::start(&[&policy]).expect("private bus"))
    }

    /// `busctl --address=… <args>`.
    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("busctl must be installed (systemd)")
    }

    /// `busctl call` on our object; returns (success, stdout, stderr).
    pub fn call(&self, member: &str, signature: &str, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["call", BUS_NAME, OBJECT_PATH, BUS_NAME, member];
        if !signature.is_empty() {
            all.push(signature);
        }
        all.extend_from_slice(args);
        let out = self.busctl(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Calls a method of ours that returns `a{sv}` (through `busctl --json=short`) and gives the
    /// dictionary as plain JSON values; nested `aa{sv}` become arrays of objects.
    pub fn call_dict(&self, member: &str) -> serde_json::Map<String, serde_json::Value> {
        plain_dict(&self.call_json(member))
    }

    /// The same for a method that returns `aa{sv}`: one dictionary per element.
    pub fn call_dicts(&self, member: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.call_json(member)
            .as_array()
            .expect("aa{sv}")
            .iter()
            .map(plain_dict)
            .collect()
    }

    /// The first value a method of ours without arguments returns, as busctl's JSON.
    fn call_json(&self, member: &str) -> serde_json::Value {
        let out = self.busctl(&[
            "--json=short",
            "call",
            BUS_NAME,
            OBJECT_PATH,
            BUS_NAME,
            member,
        ]);
        assert!(
            out.status.success(),
            "busctl {member}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut reply: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("busctl JSON");
        reply["data"][0].take()
    }

    /// `dbus-send --print-reply` on our object (prints D-Bus error names, unlike busctl).
    pub fn dbus_send(&self, as_uid: Option<u32>, member: &str, args: &[&str]) -> Output {
        let mut command = match as_uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "dbus-send",
                ]);
                c
            }
            None => Command::new("dbus-send"),
        };
        command
            .arg(format!("--bus={}", self.address))
            .arg("--print-reply")
            .arg(format!("--dest={BUS_NAME}"))
            .arg(OBJECT_PATH)
            .arg(format!("{BUS_NAME}.{member}"))
            .args(args)
            .output()
            .expect("dbus-send must be installed")
    }

    pub async fn connect(&self) -> zbus::Connection {
        self.0.connect().await.expect("connect to the private bus")
    }
}

/// The daemon binary, running on a bus (the kit's, with panicking helpers for tests).
pub struct Daemon {
    inner: opdbus_testkit::Daemon,
    pub chain_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until it owns its name.
    pub fn start(bus: &Bus, chain_dir: &Path, cache_dir: &Path) -> Daemon {
        Self::start_with_env(bus, chain_dir, cache_dir, &[])
    }

    pub fn start_with_env(
        bus: &Bus,
        chain_dir: &Path,
        cache_dir: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let options = env.iter().fold(
            opdbus_testkit::process::DaemonOptions::new(DAEMON, chain_dir, cache_dir),
            |options, (key, value)| options.env(key, value),
        );
        let inner = opdbus_testkit::Daemon::start(bus, options).unwrap_or_else(|e| panic!("{e}"));
        Daemon {
            chain_dir: inner.options.chain_dir.clone(),
            cache_dir: inner.options.cache_dir.clone(),
            log: inner.options.log.clone(),
            inner,
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid().expect("running")
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        self.inner.kill9();
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.inner
            .stop(None)
            .expect("stop the daemon")
            .expect("an exit status")
    }

    /// Waits until the daemon exits by itself; returns its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.inner.wait_exit().expect("wait for the daemon")
    }

    /// Starts it again on the same directories.
    pub fn restart(&mut self, bus: &Bus) {
        self.inner.restart(bus).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn log_text(&self) -> String {
        self.inner.log_text()
    }
}

pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `opdbus-chain <args>`; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(CLI)
        .args(args)
        .output()
        .expect("run opdbus-chain");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// AddFootprint through a zbus connection.
pub async fn add_footprint(
    connection: &zbus::Connection,
    plugin: &str,
    operation: &str,
    data: &str,
) -> zbus::Result<(u64, String)> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "AddFootprint",
            &(plugin, operation, data),
        )
        .await?;
    reply.body().deserialize()
}

/// Asserts that AddFootprint refuses this footprint with InvalidArgument, its message naming
/// `expected`.
pub async fn assert_refused_as_invalid(
    connection: &zbus::Connection,
    plugin: &str,
    operation: &str,
    data: &str,
    expected: &str,
) {
    let err = add_footprint(connection, plugin, operation, data)
        .await
        .expect_err("must be refused");
    assert_eq!(
        error_name(&err),
        "org.opdbus.Blockchain.Error.InvalidArgument",
        "{err}"
    );
    assert!(
        err.to_string().contains(expected),
        "message '{err}' lacks '{expected}'"
    );
}

/// GetBlock through a zbus connection, parsed.
pub async fn get_block(
    connection: &zbus::Connection,
    hash: &str,
) -> zbus::Result<serde_json::Value> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "GetBlock",
            &(hash,),
        )
        .await?;
    let json: String = reply.body().deserialize()?;
    Ok(serde_json::from_str(&json).expect("GetBlock returns JSON"))
}

/// The D-Bus error name of a failed call.
pub fn error_name(err: &zbus::Error) -> String {
    match err {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// busctl's JSON of an `a{sv}` (each value `{"type":…,"data":…}`) as plain JSON.
fn plain_dict(data: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    data.as_object()
        .expect("a{sv}")
        .iter()
        .map(|(key, variant)| {
            let value = match variant["type"].as_str() {
                Some("aa{sv}") => serde_json::Value::Array(
                    variant["data"]
                        .as_array()
                        .expect("an array")
                        .iter()
                        .map(|item| serde_json::Value::Object(plain_dict(item)))
                        .collect(),
                ),
                _ => variant["data"].clone(),
            };
            (key.clone(), value)
        })
        .collect()
}

/// `corpus::footprints(seed, n)` added one by one over a new connection to `bus`; each
/// acknowledgement as (height, hash).
pub async fn add_corpus(bus: &Bus, seed: u64, n: usize) -> Vec<(u64, String)> {
    let connection = bus.connect().await;
    let mut added = Vec::new();
    for footprint in opdbus_testkit::corpus::footprints(seed, n) {
        let reply = add_footprint(
            &connection,
            &footprint.plugin_id,
            &footprint.operation,
            footprint.data_json(),
        )
        .await
        .expect("AddFootprint is acknowledged");
        added.push(reply);
    }
    added
}

/// AddFootprints on `connection`; the reply as (height, hash) pairs.
pub async fn add_footprints<T: serde::Serialize + zbus::zvariant::Type>(
    connection: &zbus::Connection,
    batch: &[T],
) -> zbus::Result<Vec<(u64, String)>> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "AddFootprints",
            &(batch,),
        )
        .await?;
    reply.body().deserialize()
}

/// The tree size of the checkpoint in `tlog/checkpoint`, if there is one.
pub fn checkpoint_size(tlog: &Path) -> Option<u64> {
    let note = std::fs::read_to_string(tlog.join("checkpoint")).ok()?;
    note.lines().nth(1)?.parse().ok()
}
