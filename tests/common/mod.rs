//! Test harness: a private dbus-daemon with a system-bus-like policy, and the real daemon
//! binary. Everything is cleaned up on drop, also when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BUS_NAME: &str = "org.opdbus.Blockchain";
pub const OBJECT_PATH: &str = "/org/opdbus/Blockchain";
pub const DAEMON: &str = env!("CARGO_BIN_EXE_opdbus-blockchaind");
pub const CLI: &str = env!("CARGO_BIN_EXE_opdbus-chain");

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A private bus as strict as Debian's system bus, including our policy file.
pub struct Bus {
    pub dir: tempfile::TempDir,
    pub address: String,
    process: Child,
}

impl Bus {
    pub fn start() -> Bus {
        Self::start_with_policy(&repo_path("dbus/org.opdbus.Blockchain.conf"))
    }

    /// The same bus with another policy file in place of ours.
    pub fn start_with_policy(policy: &Path) -> Bus {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("bus");
        let template = std::fs::read_to_string(repo_path("dbus/test-system-bus.conf.in"))
            .expect("bus config template");
        let config = template
            .replace("@SOCKET@", socket.to_str().expect("utf-8 path"))
            .replace("@POLICY@", policy.to_str().expect("utf-8 path"));
        let config_path = dir.path().join("bus.conf");
        std::fs::write(&config_path, config).expect("write bus config");
        let process = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed (apt-get install dbus)");
        // The socket file appears at bind(), a moment before the bus listens.
        wait_until(Duration::from_secs(10), "the bus socket", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        // Let unprivileged test callers connect.
        let _ = std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        );
        Bus {
            address: format!("unix:path={}", socket.display()),
            dir,
            process,
        }
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
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("busctl JSON");
        plain_dict(&reply["data"][0])
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
        zbus::connection::Builder::address(self.address.as_str())
            .expect("address")
            .build()
            .await
            .expect("connect to the private bus")
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The daemon binary, running on a bus.
pub struct Daemon {
    process: Option<Child>,
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
        let log = chain_dir.with_extension("log");
        let process = Self::spawn(bus, chain_dir, cache_dir, env, &log);
        let mut daemon = Daemon {
            process: Some(process),
            chain_dir: chain_dir.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            log,
        };
        daemon.wait_ready(bus);
        daemon
    }

    fn spawn(
        bus: &Bus,
        chain_dir: &Path,
        cache_dir: &Path,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Child {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("daemon log");
        let mut command = Command::new(DAEMON);
        command
            .arg("--bus")
            .arg(&bus.address)
            .arg("--chain-dir")
            .arg(chain_dir)
            .arg("--cache-dir")
            .arg(cache_dir)
            .env_remove("NOTIFY_SOCKET")
            .env("OPDBUS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        command.spawn().expect("start the daemon")
    }

    fn wait_ready(&mut self, bus: &Bus) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = bus.busctl(&["status", BUS_NAME]);
            if out.status.success() {
                return;
            }
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|p| p.try_wait().ok().flatten())
            {
                panic!(
                    "daemon exited with {status} before owning its name:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not own its name in time:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut process = self.process.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(process.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal the daemon");
        process.wait().expect("wait for the daemon")
    }

    /// Waits until the daemon exits by itself; returns its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut process = self.process.take().expect("running");
        process.wait().expect("wait for the daemon")
    }

    /// Starts it again on the same directories.
    pub fn restart(&mut self, bus: &Bus) {
        self.kill9();
        self.process = Some(Self::spawn(
            bus,
            &self.chain_dir,
            &self.cache_dir,
            &[],
            &self.log,
        ));
        self.wait_ready(bus);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
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

/// A small deterministic generator (xorshift), so a failing case can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
