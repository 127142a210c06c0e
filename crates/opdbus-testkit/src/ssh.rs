//! A second host for tests: sshd in its own network namespace, reached over a veth pair (root
//! only). Backups (`btrfs send | ssh … btrfs receive`) and replicas (`replicate ssh://…`) use it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A second host: sshd in its own network namespace, reached over a veth pair. Torn down on
/// drop. The backup filesystem is shared with it (a network namespace separates only the
/// network), which lets the test check the received copy directly.
pub struct SshHost {
    pub netns: String,
    veth: String,
    pub address: String,
    key: PathBuf,
    sshd: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl SshHost {
    /// Starts it, or says why it skips (`None`): not root, no sshd, no network namespaces.
    pub fn start() -> Option<SshHost> {
        let sshd_path = Path::new("/usr/sbin/sshd");
        if !is_root() || !sshd_path.exists() {
            eprintln!("SKIP: needs root and sshd (apt-get install openssh-server)");
            return None;
        }
        let pid = std::process::id();
        let dir = tempfile::tempdir().expect("tempdir");
        let subnet = format!("10.231.{}", pid % 250);
        let mut host = SshHost {
            netns: format!("opdbk{pid}"),
            veth: format!("vbk{pid}a"),
            address: format!("{subnet}.2"),
            key: dir.path().join("client_key"),
            sshd: None,
            _dir: dir,
        };
        let peer = format!("vbk{pid}b");
        let ns = host.netns.clone();
        let steps: Vec<Vec<String>> = [
            vec!["ip", "netns", "add", &ns],
            vec![
                "ip", "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
            ],
            vec!["ip", "link", "set", &peer, "netns", &ns],
            vec![
                "ip",
                "addr",
                "add",
                &format!("{subnet}.1/30"),
                "dev",
                &host.veth,
            ],
            vec!["ip", "link", "set", &host.veth, "up"],
            vec![
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{subnet}.2/30"),
                "dev",
                &peer,
            ],
            vec!["ip", "netns", "exec", &ns, "ip", "link", "set", &peer, "up"],
            vec!["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
        ]
        .iter()
        .map(|step| step.iter().map(|s| s.to_string()).collect())
        .collect();
        for step in steps {
            let out = std::process::Command::new(&step[0])
                .args(&step[1..])
                .output()
                .expect("ip");
            if !out.status.success() {
                eprintln!(
                    "SKIP: cannot set up a network namespace ({}: {})",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
        }
        let dir = host._dir.path().to_owned();
        for key in ["host_key", "client_key"] {
            let status = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .expect("ssh-keygen");
            assert!(status.success());
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("keys");
        let config = format!(
            "ListenAddress {}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PidFile {}\n",
            host.address,
            dir.join("host_key").display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display(),
        );
        std::fs::write(dir.join("sshd_config"), config).expect("sshd config");
        std::fs::create_dir_all("/run/sshd").expect("privilege separation directory");
        host.sshd = Some(
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(sshd_path)
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start sshd"),
        );
        host.wait_until_answering();
        Some(host)
    }

    /// Waits (up to 20 s) until an ssh session to this host succeeds.
    pub fn wait_until_answering(&self) {
        wait_until(Duration::from_secs(20), "sshd in the namespace", || {
            std::process::Command::new("ssh")
                .args(self.ssh_options())
                .arg("true")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    /// ssh's options and destination (`root@ADDRESS`) for this host.
    pub fn ssh_options(&self) -> Vec<String> {
        [
            "-i",
            self.key.to_str().expect("utf-8"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            &format!("root@{}", self.address),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A `--to-command` receiving into `dir/{name}` on this host.
    pub fn receive_command(&self, dir: &Path) -> String {
        format!(
            "ssh {} \"mkdir -p {dir}/{{name}} && btrfs receive {dir}/{{name}}\"",
            self.ssh_options().join(" "),
            dir = dir.display()
        )
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}
