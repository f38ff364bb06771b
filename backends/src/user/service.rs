//! `Service`: a user port's libslirp on a thread of its own. libslirp is not thread-safe and
//! wants its own poll loop and timers, so one thread per port owns the `Stack` and runs that
//! loop: it polls libslirp's sockets, its end of the port's data socket pair and a wake-up
//! eventfd for commands. The worker serves the other end of the pair as it serves a
//! `vnet_hdr` tap: frames cross between the two as datagrams, each behind a virtio-net
//! header (so libslirp's TCP segments can cross joined, as one GSO frame: `outbox`), and
//! neither ever waits for the other (a full socket drops a frame, counted; TCP inside libslirp sends it again).
//! Commands (`hostfwd-add`/`-remove`, stop) come over a channel and are answered there.
//! Dropping the Service stops the thread, which frees libslirp, its sockets and the pair.

use super::gro::Gro;
use super::hostfwd::{HostFwd, HostFwdKey};
use super::options::UserOptions;
use super::slirp::{Stack, StackCounters};
use ringswitch_switch::gso::{complete_checksum, Segmenter};
use ringswitch_switch::port::packed::{PACKED_MAX, PACK_PREFIX};
use ringswitch_switch::Offload;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Most frames taken from the switch in one round before libslirp's sockets get a turn.
const RX_BUDGET: usize = 256;
/// Most frames taken from the switch with one `recvmmsg`.
const RX_BATCH: usize = 32;
/// Socket buffer asked for on both ends of the pair (needs CAP_NET_ADMIN past wmem_max).
const PAIR_BUFFER: libc::c_int = 4 << 20;
/// The longest the thread sleeps without libslirp asking for less.
const MAX_WAIT_MS: u32 = 1000;
/// The largest frame that crosses the pair (the switch's frame limit).
const MAX_FRAME: usize = 65536;
/// A datagram from the switch: one or more records (a 4-byte big-endian length, then a
/// virtio-net header and a frame of that length together; `TapPort::packed`).
const SLOT: usize = PACKED_MAX;

enum Cmd {
    AddHostFwd(String, HostFwd, Sender<Result<(), String>>),
    RemoveHostFwd(HostFwdKey, Sender<bool>),
    Info(Sender<String>),
    Stop,
}

/// A running user port's libslirp thread.
pub struct Service {
    tx: Sender<Cmd>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<StackCounters>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn set_buffers(fd: RawFd) {
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: `fd` is an open socket; the option value is a c_int of the given size.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&PAIR_BUFFER as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

/// The data socket pair: (the worker's end, blocking; the thread's end, non-blocking).
fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut sv = [-1; 2];
    // SAFETY: `sv` has room for the two descriptors socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded: both are open descriptors that nothing else owns.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    // SAFETY: `b` is an open descriptor; F_SETFL with O_NONBLOCK changes only its flags.
    cvt(unsafe { libc::fcntl(b.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
    set_buffers(a.as_raw_fd());
    set_buffers(b.as_raw_fd());
    Ok((a, b))
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the result is checked.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn kick(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a live u64 to an open eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

impl Service {
    /// Starts libslirp as `o` says on a thread named after the port, with its forwarding
    /// rules set up; returns the Service and the worker's end of the data socket pair. The
    /// error is QEMU's text for a rule libslirp refused.
    pub fn start(name: &str, o: &UserOptions) -> Result<(Service, OwnedFd), String> {
        let (worker_end, slirp_end) = pair().map_err(|e| format!("socketpair: {e}"))?;
        let wake = Arc::new(eventfd().map_err(|e| format!("eventfd: {e}"))?);
        let counters = Arc::new(StackCounters::default());
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = channel();
        let thread = {
            let (o, wake, counters) = (o.clone(), wake.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("slirp-{name}"))
                .spawn(move || run(o, slirp_end, wake, counters, rx, ready_tx))
                .map_err(|e| format!("cannot start the user network thread: {e}"))?
        };
        let svc = Service {
            tx,
            wake,
            thread: Some(thread),
            counters,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((svc, worker_end)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the user network thread ended at start".into()),
        }
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Cmd) -> Option<T> {
        let (tx, rx) = channel();
        self.tx.send(make(tx)).ok()?;
        kick(&self.wake);
        rx.recv().ok()
    }

    /// `hostfwd_add`: sets up `rule` (QEMU's syntax); the error is QEMU's text.
    pub fn hostfwd_add(&self, rule: &str) -> Result<(), String> {
        let r = HostFwd::parse(rule).map_err(|e| e.to_string())?;
        self.ask(|tx| Cmd::AddHostFwd(rule.to_string(), r, tx))
            .unwrap_or_else(|| Err("the user network thread has stopped".into()))
    }

    /// `hostfwd_remove`: Ok(true) removed, Ok(false) no such rule; Err for a bad key.
    pub fn hostfwd_remove(&self, rule: &str) -> Result<bool, String> {
        let k = HostFwdKey::parse(rule).ok_or("invalid format")?;
        Ok(self.ask(|tx| Cmd::RemoveHostFwd(k, tx)).unwrap_or(false))
    }

    /// libslirp's connection table (QEMU's `info usernet`).
    pub fn info(&self) -> String {
        self.ask(Cmd::Info).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        kick(&self.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets up the rules QEMU sets up at start, in its order and with its error texts.
fn set_up(stack: &mut Stack, o: &UserOptions) -> Result<(), String> {
    for (rule, g) in &o.guestfwd {
        if !stack.add_guestfwd(g) {
            return Err(format!(
                "Conflicting/invalid host:port in guest forwarding rule '{rule}'"
            ));
        }
    }
    for (rule, h) in &o.hostfwd {
        if !stack.add_hostfwd(h) {
            return Err(format!("Could not set up host forwarding rule '{rule}'"));
        }
    }
    Ok(())
}

/// The thread: owns the Stack from birth to death.
fn run(
    o: UserOptions,
    data: OwnedFd,
    wake: Arc<OwnedFd>,
    counters: Arc<StackCounters>,
    rx: Receiver<Cmd>,
    ready: Sender<Result<(), String>>,
) {
    let Some(mut stack) = Stack::new(&o, data.as_raw_fd(), counters) else {
        let _ = ready.send(Err("libslirp refused the configuration".into()));
        return;
    };
    if let Err(e) = set_up(&mut stack, &o) {
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok(()));
    let mut rx_buf = vec![0u8; RX_BATCH * SLOT];
    let mut piece = vec![0u8; MAX_FRAME];
    let mut gro = Gro::default();
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(64);
    loop {
        fds.clear();
        fds.push(libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.push(libc::pollfd {
            fd: data.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout = stack.fill(&mut fds, MAX_WAIT_MS);
        // SAFETY: `fds` is a valid array of fds.len() pollfds.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.min(i32::MAX as u32) as i32,
            )
        };
        let error = n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted;
        if n < 0 {
            for f in fds.iter_mut() {
                f.revents = 0;
            }
        }
        if fds[0].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reading 8 bytes into a live u64 from the eventfd (non-blocking).
            unsafe { libc::read(wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Stop => return,
                Cmd::AddHostFwd(rule, r, reply) => {
                    let ok = stack.add_hostfwd(&r);
                    let _ = reply.send(if ok {
                        Ok(())
                    } else {
                        Err(format!("Could not set up host forwarding rule '{rule}'"))
                    });
                }
                Cmd::RemoveHostFwd(k, reply) => {
                    let _ = reply.send(stack.remove_hostfwd(&k));
                }
                Cmd::Info(reply) => {
                    let _ = reply.send(stack.connection_info());
                }
            }
        }
        if fds[1].revents != 0 {
            take_frames(&data, &mut rx_buf, &mut piece, &mut gro, &mut stack);
        }
        stack.poll(&fds, 2, error);
        stack.flush();
    }
}

/// Takes what the switch sent (at most RX_BUDGET frames, RX_BATCH per `recvmmsg`), joins runs
/// of TCP segments (`gro`), hands it all to libslirp and sends what libslirp answered.
fn take_frames(data: &OwnedFd, buf: &mut [u8], piece: &mut [u8], gro: &mut Gro, stack: &mut Stack) {
    let mut taken = 0;
    let mut input = |f: &[u8]| stack.input(f);
    while taken < RX_BUDGET {
        let base = buf.as_mut_ptr();
        let mut iov: [libc::iovec; RX_BATCH] = std::array::from_fn(|i| libc::iovec {
            // SAFETY: `buf` holds RX_BATCH slots of SLOT bytes; slot i starts in it.
            iov_base: unsafe { base.add(i * SLOT) }.cast(),
            iov_len: SLOT,
        });
        let mut hdrs: [libc::mmsghdr; RX_BATCH] = std::array::from_fn(|i| {
            // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h
        });
        // SAFETY: `hdrs` are RX_BATCH valid headers, each with one iovec of a slot of `buf`,
        // all live for the call; the socket is non-blocking (MSG_DONTWAIT as well).
        let r = unsafe {
            libc::recvmmsg(
                data.as_raw_fd(),
                hdrs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r <= 0 {
            break;
        }
        let n = r as usize;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            let len = (h.msg_len as usize).min(SLOT);
            let mut d = &mut buf[i * SLOT..i * SLOT + len];
            while let Some((record, rest)) = next_record(d) {
                let (hdr, frame) = record.split_at_mut(Offload::WIRE_LEN);
                let o = Offload::parse(&(*hdr).try_into().expect("a header's length"));
                take_one(frame, &o, piece, gro, &mut input);
                d = rest;
            }
        }
        taken += n;
        if n < RX_BATCH {
            break;
        }
    }
    gro.flush(&mut input);
    let joined = std::mem::take(&mut gro.joined);
    stack.count_joined(joined);
    stack.flush();
}

/// The first record of a packed datagram `d` (a virtio-net header and its frame) and the
/// rest; None at the end, or where the rest is not a whole record (the switch never sends
/// one; a cut datagram loses only its tail).
fn next_record(d: &mut [u8]) -> Option<(&mut [u8], &mut [u8])> {
    let (prefix, rest) = d.split_first_chunk_mut::<PACK_PREFIX>()?;
    let len = u32::from_be_bytes(*prefix) as usize;
    if len < Offload::WIRE_LEN || len > rest.len() {
        return None;
    }
    Some(rest.split_at_mut(len))
}

/// One frame from the switch, behind its header `o`, to `gro`. The port takes offloads, so a
/// station's TSO segment comes whole: a TCP/IPv4 one (its IP length the whole datagram's, as
/// Linux and virtio senders write it) has its checksum completed and goes to libslirp as one
/// datagram, as a run `gro` joined would; other GSO frames are cut here (`Segmenter`), and a
/// frame with a partial checksum has it completed. A frame whose header does not fit it is
/// dropped.
pub(super) fn take_one(
    frame: &mut [u8],
    o: &Offload,
    piece: &mut [u8],
    gro: &mut Gro,
    input: &mut impl FnMut(&[u8]),
) {
    let gso = o.gso_type & !Offload::GSO_ECN;
    if o.is_plain() {
        gro.push(frame, input);
    } else if gso == Offload::GSO_NONE || (gso == Offload::GSO_TCPV4 && whole_ipv4(frame)) {
        if complete_checksum(frame, o).is_ok() {
            gro.push(frame, input);
        }
    } else if let Ok(s) = Segmenter::new(frame, o, MAX_FRAME) {
        for i in 0..s.count() {
            let n = s.write(frame, i, piece);
            gro.push(&piece[..n], input);
        }
    }
}

/// Whether `f` is an IPv4 datagram (no VLAN tag) whose total length is the frame's rest.
fn whole_ipv4(f: &[u8]) -> bool {
    f.len() > 34
        && f[12..14] == [0x08, 0x00]
        && usize::from(u16::from_be_bytes([f[16], f[17]])) + 14 == f.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netdev::{parse_netdev, NetdevKind};

    fn opts(s: &str) -> UserOptions {
        match parse_netdev(s).unwrap().kind {
            NetdevKind::User(o) => *o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rules_are_added_and_removed_live_and_a_taken_port_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (svc, _fd) = Service::start("t", &opts("user,id=t")).unwrap();
        let rule = format!("tcp:127.0.0.1:{port}-:22");
        assert_eq!(
            svc.hostfwd_add(&rule),
            Err(format!("Could not set up host forwarding rule '{rule}'"))
        );
        drop(taken);
        assert_eq!(svc.hostfwd_add(&rule), Ok(()));
        // The host side listens now.
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
        assert_eq!(
            svc.hostfwd_remove(&format!("tcp:127.0.0.1:{port}")),
            Ok(true)
        );
        assert_eq!(
            svc.hostfwd_remove(&format!("tcp:127.0.0.1:{port}")),
            Ok(false)
        );
        assert_eq!(svc.hostfwd_remove("tcp:x"), Err("invalid format".into()));
        assert!(svc
            .hostfwd_add("tcp::1")
            .unwrap_err()
            .contains("Bad host port separator"));
        assert!(svc.info().contains("Protocol"), "{}", svc.info());
    }

    #[test]
    fn a_rule_that_cannot_be_set_up_fails_the_start_with_qemus_text() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = Service::start(
            "t",
            &opts(&format!("user,id=t,hostfwd=tcp:127.0.0.1:{port}-:22")),
        )
        .unwrap_err();
        assert_eq!(
            e,
            format!("Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:22'")
        );
    }

    /// An ARP request from 52:54:00:12:34:56 / 10.0.2.15 for `ip`, as a packed record:
    /// its length, an all-zero virtio-net header, the frame.
    fn arp_record(ip: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; Offload::WIRE_LEN];
        f.extend([0xffu8; 6]);
        f.extend([
            0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1,
        ]);
        f.extend([0x52, 0x54, 0, 0x12, 0x34, 0x56, 10, 0, 2, 15]);
        f.extend([0, 0, 0, 0, 0, 0]);
        f.extend(ip);
        f.resize(Offload::WIRE_LEN + 60, 0);
        let mut r = (f.len() as u32).to_be_bytes().to_vec();
        r.extend(f);
        r
    }

    #[test]
    fn the_stack_answers_each_record_of_a_packed_datagram_through_the_pair() {
        let (svc, fd) = Service::start("t", &opts("user,id=t")).unwrap();
        // One datagram, two records (the gateway's and the DNS server's addresses asked
        // for), and a cut third record that is ignored.
        let mut d = arp_record([10, 0, 2, 2]);
        d.extend(arp_record([10, 0, 2, 3]));
        d.extend(&arp_record([10, 0, 2, 2])[..30]);
        // SAFETY: `d` is d.len() readable bytes; `fd` is the open worker end of the pair.
        let sent = unsafe { libc::send(fd.as_raw_fd(), d.as_ptr().cast(), d.len(), 0) };
        assert_eq!(sent as usize, d.len());
        let mut answered = Vec::new();
        for _ in 0..2 {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1, "no answer");
            let mut buf = [0u8; 1600];
            // SAFETY: `buf` has buf.len() writable bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n >= 12 + 42, "{n}");
            assert_eq!(&buf[..12], &[0; 12], "a plain frame's header");
            let buf = &buf[12..];
            assert_eq!(&buf[12..14], &[0x08, 0x06]);
            assert_eq!(&buf[20..22], &[0, 2], "an ARP reply");
            answered.push(buf[31]);
        }
        answered.sort();
        assert_eq!(answered, [2, 3]);
        assert_eq!(
            svc.counters
                .to_slirp
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    proptest::proptest! {
        /// Records packed as the worker packs them come back whole and in order, and any
        /// bytes at all end the walk without a panic, each record inside the datagram.
        #[test]
        fn packed_records_come_back_in_order_and_garbage_never_panics(
            frames in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20),
            garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let mut d = Vec::new();
            for f in &frames {
                d.extend(((Offload::WIRE_LEN + f.len()) as u32).to_be_bytes());
                d.extend([7u8; Offload::WIRE_LEN]);
                d.extend(f);
            }
            let mut rest = &mut d[..];
            let mut got = Vec::new();
            while let Some((r, tail)) = next_record(rest) {
                got.push(r[Offload::WIRE_LEN..].to_vec());
                rest = tail;
            }
            proptest::prop_assert_eq!(&got, &frames);
            let mut g = garbage.clone();
            let total = g.len();
            let mut rest = &mut g[..];
            let mut taken = 0;
            while let Some((r, tail)) = next_record(rest) {
                proptest::prop_assert!(r.len() >= Offload::WIRE_LEN);
                taken += PACK_PREFIX + r.len();
                rest = tail;
            }
            proptest::prop_assert!(taken <= total);
        }
    }

    #[test]
    fn records_are_taken_in_order_and_a_cut_or_impossible_one_ends_the_datagram() {
        let mut d = arp_record([10, 0, 2, 2]);
        d.extend(arp_record([10, 0, 2, 3]));
        let whole = d.len();
        let mut seen = 0;
        let mut left = whole;
        let mut rest = &mut d[..];
        while let Some((r, tail)) = next_record(rest) {
            assert_eq!(r.len(), Offload::WIRE_LEN + 60);
            seen += 1;
            left = tail.len();
            rest = tail;
        }
        assert_eq!((seen, left), (2, 0));
        // Cut anywhere inside the second record: only the first is taken.
        for cut in whole / 2 + 1..whole {
            let mut d2 = d[..cut].to_vec();
            let (_, tail) = next_record(&mut d2).unwrap();
            assert!(next_record(tail).is_none(), "cut at {cut}");
        }
        // A length too short for a header, or a prefix alone.
        assert!(next_record(&mut [0, 0, 0, 4, 1, 2, 3, 4]).is_none());
        assert!(next_record(&mut [0, 0, 0]).is_none());
        assert!(next_record(&mut []).is_none());
    }
}
