//! `PacketSocket`: an AF_PACKET/SOCK_RAW socket bound to one interface, sending and
//! receiving whole Ethernet frames (without FCS) in batches with `sendmmsg`/`recvmmsg`.
//! It owns the fd and nothing else; frame memory belongs to the caller's
//! [`TxBatch`]/[`RxBatch`]. Only frames the kernel accepted are reported as sent.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::batch::{RxBatch, TxBatch};
use crate::ifname::IfName;
use crate::mac::MacAddr;

/// Which received frames the socket is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// None: a send-only socket, which costs the receive path nothing.
    Nothing,
    /// Only frames of this ethertype.
    Ethertype(u16),
}

/// Why a packet socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("no interface named '{0}' in this network namespace")]
    NoSuchInterface(IfName),
    #[error("creating an AF_PACKET socket failed (it needs CAP_NET_RAW): {0}")]
    Socket(io::Error),
    #[error("binding the packet socket to '{0}' failed: {1}")]
    Bind(IfName, io::Error),
    #[error("setting socket option {0} failed: {1}")]
    Option(&'static str, io::Error),
    #[error("reading the MAC address of '{0}' failed: {1}")]
    HwAddr(IfName, io::Error),
}

/// Kernel-side counters of a receiving socket since the previous call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Frames that matched the socket (delivered or not).
    pub packets: u32,
    /// Frames the kernel dropped because the socket's receive queue was full.
    pub drops: u32,
}

/// An AF_PACKET raw socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: IfName,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl PacketSocket {
    /// Opens a raw packet socket on `ifname`, receiving what `listen` says.
    pub fn bind(ifname: &IfName, listen: Listen) -> Result<PacketSocket, PacketError> {
        let c_name = ifname.to_cstring();
        // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(PacketError::NoSuchInterface(ifname.clone()));
        }
        // Protocol 0 at creation: the socket receives nothing until bind() names the
        // interface, so it never sees other interfaces' traffic.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        let raw = cvt(raw).map_err(PacketError::Socket)?;
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let protocol = match listen {
            Listen::Nothing => 0,
            Listen::Ethertype(t) => t.to_be(),
        };
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is an initialised sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        cvt(rc).map_err(|e| PacketError::Bind(ifname.clone(), e))?;
        Ok(PacketSocket {
            fd,
            ifname: ifname.clone(),
        })
    }

    pub fn ifname(&self) -> &IfName {
        &self.ifname
    }

    fn set_int(
        &self,
        level: libc::c_int,
        opt: libc::c_int,
        name: &'static str,
        v: libc::c_int,
    ) -> Result<(), PacketError> {
        // SAFETY: `v` is a live c_int and its size is passed; the kernel only reads it.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        cvt(rc).map(drop).map_err(|e| PacketError::Option(name, e))
    }

    /// Has the kernel stamp every received frame with its receive time (CLOCK_REALTIME),
    /// read back through [`RxBatch::stamp`].
    pub fn set_timestamps(&self) -> Result<(), PacketError> {
        self.set_int(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS", 1)
    }

    /// Hands sent frames straight to the driver, skipping the qdisc layer.
    pub fn set_qdisc_bypass(&self) -> Result<(), PacketError> {
        self.set_int(
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            "PACKET_QDISC_BYPASS",
            1,
        )
    }

    /// Stops the socket from seeing frames sent out of its own interface.
    pub fn set_ignore_outgoing(&self) -> Result<(), PacketError> {
        self.set_int(
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            "PACKET_IGNORE_OUTGOING",
            1,
        )
    }

    /// Asks for a receive buffer of `bytes`, above the sysctl limit if privileged.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<(), PacketError> {
        let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE", v)
            .or_else(|_| self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF", v))
    }

    /// Makes a blocking receive give up after `d` with no frame.
    pub fn set_recv_timeout(&self, d: Duration) -> Result<(), PacketError> {
        let tv = libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: `tv` is a live timeval and its size is passed; the kernel only reads it.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        cvt(rc)
            .map(drop)
            .map_err(|e| PacketError::Option("SO_RCVTIMEO", e))
    }

    /// The interface's own MAC address.
    pub fn hw_addr(&self) -> Result<MacAddr, PacketError> {
        // SAFETY: all-zero is a valid ifreq (empty name, zero union).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = self.ifname.to_ifr_name();
        // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr inside `req`, which
        // is a live, writable ifreq.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
        cvt(rc).map_err(|e| PacketError::HwAddr(self.ifname.clone(), e))?;
        // SAFETY: after a successful SIOCGIFHWADDR the hwaddr member is the active one.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(data.iter()) {
            *dst = *src as u8;
        }
        Ok(MacAddr(mac))
    }

    /// Sends frames `range` of `batch`; returns how many the kernel accepted, which may be
    /// fewer than asked (the rest were not sent).
    pub fn send_batch(&self, batch: &mut TxBatch, range: Range<usize>) -> io::Result<usize> {
        let hdrs = batch.headers(range);
        // SAFETY: `hdrs` are valid mmsghdrs whose iovecs point into `batch`, which stays
        // mutably borrowed (so alive and unmoved) for the whole call.
        let rc = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                0,
            )
        };
        cvt(rc).map(|n| n as usize)
    }

    /// Waits for at least one frame (up to the receive timeout), then takes whatever else
    /// is queued, up to the batch size. Returns 0 when the timeout passed with no frame.
    pub fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        let hdrs = batch.headers();
        // SAFETY: `hdrs` are valid mmsghdrs whose iovecs point into `batch`, which stays
        // mutably borrowed for the whole call; the timeout pointer may be null.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        match cvt(rc) {
            Ok(n) => {
                batch.set_filled(n as usize);
                Ok(n as usize)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The kernel's match and drop counters since the previous call (reading resets them).
    pub fn statistics(&self) -> io::Result<PacketStats> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` and `len` are live and writable; `len` holds the size of `st`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        cvt(rc)?;
        Ok(PacketStats {
            packets: st.tp_packets,
            drops: st.tp_drops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{self, Frame, Repr};

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn unknown_interface_is_reported_by_name() {
        let name = IfName::new("rsperf-nosuch0").unwrap();
        match PacketSocket::bind(&name, Listen::Nothing) {
            Err(PacketError::NoSuchInterface(n)) => assert_eq!(n, name),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("bound to a missing interface"),
        }
    }

    /// Sends probes on loopback and receives them on a second socket: exercises bind,
    /// batch send, batch receive and the timeout path with real kernel objects.
    #[test]
    fn loopback_batch_send_is_received_in_order() {
        if !is_root() {
            eprintln!("skipped: needs CAP_NET_RAW");
            return;
        }
        let lo = IfName::new("lo").unwrap();
        let ethertype = probe::ETHERTYPE;
        let rx = PacketSocket::bind(&lo, Listen::Ethertype(ethertype)).unwrap();
        rx.set_ignore_outgoing().unwrap();
        rx.set_recv_timeout(Duration::from_millis(200)).unwrap();
        let tx = PacketSocket::bind(&lo, Listen::Nothing).unwrap();
        tx.set_qdisc_bypass().unwrap();

        let stream = std::process::id() ^ 0x5a5a_0000;
        let mut batch = TxBatch::new(8, 60);
        for i in 0..8 {
            let mut f = Frame::new_checked(batch.frame_mut(i)).unwrap();
            let repr = Repr {
                dst: MacAddr([0; 6]),
                src: MacAddr([0; 6]),
                stream,
                seq: i as u64,
                tx_ns: 0,
            };
            repr.emit(&mut f);
        }
        assert_eq!(tx.send_batch(&mut batch, 0..8).unwrap(), 8);

        let mut got = Vec::new();
        let mut rb = RxBatch::new(16, 2048);
        for _ in 0..20 {
            if rx.recv_batch(&mut rb).unwrap() == 0 {
                break;
            }
            for f in rb.frames() {
                let r = Repr::parse(&Frame::new_checked(f).unwrap()).unwrap();
                if r.stream == stream {
                    got.push(r.seq);
                }
            }
            if got.len() >= 8 {
                break;
            }
        }
        assert_eq!(got, (0..8).collect::<Vec<u64>>());
        assert_eq!(rx.statistics().unwrap().drops, 0);
    }
}
