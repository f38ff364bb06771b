//! The sockets behind `socket`, `stream`, `dgram` and `l2tpv3` ports, opened with socket2.
//! The raw pieces are few and each is justified where it stands: the classic BPF filter that
//! keeps a multicast port from hearing its own frames, taking over an inherited descriptor
//! (`fd=N`), and the probe for UDP GSO.

use crate::addr::SockAddr;
use socket2::{Domain, Protocol, SockAddr as Sa, SockFilter, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

/// IP protocol number of L2TPv3 over IP.
pub const IPPROTO_L2TP: i32 = 115;

fn domain_of(a: &SocketAddr) -> Domain {
    if a.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// Removes a stale unix socket file (one nobody listens on) so bind can take the path.
fn clear_stale_socket(path: &Path) -> io::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// A non-blocking listening stream socket (TCP or unix).
pub fn listen(addr: &SockAddr) -> io::Result<OwnedFd> {
    let s = match addr {
        SockAddr::Inet(a) => {
            let s = Socket::new(domain_of(a), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.bind(&(*a).into())?;
            s
        }
        SockAddr::Unix(p) => {
            clear_stale_socket(p)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
            s.bind(&Sa::unix(p)?)?;
            s
        }
        SockAddr::Fd(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot listen on an inherited descriptor",
            ))
        }
    };
    s.listen(1)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Takes one waiting connection, if any. The connection is blocking (io_uring drives it).
pub fn accept(listener: &OwnedFd) -> io::Result<Option<(OwnedFd, String)>> {
    let l = Socket::from(listener.try_clone()?);
    match l.accept() {
        Ok((s, peer)) => {
            s.set_nonblocking(false)?;
            let _ = s.set_tcp_nodelay(true);
            let peer = peer
                .as_socket()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unix".into());
            Ok(Some((s.into(), peer)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Connects a stream socket (bounded by `timeout`).
pub fn connect(addr: &SockAddr, timeout: Duration) -> io::Result<OwnedFd> {
    let s = match addr {
        SockAddr::Inet(a) => {
            let s = Socket::new(domain_of(a), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
            s.connect_timeout(&(*a).into(), timeout)?;
            let _ = s.set_tcp_nodelay(true);
            s
        }
        SockAddr::Unix(p) => {
            let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
            s.connect(&Sa::unix(p)?)?;
            s
        }
        SockAddr::Fd(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot connect an inherited descriptor",
            ))
        }
    };
    Ok(s.into())
}

/// A UDP socket bound to `local` and connected to `remote`: reads and writes carry one frame
/// each, and only the peer's datagrams are received.
pub fn udp(local: SocketAddr, remote: SocketAddr) -> io::Result<OwnedFd> {
    let s = Socket::new(
        domain_of(&local),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&local.into())?;
    s.connect(&remote.into())?;
    Ok(s.into())
}

/// A unix datagram socket bound to `local` and connected to `remote`. A peer that has not
/// bound its socket yet (or has none there now) is not an error, as in QEMU: the port is
/// connected once it appears (`redial_unix_dgram`), and frames sent before are dropped.
pub fn unix_dgram(local: &Path, remote: &Path) -> io::Result<OwnedFd> {
    clear_stale_socket(local)?;
    let s = Socket::new(Domain::UNIX, Type::DGRAM.cloexec(), None)?;
    s.bind(&Sa::unix(local)?)?;
    let fd: OwnedFd = s.into();
    redial_unix_dgram(&fd, remote)?;
    Ok(fd)
}

/// Connects a unix datagram port's socket to the socket now bound at its peer's path. The
/// kernel cuts the connection when the peer's socket goes away (its next send fails with
/// ECONNREFUSED) and, until then, refuses datagrams from a new peer at the same path; a
/// restarted peer is only reached again this way. An absent peer is not an error: it may
/// come back later, and the socket keeps its old state meanwhile.
pub fn redial_unix_dgram(fd: &OwnedFd, remote: &Path) -> io::Result<()> {
    match socket2::SockRef::from(fd).connect(&Sa::unix(remote)?) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOENT)) => Ok(()),
        r => r,
    }
}

/// A multicast port: a receiving socket joined to `group` (shared with the other members on
/// this host through SO_REUSEADDR, as QEMU binds it) and a sending socket of its own, connected
/// to the group. Multicast loopback is on so local members hear us; the receiving socket
/// drops our own datagrams (by their source port) in the kernel, so frames the switch sent
/// into the group never come back to it.
pub fn mcast(group: SocketAddr, interface: Option<Ipv4Addr>) -> io::Result<(OwnedFd, OwnedFd)> {
    let SocketAddr::V4(g) = group else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "multicast groups are IPv4",
        ));
    };
    let iface = interface.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let tx = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    tx.bind(&SocketAddr::new(IpAddr::V4(iface), 0).into())?;
    tx.set_multicast_loop_v4(true)?;
    if interface.is_some() {
        tx.set_multicast_if_v4(&iface)?;
    }
    tx.connect(&group.into())?;
    let tx_port = tx.local_addr()?.as_socket().map(|a| a.port()).unwrap_or(0);
    let rx = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    rx.set_reuse_address(true)?;
    rx.bind(&SocketAddr::new(IpAddr::V4(*g.ip()), g.port()).into())?;
    rx.join_multicast_v4(g.ip(), &iface)?;
    // On a UDP socket the filter sees the UDP header first: its first 16 bits are the
    // source port.
    let own_port = [
        SockFilter::new(0x28, 0, 0, 0),              // ldh [0]
        SockFilter::new(0x15, 0, 1, tx_port as u32), // jeq #tx_port, drop, accept
        SockFilter::new(0x06, 0, 0, 0),              // ret #0 (drop)
        SockFilter::new(0x06, 0, 0, 0xffff_ffff),    // ret #-1 (accept)
    ];
    rx.attach_filter(&own_port)?;
    Ok((rx.into(), tx.into()))
}

/// An L2TPv3 socket: UDP bound to `src:srcport` and connected to `dst:dstport`, or a raw IP
/// protocol 115 socket bound to `src` and connected to `dst`.
pub fn l2tpv3(src: SocketAddr, dst: SocketAddr, udp_mode: bool) -> io::Result<OwnedFd> {
    let s = if udp_mode {
        let s = Socket::new(domain_of(&src), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s
    } else {
        Socket::new(
            domain_of(&src),
            Type::RAW.cloexec(),
            Some(Protocol::from(IPPROTO_L2TP)),
        )?
    };
    s.bind(&src.into())?;
    s.connect(&dst.into())?;
    Ok(s.into())
}

/// Takes an inherited socket; returns it with whether it is a stream socket.
pub fn inherited(raw: i32) -> io::Result<(OwnedFd, bool)> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the descriptor is open and was handed to this process with fd=N, so the
    // process owns it from here on (as QEMU does).
    let s = unsafe { Socket::from_raw_fd(raw) };
    let ty = s.r#type()?;
    let stream = if ty == Type::STREAM {
        true
    } else if ty == Type::DGRAM {
        false
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {raw} is neither a stream nor a datagram socket"),
        ));
    };
    Ok((s.into(), stream))
}

/// Whether the kernel takes UDP_SEGMENT (GSO) on this UDP socket: probed once, so a kernel
/// without it falls back to one send per frame.
pub fn udp_gso_supported(fd: &OwnedFd) -> bool {
    const UDP_SEGMENT: libc::c_int = 103;
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which lives across the call.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0
}
