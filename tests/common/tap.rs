//! Taps the test itself owns, for the two ways ringswitch attaches to a tap it did not
//! create: a persistent tap found by name (`PersistentTap`, deleted on drop) and an open
//! tap file descriptor handed over with `fd=N` (`open_tap`).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use super::{ip, unique_name};

/// `ip tuntap add NAME mode tap`: a tap that outlives its users until deleted.
pub struct PersistentTap {
    name: String,
}

impl PersistentTap {
    pub fn new() -> PersistentTap {
        let name = unique_name("rst");
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        PersistentTap { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PersistentTap {
    fn drop(&mut self) {
        // Moved into a namespace that is gone already, the tap went with it; otherwise it
        // is still in the root namespace.
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.name])
            .output();
    }
}

/// Creates (or attaches to) tap `name` through /dev/net/tun, as QEMU's caller would before
/// passing `fd=N`: Ethernet frames, no packet-information header. The tap lives while any
/// process holds the descriptor.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    assert!(name.len() < libc::IFNAMSIZ);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // struct ifreq: the name, then a union whose first member is ifr_flags.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    // SAFETY: `ifr` is a writable buffer at least as large as struct ifreq, laid out as
    // the ioctl expects; the fd is open for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}
