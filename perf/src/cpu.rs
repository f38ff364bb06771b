//! Pinning the calling thread to one CPU with `sched_setaffinity`. Threads spawned after
//! the call inherit the mask, which is how `rs-rwfwd` keeps both of its directions on the
//! single core it is given.

use std::io;

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
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(PinError::OutOfRange(cpu));
    }
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is an initialised cpu_set_t of the size passed; pid 0 = calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(PinError::Kernel(cpu, io::Error::last_os_error()));
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
pub fn current_affinity() -> io::Result<Vec<usize>> {
    // SAFETY: all-zero is a valid empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable and its size is passed; pid 0 = calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: every index is below CPU_SETSIZE, inside `set`.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
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
}
