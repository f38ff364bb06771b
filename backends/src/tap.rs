//! `Tap`: a Linux TAP device opened through /dev/net/tun, owned as one file descriptor.
//!
//! Opened with IFF_TAP | IFF_NO_PI: every read returns one whole Ethernet frame and every write
//! sends one, with no packet-information header. With `vnet_hdr` also IFF_VNET_HDR: a 12-byte
//! `virtio_net_hdr_v1` (TUNSETVNETHDRSZ) in front of every frame, and the offloads the
//! switch takes switched on (TUNSETOFFLOAD: checksum, TSO4/6 and, where the kernel has them,
//! USO4/6), so the kernel hands over whole GSO segments with partial checksums. Like QEMU,
//! ringswitch never reconfigures the kernel side otherwise (no addresses, no `up`): that is
//! the operator's business. All ioctls live here behind safe methods.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// TUNSETOFFLOAD bits (linux/if_tun.h; the USO bits came with 6.2, older headers lack them).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;
/// Bytes of the virtio-net header a vnet_hdr tap carries (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: libc::c_int = 12;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// The interface request the TUN ioctls take: a name and a flags word, padded to `struct ifreq`.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> IfReq {
        let mut r = IfReq {
            name: [0; 16],
            flags,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Why a tap could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("interface name '{0}' is longer than {MAX_IFNAME} bytes")]
    NameTooLong(String),
    #[error(
        "interface name '{0}' is not valid: use 1 to 15 characters, no '/', ':' or whitespace"
    )]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and are you root or CAP_NET_ADMIN?)")]
    OpenTun(#[source] io::Error),
    #[error("tap '{name}' is busy: another process holds it")]
    Busy { name: String },
    #[error("not permitted to create or attach tap '{name}' (needs CAP_NET_ADMIN): {source}")]
    Permission {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("'{name}' exists but is not a tap opened with IFF_TAP|IFF_NO_PI (a tun device, or created with other flags such as vnet_hdr or multi_queue)")]
    FlagsMismatch { name: String },
    #[error("cannot set up tap '{name}': {source}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not an attached tap device: {source}")]
    NotATap {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is a tap but with flags {flags:#x} that do not fit (needs IFF_TAP|IFF_NO_PI, not multiqueue, and IFF_VNET_HDR exactly when vnet_hdr=on)")]
    UnsupportedFdFlags { fd: RawFd, flags: u16 },
    #[error("cannot set carrier of tap '{name}': {source}")]
    Carrier {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the virtio-net header or offloads of tap '{name}': {source}")]
    Offload {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Checks an interface name the way the kernel's dev_valid_name does.
pub fn validate_ifname(name: &str) -> Result<(), TapError> {
    if name.len() > MAX_IFNAME {
        return Err(TapError::NameTooLong(name.to_string()));
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err(TapError::BadName(name.to_string()));
    }
    Ok(())
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// TUNSETOFFLOAD bits in force (0 without a virtio-net header).
    offloads: u32,
}

/// The offloads a vnet_hdr tap asks for, most first: with UDP segmentation, then without
/// (kernels before 6.2 refuse the USO bits).
const OFFLOAD_CHOICES: &[u32] = &[
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
];

/// The names of TUNSETOFFLOAD bits, for listings.
pub fn offload_names(bits: u32) -> Vec<&'static str> {
    [
        (TUN_F_CSUM, "csum"),
        (TUN_F_TSO4, "tso4"),
        (TUN_F_TSO6, "tso6"),
        (TUN_F_TSO_ECN, "tso-ecn"),
        (TUN_F_USO4, "uso4"),
        (TUN_F_USO6, "uso6"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|&(_, n)| n)
    .collect()
}

impl Tap {
    /// Creates a tap named `name` (a kernel template such as `tap%d` when `None`), or attaches
    /// to the existing persistent tap of that name.
    pub fn open(name: Option<&str>) -> Result<Tap, TapError> {
        Tap::open_with(name, false)
    }

    /// `open`, with a virtio-net header and offloads when `vnet_hdr`.
    pub fn open_with(name: Option<&str>, vnet_hdr: bool) -> Result<Tap, TapError> {
        Tap::open_flags(name, vnet_hdr, 0)
    }

    /// A multiqueue tap (`IFF_MULTI_QUEUE`): `queues` descriptors of one interface, each a
    /// queue the kernel steers flows to. One queue is a plain tap (`open_with`).
    pub fn open_queues(
        name: Option<&str>,
        vnet_hdr: bool,
        queues: u16,
    ) -> Result<Vec<Tap>, TapError> {
        if queues <= 1 {
            return Ok(vec![Tap::open_with(name, vnet_hdr)?]);
        }
        let first = Tap::open_flags(name, vnet_hdr, IFF_MULTI_QUEUE)?;
        let ifname = first.name.clone();
        let mut taps = vec![first];
        for _ in 1..queues {
            taps.push(Tap::open_flags(Some(&ifname), vnet_hdr, IFF_MULTI_QUEUE)?);
        }
        Ok(taps)
    }

    fn open_flags(
        name: Option<&str>,
        vnet_hdr: bool,
        extra: libc::c_short,
    ) -> Result<Tap, TapError> {
        let name = name.unwrap_or("tap%d");
        validate_ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let fd = OwnedFd::from(file);
        let flags = IFF_TAP | IFF_NO_PI | extra | if vnet_hdr { IFF_VNET_HDR } else { 0 };
        let mut req = IfReq::new(name, flags);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `IfReq` has its layout and size
        // (40 bytes) and lives across the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy { name },
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission { name, source },
                Some(libc::EINVAL) => TapError::FlagsMismatch { name },
                _ => TapError::SetIff { name, source },
            });
        }
        let mut tap = Tap {
            fd,
            name: req.name(),
            offloads: 0,
        };
        if vnet_hdr {
            tap.enable_offloads()?;
        }
        Ok(tap)
    }

    /// Sets the 12-byte virtio-net header and the most offloads the kernel takes.
    fn enable_offloads(&mut self) -> Result<(), TapError> {
        let err = |name: &str| TapError::Offload {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        };
        let size = VNET_HDR_LEN;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is live.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(err(&self.name));
        }
        for &bits in OFFLOAD_CHOICES {
            // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long).
            if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETOFFLOAD, bits as libc::c_ulong) }
                == 0
            {
                self.offloads = bits;
                return Ok(());
            }
        }
        Err(err(&self.name))
    }

    /// The TUNSETOFFLOAD bits in force (0: plain frames, no header).
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// Whether frames carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.offloads != 0
    }

    /// Takes an inherited descriptor that must already be attached to a tap (QEMU's `fd=`).
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        Tap::from_fd_with(fd, false)
    }

    /// `from_fd`, for a tap that was opened with IFF_VNET_HDR when `vnet_hdr` (its header
    /// size and offloads are set here).
    pub fn from_fd_with(fd: OwnedFd, vnet_hdr: bool) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let mut req = IfReq::new("", 0);
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which has that layout and size.
        let rc = unsafe { libc::ioctl(raw, TUNGETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(TapError::NotATap {
                fd: raw,
                source: io::Error::last_os_error(),
            });
        }
        let flags = req.flags;
        let bad = IFF_TUN | IFF_MULTI_QUEUE;
        let vnet_ok = (flags & IFF_VNET_HDR != 0) == vnet_hdr;
        if flags & IFF_TAP == 0 || flags & IFF_NO_PI == 0 || flags & bad != 0 || !vnet_ok {
            return Err(TapError::UnsupportedFdFlags {
                fd: raw,
                flags: flags as u16,
            });
        }
        let mut tap = Tap {
            fd,
            name: req.name(),
            offloads: 0,
        };
        if vnet_hdr {
            tap.enable_offloads()?;
        }
        Ok(tap)
    }

    /// Takes ownership of descriptor number `raw` inherited from the parent process.
    ///
    /// Fails (without taking ownership) when `raw` is not an open descriptor.
    pub fn from_inherited(raw: RawFd, vnet_hdr: bool) -> Result<Tap, TapError> {
        // SAFETY: F_GETFD only queries the descriptor table.
        if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(TapError::NotATap {
                fd: raw,
                source: io::Error::from_raw_os_error(libc::EBADF),
            });
        }
        // SAFETY: the descriptor is open; the operator handed it to us with `fd=N`, so this
        // process owns it from here on (as QEMU does with an inherited fd).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Tap::from_fd_with(fd, vnet_hdr)
    }

    /// The kernel's name for the interface.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the carrier the kernel side sees (link up/down from the host's point of view).
    pub fn set_carrier(&self, up: bool) -> Result<(), TapError> {
        set_carrier_fd(self.fd.as_raw_fd(), up).map_err(|e| match e {
            TapError::Carrier { source, .. } => TapError::Carrier {
                name: self.name.clone(),
                source,
            },
            other => other,
        })
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for Tap {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

/// TUNSETCARRIER on a tap descriptor.
pub(crate) fn set_carrier_fd(fd: RawFd, up: bool) -> Result<(), TapError> {
    let v: libc::c_int = up.into();
    // SAFETY: TUNSETCARRIER reads one int through the pointer, which is live; an fd that is not
    // a tap makes the ioctl fail, which is reported.
    let rc = unsafe { libc::ioctl(fd, TUNSETCARRIER, &v as *const libc::c_int) };
    if rc < 0 {
        return Err(TapError::Carrier {
            name: format!("fd {fd}"),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn names_are_validated_before_any_syscall() {
        assert!(matches!(
            Tap::open(Some("a-name-of-16-chr")),
            Err(TapError::NameTooLong(_))
        ));
        for bad in ["", ".", "..", "a/b", "a b", "a:1"] {
            assert!(
                matches!(validate_ifname(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(validate_ifname("tap%d").is_ok());
        assert!(validate_ifname("fifteen-chars-x").is_ok());
    }

    #[test]
    fn creates_attaches_and_rejects_busy_and_wrong_fds() {
        if !is_root() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but not root: tap tests cannot run");
            }
            eprintln!("skipped: creating taps needs root");
            return;
        }
        let name = format!("rsut{}", std::process::id() % 100_000);
        let t = Tap::open(Some(&name)).expect("create tap");
        assert_eq!(t.name(), name);
        // A non-persistent tap held by one fd is busy for a second opener.
        assert!(matches!(Tap::open(Some(&name)), Err(TapError::Busy { .. })));
        t.set_carrier(false).expect("carrier down");
        t.set_carrier(true).expect("carrier up");
        // Its fd can be handed over as `fd=`.
        let t2 = Tap::from_fd(t.into_fd()).expect("fd of a tap");
        assert_eq!(t2.name(), name);
        // A descriptor that is not a tap is refused.
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            Tap::from_fd(OwnedFd::from(f)),
            Err(TapError::NotATap { .. })
        ));
        assert!(matches!(
            Tap::from_inherited(987_654, false),
            Err(TapError::NotATap { .. })
        ));
        // A template name gets a kernel-chosen name.
        let auto = Tap::open(None).expect("tap%d");
        assert!(auto.name().starts_with("tap"), "{}", auto.name());
        assert_eq!(auto.offloads(), 0);
        // With a virtio-net header: checksum and TSO at least; the kernel side shows them.
        let v = Tap::open_with(None, true).expect("vnet_hdr tap");
        let need = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        assert_eq!(
            v.offloads() & need,
            need,
            "{:?}",
            offload_names(v.offloads())
        );
        // Its descriptor is a vnet_hdr tap: taken only as one.
        let name = v.name().to_string();
        assert!(
            matches!(
                Tap::from_fd_with(v.into_fd(), false),
                Err(TapError::UnsupportedFdFlags { .. })
            ),
            "{name}"
        );
    }
}
