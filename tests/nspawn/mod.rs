//! A booted Debian 12 container with systemd as PID 1 (`systemd-nspawn`), this build
//! installed by `scripts/install.sh`: the harness of the tests that run under a real systemd
//! (tests/systemd_nspawn.rs and the other `*_nspawn.rs` files). See tests/systemd_nspawn.rs for
//! what it needs and how the rootfs is cached.
#![allow(dead_code)]

use crate::common::{is_root, wait_until, BUS_NAME, DAEMON, OBJECT_PATH};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const UNIT: &str = "opdbus-blockchaind.service";
/// Where the build and the sources appear inside the container (read-only bind mounts).
pub const CT_BIN: &str = "/opt/opdbus/bin";
pub const CT_SRC: &str = "/opt/opdbus/src";
/// Packages of the cached rootfs; changing them needs a new marker name.
pub const ROOTFS_PACKAGES: &str = "systemd,systemd-sysv,dbus,libhwloc15,procps,btrfs-progs";
pub const ROOTFS_MARKER: &str = ".opdbus-test-rootfs-v2";

// ---------------------------------------------------------------------------------------------
// The container

/// A booted container with this build installed; powered off and cleaned up on drop.
pub struct Container {
    name: String,
    nspawn: Child,
    leader: u32,
    cgroups: Vec<PathBuf>,
    console: PathBuf,
    _dir: tempfile::TempDir,
}

impl Container {
    /// Boots a container and runs `scripts/install.sh` in it; `None` when the test is skipped.
    pub fn boot_with_service(tag: &str) -> Option<Container> {
        Container::boot_with_service_and(tag, None)
    }

    /// As [`Container::boot_with_service`], with `state_dir` (a host directory) mounted as the
    /// service's state directory, /var/lib/op-dbus.
    pub fn boot_with_service_and(tag: &str, state_dir: Option<&Path>) -> Option<Container> {
        if skipped(tag) {
            return None;
        }
        let container = Container::boot(tag, &cached_rootfs(), state_dir);
        let install = format!("{CT_SRC}/scripts/install.sh");
        container.ok(&[&install, "install", "--bin-dir", CT_BIN]);
        Some(container)
    }

    /// Boots a container with nothing of ours installed (the tests of install.sh and the .deb);
    /// `None` when the test is skipped.
    pub fn boot_without_service(tag: &str) -> Option<Container> {
        if skipped(tag) {
            return None;
        }
        Some(Container::boot(tag, &cached_rootfs(), None))
    }

    pub fn boot(tag: &str, rootfs: &Path, state_dir: Option<&Path>) -> Container {
        let name = format!("opdbus-{tag}-{}", std::process::id());
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        // Without a systemd on the host all containers would share one cgroup and disturb each
        // other: each gets its own parent cgroup in every hierarchy.
        let cgroups = cgroup_parents(&name);
        let mut procs = String::new();
        for cgroup in &cgroups {
            std::fs::create_dir_all(cgroup).expect("create the container's cgroup");
            procs.push_str(&format!("{} ", cgroup.join("cgroup.procs").display()));
        }
        let build = Path::new(DAEMON).parent().expect("the build directory");
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(r#"for f in $CGROUP_PROCS; do echo $$ > "$f"; done; exec "$@""#)
            .arg("sh")
            .args(["systemd-nspawn", "--boot", "--register=no", "--keep-unit"])
            .args(["--console=read-only", "--volatile=overlay", "--quiet"])
            .arg(format!("--directory={}", rootfs.display()))
            .arg(format!("--machine={name}"))
            .arg(format!("--bind-ro={}:{CT_BIN}", build.display()))
            .arg(format!("--bind-ro={}:{CT_SRC}", env!("CARGO_MANIFEST_DIR")))
            .args(state_dir.map(|dir| format!("--bind={}:/var/lib/op-dbus", dir.display())))
            .env("CGROUP_PROCS", procs)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).expect("console log"))
            .stderr(Stdio::from(
                std::fs::File::options()
                    .append(true)
                    .open(&console)
                    .expect("console log"),
            ))
            .spawn()
            .expect("systemd-nspawn");
        let mut container = Container {
            name,
            leader: 0,
            nspawn,
            cgroups,
            console,
            _dir: dir,
        };
        container.leader = container.wait_for_init();
        let socket = container.path("/run/systemd/private");
        wait_until(Duration::from_secs(60), "the container's systemd", || {
            socket.exists()
        });
        let state = container.run(&["systemctl", "is-system-running", "--wait"]);
        let state = stdout(&state).trim().to_owned();
        // "degraded" (some unrelated unit failed) still runs ours; anything else does not.
        let failed = || stdout(&container.run(&["systemctl", "--failed", "--no-pager"]));
        match state.as_str() {
            "running" => {}
            "degraded" => eprintln!("container {} is degraded:\n{}", container.name, failed()),
            _ => panic!("container state '{state}':\n{}", failed()),
        }
        container
    }

    /// The container's systemd: the child of systemd-nspawn named `systemd`.
    pub fn wait_for_init(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!(
                    "systemd-nspawn exited with {status}:\n{}",
                    std::fs::read_to_string(&self.console).unwrap_or_default()
                );
            }
            let children = Command::new("pgrep")
                .args(["-P", &self.nspawn.id().to_string()])
                .output()
                .expect("pgrep");
            for pid in stdout(&children).split_whitespace() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return pid.parse().expect("a pid");
                }
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in container {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A path inside the container, as the host sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.leader))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("timeout");
        command
            .args(["120", "nsenter", "-t", &self.leader.to_string(), "-a"])
            .args(args);
        command
    }

    /// Runs a command in the container.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("nsenter")
    }

    pub fn sh(&self, script: &str) -> Output {
        self.run(&["sh", "-c", script])
    }

    /// Runs a command in the container that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({}):\n{}{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    pub fn unit_property(&self, name: &str) -> String {
        self.ok(&["systemctl", "show", "--value", "-p", name, UNIT])
            .trim()
            .to_owned()
    }

    /// `WatchdogSec=2s`, as an operator would set it: in a drop-in.
    pub fn set_short_watchdog(&self) {
        self.ok(&[
            "sh",
            "-c",
            "mkdir -p /etc/systemd/system/opdbus-blockchaind.service.d && \
             printf '[Service]\\nWatchdogSec=2s\\n' \
               > /etc/systemd/system/opdbus-blockchaind.service.d/watchdog.conf && \
             systemctl daemon-reload",
        ]);
    }

    /// `OPDBUS_LOG` as an operator sets it: in /etc/default/opdbus-blockchain.
    pub fn enable_debug_logging(&self) {
        self.ok(&[
            "sh",
            "-c",
            "echo OPDBUS_LOG=opdbus_blockchain=debug >> /etc/default/opdbus-blockchain",
        ]);
    }

    /// `busctl call` of one of our methods as root; returns stdout. Empty on failure.
    pub fn busctl_call(&self, member: &str, args: &[&str]) -> String {
        let mut command = vec!["busctl", "call", BUS_NAME, OBJECT_PATH, BUS_NAME, member];
        command.extend_from_slice(args);
        let out = self.run(&command);
        if !out.status.success() {
            eprintln!("{member} failed: {}", stderr(&out));
        }
        stdout(&out)
    }

    /// Adds a footprint as root; returns the acknowledged (height, hash).
    pub fn add_footprint(&self, plugin: &str, operation: &str, data: &str) -> (u64, String) {
        let reply = self.ok(&[
            "busctl",
            "call",
            BUS_NAME,
            OBJECT_PATH,
            BUS_NAME,
            "AddFootprint",
            "sss",
            plugin,
            operation,
            data,
        ]);
        parse_ack(reply.trim()).unwrap_or_else(|| panic!("not an AddFootprint reply: {reply}"))
    }

    /// `count` shell loops in the container, each adding up to `each` footprints one after
    /// the other and appending every acknowledgement to /root/acks-<tag>-<n>. A loop ends at
    /// its first failure; `--auto-start=no` keeps the bus from starting a stopped daemon again.
    pub fn start_writers(&self, tag: &str, count: usize, each: usize) -> Writers {
        let loops = (0..count)
            .map(|n| {
                let script = format!(
                    "i=0; while [ $i -lt {each} ]; do i=$((i+1)); \
                       busctl --auto-start=no call {BUS_NAME} {OBJECT_PATH} {BUS_NAME} \
                         AddFootprint sss load w{n} \"{{\\\"i\\\":$i}}\" \
                         >> /root/acks-{tag}-{n} 2>/root/error-{tag}-{n} || break; \
                     done"
                );
                self.command(&["sh", "-c", &script])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a writer")
            })
            .collect();
        Writers(loops)
    }

    pub fn wait_for_acks(&self, tag: &str, at_least: usize) {
        wait_until(Duration::from_secs(120), "acknowledged footprints", || {
            self.acked_hashes(tag).len() >= at_least
        });
    }

    /// Hashes acknowledged to the writers of `tag`.
    pub fn acked_hashes(&self, tag: &str) -> HashSet<String> {
        let mut hashes = HashSet::new();
        for n in 0.. {
            let Ok(text) = std::fs::read_to_string(self.path(&format!("/root/acks-{tag}-{n}")))
            else {
                break;
            };
            for line in text.lines() {
                // A line still being written is not yet an acknowledgement.
                if let Some((_, hash)) = parse_ack(line) {
                    hashes.insert(hash);
                }
            }
        }
        hashes
    }

    /// Every block hash in the installed chain, read offline with the installed CLI.
    pub fn hashes_on_disk(&self) -> HashSet<String> {
        let text = self.ok(&["opdbus-chain", "tail", "-n", "1000000", "--json"]);
        text.lines()
            .map(|line| {
                let block: serde_json::Value = serde_json::from_str(line).expect("a JSON block");
                block["hash"].as_str().expect("a hash").to_owned()
            })
            .collect()
    }

    /// Journal records of the unit in this boot matching `matches`, as JSON, once `done`
    /// says they are complete (journald writes what it receives asynchronously).
    pub fn wait_for_journal(
        &self,
        matches: &[&str],
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut args = vec!["journalctl", "-b", "-u", UNIT, "-o", "json", "--no-pager"];
        args.extend_from_slice(matches);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.run(&args);
            let records: Vec<serde_json::Value> = stdout(&out)
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect();
            if done(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "the journal never had the expected records for {matches:?}:\n{}",
                stdout(&self.run(&["journalctl", "-b", "-u", UNIT, "--no-pager"]))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.leader != 0 {
            // SIGRTMIN+4 asks systemd for an orderly poweroff.
            let _ = Command::new("kill")
                .args(["-s", "RTMIN+4", &self.leader.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        for cgroup in &self.cgroups {
            remove_cgroup_tree(cgroup);
        }
    }
}

/// Writer loops started by [`Container::start_writers`].
pub struct Writers(Vec<Child>);

impl Writers {
    /// Waits until every loop has ended.
    pub fn finish(mut self) {
        for writer in &mut self.0 {
            let _ = writer.wait();
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        for writer in &mut self.0 {
            let _ = writer.kill();
            let _ = writer.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Whether the test `tag` cannot run here (it says so on stderr); a failure instead when
/// OPDBUS_REQUIRE_NSPAWN is set.
pub fn skipped(tag: &str) -> bool {
    let Some(reason) = missing_prerequisite() else {
        return false;
    };
    assert!(
        std::env::var_os("OPDBUS_REQUIRE_NSPAWN").is_none(),
        "OPDBUS_REQUIRE_NSPAWN is set and {reason}"
    );
    // Straight to stderr: the test harness captures eprintln! of passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {tag}: {reason}; the systemd_nspawn tests need root, systemd-nspawn and \
         debootstrap"
    );
    true
}

pub fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    for tool in ["systemd-nspawn", "debootstrap", "nsenter", "pgrep"] {
        if !tool_exists(tool) {
            return Some(format!(
                "{tool} is not installed (apt-get install systemd-container debootstrap)"
            ));
        }
    }
    if cgroup_parents("probe").is_empty() {
        return Some("no cgroup hierarchy found under /sys/fs/cgroup".into());
    }
    None
}

pub fn tool_exists(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The container's own parent cgroups: in the named systemd and unified hierarchies of a hybrid
/// host, or in the one hierarchy of a pure cgroup v2 host.
pub fn cgroup_parents(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let hybrid: Vec<PathBuf> = ["systemd", "unified"]
        .iter()
        .map(|h| root.join(h))
        .filter(|h| h.is_dir())
        .collect();
    if !hybrid.is_empty() {
        return hybrid
            .into_iter()
            .map(|h| h.join(format!("nspawn-{name}")))
            .collect();
    }
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(format!("nspawn-{name}"))];
    }
    Vec::new()
}

pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The minimal Debian 12 the containers boot, built once and cached.
pub fn cached_rootfs() -> PathBuf {
    let cache = std::env::var_os("OPDBUS_TEST_ROOTFS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/opdbus-test-rootfs"));
    let rootfs = cache.join("bookworm");
    std::fs::create_dir_all(&cache).expect("create the rootfs cache");
    // Tests run in parallel: one builds, the others wait for it.
    let lock = std::fs::File::create(cache.join(".lock")).expect("the cache lock");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, err)| err)
        .expect("lock the rootfs cache");
    if rootfs.join(ROOTFS_MARKER).exists() {
        return rootfs;
    }
    let building = cache.join("bookworm.tmp");
    let _ = std::fs::remove_dir_all(&building);
    let _ = std::fs::remove_dir_all(&rootfs);
    eprintln!(
        "building the test rootfs in {} with debootstrap (once; about a minute)",
        rootfs.display()
    );
    let log = cache.join("debootstrap.log");
    let status = Command::new("timeout")
        .args(["900", "debootstrap", "--variant=minbase"])
        .arg(format!("--include={ROOTFS_PACKAGES}"))
        .arg("bookworm")
        .arg(&building)
        .arg(apt_mirror())
        .stdout(std::fs::File::create(&log).expect("debootstrap log"))
        .stderr(Stdio::null())
        .status()
        .expect("debootstrap");
    assert!(
        status.success(),
        "debootstrap failed ({status}); see {}",
        log.display()
    );
    // Downloaded packages are not needed any more; without /etc/hostname nspawn names the
    // container after the machine.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(building.join(dir)) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    let _ = std::fs::remove_file(building.join("etc/hostname"));
    std::fs::write(building.join(ROOTFS_MARKER), ROOTFS_PACKAGES).expect("write the marker");
    std::fs::rename(&building, &rootfs).expect("move the rootfs in place");
    rootfs
}

/// The Debian mirror this machine's apt uses.
pub fn apt_mirror() -> String {
    if let Ok(mirror) = std::env::var("OPDBUS_TEST_MIRROR") {
        return mirror;
    }
    let sources =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let from_deb822 = sources
        .lines()
        .find_map(|line| line.strip_prefix("URIs:"))
        .and_then(|uris| uris.split_whitespace().next());
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let from_list = list
        .lines()
        .find_map(|line| line.strip_prefix("deb "))
        .and_then(|rest| rest.split_whitespace().find(|w| w.contains("://")));
    from_deb822
        .or(from_list)
        .unwrap_or("http://deb.debian.org/debian")
        .to_owned()
}

/// `ts 12 "abcd…"` → (12, "abcd…").
pub fn parse_ack(line: &str) -> Option<(u64, String)> {
    let mut words = line.split_whitespace();
    if words.next()? != "ts" {
        return None;
    }
    let height = words.next()?.parse().ok()?;
    let hash = words.next()?.trim_matches('"');
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (height, hash.to_owned()))
}

pub fn field<'a>(record: &'a serde_json::Value, name: &str) -> &'a str {
    record[name].as_str().unwrap_or("")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
