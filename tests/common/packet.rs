//! `PacketSocket`: an AF_PACKET raw socket bound to one interface of a namespace, to inject
//! arbitrary Ethernet frames (below the IP stack, of any size the MTU allows) and to capture
//! the frames that arrive. The socket owns its fd and closes it on drop.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{MacAddr, Netns};

/// A raw socket on one interface. Frames it sends go out of the interface as they are:
/// through a tap, that means into the userspace side (the switch port).
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
}

/// What a burst did. `refused` frames were handed to the kernel and dropped by the device
/// on the spot (a full tun queue answers `ENOBUFS` and counts the frame in the tap's
/// `tx_dropped`); they are part of what was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct BurstReport {
    pub attempted: u64,
    pub accepted: u64,
    pub refused: u64,
    pub elapsed: Duration,
}

/// An Ethernet II frame of exactly `len` bytes (no FCS): header, then `payload`, then zeros.
pub fn ethernet_frame(
    dst: MacAddr,
    src: MacAddr,
    ethertype: u16,
    payload: &[u8],
    len: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(14 + payload.len()));
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(len.max(f.len()), 0);
    f.truncate(len);
    f
}

impl PacketSocket {
    /// Opens a socket on `ifname` inside `ns`. With `capture` it receives every frame
    /// the interface sees (ETH_P_ALL); without, it only sends.
    pub fn open(ns: &Netns, ifname: &str, capture: bool) -> io::Result<PacketSocket> {
        let name = ifname.to_owned();
        let fd = ns.run(move || open_here(&name, capture))?;
        Ok(PacketSocket {
            fd,
            ifname: ifname.to_owned(),
        })
    }

    /// Hands frames straight to the driver, skipping the qdisc, as traffic generators do.
    pub fn bypass_qdisc(&self) -> io::Result<()> {
        let one: libc::c_int = 1;
        // SAFETY: the option value points to a live c_int of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        cvt(rc).map(drop)
    }

    /// Sends (and receives) frames behind a `virtio_net_hdr` (PACKET_VNET_HDR): a frame sent
    /// may be a GSO segment with a partial checksum, as a vnet_hdr tap's reader sees it.
    #[allow(dead_code)]
    pub fn set_vnet_hdr(&self) -> io::Result<()> {
        const PACKET_VNET_HDR: libc::c_int = 15;
        let one: libc::c_int = 1;
        // SAFETY: the option value points to a live c_int of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        cvt(rc).map(drop)
    }

    /// Sends one frame as it is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for reads of its length for the duration of the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        cvt(n as libc::c_int)?;
        Ok(())
    }

    /// Sends `count` copies of `frame` in `sendmmsg` batches, stopping early at `deadline`.
    /// A refused frame is counted and skipped after a short pause that lets the reader of
    /// the device catch up; any other error ends the burst with that error.
    pub fn send_burst(
        &self,
        frame: &[u8],
        count: u64,
        deadline: Instant,
    ) -> io::Result<BurstReport> {
        const BATCH: usize = 64;
        let start = Instant::now();
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for m in &mut msgs {
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut r = BurstReport::default();
        while r.attempted < count && Instant::now() < deadline {
            let n = (count - r.attempted).min(BATCH as u64) as libc::c_uint;
            // SAFETY: `msgs` holds `n` initialised headers whose single iovec points into
            // `frame`, which outlives the call; the kernel only reads them.
            let sent = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n, 0) };
            if sent < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {}
                    _ => return Err(err),
                }
            } else {
                r.accepted += sent as u64;
                r.attempted += sent as u64;
                if sent as libc::c_uint == n {
                    continue;
                }
                // sendmmsg reports an error only when it sent nothing; a short batch
                // means the next message failed, which on a tap is the full-queue drop.
            }
            r.refused += 1;
            r.attempted += 1;
            std::thread::sleep(Duration::from_micros(20));
        }
        r.elapsed = start.elapsed();
        Ok(r)
    }

    /// The next frame that arrived on the interface (not one this host sent), waiting at
    /// most `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd, count 1.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready <= 0 {
                return None;
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for writes of the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n >= 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                return Some(buf[..n as usize].to_vec());
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Every arriving frame collected for `window`, with its 802.1Q tag put back in place
    /// where the kernel took it out on receive (it moves a tag into the packet's metadata,
    /// which PACKET_AUXDATA reports), as it was on the wire.
    #[allow(dead_code)]
    pub fn collect_on_wire(&self, window: Duration) -> Vec<Vec<u8>> {
        const PACKET_AUXDATA: libc::c_int = 8;
        const TP_STATUS_VLAN_VALID: u32 = 0x10;
        let one: libc::c_int = 1;
        // SAFETY: the option value points to a live c_int of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_AUXDATA,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "PACKET_AUXDATA: {}", io::Error::last_os_error());
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut control = [0u64; 16];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd, count 1.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                break;
            }
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain data; all-zero is a valid (empty) header.
            let mut msg: libc::msghdr = unsafe { mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = mem::size_of_val(&control);
            // SAFETY: the header points at `iov` (into `buf`) and `control`, both live and
            // writable for the lengths given.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                continue;
            }
            let mut f = buf[..n as usize].to_vec();
            // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, within
            // msg_controllen; a PACKET_AUXDATA message carries a tpacket_auxdata, read
            // unaligned.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                        let aux: libc::tpacket_auxdata =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        if aux.tp_status & TP_STATUS_VLAN_VALID != 0 && f.len() >= 12 {
                            let tpid = if aux.tp_vlan_tpid != 0 {
                                aux.tp_vlan_tpid
                            } else {
                                0x8100
                            };
                            let mut tag = tpid.to_be_bytes().to_vec();
                            tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                            f.splice(12..12, tag);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            got.push(f);
        }
        got
    }

    /// Every arriving frame for which `keep` holds, collected for `window`.
    pub fn collect(&self, window: Duration, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(f) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            if keep(&f) {
                got.push(f);
            }
        }
        got
    }

    /// Waits at most `timeout` until each of `n` wanted frames has arrived, in any order
    /// (frames that cross between workers may overtake one another): `which(frame)` says
    /// which of them a frame is, if any. Returns which were seen.
    pub fn wait_for_all(
        &self,
        timeout: Duration,
        n: usize,
        which: impl Fn(&[u8]) -> Option<usize>,
    ) -> Vec<bool> {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![false; n];
        while seen.contains(&false) {
            let Some(f) = self.recv(deadline.saturating_duration_since(Instant::now())) else {
                break;
            };
            if let Some(s) = which(&f).and_then(|i| seen.get_mut(i)) {
                *s = true;
            }
        }
        seen
    }

    /// Waits at most `timeout` for an arriving frame for which `want` holds.
    pub fn wait_for(&self, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        while let Some(f) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            if want(&f) {
                return Some(f);
            }
        }
        None
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// Opens and binds the socket in the calling thread's namespace.
fn open_here(ifname: &str, capture: bool) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(ifname).expect("interface name has no NUL");
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // Protocol 0 receives nothing until bind: binding with ETH_P_ALL then hooks this one
    // interface only, so no frame of another interface slips in between.
    // SAFETY: plain socket(2) call; the returned fd is owned below.
    let fd = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = if capture {
        (libc::ETH_P_ALL as u16).to_be()
    } else {
        0
    };
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    cvt(rc)?;
    Ok(fd)
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// IEEE 802 "local experimental" EtherType: no protocol handler in the kernel claims it.
pub const ETHERTYPE_TEST: u16 = 0x88b5;
pub const ETHERTYPE_IPV4: u16 = 0x0800;

/// A 60-byte test frame whose payload starts with `marker`, recognisable in a capture.
pub fn marked(dst: MacAddr, src: MacAddr, marker: &[u8]) -> Vec<u8> {
    ethernet_frame(dst, src, ETHERTYPE_TEST, marker, 60)
}

/// Whether `frame`'s payload starts with `marker`.
pub fn carries(frame: &[u8], marker: &[u8]) -> bool {
    frame.get(14..14 + marker.len()) == Some(marker)
}
