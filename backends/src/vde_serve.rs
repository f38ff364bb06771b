//! ringswitch as a vde switch: vde2's control protocol served at a directory (`DIR/ctl`), so
//! `vde_plug`, `vde_plug2tap`, `slirpvde` and QEMU's `-netdev vde,sock=DIR` plug into the
//! switch directly.
//!
//! What `vde_switch` does, and so this module (facts from vde2's `datasock.c` and vdeplug4's
//! `libvdeplug_vde.c`): the switch listens on the unix stream socket `ctl`; a client binds a
//! unix datagram socket, connects to `ctl` and sends one request naming it
//! (`request::parse_request`). The switch makes a datagram socket for the port, connects it
//! to the client's, binds it at `DIR/NNN.FD` and answers with that address; the client
//! connects its socket to it. Frames then travel one per datagram between the two sockets,
//! and the port lives for as long as the control connection stays open.
//!
//! Everything here runs on the control thread and never blocks: the listener and every
//! connection are non-blocking, a handshake that does not complete within
//! `HANDSHAKE_DEADLINE` is dropped, at most `MAX_PENDING` wait at once, and each poll accepts
//! at most `ACCEPTS_PER_POLL`. A malformed request is logged with its reason, counted, and
//! its connection closed. The served data socket goes to the data plane as a `dgram` port's;
//! nothing of this module is on the hot path.

pub mod request;

use crate::vde::{group_id, DataSocket};
use request::{parse_request, RequestError, Wanted, MAX_REQUEST};
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a client may take to send its request.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);
/// Handshakes in progress at once; more connections are closed at once (and counted).
const MAX_PENDING: usize = 32;
/// Connections accepted per poll, so a flood of them cannot hold the control thread.
const ACCEPTS_PER_POLL: usize = 32;
/// The highest port number a client may ask for.
pub const MAX_PORT_NUMBER: u32 = 65535;

/// `--vde-serve DIR[,id=NAME][,mode=OCTAL][,group=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The directory served (its `ctl` is the control socket).
    pub dir: PathBuf,
    /// Served ports are named `NAME.N`, N the vde port number (default `vde`).
    pub name: String,
    /// Permissions of the control and data sockets (vde_switch's `-m`, default 0600).
    pub mode: u32,
    /// Group owner of the sockets (vde_switch's `-g`).
    pub group: Option<String>,
}

impl ServeOptions {
    /// Parses the option's keyval text: the directory first, then `id=`, `mode=`, `group=`.
    pub fn parse(s: &str) -> Result<ServeOptions, String> {
        let err = |m: String| format!("--vde-serve '{s}': {m}");
        let kv = crate::netdev::split_keyval(s, "sock").map_err(|e| err(e.to_string()))?;
        let mut o = ServeOptions {
            dir: PathBuf::new(),
            name: "vde".into(),
            mode: 0o600,
            group: None,
        };
        for (k, v) in kv {
            match k.as_str() {
                "sock" => o.dir = PathBuf::from(v),
                "id" => {
                    crate::netdev::NetdevId::new(&v).map_err(|e| err(e.to_string()))?;
                    o.name = v;
                }
                "mode" => {
                    o.mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| err(format!("mode '{v}' is not an octal mode (0 to 0777)")))?
                }
                "group" => o.group = Some(v),
                other => {
                    return Err(err(format!(
                        "unknown option '{other}'; valid: DIR (or sock=DIR), id=NAME, mode=OCTAL, group=NAME"
                    )))
                }
            }
        }
        if o.dir.as_os_str().is_empty() {
            return Err(err(
                "a directory is needed (e.g. --vde-serve /run/rs.vde)".into()
            ));
        }
        // The data sockets are DIR/NNNNN.FD: their addresses must fit a sockaddr_un.
        if o.dir.as_os_str().len() > crate::vde::SOCKADDR_UN_LEN - 2 - 20 {
            return Err(err(
                "the directory's path is too long for unix socket addresses".into(),
            ));
        }
        Ok(o)
    }
}

/// Why the directory cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot serve vde at {dir}: {what}: {source}")]
    Io {
        dir: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot serve vde at {0}: a switch already serves it (its ctl socket answers)")]
    InUse(PathBuf),
}

/// What the server has seen, for `query-vde-serve` and the logs.
#[derive(Debug, Clone, Default)]
pub struct ServeStats {
    /// Control connections accepted.
    pub connections: u64,
    /// Handshakes completed (ports made).
    pub served: u64,
    /// Connections refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
}

/// A client that completed the handshake: the port's control connection (the port lives
/// while it is open), the switch's data socket for it (connected to the client's) and what
/// the client said about itself.
#[derive(Debug)]
pub struct ServedClient {
    pub port: u32,
    pub ctl: UnixStream,
    pub data: DataSocket,
    pub descr: String,
}

/// A control connection whose request has not all arrived yet.
struct Pending {
    conn: UnixStream,
    buf: [u8; MAX_REQUEST],
    len: usize,
    deadline: Instant,
}

/// One served directory.
pub struct VdeServer {
    opts: ServeOptions,
    ctl_path: PathBuf,
    listener: UnixListener,
    pending: Vec<Pending>,
    created_dir: bool,
    gid: Option<u32>,
    stats: ServeStats,
}

impl std::fmt::Debug for VdeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdeServer")
            .field("dir", &self.opts.dir)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// The directory's mode for a socket mode, as vde_switch derives it: search permission
/// wherever read or write is given, and setgid so the sockets inherit the group.
fn dir_mode(mode: u32) -> u32 {
    let add = |mask: u32, x: u32| {
        if mode & mask != 0 {
            (mode & mask) | x
        } else {
            0
        }
    };
    0o2000 | add(0o600, 0o100) | add(0o060, 0o010) | add(0o006, 0o001)
}

impl VdeServer {
    /// Creates the directory if needed and listens on its `ctl`. A stale `ctl` (nothing
    /// answers on it) is replaced; a live one is an error.
    pub fn bind(opts: ServeOptions) -> Result<VdeServer, ServeError> {
        let dir = opts.dir.clone();
        let io_err = |what| {
            let dir = dir.clone();
            move |source| ServeError::Io { dir, what, source }
        };
        let gid = match &opts.group {
            Some(g) => Some(group_id(g).map_err(io_err("group"))?),
            None => None,
        };
        let created_dir = match std::fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err("creating the directory")(e)),
        };
        if !dir.is_dir() {
            return Err(io_err("not a directory")(io::Error::from(
                io::ErrorKind::AlreadyExists,
            )));
        }
        if created_dir {
            std::os::unix::fs::chown(&dir, None, gid).map_err(io_err("chown of the directory"))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode(opts.mode)))
                .map_err(io_err("chmod of the directory"))?;
        }
        let ctl_path = dir.join("ctl");
        if std::fs::symlink_metadata(&ctl_path).is_ok() {
            if UnixStream::connect(&ctl_path).is_ok() {
                return Err(ServeError::InUse(dir));
            }
            std::fs::remove_file(&ctl_path).map_err(io_err("removing a stale ctl"))?;
        }
        let listener = UnixListener::bind(&ctl_path).map_err(io_err("binding ctl"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("setting up ctl"))?;
        let server = VdeServer {
            opts,
            ctl_path,
            listener,
            pending: Vec::new(),
            created_dir,
            gid,
            stats: ServeStats::default(),
        };
        server
            .own(&server.ctl_path)
            .map_err(io_err("chmod/chown of ctl"))?;
        Ok(server)
    }

    pub fn options(&self) -> &ServeOptions {
        &self.opts
    }

    pub fn stats(&self) -> &ServeStats {
        &self.stats
    }

    /// Gives a socket file the mode and group asked for.
    fn own(&self, path: &Path) -> io::Result<()> {
        if self.gid.is_some() {
            std::os::unix::fs::chown(path, None, self.gid)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.opts.mode))
    }

    fn refuse(&mut self, reason: &'static str, why: impl std::fmt::Display) {
        *self.stats.refused.entry(reason).or_default() += 1;
        eprintln!(
            "ringswitch: vde-serve {}: client refused ({reason}): {why}",
            self.opts.dir.display()
        );
    }

    /// Accepts new control connections and reads handshakes, never blocking. Each client
    /// whose handshake completed is answered and returned. `taken(n)` says whether port
    /// number `n` is in use; `room` is how many more ports the switch can take.
    pub fn poll(
        &mut self,
        now: Instant,
        mut taken: impl FnMut(u32) -> bool,
        mut room: usize,
    ) -> Vec<ServedClient> {
        for _ in 0..ACCEPTS_PER_POLL {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    self.stats.connections += 1;
                    if self.pending.len() >= MAX_PENDING {
                        self.refuse("busy", format!("{MAX_PENDING} handshakes already waiting"));
                        continue;
                    }
                    if let Err(e) = conn.set_nonblocking(true) {
                        self.refuse("io", e);
                        continue;
                    }
                    self.pending.push(Pending {
                        conn,
                        buf: [0; MAX_REQUEST],
                        len: 0,
                        deadline: now + HANDSHAKE_DEADLINE,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    eprintln!(
                        "ringswitch: vde-serve {}: accept: {e}",
                        self.opts.dir.display()
                    );
                    break;
                }
            }
        }
        let mut served = Vec::new();
        let mut given: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            let mut closed = false;
            while p.len < MAX_REQUEST {
                match p.conn.read(&mut p.buf[p.len..]) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => p.len += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let parsed = parse_request(&p.buf[..p.len]);
            let expired = now >= p.deadline;
            match parsed {
                Err(RequestError::Incomplete { .. }) if !closed && !expired => {
                    i += 1;
                    continue;
                }
                Err(e) => {
                    let p = self.pending.swap_remove(i);
                    let reason = match (&e, closed) {
                        (RequestError::Incomplete { .. }, false) => "timeout",
                        _ => e.reason(),
                    };
                    drop(p);
                    self.refuse(reason, e);
                }
                Ok(req) => {
                    let p = self.pending.swap_remove(i);
                    let port = match req.wanted {
                        Wanted::Port0 => {
                            self.refuse(
                                "port0",
                                "port 0 (vde_switch's management port) is not served",
                            );
                            continue;
                        }
                        _ if room == 0 => {
                            self.refuse("full", "the switch has no free port (see --max-ports)");
                            continue;
                        }
                        Wanted::Port(Some(n)) if n > MAX_PORT_NUMBER => {
                            self.refuse(
                                "bad-port",
                                format!("port {n} (at most {MAX_PORT_NUMBER})"),
                            );
                            continue;
                        }
                        Wanted::Port(Some(n)) if taken(n) || given.contains(&n) => {
                            self.refuse("port-in-use", format!("port {n} is in use"));
                            continue;
                        }
                        Wanted::Port(Some(n)) => n,
                        Wanted::Port(None) => {
                            match (1..=MAX_PORT_NUMBER).find(|n| !taken(*n) && !given.contains(n)) {
                                Some(n) => n,
                                None => {
                                    self.refuse("full", "every port number is in use");
                                    continue;
                                }
                            }
                        }
                    };
                    match self.answer(p.conn, port, &req.client) {
                        Ok((ctl, data)) => {
                            self.stats.served += 1;
                            room -= 1;
                            given.push(port);
                            served.push(ServedClient {
                                port,
                                ctl,
                                data,
                                descr: req.descr,
                            });
                        }
                        Err((reason, e)) => self.refuse(reason, e),
                    }
                }
            }
        }
        served
    }

    /// Makes the port's data socket, connected to the client's, and sends its address.
    fn answer(
        &self,
        mut ctl: UnixStream,
        port: u32,
        client: &Path,
    ) -> Result<(UnixStream, DataSocket), (&'static str, String)> {
        let s = Socket::new(Domain::UNIX, Type::DGRAM.cloexec(), None)
            .map_err(|e| ("io", format!("data socket: {e}")))?;
        let unreachable = |e: io::Error| {
            (
                "client-unreachable",
                format!("its data socket {}: {e}", client.display()),
            )
        };
        s.connect(&SockAddr::unix(client).map_err(unreachable)?)
            .map_err(unreachable)?;
        let path = self.opts.dir.join(format!("{port:03}.{}", s.as_raw_fd()));
        let _ = std::fs::remove_file(&path);
        let addr = SockAddr::unix(&path).map_err(|e| ("io", format!("{}: {e}", path.display())))?;
        s.bind(&addr)
            .map_err(|e| ("io", format!("binding {}: {e}", path.display())))?;
        let data = DataSocket { fd: s.into(), path };
        self.own(&data.path)
            .map_err(|e| ("io", format!("chmod/chown of {}: {e}", data.path.display())))?;
        let reply = request::encode_reply(&data.path).map_err(|e| ("io", e.to_string()))?;
        match ctl.write(&reply) {
            Ok(n) if n == reply.len() => Ok((ctl, data)),
            Ok(n) => Err(("io", format!("answer cut short ({n} bytes written)"))),
            Err(e) => Err(("io", format!("answering: {e}"))),
        }
    }
}

impl Drop for VdeServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ctl_path);
        if self.created_dir {
            let _ = std::fs::remove_dir(&self.opts.dir);
        }
    }
}

/// Whether a served port's client has gone: its control connection closed (or failed).
/// Reads and discards whatever the client sent on it (vde clients send nothing more), so it
/// never blocks and a chatty client cannot hide its hang-up.
pub fn hung_up(ctl: &UnixStream) -> bool {
    let mut b = [0u8; 256];
    for _ in 0..16 {
        match (&*ctl).read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_as_documented() {
        let o = ServeOptions::parse("/run/sw,id=lab,mode=0660,group=kvm").unwrap();
        assert_eq!(o.dir, Path::new("/run/sw"));
        assert_eq!((o.name.as_str(), o.mode), ("lab", 0o660));
        assert_eq!(o.group.as_deref(), Some("kvm"));
        let d = ServeOptions::parse("sock=/x").unwrap();
        assert_eq!((d.name.as_str(), d.mode), ("vde", 0o600));
        assert!(ServeOptions::parse("/x,mode=999")
            .unwrap_err()
            .contains("mode"));
        assert!(ServeOptions::parse("/x,bogus=1")
            .unwrap_err()
            .contains("'bogus'"));
        assert!(ServeOptions::parse("/x,id=1a").is_err());
        assert!(ServeOptions::parse("").is_err());
    }

    #[test]
    fn the_directory_mode_follows_the_socket_mode_as_in_vde_switch() {
        assert_eq!(dir_mode(0o600), 0o2700);
        assert_eq!(dir_mode(0o660), 0o2770);
        assert_eq!(dir_mode(0o666), 0o2777);
    }
}
