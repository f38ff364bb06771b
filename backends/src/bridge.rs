//! Attaching a tap to a Linux bridge over rtnetlink (RTM_NEWLINK with IFLA_MASTER), and
//! setting it up, as QEMU's bridge helper does — without running a helper.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const IFLA_MASTER: u16 = 10;

fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad name '{name}'"))?;
    // SAFETY: if_nametoindex reads the NUL-terminated string, which lives across the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(format!("no interface named '{name}'"));
    }
    Ok(i)
}

fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; a non-negative result is a new descriptor.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One RTM_NEWLINK request for `index`: flags (IFF_UP) and optionally IFLA_MASTER.
fn request(index: u32, master: Option<u32>, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    let attr_len = if master.is_some() { 8 } else { 0 };
    let total = 16 + 16 + attr_len;
    m.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    m.push(libc::AF_UNSPEC as u8); // ifi_family
    m.push(0); // pad
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&(index as i32).to_ne_bytes());
    m.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_flags
    m.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_change
    if let Some(master) = master {
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&IFLA_MASTER.to_ne_bytes());
        m.extend_from_slice(&master.to_ne_bytes());
    }
    m
}

fn transact(sock: &OwnedFd, msg: &[u8]) -> Result<(), String> {
    // SAFETY: sends `msg.len()` bytes from a live slice on a socket we own (to the kernel).
    let n = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: receives into a live buffer of the given length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 36 {
        return Err("short netlink answer".into());
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty != libc::NLMSG_ERROR as u16 {
        return Err(format!("unexpected netlink answer type {ty}"));
    }
    let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if err != 0 {
        return Err(io::Error::from_raw_os_error(-err).to_string());
    }
    Ok(())
}

/// Enslaves `tap` to bridge `br` and sets it up.
pub fn attach(tap: &str, br: &str) -> Result<(), String> {
    let t = ifindex(tap)?;
    let b = ifindex(br)?;
    let is_bridge = std::path::Path::new(&format!("/sys/class/net/{br}/bridge")).exists();
    if !is_bridge {
        return Err(format!("'{br}' is not a bridge"));
    }
    let sock = netlink().map_err(|e| format!("netlink: {e}"))?;
    transact(&sock, &request(t, Some(b), 1))?;
    Ok(())
}
