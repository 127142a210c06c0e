//! A source read over ssh: `opdbus-chain export` on the source host writes the same files an
//! HTTP server would (the checkpoint, a segment from an offset), each after a one-byte `+`; a
//! segment that does not exist is exit 3 with nothing written. ssh carries it as it carries
//! backups: its keys, its host checking, its configuration.

use super::{Source, SourceError, MAX_CHECKPOINT_BYTES};
use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};

/// The exit status of `export` for a segment that does not exist.
pub const NOT_FOUND: i32 = 3;

pub struct SshSource {
    /// The ssh program and its options, then the destination.
    ssh: Vec<String>,
    /// `opdbus-chain` on the source.
    program: String,
    /// The source's chain directory.
    dir: String,
    url: String,
}

impl SshSource {
    /// A source at `ssh://[user@]host[:port]/chain/dir`, reached with `ssh_command` (split as a
    /// POSIX shell would, no expansion).
    pub fn new(url: &str, ssh_command: &str, program: &str) -> Result<SshSource, SourceError> {
        let bad =
            |why: &str| SourceError(format!("{url}: {why} (ssh://[USER@]HOST[:PORT]/CHAIN_DIR)"));
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("not an ssh:// URL"))?;
        let (authority, dir) = rest
            .split_once('/')
            .ok_or_else(|| bad("no chain directory"))?;
        let dir = format!("/{dir}");
        let (destination, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                Some(
                    port.parse::<u16>()
                        .map_err(|_| bad("the port is not a number"))?,
                ),
            ),
            None => (authority, None),
        };
        // A host name, an IPv4 address or a user@host: nothing a shell or ssh's %h expansions
        // could read as more.
        let plain = |c: char| c.is_ascii_alphanumeric() || ".-_@".contains(c);
        if destination.is_empty()
            || destination.starts_with('-')
            || !destination.chars().all(plain)
            || dir.len() < 2
        {
            return Err(bad("no host, a host with characters other than letters, digits, '.', '-', '_' and '@', or no chain directory"));
        }
        let mut ssh = shlex::split(ssh_command)
            .filter(|words| !words.is_empty())
            .ok_or_else(|| {
                SourceError(format!("--ssh-command {ssh_command:?}: not a command line"))
            })?;
        if let Some(port) = port {
            ssh.extend(["-p".to_string(), port.to_string()]);
        }
        // "--" ends ssh's options: the destination cannot be read as one.
        ssh.extend(["--".to_string(), destination.to_string()]);
        Ok(SshSource {
            ssh,
            program: program.to_string(),
            dir,
            url: url.to_string(),
        })
    }

    /// Runs `export ARGS` on the source; its stdout after the `+`, or `None` on exit 3.
    fn export(&self, args: &[String]) -> Result<Option<Exported>, SourceError> {
        let quote = |word: &str| -> Result<String, SourceError> {
            shlex::try_quote(word)
                .map(|quoted| quoted.into_owned())
                .map_err(|_| SourceError(format!("{word:?} cannot be passed to a remote shell")))
        };
        let mut remote = vec![quote(&self.program)?, "export".to_string()];
        for arg in args {
            remote.push(quote(arg)?);
        }
        remote.extend(["--chain-dir".to_string(), quote(&self.dir)?]);
        let mut child = Command::new(&self.ssh[0])
            .args(&self.ssh[1..])
            .arg(remote.join(" "))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| SourceError(format!("running {}: {err}", self.ssh[0])))?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut mark = [0u8; 1];
        let got = loop {
            match stdout.read(&mut mark) {
                Ok(n) => break n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(SourceError(format!("{}: {err}", self.url))),
            }
        };
        if got == 1 && mark[0] == b'+' {
            return Ok(Some(Exported {
                child: Some(child),
                stdout,
                what: format!("{}: export {}", self.url, args.join(" ")),
            }));
        }
        // Not an export's output: stop reading (a remote writing on would block the wait).
        drop(stdout);
        if got == 1 {
            let _ = child.kill();
        }
        let status = child
            .wait()
            .map_err(|err| SourceError(format!("{}: {err}", self.url)))?;
        if got == 0 && status.code() == Some(NOT_FOUND) {
            return Ok(None);
        }
        Err(SourceError(format!(
            "{}: `export {}` on the source failed ({status}; its message is above)",
            self.url,
            args.join(" ")
        )))
    }
}

/// The output of one `export`: the stream, and the ssh process, whose failure after the data
/// began is an error at the end of the stream (never a short file).
struct Exported {
    child: Option<Child>,
    stdout: ChildStdout,
    what: String,
}

impl Read for Exported {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(mut child) = self.child.take() {
                let status = child.wait()?;
                if !status.success() {
                    return Err(std::io::Error::other(format!(
                        "{} ended with {status} before the end of the data",
                        self.what
                    )));
                }
            }
        }
        Ok(n)
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        // Stopped reading early (the checkpoint's size was reached): end the ssh session.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Source for SshSource {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn checkpoint(&self) -> Result<Vec<u8>, SourceError> {
        let Some(exported) = self.export(&["checkpoint".to_string()])? else {
            return Err(SourceError(format!(
                "{}: the source has no checkpoint",
                self.url
            )));
        };
        let mut note = Vec::new();
        exported
            .take(MAX_CHECKPOINT_BYTES + 1)
            .read_to_end(&mut note)
            .map_err(|err| SourceError(err.to_string()))?;
        if note.len() as u64 > MAX_CHECKPOINT_BYTES {
            return Err(SourceError(format!(
                "{}: the checkpoint is larger than {MAX_CHECKPOINT_BYTES} bytes",
                self.url
            )));
        }
        Ok(note)
    }

    fn segment(&self, first: u64, offset: u64) -> Result<Option<Box<dyn Read>>, SourceError> {
        let args = [
            "segment".to_string(),
            first.to_string(),
            "--offset".to_string(),
            offset.to_string(),
        ];
        Ok(self
            .export(&args)?
            .map(|exported| Box::new(super::stream::ZeroRunLimit::new(exported)) as Box<dyn Read>))
    }
}
