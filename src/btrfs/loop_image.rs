//! Test support: a btrfs filesystem in a sparse image file, loop-mounted in a temporary
//! directory, unmounted and removed on drop even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopBtrfs {
    mount_point: PathBuf,
    mounted: bool,
    // Dropped after `Drop::drop` has unmounted: holds the image and the mount point.
    _dir: tempfile::TempDir,
}

impl LoopBtrfs {
    /// A fresh filesystem of `megabytes`, or `None` (after saying so on stderr) when this
    /// process cannot make one: not root, no mkfs.btrfs, or no loop device.
    pub fn new(megabytes: u64) -> Option<LoopBtrfs> {
        if !nix::unistd::geteuid().is_root() || !program_exists("mkfs.btrfs") {
            eprintln!("SKIP: needs root and btrfs (mkfs.btrfs)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tests need a writable temporary directory");
        let image = dir.path().join("fs.img");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).expect("mount point in a fresh temporary directory");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(megabytes << 20))
            .expect("sparse image file");
        let mut fs = LoopBtrfs {
            mount_point,
            mounted: false,
            _dir: dir,
        };
        if !run("mkfs.btrfs", &["-q".as_ref(), image.as_os_str()]) {
            eprintln!("SKIP: needs root and btrfs (mkfs.btrfs failed)");
            return None;
        }
        // mount(8) sets up the loop device with autoclear: unmounting releases it.
        let mounted = run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                fs.mount_point.as_os_str(),
            ],
        );
        if !mounted {
            eprintln!("SKIP: needs root and btrfs (loop mount failed)");
            return None;
        }
        fs.mounted = true;
        Some(fs)
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        if self.mounted && !run("umount", &[self.mount_point.as_os_str()]) {
            // Something still holds it (a failed test's open file): detach lazily so the
            // loop device goes once that is closed.
            run("umount", &["-l".as_ref(), self.mount_point.as_os_str()]);
        }
    }
}

fn program_exists(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> bool {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            false
        }
    }
}
