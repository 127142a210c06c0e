//! `btrfs send [-p parent] snapshot | btrfs receive dir` (or `| some command`), without a shell.
//!
//! The stream goes straight from the sender's stdout to the receiver's stdin (one pipe, no copy
//! through this process); both stderrs are drained on helper threads so that neither side can
//! block on a full stderr pipe. Both exit statuses count: a receiver that "succeeds" on a stream
//! cut short by a dying sender is still a failure, and its subvolume is deleted.

use super::subvolume::{delete_subvolume, is_btrfs, is_readonly, is_subvolume};
use super::{split_command_line, BtrfsError, CommandLineError, Tool, ToolFailure};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::thread::JoinHandle;

/// Where [`receive`] puts a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveTarget {
    /// A directory on btrfs: `btrfs receive DIR` creates the read-only subvolume
    /// `DIR/<snapshot name>`.
    Directory(PathBuf),
    /// A command that reads the stream on its stdin, typically `ssh HOST btrfs receive DIR`;
    /// executed directly from this argv.
    Command(Vec<String>),
}

impl ReceiveTarget {
    /// A [`ReceiveTarget::Command`] from a command line such as `--to-command` takes, split by
    /// [`split_command_line`].
    pub fn command_line(line: &str) -> Result<ReceiveTarget, CommandLineError> {
        Ok(ReceiveTarget::Command(split_command_line(line)?))
    }
}

/// A stream that was received completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The subvolume's name on the receiving side: the sent snapshot's last path component.
    pub name: OsString,
    /// Its path, for a [`ReceiveTarget::Directory`]; checked to be a read-only subvolume.
    pub path: Option<PathBuf>,
}

/// What a failed [`receive`] left on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartialReceive {
    /// Nothing was created.
    Nothing,
    /// The receiver had created this subvolume; it was deleted.
    Deleted(PathBuf),
    /// The receiver created this path and it could not be deleted; it must not be used.
    Left { path: PathBuf, reason: String },
    /// The receiver was a command: a subvolume of this name may be left wherever it received
    /// to, and is to be deleted there. It is not read-only, so it is never mistaken for a good
    /// copy by a check that requires that (as `btrfs receive` sets it only at the very end).
    Remote { name: String },
}

impl fmt::Display for PartialReceive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartialReceive::Nothing => f.write_str("nothing was received"),
            PartialReceive::Deleted(path) => {
                write!(f, "the partial subvolume {} was deleted", path.display())
            }
            PartialReceive::Left { path, reason } => write!(
                f,
                "the partial subvolume {} could not be deleted and must not be used: {reason}",
                path.display()
            ),
            PartialReceive::Remote { name } => write!(
                f,
                "the receiving command may have left a partial subvolume {name:?}; delete it there"
            ),
        }
    }
}

/// A running `btrfs send`. Dropping it unconsumed kills the sender.
#[derive(Debug)]
pub struct SendStream {
    snapshot: PathBuf,
    stdout: Option<ChildStdout>,
    process: Option<Running>,
}

impl SendStream {
    /// The snapshot being sent.
    pub fn snapshot(&self) -> &Path {
        &self.snapshot
    }

    /// The stream itself, to read or hand to another process; `None` once taken.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// Waits for the sender to exit; an error carries its stderr.
    pub fn finish(mut self) -> Result<(), BtrfsError> {
        self.wait().map_err(BtrfsError::from)
    }

    fn wait(&mut self) -> Result<(), ToolFailure> {
        // Our read end must be closed, or a sender whose reader is gone would block forever.
        self.stdout = None;
        match self.process.take() {
            Some(process) => process.wait(),
            None => Ok(()),
        }
    }

    /// Starts `argv` as the sender of `snapshot`'s stream; tests use it to fake broken senders.
    fn spawn(tool: Tool, snapshot: &Path) -> Result<SendStream, BtrfsError> {
        let (mut process, stdout) = Running::spawn(tool, Stdio::null(), Stdio::piped())?;
        let stdout = stdout.ok_or_else(|| {
            process.kill();
            BtrfsError::Io {
                path: snapshot.to_owned(),
                source: io::Error::other("the sender has no stdout pipe"),
            }
        })?;
        Ok(SendStream {
            snapshot: snapshot.to_owned(),
            stdout: Some(stdout),
            process: Some(process),
        })
    }

    #[cfg(test)]
    pub(super) fn fake(argv: &[&str], snapshot: &Path) -> Result<SendStream, BtrfsError> {
        let tool = Tool {
            argv: argv.iter().map(OsString::from).collect(),
        };
        SendStream::spawn(tool, snapshot)
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        self.stdout = None;
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

/// Starts `btrfs send [-p parent] snapshot`. Both must be read-only subvolumes on btrfs, and
/// `parent` must already be on the receiving side for the stream to be received.
pub fn send(snapshot: &Path, parent: Option<&Path>) -> Result<SendStream, BtrfsError> {
    require_sendable(snapshot)?;
    if snapshot.file_name().is_none() {
        return Err(BtrfsError::Io {
            path: snapshot.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "a snapshot to send needs a name",
            ),
        });
    }
    let tool = match parent {
        Some(parent) => {
            require_sendable(parent)?;
            Tool::btrfs(&["send", "-p"], &[parent, snapshot])
        }
        None => Tool::btrfs(&["send"], &[snapshot]),
    };
    SendStream::spawn(tool, snapshot)
}

fn require_sendable(path: &Path) -> Result<(), BtrfsError> {
    if !is_readonly(path)? {
        return Err(BtrfsError::NotReadOnly {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Pipes `stream` into `target` and waits for both ends.
///
/// For a [`ReceiveTarget::Directory`], success means `DIR/<name>` is a read-only subvolume;
/// on any failure a subvolume the receiver created is deleted ([`PartialReceive`] says what
/// became of it). The target must be on btrfs and `DIR/<name>` must not exist; both are
/// checked before the receiver starts, so these refusals leave nothing behind.
pub fn receive(mut stream: SendStream, target: &ReceiveTarget) -> Result<Received, BtrfsError> {
    let snapshot = stream.snapshot.clone();
    let name = snapshot.file_name().unwrap_or(OsStr::new("")).to_owned();
    let (tool, dest) = match target {
        ReceiveTarget::Directory(dir) => {
            if !is_btrfs(dir) {
                return Err(BtrfsError::NotBtrfs { path: dir.clone() });
            }
            let dest = dir.join(&name);
            if dest.symlink_metadata().is_ok() {
                return Err(BtrfsError::AlreadyExists { path: dest });
            }
            (Tool::btrfs(&["receive"], &[dir]), Some(dest))
        }
        ReceiveTarget::Command(argv) => {
            if argv.is_empty() {
                return Err(CommandLineError::Empty.into());
            }
            (
                Tool {
                    argv: argv.iter().map(OsString::from).collect(),
                },
                None,
            )
        }
    };
    let input = stream.take_stdout().ok_or_else(|| BtrfsError::Io {
        path: snapshot.clone(),
        source: io::Error::other("the send stream was already taken"),
    })?;
    // `Running::spawn` drops the `Command`, and with it our copy of the pipe's read end.
    let (receiver, _) = Running::spawn(tool, Stdio::from(input), Stdio::null())?;
    let received = receiver.wait();
    let sent = stream.wait();

    let mut failures: Vec<ToolFailure> =
        [received.err(), sent.err()].into_iter().flatten().collect();
    if let (true, Some(dest)) = (failures.is_empty(), &dest) {
        if !(is_subvolume(dest) && matches!(is_readonly(dest), Ok(true))) {
            failures.push(ToolFailure {
                command: "btrfs receive".to_owned(),
                status: "exit status: 0".to_owned(),
                stderr: format!("left no read-only subvolume at {}", dest.display()),
            });
        }
    }
    if failures.is_empty() {
        return Ok(Received { name, path: dest });
    }
    let partial = match dest {
        Some(dest) => remove_partial(dest),
        None => PartialReceive::Remote {
            name: name.to_string_lossy().into_owned(),
        },
    };
    Err(BtrfsError::Transfer {
        snapshot,
        failures,
        partial,
    })
}

fn remove_partial(dest: PathBuf) -> PartialReceive {
    if dest.symlink_metadata().is_err() {
        return PartialReceive::Nothing;
    }
    if !is_subvolume(&dest) {
        let reason = "not a subvolume, left in place".to_owned();
        return PartialReceive::Left { path: dest, reason };
    }
    match delete_subvolume(&dest) {
        Ok(()) => PartialReceive::Deleted(dest),
        Err(e) => PartialReceive::Left {
            path: dest,
            reason: e.to_string(),
        },
    }
}

/// A child process whose stderr is being collected on a helper thread.
#[derive(Debug)]
struct Running {
    tool: Tool,
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    fn spawn(
        tool: Tool,
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<(Running, Option<ChildStdout>), BtrfsError> {
        let spawned = {
            let mut command = tool.command();
            command.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
            command.spawn()
        };
        let mut child = spawned.map_err(|source| tool.spawn_error(source))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                // A read error only shortens the message; the exit status still decides.
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        });
        Ok((
            Running {
                tool,
                child,
                stderr,
            },
            stdout,
        ))
    }

    fn wait(mut self) -> Result<(), ToolFailure> {
        let status = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(self.tool.failure(status, &stderr)),
            Err(e) => Err(self
                .tool
                .failure_because(format!("wait failed: {e}"), &stderr)),
        }
    }

    fn kill(&mut self) {
        // Errors mean it has already exited; `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
