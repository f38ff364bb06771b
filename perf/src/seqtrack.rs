//! `SeqTracker`: sequence-number accounting for one probe stream at the sink. It keeps a
//! sliding bitmap of the last [`WINDOW`] sequence numbers, so within that window it tells
//! a late frame (reordered: it fills an earlier gap) from a repeated one (duplicate).
//! "Lost" is the number of sequence numbers between the first and the highest seen that
//! never arrived; frames lost after the highest one received cannot be seen by a sink.
//! Memory is fixed at construction; recording a frame never allocates.

/// How many sequence numbers behind the highest one seen are still told apart.
pub const WINDOW: u64 = 1 << 16;
const WORDS: usize = (WINDOW / 64) as usize;

/// Counters for one stream (see the module comment for what they mean).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCounts {
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Frames that arrived after a higher sequence number (duplicates excluded).
    pub reordered: u64,
    /// Frames whose sequence number had already been received.
    pub duplicates: u64,
    /// Sequence numbers in `first..=highest` never received.
    pub lost: u64,
    /// Late frames too far behind to check for duplication (counted as reordered).
    pub beyond_window: u64,
}

/// Accounting for one stream.
pub struct SeqTracker {
    first: u64,
    highest: u64,
    started: bool,
    counts: SeqCounts,
    seen: Box<[u64; WORDS]>,
}

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker::new()
    }
}

impl SeqTracker {
    pub fn new() -> SeqTracker {
        SeqTracker {
            first: 0,
            highest: 0,
            started: false,
            counts: SeqCounts::default(),
            seen: Box::new([0; WORDS]),
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let slot = seq % WINDOW;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    fn test_and_set(&mut self, seq: u64) -> bool {
        let (w, m) = Self::bit(seq);
        let was = self.seen[w] & m != 0;
        self.seen[w] |= m;
        was
    }

    fn clear(&mut self, seq: u64) {
        let (w, m) = Self::bit(seq);
        self.seen[w] &= !m;
    }

    /// Accounts for one received frame carrying `seq`.
    pub fn record(&mut self, seq: u64) {
        if !self.started {
            self.started = true;
            self.first = seq;
            self.highest = seq;
            self.test_and_set(seq);
            self.counts.unique = 1;
            return;
        }
        if seq > self.highest {
            let jump = seq - self.highest;
            if jump >= WINDOW {
                self.seen.fill(0);
            } else {
                // Slots between the old and new highest now stand for new, unseen numbers.
                for s in self.highest + 1..seq {
                    self.clear(s);
                }
            }
            self.clear(seq);
            self.test_and_set(seq);
            self.highest = seq;
            self.counts.unique += 1;
        } else if seq < self.first {
            // Older than anything counted: reordered, outside the range that loss covers.
            self.counts.reordered += 1;
        } else if self.highest - seq >= WINDOW {
            self.counts.reordered += 1;
            self.counts.beyond_window += 1;
            self.counts.unique += 1;
        } else if self.test_and_set(seq) {
            self.counts.duplicates += 1;
        } else {
            self.counts.reordered += 1;
            self.counts.unique += 1;
        }
    }

    pub fn counts(&self) -> SeqCounts {
        let mut c = self.counts;
        if self.started {
            let span = self.highest - self.first + 1;
            c.lost = span.saturating_sub(c.unique);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> SeqCounts {
        let mut t = SeqTracker::new();
        for &s in seqs {
            t.record(s);
        }
        t.counts()
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let c = run(&[5, 6, 7, 8]);
        assert_eq!((c.unique, c.lost, c.reordered, c.duplicates), (4, 0, 0, 0));
    }

    #[test]
    fn gap_counts_as_loss() {
        let c = run(&[0, 1, 4, 5]);
        assert_eq!((c.unique, c.lost), (4, 2));
    }

    #[test]
    fn late_frame_fills_its_gap_and_counts_as_reordered() {
        let c = run(&[0, 2, 1, 3]);
        assert_eq!((c.unique, c.lost, c.reordered, c.duplicates), (4, 0, 1, 0));
    }

    #[test]
    fn repeated_frame_is_a_duplicate_not_a_reorder() {
        let c = run(&[0, 1, 2, 1, 2, 3]);
        assert_eq!((c.unique, c.lost, c.reordered, c.duplicates), (4, 0, 0, 2));
    }

    #[test]
    fn slots_reused_after_the_window_moves_are_not_mistaken_for_duplicates() {
        // WINDOW + 1 shares a slot with 1, which was seen; 1 + WINDOW must still be new.
        let c = run(&[0, 1, 2, WINDOW + 1]);
        assert_eq!(c.duplicates, 0);
        assert_eq!(c.lost, WINDOW + 2 - 4);
        let late = run(&[0, 2 * WINDOW, 5]);
        assert_eq!(
            (late.reordered, late.beyond_window, late.duplicates),
            (1, 1, 0)
        );
    }

    #[test]
    fn frames_older_than_the_first_are_reordered_but_outside_the_loss_range() {
        let c = run(&[10, 11, 9]);
        assert_eq!((c.unique, c.lost, c.reordered), (2, 0, 1));
    }
}
