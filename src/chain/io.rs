//! The I/O seam under the segment store: every write, space reservation, flush and directory
//! sync of a segment file goes through [`SegmentIo`] and [`SegmentFile`].
//!
//! Production uses [`RealIo`] (plain `pwrite`, `fallocate`, `fdatasync`, `fsync`). Tests plug
//! in backends that keep written and durable bytes apart (a power cut drops what was never
//! synced) or that fail the Nth call, so crash and fault paths are exercised without a special
//! kernel. Reads do not go through the seam: recovery and readers read the files as they are on
//! disk, which is exactly what a crash test must put in front of them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// Opens segment files and syncs the chain directory.
pub trait SegmentIo: Send + Sync {
    /// Creates a new, empty segment file (fails if it exists), readable and writable.
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens an existing segment file for appending.
    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Makes the directory's entries (a created or removed segment) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open segment file, as the writer uses it.
pub trait SegmentFile: Send + Sync {
    /// Writes all of `buf` at `offset`; not durable until [`SegmentFile::sync_data`].
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Allocates disk space for `len` bytes from `offset` and extends the file's size to cover
    /// them (`fallocate` mode 0; never shrinks). The new bytes read as zeros, and later writes
    /// there neither fail for lack of space nor change the size, so their `fdatasync` has no
    /// inode size to write. `Unsupported` when the filesystem cannot do it; the store then
    /// appends without it.
    fn extend(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes everything written so far, and the file's size, durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file's size (cutting a torn tail or rolling back a failed write); not durable
    /// until [`SegmentFile::sync_data`].
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// The I/O backend the store uses; [`RealIo`] unless a test says otherwise.
pub type SharedIo = Arc<dyn SegmentIo>;

/// The operating system's files.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealIo;

impl RealIo {
    pub fn shared() -> SharedIo {
        Arc::new(RealIo)
    }
}

impl SegmentIo for RealIo {
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = crate::files::create_new(path, 0o640)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = crate::files::open(crate::files::options(0o640).write(true), path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        crate::files::sync_dir(dir)
    }
}

struct RealFile(File);

impl SegmentFile for RealFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn extend(&self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        fallocate(self.0.as_raw_fd(), FallocateFlags::empty(), offset, len).map_err(|errno| {
            match errno {
                nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS => {
                    io::Error::from(io::ErrorKind::Unsupported)
                }
                other => io::Error::from(other),
            }
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}
