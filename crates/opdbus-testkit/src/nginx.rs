//! A real nginx serving a directory over plain HTTP on a free loopback port: what a published
//! transparency log looks like to a client (tests/transparency_publish.rs). Its configuration,
//! pid file, logs and temp files live in its own temporary directory; it runs in the
//! foreground as one process, and is killed and reaped on drop, also when its user fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where nginx is: on `PATH`, or in `/usr/sbin` (not on an unprivileged user's `PATH` on
/// Debian). `None` when it is not installed.
pub fn program() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// Whether nginx is there; if not, the test `test` says why it skips, or fails when `CI=1` is
/// set (CI installs nginx: a test that silently skips there proves nothing).
pub fn nginx_or_skip(test: &str) -> bool {
    if program().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("1"),
        "{test}: nginx is not installed (apt-get install nginx) and CI=1 requires it"
    );
    eprintln!("SKIP {test}: nginx is not installed (apt-get install nginx)");
    false
}

/// The inside of the nginx `server` block in the section of `doc` (markdown) that starts with
/// `heading`, without `listen`, `server_name` and `root` (the kit sets its own port and
/// root): what an operator's configuration serves, for [`Nginx::serve_with`].
pub fn documented_locations(doc: &str, heading: &str) -> String {
    let block = doc
        .split(heading)
        .nth(1)
        .and_then(|section| section.split("```nginx").nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("an nginx block in {heading:?}"));
    let lines: Vec<&str> = block.lines().map(str::trim).collect();
    let start = lines
        .iter()
        .position(|l| *l == "server {")
        .expect("a server block");
    let end = lines.iter().rposition(|l| *l == "}").expect("its end");
    lines[start + 1..end]
        .iter()
        .filter(|l| {
            !["listen ", "server_name ", "root "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The locations of a plain static server: every file under the root, as bytes.
pub const PLAIN_LOCATIONS: &str = "location / {\n    default_type application/octet-stream;\n}\n";

/// A running nginx.
pub struct Nginx {
    child: Option<Child>,
    port: u16,
    /// Holds the configuration, the pid file, the logs and nginx's temp directories.
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves `root` with [`PLAIN_LOCATIONS`].
    pub fn serve(root: &Path) -> Result<Nginx, String> {
        Nginx::serve_with(root, PLAIN_LOCATIONS)
    }

    /// Serves `root` with `locations` (the inside of a `server` block other than `listen` and
    /// `root`, e.g. the `location` blocks an operator's configuration uses).
    pub fn serve_with(root: &Path, locations: &str) -> Result<Nginx, String> {
        let program = program().ok_or("nginx is not installed (apt-get install nginx)")?;
        let root = root
            .canonicalize()
            .map_err(|e| format!("cannot serve {}: {e}", root.display()))?;
        let root = root
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", root.display()))?
            .to_owned();
        // Another process may take the free port between our probe and nginx's bind: then
        // nginx exits at once, and another port is tried.
        let mut last_error = String::new();
        for _ in 0..5 {
            match Nginx::start(&program, &root, locations) {
                Ok(nginx) => return Ok(nginx),
                Err(why) => last_error = why,
            }
        }
        Err(last_error)
    }

    fn start(program: &Path, root: &str, locations: &str) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let port = free_port()?;
        let prefix = dir
            .path()
            .to_str()
            .ok_or("the temp dir is not UTF-8")?
            .to_owned();
        let config = config(&prefix, root, port, locations);
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let error_log = dir.path().join("error.log");
        // -e: the error log before the configuration is read (else /var/log/nginx, not ours).
        let child = Command::new(program)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let mut nginx = Nginx {
            child: Some(child),
            port,
            dir,
        };
        nginx.wait_until_answering(Duration::from_secs(10))?;
        Ok(nginx)
    }

    fn wait_until_answering(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get("/").is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "nginx exited ({status}) before answering; its error log:\n{}",
                    self.error_log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx did not answer within {} s; its error log:\n{}",
                    timeout.as_secs(),
                    self.error_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain HTTP/1.0 GET of `path` (starting with `/`): the status code, the response
    /// headers as text, and the body.
    pub fn get(&self, path: &str) -> Result<Response, String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .map_err(|e| format!("connect to nginx: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("socket timeout: {e}"))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| format!("send to nginx: {e}"))?;
        let mut reply = Vec::new();
        stream
            .read_to_end(&mut reply)
            .map_err(|e| format!("read from nginx: {e}"))?;
        let split = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("nginx's reply has no end of headers")?;
        let headers = String::from_utf8_lossy(&reply[..split]).into_owned();
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP status line: {headers}"))?;
        Ok(Response {
            status,
            headers,
            body: reply[split + 4..].to_vec(),
        })
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a GET returned.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The status line and the header lines, as sent.
    pub headers: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot find a free loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

fn config(prefix: &str, root: &str, port: u16, locations: &str) -> String {
    // As root, nginx would run its worker as `nobody`, who may not read a test's temp dirs; an
    // unprivileged nginx warns about a `user` line and runs as its caller anyway.
    let user = if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    let locations = locations
        .lines()
        .map(|line| format!("        {line}\n"))
        .collect::<String>();
    format!(
        "{user}daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{}}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
{locations}    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real nginx serves a file byte for byte and says 404 for what is not there; dropping
    /// the handle ends it.
    #[test]
    fn nginx_serves_a_directory_and_stops_on_drop() {
        if program().is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("1"),
                "nginx is not installed (apt-get install nginx) and CI=1 requires it"
            );
            eprintln!("SKIP nginx_serves_a_directory_and_stops_on_drop: nginx is not installed");
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("tile/0")).expect("mkdir");
        let bytes: Vec<u8> = (0..=255).cycle().take(8192).collect();
        std::fs::write(root.path().join("tile/0/000"), &bytes).expect("write");
        let nginx = Nginx::serve(root.path()).expect("nginx");
        assert!(nginx.url().starts_with("http://127.0.0.1:"));
        let reply = nginx.get("/tile/0/000").expect("GET");
        assert_eq!(reply.status, 200, "{}", reply.headers);
        assert_eq!(reply.body, bytes);
        assert_eq!(
            reply.header("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(nginx.get("/tile/0/001").expect("GET").status, 404);
        let port = nginx.port;
        drop(nginx);
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "nothing listens after the drop"
        );
    }
}
