//! Attaching a port's program to its tap (`TUNSETFILTEREBPF`) or datagram socket
//! (`SO_ATTACH_BPF`), and detaching it. The kernel holds the program while it is attached;
//! the `Attachment` only remembers how to take it off.

use std::os::fd::BorrowedFd;

use crate::{sys, BpfDomain, BpfError, PortBit};

/// A program attached to a tap or a socket. Dropping it leaves the program attached; the
/// kernel lets it go with the socket, or with the tap device (which may outlive its fds:
/// then [`Attachment::detach`] or [`detach_tap`]).
#[must_use = "the program stays attached; keep this to detach it"]
#[derive(Debug)]
pub struct Attachment {
    target: Target,
    bit: PortBit,
    eth_off: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Tap,
    Socket,
}

impl Attachment {
    pub fn bit(&self) -> PortBit {
        self.bit
    }

    /// Where the program reads the Ethernet frame in what it is given.
    pub fn eth_offset(&self) -> u32 {
        self.eth_off
    }

    /// Removes the program from `fd`, which must be the tap or socket it was attached to
    /// (or, for a tap, another fd of the same device).
    pub fn detach(self, fd: BorrowedFd<'_>) -> Result<(), BpfError> {
        match self.target {
            Target::Tap => detach_tap(fd),
            Target::Socket => sys::socket_set_filter(fd, None).map_err(|source| BpfError::Attach {
                what: "socket (SO_DETACH_BPF)",
                source,
            }),
        }
    }
}

/// Clears whatever filter program the tap behind `tap` runs (one a previous run left on a
/// persistent tap, say).
pub fn detach_tap(tap: BorrowedFd<'_>) -> Result<(), BpfError> {
    sys::tun_set_filter(tap, None).map_err(|source| BpfError::Attach {
        what: "tap (TUNSETFILTEREBPF -1)",
        source,
    })
}

impl BpfDomain {
    /// Attaches the program of port `bit` to a tap: it runs on every frame the kernel hands
    /// to the tap's reader (the frame at offset 0).
    pub fn attach_tap(&self, tap: BorrowedFd<'_>, bit: PortBit) -> Result<Attachment, BpfError> {
        let prog = self.program(bit, 0)?;
        sys::tun_set_filter(tap, Some(prog.fd())).map_err(|source| BpfError::Attach {
            what: "tap (TUNSETFILTEREBPF)",
            source,
        })?;
        Ok(Attachment {
            target: Target::Tap,
            bit,
            eth_off: 0,
        })
    }

    /// Attaches the program of port `bit` to a datagram socket whose datagrams carry the
    /// Ethernet frame at `eth_off`: 8 for UDP (the program sees the UDP header first), 0 for
    /// a unix datagram socket. Stream sockets are refused: dropping a piece of a stream
    /// would corrupt it.
    pub fn attach_socket(
        &self,
        sock: BorrowedFd<'_>,
        bit: PortBit,
        eth_off: u32,
    ) -> Result<Attachment, BpfError> {
        let ty = sys::socket_type(sock).map_err(|source| BpfError::Attach {
            what: "socket (SO_TYPE)",
            source,
        })?;
        if ty == libc::SOCK_STREAM {
            return Err(BpfError::StreamSocket);
        }
        let prog = self.program(bit, eth_off)?;
        sys::socket_set_filter(sock, Some(prog.fd())).map_err(|source| BpfError::Attach {
            what: "socket (SO_ATTACH_BPF)",
            source,
        })?;
        Ok(Attachment {
            target: Target::Socket,
            bit,
            eth_off,
        })
    }
}
