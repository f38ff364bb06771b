//! The monotonic clock shared by generator and sink: `MonoTime` is CLOCK_MONOTONIC in
//! nanoseconds, the clock stamped into probe frames. Network namespaces share it, so a
//! frame sent in one namespace and received in another on the same host measures its
//! one-way latency. `sleep_until` paces the generator with absolute deadlines, so
//! oversleeping once does not shift every later frame.

use std::time::Duration;

/// A point on CLOCK_MONOTONIC, in nanoseconds since an unspecified start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MonoTime(pub u64);

impl MonoTime {
    pub fn now() -> MonoTime {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
        // so the call cannot fail and only writes `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        MonoTime(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    pub fn nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time.
    pub fn plus(self, d: Duration) -> MonoTime {
        MonoTime(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Sleeps until `deadline` on CLOCK_MONOTONIC (returns at once if it has passed).
///
/// A deadline that has passed returns at once, and one less than `SPIN` away is waited for
/// by spinning: on a virtual machine even an expired timer costs a timer-interrupt round
/// trip of tens of microseconds, which would pace a generator far below its rate. Longer
/// sleeps wake that late too; a caller with an absolute schedule catches up afterwards.
pub fn sleep_until(deadline: MonoTime) {
    const SPIN: Duration = Duration::from_micros(10);
    // Bounded by the deadline: the clock moves forward.
    loop {
        let left = deadline.since(MonoTime::now());
        if left.is_zero() {
            return;
        }
        if left > SPIN {
            break;
        }
        std::hint::spin_loop();
    }
    let ts = libc::timespec {
        tv_sec: (deadline.0 / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline.0 % 1_000_000_000) as libc::c_long,
    };
    // A bounded number of retries: each one only happens after a signal interrupted the
    // sleep, and the deadline is absolute, so retrying never extends it.
    for _ in 0..1000 {
        // SAFETY: `ts` is a valid timespec; with TIMER_ABSTIME the remainder pointer is
        // unused and may be null.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds, read with the realtime clock
/// between two monotonic readings (so the error is half their distance). Converts the
/// kernel's receive stamps (realtime) to the probes' monotonic time.
pub fn realtime_offset_ns() -> i128 {
    fn read(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec and both clocks exist on Linux.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    }
    let m0 = read(libc::CLOCK_MONOTONIC);
    let r = read(libc::CLOCK_REALTIME);
    let m1 = read(libc::CLOCK_MONOTONIC);
    r - (m0 + m1) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_moves_forward_and_sleep_until_waits_for_deadline() {
        let start = MonoTime::now();
        let deadline = start.plus(Duration::from_millis(5));
        sleep_until(deadline);
        let end = MonoTime::now();
        assert!(end >= deadline);
        assert!(end.since(start) >= Duration::from_millis(5));
        assert_eq!(start.since(end), Duration::ZERO);
    }

    #[test]
    fn realtime_offset_is_stable_between_readings() {
        let a = realtime_offset_ns();
        let b = realtime_offset_ns();
        // Both clocks tick at the same rate; two readings differ by reading error only.
        assert!((a - b).abs() < 1_000_000, "offsets {a} and {b}");
        assert!(a > 0, "realtime is after boot");
    }
}
