//! Finding blocks: by time, height, plugin, operation and caller, for `opdbus-chain log` and
//! `report` (offline) and the `Query` D-Bus method (in the daemon).
//!
//! Block timestamps never decrease along the chain (docs/format.md, rule H1), so the first
//! height at or after a time is found by binary search over heights: a search touches about
//! log2(head) blocks before the first match, never the chain from genesis. The filters on
//! plugin, operation and caller are then applied walking from there. Every block read is
//! hash-checked by the source it comes from, so damage met on the way is an error naming its
//! height, never a silently skipped block.
//!
//! The search works over [`BlockSource`]: the daemon's [`ChainReader`] and the offline
//! [`offline::OfflineReader`], which reads the index file directly instead of loading it.

pub mod offline;
pub mod time;

use crate::chain::block::Block;
use crate::chain::error::ChainError;
use crate::chain::store::ChainReader;
use std::ops::ControlFlow;

pub use time::{parse_time, TimeError, ACCEPTED_TIMES};

/// What a block must be to match; `None` matches anything. Bounds are inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
    pub plugin: Option<String>,
    pub operation: Option<String>,
    pub uid: Option<u32>,
    pub unit: Option<String>,
    pub from_height: Option<u64>,
    pub to_height: Option<u64>,
}

impl Filter {
    /// Whether `block` passes every part of the filter.
    pub fn matches(&self, block: &Block) -> bool {
        self.since_ns.is_none_or(|t| block.timestamp_ns >= t)
            && self.until_ns.is_none_or(|t| block.timestamp_ns <= t)
            && self.from_height.is_none_or(|h| block.height >= h)
            && self.to_height.is_none_or(|h| block.height <= h)
            && self.plugin.as_ref().is_none_or(|p| *p == block.plugin)
            && self
                .operation
                .as_ref()
                .is_none_or(|o| *o == block.operation)
            && self.uid.is_none_or(|uid| block.caller.uid == Some(uid))
            && self.unit.as_ref().is_none_or(|u| *u == block.caller.unit)
    }

    /// Refuses a range given the wrong way round (an empty range by mistake, not by chance).
    pub fn check(&self) -> Result<(), String> {
        if let (Some(since), Some(until)) = (self.since_ns, self.until_ns) {
            if since > until {
                return Err(format!("since_ns {since} is after until_ns {until}"));
            }
        }
        if let (Some(from), Some(to)) = (self.from_height, self.to_height) {
            if from > to {
                return Err(format!("from_height {from} is above to_height {to}"));
            }
        }
        Ok(())
    }
}

/// Blocks by height, each hash-checked: what a search reads.
pub trait BlockSource {
    /// Height of the newest block (the genesis block, 0, always exists).
    fn head_height(&self) -> u64;
    /// The block at `height`; `None` past the head; `Corrupted` when its record does not check
    /// out.
    fn block_at(&self, height: u64) -> Result<Option<Block>, ChainError>;
}

impl BlockSource for ChainReader {
    fn head_height(&self) -> u64 {
        self.head().0
    }

    fn block_at(&self, height: u64) -> Result<Option<Block>, ChainError> {
        ChainReader::block_at(self, height)
    }
}

fn must_exist(source: &dyn BlockSource, height: u64) -> Result<Block, ChainError> {
    source
        .block_at(height)?
        .ok_or_else(|| ChainError::Corrupted {
            height,
            reason: "the block vanished while it was being read".into(),
        })
}

/// The heights a search must examine, `first..=last`: the filter's height bounds cut to the
/// chain, then narrowed by its time bounds with binary searches. `None` when nothing can match.
pub fn window(source: &dyn BlockSource, filter: &Filter) -> Result<Option<(u64, u64)>, ChainError> {
    let head = source.head_height();
    let mut first = filter.from_height.unwrap_or(0);
    let mut last = filter.to_height.unwrap_or(head).min(head);
    if first > last {
        return Ok(None);
    }
    if let Some(since) = filter.since_ns {
        // The first height in first..=last whose timestamp is at least `since`.
        let (mut lo, mut hi) = (first, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if must_exist(source, mid)?.timestamp_ns >= since {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        if lo > last {
            return Ok(None);
        }
        first = lo;
    }
    if let Some(until) = filter.until_ns {
        // The last height in first..=last whose timestamp is at most `until`.
        let (mut lo, mut hi) = (first, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if must_exist(source, mid)?.timestamp_ns > until {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        if lo == first {
            return Ok(None);
        }
        last = lo - 1;
    }
    Ok(Some((first, last)))
}

/// Where a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEnd {
    /// The first height not examined: where to continue from (a height past the head once all
    /// was examined, so a later call from there finds only blocks added meanwhile).
    pub next: u64,
    /// Every height of the window was examined.
    pub complete: bool,
    /// Blocks read and tested after the binary search.
    pub examined: u64,
}

/// Calls `on_match` with each block passing `filter`, oldest first, until it says `Break`, the
/// window ends, or `max_examined` blocks were tested.
pub fn walk(
    source: &dyn BlockSource,
    filter: &Filter,
    max_examined: u64,
    mut on_match: impl FnMut(Block) -> ControlFlow<()>,
) -> Result<WalkEnd, ChainError> {
    let Some((first, last)) = window(source, filter)? else {
        let next = filter
            .from_height
            .unwrap_or(0)
            .max(source.head_height() + 1);
        return Ok(WalkEnd {
            next,
            complete: true,
            examined: 0,
        });
    };
    let mut examined = 0;
    let mut height = first;
    while height <= last {
        if examined == max_examined {
            return Ok(WalkEnd {
                next: height,
                complete: false,
                examined,
            });
        }
        let block = must_exist(source, height)?;
        examined += 1;
        height += 1;
        if filter.matches(&block) && on_match(block).is_break() {
            return Ok(WalkEnd {
                next: height,
                complete: height > last,
                examined,
            });
        }
    }
    Ok(WalkEnd {
        next: height,
        complete: true,
        examined,
    })
}

/// What one bounded search may cost: a caller on the bus gets at most this much per call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Blocks returned.
    pub max_blocks: usize,
    /// Blocks read and tested after the binary search.
    pub max_examined: u64,
    /// Bytes of returned text (data, names, caller), counted block by block: the block that
    /// passes it is the last.
    pub max_bytes: usize,
}

/// One answer of a bounded search.
#[derive(Debug, Clone)]
pub struct Page {
    /// Matching blocks, oldest first.
    pub blocks: Vec<Block>,
    /// Where to continue: pass it as `from_height` (with the same filter) for the next page.
    pub next_height: u64,
    /// Every height of the range was examined: there is no next page (until blocks are added).
    pub complete: bool,
}

/// The matching blocks from the start of the window, within `limits`.
pub fn page(source: &dyn BlockSource, filter: &Filter, limits: Limits) -> Result<Page, ChainError> {
    let mut blocks = Vec::new();
    let mut bytes = 0usize;
    let end = walk(source, filter, limits.max_examined, |block| {
        bytes += block.data.len()
            + block.plugin.len()
            + block.operation.len()
            + block.caller.unit.len()
            + block.caller.bus_name.len()
            + 64;
        blocks.push(block);
        if blocks.len() >= limits.max_blocks || bytes >= limits.max_bytes {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    Ok(Page {
        blocks,
        next_height: end.next,
        complete: end.complete,
    })
}

/// The newest `n` blocks passing `filter`, oldest first (as `journalctl -n`): a walk from the
/// window's end towards the past.
pub fn newest(source: &dyn BlockSource, filter: &Filter, n: u64) -> Result<Vec<Block>, ChainError> {
    let mut found = Vec::new();
    if n > 0 {
        walk_back(source, filter, |block| {
            found.push(block);
            if found.len() as u64 == n {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
    }
    found.reverse();
    Ok(found)
}

/// Calls `on_match` with each block passing `filter`, newest first, until it says `Break` or
/// the window's start is passed.
pub fn walk_back(
    source: &dyn BlockSource,
    filter: &Filter,
    mut on_match: impl FnMut(Block) -> ControlFlow<()>,
) -> Result<(), ChainError> {
    let Some((first, last)) = window(source, filter)? else {
        return Ok(());
    };
    for height in (first..=last).rev() {
        let block = must_exist(source, height)?;
        if filter.matches(&block) && on_match(block).is_break() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::{Caller, ZERO_HASH};
    use std::cell::Cell;

    /// Blocks in memory, counting reads: the search's cost is what the tests check.
    struct Memory {
        blocks: Vec<Block>,
        reads: Cell<u64>,
    }

    impl BlockSource for Memory {
        fn head_height(&self) -> u64 {
            self.blocks.len() as u64 - 1
        }
        fn block_at(&self, height: u64) -> Result<Option<Block>, ChainError> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.blocks.get(height as usize).cloned())
        }
    }

    /// Heights 0..n with timestamp 10 × height (equal pairs where `dup` divides the height),
    /// plugins cycling network, systemd, firewall; uid = height % 3; unit by uid.
    fn chain(n: u64) -> Memory {
        let mut prev = ZERO_HASH;
        let blocks = (0..n)
            .map(|h| {
                let block = Block::new(
                    h,
                    10 * (h - h % 2),
                    prev,
                    Caller {
                        uid: Some((h % 3) as u32),
                        pid: Some(100),
                        bus_name: ":1.1".into(),
                        unit: format!("unit{}.service", h % 3),
                    },
                    ["network", "systemd", "firewall"][(h % 3) as usize].into(),
                    if h % 2 == 0 { "create" } else { "delete" }.into(),
                    "{}".into(),
                );
                prev = block.hash;
                block
            })
            .collect();
        Memory {
            blocks,
            reads: Cell::new(0),
        }
    }

    fn heights(source: &Memory, filter: &Filter) -> Vec<u64> {
        let mut out = Vec::new();
        walk(source, filter, u64::MAX, |b| {
            out.push(b.height);
            ControlFlow::Continue(())
        })
        .expect("walk");
        out
    }

    #[test]
    fn since_finds_the_first_block_at_that_time_by_binary_search() {
        let source = chain(100_000);
        // Timestamps are 10 × the even height: 4000 is the time of heights 400 and 401.
        let filter = Filter {
            since_ns: Some(4000),
            until_ns: Some(4020),
            ..Filter::default()
        };
        assert_eq!(heights(&source, &filter), vec![400, 401, 402, 403]);
        assert!(
            source.reads.get() < 2 * 17 + 6,
            "{} reads on 100 000 blocks",
            source.reads.get()
        );
        // Between two timestamps: the next block's.
        let filter = Filter {
            since_ns: Some(4001),
            until_ns: Some(4019),
            ..Filter::default()
        };
        assert!(heights(&source, &filter).is_empty());
        let filter = Filter {
            since_ns: Some(4001),
            until_ns: Some(4020),
            ..Filter::default()
        };
        assert_eq!(heights(&source, &filter), vec![402, 403]);
    }

    #[test]
    fn bounds_past_either_end_are_empty_or_whole() {
        let source = chain(100);
        let at = |since, until| {
            heights(
                &source,
                &Filter {
                    since_ns: since,
                    until_ns: until,
                    ..Filter::default()
                },
            )
        };
        assert_eq!(at(Some(10_000), None), Vec::<u64>::new());
        assert_eq!(at(None, Some(0)), vec![0, 1]);
        assert_eq!(at(Some(0), None).len(), 100);
        assert_eq!(at(None, None).len(), 100);
        assert_eq!(at(Some(975), Some(5_000)), vec![98, 99]);
    }

    #[test]
    fn fields_and_heights_filter_the_walk() {
        let source = chain(30);
        let filter = Filter {
            plugin: Some("network".into()),
            operation: Some("create".into()),
            ..Filter::default()
        };
        assert_eq!(heights(&source, &filter), vec![0, 6, 12, 18, 24]);
        let filter = Filter {
            uid: Some(1),
            unit: Some("unit1.service".into()),
            from_height: Some(10),
            to_height: Some(20),
            ..Filter::default()
        };
        assert_eq!(heights(&source, &filter), vec![10, 13, 16, 19]);
        let filter = Filter {
            uid: Some(1),
            unit: Some("unit2.service".into()),
            ..Filter::default()
        };
        assert!(heights(&source, &filter).is_empty());
        let filter = Filter {
            from_height: Some(28),
            to_height: Some(1_000),
            ..Filter::default()
        };
        assert_eq!(heights(&source, &filter), vec![28, 29]);
    }

    #[test]
    fn a_capped_walk_says_where_to_continue() {
        let source = chain(100);
        let filter = Filter {
            plugin: Some("systemd".into()),
            ..Filter::default()
        };
        let mut seen = Vec::new();
        let end = walk(&source, &filter, 10, |b| {
            seen.push(b.height);
            ControlFlow::Continue(())
        })
        .expect("walk");
        assert_eq!(seen, vec![1, 4, 7]);
        assert_eq!(
            end,
            WalkEnd {
                next: 10,
                complete: false,
                examined: 10
            }
        );
        let continued = Filter {
            from_height: Some(end.next),
            ..filter.clone()
        };
        let end = walk(&source, &continued, 1_000, |_| ControlFlow::Break(())).expect("walk");
        assert_eq!(end.next, 11, "stopped right after height 10");
        let end = walk(&source, &filter, 1_000, |_| ControlFlow::Continue(())).expect("walk");
        assert_eq!(
            end,
            WalkEnd {
                next: 100,
                complete: true,
                examined: 100
            }
        );
    }

    #[test]
    fn newest_gives_the_last_n_matches_oldest_first() {
        let source = chain(1_000);
        let filter = Filter {
            plugin: Some("firewall".into()),
            ..Filter::default()
        };
        let got: Vec<u64> = newest(&source, &filter, 3)
            .expect("newest")
            .iter()
            .map(|b| b.height)
            .collect();
        assert_eq!(got, vec![992, 995, 998]);
        let few = Filter {
            to_height: Some(5),
            ..filter
        };
        let got: Vec<u64> = newest(&source, &few, 10)
            .expect("newest")
            .iter()
            .map(|b| b.height)
            .collect();
        assert_eq!(got, vec![2, 5]);
    }

    #[test]
    fn pages_stop_at_each_limit_and_continue_where_they_stopped() {
        let source = chain(100);
        let limits = Limits {
            max_blocks: 4,
            max_examined: 1_000,
            max_bytes: 1 << 20,
        };
        let filter = Filter {
            plugin: Some("network".into()),
            ..Filter::default()
        };
        let mut all = Vec::new();
        let mut from = None;
        loop {
            let page = page(
                &source,
                &Filter {
                    from_height: from,
                    ..filter.clone()
                },
                limits,
            )
            .expect("page");
            assert!(page.blocks.len() <= 4);
            all.extend(page.blocks.iter().map(|b| b.height));
            from = Some(page.next_height);
            if page.complete {
                break;
            }
        }
        assert_eq!(all, (0..100).step_by(3).collect::<Vec<u64>>());
        assert_eq!(from, Some(100));
        let tight = Limits {
            max_examined: 5,
            ..limits
        };
        let first = page(&source, &filter, tight).expect("page");
        assert_eq!(
            first.blocks.iter().map(|b| b.height).collect::<Vec<_>>(),
            vec![0, 3]
        );
        assert_eq!((first.next_height, first.complete), (5, false));
        let small = Limits {
            max_bytes: 1,
            ..limits
        };
        let first = page(&source, &filter, small).expect("page");
        assert_eq!((first.blocks.len(), first.next_height), (1, 1));
    }

    #[test]
    fn ranges_the_wrong_way_round_are_refused() {
        let filter = Filter {
            since_ns: Some(2),
            until_ns: Some(1),
            ..Filter::default()
        };
        assert!(filter.check().is_err());
        let filter = Filter {
            from_height: Some(2),
            to_height: Some(1),
            ..Filter::default()
        };
        assert!(filter.check().is_err());
        assert!(Filter::default().check().is_ok());
    }
}
