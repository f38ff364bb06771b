//! Opening a parsed netdev: the kernel objects behind the port, the data plane's port value
//! for each connection (`OpenedPort::make_port`: the kind's module in the switch crate,
//! over duplicates of the descriptors), and the port's life cycle — QEMU's
//! `script=`/`downscript=`, carrier changes for `set_link`, and for stream ports the
//! connection: a listening port serves one peer at a time and accepts the next after a
//! disconnect; a connecting port tries again every `reconnect` seconds.

use crate::addr::SockAddr;
use crate::chardev::Chardev;
use crate::kinds::{L2tpv3Options, SocketMode};
use crate::netdev::{NetdevKind, NetdevSpec, Script};
use crate::socket;
use crate::tap::{Tap, TapError};
use ringswitch_switch::port::datagram::DatagramPort;
use ringswitch_switch::port::l2tpv3::codec::L2tpv3Codec;
use ringswitch_switch::port::l2tpv3::L2tpv3Port;
use ringswitch_switch::port::stream::StreamPort;
use ringswitch_switch::port::tap::TapPort;
use ringswitch_switch::port::vhost_user::VhostUserPort;
use ringswitch_switch::AnyPort;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one connection attempt of a client stream port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("script= and downscript= run programs as this user; the switch was started without --allow-scripts")]
    ScriptsNotAllowed,
    #[error("network script '{path} {ifname}' could not run: {source}")]
    ScriptSpawn {
        path: String,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("network script '{path} {ifname}' failed ({status})")]
    ScriptFailed {
        path: String,
        ifname: String,
        status: std::process::ExitStatus,
    },
    #[error("{what}: {source}")]
    Socket {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("a hubport places another netdev in a hub; it is not a port to open")]
    NotAPort,
    #[error(
        "chardev '{0}' not found (give -chardev socket,id={0},path=… or chardev-add it first)"
    )]
    NoChardev(String),
    #[error("vhost-user on '{path}': {source}")]
    VhostUser {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Vde(#[from] crate::vde::VdeError),
    /// A user port libslirp could not set up (QEMU's text).
    #[error("{0}")]
    User(String),
    #[error("cannot attach tap '{tap}' to bridge '{br}': {why}")]
    Bridge {
        tap: String,
        br: String,
        why: String,
    },
}

fn sock_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let what = what.into();
    move |source| OpenError::Socket { what, source }
}

/// A connected port: what the data plane gets.
#[derive(Debug)]
pub struct Conn {
    pub fd: OwnedFd,
    pub tx_fd: Option<OwnedFd>,
    /// The peer, for listings and events.
    pub peer: Option<String>,
}

#[derive(Debug)]
enum Peer {
    /// Always connected (tap, datagram sockets).
    Fixed,
    Listen {
        listener: OwnedFd,
        addr: SockAddr,
    },
    Connect {
        addr: SockAddr,
        reconnect: Option<Duration>,
        next: Option<Instant>,
    },
    /// A unix datagram socket connected to its peer's, connected again every `REDIAL_EVERY`
    /// so that a peer that restarted (a new socket at the same path) is reached.
    Redial {
        remote: PathBuf,
        next: Instant,
    },
    /// A port of a vde_switch: its control connection is looked at every `VDE_CHECK_EVERY`;
    /// once the switch has gone (closed it), the port plugs in again every
    /// `VDE_CHECK_EVERY` until it is back, on the same data socket.
    Vde(Box<VdeState>),
    /// A client plugged into ringswitch's vde service: the port lives while the client's
    /// control connection is open; the switch's data socket (removed with the port) is the
    /// connection the data plane serves.
    Served {
        ctl: std::os::unix::net::UnixStream,
        _data: crate::vde::DataSocket,
    },
}

/// What a vde port keeps to stay plugged in.
#[derive(Debug)]
struct VdeState {
    opts: crate::vde::VdeOptions,
    data: crate::vde::DataSocket,
    link: Option<crate::vde::VdeLink>,
    descr: String,
    next: Instant,
    /// Times the switch went away, and handshakes tried since the last one.
    losses: u64,
    tries: u64,
}

/// How often a vde port looks at its switch.
const VDE_CHECK_EVERY: Duration = Duration::from_millis(200);

/// How often a unix datagram port connects to its peer's path again.
const REDIAL_EVERY: Duration = Duration::from_millis(100);

/// Builds the data plane's port over a connection's descriptors (duplicates the port value
/// owns), given the port's name.
type MakePort = Box<dyn Fn(OwnedFd, Option<OwnedFd>, &str) -> AnyPort + Send>;

fn tap_port(vnet_hdr: bool) -> MakePort {
    Box::new(move |fd, _, name| TapPort::new(fd, name, vnet_hdr).into())
}

fn user_pair_port() -> MakePort {
    Box::new(|fd, _, name| TapPort::packed(fd, name).into())
}

fn stream_port() -> MakePort {
    Box::new(|fd, _, _| StreamPort::new(fd).into())
}

fn datagram_port(gso: bool) -> MakePort {
    Box::new(move |fd, tx, name| DatagramPort::new(fd, tx, gso, name).into())
}

/// An open port.
pub struct OpenedPort {
    conn: Option<Conn>,
    peer: Peer,
    make: MakePort,
    /// The kernel interface behind the port, if it has one.
    pub ifname: Option<String>,
    /// A tap's TUNSETOFFLOAD bits (0: plain frames, no virtio-net header).
    pub offloads: u32,
    downscript: Script,
    carrier: bool,
    /// A vhost-user port's protocol thread (stops when the port goes).
    pub vhost: Option<crate::vhost_user::Service>,
    /// A user port's libslirp thread (stops, and frees libslirp, when the port goes).
    pub user: Option<crate::user::Service>,
    /// A multiqueue tap's further queues (queue 0 is the connection's descriptor).
    queue_fds: Vec<OwnedFd>,
}

fn run_script(path: &str, ifname: &str) -> Result<(), OpenError> {
    let status =
        Command::new(path)
            .arg(ifname)
            .status()
            .map_err(|source| OpenError::ScriptSpawn {
                path: path.into(),
                ifname: ifname.into(),
                source,
            })?;
    if !status.success() {
        return Err(OpenError::ScriptFailed {
            path: path.into(),
            ifname: ifname.into(),
            status,
        });
    }
    Ok(())
}

impl std::fmt::Debug for OpenedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedPort")
            .field("conn", &self.conn)
            .field("peer", &self.peer)
            .field("ifname", &self.ifname)
            .finish_non_exhaustive()
    }
}

fn fixed(fd: OwnedFd, tx_fd: Option<OwnedFd>, make: MakePort, peer: Option<String>) -> OpenedPort {
    OpenedPort {
        conn: Some(Conn { fd, tx_fd, peer }),
        peer: Peer::Fixed,
        make,
        ifname: None,
        offloads: 0,
        downscript: Script::None,
        carrier: false,
        vhost: None,
        user: None,
        queue_fds: Vec::new(),
    }
}

fn open_socket(mode: &SocketMode) -> Result<OpenedPort, OpenError> {
    match mode {
        SocketMode::Listen(addr) => {
            let listener =
                socket::listen(addr).map_err(sock_err(format!("listening on {addr}")))?;
            Ok(OpenedPort {
                conn: None,
                peer: Peer::Listen {
                    listener,
                    addr: addr.clone(),
                },
                make: stream_port(),
                ifname: None,
                offloads: 0,
                downscript: Script::None,
                carrier: false,
                vhost: None,
                user: None,
                queue_fds: Vec::new(),
            })
        }
        SocketMode::Connect { addr, reconnect } => {
            let mut p = OpenedPort {
                conn: None,
                peer: Peer::Connect {
                    addr: addr.clone(),
                    reconnect: *reconnect,
                    next: Some(Instant::now()),
                },
                make: stream_port(),
                ifname: None,
                offloads: 0,
                downscript: Script::None,
                carrier: false,
                vhost: None,
                user: None,
                queue_fds: Vec::new(),
            };
            // A first attempt at once; without a peer yet the port waits and retries (unless
            // reconnect=0, where the peer must be there, as in QEMU 7.2).
            if !p.poll(Instant::now()) && reconnect.is_none() {
                let e = socket::connect(addr, CONNECT_TIMEOUT)
                    .err()
                    .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no peer"));
                return Err(OpenError::Socket {
                    what: format!("connecting to {addr}"),
                    source: e,
                });
            }
            Ok(p)
        }
        SocketMode::Udp { local, remote } => {
            let fd = socket::udp(*local, *remote)
                .map_err(sock_err(format!("udp {local} -> {remote}")))?;
            let gso = socket::udp_gso_supported(&fd);
            Ok(fixed(
                fd,
                None,
                datagram_port(gso),
                Some(remote.to_string()),
            ))
        }
        SocketMode::UnixDgram { local, remote } => {
            let fd = socket::unix_dgram(local, remote).map_err(sock_err(format!(
                "unix datagram {} -> {}",
                local.display(),
                remote.display()
            )))?;
            let mut port = fixed(
                fd,
                None,
                datagram_port(false),
                Some(remote.display().to_string()),
            );
            port.peer = Peer::Redial {
                remote: remote.clone(),
                next: Instant::now() + REDIAL_EVERY,
            };
            Ok(port)
        }
        SocketMode::Mcast { group, interface } => {
            let (rx, tx) = socket::mcast(*group, *interface)
                .map_err(sock_err(format!("multicast {group}")))?;
            Ok(fixed(
                rx,
                Some(tx),
                datagram_port(false),
                Some(group.to_string()),
            ))
        }
        SocketMode::Fd(raw) => {
            let (fd, stream) = socket::inherited(*raw).map_err(sock_err(format!("fd {raw}")))?;
            let make = if stream {
                stream_port()
            } else {
                datagram_port(false)
            };
            Ok(fixed(fd, None, make, None))
        }
    }
}

fn open_l2tpv3(o: &L2tpv3Options) -> Result<OpenedPort, OpenError> {
    let src = SocketAddr::new(o.src, if o.udp { o.srcport } else { 0 });
    let dst = SocketAddr::new(o.dst, if o.udp { o.dstport } else { 0 });
    let fd = socket::l2tpv3(src, dst, o.udp).map_err(sock_err(format!("l2tpv3 {src} -> {dst}")))?;
    let codec = L2tpv3Codec {
        udp: o.udp,
        ipv4_header: !o.udp && o.src.is_ipv4(),
        cookie_len: match (o.txcookie.is_some(), o.cookie64) {
            (false, _) => 0,
            (true, false) => 4,
            (true, true) => 8,
        },
        counter: o.counter,
        pincounter: o.pincounter,
        offset: o.offset as usize,
        txsession: o.txsession,
        rxsession: o.rxsession,
        txcookie: o.txcookie.unwrap_or(0),
        rxcookie: o.rxcookie.unwrap_or(0),
    };
    let codec = Arc::new(codec);
    let make: MakePort =
        Box::new(move |fd, _, name| L2tpv3Port::new(fd, codec.clone(), name).into());
    Ok(fixed(fd, None, make, Some(dst.to_string())))
}

/// Opens the port `spec` describes. Scripts run only when `allow_scripts` is set.
/// Opens the port `spec` describes. A vhost-user port needs its chardev (`chardev`, looked up
/// by the caller from `-chardev` and `chardev-add`).
pub fn open(
    spec: &NetdevSpec,
    allow_scripts: bool,
    chardev: Option<&Chardev>,
) -> Result<OpenedPort, OpenError> {
    if spec.wants_scripts() && !allow_scripts {
        return Err(OpenError::ScriptsNotAllowed);
    }
    match &spec.kind {
        NetdevKind::Tap(t) => {
            let mut more = Vec::new();
            let tap = match t.fd {
                Some(fd) => Tap::from_inherited(fd, t.vnet_hdr)?,
                None => {
                    let mut taps = Tap::open_queues(t.ifname.as_deref(), t.vnet_hdr, t.queues)?;
                    more = taps.split_off(1);
                    taps.pop().expect("one queue at least")
                }
            };
            let offloads = tap.offloads();
            let ifname = tap.name().to_string();
            if let Script::Path(p) = &t.script {
                run_script(p, &ifname)?;
            }
            let mut p = fixed(tap.into_fd(), None, tap_port(offloads != 0), None);
            p.queue_fds = more.into_iter().map(Tap::into_fd).collect();
            p.ifname = Some(ifname);
            p.offloads = offloads;
            p.downscript = t.downscript.clone();
            p.carrier = true;
            Ok(p)
        }
        NetdevKind::Bridge { br, vnet_hdr } => {
            let tap = Tap::open_with(None, *vnet_hdr)?;
            let offloads = tap.offloads();
            let ifname = tap.name().to_string();
            crate::bridge::attach(&ifname, br).map_err(|why| OpenError::Bridge {
                tap: ifname.clone(),
                br: br.clone(),
                why,
            })?;
            let mut p = fixed(tap.into_fd(), None, tap_port(offloads != 0), None);
            p.ifname = Some(ifname);
            p.offloads = offloads;
            p.carrier = true;
            Ok(p)
        }
        NetdevKind::Socket(m) | NetdevKind::Stream(m) | NetdevKind::Dgram(m) => open_socket(m),
        NetdevKind::L2tpv3(o) => open_l2tpv3(o),
        NetdevKind::HubPort { .. } => Err(OpenError::NotAPort),
        NetdevKind::Vde(o) => open_vde(spec.id.as_str(), o),
        NetdevKind::VdeServed { .. } => Err(OpenError::NotAPort),
        NetdevKind::User(o) => open_user(spec.id.as_str(), o),
        NetdevKind::VhostUser {
            chardev: id,
            queues,
        } => {
            let Some(c) = chardev.filter(|c| &c.id == id) else {
                return Err(OpenError::NoChardev(id.clone()));
            };
            open_vhost_user(spec.id.as_str(), c, usize::from(*queues))
        }
    }
}

/// A client of ringswitch's own vde service (`crate::vde_serve`), served as a `dgram` port on
/// the data socket the service made for it.
pub fn served_vde(c: crate::vde_serve::ServedClient) -> Result<OpenedPort, OpenError> {
    let fd = c.data.fd.try_clone().map_err(sock_err(format!(
        "vde data socket {}",
        c.data.path.display()
    )))?;
    let peer = if c.descr.is_empty() {
        format!("vde client on port {}", c.port)
    } else {
        c.descr
    };
    let mut p = fixed(fd, None, datagram_port(false), Some(peer));
    p.peer = Peer::Served {
        ctl: c.ctl,
        _data: c.data,
    };
    Ok(p)
}

/// A user port: libslirp on its thread, and the worker's end of the socket pair served as a
/// `vnet_hdr` tap's descriptor that sends packed (`TapPort::packed`): frames cross with
/// virtio-net headers, so a station's TSO segment crosses whole and libslirp's TCP segments
/// cross joined, and the worker's frames cross many to a datagram.
fn open_user(name: &str, o: &crate::user::UserOptions) -> Result<OpenedPort, OpenError> {
    let (service, fd) = crate::user::Service::start(name, o).map_err(OpenError::User)?;
    let mut p = fixed(
        fd,
        None,
        user_pair_port(),
        Some(format!("slirp {}", o.host)),
    );
    p.user = Some(service);
    Ok(p)
}

/// A vde port: plugged into the switch, its data socket served as a `dgram` port's.
fn open_vde(name: &str, opts: &crate::vde::VdeOptions) -> Result<OpenedPort, OpenError> {
    let descr = format!("ringswitch netdev={name} PID={}", std::process::id());
    let (data, link) = crate::vde::open(opts, &descr)?;
    let fd = data
        .fd
        .try_clone()
        .map_err(sock_err(format!("vde data socket {}", data.path.display())))?;
    let mut p = fixed(
        fd,
        None,
        datagram_port(false),
        Some(link.switch_data.display().to_string()),
    );
    p.peer = Peer::Vde(Box::new(VdeState {
        opts: opts.clone(),
        data,
        link: Some(link),
        descr,
        next: Instant::now() + VDE_CHECK_EVERY,
        losses: 0,
        tries: 0,
    }));
    Ok(p)
}

impl VdeState {
    /// Notices a switch that went away, and plugs in again once it is back.
    fn check(&mut self) {
        if let Some(l) = &self.link {
            if l.alive() {
                return;
            }
            self.losses += 1;
            self.tries = 0;
            eprintln!(
                "ringswitch: vde_switch at {} went away; plugging in again every {} ms",
                l.ctl_path.display(),
                VDE_CHECK_EVERY.as_millis()
            );
            self.link = None;
        }
        self.tries += 1;
        match crate::vde::plug(&self.opts, &self.data, &self.descr) {
            Ok(l) => {
                eprintln!(
                    "ringswitch: plugged into the vde_switch at {} again after {} tries",
                    l.ctl_path.display(),
                    self.tries
                );
                self.link = Some(l);
            }
            Err(e) if self.tries == 1 => eprintln!("ringswitch: {e}"),
            Err(_) => {}
        }
    }
}

/// A vhost-user port: its protocol thread on the chardev's socket, and the data plane's port
/// over the configuration that thread publishes.
fn open_vhost_user(name: &str, c: &Chardev, pairs: usize) -> Result<OpenedPort, OpenError> {
    let service = crate::vhost_user::Service::start(name, &c.socket, pairs).map_err(|source| {
        OpenError::VhostUser {
            path: c.socket.path().display().to_string(),
            source,
        }
    })?;
    let shared = service.shared.clone();
    let make: MakePort =
        Box::new(move |_, _, name| VhostUserPort::new(name, shared.clone()).into());
    // The data plane's port reaches the guest through shared memory, not a descriptor of the
    // connection; the connection slot holds a placeholder (the null device) so the port is
    // served from the start and stays served across frontend reconnections.
    let placeholder: OwnedFd = std::fs::File::open("/dev/null")
        .map_err(|source| OpenError::VhostUser {
            path: "/dev/null".into(),
            source,
        })?
        .into();
    let mut p = fixed(
        placeholder,
        None,
        make,
        Some(c.socket.path().display().to_string()),
    );
    p.vhost = Some(service);
    Ok(p)
}

impl OpenedPort {
    /// The connection the data plane should serve now, if any.
    pub fn conn(&self) -> Option<&Conn> {
        self.conn.as_ref()
    }

    /// The data plane's port for the current connection, over duplicates of its descriptors
    /// (the control plane keeps its own, so it can tell the connection ended and close it
    /// after the worker let go). None while the port has no connection.
    pub fn make_port(&self, name: &str) -> io::Result<Option<AnyPort>> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let fd = conn.fd.try_clone()?;
        let tx = match &conn.tx_fd {
            Some(t) => Some(t.try_clone()?),
            None => None,
        };
        Ok(Some((self.make)(fd, tx, name)))
    }

    /// The data plane's ports over a multiqueue port's further queues (none for other
    /// ports), queue 1 first: a multiqueue tap's further queue descriptors, or a vhost-user
    /// port's further instances (see `spread`).
    pub fn make_queue_ports(&self, name: &str) -> io::Result<Vec<AnyPort>> {
        if let Some(v) = &self.vhost {
            return Ok((1..v.shared.instances())
                .map(|i| VhostUserPort::instance(name, v.shared.clone(), i).into())
                .collect());
        }
        self.queue_fds
            .iter()
            .map(|fd| Ok((self.make)(fd.try_clone()?, None, name)))
            .collect()
    }

    /// How many queues the port has, each served by its own worker: a multiqueue tap's
    /// queues, a vhost-user port's instances; 1 for other ports.
    pub fn queues(&self) -> usize {
        match &self.vhost {
            Some(v) => v.shared.instances(),
            None => 1 + self.queue_fds.len(),
        }
    }

    /// Spreads a vhost-user port's queue pairs over up to `workers` workers (one instance
    /// each; `queues=N` pairs make at most N). Call before the port's queues are placed;
    /// other ports keep the queues they opened with.
    pub fn spread(&mut self, workers: usize) {
        if let Some(v) = &self.vhost {
            v.shared.spread(workers);
        }
    }

    /// Whether this port (re)connects by itself (listening or client stream).
    pub fn is_connection(&self) -> bool {
        matches!(self.peer, Peer::Listen { .. } | Peer::Connect { .. })
    }

    /// The current connection ended: forget it and wait for the next peer (or try again
    /// later). A tap or datagram socket that failed stays as it is (the data plane disabled it).
    pub fn lost(&mut self, now: Instant) {
        if !self.is_connection() {
            return;
        }
        self.conn = None;
        if let Peer::Connect {
            reconnect, next, ..
        } = &mut self.peer
        {
            *next = reconnect.map(|d| now + d);
        }
    }

    /// When the next connection attempt is due (client ports without a peer).
    pub fn next_attempt(&self) -> Option<Instant> {
        match (&self.conn, &self.peer) {
            (None, Peer::Connect { next, .. }) => *next,
            (Some(_), Peer::Redial { next, .. }) => Some(*next),
            (Some(_), Peer::Vde(v)) => Some(v.next),
            _ => None,
        }
    }

    /// For a port without a connection: accepts a waiting peer, or connects if an attempt is
    /// due. Returns true when the port has a connection again.
    pub fn poll(&mut self, now: Instant) -> bool {
        if let (Some(conn), Peer::Redial { remote, next }) = (&self.conn, &mut self.peer) {
            if *next <= now {
                *next = now + REDIAL_EVERY;
                // The same socket either way: nothing to publish.
                let _ = socket::redial_unix_dgram(&conn.fd, remote);
            }
            return false;
        }
        if let (Some(_), Peer::Vde(v)) = (&self.conn, &mut self.peer) {
            if v.next <= now {
                v.next = now + VDE_CHECK_EVERY;
                v.check();
            }
            // The same socket either way: nothing to publish.
            return false;
        }
        if self.conn.is_some() {
            return false;
        }
        match &mut self.peer {
            Peer::Fixed | Peer::Redial { .. } | Peer::Vde(_) | Peer::Served { .. } => false,
            Peer::Listen { listener, .. } => match socket::accept(listener) {
                Ok(Some((fd, peer))) => {
                    self.conn = Some(Conn {
                        fd,
                        tx_fd: None,
                        peer: Some(peer),
                    });
                    true
                }
                _ => false,
            },
            Peer::Connect {
                addr,
                reconnect,
                next,
            } => {
                match next {
                    Some(t) if *t <= now => {}
                    _ => return false,
                }
                match socket::connect(addr, CONNECT_TIMEOUT) {
                    Ok(fd) => {
                        self.conn = Some(Conn {
                            fd,
                            tx_fd: None,
                            peer: Some(addr.to_string()),
                        });
                        true
                    }
                    Err(_) => {
                        *next = reconnect.map(|d| now + d);
                        false
                    }
                }
            }
        }
    }

    /// Whether the far side holds the port: false for a vde port whose switch has gone.
    pub fn peer_up(&self) -> bool {
        match &self.peer {
            Peer::Vde(v) => v.link.as_ref().is_some_and(|l| l.alive()),
            _ => true,
        }
    }

    /// Whether a port served to a vde client lost its client (its control connection
    /// closed): the port should go. Never blocks; false for every other port.
    pub fn client_gone(&self) -> bool {
        match &self.peer {
            Peer::Served { ctl, .. } => crate::vde_serve::hung_up(ctl),
            _ => false,
        }
    }

    /// Where a listening port listens (for listings and events).
    pub fn local(&self) -> Option<String> {
        match &self.peer {
            Peer::Listen { addr, .. } => Some(addr.to_string()),
            _ => None,
        }
    }

    /// Runs the port's `downscript=`, while its interface still exists.
    pub fn run_downscript(&self) -> Result<(), OpenError> {
        match (&self.downscript, &self.ifname) {
            (Script::Path(p), Some(ifname)) => run_script(p, ifname),
            _ => Ok(()),
        }
    }

    /// Shows a link change to the other side, where the port can (a tap's carrier).
    pub fn set_carrier(&self, up: bool) -> Result<(), TapError> {
        match (&self.conn, self.carrier) {
            (Some(c), true) => set_carrier(c.fd.as_fd(), up),
            _ => Ok(()),
        }
    }
}

impl Drop for OpenedPort {
    fn drop(&mut self) {
        if let Peer::Listen {
            addr: SockAddr::Unix(p),
            ..
        } = &self.peer
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Shows a link change to the kernel side of a tap (its carrier). `fd` must be the port's.
pub fn set_carrier(fd: BorrowedFd<'_>, up: bool) -> Result<(), TapError> {
    crate::tap::set_carrier_fd(fd.as_raw_fd(), up)
}
