//! The real parts a test, the bench and the crash harness run against: a private dbus-daemon as
//! strict as Debian's system bus (our policy file included), and opdbus-blockchaind on a
//! scratch chain. Both are killed and reaped on drop, also when their user fails.
//!
//! Errors are plain sentences: tests `expect` them, the bench prints them.

use opdbus_blockchain::dbus::BUS_NAME;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BUS_TEMPLATE: &str = include_str!("../../../dbus/test-system-bus.conf.in");
/// `dbus/org.opdbus.Blockchain.conf`, as installed: only root owns the name, writes for root and
/// the group `opdbus`.
pub const POLICY: &str = include_str!("../../../dbus/org.opdbus.Blockchain.conf");
/// A policy that lets anyone own and call anything (the crash harness, run by any user).
pub const OPEN_POLICY: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy context="default">
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow send_type="method_call"/>
  </policy>
</busconfig>
"#;

/// A child process killed with SIGKILL and reaped when dropped.
struct Reaped(Option<Child>);

impl Reaped {
    fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A private dbus-daemon.
pub struct Bus {
    process: Reaped,
    pub address: String,
    /// Holds the socket and the configuration (a temporary one unless the caller chose it).
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Bus {
    /// A strict bus in a new temporary directory that unprivileged callers may reach, with the
    /// policy files `policies` (texts) in the place of the system bus's `system.d`.
    pub fn start(policies: &[&str]) -> Result<Bus, String> {
        let temp = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        std::fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| format!("cannot open {} to others: {e}", temp.path().display()))?;
        let mut bus = Bus::start_in(temp.path(), policies)?;
        bus._temp = Some(temp);
        Ok(bus)
    }

    /// The same, with its socket and configuration in `dir`, which the caller removes.
    pub fn start_in(dir: &Path, policies: &[&str]) -> Result<Bus, String> {
        let socket = dir.join("bus");
        let mut includes = String::new();
        for (i, policy) in policies.iter().enumerate() {
            let path = dir.join(format!("policy-{i}.conf"));
            write(&path, policy)?;
            includes.push_str(&format!("  <include>{}</include>\n", utf8(&path)?));
        }
        const INCLUDE: &str = "  <include>@POLICY@</include>\n";
        debug_assert!(BUS_TEMPLATE.contains(INCLUDE));
        let config_path = dir.join("bus.conf");
        let config = BUS_TEMPLATE
            .replace("@SOCKET@", &utf8(&socket)?)
            .replace(INCLUDE, &includes);
        write(&config_path, &config)?;
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
            .arg("--nofork")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start dbus-daemon (apt-get install dbus): {e}"))?;
        let mut process = Reaped(Some(child));
        // The socket file appears at bind(), a moment before the bus listens: wait for a connect.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = process.exited() {
                return Err(format!("dbus-daemon exited ({status}) before listening"));
            }
            if Instant::now() > deadline {
                return Err("dbus-daemon did not open its socket within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Bus {
            process,
            address: format!("unix:path={}", socket.display()),
            dir: dir.to_path_buf(),
            _temp: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.0.as_ref().map_or(0, Child::id)
    }

    /// Whether `name` has an owner (`busctl status`: synchronous, so it serves sync tests and
    /// async callers alike).
    pub fn has_owner(&self, name: &str) -> bool {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(["status", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until `name` has an owner; `alive` says why to stop waiting early (a process gone).
    pub fn wait_for_name(
        &self,
        name: &str,
        timeout: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if self.has_owner(name) {
                return Ok(started.elapsed());
            }
            alive()?;
            if started.elapsed() > timeout {
                return Err(format!(
                    "{name} was not owned within {} s",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn connect(&self) -> Result<zbus::Connection, String> {
        zbus::connection::Builder::address(self.address.as_str())
            .map_err(|e| format!("bad bus address {}: {e}", self.address))?
            .build()
            .await
            .map_err(|e| format!("cannot connect to the private bus: {e}"))
    }
}

/// How to run the daemon.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The opdbus-blockchaind binary.
    pub program: PathBuf,
    pub chain_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Its stderr, appended to across restarts.
    pub log: PathBuf,
    /// Environment on top of `OPDBUS_LOG=info` (which it may override).
    pub env: Vec<(String, String)>,
    /// Flags after `--bus`, `--chain-dir` and `--cache-dir`.
    pub args: Vec<String>,
    /// How long it may take to own its name.
    pub ready_within: Duration,
}

impl DaemonOptions {
    pub fn new(program: impl Into<PathBuf>, chain_dir: &Path, cache_dir: &Path) -> Self {
        DaemonOptions {
            program: program.into(),
            chain_dir: chain_dir.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            log: chain_dir.with_extension("log"),
            // Beside the chain, as the daemon demands, and never the host's own key.
            env: vec![(
                "OPDBUS_SIGNING_KEY".into(),
                format!("{}.keys/signing.key", chain_dir.display()),
            )],
            args: Vec::new(),
            ready_within: Duration::from_secs(30),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// opdbus-blockchaind on a bus.
pub struct Daemon {
    process: Reaped,
    pub options: DaemonOptions,
    /// How long the last start took until the daemon owned its name.
    pub started_in: Duration,
}

impl Daemon {
    /// Starts the daemon and waits until it owns its name.
    pub fn start(bus: &Bus, options: DaemonOptions) -> Result<Daemon, String> {
        let mut daemon = Daemon {
            process: Reaped(None),
            options,
            started_in: Duration::ZERO,
        };
        daemon.launch(bus)?;
        Ok(daemon)
    }

    fn launch(&mut self, bus: &Bus) -> Result<(), String> {
        let o = &self.options;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&o.log)
            .map_err(|e| format!("cannot open {}: {e}", o.log.display()))?;
        let mut command = Command::new(&o.program);
        command
            .arg("--bus")
            .arg(&bus.address)
            .arg("--chain-dir")
            .arg(&o.chain_dir)
            .arg("--cache-dir")
            .arg(&o.cache_dir)
            .args(&o.args)
            .env_remove("NOTIFY_SOCKET")
            .env("OPDBUS_LOG", "info")
            .envs(o.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", o.program.display()))?;
        self.process = Reaped(Some(child));
        let process = &mut self.process;
        self.started_in = bus
            .wait_for_name(BUS_NAME, self.options.ready_within, || {
                match process.exited() {
                    Some(status) => Err(format!(
                        "the daemon exited with {status} before owning its name"
                    )),
                    None => Ok(()),
                }
            })
            .map_err(|why| {
                format!(
                    "{why}; its log:
{}",
                    log_tail(&self.options.log, 40)
                )
            })?;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.0.as_ref().map(Child::id)
    }

    /// Whether it has exited by itself (`Some` with its status).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then waits for the exit: at most `grace` (then SIGKILL, `None`), or for as long
    /// as it takes.
    pub fn stop(&mut self, grace: Option<Duration>) -> Result<Option<ExitStatus>, String> {
        let Some(child) = self.process.0.as_mut() else {
            return Err("the daemon is not running".into());
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| format!("cannot signal the daemon: {e}"))?;
        let status = match grace {
            None => Some(
                child
                    .wait()
                    .map_err(|e| format!("wait for the daemon: {e}"))?,
            ),
            Some(grace) => {
                let deadline = Instant::now() + grace;
                loop {
                    if let Ok(Some(status)) = child.try_wait() {
                        break Some(status);
                    }
                    if Instant::now() > deadline {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        match status {
            Some(_) => self.process.0 = None,
            None => self.process.kill9(),
        }
        Ok(status)
    }

    /// Waits until the daemon exits by itself.
    pub fn wait_exit(&mut self) -> Result<ExitStatus, String> {
        let mut child = self.process.0.take().ok_or("the daemon is not running")?;
        child
            .wait()
            .map_err(|e| format!("wait for the daemon: {e}"))
    }

    /// kill -9 (if it runs), then starts it again on the same directories and options.
    pub fn restart(&mut self, bus: &Bus) -> Result<(), String> {
        self.kill9();
        self.launch(bus)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.options.log).unwrap_or_default()
    }
}

/// The last `lines` lines of a log file, for a failure report.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn utf8(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn may_own(bus: &Bus, name: &str) -> bool {
        let connection = bus.connect().await.expect("connect");
        connection.request_name(name).await.is_ok() && bus.has_owner(name)
    }

    /// The policy texts really take the place of the template's include: the strict bus lets
    /// root own only our name, the open one anything.
    #[tokio::test]
    async fn the_strict_bus_follows_our_policy_and_the_open_one_allows_all() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: our policy lets only root own the name");
            return;
        }
        let strict = Bus::start(&[POLICY]).expect("strict bus");
        assert!(strict.has_owner("org.freedesktop.DBus"));
        assert!(!strict.has_owner(BUS_NAME));
        assert!(!may_own(&strict, "org.opdbus.KitProbe").await);
        assert!(may_own(&strict, BUS_NAME).await);

        let dir = tempfile::tempdir().expect("tempdir");
        let open = Bus::start_in(dir.path(), &[OPEN_POLICY]).expect("open bus");
        assert!(may_own(&open, "org.opdbus.KitProbe").await);
        let pid = open.pid();
        drop(open);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the bus is killed and reaped with its handle"
        );
    }
}
