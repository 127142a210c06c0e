//! Full verification of a chain directory: every record re-hashed, every link, height,
//! timestamp and hard footprint field rule checked, from genesis to the head, by the same scan as
//! start-up recovery. It only reads (no lock, no index, no tail cut), so it
//! works on read-only snapshots, received backups and a directory a live daemon is writing
//! (where, while a writer holds the chain, a record being copied into free space is read again
//! before it is called damage).
//! On top of start-up's rules it checks the writer rules of today (`footprint::check_stored`):
//! blocks that break them were written before those rules (or by someone who rewrote the
//! chain), so they are counted as a warning, never as corruption.

use super::block::{Block, Hash};
use super::error::ChainError;
use super::scan;
use super::segment;
use std::path::{Path, PathBuf};

/// The outcome of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Blocks whose hash and link checked out (genesis included).
    pub blocks_checked: u64,
    /// Height and hash of the last good block.
    pub head: Option<(u64, Hash)>,
    /// The first height that does not check out, with the reason.
    pub first_bad: Option<(u64, String)>,
    /// Bytes of an incomplete record at the very end (a crash before acknowledgement; the
    /// daemon cuts them at its next start). Not an error.
    pub torn_tail_bytes: u64,
    /// The newest segment (path and size) holds no complete record after a missing, torn or
    /// zero header: its creation was interrupted by a crash, and the daemon removes it at its
    /// next start. Not an error, and not part of the chain.
    pub interrupted_segment: Option<(PathBuf, u64)>,
    /// Blocks that keep the hard rules but break a writer rule of today. Not an error.
    pub writer_rule_breaks: u64,
    /// The first of them: height and the rule broken.
    pub first_writer_rule_break: Option<(u64, String)>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }

    /// One line for a person: what was checked and, if anything, where it broke.
    pub fn summary(&self) -> String {
        match (&self.first_bad, self.head) {
            (Some((height, reason)), _) => format!(
                "chain is NOT intact: first bad block at height {height}: {reason} ({} blocks before it are intact)",
                self.blocks_checked
            ),
            (None, Some((height, hash))) => {
                let mut line = format!(
                    "chain is intact: {} blocks checked, head at height {height} ({})",
                    self.blocks_checked,
                    hex::encode(hash)
                );
                if self.torn_tail_bytes > 0 {
                    line.push_str(&format!(
                        "; {} bytes of an unacknowledged write at the end will be cut at the next start",
                        self.torn_tail_bytes
                    ));
                }
                if let Some((path, len)) = &self.interrupted_segment {
                    line.push_str(&format!(
                        "; {} ({len} bytes) holds no record: its creation was interrupted and it will be removed at the next start",
                        path.display()
                    ));
                }
                if let Some((height, reason)) = &self.first_writer_rule_break {
                let n = self.writer_rule_breaks;
                line.push_str(&format!(
                    "; warning: {n} block{} break{} rules the writer enforces now (first at height {height}: {reason}): written before those rules, or by someone who rewrote the chain",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "s" } else { "" },
                ));
                }
                line
            }
            (None, None) => "chain is empty".into(),
        }
    }
}

/// Verifies the chain in `dir` with the rules of start-up recovery ([`scan::scan_chain`]).
/// `up_to` stops after that height (the head a live daemon had acknowledged when the check
/// began). `progress` is called with the number of blocks checked so far, after each segment
/// and at least every 65,536 blocks. Segments are streamed: memory stays bounded by one record
/// and a read buffer, whatever their size.
/// `Err` only when the directory itself cannot be read.
pub fn verify_dir(
    dir: &Path,
    up_to: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ChainError> {
    verify_dir_each(dir, up_to, progress, &mut |_| {})
}

/// [`verify_dir`], handing each block that checks out to `on_block`, in height order. Its
/// hash was recomputed from the segment, never taken from the index file, so a caller can
/// build on it (the transparency log's tree in `opdbus-chain verify`).
pub fn verify_dir_each(
    dir: &Path,
    up_to: Option<u64>,
    progress: &mut dyn FnMut(u64),
    on_block: &mut dyn FnMut(&Block),
) -> Result<VerifyReport, ChainError> {
    let segments =
        segment::list(dir).map_err(|e| ChainError::io(format!("reading {}", dir.display()), e))?;
    let mut report = VerifyReport::default();
    if segments.is_empty() {
        report.first_bad = Some((0, format!("no segment files in {}", dir.display())));
        return Ok(report);
    }
    let newest = segments.len() - 1;
    let mut at_newest = None;
    scan_into(
        &segments,
        None,
        up_to,
        &mut report,
        &mut at_newest,
        progress,
        on_block,
    );
    // A live daemon copies records into free space, so a record of the newest segment may be
    // met half copied, zeros anywhere in it: while a writer holds the chain, read that segment
    // again before calling it damage.
    let Some((bad, _)) = &report.first_bad else {
        return Ok(report);
    };
    if *bad < segments[newest].0 || !super::store::writer_active(dir) {
        return Ok(report);
    }
    // From the start of the newest segment (from genesis when it is the only one).
    let (mut again, resume) = match at_newest {
        Some((before, state)) => (
            before,
            Some(scan::Resume {
                segment: newest,
                offset: segment::HEADER_LEN as u64,
                state,
            }),
        ),
        None if newest == 0 => (VerifyReport::default(), None),
        None => return Ok(report),
    };
    std::thread::sleep(REREAD_AFTER);
    let delivered = report.head.map(|(height, _)| height);
    scan_into(
        &segments,
        resume,
        up_to,
        &mut again,
        &mut None,
        progress,
        &mut |block| {
            if delivered.is_none_or(|d| block.height > d) {
                on_block(block)
            }
        },
    );
    Ok(again)
}

/// How long `verify` waits before it reads the newest segment again when a record there does
/// not check out (a daemon may be copying it into the file at that moment).
pub const REREAD_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// One scan of the chain into `report`. `at_newest` gets the report and the scan state as they
/// stood before the newest segment's first record, when the scan reached it past segment 0.
fn scan_into(
    segments: &[(u64, std::path::PathBuf)],
    resume: Option<scan::Resume>,
    up_to: Option<u64>,
    report: &mut VerifyReport,
    at_newest: &mut Option<(VerifyReport, scan::ScanState)>,
    progress: &mut dyn FnMut(u64),
    on_block: &mut dyn FnMut(&Block),
) {
    let newest = segments.len() - 1;
    let mut segment_now = resume.as_ref().map_or(0, |r| r.segment);
    let mut last_timestamp = 0;
    let chain_id = resume.as_ref().map(|r| r.state.chain_id);
    let mut genesis_id = None;
    let result = scan::scan_chain(segments, resume, up_to, false, &mut |seg_i, block, _, _| {
        if seg_i != segment_now {
            segment_now = seg_i;
            progress(report.blocks_checked);
            if seg_i == newest {
                if let (Some((height, hash)), Some(id)) = (report.head, chain_id.or(genesis_id)) {
                    *at_newest = Some((
                        report.clone(),
                        scan::ScanState {
                            chain_id: id,
                            next_height: height + 1,
                            prev_hash: hash,
                            prev_timestamp_ns: last_timestamp,
                        },
                    ));
                }
            }
        }
        if block.height == 0 {
            genesis_id = serde_json::from_str::<serde_json::Value>(&block.data)
                .ok()
                .and_then(|v| v["chain_id"].as_str().and_then(|id| hex::decode(id).ok()))
                .and_then(|id| id.try_into().ok());
        }
        last_timestamp = block.timestamp_ns;
        report.blocks_checked += 1;
        report.head = Some((block.height, block.hash));
        on_block(block);
        if block.height > 0 {
            let rules =
                crate::footprint::check_stored(&block.plugin, &block.operation, &block.data);
            if let Err(err) = rules {
                report.writer_rule_breaks += 1;
                report
                    .first_writer_rule_break
                    .get_or_insert_with(|| (block.height, err.to_string()));
            }
        }
        if report.blocks_checked.is_multiple_of(65_536) {
            progress(report.blocks_checked);
        }
    });
    // No record of the newest segment checked out: the state before it is the state now.
    if at_newest.is_none() && newest > 0 {
        if let (Some((height, hash)), Some(id)) = (report.head, chain_id.or(genesis_id)) {
            if height + 1 == segments[newest].0 {
                *at_newest = Some((
                    report.clone(),
                    scan::ScanState {
                        chain_id: id,
                        next_height: height + 1,
                        prev_hash: hash,
                        prev_timestamp_ns: last_timestamp,
                    },
                ));
            }
        }
    }
    match result {
        Ok(scanned) => {
            report.torn_tail_bytes = scanned.torn_to.map_or(0, |end| end - scanned.valid_len);
            report.interrupted_segment = scanned.interrupted;
        }
        Err(ChainError::Corrupted { height, reason }) => report.first_bad = Some((height, reason)),
        // A segment that cannot be read: the chain cannot be shown intact from there on.
        Err(other) => {
            let next = report.head.map_or(0, |(height, _)| height + 1);
            report.first_bad = Some((next, other.to_string()));
        }
    }
    progress(report.blocks_checked);
}

/// Parses `HASH@HEIGHT` (a head exported earlier, or the one a snapshot manifest names).
pub fn parse_expected_head(text: &str) -> Result<(Hash, u64), String> {
    let (hash, height) = text
        .split_once('@')
        .ok_or_else(|| format!("'{text}' is not HASH@HEIGHT"))?;
    let hash = super::block::parse_hash(hash)
        .ok_or_else(|| format!("'{hash}' is not a block hash (64 hex digits)"))?;
    let height = height
        .parse()
        .map_err(|_| format!("'{height}' is not a height"))?;
    Ok((hash, height))
}

/// Checks a verified chain against a head it is known to have reached (`hash` at `height`):
/// removing the newest blocks leaves a chain that verifies on its own, so only such an outside
/// witness can tell. A shorter chain fails at its first missing height; another block at
/// `height` fails there.
pub fn check_expected_head(dir: &Path, report: &mut VerifyReport, hash: &Hash, height: u64) {
    if report
        .first_bad
        .as_ref()
        .is_some_and(|(bad, _)| *bad <= height)
    {
        return;
    }
    let reached = report.head.map(|(h, _)| h);
    if reached.is_none_or(|head| head < height) {
        let first_missing = reached.map_or(0, |head| head + 1);
        report.first_bad = Some((
            first_missing,
            format!(
                "the chain ends at height {} but it is known to have reached height {height} ({}): its newest blocks were removed",
                reached.map_or("-1".into(), |h| h.to_string()),
                hex::encode(hash)
            ),
        ));
        return;
    }
    // The hash at `height`: from the report when it is the head, else from a check that stops
    // there (the chain may be damaged after it, which the report already says).
    let found = match report.head {
        Some((head, head_hash)) if head == height => Ok(Some(head_hash)),
        _ => verify_dir(dir, Some(height), &mut |_| {})
            .map(|r| r.head.filter(|(h, _)| *h == height).map(|(_, hash)| hash)),
    };
    match found {
        Ok(Some(found)) if &found == hash => {}
        Ok(found) => {
            report.first_bad = Some((
                height,
                format!(
                    "block at height {height} is {} but the expected head is {}",
                    found.map_or("missing".into(), hex::encode),
                    hex::encode(hash)
                ),
            ));
        }
        Err(err) => report.first_bad = Some((height, err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_rule_breaks_are_a_warning_on_an_intact_chain() {
        let mut report = VerifyReport {
            blocks_checked: 10,
            head: Some((9, [0; 32])),
            ..VerifyReport::default()
        };
        assert!(!report.summary().contains("warning"));
        report.writer_rule_breaks = 3;
        report.first_writer_rule_break = Some((2, "operation contains U+0020 SPACE".into()));
        assert!(report.ok());
        let summary = report.summary();
        assert!(
            summary.starts_with("chain is intact: 10 blocks checked")
                && summary.contains("; warning: 3 blocks break rules the writer enforces now (first at height 2: operation contains U+0020 SPACE): written before those rules, or by someone who rewrote the chain"),
            "{summary}"
        );
    }
}
