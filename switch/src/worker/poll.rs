//! How a worker waits between passes: `PollMode` and the adaptive poll's self-tuning budget.
//!
//! Sleeping in `io_uring_enter` costs a wake-up when the next frame comes, and on a virtual
//! machine a wake-up now and then costs milliseconds, long enough for a tap's kernel queue to
//! overflow. Polling instead — looking at the completion queue and the ring's "work pending"
//! flag, which costs no system call, and entering the kernel only when there is something to
//! submit or complete — never pays a wake-up, but keeps the core busy. The adaptive mode polls
//! for a while after the last work and then sleeps; how long ("the budget") follows the gaps
//! it sees between bursts of work:
//!
//! - work that came while polling (the gap was shorter than the budget) keeps the budget, or
//!   grows it to twice that gap: polling paid off;
//! - work that came after a sleep, within the longest budget allowed, grows the budget to
//!   twice that gap, so the next such gap is caught while polling;
//! - work that came after a gap longer than the longest budget halves it (down to the
//!   shortest): polling would not have caught it, so it costs CPU for nothing.
//!
//! An idle switch sleeps; a loaded one never does; a sparse stream costs the shortest budget
//! per frame. No allocation, no system call.

use std::time::{Duration, Instant};

/// How a worker waits for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollMode {
    /// Poll after work for a self-tuning while (bounded by `poll_max`), then sleep.
    Adaptive,
    /// Never sleep: the worker's core is the switch's alone.
    Busy,
    /// Sleep in `io_uring_enter` whenever nothing is ready (ringswitch before polling).
    Sleep,
}

/// The shortest adaptive budget.
const MIN_BUDGET: Duration = Duration::from_micros(5);

/// The adaptive poll's state.
pub(super) struct Poller {
    mode: PollMode,
    max: Duration,
    budget: Duration,
    /// When the last pass with work ended.
    last_work: Instant,
    /// Passes since then found nothing (a gap is open).
    in_gap: bool,
    /// The gap was ended by waking from a sleep.
    slept: bool,
}

impl Poller {
    pub(super) fn new(mode: PollMode, max: Duration) -> Poller {
        let max = max.max(MIN_BUDGET);
        Poller {
            mode,
            max,
            budget: max / 2,
            last_work: Instant::now(),
            in_gap: false,
            slept: false,
        }
    }

    pub(super) fn mode(&self) -> PollMode {
        self.mode
    }

    /// The current budget.
    pub(super) fn budget(&self) -> Duration {
        self.budget
    }

    /// A pass at `now` had work.
    #[inline]
    pub(super) fn worked(&mut self, now: Instant) {
        if self.in_gap && self.mode == PollMode::Adaptive {
            let gap = now.saturating_duration_since(self.last_work);
            self.budget = if !self.slept {
                self.budget.max(gap * 2).min(self.max)
            } else if gap <= self.max {
                (gap * 2).clamp(MIN_BUDGET, self.max)
            } else {
                (self.budget / 2).max(MIN_BUDGET)
            };
        }
        self.in_gap = false;
        self.slept = false;
        self.last_work = now;
    }

    /// A pass at `now` found nothing to do.
    #[inline]
    pub(super) fn idle(&mut self) {
        self.in_gap = true;
    }

    /// Whether the worker should sleep now rather than poll again.
    #[inline]
    pub(super) fn should_sleep(&self, now: Instant) -> bool {
        match self.mode {
            PollMode::Sleep => true,
            PollMode::Busy => false,
            PollMode::Adaptive => {
                self.in_gap && now.saturating_duration_since(self.last_work) >= self.budget
            }
        }
    }

    /// The worker slept.
    #[inline]
    pub(super) fn slept(&mut self) {
        self.slept = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn busy_never_sleeps_and_sleep_always_does() {
        let t = Instant::now();
        let mut b = Poller::new(PollMode::Busy, us(100));
        b.idle();
        assert!(!b.should_sleep(t + Duration::from_secs(10)));
        let s = Poller::new(PollMode::Sleep, us(100));
        assert!(s.should_sleep(t));
    }

    #[test]
    fn adaptive_polls_through_short_gaps_and_gives_up_on_long_ones() {
        let t0 = Instant::now();
        let mut p = Poller::new(PollMode::Adaptive, us(100));
        p.worked(t0);
        assert!(!p.should_sleep(t0), "no gap open yet: work goes on");
        p.idle();
        assert!(!p.should_sleep(t0 + us(10)));
        assert!(
            p.should_sleep(t0 + us(60)),
            "half the maximum to begin with"
        );
        // A gap of 40 µs caught while polling: the budget covers twice that.
        p.worked(t0 + us(40));
        assert_eq!(p.budget(), us(80));
        // Gaps far longer than the maximum: polling does not pay, the budget shrinks.
        let mut t = t0 + us(40);
        for _ in 0..10 {
            p.idle();
            p.slept();
            t += Duration::from_millis(5);
            p.worked(t);
        }
        assert_eq!(p.budget(), MIN_BUDGET);
        // A gap of 30 µs after a sleep: next time it is caught while polling.
        p.idle();
        p.slept();
        p.worked(t + us(30));
        assert_eq!(p.budget(), us(60));
    }
}
