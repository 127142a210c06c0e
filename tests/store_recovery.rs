//! The store on its own (no bus): recovery rules, rotation, group commit and the library API.

use opdbus_blockchain::chain::block::Caller;
use opdbus_blockchain::chain::error::ChainError;
use opdbus_blockchain::chain::segment;
use opdbus_blockchain::chain::store::{self, StoreOptions};
use opdbus_blockchain::chain::verify::verify_dir;
use opdbus_blockchain::service::{ChainOptions, ServiceError, StreamingBlockchain};
use opdbus_blockchain::{OptimizedBlockchain, PluginFootprint};
use std::path::{Path, PathBuf};

fn footprints(n: usize, tag: &str) -> Vec<(PluginFootprint, Caller)> {
    (0..n)
        .map(|i| {
            (
                PluginFootprint::new("network", "create", serde_json::json!({"tag": tag, "i": i})),
                Caller::this_process(),
            )
        })
        .collect()
}

/// A chain of 1 + `blocks` blocks in `dir`, closed again.
fn make_chain(dir: &Path, blocks: usize, options: StoreOptions) {
    let (mut writer, _, _) = store::open(dir, options).expect("open");
    for chunk in footprints(blocks, "base").chunks(10) {
        writer.append(chunk).expect("append");
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    segment::list(dir)
        .expect("list")
        .pop()
        .expect("a segment")
        .1
}

/// Where the records of a segment end: free space (zeros) may follow them.
fn data_end(path: &Path) -> u64 {
    segment::trailing_zeros_start(&std::fs::read(path).expect("read")) as u64
}

/// Writes `bytes` right after the last record, where the writer's next record goes: into the
/// free space the segment was extended by, or past the end of the file.
fn write_after_records(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.write_all_at(bytes, data_end(path)))
        .expect("write after the records");
}

#[test]
fn reopening_keeps_the_head_and_rebuilds_a_missing_or_bad_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    make_chain(&chain, 50, StoreOptions::default());
    let (_, reader, recovery) = store::open(&chain, StoreOptions::default()).expect("reopen");
    let head = reader.head();
    assert_eq!(head.0, 50);
    assert!(!recovery.index_rebuilt, "a good index is reused");
    assert_eq!(recovery.blocks_scanned, 0);
    drop(reader);

    for damage in ["delete", "garbage", "truncate"] {
        let index = chain.join("index");
        match damage {
            "delete" => std::fs::remove_file(&index).expect("rm"),
            "garbage" => {
                let mut bytes = std::fs::read(&index).expect("read");
                let n = bytes.len();
                bytes[n - 30] ^= 0xff; // the last entry's offset field
                std::fs::write(&index, bytes).expect("write");
            }
            _ => {
                let len = std::fs::metadata(&index).expect("stat").len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&index)
                    .expect("open")
                    .set_len(len - 100)
                    .expect("truncate");
            }
        }
        let (_, reader, recovery) = store::open(&chain, StoreOptions::default()).expect("reopen");
        assert_eq!(reader.head(), head, "after {damage}");
        assert!(
            recovery.blocks_scanned > 0,
            "after {damage} the segments are scanned"
        );
        let block = reader.block_at(25).expect("read").expect("exists");
        assert_eq!(
            reader
                .block_by_hash(&block.hash)
                .expect("read")
                .map(|b| b.height),
            Some(25)
        );
    }
}

#[test]
fn torn_and_zero_filled_tails_are_cut_and_writing_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    make_chain(&chain, 20, StoreOptions::default());
    let (_, reader, _) = store::open(&chain, StoreOptions::default()).expect("open");
    let head = reader.head();
    drop(reader);
    // A record that never finished: the first 30 bytes of a real one, then zeros (a page that
    // never reached the disk); then a plain zero-filled region, which is free space.
    let mut record = Vec::new();
    let block = opdbus_blockchain::Block::new(
        21,
        1,
        head.1,
        Caller::default(),
        "p".into(),
        "o".into(),
        "{}".into(),
    );
    segment::encode_record(&block, &mut record);
    for tail in [
        record[..30].to_vec(),
        {
            let mut r = record.clone();
            r[40..].fill(0);
            r
        },
        vec![0u8; 4096],
    ] {
        let segment = last_segment(&chain);
        let before = data_end(&segment);
        write_after_records(&segment, &tail);
        let size = std::fs::metadata(&segment).expect("stat").len();
        let (mut writer, reader, recovery) =
            store::open(&chain, StoreOptions::default()).expect("a torn tail is not an error");
        if tail.iter().all(|&b| b == 0) {
            assert_eq!(recovery.torn_bytes_cut, 0, "zeros are free space");
            assert_eq!(std::fs::metadata(&segment).expect("stat").len(), size);
        } else {
            // The torn record and the free space after it.
            assert_eq!(recovery.torn_bytes_cut, size - before);
            assert_eq!(
                std::fs::metadata(&segment).expect("stat").len(),
                before,
                "the tail was cut"
            );
        }
        assert_eq!(data_end(&segment), before);
        assert_eq!(reader.head(), head);
        let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
        assert!(report.ok(), "{}", report.summary());
        drop((writer.append(&[]).ok(), reader));
        drop(writer);
    }
    let (mut writer, reader, _) = store::open(&chain, StoreOptions::default()).expect("open");
    writer
        .append(&footprints(3, "after"))
        .expect("writing continues");
    assert_eq!(reader.head().0, head.0 + 3);
}

#[test]
fn a_damaged_last_record_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    make_chain(&chain, 20, StoreOptions::default());
    let segment = last_segment(&chain);
    let mut bytes = std::fs::read(&segment).expect("read");
    let n = segment::trailing_zeros_start(&bytes);
    bytes[n - 50] ^= 0x04; // inside the last block's encoding
    std::fs::write(&segment, &bytes).expect("write");
    std::fs::remove_file(chain.join("index")).expect("rm index");
    match store::open(&chain, StoreOptions::default()) {
        Err(ChainError::Corrupted { height, .. }) => assert_eq!(height, 20),
        Err(other) => panic!("expected corruption at 20, got {other}"),
        Ok(_) => panic!("a damaged acknowledged block must not be accepted"),
    }
    assert_eq!(
        std::fs::read(&segment).expect("read"),
        bytes,
        "nothing may be cut"
    );
}

#[test]
fn damage_in_the_middle_is_named_by_verify_and_by_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    make_chain(&chain, 30, StoreOptions::default());
    let (_, reader, _) = store::open(&chain, StoreOptions::default()).expect("open");
    let target = reader.block_at(12).expect("read").expect("exists");
    drop(reader);
    let segment = last_segment(&chain);
    let mut bytes = std::fs::read(&segment).expect("read");
    let at = bytes
        .windows(target.data.len())
        .position(|w| w == target.data.as_bytes())
        .expect("found");
    bytes[at + 2] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("write");

    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert_eq!(
        report.first_bad.as_ref().map(|(h, _)| *h),
        Some(12),
        "{}",
        report.summary()
    );
    assert_eq!(report.blocks_checked, 12);
    // With its index the daemon starts (it checks the tail), and reading the block fails loudly.
    let (_, reader, _) = store::open(&chain, StoreOptions::default()).expect("open with index");
    match reader.block_at(12) {
        Err(ChainError::Corrupted { height: 12, .. }) => {}
        other => panic!("expected corruption at 12, got {other:?}"),
    }
    drop(reader);
    // Without an index the full scan refuses to start and names the height.
    std::fs::remove_file(chain.join("index")).expect("rm index");
    assert!(matches!(
        store::open(&chain, StoreOptions::default()),
        Err(ChainError::Corrupted { height: 12, .. })
    ));
}

#[test]
fn segments_rotate_and_a_missing_segment_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let small = StoreOptions {
        segment_bytes: 64 * 1024,
    };
    make_chain(&chain, 2000, small.clone());
    let segments = segment::list(&chain).expect("list");
    assert!(
        segments.len() >= 3,
        "expected several segments, got {}",
        segments.len()
    );
    let (_, reader, _) = store::open(&chain, small.clone()).expect("reopen");
    assert_eq!(reader.head().0, 2000);
    for height in [0, 1, 999, 1000, 2000] {
        assert_eq!(
            reader.block_at(height).expect("read").map(|b| b.height),
            Some(height)
        );
    }
    drop(reader);
    // A crash while starting a segment leaves an empty file; it is removed on open.
    let next = chain.join(segment::file_name(2001));
    std::fs::write(&next, b"").expect("create");
    let (mut writer, reader, _) = store::open(&chain, small.clone()).expect("open");
    assert!(!next.exists() || std::fs::metadata(&next).expect("stat").len() > 0);
    writer.append(&footprints(1, "x")).expect("append");
    assert_eq!(reader.head().0, 2001);
    drop((writer, reader));

    let (first_of_second, middle) = segments[1].clone();
    std::fs::remove_file(&middle).expect("rm");
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert_eq!(
        report.first_bad.as_ref().map(|(h, _)| *h),
        Some(first_of_second),
        "{}",
        report.summary()
    );
    assert!(report.summary().contains("missing"), "{}", report.summary());
}

#[test]
fn verify_never_writes_and_works_on_a_read_only_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    make_chain(&chain, 10, StoreOptions::default());
    std::fs::remove_file(chain.join("index")).expect("rm index");
    std::fs::remove_file(chain.join("lock")).expect("rm lock");
    // A torn record: the first 100 bytes of the genesis record after the last one.
    let newest = last_segment(&chain);
    let genesis = std::fs::read(segment::list(&chain).expect("list")[0].1.clone()).expect("read");
    let end = data_end(&newest);
    write_after_records(
        &newest,
        &genesis[segment::HEADER_LEN..segment::HEADER_LEN + 100],
    );
    let before: Vec<_> = list_files(&chain);
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(report.ok());
    assert_eq!(
        report.torn_tail_bytes,
        std::fs::metadata(&newest).expect("stat").len() - end
    );
    assert!(report.torn_tail_bytes >= 100);
    assert!(store::open_read_only(&chain)
        .expect("read-only open")
        .block_at(10)
        .expect("read")
        .is_some());
    assert_eq!(
        list_files(&chain),
        before,
        "verify and read-only open must not touch the directory"
    );
}

fn list_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| {
            let path = e.expect("entry").path();
            (
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
                std::fs::read(&path).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let _first = store::open(&chain, StoreOptions::default()).expect("open");
    assert!(matches!(
        store::open(&chain, StoreOptions::default()),
        Err(ChainError::InUse(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footprints_queued_during_a_sync_commit_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = StreamingBlockchain::new(dir.path().join("chain"))
        .await
        .expect("open");
    // Hold the writer, queue 16 footprints, release: one batch, one fdatasync.
    let (_, guard) = chain.pause_writer().await.expect("pause");
    let (batches_before, _) = chain.commit_counts();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let chain = chain.clone();
            tokio::spawn(async move {
                chain
                    .add_footprint(PluginFootprint::new("p", "o", serde_json::json!({"i": i})))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        chain.head().0,
        0,
        "nothing is durable while the writer is paused"
    );
    drop(guard);
    for task in tasks {
        task.await.expect("task").expect("acked");
    }
    let (batches_after, blocks) = chain.commit_counts();
    assert_eq!(blocks, 16);
    assert_eq!(
        batches_after - batches_before,
        1,
        "16 queued footprints must share one fdatasync"
    );
    assert_eq!(chain.head().0, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_footprint_receiver_commits_everything_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = OptimizedBlockchain::new(dir.path().join("chain"), dir.path().join("cache"))
        .await
        .expect("open");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let receiver = {
        let chain = chain.clone();
        tokio::spawn(async move { chain.start_footprint_receiver(rx).await })
    };
    for i in 0..10_000 {
        tx.send(PluginFootprint::new(
            "state",
            "apply",
            serde_json::json!({"i": i}),
        ))
        .expect("send");
    }
    tx.send(PluginFootprint::new("", "refused", serde_json::json!({})))
        .expect("send");
    drop(tx);
    receiver.await.expect("receiver");
    assert_eq!(
        chain.head().0,
        10_000,
        "every valid footprint is durable when the receiver returns"
    );
    let report = chain.verify().await.expect("verify");
    assert!(
        report.ok() && report.blocks_checked == 10_001,
        "{}",
        report.summary()
    );
    let block = chain
        .get_block_by_height(10_000)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(block.data, r#"{"i":9999}"#);
    assert_eq!(
        chain
            .get_block(&block.hash_hex())
            .await
            .expect("read")
            .map(|b| b.height),
        Some(10_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_refuses_invalid_footprints_before_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = ChainOptions::new(dir.path().join("chain"));
    options.max_data_bytes = 1024;
    let chain = StreamingBlockchain::open(options).await.expect("open");
    let err = chain
        .add_footprint(PluginFootprint::new(
            "p",
            "o",
            serde_json::json!("x".repeat(2000)),
        ))
        .await
        .expect_err("too large");
    assert!(matches!(err, ServiceError::InvalidFootprint(_)), "{err}");
    assert_eq!(chain.head().0, 0);
}

/// A full filesystem refuses the write cleanly; once space is back, writing resumes.
#[test]
fn root_full_disk_is_a_clean_refusal_and_writing_resumes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP root_full_disk_is_a_clean_refusal_and_writing_resumes: needs root to mount a tmpfs");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).expect("mkdir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&mount)
        .status()
        .expect("mount");
    assert!(status.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let chain = mount.join("chain");
    let (mut writer, reader, _) = store::open(&chain, StoreOptions::default()).expect("open");
    let filler = mount.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let head = reader.head();
    let big: Vec<_> = (0..50)
        .map(|i| {
            (
                PluginFootprint::new(
                    "p",
                    "o",
                    serde_json::json!({"i": i, "pad": "y".repeat(4000)}),
                ),
                Caller::this_process(),
            )
        })
        .collect();
    let err = writer.append(&big).expect_err("the disk is full");
    assert!(matches!(err, ChainError::NoSpace(_)), "{err}");
    assert!(err.to_string().contains("no space"), "{err}");
    assert_eq!(
        reader.head(),
        head,
        "nothing of the refused batch is visible"
    );
    std::fs::remove_file(&filler).expect("free space");
    writer
        .append(&big)
        .expect("writing resumes once space is back");
    assert_eq!(reader.head().0, head.0 + 50);
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.torn_tail_bytes == 0,
        "{}",
        report.summary()
    );
}

/// A batch through the library: consecutive heights on success; a batch with one bad footprint
/// is refused whole, naming it, and leaves the chain as it was; empty and oversized batches are
/// refused; the batch receiver skips a bad batch whole and commits the good ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_batches_are_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = StreamingBlockchain::open(ChainOptions::new(dir.path().join("chain")))
        .await
        .expect("open");
    let batch = |n: usize, tag: &str| -> Vec<PluginFootprint> {
        footprints(n, tag).into_iter().map(|(f, _)| f).collect()
    };
    let blocks = chain
        .append_batch(batch(5, "one"), Caller::this_process())
        .await
        .expect("a good batch");
    let heights: Vec<u64> = blocks.iter().map(|b| b.height).collect();
    assert_eq!(heights, vec![1, 2, 3, 4, 5]);
    for pair in blocks.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "chained in order");
    }
    assert_eq!(chain.head().0, 5);

    let mut bad = batch(4, "two");
    bad[2] = PluginFootprint::new("net\u{7}work", "create", serde_json::json!({}));
    let err = chain
        .append_batch(bad, Caller::this_process())
        .await
        .expect_err("one bad footprint refuses the batch");
    assert!(matches!(err, ServiceError::InvalidBatch(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("footprint 2 of 4 (counting from 0):"),
        "{err}"
    );
    assert_eq!(
        chain.head().0,
        5,
        "nothing of the refused batch was written"
    );

    let err = chain
        .append_batch(Vec::new(), Caller::this_process())
        .await
        .expect_err("empty");
    assert!(err.to_string().contains("no footprint"), "{err}");
    let err = chain
        .append_batch(batch(1001, "big"), Caller::this_process())
        .await
        .expect_err("too many");
    assert!(err.to_string().contains("the limit is 1000"), "{err}");
    assert_eq!(chain.head().0, 5);

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(batch(3, "three")).expect("send");
    let mut bad = batch(3, "four");
    bad[1] = PluginFootprint::new("network", "", serde_json::json!({}));
    tx.send(bad).expect("send");
    tx.send(batch(2, "five")).expect("send");
    drop(tx);
    chain.start_batch_receiver(rx).await;
    assert_eq!(chain.head().0, 10, "the good batches, not the bad one");
    let report = verify_dir(&dir.path().join("chain"), None, &mut |_| {}).expect("verify");
    assert!(report.ok(), "{}", report.summary());
}
