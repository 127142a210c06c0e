//! A btrfs filesystem in a sparse image file, loop-mounted in a temporary directory, unmounted
//! and removed on drop even when its user fails: for tests and for `opdbus-bench bench --btrfs`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopBtrfs {
    mount_point: PathBuf,
    mounted: bool,
    // Dropped after `Drop::drop` has unmounted: holds the image and the mount point.
    _dir: tempfile::TempDir,
}

impl LoopBtrfs {
    /// A fresh filesystem of `megabytes` in a sparse image in a new directory under `parent`;
    /// `Err` says why this process cannot make one (not root, no mkfs.btrfs, no loop device).
    pub fn create_in(parent: &Path, megabytes: u64) -> Result<LoopBtrfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("it needs root to loop-mount an image".into());
        }
        if !program_exists("mkfs.btrfs") {
            return Err("mkfs.btrfs is not installed (btrfs-progs)".into());
        }
        let dir = tempfile::tempdir_in(parent)
            .map_err(|e| format!("cannot make a directory in {}: {e}", parent.display()))?;
        let image = dir.path().join("fs.img");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point)
            .and_then(|()| std::fs::File::create(&image))
            .and_then(|f| f.set_len(megabytes << 20))
            .map_err(|e| format!("cannot make the image: {e}"))?;
        let mut fs = LoopBtrfs {
            mount_point,
            mounted: false,
            _dir: dir,
        };
        run("mkfs.btrfs", &["-q".as_ref(), image.as_os_str()])?;
        // mount(8) sets up the loop device with autoclear: unmounting releases it.
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                fs.mount_point.as_os_str(),
            ],
        )?;
        fs.mounted = true;
        Ok(fs)
    }

    /// For tests: a fresh filesystem of `megabytes` under the temporary directory, or `None`
    /// (after saying SKIP and why on stderr) when this process cannot make one.
    pub fn new(megabytes: u64) -> Option<LoopBtrfs> {
        Self::create_in(&std::env::temp_dir(), megabytes)
            .inspect_err(|why| eprintln!("SKIP: needs root and btrfs: {why}"))
            .ok()
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        if self.mounted && run("umount", &[self.mount_point.as_os_str()]).is_err() {
            // Something still holds it (a failed test's open file): detach lazily so the
            // loop device goes once that is closed.
            let _ = run("umount", &["-l".as_ref(), self.mount_point.as_os_str()]);
        }
    }
}

fn program_exists(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
