//! The raw message structures the kernel reads while a send is in flight — `msghdr`, `iovec`
//! arrays and control messages — behind safe builders. This module and `uring.rs` are the only
//! places in the data plane that touch them.
//!
//! A builder only records addresses; it never reads or writes through them. Whoever submits
//! the message (with `Ring::push_sendmsg`/`push_writev`, both `unsafe`) promises that the
//! builder and every buffer it names stay put and unchanged until the completion is reaped:
//! builders are boxed by their owners, and frames' buffers are held by references.
//!
//! `Datagrams` is the one synchronous send: its `send_now` borrows what it sends for the
//! call, so it is safe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// UDP_SEGMENT (linux/udp.h): the GSO segment size of a UDP send.
const UDP_SEGMENT: libc::c_int = 103;

/// Room for one control message carrying a u16, 8-byte aligned (CMSG_SPACE(2) is 24 on
/// 64-bit Linux).
const CMSG_WORDS: usize = 4;

/// A `sendmsg` header, its iovec array and room for one control message.
pub struct SendMsg {
    msg: libc::msghdr,
    iovs: Box<[libc::iovec]>,
    cmsg: [u64; CMSG_WORDS],
    n: usize,
    bytes: usize,
}

// SAFETY: the raw pointers in a SendMsg point only into its own boxed storage and into pool
// buffers or port-owned memory that travel with it; it is built and submitted by the one
// thread that owns the port, and moving it between threads before that (a port is made on
// the control thread and handed to its worker) does not touch what they point at.
unsafe impl Send for SendMsg {}

impl SendMsg {
    /// A message of at most `max_iovs` pieces, boxed so its address never changes.
    pub fn new(max_iovs: usize) -> Box<SendMsg> {
        Box::new(SendMsg {
            // SAFETY: msghdr is plain data for which all-zero is a valid (empty) header.
            msg: unsafe { std::mem::zeroed() },
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                max_iovs
            ]
            .into_boxed_slice(),
            cmsg: [0; CMSG_WORDS],
            n: 0,
            bytes: 0,
        })
    }

    /// Forgets the pieces and the control message.
    #[inline]
    pub fn clear(&mut self) {
        self.n = 0;
        self.bytes = 0;
        self.msg.msg_control = std::ptr::null_mut();
        self.msg.msg_controllen = 0;
    }

    /// Appends `len` bytes at `ptr`; false when the message is full.
    #[inline]
    pub fn push(&mut self, ptr: *const u8, len: usize) -> bool {
        let Some(iov) = self.iovs.get_mut(self.n) else {
            return false;
        };
        *iov = libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        self.n += 1;
        self.bytes += len;
        true
    }

    /// Pieces so far.
    #[cfg(test)]
    fn pieces(&self) -> usize {
        self.n
    }

    /// Bytes in all pieces.
    #[inline]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Asks the kernel to cut the payload into UDP datagrams of `size` bytes (UDP GSO).
    pub fn set_udp_segment(&mut self, size: u16) {
        self.cmsg = [0; CMSG_WORDS];
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(2) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&self.cmsg));
        self.msg.msg_control = self.cmsg.as_mut_ptr().cast();
        self.msg.msg_controllen = space;
        // SAFETY: msg_control points at `cmsg`, 32 bytes, 8-byte aligned, and msg_controllen
        // (CMSG_SPACE of a u16) fits in it; CMSG_FIRSTHDR therefore returns a header inside it
        // with room for the u16 written through CMSG_DATA.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&self.msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
        }
    }

    /// The header, pointing at the pieces and control message recorded so far, for
    /// `Ring::push_sendmsg`.
    #[inline]
    pub fn header(&mut self) -> *const libc::msghdr {
        self.msg.msg_iov = self.iovs.as_mut_ptr();
        self.msg.msg_iovlen = self.n;
        &self.msg
    }
}

/// Two pieces for one `writev`: a header and a frame.
pub struct IoPair {
    iov: [libc::iovec; 2],
}

// SAFETY: as for `SendMsg`: the pointers name port-owned memory and pool buffers, used by the
// owning thread only.
unsafe impl Send for IoPair {}

impl Default for IoPair {
    fn default() -> Self {
        IoPair {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
        }
    }
}

impl IoPair {
    /// Records `a` then `b`.
    #[inline]
    pub fn set(&mut self, a: (*const u8, usize), b: (*const u8, usize)) {
        self.iov = [
            libc::iovec {
                iov_base: a.0 as *mut libc::c_void,
                iov_len: a.1,
            },
            libc::iovec {
                iov_base: b.0 as *mut libc::c_void,
                iov_len: b.1,
            },
        ];
    }

    /// Length of the second piece (the frame).
    #[inline]
    pub fn second_len(&self) -> usize {
        self.iov[1].iov_len
    }

    /// The array, for `Ring::push_writev`.
    #[inline]
    pub fn as_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }
}

/// Room for the datagrams of one synchronous `sendmmsg` (`send_now`).
pub struct Datagrams {
    hdrs: Box<[libc::mmsghdr]>,
    iovs: Box<[libc::iovec]>,
}

// SAFETY: the raw pointers in the arrays are only written and read inside `send_now`, while
// the slices they were taken from are borrowed; between calls they are stale and never
// followed.
unsafe impl Send for Datagrams {}

impl Datagrams {
    /// Room for `max` datagrams per call.
    pub fn new(max: usize) -> Datagrams {
        Datagrams {
            // SAFETY: mmsghdr is plain data for which all-zero is a valid (empty) header.
            hdrs: (0..max).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                max
            ]
            .into_boxed_slice(),
        }
    }

    /// The most datagrams one call sends.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends each of `datagrams` (the first `capacity` of them) as one datagram on `fd`, in
    /// order, with one `sendmmsg` that never waits (MSG_DONTWAIT; MSG_NOSIGNAL): returns how
    /// many the kernel took, which stops short at the first it had no room for (or failed).
    /// `WouldBlock` when it had no room for the first, another error when the first failed.
    pub fn send_now<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        datagrams: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for (d, (h, iov)) in datagrams
            .into_iter()
            .zip(self.hdrs.iter_mut().zip(self.iovs.iter_mut()))
        {
            *iov = libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: the first `n` headers each name one iovec of `self.iovs`, and each iovec a
        // slice borrowed for `'a`, which outlives this call; the kernel reads them during the
        // call only (it copies the bytes into its own buffers) and writes only `msg_len`.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_the_segment_size_land_where_the_kernel_reads_them() {
        let mut m = SendMsg::new(2);
        let a = [1u8; 10];
        let b = [2u8; 20];
        assert!(m.push(a.as_ptr(), a.len()));
        assert!(m.push(b.as_ptr(), b.len()));
        assert!(!m.push(b.as_ptr(), 1), "full");
        m.set_udp_segment(1400);
        let h = m.header();
        // SAFETY: `h` points into `m`, alive and unchanged for these reads.
        unsafe {
            assert_eq!((*h).msg_iovlen, 2);
            assert_eq!((*(*h).msg_iov.add(1)).iov_len, 20);
            let c = libc::CMSG_FIRSTHDR(h);
            assert_eq!(
                ((*c).cmsg_level, (*c).cmsg_type),
                (libc::SOL_UDP, UDP_SEGMENT)
            );
            assert_eq!(
                std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u16>()),
                1400
            );
        }
        assert_eq!((m.pieces(), m.bytes()), (2, 30));
        m.clear();
        assert_eq!((m.pieces(), m.bytes()), (0, 0));
    }

    fn seq_socketpair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().expect("socketpair");
        (a.into(), b.into())
    }

    #[test]
    fn datagrams_go_in_order_and_stop_where_the_peer_is_full() {
        use std::os::fd::AsFd;
        let (a, b) = seq_socketpair();
        let mut d = Datagrams::new(8);
        assert_eq!(d.capacity(), 8);
        let frames: Vec<Vec<u8>> = (0..20000u32)
            .map(|i| {
                let mut f = vec![0u8; 1500];
                f[..4].copy_from_slice(&i.to_be_bytes());
                f
            })
            .collect();
        assert_eq!(d.send_now(a.as_fd(), std::iter::empty()).unwrap(), 0);
        let mut sent = 0;
        let mut blocked = false;
        // Bounded: the socket's send buffer holds far fewer than 20,000 such datagrams.
        while sent < frames.len() {
            match d.send_now(a.as_fd(), frames[sent..].iter().map(|f| &f[..])) {
                Ok(n) => {
                    assert!((1..=8).contains(&n));
                    sent += n;
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    blocked = true;
                    break;
                }
            }
        }
        assert!(blocked, "the peer never filled up");
        assert!(sent > 8, "sent {sent}");
        let b = std::os::unix::net::UnixDatagram::from(b);
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2000];
        for i in 0..sent as u32 {
            let n = b.recv(&mut buf).expect("a datagram per frame");
            assert_eq!(n, 1500);
            assert_eq!(buf[..4], i.to_be_bytes());
        }
        assert!(b.recv(&mut buf).is_err(), "nothing more");
    }

    #[test]
    fn a_failed_first_datagram_is_its_error() {
        use std::os::fd::AsFd;
        let (a, b) = seq_socketpair();
        drop(b);
        let mut d = Datagrams::new(4);
        let f = [0u8; 60];
        let e = d.send_now(a.as_fd(), [&f[..], &f[..]]).unwrap_err();
        assert_ne!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
