//! Real-btrfs tests (root only, named `loop_*`): each builds loop-mounted images and skips
//! loudly when it cannot.

use super::loop_image::LoopBtrfs;
use super::*;
use std::fs;
use std::io::Write;

fn write(path: &Path, text: &str) {
    fs::write(path, text).expect("writing a test file");
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).expect("reading a test file")
}

/// A read-only snapshot `fs/.snapshots/<name>` of the subvolume `fs/data`.
fn readonly_snapshot(fs: &LoopBtrfs, name: &str) -> PathBuf {
    let snapshots = fs.path().join(".snapshots");
    fs::create_dir_all(&snapshots).expect("snapshot directory");
    let dest = snapshots.join(name);
    snapshot(&fs.path().join("data"), &dest, true).expect("read-only snapshot");
    dest
}

fn subvolume_with(fs: &LoopBtrfs, files: &[(&str, &str)]) -> PathBuf {
    let data = fs.path().join("data");
    create_subvolume(&data).expect("create subvolume");
    for (name, text) in files {
        write(&data.join(name), text);
    }
    data
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("listing a test directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn loop_subvolumes_are_created_and_recognised() {
    let Some(fs) = LoopBtrfs::new(256) else {
        return;
    };
    let data = fs.path().join("data");
    create_subvolume(&data).expect("create subvolume");
    assert!(is_btrfs(&data));
    assert!(is_subvolume(&data));
    assert!(
        is_subvolume(fs.path()),
        "the top-level subvolume is one too"
    );

    let plain = fs.path().join("plain");
    fs::create_dir(&plain).expect("plain directory");
    assert!(is_btrfs(&plain) && !is_subvolume(&plain));
    assert!(matches!(
        is_readonly(&plain),
        Err(BtrfsError::NotSubvolume { .. })
    ));
    assert!(matches!(
        create_subvolume(&data),
        Err(BtrfsError::AlreadyExists { .. })
    ));

    let elsewhere = tempfile::tempdir().expect("temporary directory");
    if !is_btrfs(elsewhere.path()) {
        let err = create_subvolume(&elsewhere.path().join("x")).expect_err("not on btrfs");
        assert!(matches!(err, BtrfsError::NotBtrfs { .. }), "{err}");
        assert!(!is_subvolume(elsewhere.path()));
    }

    delete_subvolume(&data).expect("delete subvolume");
    assert!(!data.exists());
}

#[test]
fn loop_readonly_snapshot_refuses_writes() {
    let Some(fs) = LoopBtrfs::new(256) else {
        return;
    };
    let data = subvolume_with(&fs, &[("a", "one")]);
    let snap = readonly_snapshot(&fs, "s1");
    assert!(is_subvolume(&snap));
    assert!(is_readonly(&snap).expect("read the ro property"));
    assert!(!is_readonly(&data).expect("read the ro property"));
    assert_eq!(read(&snap.join("a")), "one");

    let err = fs::write(snap.join("a"), "changed").expect_err("read-only snapshot");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = fs::File::create(snap.join("new")).expect_err("read-only snapshot");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // A writable snapshot, and the flag can be set and cleared.
    let rw = fs.path().join("rw");
    snapshot(&data, &rw, false).expect("writable snapshot");
    write(&rw.join("a"), "two");
    set_readonly(&rw, true).expect("set read-only");
    assert!(is_readonly(&rw).expect("read the ro property"));
    set_readonly(&rw, false).expect("clear read-only");
    write(&rw.join("a"), "three");
    assert_eq!(
        read(&data.join("a")),
        "one",
        "snapshots do not share later writes"
    );

    // Refusals that must not create anything.
    assert!(matches!(
        snapshot(&data, &snap, true),
        Err(BtrfsError::AlreadyExists { .. })
    ));
    let plain = fs.path().join("plain");
    fs::create_dir(&plain).expect("plain directory");
    let err = snapshot(&plain, &fs.path().join("p"), true).expect_err("not a subvolume");
    assert!(matches!(err, BtrfsError::NotSubvolume { .. }), "{err}");

    delete_subvolume(&snap).expect("a read-only snapshot can be deleted");
    assert!(!snap.exists());
}

#[test]
fn loop_full_and_incremental_send_receive_round_trip() {
    let (Some(source), Some(backup)) = (LoopBtrfs::new(256), LoopBtrfs::new(256)) else {
        return;
    };
    let data = subvolume_with(&source, &[("a", "one"), ("b", "bee")]);
    let s1 = readonly_snapshot(&source, "s1");
    let target = ReceiveTarget::Directory(backup.path().to_owned());

    let full = receive(send(&s1, None).expect("send"), &target).expect("full receive");
    let r1 = backup.path().join("s1");
    assert_eq!(
        full,
        Received {
            name: "s1".into(),
            path: Some(r1.clone())
        }
    );
    assert!(is_readonly(&r1).expect("received is a subvolume"));
    assert_eq!(
        (read(&r1.join("a")), read(&r1.join("b"))),
        ("one".into(), "bee".into())
    );

    write(&data.join("a"), "one, changed");
    fs::remove_file(data.join("b")).expect("remove b");
    fs::create_dir(data.join("sub")).expect("mkdir");
    write(&data.join("sub/c"), "sea");
    let s2 = readonly_snapshot(&source, "s2");
    receive(send(&s2, Some(&s1)).expect("send -p"), &target).expect("incremental receive");
    let r2 = backup.path().join("s2");
    assert!(is_readonly(&r2).expect("received is a subvolume"));
    assert_eq!(entries(&r2), ["a", "sub"]);
    assert_eq!(read(&r2.join("a")), "one, changed");
    assert_eq!(read(&r2.join("sub/c")), "sea");
    assert_eq!(read(&r1.join("a")), "one", "the parent copy is untouched");

    // Sending into the same place again is refused before anything runs.
    let err = receive(send(&s2, Some(&s1)).expect("send"), &target).expect_err("exists");
    assert!(matches!(err, BtrfsError::AlreadyExists { .. }), "{err}");
    assert!(is_readonly(&r2).expect("still there"));
}

#[test]
fn loop_receive_through_a_command_round_trips() {
    let (Some(source), Some(backup)) = (LoopBtrfs::new(256), LoopBtrfs::new(256)) else {
        return;
    };
    subvolume_with(&source, &[("a", "one")]);
    let s1 = readonly_snapshot(&source, "s1");
    let line = format!("btrfs receive '{}'", backup.path().display());
    let target = ReceiveTarget::command_line(&line).expect("command line");
    let received = receive(send(&s1, None).expect("send"), &target).expect("receive");
    assert_eq!(
        received,
        Received {
            name: "s1".into(),
            path: None
        }
    );
    assert_eq!(read(&backup.path().join("s1/a")), "one");

    let failing =
        ReceiveTarget::Command(vec!["sh".into(), "-c".into(), "echo no >&2; exit 3".into()]);
    let err = receive(send(&s1, None).expect("send"), &failing).expect_err("command fails");
    let BtrfsError::Transfer {
        failures, partial, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(failures[0].stderr, "no");
    assert_eq!(failures[0].status, "exit status: 3");
    assert_eq!(*partial, PartialReceive::Remote { name: "s1".into() });
}

#[test]
fn loop_receive_into_a_non_btrfs_directory_fails_and_leaves_nothing() {
    let Some(source) = LoopBtrfs::new(256) else {
        return;
    };
    subvolume_with(&source, &[("a", "one")]);
    let s1 = readonly_snapshot(&source, "s1");
    let plain = tempfile::tempdir().expect("temporary directory");
    if is_btrfs(plain.path()) {
        eprintln!("SKIP: the temporary directory is itself on btrfs");
        return;
    }
    let target = ReceiveTarget::Directory(plain.path().to_owned());
    let err = receive(send(&s1, None).expect("send"), &target).expect_err("not btrfs");
    assert!(
        matches!(&err, BtrfsError::NotBtrfs { path } if path == plain.path()),
        "{err}"
    );
    assert!(err.to_string().contains("not on a btrfs filesystem"));
    assert!(entries(plain.path()).is_empty());

    // Sending something that is not a read-only snapshot is refused up front too.
    let err = send(&source.path().join("data"), None).expect_err("writable");
    assert!(matches!(err, BtrfsError::NotReadOnly { .. }), "{err}");
}

#[test]
fn loop_incremental_without_its_parent_on_the_target_fails_cleanly() {
    let (Some(source), Some(backup)) = (LoopBtrfs::new(256), LoopBtrfs::new(256)) else {
        return;
    };
    subvolume_with(&source, &[("a", "one")]);
    let s1 = readonly_snapshot(&source, "s1");
    let s2 = readonly_snapshot(&source, "s2");
    let target = ReceiveTarget::Directory(backup.path().to_owned());
    let err = receive(send(&s2, Some(&s1)).expect("send"), &target).expect_err("no parent");
    let BtrfsError::Transfer { failures, .. } = &err else {
        panic!("{err}")
    };
    assert!(failures[0].command.starts_with("btrfs receive"), "{err}");
    assert!(
        !failures[0].stderr.is_empty(),
        "the receiver's stderr is reported: {err}"
    );
    assert!(!backup.path().join("s2").exists());
}

/// Writes the full send stream of `snapshot` to `file`.
fn save_stream(snapshot: &Path, file: &Path) {
    let mut stream = send(snapshot, None).expect("send");
    let mut out = fs::File::create(file).expect("stream file");
    std::io::copy(&mut stream.take_stdout().expect("stdout"), &mut out).expect("copy");
    stream.finish().expect("send finishes");
}

#[test]
fn loop_a_stream_cut_short_leaves_no_partial_subvolume() {
    let (Some(source), Some(backup)) = (LoopBtrfs::new(256), LoopBtrfs::new(256)) else {
        return;
    };
    let data = subvolume_with(&source, &[("a", "one")]);
    let mut big = fs::File::create(data.join("big")).expect("big file");
    for i in 0..20_000u32 {
        writeln!(
            big,
            "line {i} of a file that spans many send-stream write commands"
        )
        .expect("write big file");
    }
    drop(big);
    let s1 = readonly_snapshot(&source, "s1");
    let scratch = tempfile::tempdir().expect("temporary directory");
    let stream = scratch.path().join("s1.stream");
    save_stream(&s1, &stream);
    let half = (fs::metadata(&stream).expect("stream size").len() / 2).to_string();
    let stream = stream.to_str().expect("temporary paths are UTF-8");
    let target = ReceiveTarget::Directory(backup.path().to_owned());

    // The sender exits 0 but stops half-way.
    let cut = SendStream::fake(&["head", "-c", &half, stream], &s1).expect("fake sender");
    let err = receive(cut, &target).expect_err("truncated stream");
    let BtrfsError::Transfer { partial, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        matches!(
            partial,
            PartialReceive::Deleted(_) | PartialReceive::Nothing
        ),
        "{err}"
    );
    assert!(!backup.path().join("s1").exists(), "{err}");

    // The whole stream arrives, but the sender reports failure: not counted as good either.
    let script = format!("cat '{stream}'; echo send broke >&2; exit 1");
    let failed = SendStream::fake(&["sh", "-c", &script], &s1).expect("fake sender");
    let err = receive(failed, &target).expect_err("sender failed");
    let BtrfsError::Transfer {
        failures, partial, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(failures.len(), 1, "{err}");
    assert_eq!(failures[0].stderr, "send broke");
    assert_eq!(
        *partial,
        PartialReceive::Deleted(backup.path().join("s1")),
        "{err}"
    );
    assert!(!backup.path().join("s1").exists());

    // And the real thing still works afterwards.
    receive(send(&s1, None).expect("send"), &target).expect("receive");
    assert_eq!(read(&backup.path().join("s1/a")), "one");
}

#[test]
fn loop_a_full_target_fails_and_leaves_no_partial_subvolume() {
    let (Some(source), Some(backup)) = (LoopBtrfs::new(512), LoopBtrfs::new(128)) else {
        return;
    };
    let data = subvolume_with(&source, &[("a", "one")]);
    // Incompressible and larger than the whole target filesystem.
    let mut big = fs::File::create(data.join("big")).expect("big file");
    let mut urandom = fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::copy(&mut std::io::Read::take(&mut urandom, 160 << 20), &mut big).expect("fill");
    drop(big);
    let s1 = readonly_snapshot(&source, "s1");
    let target = ReceiveTarget::Directory(backup.path().to_owned());
    let err = receive(send(&s1, None).expect("send"), &target).expect_err("target full");
    let BtrfsError::Transfer {
        failures, partial, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(failures[0].command.starts_with("btrfs receive"), "{err}");
    assert_eq!(
        *partial,
        PartialReceive::Deleted(backup.path().join("s1")),
        "{err}"
    );
    assert!(!backup.path().join("s1").exists());
    eprintln!("target full reported as: {err}");
}
