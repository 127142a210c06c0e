//! The bench's stage: a private bus as strict as the system bus (our policy included), the
//! daemon found next to this executable, the floor server (this executable again, serving an
//! empty method on the same bus), the durable floor server (this executable's `durable-floor`,
//! writing on the same filesystem as the daemon), on request a second daemon without the transparency log (on a
//! bus of its own: both own the same name) and, with `--btrfs`, a loop-mounted btrfs image.
//! Everything is stopped and removed on drop, also when a measurement fails.

use super::durable_floor::DURABLE_FLOOR_NAME;
use opdbus_testkit::process::{DaemonOptions, POLICY};
use opdbus_testkit::{Bus, Daemon, LoopBtrfs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Well-known name and interface of the floor server.
pub const FLOOR_NAME: &str = "org.opdbus.BenchFloor";
pub const FLOOR_PATH: &str = "/org/opdbus/BenchFloor";

/// The floor servers get the same kind of rule as the daemon: root owns them and may call them.
const FLOOR_POLICY: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.opdbus.BenchFloor"/>
    <allow send_destination="org.opdbus.BenchFloor"/>
    <allow own="org.opdbus.BenchDurableFloor"/>
    <allow send_destination="org.opdbus.BenchDurableFloor"/>
  </policy>
</busconfig>
"#;

/// A child process killed (and reaped) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The running stage. Field order is drop order: processes first, then the filesystem.
pub struct Stage {
    daemon: Option<Daemon>,
    /// The same daemon with `--bench-without-transparency`, on `plain_bus`.
    plain_daemon: Option<Daemon>,
    floor: Option<Reaped>,
    durable_floor: Option<Reaped>,
    bus: Option<Bus>,
    plain_bus: Option<Bus>,
    pub address: String,
    /// The bus of the daemon without the transparency log (empty when there is none).
    pub plain_address: String,
    /// Where every store of the run lives (on the filesystem being measured).
    pub work: PathBuf,
    pub daemon_chain_dir: PathBuf,
    pub daemon_log: PathBuf,
    btrfs: Option<LoopBtrfs>,
    _temp: tempfile::TempDir,
}

impl Drop for Stage {
    fn drop(&mut self) {
        // A clean stop, as the floor server gets; the kit's drop would kill -9.
        for daemon in [self.daemon.as_mut(), self.plain_daemon.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = daemon.stop(Some(Duration::from_secs(10)));
        }
    }
}

impl Stage {
    /// Starts the bus, the floor server and the daemon, and with `plain` the daemon without the
    /// transparency log on its own bus; returns once all own their names.
    pub async fn start(btrfs: bool, plain: bool) -> Result<Stage, String> {
        let temp = tempfile::Builder::new()
            .prefix("opdbus-bench.")
            .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let mut stage = Stage {
            daemon: None,
            plain_daemon: None,
            floor: None,
            durable_floor: None,
            bus: None,
            plain_bus: None,
            address: String::new(),
            plain_address: String::new(),
            work: temp.path().join("work"),
            daemon_chain_dir: PathBuf::new(),
            daemon_log: temp.path().join("daemon.log"),
            btrfs: None,
            _temp: temp,
        };
        let root = stage._temp.path().to_path_buf();
        if btrfs {
            let fs = LoopBtrfs::create_in(&root, 4096)
                .map_err(|why| format!("--btrfs cannot make a btrfs image: {why}"))?;
            stage.work = fs.path().join("work");
            stage.btrfs = Some(fs);
        }
        std::fs::create_dir_all(&stage.work)
            .map_err(|e| format!("cannot create {}: {e}", stage.work.display()))?;
        stage.daemon_chain_dir = stage.work.join("daemon-chain");

        let bus = Bus::start_in(&root, &[POLICY, FLOOR_POLICY])?;
        stage.address = bus.address.clone();
        stage.bus = Some(bus);

        let me =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let daemon_exe = me.with_file_name("opdbus-blockchaind");
        if !daemon_exe.exists() {
            return Err(format!(
                "{} not found: the bench runs the daemon built next to it (cargo build --release --workspace)",
                daemon_exe.display()
            ));
        }
        let floor = Command::new(&me)
            .args(["bench", "--serve-floor", &stage.address])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the floor server: {e}"))?;
        stage.floor = Some(Reaped(floor));
        let durable_floor = Command::new(&me)
            .args(["durable-floor", "--address", &stage.address, "--dir"])
            .arg(stage.work.join("durable-floor"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the durable floor server: {e}"))?;
        stage.durable_floor = Some(Reaped(durable_floor));

        let mut options = DaemonOptions::new(
            &daemon_exe,
            &stage.daemon_chain_dir,
            &stage.work.join("daemon-cache"),
        )
        .env("OPDBUS_LOG", "warn");
        options.log = stage.daemon_log.clone();
        if plain {
            // Same binary, same settings and filesystem; only the transparency log is off.
            let dir = root.join("plain-bus");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let plain_bus = Bus::start_in(&dir, &[POLICY])?;
            stage.plain_address = plain_bus.address.clone();
            let mut plain = options.clone().arg("--bench-without-transparency");
            plain.chain_dir = stage.work.join("plain-daemon-chain");
            plain.cache_dir = stage.work.join("plain-daemon-cache");
            plain.log = root.join("plain-daemon.log");
            stage.plain_daemon = Some(Daemon::start(&plain_bus, plain)?);
            stage.plain_bus = Some(plain_bus);
        }
        let bus = stage.bus.as_ref().ok_or("no bus")?;
        let daemon = Daemon::start(bus, options)?;
        stage.daemon = Some(daemon);
        // The floor servers started first; by now they have had as long as the daemon took.
        for (name, server, what) in [
            (FLOOR_NAME, stage.floor.as_mut(), "the floor server"),
            (
                DURABLE_FLOOR_NAME,
                stage.durable_floor.as_mut(),
                "the durable floor server",
            ),
        ] {
            let mut server = server.map(|f| &mut f.0);
            bus.wait_for_name(name, Duration::from_secs(30), || {
                match server
                    .as_deref_mut()
                    .and_then(|f| f.try_wait().ok().flatten())
                {
                    Some(status) => Err(format!("{what} exited ({status})")),
                    None => Ok(()),
                }
            })?;
        }
        Ok(stage)
    }

    /// Stops the daemon and starts it again on the same chain with a new, empty cache
    /// directory and no pre-loading or read prediction: nothing of the chain is in either cache
    /// tier. The page cache is the caller's to drop.
    pub fn restart_daemon_cold(&mut self) -> Result<(), String> {
        let mut daemon = self.daemon.take().ok_or("the daemon is not running")?;
        daemon.stop(Some(Duration::from_secs(30)))?;
        let mut options = daemon.options.clone();
        drop(daemon);
        options.cache_dir = self.work.join("cold-daemon-cache");
        let options = options
            .env("OPDBUS_CACHE_PRELOAD_BLOCKS", "0")
            .env("OPDBUS_CACHE_PREDICT", "off");
        let bus = self.bus.as_ref().ok_or("no bus")?;
        self.daemon = Some(Daemon::start(bus, options)?);
        Ok(())
    }

    pub fn durable_floor_pid(&self) -> u32 {
        self.durable_floor.as_ref().map_or(0, |d| d.0.id())
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().and_then(Daemon::pid).unwrap_or(0)
    }

    pub fn plain_daemon_pid(&self) -> u32 {
        self.plain_daemon
            .as_ref()
            .and_then(Daemon::pid)
            .unwrap_or(0)
    }

    pub fn plain_bus_pid(&self) -> u32 {
        self.plain_bus.as_ref().map_or(0, Bus::pid)
    }

    pub fn floor_pid(&self) -> u32 {
        self.floor.as_ref().map_or(0, |d| d.0.id())
    }

    pub fn bus_pid(&self) -> u32 {
        self.bus.as_ref().map_or(0, Bus::pid)
    }

    /// The filesystem type under the work directory (`findmnt`).
    pub fn filesystem(&self) -> String {
        Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE", "-T"])
            .arg(&self.work)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }
}

/// The floor: an empty method on its own connection, in its own process with the daemon's kind
/// of runtime, so an empty call costs what an AddFootprint costs minus our work.
pub fn serve_floor(address: &str) -> crate::Outcome {
    struct Floor;
    #[zbus::interface(name = "org.opdbus.BenchFloor")]
    impl Floor {
        async fn empty(&self) {}
    }
    // Go when the bench goes, even if it is killed before it can stop us.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let _connection = zbus::connection::Builder::address(address)
            .and_then(|b| b.serve_at(FLOOR_PATH, Floor))
            .and_then(|b| b.name(FLOOR_NAME))
            .map_err(|e| format!("bad floor server setup: {e}"))?
            .build()
            .await
            .map_err(|e| format!("the floor server cannot serve: {e}"))?;
        std::future::pending::<()>().await;
        Ok(std::process::ExitCode::SUCCESS)
    })
}
