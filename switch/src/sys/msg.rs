//! The raw message structures the kernel reads while a send is in flight — `msghdr`, `iovec`
//! arrays and control messages — behind safe builders. This module and `uring.rs` are the only
//! places in the data plane that touch them.
//!
//! A builder only records addresses; it never reads or writes through them. Whoever submits
//! the message (with `Ring::push_sendmsg`/`push_writev`, both `unsafe`) promises that the
//! builder and every buffer it names stay put and unchanged until the completion is reaped:
//! builders are boxed by their owners, and frames' buffers are held by references.

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
}
