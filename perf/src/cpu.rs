//! Pinning the calling thread to one CPU (`core_affinity`, `sched_setaffinity` underneath).
//! Threads spawned after the call inherit the mask, which is how `rs-rwfwd` keeps both of its
//! directions on the single core it is given.

use std::io;

use core_affinity::CoreId;

/// Why the thread could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("CPU {0} is out of range; this build supports CPUs 0..{max}", max = libc::CPU_SETSIZE)]
    OutOfRange(usize),
    #[error("sched_setaffinity to CPU {0} failed (is it online and allowed here?): {1}")]
    Kernel(usize, io::Error),
}

/// Restricts the calling thread to CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<(), PinError> {
    // core_affinity indexes a cpu_set_t with `cpu` (a panic past its end): check first.
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(PinError::OutOfRange(cpu));
    }
    if !core_affinity::set_for_current(CoreId { id: cpu }) {
        // errno is still that of the failed sched_setaffinity.
        return Err(PinError::Kernel(cpu, io::Error::last_os_error()));
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
pub fn current_affinity() -> io::Result<Vec<usize>> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        // errno is still that of the failed sched_getaffinity.
        .ok_or_else(io::Error::last_os_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_restricts_this_thread_to_one_cpu() {
        // Run in a fresh thread so the test harness's other threads keep their mask.
        std::thread::spawn(|| {
            let allowed = current_affinity().unwrap();
            let cpu = *allowed.last().unwrap();
            pin_current_thread(cpu).unwrap();
            assert_eq!(current_affinity().unwrap(), vec![cpu]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn out_of_range_cpu_is_rejected_before_the_kernel() {
        assert!(matches!(
            pin_current_thread(1 << 20),
            Err(PinError::OutOfRange(_))
        ));
    }

    #[test]
    fn a_cpu_that_does_not_exist_is_an_error() {
        // CPU_SETSIZE - 1 is in range of the mask but no machine here has that many CPUs.
        let cpu = libc::CPU_SETSIZE as usize - 1;
        std::thread::spawn(move || {
            assert!(matches!(
                pin_current_thread(cpu),
                Err(PinError::Kernel(c, _)) if c == cpu
            ));
        })
        .join()
        .unwrap();
    }
}
