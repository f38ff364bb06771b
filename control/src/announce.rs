//! announce-self: gratuitous RARP frames on QEMU's schedule.
//!
//! QEMU sends the first round at once, then waits `initial` ms, then `initial + step`,
//! `initial + 2*step`, … each delay capped at `max`, for `rounds` rounds in all. A timer is
//! named by `id` (absent means the one anonymous timer); a new call with the same id replaces
//! it. The frame is QEMU's: broadcast, EtherType 0x8035, a RARP "reverse request" whose
//! sender and target hardware addresses are the announced MAC, padded to 60 bytes.

use std::time::{Duration, Instant};

pub use ringswitch_switch::ethernet::{rarp_frame, RARP_FRAME_LEN};

/// `AnnounceParameters` of net.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceParams {
    pub initial: i64,
    pub max: i64,
    pub rounds: i64,
    pub step: i64,
    pub interfaces: Option<Vec<String>>,
    pub id: String,
}

/// One running announcement.
#[derive(Debug, Clone)]
pub struct AnnounceTimer {
    pub params: AnnounceParams,
    /// Rounds still to send.
    remaining: i64,
    pub due: Instant,
}

impl AnnounceTimer {
    /// A timer whose first round is due at once; None when `rounds` asks for nothing.
    pub fn start(params: AnnounceParams, now: Instant) -> Option<AnnounceTimer> {
        if params.rounds <= 0 {
            return None;
        }
        Some(AnnounceTimer {
            remaining: params.rounds,
            params,
            due: now,
        })
    }

    /// Marks the due round as sent; returns false when that was the last one.
    pub fn advance(&mut self, now: Instant) -> bool {
        self.remaining -= 1;
        if self.remaining <= 0 {
            return false;
        }
        let p = &self.params;
        let done = p.rounds - self.remaining; // rounds sent so far, >= 1
        let mut delay = p.initial.saturating_add((done - 1).saturating_mul(p.step));
        if delay < 0 || delay > p.max {
            delay = p.max;
        }
        self.due = now + Duration::from_millis(delay.max(0) as u64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_qemus_byte_for_byte() {
        let f = rarp_frame("52:54:00:12:34:56".parse().unwrap());
        // The dump in research/qemu-wire-formats.md, as QEMU 7.2 sent it.
        let dump = "ff ff ff ff ff ff 52 54 00 12 34 56 80 35 00 01 \
                    08 00 06 04 00 03 52 54 00 12 34 56 00 00 00 00 \
                    52 54 00 12 34 56 00 00 00 00 00 00 00 00 00 00 \
                    00 00 00 00 00 00 00 00 00 00 00 00";
        let want: Vec<u8> = dump
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        assert_eq!(want.len(), 60);
        assert_eq!(f.to_vec(), want);
    }

    fn schedule(initial: i64, max: i64, rounds: i64, step: i64) -> Vec<u64> {
        let t0 = Instant::now();
        let params = AnnounceParams {
            initial,
            max,
            rounds,
            step,
            interfaces: None,
            id: String::new(),
        };
        let Some(mut t) = AnnounceTimer::start(params, t0) else {
            return vec![];
        };
        let mut at = vec![];
        loop {
            at.push((t.due - t0).as_millis() as u64);
            let now = t.due;
            if !t.advance(now) {
                return at;
            }
        }
    }

    #[test]
    fn schedule_matches_qemu() {
        // Observed on QEMU 7.2 (research/qemu-wire-formats.md).
        assert_eq!(schedule(50, 550, 4, 50), vec![0, 50, 150, 300]);
        assert_eq!(schedule(100, 120, 3, 100), vec![0, 100, 220]);
        assert_eq!(schedule(50, 550, 0, 50), Vec::<u64>::new());
        assert_eq!(schedule(-1, 30, 3, 10), vec![0, 30, 39]);
        assert_eq!(schedule(10, 5, 2, 1), vec![0, 5]);
    }
}
