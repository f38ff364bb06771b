//! CPU masks of threads: the set a thread may run on, beyond `core_affinity`'s one core.

use std::io;

/// The CPUs the calling thread may run on.
pub fn current_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all-zero bytes are an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, inside the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Lets the calling thread run on exactly `cpus` (threads it starts later inherit the set).
pub fn set_current_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as above, an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {c}"),
            ));
        }
        // SAFETY: `c` is below CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread (the control plane) off the worker cores `taken`, onto the rest
/// of the CPUs it may use. Returns the CPUs it now runs on; when no other CPU is left it
/// stays where it is and returns `None`.
pub fn avoid_cpus(taken: &[usize]) -> io::Result<Option<Vec<usize>>> {
    let rest: Vec<usize> = current_cpus()?
        .into_iter()
        .filter(|c| !taken.contains(c))
        .collect();
    if rest.is_empty() {
        return Ok(None);
    }
    set_current_cpus(&rest)?;
    Ok(Some(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip_on_a_thread_of_its_own() {
        std::thread::spawn(|| {
            let all = current_cpus().unwrap();
            assert!(!all.is_empty());
            if all.len() < 2 {
                assert_eq!(avoid_cpus(&all).unwrap(), None);
                return;
            }
            let rest = avoid_cpus(&all[..1]).unwrap().unwrap();
            assert_eq!(rest, all[1..].to_vec());
            assert_eq!(current_cpus().unwrap(), all[1..].to_vec());
            set_current_cpus(&all).unwrap();
            assert_eq!(current_cpus().unwrap(), all);
        })
        .join()
        .unwrap();
    }
}
