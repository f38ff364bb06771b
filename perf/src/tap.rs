//! `Tap`: one tap device (IFF_TAP | IFF_NO_PI) opened through /dev/net/tun. It owns the
//! fd; a read returns exactly one Ethernet frame and a write sends exactly one. If the
//! named device exists (a persistent tap) it is attached, otherwise the kernel creates a
//! non-persistent one that disappears with the fd. Nothing here configures the kernel
//! side of the device (link state, addresses, namespace): that is the caller's business.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::ifname::IfName;

const TUN_PATH: &str = "/dev/net/tun";

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("opening {TUN_PATH} failed (is the tun module loaded, and are we root?): {0}")]
    OpenTun(io::Error),
    #[error("TUNSETIFF for tap '{0}' failed (busy, not a tap, or no CAP_NET_ADMIN): {1}")]
    SetIff(IfName, io::Error),
    #[error("the kernel named the tap '{0}', which is not a valid interface name")]
    KernelName(String),
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: IfName,
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl Tap {
    /// Attaches to the tap `name`, creating it if it does not exist.
    pub fn open(name: &IfName) -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let fd = OwnedFd::from(file);

        // SAFETY: all-zero is a valid ifreq (empty name, zero union).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = name.to_ifr_name();
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates the ifreq, which is live and writable; the
        // fd is an open /dev/net/tun.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(TapError::SetIff(name.clone(), io::Error::last_os_error()));
        }
        let bytes: Vec<u8> = req
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let actual = String::from_utf8_lossy(&bytes).into_owned();
        let name = IfName::new(&actual).map_err(|_| TapError::KernelName(actual))?;
        Ok(Tap { fd, name })
    }

    /// The device's name as the kernel reports it.
    pub fn name(&self) -> &IfName {
        &self.name
    }

    /// Blocks until one frame arrives and copies it into `buf` (truncated if longer).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live, writable slice of the length passed.
        let rc = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Sends `frame` as one Ethernet frame into the kernel side of the tap.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is a live slice of the length passed; the kernel only reads it.
        let rc = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn can_open_taps() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        root && std::path::Path::new(TUN_PATH).exists()
    }

    #[test]
    fn creates_a_non_persistent_tap_that_vanishes_on_drop() {
        if !can_open_taps() {
            eprintln!("skipped: needs root and {TUN_PATH}");
            return;
        }
        let name = IfName::new(&format!("rsp{}t", std::process::id() % 1_000_000)).unwrap();
        let sys = format!("/sys/class/net/{name}");
        {
            let tap = Tap::open(&name).unwrap();
            assert_eq!(tap.name(), &name);
            assert!(std::path::Path::new(&sys).exists());
        }
        assert!(!std::path::Path::new(&sys).exists(), "tap outlived its fd");
    }

    #[test]
    fn second_open_of_a_busy_tap_is_refused() {
        if !can_open_taps() {
            eprintln!("skipped: needs root and {TUN_PATH}");
            return;
        }
        let name = IfName::new(&format!("rsp{}b", std::process::id() % 1_000_000)).unwrap();
        let _first = Tap::open(&name).unwrap();
        assert!(matches!(Tap::open(&name), Err(TapError::SetIff(..))));
    }

    #[test]
    fn write_to_a_down_tap_fails_without_blocking() {
        if !can_open_taps() {
            eprintln!("skipped: needs root and {TUN_PATH}");
            return;
        }
        let name = IfName::new(&format!("rsp{}w", std::process::id() % 1_000_000)).unwrap();
        let tap = Tap::open(&name).unwrap();
        assert!(
            tap.write(&[0u8; 60]).is_err(),
            "a down tap accepted a frame"
        );
    }
}
