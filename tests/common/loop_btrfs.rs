//! A btrfs filesystem in a sparse image file, loop-mounted in a temporary directory and
//! unmounted on drop (also when the test fails). Needs root and mkfs.btrfs; `new` returns
//! `None` after printing `SKIP: …` otherwise.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopBtrfs {
    mount_point: PathBuf,
    mounted: bool,
    _dir: tempfile::TempDir,
}

impl LoopBtrfs {
    pub fn new(megabytes: u64) -> Option<LoopBtrfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root (loop-mounted btrfs)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let image = dir.path().join("fs.img");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).expect("mount point");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(megabytes << 20))
            .expect("sparse image");
        if !run("mkfs.btrfs", &["-q".as_ref(), image.as_os_str()]) {
            eprintln!("SKIP: needs btrfs (mkfs.btrfs failed or is missing)");
            return None;
        }
        let mut fs = LoopBtrfs {
            mount_point,
            mounted: false,
            _dir: dir,
        };
        if !run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                fs.mount_point.as_os_str(),
            ],
        ) {
            eprintln!("SKIP: needs loop devices (mount -o loop failed)");
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
            run("umount", &["-l".as_ref(), self.mount_point.as_os_str()]);
        }
    }
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
        Err(err) => {
            eprintln!("{program}: {err}");
            false
        }
    }
}
