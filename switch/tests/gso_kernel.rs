//! `gso::Segmenter` against Linux's own software GSO, byte for byte.
//!
//! Two fresh network namespaces: in the first a tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
//! 12-byte virtio-net header) and a veth sit in a Linux bridge; the veth's peer sits in the
//! second, where an AF_PACKET socket captures. The bridge side of the veth has TSO, GSO,
//! GRO, USO, scatter-gather and transmit checksumming off, so the kernel cuts every GSO
//! frame written into the tap in software (`validate_xmit_skb` → `skb_gso_segment`) and
//! completes every partial checksum (`skb_checksum_help`) before the veth carries it.
//! Thousands of generated frames (TCP with options over IPv4 with options or IPv6, USO, UFO,
//! VLAN tags, flags, partial checksums, MTU 1500 and 9000) go in; what is captured must equal
//! what `Segmenter` writes for the same frame and header.
//!
//! Where the capture differs from the wire, and why it is put back: the receiving stack
//! moves a frame's outer VLAN tag into metadata (`skb_vlan_untag`) before packet sockets
//! see it, so the tag comes with `PACKET_AUXDATA` and is reinserted here, as libpcap does.
//!
//! What is left out, and why: a TCP frame whose payload fits one segment but whose payload
//! and TCP options together do not. `virtio_net_hdr_to_skb` measures the payload from the
//! transport header plus 20 bytes (a TCP header without options), so it marks such a frame
//! GSO; `tcp_gso_segment` then finds nothing to cut and the kernel drops it. `Segmenter`
//! sends it whole instead. Such frames are not generated.
//!
//! Needs root, /dev/net/tun, `ip` and `ethtool`. Without them it says why and passes,
//! unless CI=true, where it fails. Everything it creates is named `rsgso<pid>…` and removed
//! by guards, on failure too.

use ringswitch_switch::frame::Offload;
use ringswitch_switch::gso::checksum::{pseudo_header_v4, pseudo_header_v6};
use ringswitch_switch::gso::wire::{Ipv4Repr, Ipv6Repr, TcpRepr, UdpRepr};
use ringswitch_switch::gso::{
    Segmenter, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP,
    GSO_UDP_L4,
};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// The whole test stays under a minute; generation stops here.
const BUDGET: Duration = Duration::from_secs(40);
/// Cases per MTU, unless the budget runs out first.
const CASES: usize = 6000;
const MTUS: [u32; 2] = [1500, 9000];
const VNET_HDR_LEN: usize = 12;

const DST: [u8; 6] = [0x02, 0x52, 0x53, 0, 0, 0x02];
const SRC: [u8; 6] = [0x02, 0x52, 0x53, 0, 0, 0x01];

// ---------------------------------------------------------------------------------------
// Privileges and tools.

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    for (tool, arg) in [("ip", "-V"), ("ethtool", "--version")] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!(
                "`{tool}` is not installed (apt-get install -y iproute2 ethtool)"
            ));
        }
    }
    None
}

/// Runs a command line (words split at spaces; the names here have none); returns stdout.
fn sh(line: &str) -> String {
    let mut words = line.split_whitespace();
    let program = words.next().expect("a command");
    let out = Command::new(program)
        .args(words)
        .output()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(
        out.status.success(),
        "{line} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// Namespaces, bridge, veth.

/// Network namespaces this test created, deleted (with everything in them) on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) {
        sh(&format!("ip netns add {name}"));
        self.0.push(name.to_string());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that joined namespace `ns` (setns moves only the calling thread).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: the fd names a namespace file that stays open across the call; setns with
        // CLONE_NEWNET changes only this thread, which is ours alone.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The test bed: names, the tap and the capture socket (closed before the namespaces go).
struct Bed {
    tap: OwnedFd,
    capture: OwnedFd,
    ns_bridge: String,
    ns_peer: String,
    veth: String,
    peer: String,
    tap_name: String,
    bridge: String,
    /// Declared last: dropped after the descriptors.
    _namespaces: Namespaces,
}

impl Bed {
    fn new() -> Bed {
        let pid = std::process::id();
        let name = |suffix: &str| format!("rsgso{pid}{suffix}");
        let (ns_bridge, ns_peer) = (name("a"), name("b"));
        let (tap_name, bridge, veth, peer) = (name("t"), name("r"), name("v"), name("p"));
        let mut namespaces = Namespaces(Vec::new());
        namespaces.add(&ns_bridge);
        namespaces.add(&ns_peer);
        for ns in [&ns_bridge, &ns_peer] {
            in_netns(ns, || {
                // No router or neighbour solicitations of the kernel's own on the links.
                for conf in ["all", "default"] {
                    let _ =
                        std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
                }
                // br_netfilter (when built in) would validate and trim IP packets on the bridge.
                for t in ["iptables", "ip6tables", "arptables"] {
                    let _ = std::fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{t}"), "0");
                }
            });
        }
        let (a, b) = (&ns_bridge, &ns_peer);
        sh(&format!(
            "ip -n {a} link add {bridge} type bridge stp_state 0 forward_delay 0"
        ));
        sh(&format!(
            "ip -n {a} link add {veth} type veth peer name {peer} netns {b}"
        ));
        let t = tap_name.clone();
        let tap = in_netns(a, move || open_tap(&t)).expect("open the tap");
        sh(&format!("ip -n {a} link set {tap_name} master {bridge}"));
        sh(&format!("ip -n {a} link set {veth} master {bridge}"));
        // The bridge side cuts and checksums in software; the peer side must not merge.
        sh(&format!(
            "ip netns exec {a} ethtool -K {veth} tso off gso off gro off tx off sg off tx-udp-segmentation off"
        ));
        sh(&format!("ip netns exec {b} ethtool -K {peer} gro off"));
        let features = sh(&format!("ip netns exec {a} ethtool -k {veth}"));
        for f in [
            "tcp-segmentation-offload",
            "generic-segmentation-offload",
            "tx-checksumming",
            "tx-udp-segmentation",
        ] {
            assert!(
                features
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{f}: off"))),
                "{veth}: {f} did not turn off:\n{features}"
            );
        }
        for dev in [&tap_name, &veth, &bridge] {
            sh(&format!("ip -n {a} link set {dev} up"));
        }
        sh(&format!("ip -n {b} link set {peer} up"));
        let p = peer.clone();
        let capture =
            in_netns(&ns_peer, move || open_capture(&p)).expect("open the capture socket");
        Bed {
            tap,
            capture,
            ns_bridge,
            ns_peer,
            veth,
            peer,
            tap_name,
            bridge,
            _namespaces: namespaces,
        }
    }

    fn set_mtu(&self, mtu: u32) {
        for dev in [&self.tap_name, &self.veth, &self.bridge] {
            sh(&format!(
                "ip -n {} link set {dev} mtu {mtu}",
                self.ns_bridge
            ));
        }
        sh(&format!(
            "ip -n {} link set {} mtu {mtu}",
            self.ns_peer, self.peer
        ));
    }
}

// ---------------------------------------------------------------------------------------
// The tap and the capture socket.

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: a name and a flags word.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates tap `name` in this thread's namespace with a 12-byte virtio-net header.
fn open_tap(name: &str) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let fd = OwnedFd::from(file);
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `IfReq` has its layout and size
    // (40 bytes) and outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is live for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &size as *const libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// An AF_PACKET socket on `ifname` (this thread's namespace) that captures every frame
/// received there, with `PACKET_AUXDATA` to learn stripped VLAN tags.
fn open_capture(ifname: &str) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: `cname` is a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: the address points to a live sockaddr_ll of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20)?;
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: the option value points to a live timeval of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn setsockopt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one incoming frame of ours (source `SRC`) into `buf` (which needs 4 spare bytes), with the VLAN tag
/// the stack stripped put back; returns where the frame lies in `buf`, or None after the
/// socket's timeout.
fn capture(fd: &OwnedFd, buf: &mut [u8]) -> Option<std::ops::Range<usize>> {
    loop {
        let mut iov = libc::iovec {
            iov_base: buf[4..].as_mut_ptr().cast(),
            iov_len: buf.len() - 4,
        };
        // SAFETY: plain data; all-zero is a valid value to fill in.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut control = [0u64; 16];
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control);
        // SAFETY: every pointer in `msg` points to live buffers of the lengths given, which
        // outlive the call.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return None,
                _ => panic!("recvmsg: {e}"),
            }
        }
        let n = n as usize;
        assert!(n <= buf.len() - 4, "captured frame of {n} bytes truncated");
        // Only our frames: the stack's own (IGMP reports of the bridge, say) are not.
        if from.sll_pkttype == libc::PACKET_OUTGOING || n < 14 || buf[10..16] != SRC {
            continue;
        }
        let mut tag = None;
        // SAFETY: the kernel filled `msg`'s control area; the CMSG macros walk it within
        // `msg_controllen`, and PACKET_AUXDATA carries a tpacket_auxdata (read unaligned).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                        let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                            aux.tp_vlan_tpid
                        } else {
                            0x8100
                        };
                        tag = Some((tpid, aux.tp_vlan_tci));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        return Some(match tag {
            None => 4..4 + n,
            Some((tpid, tci)) => {
                buf.copy_within(4..16, 0);
                buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                buf[14..16].copy_from_slice(&tci.to_be_bytes());
                0..n + 4
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// Generated frames.

/// xorshift64*: small, seedable, good enough to pick sizes and bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp4,
    Tcp6,
    Uso4,
    Uso6,
    Ufo,
    /// No GSO: a partial checksum anywhere, or nothing at all to do.
    Plain,
}

/// A generated frame and its virtio-net header.
struct Case {
    kind: Kind,
    frame: Vec<u8>,
    offload: Offload,
    tags: usize,
    /// Whether the kernel would drop it (see the module comment): not to be sent.
    kernel_drops: bool,
}

impl Case {
    fn describe(&self) -> String {
        let mut s = format!(
            "{:?}, {} bytes, {} VLAN tag(s), {:?}\nframe:",
            self.kind,
            self.frame.len(),
            self.tags,
            self.offload
        );
        for (i, b) in self.frame.iter().enumerate().take(128) {
            if i % 32 == 0 {
                s.push_str("\n  ");
            }
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

fn generate(rng: &mut Rng, mtu: usize) -> Case {
    let kind = match rng.range(0, 99) {
        0..=29 => Kind::Tcp4,
        30..=54 => Kind::Tcp6,
        55..=64 => Kind::Uso4,
        65..=74 => Kind::Uso6,
        75..=86 => Kind::Ufo,
        _ => Kind::Plain,
    };
    let tags = match rng.range(0, 99) {
        0..=59 => 0,
        60..=84 => 1,
        _ => 2,
    };
    let v6 = matches!(kind, Kind::Tcp6 | Kind::Uso6) || (kind == Kind::Plain && rng.chance(50));
    let tcp = matches!(kind, Kind::Tcp4 | Kind::Tcp6) || (kind == Kind::Plain && rng.chance(50));

    // Header sizes first, to size the payload.
    let ip_options = if v6 || rng.chance(70) {
        0
    } else {
        rng.range(1, 10) * 4
    };
    let tcp_options = if rng.chance(40) {
        0
    } else {
        rng.range(1, 10) * 4
    };
    let l3_len = if v6 { 40 } else { 20 + ip_options };
    let l4_hlen = if tcp { 20 + tcp_options } else { 8 };
    let ufo = kind == Kind::Ufo;
    let room = if ufo {
        (mtu - l3_len) & !7
    } else {
        mtu - l3_len - l4_hlen
    };
    let gso_size = if ufo {
        rng.range(1, room / 8) * 8
    } else if rng.chance(40) {
        room - rng.range(0, room.min(64) - 1)
    } else {
        rng.range(1, room)
    };
    // What is cut: the payload, or for UFO the UDP header and payload together.
    let cut_max = 65535 - l3_len - if ufo { 0 } else { l4_hlen };
    let cut_len = if kind == Kind::Plain {
        rng.range(0, mtu - l3_len - l4_hlen + if ufo { 8 } else { 0 })
    } else if rng.chance(15) {
        rng.range(if ufo { 8 } else { 0 }, gso_size)
    } else {
        let max_segs = if matches!(kind, Kind::Uso4 | Kind::Uso6) {
            128
        } else {
            64
        };
        let segs = if rng.chance(80) {
            rng.range(2, 12)
        } else {
            rng.range(2, max_segs)
        };
        ((segs - 1) * gso_size + rng.range(1, gso_size)).min(cut_max)
    };
    let payload_len = if ufo { cut_len - 8 } else { cut_len };

    let mut frame = Vec::with_capacity(18 + 8 + l3_len + l4_hlen + payload_len);
    frame.extend_from_slice(&DST);
    frame.extend_from_slice(&SRC);
    let ip_type: u16 = if v6 { 0x86dd } else { 0x0800 };
    let mut types = Vec::new();
    for _ in 0..tags {
        types.push(if rng.chance(50) { 0x8100u16 } else { 0x88a8 });
    }
    types.push(ip_type);
    frame.extend_from_slice(&types[0].to_be_bytes());
    for next in &types[1..] {
        frame.extend_from_slice(&(rng.next() as u16).to_be_bytes());
        frame.extend_from_slice(&next.to_be_bytes());
    }
    let l4_len = l4_hlen + payload_len;
    let proto = if tcp { 6 } else { 17 };
    let src4 = [10, 7, rng.next() as u8, 1];
    let dst4 = [10, 7, rng.next() as u8, 2];
    let mut src6 = [0u8; 16];
    let mut dst6 = [0u8; 16];
    rng.fill(&mut src6);
    rng.fill(&mut dst6);
    let mut hdr = [0u8; 60];
    if v6 {
        let n = Ipv6Repr {
            traffic_class: rng.next() as u8,
            flow_label: rng.next() as u32 & 0xf_ffff,
            payload_len: l4_len as u16,
            next_header: proto,
            hop_limit: rng.next() as u8,
            src: src6,
            dst: dst6,
        }
        .emit(&mut hdr);
        frame.extend_from_slice(&hdr[..n]);
    } else {
        let mut options = [0u8; 40];
        rng.fill(&mut options);
        let n = Ipv4Repr {
            dscp_ecn: rng.next() as u8,
            total_len: (l3_len + l4_len) as u16,
            ident: rng.next() as u16,
            dont_frag: rng.chance(50),
            more_frags: false,
            frag_offset: 0,
            ttl: rng.next() as u8,
            protocol: proto,
            src: src4,
            dst: dst4,
            options,
            options_len: ip_options as u8,
        }
        .emit(&mut hdr);
        frame.extend_from_slice(&hdr[..n]);
    }
    let l4 = frame.len();
    if tcp {
        let mut options = [0u8; 40];
        rng.fill(&mut options);
        let n = TcpRepr {
            src_port: rng.next() as u16,
            dst_port: rng.next() as u16,
            seq: rng.next() as u32,
            ack: rng.next() as u32,
            flags: rng.next() as u16 & 0x1ff,
            window: rng.next() as u16,
            checksum: rng.next() as u16,
            urgent: rng.next() as u16,
            options,
            options_len: tcp_options as u8,
        }
        .emit(&mut hdr);
        frame.extend_from_slice(&hdr[..n]);
    } else {
        let n = UdpRepr {
            src_port: rng.next() as u16,
            dst_port: rng.next() as u16,
            len: l4_len as u16,
            checksum: rng.next() as u16,
        }
        .emit(&mut hdr);
        frame.extend_from_slice(&hdr[..n]);
    }
    let start = frame.len();
    frame.resize(start + payload_len, 0);
    rng.fill(&mut frame[start..]);

    let gso_type = match kind {
        Kind::Tcp4 => GSO_TCPV4,
        Kind::Tcp6 => GSO_TCPV6,
        Kind::Uso4 | Kind::Uso6 => GSO_UDP_L4,
        Kind::Ufo => GSO_UDP,
        Kind::Plain => GSO_NONE,
    };
    let ecn = if matches!(kind, Kind::Tcp4 | Kind::Tcp6 | Kind::Ufo) && rng.chance(20) {
        GSO_ECN
    } else {
        0
    };
    // USO requires NEEDS_CSUM (the tap refuses it otherwise).
    let needs_csum = matches!(kind, Kind::Uso4 | Kind::Uso6) || rng.chance(60);
    let check_at = l4 + if tcp { 16 } else { 6 };
    let (csum_start, csum_offset) = if !needs_csum {
        (0, 0)
    } else if kind == Kind::Plain {
        // Anywhere from the minimal IP header length on (the tap refuses less).
        let s = rng.range(20, frame.len() - 2);
        (s, rng.range(0, frame.len() - 2 - s))
    } else {
        (l4, check_at - l4)
    };
    if needs_csum && (kind != Kind::Plain || rng.chance(50)) {
        // The partial sum a virtio sender leaves: the pseudo-header over the full length.
        let p = if v6 {
            pseudo_header_v6(&src6, &dst6, proto, l4_len as u32)
        } else {
            pseudo_header_v4(src4, dst4, proto, l4_len as u32)
        };
        frame[check_at..check_at + 2].copy_from_slice(&p.fold().to_be_bytes());
    }
    let flags =
        if needs_csum { F_NEEDS_CSUM } else { 0 } | if rng.chance(10) { F_DATA_VALID } else { 0 };
    let hdr_len = match rng.range(0, 3) {
        0 => 0,
        1 => l4 + l4_hlen,
        // Anything up to the frame's length, but the tap refuses 1 to 13 (less than an
        // Ethernet header) where the kernel would not.
        _ => rng.range(14, frame.len().min(usize::from(u16::MAX))),
    };
    let offload = Offload {
        flags,
        gso_type: gso_type | ecn,
        hdr_len: hdr_len as u16,
        gso_size: if kind == Kind::Plain {
            0
        } else {
            gso_size as u16
        },
        csum_start: csum_start as u16,
        csum_offset: csum_offset as u16,
    };
    // virtio_net_hdr_to_skb's test for "really GSO" counts the bytes past the transport
    // header plus a minimal (20-byte) TCP header: TCP options count as payload there.
    let kernel_drops = matches!(kind, Kind::Tcp4 | Kind::Tcp6)
        && cut_len <= gso_size
        && cut_len + tcp_options > gso_size;
    Case {
        kind,
        frame,
        offload,
        tags,
        kernel_drops,
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn segments_equal_the_kernels() {
    if let Some(why) = missing() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("gso_kernel: {why} (CI=true)");
        }
        eprintln!("skipping gso_kernel: {why}");
        return;
    }
    let seed = std::env::var("RSGSO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("gso_kernel: seed {seed} (RSGSO_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let bed = Bed::new();
    let start = Instant::now();
    let mut buf = vec![0u8; 70_000];
    let mut wire = Vec::with_capacity(70_000);
    let mut piece = vec![0u8; 70_000];
    let (mut cases, mut segments, mut skipped) = (0usize, 0usize, 0usize);
    let mut per_kind = std::collections::BTreeMap::new();
    for (k, mtu) in MTUS.into_iter().enumerate() {
        bed.set_mtu(mtu);
        // Each MTU gets its share of the time budget.
        let until = BUDGET * (k as u32 + 1) / MTUS.len() as u32;
        // Let the links settle, then forget anything captured so far.
        thread::sleep(Duration::from_millis(200));
        drain(&bed.capture, &mut buf);
        let mut n = 0;
        while n < CASES && start.elapsed() < until {
            let case = generate(&mut rng, mtu as usize);
            if case.kernel_drops {
                skipped += 1;
                continue;
            }
            n += 1;
            let max_frame = mtu as usize + 14 + 4 * case.tags;
            let seg = Segmenter::new(&case.frame, &case.offload, max_frame).unwrap_or_else(|e| {
                panic!("Segmenter refused a valid frame: {e}\n{}", case.describe())
            });
            wire.clear();
            let mut h = [0u8; VNET_HDR_LEN];
            vnet_header(&case.offload, &mut h);
            wire.extend_from_slice(&h);
            wire.extend_from_slice(&case.frame);
            // SAFETY: the buffer is valid for reads of its length for the whole call.
            let w = unsafe { libc::write(bed.tap.as_raw_fd(), wire.as_ptr().cast(), wire.len()) };
            assert_eq!(
                w,
                wire.len() as isize,
                "tap write: {}\n{}",
                io::Error::last_os_error(),
                case.describe()
            );
            for i in 0..seg.count() {
                let len = seg.write(&case.frame, i, &mut piece);
                assert_eq!(len, seg.segment_len(i));
                let Some(got) = capture(&bed.capture, &mut buf) else {
                    panic!(
                        "MTU {mtu}: segment {i} of {} never arrived\n{}",
                        seg.count(),
                        case.describe()
                    );
                };
                let got = &buf[got];
                if got != &piece[..len] {
                    let at = got.iter().zip(&piece[..len]).position(|(a, b)| a != b);
                    panic!(
                        "MTU {mtu}: segment {i} of {} differs (kernel {} bytes, ours {len}; first difference at {at:?})\nkernel: {:02x?}\nours:   {:02x?}\n{}",
                        seg.count(),
                        got.len(),
                        &got[..got.len().min(96)],
                        &piece[..len.min(96)],
                        case.describe()
                    );
                }
            }
            cases += 1;
            segments += seg.count();
            *per_kind.entry(format!("{:?}", case.kind)).or_insert(0usize) += 1;
        }
    }
    // Nothing more may come: every frame the kernel sent was expected.
    let extra = drain(&bed.capture, &mut buf);
    assert_eq!(
        extra, 0,
        "{extra} frames arrived that Segmenter did not produce"
    );
    eprintln!(
        "gso_kernel: {cases} frames, {segments} segments equal to the kernel's in {:.1} s ({per_kind:?}; {skipped} generated frames the kernel would drop were not sent)",
        start.elapsed().as_secs_f64()
    );
    assert!(cases >= 1000, "only {cases} cases ran in the time budget");
}

/// The 12-byte virtio-net header (`virtio_net_hdr_mrg_rxbuf`, little-endian as the tap
/// reads it on this machine), num_buffers 0.
fn vnet_header(o: &Offload, h: &mut [u8; VNET_HDR_LEN]) {
    h[0] = o.flags;
    h[1] = o.gso_type;
    h[2..4].copy_from_slice(&o.hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&o.gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&o.csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&o.csum_offset.to_le_bytes());
    h[10..12].fill(0);
}

/// Reads whatever arrives within a short while; returns how many frames.
fn drain(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut n = 0;
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` is one live pollfd for the duration of each call.
    while unsafe { libc::poll(&mut poll, 1, 300) } > 0 {
        if capture(fd, buf).is_some() {
            n += 1;
        }
    }
    n
}
