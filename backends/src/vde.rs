//! `vde` ports: ringswitch joins a running `vde_switch` as QEMU does through libvdeplug.
//!
//! The protocol (vde2's, as its documentation and `libvdeplug` describe it): the switch
//! listens on a unix stream socket `ctl` in its directory. A client binds a unix datagram
//! socket of its own (libvdeplug: in the switch's directory, `.PID-N`, or `vde.PID-N` in a
//! fallback directory when it may not write there; ringswitch always the latter, see
//! `bind_data_socket`), connects to `ctl` and sends one request:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `0xfeedface` (host order) |
//! | 4 | version 3 |
//! | 4 | type: 0 (new port) + (port number << 8); 1 asks for port 0 itself |
//! | 110 | `struct sockaddr_un` of the client's data socket |
//! | ≤ 128 | a description (not NUL-terminated on the wire) |
//!
//! The switch answers with the `struct sockaddr_un` (110 bytes) of the data socket it made for
//! the port, or closes the connection when it refuses (no such port, no free port, wrong
//! magic). Frames then travel as datagrams, one frame each, between the two data sockets; the
//! control connection stays open for as long as the port lives, and the switch frees the port
//! when it closes. A switch that goes away closes it from its side.
//!
//! The data socket is an ordinary connected unix datagram socket, so the data plane serves it
//! as a `dgram` port (io_uring, multishot receives): nothing of this module is on the hot
//! path. libvdeplug is not used: its `vde_send`/`vde_recv` are `send`/`recv` on the same
//! socket, which the worker's ring does already, and its handshake is these few lines.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

/// `SWITCH_MAGIC`.
pub(crate) const MAGIC: u32 = 0xfeed_face;
/// The request version this module speaks.
const VERSION: u32 = 3;
/// `REQ_NEW_CONTROL`.
const REQ_NEW_CONTROL: u32 = 0;
/// Bytes of `struct sockaddr_un` on Linux.
pub const SOCKADDR_UN_LEN: usize = 110;
/// Longest description (`MAXDESCR`).
pub(crate) const MAX_DESCR: usize = 128;
/// How long the handshake may take before the switch counts as not answering.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the switch's control socket is looked for when `sock` is not given, as libvdeplug
/// does (after `$HOME/.vde2/default.switch`).
const FALLBACK_CTL: &[&str] = &["/var/run/vde.ctl/ctl", "/tmp/vde.ctl/ctl", "/tmp/vde.ctl"];
/// Where the data socket goes when the switch's directory is not writable.
const FALLBACK_DIRS: &[&str] = &["/var/run", "/var/tmp", "/tmp"];

/// What a `vde` netdev asks for (QEMU's `NetdevVdeOptions`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VdeOptions {
    /// The switch's directory (holding `ctl`); libvdeplug's defaults when absent.
    pub sock: Option<PathBuf>,
    /// The switch port to plug into (0: any free one).
    pub port: u16,
    /// Group ownership of the data socket.
    pub group: Option<String>,
    /// Permissions of the data socket (QEMU's default 0700).
    pub mode: u32,
}

/// Why a handshake failed: what was tried, and on which socket.
#[derive(Debug, thiserror::Error)]
pub enum VdeError {
    #[error("cannot connect to the vde_switch control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("no vde_switch found (tried {tried}); give sock=DIR")]
    NoSwitch { tried: String },
    #[error("cannot create a data socket for {ctl}: {source}")]
    DataSocket { ctl: PathBuf, source: io::Error },
    #[error("the vde_switch at {ctl} refused the port: {why}")]
    Refused { ctl: PathBuf, why: String },
    #[error("the vde_switch at {ctl}: {source}")]
    Io { ctl: PathBuf, source: io::Error },
}

/// A request for `port`, naming the client's data socket `data` and describing it as `descr`.
pub fn encode_request(port: u16, data: &Path, descr: &str) -> io::Result<Vec<u8>> {
    let mut r = Vec::with_capacity(12 + SOCKADDR_UN_LEN + MAX_DESCR);
    r.extend_from_slice(&MAGIC.to_ne_bytes());
    r.extend_from_slice(&VERSION.to_ne_bytes());
    r.extend_from_slice(&(REQ_NEW_CONTROL + ((port as u32) << 8)).to_ne_bytes());
    r.extend_from_slice(&encode_sockaddr(data)?);
    let d = descr.as_bytes();
    r.extend_from_slice(&d[..d.len().min(MAX_DESCR - 1)]);
    Ok(r)
}

/// A `struct sockaddr_un` for `path`, as the switch reads it.
pub(crate) fn encode_sockaddr(path: &Path) -> io::Result<[u8; SOCKADDR_UN_LEN]> {
    use std::os::unix::ffi::OsStrExt;
    let p = path.as_os_str().as_bytes();
    if p.len() >= SOCKADDR_UN_LEN - 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    let mut a = [0u8; SOCKADDR_UN_LEN];
    a[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    a[2..2 + p.len()].copy_from_slice(p);
    Ok(a)
}

/// The switch's answer: the path of its data socket for the port. `None` for anything that
/// is not a unix socket address with a path (the answer is checked, never trusted).
pub fn decode_reply(b: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if b.len() < 3 || b.len() > SOCKADDR_UN_LEN {
        return None;
    }
    if u16::from_ne_bytes([b[0], b[1]]) != libc::AF_UNIX as u16 {
        return None;
    }
    let path = &b[2..];
    let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
    if end == 0 {
        return None;
    }
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&path[..end])))
}

/// A port plugged into a vde_switch: the control connection that keeps it, and where the
/// switch's end of the data path is.
#[derive(Debug)]
pub struct VdeLink {
    pub ctl_path: PathBuf,
    ctl: UnixStream,
    /// The switch's data socket for this port.
    pub switch_data: PathBuf,
}

impl VdeLink {
    /// Whether the switch still holds the port: its control connection is open. Never
    /// blocks.
    pub fn alive(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv into a live 1-byte buffer on a socket this link owns; MSG_PEEK leaves
        // whatever it sees in place and MSG_DONTWAIT keeps it from blocking.
        let r = unsafe {
            libc::recv(
                self.ctl.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match r {
            0 => false,
            n if n > 0 => true,
            _ => matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EINTR)
            ),
        }
    }
}

/// The data socket of a vde port: bound at a path of its own (removed when dropped).
#[derive(Debug)]
pub struct DataSocket {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

impl Drop for DataSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The control socket to use, and the directory data sockets go in first.
fn control_path(sock: Option<&Path>) -> Result<(PathBuf, Option<PathBuf>), VdeError> {
    if let Some(dir) = sock {
        return Ok((dir.join("ctl"), Some(dir.to_path_buf())));
    }
    let mut tried = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        for name in [".vde2/default.switch", ".vde2/stdsock"] {
            let d = Path::new(&home).join(name);
            if d.exists() {
                return Ok((d.join("ctl"), Some(d)));
            }
            tried.push(d.display().to_string());
        }
    }
    for c in FALLBACK_CTL {
        let p = Path::new(c);
        if p.exists() {
            return Ok((p.to_path_buf(), p.parent().map(Path::to_path_buf)));
        }
        tried.push(c.to_string());
    }
    Err(VdeError::NoSwitch {
        tried: tried.join(", "),
    })
}

/// Binds a data socket for a port of the switch whose control socket is `ctl`: in `dir`
/// first (as libvdeplug does), else in a fallback directory.
pub fn bind_data_socket(
    ctl: &Path,
    dir: Option<&Path>,
    opts: &VdeOptions,
) -> Result<DataSocket, VdeError> {
    let err = |source| VdeError::DataSocket {
        ctl: ctl.to_path_buf(),
        source,
    };
    let s = Socket::new(Domain::UNIX, Type::DGRAM.cloexec(), None).map_err(err)?;
    let pid = std::process::id();
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    // Not in the switch's directory, where libvdeplug puts it first: vde_switch empties its
    // directory when it exits, and the port keeps this socket (the worker serves it) to plug
    // in again when the switch comes back. The directories libvdeplug falls back to are
    // the ones it uses when it may not write into the switch's.
    let _ = dir;
    let dirs = FALLBACK_DIRS.iter().map(|d| (PathBuf::from(d), "vde."));
    for (d, prefix) in dirs {
        for n in 0..1000u32 {
            let path = d.join(format!("{prefix}{pid:05}-{n:05}"));
            let addr = match SockAddr::unix(&path) {
                Ok(a) => a,
                Err(e) => {
                    last = e;
                    break;
                }
            };
            match s.bind(&addr) {
                Ok(()) => {
                    let data = DataSocket { fd: s.into(), path };
                    set_owner(&data.path, opts).map_err(err)?;
                    return Ok(data);
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
    }
    Err(err(last))
}

/// Gives the data socket the group and permissions asked for.
fn set_owner(path: &Path, opts: &VdeOptions) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(g) = &opts.group {
        let gid = group_id(g)?;
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode & 0o7777))
}

/// A group's id, by name or number.
pub(crate) fn group_id(g: &str) -> io::Result<u32> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    let groups = std::fs::read_to_string("/etc/group")?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse().ok()?;
            (name == g).then_some(gid)
        })
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no group named '{g}'")))
}

/// Plugs `data` into the switch: the handshake on its control socket, then `data` connected
/// to the switch's end. Called again with the same data socket after the switch came back.
pub fn plug(opts: &VdeOptions, data: &DataSocket, descr: &str) -> Result<VdeLink, VdeError> {
    let (ctl_path, _) = control_path(opts.sock.as_deref())?;
    let io_err = |source| VdeError::Io {
        ctl: ctl_path.clone(),
        source,
    };
    // A data socket still connected to a switch that went away takes datagrams from nobody
    // else, and a new switch cannot connect to it: dissolve the old association first.
    disconnect(&data.fd).map_err(io_err)?;
    let mut ctl = UnixStream::connect(&ctl_path).map_err(|source| VdeError::Connect {
        path: ctl_path.clone(),
        source,
    })?;
    ctl.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io_err)?;
    ctl.set_write_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io_err)?;
    let req = encode_request(opts.port, &data.path, descr).map_err(io_err)?;
    ctl.write_all(&req).map_err(io_err)?;
    let mut reply = [0u8; SOCKADDR_UN_LEN];
    let n = match ctl.read(&mut reply) {
        Ok(0) => {
            return Err(VdeError::Refused {
                ctl: ctl_path,
                why: if opts.port != 0 {
                    format!("it closed the connection (is port {} free?)", opts.port)
                } else {
                    "it closed the connection".into()
                },
            })
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            return Err(VdeError::Refused {
                ctl: ctl_path,
                why: format!("no answer within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let Some(switch_data) = decode_reply(&reply[..n]) else {
        return Err(VdeError::Refused {
            ctl: ctl_path,
            why: format!("its answer ({n} bytes) is not a unix socket address"),
        });
    };
    let addr = SockAddr::unix(&switch_data).map_err(io_err)?;
    socket2::SockRef::from(&data.fd.as_fd())
        .connect(&addr)
        .map_err(io_err)?;
    ctl.set_read_timeout(None).map_err(io_err)?;
    Ok(VdeLink {
        ctl_path,
        ctl,
        switch_data,
    })
}

/// Dissolves a datagram socket's association (`connect` to `AF_UNSPEC`).
fn disconnect(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC, of the size given, lives across the
    // call; the descriptor is open (owned by the caller).
    let r = unsafe {
        let mut a: libc::sockaddr = std::mem::zeroed();
        a.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd.as_raw_fd(),
            &a,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a vde port: a data socket and the handshake.
pub fn open(opts: &VdeOptions, descr: &str) -> Result<(DataSocket, VdeLink), VdeError> {
    let (ctl, dir) = control_path(opts.sock.as_deref())?;
    let data = bind_data_socket(&ctl, dir.as_deref(), opts)?;
    let link = plug(opts, &data, descr)?;
    Ok((data, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_laid_out_as_vde2_reads_it() {
        let r = encode_request(5, Path::new("/tmp/x/.00042-00000"), "ringswitch").unwrap();
        assert_eq!(r.len(), 12 + SOCKADDR_UN_LEN + "ringswitch".len());
        assert_eq!(&r[0..4], &0xfeed_faceu32.to_ne_bytes());
        assert_eq!(&r[4..8], &3u32.to_ne_bytes());
        assert_eq!(&r[8..12], &(5u32 << 8).to_ne_bytes());
        assert_eq!(&r[12..14], &(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(&r[14..14 + 19], b"/tmp/x/.00042-00000");
        assert_eq!(r[14 + 19], 0);
        assert_eq!(&r[12 + SOCKADDR_UN_LEN..], b"ringswitch");
    }

    #[test]
    fn a_reply_must_be_a_unix_address_with_a_path() {
        let good = encode_sockaddr(Path::new("/tmp/sw/003")).unwrap();
        assert_eq!(decode_reply(&good), Some(PathBuf::from("/tmp/sw/003")));
        assert_eq!(
            decode_reply(&good[..20]),
            Some(PathBuf::from("/tmp/sw/003"))
        );
        assert_eq!(decode_reply(&[]), None);
        assert_eq!(decode_reply(&[1, 0]), None);
        let mut inet = good;
        inet[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        assert_eq!(decode_reply(&inet), None);
        let mut empty = [0u8; SOCKADDR_UN_LEN];
        empty[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(decode_reply(&empty), None);
        assert_eq!(decode_reply(&[0u8; SOCKADDR_UN_LEN + 1]), None);
    }

    #[test]
    fn too_long_a_path_is_an_error() {
        let long = format!("/tmp/{}", "x".repeat(120));
        assert!(encode_request(0, Path::new(&long), "").is_err());
    }
}
