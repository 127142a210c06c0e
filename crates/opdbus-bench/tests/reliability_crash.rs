//! No acknowledged loss under kill -9: the crash harness (`opdbus-bench torture`) against the
//! real daemon on a real private bus, 16 concurrent writers, 20 kill/restart cycles, with
//! small segments so that kills also land in segment rotation.

mod common;
use common::bench;

#[test]
fn acked_footprints_survive_20_kill_9_cycles_under_16_writers() {
    let (code, out, err) = bench(&[
        "torture",
        "--cycles",
        "20",
        "--writers",
        "16",
        "--segment-bytes",
        "131072",
    ]);
    eprintln!("{out}");
    assert_eq!(code, 0, "torture failed:\n{out}\n{err}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("torture: 20 cycles in"))
        .unwrap_or_else(|| panic!("no summary line:\n{out}"));
    assert!(summary.ends_with("; 0 failures"), "{summary}");
    assert!(summary.contains(", 0 lost,"), "{summary}");
    assert!(summary.contains("chain is intact"), "{summary}");
    let checked: u64 = summary
        .split(" acknowledged footprints checked")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary}"));
    assert!(
        checked > 0,
        "the writers got no acknowledgement at all: {summary}"
    );
    let segments: u64 = summary
        .split(" segments,")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no segment count in {summary}"));
    assert!(
        segments >= 2,
        "the run must cross segment rotations: {summary}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("cycle ") && l.ends_with(", ok"))
            .count(),
        20,
        "every cycle must hold:\n{out}"
    );
}
