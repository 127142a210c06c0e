//! Recovery and verification rules on real files: what start-up and `verify` (one scan) do
//! with damaged headers, interrupted creations, time running backwards, fields that break the
//! format, and segment sizes.

use super::block::{Block, Caller, ZERO_HASH};
use super::error::ChainError;
use super::io::{RealIo, SegmentFile, SegmentIo};
use super::scan::{self, RecordReader, GENESIS_OPERATION, GENESIS_PLUGIN};
use super::segment::{self, Parsed, HEADER_LEN, SECTOR};
use super::store::{self, StoreOptions};
use super::verify::verify_dir;
use crate::footprint::PluginFootprint;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn footprints(n: usize, pad: usize) -> Vec<(PluginFootprint, Caller)> {
    (0..n)
        .map(|i| {
            let data = serde_json::json!({"i": i, "pad": "x".repeat(pad)});
            (
                PluginFootprint::new("network", "create", data),
                Caller::this_process(),
            )
        })
        .collect()
}

fn small_segments() -> StoreOptions {
    StoreOptions {
        segment_bytes: 4 * 1024,
    }
}

/// A chain over several 4 KiB segments; returns its directory and the newest segment.
fn chain_over_segments() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let (mut writer, _, _) = store::open(&chain, small_segments()).expect("open");
    for _ in 0..6 {
        writer.append(&footprints(10, 100)).expect("append");
    }
    drop(writer);
    let newest = newest_segment(&chain);
    (dir, chain, newest)
}

fn newest_segment(chain: &Path) -> PathBuf {
    segment::list(chain)
        .expect("list")
        .pop()
        .expect("segment")
        .1
}

fn head_of(chain: &Path) -> u64 {
    store::open_read_only(chain).expect("read").head().0
}

#[test]
fn a_zeroed_header_before_valid_records_stops_start_up_and_verify_at_the_segment() {
    let (_dir, chain, newest) = chain_over_segments();
    let mut bytes = std::fs::read(&newest).expect("read");
    let records = bytes.len() - HEADER_LEN;
    assert!(records > 1000, "the newest segment holds records");
    bytes[..HEADER_LEN].fill(0);
    std::fs::write(&newest, &bytes).expect("write");
    let name = newest
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();

    // With and without the index: the index must not let the damage through either.
    for drop_index in [false, true] {
        if drop_index {
            let _ = std::fs::remove_file(chain.join("index"));
        }
        let err = store::open(&chain, small_segments())
            .err()
            .expect("start-up refuses");
        assert!(
            matches!(err, ChainError::Corrupted { .. }) && err.to_string().contains(&name),
            "{err}"
        );
        assert!(err.to_string().contains("complete record"), "{err}");
        assert_eq!(
            std::fs::read(&newest).expect("still there"),
            bytes,
            "nothing cut"
        );
    }
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    let (_, reason) = report.first_bad.as_ref().expect("verify names it");
    assert!(reason.contains(&name), "{}", report.summary());
    assert!(report.interrupted_segment.is_none());
}

#[test]
fn an_interrupted_creation_is_removed_at_start_and_reported_by_verify() {
    // What the new segment holds, given the header it was being created with.
    type Contents = fn(&[u8]) -> Vec<u8>;
    let cases: [(&str, Contents); 6] = [
        ("empty", |_| Vec::new()),
        ("20 bytes of its header", |header| header[..20].to_vec()),
        (
            "a whole header then nothing: not an interrupted creation",
            <[u8]>::to_vec,
        ),
        ("20 zero bytes", |_| vec![0; 20]),
        ("4096 zero bytes", |_| vec![0; 4096]),
        ("a zero header then an incomplete record", |_| {
            let mut bytes = vec![0; HEADER_LEN];
            let block = Block::new(
                1,
                1,
                ZERO_HASH,
                Caller::default(),
                "p".into(),
                "o".into(),
                "1".into(),
            );
            segment::encode_record(&block, &mut bytes);
            bytes.truncate(bytes.len() - 10);
            bytes
        }),
    ];
    for (what, make) in cases {
        let (_dir, chain, newest) = chain_over_segments();
        let head = head_of(&chain);
        let next = segment::file_name(head + 1);
        let header = std::fs::read(&newest).expect("read")[..HEADER_LEN].to_vec();
        let mut header = header;
        header[16..24].copy_from_slice(&(head + 1).to_le_bytes());
        let path = chain.join(&next);
        std::fs::write(&path, make(&header)).expect("write");
        let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
        assert!(report.ok(), "{what}: {}", report.summary());
        assert_eq!(report.head.map(|h| h.0), Some(head), "{what}");
        let (_, reader, _) = store::open(&chain, small_segments()).expect("start-up");
        assert_eq!(reader.head().0, head, "{what}");
        if what.starts_with("a whole header") {
            assert!(report.interrupted_segment.is_none(), "{what}");
            assert!(
                path.exists(),
                "{what}: a segment with a whole header is kept"
            );
        } else {
            assert_eq!(
                report.interrupted_segment.as_ref().map(|s| &s.0),
                Some(&path),
                "{what}"
            );
            assert!(report.summary().contains("interrupted"), "{what}");
            assert!(!path.exists(), "{what}: start-up removes it");
        }
    }
}

#[test]
fn an_empty_segment_after_a_gap_is_not_an_interrupted_creation() {
    let (_dir, chain, _) = chain_over_segments();
    let head = head_of(&chain);
    // Where segment head + 1 would have been removed, a zero-filled later one remains.
    let path = chain.join(segment::file_name(head + 50));
    std::fs::write(&path, [0u8; 100]).expect("write");
    let err = store::open(&chain, small_segments())
        .err()
        .expect("refused");
    assert!(matches!(err, ChainError::Corrupted { .. }), "{err}");
    assert!(path.exists());
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert_eq!(report.first_bad.as_ref().map(|b| b.0), Some(head + 1));
    assert!(report.interrupted_segment.is_none());
}

#[test]
fn a_damaged_header_of_an_empty_newest_segment_is_corruption() {
    let (_dir, chain, _) = chain_over_segments();
    let head = head_of(&chain);
    let path = chain.join(segment::file_name(head + 1));
    // Not a prefix of the expected header: damage, not a crash during creation.
    std::fs::write(&path, [0x55u8; HEADER_LEN]).expect("write");
    assert!(store::open(&chain, small_segments()).is_err());
    assert!(path.exists());
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert_eq!(report.first_bad.as_ref().map(|b| b.0), Some(head + 1));
}

/// Writes a one-segment chain of genesis and `blocks` (timestamp, plugin, data), each hash
/// computed as the writer would: the chain is consistent, only the rules can fail it.
fn write_chain(chain: &Path, blocks: &[(u64, &str, &str)]) {
    std::fs::create_dir_all(chain).expect("mkdir");
    let chain_id = [7u8; 16];
    let mut bytes = segment::encode_header(0, &chain_id).to_vec();
    let genesis = Block::new(
        0,
        1,
        ZERO_HASH,
        Caller::default(),
        GENESIS_PLUGIN.into(),
        GENESIS_OPERATION.into(),
        store::genesis_data(&chain_id, 1),
    );
    segment::encode_record(&genesis, &mut bytes);
    let mut prev = genesis.hash;
    for (i, (timestamp, plugin, data)) in blocks.iter().enumerate() {
        let block = Block::new(
            i as u64 + 1,
            *timestamp,
            prev,
            Caller::default(),
            (*plugin).into(),
            "op".into(),
            (*data).into(),
        );
        segment::encode_record(&block, &mut bytes);
        prev = block.hash;
    }
    std::fs::write(chain.join(segment::file_name(0)), bytes).expect("write");
}

#[test]
fn time_running_backwards_is_corruption_at_its_height() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    write_chain(
        &chain,
        &[
            (10, "p", "{}"),
            (10, "p", "{}"),
            (9, "p", "{}"),
            (20, "p", "{}"),
        ],
    );
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    let (height, reason) = report.first_bad.expect("found");
    assert_eq!(height, 3, "{reason}");
    assert!(reason.contains("earlier"), "{reason}");
    let err = store::open(&chain, StoreOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("corrupted at height 3"), "{err}");
}

#[test]
fn a_footprint_that_breaks_the_field_rules_is_corruption_at_its_height() {
    for (plugin, data) in [("p", "not json"), ("", "{}"), ("p", "{\"a\":1")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        write_chain(&chain, &[(10, "p", "{}"), (11, plugin, data)]);
        let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
        assert_eq!(
            report.first_bad.as_ref().map(|b| b.0),
            Some(2),
            "{plugin:?} {data:?}"
        );
        assert!(store::open(&chain, StoreOptions::default()).is_err());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    write_chain(&chain, &[(10, "p", "{}"), (11, "p", "[1,2]")]);
    assert!(verify_dir(&chain, None, &mut |_| {}).expect("verify").ok());
}

#[test]
fn segments_pass_their_size_by_at_most_one_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let options = StoreOptions {
        segment_bytes: 8 * 1024,
    };
    let (mut writer, reader, _) = store::open(&chain, options.clone()).expect("open");
    // One batch much larger than a segment, then one record larger than a segment.
    writer.append(&footprints(200, 300)).expect("append");
    writer.append(&footprints(1, 20_000)).expect("append");
    writer.append(&footprints(30, 300)).expect("append");
    let listed = segment::list(&chain).expect("list");
    assert!(listed.len() > 8, "{} segments", listed.len());
    for (i, (first, path)) in listed.iter().enumerate() {
        let size = std::fs::metadata(path).expect("stat").len();
        // The data ends before the free space the writer extended the newest segment by.
        let len = segment::trailing_zeros_start(&std::fs::read(path).expect("read")) as u64;
        if i + 1 < listed.len() {
            assert_eq!(size, len, "sealed {} is cut to its data", path.display());
        }
        let records = listed
            .iter()
            .find(|(f, _)| f > first)
            .map_or(reader.head().0 + 1, |(f, _)| *f)
            - first;
        assert!(
            len <= options.segment_bytes || records == 1,
            "{} is {len} bytes with {records} records",
            path.display()
        );
    }
    drop(writer);
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.torn_tail_bytes == 0,
        "{}",
        report.summary()
    );
    assert_eq!(report.blocks_checked, 232);
    let (_, reopened, recovery) = store::open(&chain, options).expect("reopen");
    assert_eq!(reopened.head().0, 231);
    assert!(!recovery.index_rebuilt);
}

/// Real files, but creating a segment fails while `fail_create` is set.
struct FailingCreate {
    fail_create: AtomicBool,
}

impl SegmentIo for FailingCreate {
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        RealIo.create(path)
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
        RealIo.open(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealIo.sync_dir(dir)
    }
}

#[test]
fn a_batch_that_cannot_start_its_next_segment_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let io = Arc::new(FailingCreate {
        fail_create: AtomicBool::new(false),
    });
    let (mut writer, reader, _) =
        store::open_with_io(&chain, small_segments(), io.clone()).expect("open");
    writer.append(&footprints(3, 100)).expect("append");
    let before: Vec<_> = segment::list(&chain).expect("list");
    let data_len =
        |path: &Path| segment::trailing_zeros_start(&std::fs::read(path).expect("read")) as u64;
    let newest_len = data_len(&before.last().expect("segment").1);
    let head = reader.head();
    io.fail_create.store(true, Ordering::SeqCst);
    // Part of this batch fits the active segment and is synced there before the failure.
    let err = writer.append(&footprints(40, 100)).expect_err("refused");
    assert!(matches!(err, ChainError::NoSpace(_)), "{err}");
    assert!(writer.latched().is_none());
    assert_eq!(reader.head(), head, "nothing of the batch is visible");
    assert_eq!(segment::list(&chain).expect("list"), before);
    let newest = &before.last().expect("segment").1;
    assert_eq!(
        data_len(newest),
        newest_len,
        "the synced part was taken back"
    );
    assert_eq!(
        std::fs::metadata(newest).expect("stat").len(),
        newest_len,
        "cut to the data, free space included"
    );
    io.fail_create.store(false, Ordering::SeqCst);
    let blocks = writer.append(&footprints(40, 100)).expect("append");
    assert_eq!(blocks[0].height, head.0 + 1);
    drop(writer);
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.blocks_checked == head.0 + 41,
        "{}",
        report.summary()
    );
}

/// Yields at most `step` bytes per read, so records straddle every buffer boundary.
struct Trickle<R>(R, usize);

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.1);
        self.0.read(&mut buf[..n])
    }
}

fn verdict(parsed: &Parsed) -> String {
    match parsed {
        Parsed::Record { block, len } => format!("record {} {len}", block.height),
        Parsed::Torn => "torn".into(),
        Parsed::Free => "free".into(),
        Parsed::Damaged(reason) => format!("damaged: {reason}"),
    }
}

#[test]
fn the_streaming_reader_judges_every_tail_as_the_whole_file_parser_does() {
    let block = Block::new(
        3,
        5,
        ZERO_HASH,
        Caller::default(),
        "p".into(),
        "o".into(),
        "{\"k\":1}".into(),
    );
    let mut record = Vec::new();
    segment::encode_record(&block, &mut record);
    let mut variants: Vec<Vec<u8>> = Vec::new();
    for cut in 0..=record.len() {
        variants.push(record[..cut].to_vec());
        let mut zeroed = record.clone();
        zeroed[cut..].fill(0);
        zeroed.extend_from_slice(&[0; 700]);
        variants.push(zeroed.clone());
        zeroed.push(1);
        variants.push(zeroed);
    }
    for at in 0..record.len() {
        let mut flipped = record.clone();
        flipped[at] ^= 0x40;
        variants.push(flipped);
    }
    for bytes in &variants {
        for offset in [HEADER_LEN as u64, SECTOR * 4 - (record.len() as u64 - 20)] {
            let whole = segment::parse_record(bytes, segment::trailing_zeros_start(bytes), offset);
            for step in [1, 7, 4096] {
                let mut reader = RecordReader::new(Trickle(&bytes[..], step), offset);
                let streamed = reader.next_record().expect("read");
                let expected = if bytes.is_empty() {
                    None
                } else {
                    Some(verdict(&whole))
                };
                assert_eq!(
                    streamed.as_ref().map(|(_, p)| verdict(p)),
                    expected,
                    "{} bytes at {offset}, step {step}",
                    bytes.len()
                );
            }
        }
    }
}

#[test]
fn scanning_a_huge_segment_holds_one_record_and_a_buffer() {
    let block = Block::new(
        1,
        5,
        ZERO_HASH,
        Caller::default(),
        "p".into(),
        "o".into(),
        "1".into(),
    );
    let mut record = Vec::new();
    segment::encode_record(&block, &mut record);
    // 200 MB of zeros after a record (free space), then the same with one non-zero byte at its
    // end (data after zeros: damage).
    for last in [0u8, 1] {
        let tail = std::io::repeat(0).take(200 << 20);
        let input = record
            .as_slice()
            .chain(tail)
            .chain(std::io::repeat(last).take(1));
        let mut records = RecordReader::new(input, HEADER_LEN as u64);
        let mut state = scan::ScanState {
            chain_id: [0; 16],
            next_height: 1,
            prev_hash: ZERO_HASH,
            prev_timestamp_ns: 0,
        };
        let end = scan::scan_segment(
            &mut records,
            "big",
            true,
            None,
            &mut state,
            &mut |_, _, _| {},
        );
        assert!(
            records.held_bytes() <= scan::READ_BUF + 4096,
            "held {} bytes",
            records.held_bytes()
        );
        match (last, end) {
            (0, Ok(scan::ScanEnd::Clean { end })) => {
                assert_eq!(end, (HEADER_LEN + record.len()) as u64);
            }
            (1, Err(ChainError::Corrupted { height: 2, .. })) => {}
            (_, other) => panic!("last byte {last}: {other:?}"),
        }
    }
}

#[test]
fn a_segment_replaced_by_a_symlink_is_not_read() {
    let (dir, chain, newest) = chain_over_segments();
    let elsewhere = dir.path().join("elsewhere.chain");
    std::fs::rename(&newest, &elsewhere).expect("move");
    std::os::unix::fs::symlink(&elsewhere, &newest).expect("symlink");
    let _ = std::fs::remove_file(chain.join("index"));
    let err = store::open(&chain, small_segments())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("opening"), "{err}");
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(!report.ok(), "{}", report.summary());
}

#[test]
fn a_committed_block_carries_the_encoding_its_hash_and_record_were_made_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut writer, reader, _) = store::open(dir.path(), StoreOptions::default()).expect("open");
    let blocks = writer.append(&footprints(3, 10)).expect("append");
    for block in &blocks {
        assert_eq!(&*block.encoding, &block.encode()[..]);
        assert_eq!(super::block::sha256(&block.encoding), block.hash);
        let read = reader.block_at(block.height).expect("read").expect("there");
        assert_eq!(&read, &*block.block);
        // The reader's own height -> hash map, which reads by height go through.
        assert_eq!(reader.hash_at(block.height), Some(block.hash));
    }
    assert_eq!(reader.hash_at(blocks[2].height + 1), None);
    // A reopen (index file trusted) knows the same hashes.
    drop((writer, reader));
    let (_writer, reader, recovery) =
        store::open(dir.path(), StoreOptions::default()).expect("reopen");
    assert!(!recovery.index_rebuilt);
    assert_eq!(reader.hash_at(blocks[1].height), Some(blocks[1].hash));
}

/// Each segment's size and where its data ends (after the last non-zero byte).
fn sizes_and_data_ends(chain: &Path) -> Vec<(u64, u64)> {
    segment::list(chain)
        .expect("list")
        .iter()
        .map(|(_, path)| {
            let bytes = std::fs::read(path).expect("read");
            (
                bytes.len() as u64,
                segment::trailing_zeros_start(&bytes) as u64,
            )
        })
        .collect()
}

/// A chain as the writer left it before segments were extended ahead (every file exactly its
/// records: reservation kept the size) opens without a cut or an index rebuild and goes on
/// with free space; and what the new writer leaves is still what older readers accept: sealed
/// segments exactly their records, the newest its records and then only zeros (which an older
/// start-up cuts as a torn tail, and this one opens again unchanged).
#[test]
fn a_chain_without_free_space_upgrades_and_the_new_layout_stays_readable_by_older_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let (mut writer, reader, _) = store::open(&chain, small_segments()).expect("open");
    for _ in 0..5 {
        writer.append(&footprints(10, 100)).expect("append");
    }
    let head = reader.head();
    drop((writer, reader));
    // Today's layout before this change: no free space anywhere.
    for (_, path) in segment::list(&chain).expect("list") {
        let bytes = std::fs::read(&path).expect("read");
        let end = segment::trailing_zeros_start(&bytes);
        std::fs::write(&path, &bytes[..end]).expect("cut to the records");
    }
    assert!(sizes_and_data_ends(&chain)
        .iter()
        .all(|(size, end)| size == end));

    let (mut writer, reader, recovery) = store::open(&chain, small_segments()).expect("upgrade");
    assert_eq!(recovery.torn_bytes_cut, 0);
    assert!(!recovery.index_rebuilt, "the index still matches");
    assert_eq!(reader.head(), head);
    for _ in 0..5 {
        writer.append(&footprints(10, 100)).expect("append");
    }
    let head = reader.head();
    drop((writer, reader));
    let layout = sizes_and_data_ends(&chain);
    let (newest, sealed) = layout.split_last().expect("segments");
    assert!(
        sealed.iter().all(|(size, end)| size == end),
        "sealed segments are exactly their records: {layout:?}"
    );
    assert!(
        newest.0 > newest.1,
        "the newest runs into free space: {layout:?}"
    );
    let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.torn_tail_bytes == 0,
        "{}",
        report.summary()
    );
    assert_eq!(report.head, Some(head));

    // Back: an older start-up cuts the zeros as a torn tail; this one opens that as it is.
    let newest_path = segment::list(&chain).expect("list").pop().expect("seg").1;
    let bytes = std::fs::read(&newest_path).expect("read");
    std::fs::write(&newest_path, &bytes[..newest.1 as usize]).expect("older cut");
    let (_, reader, recovery) = store::open(&chain, small_segments()).expect("reopen");
    assert_eq!(recovery.torn_bytes_cut, 0);
    assert_eq!(reader.head(), head);
}

/// `verify` of a directory a daemon is writing may meet a record half copied into free space
/// (zeros anywhere in it). It reads the newest segment again before calling that damage, and
/// hands every block to its caller once, in order; damage that stays is still reported.
#[test]
fn verify_reads_a_half_copied_newest_record_again_and_still_names_lasting_damage() {
    for single_segment in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        let options = if single_segment {
            StoreOptions::default()
        } else {
            small_segments()
        };
        let (mut writer, reader, _) = store::open(&chain, options).expect("open");
        for _ in 0..4 {
            writer.append(&footprints(10, 100)).expect("append");
        }
        let path = segment::list(&chain).expect("list").pop().expect("seg").1;
        let before = std::fs::read(&path).expect("read");
        let data_end = segment::trailing_zeros_start(&before);
        writer.append(&footprints(1, 100)).expect("append");
        let head = reader.head();
        drop((writer, reader));
        let after = std::fs::read(&path).expect("read");
        let record = after[data_end..segment::trailing_zeros_start(&after)].to_vec();
        assert_eq!(
            segment::list(&chain).expect("list").len() == 1,
            single_segment
        );
        let write_at = |bytes: &[u8]| {
            use std::os::unix::fs::FileExt;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.write_all_at(bytes, data_end as u64))
                .expect("write");
        };
        // Half copied: a hole in the body, the trailer begun.
        let mut half = record[..record.len() - 20].to_vec();
        half[30..60].fill(0);
        write_at(&vec![0; record.len()]);
        write_at(&half);
        let finish = {
            let (path, record) = (path.clone(), record.clone());
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                std::thread::sleep(crate::chain::verify::REREAD_AFTER / 10);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.write_all_at(&record, data_end as u64))
                    .expect("whole");
            })
        };
        // A writer holds the chain meanwhile (the daemon would).
        let lock = store::take_lock(&chain).expect("lock");
        let mut heights = Vec::new();
        let report = crate::chain::verify::verify_dir_each(&chain, None, &mut |_| {}, &mut |b| {
            heights.push(b.height)
        })
        .expect("verify");
        finish.join().expect("writer");
        assert!(report.ok(), "{}", report.summary());
        assert_eq!(report.head, Some(head));
        assert_eq!(report.blocks_checked, head.0 + 1);
        assert_eq!(heights, (0..=head.0).collect::<Vec<_>>(), "each block once");
        // The same bytes staying as they are: damage at the head's height, read again while
        // the writer holds the chain, at once without one.
        write_at(&half);
        let mut lock = Some(lock);
        for locked in [true, false] {
            if !locked {
                lock.take();
            }
            assert_eq!(store::writer_active(&chain), locked);
            let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
            assert_eq!(
                report.first_bad.as_ref().map(|b| b.0),
                Some(head.0),
                "locked {locked}: {}",
                report.summary()
            );
            assert_eq!(report.blocks_checked, head.0);
        }
    }
}
