//! Tamper evidence: any single changed, removed or inserted byte in a segment file, and any
//! removed, reordered or duplicated block, is reported by `verify` at the exact first bad
//! height. Removing the newest data (which leaves a chain that is valid on its own, or looks
//! like an unacknowledged torn write) is caught with the head known from outside
//! (`--expect-head HASH@HEIGHT`).

mod common;

use opdbus_blockchain::chain::block::{Caller, Hash};
use opdbus_blockchain::chain::segment::{self, HEADER_LEN};
use opdbus_blockchain::chain::store::{self, StoreOptions};
use opdbus_blockchain::chain::verify::{check_expected_head, verify_dir, VerifyReport};
use opdbus_blockchain::PluginFootprint;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One record of a segment file: its height and byte range.
#[derive(Debug, Clone)]
struct Span {
    height: u64,
    start: usize,
    end: usize,
}

struct Fixture {
    _dir: tempfile::TempDir,
    chain: PathBuf,
    /// Per segment file: (name, first height, bytes, records).
    segments: Vec<(String, u64, Vec<u8>, Vec<Span>)>,
    head: (u64, Hash),
}

/// A chain of 1 + 80 blocks over several segments, built once.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("chain");
        let options = StoreOptions {
            segment_bytes: 8 * 1024,
        };
        let (mut writer, reader, _) = store::open(&chain, options).expect("open");
        for i in 0..80 {
            let data = serde_json::json!({"i": i, "pad": "z".repeat(100 + i * 7)});
            writer
                .append(&[(
                    PluginFootprint::new("tamper", "write", data),
                    Caller::this_process(),
                )])
                .expect("append");
        }
        let head = reader.head();
        drop(writer);
        let mut segments = Vec::new();
        for (first, path) in segment::list(&chain).expect("list") {
            // The records only: the newest segment's free space (zeros the writer extended it
            // by) is tampered with in its own test.
            let mut bytes = std::fs::read(&path).expect("read");
            bytes.truncate(segment::trailing_zeros_start(&bytes));
            let mut spans = Vec::new();
            let mut at = HEADER_LEN;
            let mut height = first;
            while at < bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
                let end = at + segment::record_len(len);
                spans.push(Span {
                    height,
                    start: at,
                    end,
                });
                at = end;
                height += 1;
            }
            let name = path.file_name().expect("name").to_string_lossy().into();
            segments.push((name, first, bytes, spans));
        }
        assert!(segments.len() >= 3, "the fixture needs several segments");
        Fixture {
            _dir: dir,
            chain,
            segments,
            head,
        }
    })
}

/// A copy of the fixture's chain with segment `seg` replaced by `bytes`.
fn tampered_copy(seg: usize, bytes: &[u8]) -> tempfile::TempDir {
    let f = fixture();
    let copy = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    for (i, (name, _, original, _)) in f.segments.iter().enumerate() {
        let content = if i == seg { bytes } else { original };
        std::fs::write(copy.path().join(name), content).expect("write copy");
    }
    copy
}

fn verify_with_head(dir: &Path) -> VerifyReport {
    let f = fixture();
    let mut report = verify_dir(dir, None, &mut |_| {}).expect("verify runs");
    check_expected_head(dir, &mut report, &f.head.1, f.head.0);
    report
}

/// The height a byte at `offset` of segment `seg` belongs to (the header counts as the
/// segment's first height).
fn height_at(seg: usize, offset: usize) -> u64 {
    let (_, first, _, spans) = &fixture().segments[seg];
    spans
        .iter()
        .find(|s| s.start <= offset && offset < s.end)
        .map_or(*first, |s| s.height)
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Change { at: usize, xor: u8 },
    Remove { at: usize },
    Insert { at: usize, value: u8 },
}

fn check_byte_edit(seg: usize, edit: ByteEdit) -> Result<(), TestCaseError> {
    let f = fixture();
    let mut bytes = f.segments[seg].2.clone();
    let at = match edit {
        ByteEdit::Change { at, xor } => {
            bytes[at] ^= xor;
            at
        }
        ByteEdit::Remove { at } => {
            bytes.remove(at);
            at
        }
        ByteEdit::Insert { at, value } => {
            bytes.insert(at, value);
            at
        }
    };
    let expected = height_at(seg, at);
    let copy = tampered_copy(seg, &bytes);
    if seg == f.segments.len() - 1 && bytes.starts_with(&f.segments[seg].2) {
        // Inserting a copy of the newest segment's last byte right before it is the same as
        // appending it: bytes after the last record are an unacknowledged write, not tampering
        // with any block.
        let report = verify_with_head(copy.path());
        prop_assert!(
            report.ok() && report.torn_tail_bytes > 0,
            "{}",
            report.summary()
        );
        return Ok(());
    }
    let plain = verify_dir(copy.path(), None, &mut |_| {}).expect("verify runs");
    let last_record = seg == f.segments.len() - 1 && expected == f.head.0;
    match &plain.first_bad {
        Some((height, _)) => prop_assert_eq!(*height, expected, "{:?}: {}", edit, plain.summary()),
        // Only damage to the newest record can pass for an unacknowledged torn write; it is
        // then reported as such, and the head known from outside catches it.
        None => prop_assert!(
            last_record && plain.torn_tail_bytes > 0,
            "{:?} at height {} not detected: {}",
            edit,
            expected,
            plain.summary()
        ),
    }
    let with_head = verify_with_head(copy.path());
    prop_assert_eq!(
        with_head.first_bad.as_ref().map(|b| b.0),
        Some(expected),
        "{:?}: {}",
        edit,
        with_head.summary()
    );
    Ok(())
}

fn byte_edit() -> impl Strategy<Value = (usize, ByteEdit)> {
    let f = fixture();
    let lens: Vec<usize> = f.segments.iter().map(|s| s.2.len()).collect();
    (0..lens.len()).prop_flat_map(move |seg| {
        let len = lens[seg];
        let edit = prop_oneof![
            (0..len, 1..=255u8).prop_map(|(at, xor)| ByteEdit::Change { at, xor }),
            (0..len).prop_map(|at| ByteEdit::Remove { at }),
            (0..len, any::<u8>()).prop_map(|(at, value)| ByteEdit::Insert { at, value }),
        ];
        (Just(seg), edit)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_single_byte_change_removal_or_insertion_is_named_at_its_height((seg, edit) in byte_edit()) {
        check_byte_edit(seg, edit)?;
    }
}

/// Every byte of the newest segment (where a torn write is possible), with its lowest bit or
/// all its bits flipped.
#[test]
fn every_byte_of_the_newest_segment_changed_is_named_at_its_height() {
    let f = fixture();
    let mut tried = 0;
    for seg in [f.segments.len() - 1] {
        for at in 0..f.segments[seg].2.len() {
            for xor in [0x01, 0xff] {
                check_byte_edit(seg, ByteEdit::Change { at, xor })
                    .unwrap_or_else(|e| panic!("{e}"));
                tried += 1;
            }
        }
    }
    eprintln!("{tried} single-byte changes, all named at their height");
}

#[derive(Debug, Clone, Copy)]
enum BlockEdit {
    Remove,
    SwapWithNext,
    Duplicate,
}

#[test]
fn every_removed_reordered_or_duplicated_block_is_named_at_its_height() {
    let f = fixture();
    let mut tried = 0;
    for (seg, (_, _, original, spans)) in f.segments.iter().enumerate() {
        for (i, span) in spans.iter().enumerate() {
            for edit in [
                BlockEdit::Remove,
                BlockEdit::SwapWithNext,
                BlockEdit::Duplicate,
            ] {
                let record = &original[span.start..span.end];
                let mut bytes = original[..span.start].to_vec();
                let expected = match edit {
                    BlockEdit::Remove => {
                        bytes.extend_from_slice(&original[span.end..]);
                        span.height
                    }
                    BlockEdit::SwapWithNext => {
                        let Some(next) = spans.get(i + 1) else {
                            continue;
                        };
                        bytes.extend_from_slice(&original[next.start..next.end]);
                        bytes.extend_from_slice(record);
                        bytes.extend_from_slice(&original[next.end..]);
                        span.height
                    }
                    BlockEdit::Duplicate => {
                        bytes.extend_from_slice(record);
                        bytes.extend_from_slice(&original[span.start..]);
                        span.height + 1
                    }
                };
                let copy = tampered_copy(seg, &bytes);
                let report = verify_with_head(copy.path());
                assert_eq!(
                    report.first_bad.as_ref().map(|b| b.0),
                    Some(expected),
                    "{edit:?} of height {}: {}",
                    span.height,
                    report.summary()
                );
                tried += 1;
            }
        }
    }
    eprintln!("{tried} block edits, all named at their height");
}

#[test]
fn cli_verify_expect_head_detects_removed_newest_blocks() {
    let f = fixture();
    let head = format!("{}@{}", hex::encode(f.head.1), f.head.0);
    let chain = f.chain.to_str().expect("utf-8");
    let (code, out, err) = common::cli(&["verify", "--chain-dir", chain, "--expect-head", &head]);
    assert_eq!(code, 0, "{out}{err}");
    // Drop the newest two records: what is left is a valid chain on its own.
    let last = f.segments.len() - 1;
    let spans = &f.segments[last].3;
    let cut = spans[spans.len() - 2].start;
    let copy = tampered_copy(last, &f.segments[last].2[..cut]);
    let dir = copy.path().to_str().expect("utf-8");
    let (code, out, _) = common::cli(&["verify", "--chain-dir", dir]);
    assert_eq!(
        code, 0,
        "without a witness the shorter chain is intact: {out}"
    );
    let (code, out, _) = common::cli(&["verify", "--chain-dir", dir, "--expect-head", &head]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("first bad block at height {}", f.head.0 - 1))
            && out.contains("newest blocks were removed"),
        "{out}"
    );
    // A rewritten tail (other blocks at the known height) fails at that height too.
    let (code, _, err) = common::cli(&["verify", "--chain-dir", dir, "--expect-head", "zz@3"]);
    assert_eq!(code, 2, "a malformed witness is a usage error: {err}");
    assert!(err.contains("not a block hash"), "{err}");
}

/// A power cut that lost the newest record's last sector, inside its trailer: our verify, the
/// store and the independent verifier (tools/verify-chain.py) all call it a torn tail; the
/// same zeros off a sector boundary are damage for all of them.
#[test]
fn a_lost_last_sector_inside_a_trailer_is_torn_for_us_and_the_independent_verifier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = dir.path().join("chain");
    let (mut writer, _, _) = store::open(&chain, StoreOptions::default()).expect("open");
    // Grow the segment until the newest record's trailer straddles a sector boundary.
    let boundary = loop {
        writer
            .append(&[(
                PluginFootprint::new("p", "o", serde_json::json!({"pad": "q".repeat(37)})),
                Caller::this_process(),
            )])
            .expect("append");
        let path = segment::list(&chain)
            .expect("list")
            .pop()
            .expect("segment")
            .1;
        let bytes = std::fs::read(&path).expect("read");
        // The end of the data: free space (zeros) follows it.
        let end = segment::trailing_zeros_start(&bytes) as u64;
        let sector = segment::SECTOR;
        let b = end / sector * sector;
        // The bytes on both sides of the boundary must not be zero already (hash bytes are
        // random), or the zero run below would not start where the case says it does.
        if b > end - 30 && b < end && bytes[b as usize - 1] != 0 && bytes[b as usize] != 0 {
            break b;
        }
    };
    drop(writer);
    let path = segment::list(&chain)
        .expect("list")
        .pop()
        .expect("segment")
        .1;
    let original = std::fs::read(&path).expect("read");
    let python = |dir: &Path| {
        let out = std::process::Command::new("python3")
            .arg(common::repo_path("tools/verify-chain.py"))
            .arg(dir)
            .output()
            .expect("python3");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for (zero_from, torn) in [(boundary, true), (boundary + 1, false)] {
        let mut bytes = original.clone();
        bytes[zero_from as usize..].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let report = verify_dir(&chain, None, &mut |_| {}).expect("verify");
        let (code, out) = python(&chain);
        if torn {
            assert!(
                report.ok() && report.torn_tail_bytes > 0,
                "{}",
                report.summary()
            );
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("torn-tail"), "{out}");
        } else {
            assert!(!report.ok(), "{}", report.summary());
            assert_ne!(code, 0, "{out}");
        }
    }
}

/// The newest segment as the writer leaves it, extended ahead: its zeros after the last record
/// are free space for our verify and the independent verifier, and one non-zero byte in them
/// past a record head's length is data after zeros, named at the height after the head by both.
#[test]
fn a_byte_written_into_the_free_space_is_named_after_the_head() {
    let f = fixture();
    let last = f.segments.len() - 1;
    let (name, _, records, _) = &f.segments[last];
    let real = std::fs::read(f.chain.join(name)).expect("read");
    assert!(
        real.len() > records.len() + 1000 && real[records.len()..].iter().all(|&b| b == 0),
        "the fixture's newest segment is extended ahead ({} bytes of data, {} on disk)",
        records.len(),
        real.len()
    );
    let python = |dir: &Path| {
        let out = std::process::Command::new("python3")
            .arg(common::repo_path("tools/verify-chain.py"))
            .arg(dir)
            .output()
            .expect("python3");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let copy = tampered_copy(last, &real);
    let report = verify_dir(copy.path(), None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.torn_tail_bytes == 0 && report.head == Some(f.head),
        "{}",
        report.summary()
    );
    let (code, out) = python(copy.path());
    assert!(
        code == 0 && out.starts_with(&format!("intact {}", f.head.0 + 1)) && !out.contains("torn"),
        "{out}"
    );
    // Where a record would start, a non-zero byte followed by zeros is the start of a record
    // head: a torn write, cut at the next start (no complete record goes with it).
    let mut bytes = real.clone();
    bytes[records.len()] = 1;
    let copy = tampered_copy(last, &bytes);
    let report = verify_dir(copy.path(), None, &mut |_| {}).expect("verify");
    assert!(
        report.ok() && report.torn_tail_bytes > 0 && report.head == Some(f.head),
        "{}",
        report.summary()
    );
    let (code, out) = python(copy.path());
    assert!(code == 0 && out.contains("torn-tail"), "{out}");
    for at in [records.len() + 9, records.len() + 4096, real.len() - 1] {
        let mut bytes = real.clone();
        bytes[at] = 1;
        let copy = tampered_copy(last, &bytes);
        let report = verify_dir(copy.path(), None, &mut |_| {}).expect("verify");
        assert_eq!(
            report.first_bad.as_ref().map(|b| b.0),
            Some(f.head.0 + 1),
            "a byte at {at}: {}",
            report.summary()
        );
        let (code, out) = python(copy.path());
        assert!(
            code == 1 && out.starts_with(&format!("bad {}", f.head.0 + 1)),
            "a byte at {at}: {out}"
        );
    }
}
