//! btrfs building blocks: subvolumes, read-only snapshots, and `send`/`receive` streams.
//!
//! Everything here is synchronous and runs on the caller's thread. Detection (`is_btrfs`,
//! `is_subvolume`) uses `statfs(2)` and the inode number; every change goes through btrfs-progs
//! (`btrfs subvolume …`, `btrfs property …`, `btrfs send|receive`) started with an argv, never
//! a shell. The crate denies `unsafe_code`, and nix exposes no safe wrappers for the btrfs
//! ioctls; btrfs-progs also owns the send-stream format, which we have no business re-encoding.
//!
//! Promises:
//! - A failing tool surfaces as a typed [`BtrfsError`] carrying its command line, exit status
//!   and stderr.
//! - Nothing is overwritten: creating a subvolume or snapshot over an existing path is refused
//!   before any tool runs (`btrfs subvolume snapshot src existing_dir` would otherwise quietly
//!   create `existing_dir/<name>`).
//! - [`receive`] into a directory leaves either a complete read-only subvolume or nothing: a
//!   failure on either side of the pipe deletes whatever the receiver had created.

mod command_line;
// The test kit's LoopBtrfs, for the unit tests (see `corpus` in lib.rs for why a path).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../crates/opdbus-testkit/src/loop_btrfs.rs"]
mod loop_image;
mod subvolume;
#[cfg(test)]
mod tests;
mod transfer;

pub use command_line::{split_command_line, CommandLineError};
pub use subvolume::{
    create_subvolume, delete_subvolume, is_btrfs, is_readonly, is_subvolume, set_readonly, snapshot,
};
pub use transfer::{receive, send, PartialReceive, ReceiveTarget, Received, SendStream};

use command_line::display_argv;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The btrfs-progs front end, looked up in `PATH`.
const BTRFS: &str = "btrfs";

/// A tool that ran and failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{command}` failed ({status}): {}", stderr_or_placeholder(.stderr))]
pub struct ToolFailure {
    /// The command line as a user would type it.
    pub command: String,
    /// How it ended: `exit status: 1`, `signal: 13 (SIGPIPE)`, or why it was judged failed.
    pub status: String,
    /// Its standard error, trimmed, lines joined with ` / `.
    pub stderr: String,
}

fn stderr_or_placeholder(stderr: &str) -> &str {
    if stderr.is_empty() {
        "nothing on stderr"
    } else {
        stderr
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    #[error("{}: not on a btrfs filesystem", .path.display())]
    NotBtrfs { path: PathBuf },
    #[error("{}: not a btrfs subvolume", .path.display())]
    NotSubvolume { path: PathBuf },
    #[error("{}: only a read-only snapshot can be sent", .path.display())]
    NotReadOnly { path: PathBuf },
    #[error("{}: already exists", .path.display())]
    AlreadyExists { path: PathBuf },
    #[error("could not start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolFailure),
    /// A send/receive pipe failed; `failures` holds each side that failed (often both: when
    /// the receiver dies the sender gets EPIPE), the most telling one first.
    #[error("sending {} failed: {}; {partial}", .snapshot.display(), join_failures(.failures))]
    Transfer {
        snapshot: PathBuf,
        failures: Vec<ToolFailure>,
        partial: PartialReceive,
    },
    #[error("bad receive command: {0}")]
    BadCommand(#[from] CommandLineError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn join_failures(failures: &[ToolFailure]) -> String {
    let parts: Vec<String> = failures.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// One external command (a `btrfs` subcommand or a user's receive command), kept as argv so
/// that it can both run without a shell and be shown in errors.
struct Tool {
    argv: Vec<OsString>,
}

impl Tool {
    fn btrfs(args: &[&str], paths: &[&Path]) -> Tool {
        let mut argv = vec![OsString::from(BTRFS)];
        argv.extend(args.iter().map(OsString::from));
        argv.extend(paths.iter().map(|p| path_arg(p)));
        Tool { argv }
    }

    fn with_args(mut self, args: &[&str]) -> Tool {
        self.argv.extend(args.iter().map(OsString::from));
        self
    }

    /// The display form, lossy for non-UTF-8 arguments.
    fn shown(&self) -> String {
        let argv: Vec<String> = self
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        display_argv(&argv)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]);
        command
    }

    /// Runs to completion; returns stdout, or the failure with stderr.
    fn run(&self) -> Result<String, BtrfsError> {
        let output = self
            .command()
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(self.failure(output.status, &output.stderr).into())
        }
    }

    fn spawn_error(&self, source: io::Error) -> BtrfsError {
        BtrfsError::Spawn {
            program: self.argv[0].to_string_lossy().into_owned(),
            source,
        }
    }

    fn failure(&self, status: ExitStatus, stderr: &[u8]) -> ToolFailure {
        self.failure_because(status.to_string(), stderr)
    }

    fn failure_because(&self, status: String, stderr: &[u8]) -> ToolFailure {
        ToolFailure {
            command: self.shown(),
            status,
            // One line, so that an error stays one line wherever it is shown.
            stderr: String::from_utf8_lossy(stderr)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" / "),
        }
    }
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// A path as an argument that btrfs-progs cannot take for an option (`-x` becomes `./-x`).
fn path_arg(path: &Path) -> OsString {
    if path.as_os_str().as_bytes().starts_with(b"-") {
        Path::new(".").join(path).into_os_string()
    } else {
        path.as_os_str().to_owned()
    }
}
