//! A btrfs filesystem in a sparse image file, loop-mounted in a temporary directory, unmounted
//! and removed on drop even when its user fails: for tests and for `opdbus-bench bench --btrfs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct LoopBtrfs {
    mount_point: PathBuf,
    image: PathBuf,
    /// The small tmpfs holding the image, when there is one.
    tmpfs: Option<PathBuf>,
    mounted: bool,
    // Dropped after `Drop::drop` has unmounted: holds the image and the mount point.
    _dir: tempfile::TempDir,
}

impl LoopBtrfs {
    /// A fresh filesystem of `megabytes` in a sparse image in a new directory under `parent`;
    /// `Err` says why this process cannot make one (not root, no mkfs.btrfs, no loop device).
    pub fn create_in(parent: &Path, megabytes: u64) -> Result<LoopBtrfs, String> {
        Self::create(parent, megabytes, None)
    }

    /// For tests: a fresh filesystem of `megabytes` under the temporary directory, or `None`
    /// (after saying SKIP and why on stderr) when this process cannot make one.
    pub fn new(megabytes: u64) -> Option<LoopBtrfs> {
        Self::create(&std::env::temp_dir(), megabytes, None)
            .inspect_err(|why| eprintln!("SKIP: needs root and btrfs: {why}"))
            .ok()
    }

    /// As `new`, with the image on a tmpfs of `tmpfs_megabytes`: once that is full
    /// ([`fill_backing`](Self::fill_backing)), the loop device fails writes with EIO, as a dying
    /// disk would, while reads still work.
    pub fn on_tmpfs(megabytes: u64, tmpfs_megabytes: u64) -> Option<LoopBtrfs> {
        Self::create(&std::env::temp_dir(), megabytes, Some(tmpfs_megabytes))
            .inspect_err(|why| eprintln!("SKIP: needs root and btrfs: {why}"))
            .ok()
    }

    fn create(parent: &Path, megabytes: u64, tmpfs: Option<u64>) -> Result<LoopBtrfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("it needs root to loop-mount an image".into());
        }
        if !program_exists("mkfs.btrfs") {
            return Err("mkfs.btrfs is not installed (btrfs-progs)".into());
        }
        let dir = tempfile::tempdir_in(parent)
            .map_err(|e| format!("cannot make a directory in {}: {e}", parent.display()))?;
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point)
            .map_err(|e| format!("cannot make the mount point: {e}"))?;
        let mut fs = LoopBtrfs {
            image: dir.path().join("fs.img"),
            mount_point,
            tmpfs: None,
            mounted: false,
            _dir: dir,
        };
        if let Some(tmpfs_megabytes) = tmpfs {
            let backing = fs._dir.path().join("backing");
            std::fs::create_dir(&backing)
                .map_err(|e| format!("cannot make the tmpfs mount point: {e}"))?;
            let size = format!("size={tmpfs_megabytes}M");
            run(
                "mount",
                &[
                    "-t".as_ref(),
                    "tmpfs".as_ref(),
                    "-o".as_ref(),
                    size.as_ref(),
                    "tmpfs".as_ref(),
                    backing.as_os_str(),
                ],
            )?;
            fs.image = backing.join("fs.img");
            fs.tmpfs = Some(backing);
        }
        std::fs::File::create(&fs.image)
            .and_then(|f| f.set_len(megabytes << 20))
            .map_err(|e| format!("cannot make the image: {e}"))?;
        run("mkfs.btrfs", &["-q".as_ref(), fs.image.as_os_str()])?;
        fs.mount()?;
        Ok(fs)
    }

    /// Loop-mounts the image. Tried again for a while: parallel tests race for free loop
    /// devices, and after a container is gone the kernel lets go of its mounts lazily.
    fn mount(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // mount(8) sets up the loop device with autoclear: unmounting releases it.
            let mounted = run(
                "mount",
                &[
                    "-o".as_ref(),
                    "loop".as_ref(),
                    self.image.as_os_str(),
                    self.mount_point.as_os_str(),
                ],
            );
            match mounted {
                Ok(()) => {
                    self.mounted = true;
                    return Ok(());
                }
                Err(why) if Instant::now() >= deadline => return Err(why),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Fills the tmpfs under the image, so that writes to the filesystem fail from now on.
    pub fn fill_backing(&self) -> Result<(), String> {
        let tmpfs = self.tmpfs.as_ref().ok_or("the image is not on a tmpfs")?;
        let mut fill = std::fs::File::create(tmpfs.join("fill"))
            .map_err(|e| format!("cannot make the fill file: {e}"))?;
        let zeros = vec![0u8; 1 << 20];
        while std::io::Write::write_all(&mut fill, &zeros).is_ok() {}
        Ok(())
    }

    /// Frees the tmpfs again and mounts the filesystem afresh (after its users are gone).
    pub fn unfill_and_remount(&mut self) -> Result<(), String> {
        let tmpfs = self.tmpfs.clone().ok_or("the image is not on a tmpfs")?;
        if self.mounted {
            let _ = run("umount", &[self.mount_point.as_os_str()]);
            self.mounted = false;
        }
        std::fs::remove_file(tmpfs.join("fill"))
            .map_err(|e| format!("cannot remove the fill file: {e}"))?;
        self.mount()
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        if self.mounted && run("umount", &[self.mount_point.as_os_str()]).is_err() {
            // Something still holds it (a failed test's open file): detach lazily so the
            // loop device goes once that is closed.
            let _ = run("umount", &["-l".as_ref(), self.mount_point.as_os_str()]);
        }
        if let Some(tmpfs) = &self.tmpfs {
            // The loop device lets go of the image a moment after the unmount (autoclear), and
            // until then the tmpfs is busy: try for a while, then detach it lazily, so that no
            // run leaves its tmpfs (and the memory it holds) mounted.
            let deadline = Instant::now() + Duration::from_secs(10);
            while run("umount", &[tmpfs.as_os_str()]).is_err() {
                if Instant::now() >= deadline {
                    let _ = run("umount", &["-l".as_ref(), tmpfs.as_os_str()]);
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
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
