//! A tmpfs mounted on a directory for a test (root only): a small disk that fills up, or
//! one remounted read-only or larger. Unmounted (lazily) on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().expect("mount");
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount(8) takes it: `1m`, `16m`) on `at`, made if missing.
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            path_str(at),
        ]);
        Tmpfs(at.to_path_buf())
    }

    /// Remounts with `options` (`size=32m`, `ro`, `rw`). Read-only waits, as an admin would,
    /// until no file is open for writing (a daemon's cache thread closes its pack half a second
    /// after its last write).
    pub fn remount(&self, options: &str) {
        let args = ["-o", &format!("remount,{options}"), path_str(&self.0)];
        let deadline = Instant::now() + Duration::from_secs(5);
        while options.starts_with("ro") && Instant::now() < deadline {
            let out = Command::new("mount").args(args).output().expect("mount");
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        mount(&args);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}
