//! Options of the `tap` kind: which interface (`ifname=`, or an inherited `fd=`), QEMU's
//! `script=`/`downscript=` and `vnet_hdr=`, checked into `TapOptions`. Opening the tap and running the scripts
//! is `open`'s job; nothing here touches the kernel beyond checking a name.

use super::keyval::{Opts, Source};
use super::NetdevError;
use crate::kinds::fd_number;
use crate::tap::{validate_ifname, TapError};
use std::os::fd::RawFd;

/// A script option (`script=`/`downscript=`): none, or a program to run with the ifname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    None,
    Path(String),
}

/// Options of a tap port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOptions {
    /// Interface to create or attach to (kernel template `tap%d` when absent).
    pub ifname: Option<String>,
    /// Descriptor of an already attached tap, inherited from the parent.
    pub fd: Option<RawFd>,
    pub script: Script,
    pub downscript: Script,
    /// `vnet_hdr=on`: a virtio-net header in front of every frame, with checksum and
    /// segmentation offloads (64 KiB GSO segments pass through whole).
    pub vnet_hdr: bool,
    /// `queues=N`: a multiqueue tap (`IFF_MULTI_QUEUE`), one descriptor per queue, the
    /// queues spread over the workers; 1 (a plain tap) by default.
    pub queues: u16,
}

/// Most queues of one multiqueue tap (QEMU allows 1024; each queue here is a port slot).
pub const MAX_TAP_QUEUES: u16 = 16;

fn parse_script(option: &str, v: Option<String>) -> Result<Script, NetdevError> {
    match v.as_deref() {
        None | Some("" | "no") => Ok(Script::None),
        Some(p) => {
            if p.contains('\0') {
                return Err(NetdevError::BadValue {
                    option: option.into(),
                    expected: "a program path or 'no'",
                    value: p.into(),
                });
            }
            Ok(Script::Path(p.to_string()))
        }
    }
}

/// `tap`: `ifname=` or `fd=` (not both), `script=`, `downscript=`.
pub(crate) fn tap(o: &mut Opts, source: Source) -> Result<TapOptions, NetdevError> {
    let ifname = match o.str("ifname") {
        Some(v) => {
            validate_ifname(&v)
                .map_err(|e: TapError| NetdevError::Ifname(format!("Parameter 'ifname': {e}")))?;
            Some(v)
        }
        None => None,
    };
    let fd = match o.str("fd") {
        Some(v) => Some(fd_number("fd", &v, source)?),
        None => None,
    };
    let script = parse_script("script", o.str("script"))?;
    let downscript = parse_script("downscript", o.str("downscript"))?;
    let vnet_hdr = o.bool("vnet_hdr").unwrap_or(false);
    if ifname.is_some() && fd.is_some() {
        return Err(NetdevError::IfnameWithFd);
    }
    let queues = match o.int("queues") {
        None => 1,
        Some(n) if (1..=i64::from(MAX_TAP_QUEUES)).contains(&n) => n as u16,
        Some(n) => {
            return Err(NetdevError::BadValue {
                option: "queues".into(),
                expected: "a number of queues from 1 to 16",
                value: n.to_string(),
            })
        }
    };
    if queues > 1 && fd.is_some() {
        return Err(NetdevError::BadValue {
            option: "queues".into(),
            expected: "1 with fd= (one inherited descriptor is one queue)",
            value: queues.to_string(),
        });
    }
    Ok(TapOptions {
        ifname,
        fd,
        script,
        downscript,
        vnet_hdr,
        queues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netdev::{parse_netdev, NetdevKind};

    fn tap(s: &str) -> TapOptions {
        match parse_netdev(s).unwrap().kind {
            NetdevKind::Tap(t) => t,
            other => panic!("not a tap: {other:?}"),
        }
    }

    #[test]
    fn parses_qemu_tap_specs() {
        let s = parse_netdev("tap,id=n0,ifname=tap0").unwrap();
        assert_eq!(s.id.as_str(), "n0");
        assert_eq!(tap("tap,id=n0,ifname=tap0").ifname.as_deref(), Some("tap0"));
        assert_eq!(tap("type=tap,id=n0").ifname, None);
        assert_eq!(tap("tap,id=n0,fd=7").fd, Some(7));
        let t = tap("tap,id=n0,ifname=t,script=no,downscript=no");
        assert!(t.script == Script::None && t.downscript == Script::None);
        assert_eq!(
            tap("tap,id=n0,script=/etc/up").script,
            Script::Path("/etc/up".into())
        );
        assert!(parse_netdev("tap,id=n0,script=/x").unwrap().wants_scripts());
        assert!(tap("tap,id=n0,vnet_hdr=on").vnet_hdr);
        assert!(!tap("tap,id=n0,vnet_hdr=off").vnet_hdr);
        assert!(
            !tap("tap,id=n0").vnet_hdr,
            "off unless asked for, as in QEMU"
        );
        assert!(!parse_netdev("tap,id=n0").unwrap().wants_scripts());
        assert_eq!(tap("tap,id=n0").queues, 1);
        assert_eq!(tap("tap,id=n0,queues=4").queues, 4);
        for bad in ["queues=0", "queues=17", "queues=-1", "fd=3,queues=2"] {
            assert!(
                matches!(parse_netdev(&format!("tap,id=n0,{bad}")), Err(NetdevError::BadValue { option, .. }) if option == "queues"),
                "{bad}"
            );
        }
    }
}
