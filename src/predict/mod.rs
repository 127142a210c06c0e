//! Predictive caching: which blocks a reader is likely to ask for next.
//!
//! Two things are learned from reads, per reader (a bus connection, or one in-process stream):
//! - **runs**: after two reads of adjacent heights in the same direction, the next
//!   [`LOOKAHEAD`] heights that way are predicted (audits walk the chain);
//! - **successors**: after a read of A is followed by a read of B, a later read of A predicts B
//!   again (investigations are repeated: the same path of blocks is re-read by other admins).
//!
//! The caller pre-loads the predicted blocks into the cache's hot tier. Memory is bounded:
//! at most [`MAX_SUCCESSORS`] learned pairs and [`MAX_READERS`] readers, least recently used
//! dropped first. Which hash a height has is the chain's business (`ChainReader::hash_at`).

use parking_lot::Mutex;
use quick_cache::unsync::Cache;

/// Heights predicted ahead of a sequential run.
pub const LOOKAHEAD: u64 = 4;
/// Learned "A is followed by B" pairs kept.
pub const MAX_SUCCESSORS: usize = 65_536;
/// Readers whose last read is remembered.
pub const MAX_READERS: usize = 1024;
/// Successors remembered per block.
const SUCCESSORS_PER_BLOCK: usize = 2;

#[derive(Default, Clone, Copy)]
struct Reader {
    last: Option<u64>,
    /// +1 or −1 while reads step by one height; 0 otherwise.
    direction: i64,
}

struct State {
    readers: Cache<String, Reader>,
    successors: Cache<u64, Vec<u64>>,
}

/// Learns from reads and predicts the next ones.
pub struct Predictor {
    state: Mutex<State>,
}

impl Default for Predictor {
    fn default() -> Self {
        Predictor {
            state: Mutex::new(State {
                readers: Cache::new(MAX_READERS),
                successors: Cache::new(MAX_SUCCESSORS),
            }),
        }
    }
}

impl Predictor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `reader` read the block at `height`; returns the heights worth pre-loading
    /// (never `height` itself, no duplicates, best guesses first).
    pub fn record(&self, reader: &str, height: u64) -> Vec<u64> {
        let mut state = self.state.lock();
        let step = |previous: Option<u64>| match previous {
            Some(p) if height == p.wrapping_add(1) => 1,
            Some(p) if p == height.wrapping_add(1) => -1,
            _ => 0,
        };
        // One lookup, and the reader's name is copied only when it is new: this runs on every
        // read, hot ones included.
        let before = match state.readers.get_mut(reader) {
            Some(mut known) => {
                let before = *known;
                *known = Reader {
                    last: Some(height),
                    direction: step(before.last),
                };
                before
            }
            None => {
                state.readers.insert(
                    reader.to_owned(),
                    Reader {
                        last: Some(height),
                        direction: 0,
                    },
                );
                Reader::default()
            }
        };
        let previous = before.last;
        let direction = step(previous);
        let mut predicted = Vec::new();
        if direction != 0 && before.direction == direction {
            for step in 1..=LOOKAHEAD as i64 {
                if let Some(h) = height.checked_add_signed(step * direction) {
                    predicted.push(h);
                }
            }
        }
        if let Some(p) = previous.filter(|p| *p != height) {
            state.learn(p, height);
        }
        if let Some(next) = state.successors.get(&height) {
            for h in next.iter().copied() {
                if !predicted.contains(&h) && h != height {
                    predicted.insert(0, h);
                }
            }
        }
        predicted
    }
}

impl State {
    fn learn(&mut self, from: u64, to: u64) {
        let mut next = self.successors.get(&from).cloned().unwrap_or_default();
        next.retain(|h| *h != to);
        next.insert(0, to);
        next.truncate(SUCCESSORS_PER_BLOCK);
        self.successors.insert(from, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequential_walk_predicts_the_next_heights_in_its_direction() {
        let p = Predictor::new();
        assert!(p.record("a", 10).is_empty());
        assert!(p.record("a", 11).is_empty(), "one step is not a run yet");
        assert_eq!(p.record("a", 12), vec![13, 14, 15, 16]);
        // Another reader's reads do not break a's run.
        assert!(p.record("b", 500).is_empty());
        assert_eq!(p.record("a", 13), vec![14, 15, 16, 17]);
        // Walking backwards works too, and stops at height 0.
        p.record("c", 3);
        p.record("c", 2);
        assert_eq!(p.record("c", 1), vec![0]);
    }

    #[test]
    fn a_repeated_path_is_predicted_from_its_first_block() {
        let p = Predictor::new();
        for h in [40, 7, 93, 12] {
            p.record("admin-1", h);
        }
        assert_eq!(p.record("admin-2", 40), vec![7]);
        assert_eq!(p.record("admin-2", 7), vec![93]);
        assert_eq!(p.record("admin-2", 93), vec![12]);
    }

    #[test]
    fn a_busy_reader_is_remembered_while_many_one_off_readers_come_and_go() {
        let p = Predictor::new();
        p.record("auditor", 100);
        p.record("auditor", 101);
        for i in 0..(MAX_READERS * 4) {
            p.record(&format!("one-off-{i}"), 5);
            if i % 64 == 0 {
                // Seen twice, the auditor outlives readers seen once (the old clear-half-when-
                // full map dropped it after MAX_READERS of them).
                let state = p.state.lock();
                assert!(state.readers.peek("auditor").is_some(), "after {i}");
            }
        }
        assert_eq!(p.record("auditor", 102), vec![103, 104, 105, 106]);
    }

    #[test]
    fn memory_stays_bounded() {
        let p = Predictor::new();
        for h in 0..(MAX_SUCCESSORS as u64 * 3) {
            p.record(&format!("r{}", h % 3000), h * 7);
        }
        let state = p.state.lock();
        assert!(state.successors.len() <= MAX_SUCCESSORS);
        assert!(state.readers.len() <= MAX_READERS);
    }
}
