//! The raw kernel calls the filter needs, each behind a safe function: attaching a program
//! to a tap (`TUNSETFILTEREBPF`) or to a socket (`SO_ATTACH_BPF`), detaching it, and asking a
//! socket its type and the process its capabilities. Nothing else in the crate is `unsafe`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IOR('T', 225, int)`: sets (or with -1 clears) the eBPF program a tap runs on every frame
/// headed to its reader; 0 from the program drops the frame.
const TUNSETFILTEREBPF: libc::c_ulong = 0x8004_54e1;

/// Sets the tap's filter to `prog`, or clears it with `None`. The filter belongs to the tap
/// device, not to the fd: every queue of a multiqueue tap runs it, and a persistent tap keeps
/// it after its fds close.
pub(crate) fn tun_set_filter(tap: BorrowedFd<'_>, prog: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let prog_fd: libc::c_int = prog.map_or(-1, |p| p.as_raw_fd());
    // SAFETY: the ioctl reads one int through the pointer, which points at `prog_fd`, alive
    // for the call; `tap` is a valid open fd for the call's duration (BorrowedFd).
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETFILTEREBPF, &prog_fd) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_ATTACH_BPF` with `prog`'s fd, or `SO_DETACH_BPF` with `None`.
pub(crate) fn socket_set_filter(
    sock: BorrowedFd<'_>,
    prog: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let rc = match prog {
        Some(p) => {
            let fd: libc::c_int = p.as_raw_fd();
            // SAFETY: the option value is the int `fd`, alive for the call, with its exact
            // size passed; `sock` is a valid open fd for the call's duration.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_BPF,
                    (&fd as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        }
        None => {
            // The kernel ignores the value but, as for every SOL_SOCKET option, wants an int.
            let unused: libc::c_int = 0;
            // SAFETY: the option value is the int `unused`, alive for the call, with its
            // exact size passed; `sock` is a valid open fd for the call's duration.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_DETACH_BPF,
                    (&unused as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The socket's `SO_TYPE` (`SOCK_DGRAM`, `SOCK_STREAM`, …); an error for a non-socket fd.
pub(crate) fn socket_type(sock: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    let mut ty: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `ty`, an int that lives across the
    // call, and updates `len`; `sock` is a valid open fd for the call's duration.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ty)
}

/// Whether the effective user is root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
