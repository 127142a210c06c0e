//! Real Redis servers on free loopback ports (Debian's `redis-server`), alone or as a
//! three-node Redis Cluster made with `redis-cli --cluster create`: the shared cache tier's
//! tests. Each server runs in the foreground with its files in its own temporary directory,
//! persistence off, and is killed and reaped on drop.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn program(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether `redis-server` and `redis-cli` are there; if not, the test `test` says why it
/// skips, or fails when `CI=1` is set (CI installs them).
pub fn redis_or_skip(test: &str) -> bool {
    if program("redis-server").is_some() && program("redis-cli").is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("1"),
        "{test}: redis-server is not installed (apt-get install redis-server) and CI=1 requires it"
    );
    eprintln!("SKIP {test}: redis-server is not installed (apt-get install redis-server)");
    false
}

/// One `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
}

impl RedisServer {
    /// A standalone server.
    pub fn start() -> Result<RedisServer, String> {
        RedisServer::start_with(false, &[])
    }

    /// A server; `cluster`: with cluster mode on (its node file in its directory). `extra`
    /// are more `--name value` arguments.
    pub fn start_with(cluster: bool, extra: &[&str]) -> Result<RedisServer, String> {
        let mut last_error = String::new();
        // Another process may take the free port (or, in a cluster, the port + 10000 of its
        // bus) between our probe and the bind: then another one is tried.
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port()?,
                dir: tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?,
                cluster,
            };
            match server.spawn(extra) {
                Ok(()) => return Ok(server),
                Err(why) => last_error = why,
            }
        }
        Err(last_error)
    }

    fn spawn(&mut self, extra: &[&str]) -> Result<(), String> {
        let server = program("redis-server").ok_or("redis-server is not installed")?;
        let mut command = Command::new(server);
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
            command
                .arg("--cluster-config-file")
                .arg(format!("nodes-{}.conf", self.port));
        }
        command.args(extra);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .cli(&["PING"])
                .is_ok_and(|answer| answer.trim() == "PONG")
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited ({status}) before answering; its log:\n{}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer within 10 s; its log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server with `args`; its standard output.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let cli = program("redis-cli").ok_or("redis-cli is not installed")?;
        let output = Command::new(cli)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Kills the server (SIGKILL) and reaps it; the port is then closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn(&[])
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three cluster-mode servers joined into one cluster, every slot covered, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Result<RedisCluster, String> {
        let nodes = (0..3)
            .map(|_| RedisServer::start_with(true, &[]))
            .collect::<Result<Vec<_>, _>>()?;
        let addresses: Vec<String> = nodes.iter().map(RedisServer::address).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        nodes[0].cli(&args)?;
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.is_ok() {
            if Instant::now() > deadline {
                return Err(format!(
                    "the cluster did not reach cluster_state:ok in 20 s: {}",
                    cluster.nodes[0]
                        .cli(&["CLUSTER", "INFO"])
                        .unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// Whether every running node says `cluster_state:ok`.
    pub fn is_ok(&self) -> bool {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .all(|node| {
                node.cli(&["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
    }

    /// `redis+cluster://h1:p1,h2:p2,h3:p3`.
    pub fn url(&self) -> String {
        let addresses: Vec<String> = self.nodes.iter().map(RedisServer::address).collect();
        format!("redis+cluster://{}", addresses.join(","))
    }

    /// The node that holds `key`'s slot.
    pub fn node_of(&self, key: &str) -> Result<usize, String> {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .map_err(|e| format!("CLUSTER KEYSLOT: {e}"))?;
        for (i, node) in self.nodes.iter().enumerate() {
            let nodes = node.cli(&["CLUSTER", "NODES"])?;
            let own = nodes
                .lines()
                .find(|line| line.contains("myself"))
                .ok_or("CLUSTER NODES has no myself line")?;
            let covers = own.split_whitespace().skip(8).any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                match (start.parse::<u16>(), end.parse::<u16>()) {
                    (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                    _ => false,
                }
            });
            if covers {
                return Ok(i);
            }
        }
        Err(format!("no node covers slot {slot}"))
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}
