//! How the daemon opens files in its own directories (chain, cache, snapshots, the chain-id
//! marker): never through a symbolic link, new files with an explicit mode rather than what
//! the umask leaves, and directories only when no one but the daemon's user (or root) can
//! change what is in them.
//!
//! Why: the daemon writes with its own user's rights (root when started by hand). A symlink
//! planted as `index`, `vectors` or a segment would otherwise make it truncate or rewrite a
//! file of the planter's choosing, and a directory another user can write to is where such a
//! link gets planted. `O_NOFOLLOW` refuses a link in the last path component; [`check_dir`]
//! refuses a directory others could plant one in.
//!
//! Readers: [`share_with_group`] gives a group (`OPDBUS_READ_GROUP`) read access to the
//! daemon's directories, never write access.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file the daemon creates.
pub const FILE_MODE: u32 = 0o640;
/// Mode of every directory the daemon creates.
pub const DIR_MODE: u32 = 0o750;

/// Open options that refuse a symlink as the last component, with `mode` for a file they
/// create (the caller adds read/write/create flags). The umask may still clear bits of
/// `mode`; [`create_new`] and [`write_atomic`] set it exactly.
pub fn options(mode: u32) -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode);
    options
}

/// Opens `path` with `options` (from [`options`]); a refused symlink is said to be one.
pub fn open(options: &OpenOptions, path: &Path) -> io::Result<File> {
    options.open(path).map_err(|e| explain(path, e))
}

/// Opens an existing file for reading; a symlink is refused.
pub fn open_read(path: &Path) -> io::Result<File> {
    options(FILE_MODE)
        .read(true)
        .open(path)
        .map_err(|e| explain(path, e))
}

/// Reads a whole file; a symlink is refused.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_read(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Creates a new file (`O_EXCL`: never an existing file or link) for reading and writing,
/// with exactly `mode`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    let file = options(mode)
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| explain(path, e))?;
    file.set_permissions(Permissions::from_mode(mode))?;
    give_to_dir_owner(&file, path)?;
    Ok(file)
}

/// Root (an offline `opdbus-chain repair`, `tlog rebuild`, `restore`) making a file or directory
/// in a directory the service user owns gives it to that user, who writes there next; a
/// root-owned file in its chain would stop the daemon. The group is the directory's when it is
/// not set-group-ID (then the kernel already gave the readers' group).
fn give_to_dir_owner(made: &File, path: &Path) -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let dir = std::fs::metadata(parent_of(path))?;
    if dir.uid() == 0 {
        return Ok(());
    }
    let gid = (dir.mode() & SETGID == 0).then_some(dir.gid());
    std::os::unix::fs::fchown(made, Some(dir.uid()), gid)
}

/// Replaces `path` with `bytes`: written to `path` + `.tmp` (a new file with exactly `mode`;
/// a leftover of an earlier crash, link or not, is removed first), synced, renamed over
/// `path`, and the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut file = create_new(&tmp, mode)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(parent_of(path))
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    options(DIR_MODE)
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_DIRECTORY)
        .open(dir)?
        .sync_all()
}

/// Creates the new directory `dir` with exactly [`DIR_MODE`], whatever the umask; an existing
/// one is an error (`AlreadyExists`), as with [`std::fs::create_dir`].
pub fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir(dir)?;
    set_dir_mode(dir)?;
    give_to_dir_owner(&open_no_follow(dir, libc::O_DIRECTORY)?, dir)
}

/// Sets a new directory's mode to [`DIR_MODE`], keeping the set-group-ID bit the kernel gave it
/// in a shared directory ([`share_with_group`]): without it, files made below would lose the
/// readers' group.
pub fn set_dir_mode(dir: &Path) -> io::Result<()> {
    let inherited = std::fs::symlink_metadata(dir)?.mode() & SETGID;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE | inherited))
}

/// Creates `dir` (and missing parents) with exactly [`DIR_MODE`]; an existing one is left as
/// it is.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match create_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) => Err(err),
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `ELOOP` from `O_NOFOLLOW` reads "too many levels of symbolic links"; say what happened.
fn explain(path: &Path, err: io::Error) -> io::Error {
    if err.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            err.kind(),
            format!(
                "{} is a symbolic link; the daemon does not follow links in its directories \
                 (remove the link)",
                path.display()
            ),
        )
    } else {
        err
    }
}

const SETGID: u32 = 0o2000;
/// Mode of a directory shared with a readers' group: set-group-ID, so that what is made in it
/// later gets the group without another `chown`.
pub const SHARED_DIR_MODE: u32 = SETGID | DIR_MODE;

/// How deep [`share_with_group`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The directory and everything below it.
    Tree,
    /// The directory and its entries, not below them: `.snapshots`, whose snapshots are
    /// read-only (they keep the group their source had when they were taken).
    Entries,
}

/// Gives group `gid` read access to `dir` and what is in it: directories get group `gid` and
/// [`SHARED_DIR_MODE`], regular files group `gid` and mode 0640 (0600 stays 0600 only for files
/// the owner cannot read, which the daemon never makes). Others get nothing. Symlinks are
/// skipped, never followed: every change is an `fchown`/`fchmod` on a descriptor opened with
/// `O_NOFOLLOW`. A directory that already has the group and mode is taken to be done (what is
/// made in it inherits both), so a restart does not walk a big chain again. Returns how many
/// entries were changed.
///
/// Handing a file to another group needs the daemon's user to be a member of it (or
/// `CAP_CHOWN`); otherwise `EPERM`.
pub fn share_with_group(dir: &Path, gid: u32, depth: Depth) -> io::Result<u64> {
    let handle = open_no_follow(dir, libc::O_DIRECTORY).map_err(|e| context(dir, e))?;
    let meta = handle.metadata().map_err(|e| context(dir, e))?;
    if meta.gid() == gid && meta.mode() & 0o7777 == SHARED_DIR_MODE {
        return Ok(0);
    }
    share_dir(dir, handle, gid, depth)
}

fn share_dir(dir: &Path, handle: File, gid: u32, depth: Depth) -> io::Result<u64> {
    // The directory first: whatever is made in it from now on inherits the group.
    let mut changed = share_one(&handle, gid, SHARED_DIR_MODE).map_err(|e| context(dir, e))?;
    drop(handle);
    for entry in std::fs::read_dir(dir).map_err(|e| context(dir, e))? {
        let entry = entry.map_err(|e| context(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| context(&path, e))?;
        if kind.is_dir() {
            let handle = match open_no_follow(&path, libc::O_DIRECTORY) {
                Ok(handle) => handle,
                // Removed or replaced since it was listed: the daemon's own work, not ours.
                Err(err) if gone(&err) => continue,
                Err(err) => return Err(context(&path, err)),
            };
            changed += match depth {
                Depth::Tree => share_dir(&path, handle, gid, depth)?,
                Depth::Entries => {
                    share_one(&handle, gid, SHARED_DIR_MODE).map_err(|e| context(&path, e))?
                }
            };
        } else if kind.is_file() {
            let handle = match open_no_follow(&path, 0) {
                Ok(handle) => handle,
                Err(err) if gone(&err) => continue,
                Err(err) => return Err(context(&path, err)),
            };
            let owner = handle.metadata().map_err(|e| context(&path, e))?.mode() & 0o700;
            changed += share_one(&handle, gid, owner | 0o040).map_err(|e| context(&path, e))?;
        }
    }
    Ok(changed)
}

/// Gives `path` and (a directory) everything below it to `uid`:`gid` (modes unchanged), without following
/// symlinks: what root restored (`opdbus-chain restore`) into a directory the daemon's own
/// user owns must be that user's, or the daemon could not write its chain.
pub fn give_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let handle = open_no_follow(path, 0).map_err(|e| context(path, e))?;
    std::os::unix::fs::fchown(&handle, Some(uid), Some(gid)).map_err(|e| context(path, e))?;
    if !handle.metadata().map_err(|e| context(path, e))?.is_dir() {
        return Ok(());
    }
    drop(handle);
    for entry in std::fs::read_dir(path).map_err(|e| context(path, e))? {
        let entry = entry.map_err(|e| context(path, e))?;
        let kind = entry.file_type().map_err(|e| context(&entry.path(), e))?;
        if kind.is_dir() || kind.is_file() {
            give_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// `fchown`/`fchmod` of one open file, when it differs; 1 when changed.
fn share_one(file: &File, gid: u32, mode: u32) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.gid() == gid && meta.mode() & 0o7777 == mode {
        return Ok(0);
    }
    if meta.gid() != gid {
        std::os::unix::fs::fchown(file, None, Some(gid))?;
    }
    // After the chown, which clears the set-group-ID bit of a directory on some filesystems.
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(1)
}

/// Opens `path` read-only without following a link in its last component; `O_NONBLOCK` so
/// that a FIFO planted there cannot hang the start.
fn open_no_follow(path: &Path, flags: i32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(
            libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY | flags,
        )
        .open(path)
}

fn gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ELOOP)
}

/// The error with the path in its text; the kind (`PermissionDenied` for `EPERM`) stays.
fn context(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// A directory the daemon will not use.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot inspect directory {}: {source}", .dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a directory", .0.display())]
    NotDir(PathBuf),
    #[error(
        "refusing directory {dir}: it is owned by uid {owner} with mode {mode:04o}, but the daemon \
         (uid {me}) uses only directories owned by itself or root that group and others cannot \
         write to (anyone who can write there can plant links that redirect the daemon's \
         writes); fix it with `chown {me} {dir} && chmod go-w {dir}` after checking its \
         contents, or configure another directory",
        dir = .dir.display()
    )]
    Unsafe {
        dir: PathBuf,
        owner: u32,
        mode: u32,
        me: u32,
    },
}

/// Checks that `dir` is a directory owned by the daemon's user (or root) and not writable by
/// group or others. `dir` itself may be a symlink to such a directory (the configured path is
/// the operator's choice); what it points to is checked.
pub fn check_dir(dir: &Path) -> Result<(), DirError> {
    let meta = std::fs::metadata(dir).map_err(|source| DirError::Io {
        dir: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(DirError::NotDir(dir.to_owned()));
    }
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if (meta.uid() != me && meta.uid() != 0) || mode & 0o022 != 0 {
        return Err(DirError::Unsafe {
            dir: dir.to_owned(),
            owner: meta.uid(),
            mode,
            me,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_is_never_opened_and_its_target_is_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep me").expect("write");
        let link = dir.path().join("index");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = open_read(&link).expect_err("a link is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(create_new(&link, FILE_MODE).is_err());
        let err = options(FILE_MODE)
            .write(true)
            .truncate(true)
            .open(&link)
            .expect_err("a link is refused");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(std::fs::read(&target).expect("read"), b"keep me");
    }

    #[test]
    fn new_files_get_their_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let path = dir.path().join("state");
        let written = write_atomic(&path, b"x", FILE_MODE);
        let sub = dir.path().join("a/b");
        let made = create_dir_all(&sub);
        let single = dir.path().join("c");
        let single_made = create_dir(&single);
        // And a umask that would leave a new directory open to others.
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let open = dir.path().join("d");
        let open_made = create_dir(&open);
        nix::sys::stat::umask(old);
        written.expect("write");
        made.expect("mkdir");
        single_made.expect("mkdir");
        open_made.expect("mkdir");
        assert_eq!(
            create_dir(&single).expect_err("exists").kind(),
            io::ErrorKind::AlreadyExists
        );
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o777;
        assert_eq!(mode(&path), 0o640);
        assert_eq!(mode(&sub), 0o750);
        assert_eq!(mode(&dir.path().join("a")), 0o750);
        assert_eq!(mode(&single), 0o750);
        assert_eq!(mode(&open), 0o750);
        // A leftover link in place of the temporary file is removed, not followed.
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("state.tmp")).expect("symlink");
        write_atomic(&path, b"y", FILE_MODE).expect("write");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        assert_eq!(std::fs::read(&path).expect("read"), b"y");
    }

    #[test]
    fn a_shared_tree_is_group_readable_and_links_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        std::fs::create_dir_all(chain.join("tlog/tile")).expect("mkdir");
        std::fs::set_permissions(&chain, Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(chain.join("segment"), b"x").expect("write");
        std::fs::write(chain.join("tlog/tile/0"), b"x").expect("write");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"x").expect("write");
        std::fs::set_permissions(&outside, Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::symlink(&outside, chain.join("planted")).expect("symlink");
        // Root may hand files to any group; anyone else shares with their own group here.
        let gid = if nix::unistd::geteuid().is_root() {
            65534
        } else {
            nix::unistd::getegid().as_raw()
        };
        let changed = share_with_group(&chain, gid, Depth::Tree).expect("share");
        assert_eq!(changed, 5, "3 directories and 2 files");
        let stat = |p: &Path| {
            let meta = std::fs::symlink_metadata(p).expect("stat");
            (meta.gid(), meta.mode() & 0o7777)
        };
        assert_eq!(stat(&chain), (gid, 0o2750));
        assert_eq!(stat(&chain.join("tlog/tile")), (gid, 0o2750));
        assert_eq!(stat(&chain.join("segment")), (gid, 0o640));
        assert_eq!(stat(&chain.join("tlog/tile/0")), (gid, 0o640));
        assert_eq!(stat(&outside).1, 0o600, "the link's target is untouched");
        // Done once: a second start does not walk the tree again.
        assert_eq!(
            share_with_group(&chain, gid, Depth::Tree).expect("share"),
            0
        );
        // What is made later inherits the group and keeps the set-group-ID bit.
        let new = chain.join("tlog/new");
        create_dir(&new).expect("mkdir");
        assert_eq!(stat(&new), (gid, 0o2750));
        // Entries only: the snapshots themselves are not entered.
        let snapshots = dir.path().join(".snapshots");
        std::fs::create_dir_all(snapshots.join("s1/chain")).expect("mkdir");
        share_with_group(&snapshots, gid, Depth::Entries).expect("share");
        assert_eq!(stat(&snapshots.join("s1")), (gid, 0o2750));
        assert_ne!(stat(&snapshots.join("s1/chain")).1, 0o2750);
    }

    #[test]
    fn what_root_makes_in_the_service_users_directory_is_that_users() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to make files for another user");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        create_dir(&chain).expect("mkdir");
        let owned = |p: &Path| {
            let meta = std::fs::symlink_metadata(p).expect("stat");
            (meta.uid(), meta.gid())
        };
        assert_eq!(owned(&chain), (0, 0), "root's own directory: root's");
        std::os::unix::fs::chown(&chain, Some(65534), Some(65533)).expect("chown");
        create_new(&chain.join("segment"), FILE_MODE).expect("create");
        write_atomic(&chain.join("index"), b"x", FILE_MODE).expect("write");
        create_dir(&chain.join("tlog")).expect("mkdir");
        for made in ["segment", "index", "tlog"] {
            assert_eq!(owned(&chain.join(made)), (65534, 65533), "{made}");
        }
    }

    #[test]
    fn a_directory_others_can_write_to_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_dir(dir.path()).expect("a private temp dir is fine");
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o777)).expect("chmod");
        let err = check_dir(dir.path()).expect_err("0777 is refused");
        let text = err.to_string();
        assert!(
            text.contains("mode 0777") && text.contains("chmod go-w"),
            "{text}"
        );
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o750)).expect("chmod");
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(dir.path(), Some(nix::unistd::Uid::from_raw(65534)), None)
                .expect("chown");
            let err = check_dir(dir.path()).expect_err("another owner is refused");
            assert!(err.to_string().contains("uid 65534"), "{err}");
        }
    }
}
