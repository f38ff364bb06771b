//! The QMP server: listening sockets and client sessions, served from one `poll(2)` loop on
//! the control thread.
//!
//! Each connection gets the greeting, must negotiate with `qmp_capabilities`, then runs
//! commands in order; events go to every negotiated client. Sockets are non-blocking: a client
//! that sends garbage, huge or deeply nested input, or disconnects mid-command harms nothing,
//! and one that stops reading is cut off once its pending output passes a bound, so it cannot
//! stall the switch or other clients.

use crate::commands::dispatch;
use crate::controller::Controller;
use crate::json::{JsonError, JsonStream, Limits};
use crate::qmp::{encode, event, failure, greeting, parse_request, success, Args, QmpError};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Output a client may leave unread before it is disconnected.
const MAX_PENDING_OUTPUT: usize = 16 << 20;
/// Clients served at once; further connections are closed at once.
const MAX_CLIENTS: usize = 64;

/// A listening socket.
pub enum Listener {
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    Tcp(TcpListener),
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: another server is listening there")]
    InUse { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("refusing to listen on {0}: QMP has no authentication; use a loopback address, or pass --qmp-allow-remote to accept this risk")]
    NotLoopback(SocketAddr),
}

impl Listener {
    /// A unix socket at `path` with mode 0600. A stale socket (nobody listening) is replaced.
    pub fn unix(path: &Path) -> Result<Listener, ListenError> {
        let io = |what: &str, source| ListenError::Io {
            what: format!("{what} {}", path.display()),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ListenError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|e| io("removing stale socket", e))?;
        }
        // Created with a restrictive umask so the socket is never reachable by others, even
        // between bind and chmod.
        // SAFETY: umask only swaps the process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|e| io("binding", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("chmod", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("configuring", e))?;
        Ok(Listener::Unix {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// A TCP socket; only on loopback unless `allow_remote`.
    pub fn tcp(addr: SocketAddr, allow_remote: bool) -> Result<Listener, ListenError> {
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(ListenError::NotLoopback(addr));
        }
        let l = TcpListener::bind(addr).map_err(|source| ListenError::Io {
            what: format!("binding {addr}"),
            source,
        })?;
        l.set_nonblocking(true).map_err(|source| ListenError::Io {
            what: format!("configuring {addr}"),
            source,
        })?;
        Ok(Listener::Tcp(l))
    }

    /// Where clients connect, for messages.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix { path, .. } => format!("unix:{}", path.display()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp:{a}"),
                Err(_) => "tcp:?".into(),
            },
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix { listener, .. } => listener.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix { listener, .. } => listener.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
}

struct Client {
    stream: Stream,
    input: JsonStream,
    out: Vec<u8>,
    negotiated: bool,
    /// Close once the output is written (after `quit`).
    closing: bool,
    dead: bool,
}

impl Client {
    fn send(&mut self, v: &Value) {
        if self.out.len() > MAX_PENDING_OUTPUT {
            self.dead = true;
            return;
        }
        self.out.extend_from_slice(&encode(v));
    }

    fn flush(&mut self) {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        if self.closing {
            self.dead = true;
        }
    }
}

/// The QMP server.
pub struct Server {
    listeners: Vec<Listener>,
    clients: Vec<Client>,
    limits: Limits,
}

impl Server {
    pub fn new(listeners: Vec<Listener>) -> Server {
        Server {
            listeners,
            clients: Vec::new(),
            limits: Limits::default(),
        }
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Clients connected now.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Whether every client's output has been written.
    pub fn flushed(&self) -> bool {
        self.clients.iter().all(|c| c.out.is_empty())
    }

    /// Waits up to `timeout` for activity, then serves it.
    pub fn poll_once(&mut self, ctl: &mut Controller, timeout: Duration) -> io::Result<()> {
        let mut fds: Vec<libc::pollfd> =
            Vec::with_capacity(self.listeners.len() + self.clients.len());
        // A full house leaves new connections waiting in the backlog (not polled for).
        let room = self.clients.len() < MAX_CLIENTS;
        for l in &self.listeners {
            fds.push(libc::pollfd {
                fd: l.fd(),
                events: if room { libc::POLLIN } else { 0 },
                revents: 0,
            });
        }
        for c in &self.clients {
            let mut events = 0;
            // Stop reading from a client that does not read its answers (backpressure).
            if c.out.len() < MAX_PENDING_OUTPUT / 2 && !c.closing {
                events |= libc::POLLIN;
            }
            if !c.out.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.stream.fd(),
                events,
                revents: 0,
            });
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        let nl = self.listeners.len();
        for (i, c) in self.clients.iter_mut().enumerate() {
            let re = fds[nl + i].revents;
            if re & libc::POLLOUT != 0 {
                c.flush();
            }
            if re & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                serve_input(c, ctl);
            }
        }
        // Hang-ups seen above free their places before new clients are counted.
        self.clients.retain(|c| !c.dead);
        for (i, l) in self.listeners.iter().enumerate() {
            if fds[i].revents & libc::POLLIN != 0 {
                accept_all(l, &mut self.clients, self.limits);
            }
        }
        self.deliver_events(ctl);
        for c in self.clients.iter_mut() {
            c.flush();
        }
        self.clients.retain(|c| !c.dead);
        Ok(())
    }

    /// Sends the controller's pending events to every negotiated client.
    pub fn deliver_events(&mut self, ctl: &mut Controller) {
        for ev in ctl.take_events() {
            for c in self
                .clients
                .iter_mut()
                .filter(|c| c.negotiated && !c.closing)
            {
                c.send(&ev);
            }
        }
        for c in self.clients.iter_mut() {
            c.flush();
        }
    }
}

/// Accepts waiting connections while there is room: past `MAX_CLIENTS`, a new client waits
/// in the listener's backlog (the kernel's, bounded) until a place frees, rather than being
/// greeted by a hang-up.
fn accept_all(l: &Listener, clients: &mut Vec<Client>, limits: Limits) {
    while clients.len() < MAX_CLIENTS {
        match l.accept() {
            Ok(stream) => {
                if stream.set_nonblocking().is_err() {
                    drop(stream);
                    continue;
                }
                let mut c = Client {
                    stream,
                    input: JsonStream::new(limits),
                    out: Vec::new(),
                    negotiated: false,
                    closing: false,
                    dead: false,
                };
                c.send(&greeting());
                c.flush();
                clients.push(c);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // WouldBlock: all taken; other errors (EMFILE, ECONNABORTED): try next time.
            Err(_) => return,
        }
    }
}

fn serve_input(c: &mut Client, ctl: &mut Controller) {
    let mut buf = [0u8; 65536];
    // Bounded: at most 16 reads (1 MiB) per wake-up, so one client cannot starve the others.
    for _ in 0..16 {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.dead = true;
                return;
            }
            Ok(n) => {
                let mut values = Vec::new();
                c.input.feed(&buf[..n], |r| values.push(r));
                for v in values {
                    if c.closing {
                        break;
                    }
                    handle(c, ctl, v);
                }
                if n < buf.len() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                c.dead = true;
                return;
            }
        }
    }
}

fn handle(c: &mut Client, ctl: &mut Controller, input: Result<Value, JsonError>) {
    let v = match input {
        Ok(v) => v,
        Err(e) => {
            c.send(&failure(&QmpError::generic(e.to_string()), None));
            return;
        }
    };
    let req = match parse_request(v) {
        Ok(r) => r,
        Err((id, e)) => {
            c.send(&failure(&e, id.as_ref()));
            return;
        }
    };
    let id = req.id.clone();
    let result = match (c.negotiated, req.execute.as_str()) {
        (false, "qmp_capabilities") => {
            let r = negotiate(&req);
            if r.is_ok() {
                c.negotiated = true;
            }
            r
        }
        (false, _) => Err(QmpError::command_not_found(
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        )),
        (true, "qmp_capabilities") => Err(QmpError::command_not_found(
            "Capabilities negotiation is already complete, command ignored",
        )),
        (true, "quit") => match Args::new(req.arguments.as_ref()).finish() {
            Ok(()) => {
                ctl.push_event(event(
                    "SHUTDOWN",
                    Some(json!({"guest": false, "reason": "host-qmp-quit"})),
                ));
                ctl.request_quit();
                // The event must reach this client before the answer, as in QEMU; the other
                // clients get it from the controller's queue (closing clients are skipped
                // there).
                for ev in ctl.peek_events() {
                    c.send(ev);
                }
                c.closing = true;
                Ok(json!({}))
            }
            Err(e) => Err(e),
        },
        (true, _) => dispatch(ctl, &req),
    };
    match result {
        Ok(ret) => c.send(&success(ret, id.as_ref())),
        Err(e) => c.send(&failure(&e, id.as_ref())),
    }
}

fn negotiate(req: &crate::qmp::Request) -> Result<Value, QmpError> {
    let mut a = Args::new(req.arguments.as_ref());
    let enable = a.opt_str_list("enable")?;
    a.finish()?;
    // The greeting offers no capabilities (no out-of-band execution), so any is refused.
    if let Some(cap) = enable.and_then(|caps| caps.first().copied()) {
        return Err(QmpError::generic(format!(
            "Parameter 'enable' does not accept value '{cap}'"
        )));
    }
    Ok(json!({}))
}
