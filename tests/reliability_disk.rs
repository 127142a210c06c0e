//! Full disk: the real daemon on a 4 MiB ext4 loop filesystem starts, refuses footprints with
//! StorageFailure ("no space left") once the disk is full, leaves nothing partial, and takes
//! footprints again as soon as space is freed, without a restart. Needs root (mount).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct SmallFs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    /// A fresh ext4 filesystem of `mib` MiB on a loop device, mounted.
    fn new(mib: u64) -> SmallFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("fs.img");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(mib * 1024 * 1024).expect("size the image");
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .status()
            .expect("mkfs.ext4");
        assert!(status.success(), "mkfs.ext4");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mkdir");
        let status = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -o loop");
        SmallFs { mount, _dir: dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// Fills the filesystem with a file; returns its path.
fn fill(mount: &Path) -> PathBuf {
    let filler = mount.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    filler
}

fn height(bus: &Bus) -> u64 {
    let out = bus.busctl(&["get-property", BUS_NAME, OBJECT_PATH, BUS_NAME, "Height"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("t ")
        .parse()
        .expect("Height")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_daemon_on_a_full_4_mib_disk_refuses_cleanly_and_resumes_without_restart() {
    if !is_root() {
        eprintln!("SKIP root_daemon_on_a_full_4_mib_disk_refuses_cleanly_and_resumes_without_restart: needs root to mount a loop filesystem");
        return;
    }
    let fs = SmallFs::new(4);
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, &fs.mount.join("chain"), &fs.mount.join("cache"));
    let pid = daemon.pid();
    let connection = bus.connect().await;
    let pad = "d".repeat(3000);
    let (first, _) = add_footprint(
        &connection,
        "disk",
        "write",
        &format!(r#"{{"pad":"{pad}"}}"#),
    )
    .await
    .expect("the daemon works on a 4 MiB filesystem");
    let filler = fill(&fs.mount);

    // Space reserved ahead is used up first; then the disk is full.
    let mut last_ok = first;
    let mut refusal = None;
    for i in 0..2000 {
        let data = format!(r#"{{"i":{i},"pad":"{pad}"}}"#);
        match add_footprint(&connection, "disk", "write", &data).await {
            Ok((height, _)) => last_ok = height,
            Err(err) => {
                refusal = Some(err);
                break;
            }
        }
    }
    let err = refusal.expect("a full disk must refuse footprints");
    assert_eq!(
        error_name(&err),
        "org.opdbus.Blockchain.Error.StorageFailure",
        "{err}"
    );
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    // Nothing partial: the head is the last acknowledged block and the segment ends with it.
    assert_eq!(
        height(&bus),
        last_ok,
        "nothing of a refused footprint is visible"
    );
    let chain = fs.mount.join("chain");
    let (code, out, _) = cli(&["verify", "--chain-dir", chain.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("unacknowledged"),
        "a refusal leaves no partial record: {out}"
    );

    std::fs::remove_file(&filler).expect("free space");
    let (height_after, _) = add_footprint(&connection, "disk", "write", r#"{"space":"back"}"#)
        .await
        .expect("writing resumes once space is freed, without a restart");
    assert_eq!(height_after, last_ok + 1);
    assert_eq!(daemon.pid(), pid, "same daemon process");
    let (ok, verify, _) = bus.call("Verify", "", &[]);
    assert!(ok && verify.starts_with("bts true"), "{verify}");
    assert_eq!(daemon.stop().code(), Some(0));
}

/// The active segment is extended ahead with fallocate (mode 0): its size runs a chunk past the
/// newest record, the bytes there read as zeros, and an append writes into them without
/// changing the size. That zero run is free space: verify calls the chain intact with nothing
/// torn, readers see the same head, and a restart keeps it. A record torn inside it (a crash
/// mid-write) is cut back to the last complete record, and writing goes on from there.
#[test]
fn root_the_active_segment_is_extended_ahead_and_its_zeros_are_free_space_not_a_torn_tail() {
    use opdbus_blockchain::chain::block::Caller;
    use opdbus_blockchain::chain::segment;
    use opdbus_blockchain::chain::store::{self, StoreOptions, EXTEND_CHUNK};
    use opdbus_blockchain::chain::verify::verify_dir;
    use opdbus_blockchain::PluginFootprint;
    use std::os::unix::fs::{FileExt, MetadataExt};
    if !is_root() {
        eprintln!("SKIP root_the_active_segment_is_extended_ahead_and_its_zeros_are_free_space_not_a_torn_tail: needs root to mount a loop filesystem");
        return;
    }
    let fs = SmallFs::new(4);
    let chain = fs.mount.join("chain");
    let items = |from: usize| -> Vec<_> {
        (from..from + 10)
            .map(|i| {
                (
                    PluginFootprint::new("p", "o", serde_json::json!({"i": i})),
                    Caller::this_process(),
                )
            })
            .collect()
    };
    let (mut writer, reader, _) = store::open(&chain, StoreOptions::default()).expect("open");
    writer.append(&items(0)).expect("append");
    let path = segment::list(&chain)
        .expect("list")
        .pop()
        .expect("segment")
        .1;
    let bytes = std::fs::read(&path).expect("read");
    let data_end = segment::trailing_zeros_start(&bytes);
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(
        meta.len() % EXTEND_CHUNK,
        0,
        "the size is extended to a chunk boundary, not the data's end ({data_end})"
    );
    assert!(meta.len() > data_end as u64 && meta.blocks() * 512 >= meta.len());
    writer
        .append(&items(10))
        .expect("append into the free space");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        meta.len(),
        "an append inside the extended space leaves the size alone"
    );
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.torn_tail_bytes == 0,
        "{}",
        report.summary()
    );
    assert_eq!(report.blocks_checked, 21);
    let head = reader.head();
    assert_eq!(
        store::open_read_only(&chain).expect("readers").head(),
        head,
        "readers end at the last record"
    );
    drop((writer, reader));

    // A restart keeps the free space and writes into it.
    let (mut writer, reader, recovery) =
        store::open(&chain, StoreOptions::default()).expect("reopen");
    assert_eq!(recovery.torn_bytes_cut, 0, "free space is not a torn tail");
    assert_eq!(reader.head(), head);
    writer.append(&items(20)).expect("append after restart");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), meta.len());
    let head = reader.head();
    drop((writer, reader));

    // A crash mid-write: the first 60 bytes of a record (the genesis record's, whose length
    // field is valid) in the free space, zeros after them.
    let bytes = std::fs::read(&path).expect("read");
    let data_end = segment::trailing_zeros_start(&bytes);
    let first_record = &bytes[segment::HEADER_LEN..segment::HEADER_LEN + 60];
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(first_record, data_end as u64))
        .expect("write a torn record");
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(report.ok(), "{}", report.summary());
    assert!(report.torn_tail_bytes > 0, "{}", report.summary());
    assert_eq!(report.head.map(|h| h.0), Some(head.0));
    let (mut writer, reader, recovery) =
        store::open(&chain, StoreOptions::default()).expect("reopen after the crash");
    assert!(recovery.torn_bytes_cut >= 60, "{recovery:?}");
    assert_eq!(reader.head(), head, "no complete record was cut");
    writer.append(&items(30)).expect("append after the cut");
    drop((writer, reader));
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.torn_tail_bytes == 0,
        "{}",
        report.summary()
    );
    assert_eq!(report.blocks_checked, 41);
}

/// A real failed fdatasync: ext4 on a loop device whose backing file lives on a tmpfs that is
/// then filled, so the loop device cannot write back and the kernel fails the flush (ENOSPC,
/// then EIO). The store latches, the caller gets StorageFailure, and the daemon exits non-zero
/// by itself so that systemd (Restart=on-failure) restarts it; the restarted daemon recovers
/// every acknowledged block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_a_failed_fdatasync_latches_and_the_daemon_exits_non_zero() {
    if !is_root() {
        eprintln!("SKIP root_a_failed_fdatasync_latches_and_the_daemon_exits_non_zero: needs root to mount");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("backing");
    std::fs::create_dir(&backing).expect("mkdir");
    let run = |args: &[&str]| {
        let status = Command::new(args[0])
            .args(&args[1..])
            .status()
            .expect(args[0]);
        assert!(status.success(), "{args:?}");
    };
    let backing_str = backing.to_str().expect("utf-8");
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=12m",
        "tmpfs",
        backing_str,
    ]);
    struct Unmount(Vec<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for path in &self.0 {
                let _ = Command::new("umount").arg(path).status();
            }
        }
    }
    let mut unmount = Unmount(vec![backing.clone()]);
    let image = backing.join("fs.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .expect("sparse image");
    run(&[
        "mkfs.ext4",
        "-q",
        "-F",
        "-E",
        "lazy_itable_init=1,nodiscard",
        image.to_str().expect("utf-8"),
    ]);
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).expect("mkdir");
    run(&[
        "mount",
        "-o",
        "loop",
        image.to_str().expect("utf-8"),
        mount.to_str().expect("utf-8"),
    ]);
    unmount.0.insert(0, mount.clone());

    let bus = Bus::start();
    let chain = mount.join("chain");
    let mut daemon = Daemon::start(&bus, &chain, &mount.join("cache"));
    let connection = bus.connect().await;
    let (acked, acked_hash) = add_footprint(&connection, "eio", "write", r#"{"before":true}"#)
        .await
        .expect("works before the fault");
    // The backing store fills up: the loop device can no longer write back.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", backing.join("filler").display()))
        .stderr(std::process::Stdio::null())
        .status();
    let pad = "e".repeat(60_000);
    let mut failure = None;
    for i in 0..200 {
        match add_footprint(
            &connection,
            "eio",
            "write",
            &format!(r#"{{"i":{i},"pad":"{pad}"}}"#),
        )
        .await
        {
            Ok(_) => continue,
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    let err = failure.expect("the flush must fail once the backing store is full");
    assert_eq!(
        error_name(&err),
        "org.opdbus.Blockchain.Error.StorageFailure",
        "{err}"
    );
    assert!(err.to_string().contains("fdatasync"), "{err}");
    let status = daemon.wait_exit();
    // (Its log lives on the failing filesystem, so only the status is checked.)
    assert_eq!(
        status.code(),
        Some(1),
        "the daemon must exit 1, got {status}"
    );
    // Space for the backing store again; ext4 went read-only after the I/O error, so mount it
    // afresh (as after a reboot); a restart (what systemd does) recovers from disk.
    std::fs::remove_file(backing.join("filler")).expect("free the backing store");
    run(&["umount", mount.to_str().expect("utf-8")]);
    run(&[
        "mount",
        "-o",
        "loop",
        image.to_str().expect("utf-8"),
        mount.to_str().expect("utf-8"),
    ]);
    let daemon = Daemon::start(&bus, &chain, &mount.join("cache"));
    let connection = bus.connect().await;
    let block = get_block(&connection, &acked_hash)
        .await
        .expect("acked block kept");
    assert_eq!(block["height"], acked);
    let (ok, verify, _) = bus.call("Verify", "", &[]);
    assert!(ok && verify.starts_with("bts true"), "{verify}");
    drop(daemon);
}

/// A failed index write after the commit never fails a footprint: with segment space reserved
/// ahead and the disk then completely full, appends still succeed (the index cannot grow and is
/// rebuilt at the next open).
#[test]
fn root_a_full_disk_for_the_index_never_fails_a_committed_footprint() {
    use opdbus_blockchain::chain::block::Caller;
    use opdbus_blockchain::chain::store::{self, StoreOptions};
    use opdbus_blockchain::chain::verify::verify_dir;
    use opdbus_blockchain::PluginFootprint;
    if !is_root() {
        eprintln!("SKIP root_a_full_disk_for_the_index_never_fails_a_committed_footprint: needs root to mount a loop filesystem");
        return;
    }
    let fs = SmallFs::new(4);
    let chain = fs.mount.join("chain");
    let footprint = |i: usize| {
        [(
            PluginFootprint::new("p", "o", serde_json::json!({"i": i})),
            Caller::this_process(),
        )]
    };
    let (mut writer, reader, _) = store::open(&chain, StoreOptions::default()).expect("open");
    writer.append(&footprint(0)).expect("reserves space ahead");
    let filler = fill(&fs.mount);
    assert!(
        std::fs::write(fs.mount.join("probe"), vec![1u8; 8192]).is_err(),
        "the disk must be full"
    );
    // 300 index entries of 56 bytes need new index blocks; the chain has its reserved space.
    for i in 1..=300 {
        writer
            .append(&footprint(i))
            .unwrap_or_else(|e| panic!("footprint {i} failed on a full disk: {e}"));
    }
    assert_eq!(reader.head().0, 301);
    drop((writer, reader));
    std::fs::remove_file(&filler).expect("free space");
    let (_, reader, recovery) = store::open(&chain, StoreOptions::default()).expect("reopen");
    assert_eq!(reader.head().0, 301);
    assert!(
        recovery.blocks_scanned > 0,
        "the index was behind and the segments were scanned"
    );
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.blocks_checked == 302,
        "{}",
        report.summary()
    );
}
