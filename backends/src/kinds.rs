//! Options of every kind but `tap` (see `netdev::tapopts`), checked into typed specs: the
//! socket-based kinds (`socket`, `stream`, `dgram`, `l2tpv3`), `bridge` (a tap ringswitch
//! creates and attaches to a Linux bridge) and `hubport` (which opens nothing: it places
//! another port in a hub). The option names and rules are QEMU's; `reconnect=` on client
//! streams is QEMU 8.0's, with a default that keeps a switch port alive across a peer's
//! restart. Nothing here opens a socket; only host names are resolved.

use crate::addr::{parse_host_port, resolve, SockAddr};
use crate::netdev::{NetdevError, NetdevId, Opts, Source};
use crate::tap::validate_ifname;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Seconds between attempts of a client stream port whose peer went away (0: never retry).
pub const DEFAULT_RECONNECT_S: i64 = 1;

/// How a socket port reaches its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketMode {
    /// Listen for one peer at a time; accept the next after a disconnect.
    Listen(SockAddr),
    /// Connect to a peer; after a disconnect, try again every `reconnect` (never if None).
    Connect {
        addr: SockAddr,
        reconnect: Option<Duration>,
    },
    /// One frame per UDP datagram, from `local` to `remote`.
    Udp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// One frame per unix datagram, from `local` to `remote`.
    UnixDgram { local: PathBuf, remote: PathBuf },
    /// One frame per datagram to and from a multicast group.
    Mcast {
        group: SocketAddr,
        interface: Option<Ipv4Addr>,
    },
    /// An inherited socket; stream or datagram is read from the socket itself.
    Fd(i32),
}

/// L2TPv3 options (net.json `NetdevL2TPv3Options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2tpv3Options {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// UDP ports (UDP mode only).
    pub srcport: u16,
    pub dstport: u16,
    pub udp: bool,
    pub cookie64: bool,
    pub counter: bool,
    pub pincounter: bool,
    pub txcookie: Option<u64>,
    pub rxcookie: Option<u64>,
    pub txsession: u32,
    pub rxsession: u32,
    pub offset: u32,
}

fn bad(option: &str, expected: &'static str, value: impl Into<String>) -> NetdevError {
    NetdevError::BadValue {
        option: option.into(),
        expected,
        value: value.into(),
    }
}

/// A descriptor number inherited from the parent (`fd=N`, `addr.str=N`): command line only,
/// since QMP has no way here to pass a descriptor along.
pub(crate) fn fd_number(option: &str, v: &str, source: Source) -> Result<i32, NetdevError> {
    if source == Source::Qmp {
        return Err(NetdevError::FdOverQmp {
            option: option.into(),
        });
    }
    v.parse::<i32>()
        .ok()
        .filter(|&fd| fd >= 0)
        .ok_or_else(|| bad(option, "a file descriptor number", v))
}

fn host_port(option: &str, v: &str) -> Result<SocketAddr, NetdevError> {
    parse_host_port(v).map_err(|why| NetdevError::Address {
        option: option.into(),
        why,
    })
}

/// `socket`: exactly one of fd=, listen=, connect=, mcast=, udp=.
pub(crate) fn socket(o: &mut Opts, source: Source) -> Result<SocketMode, NetdevError> {
    let fd = o.str("fd");
    let listen = o.str("listen");
    let connect = o.str("connect");
    let mcast = o.str("mcast");
    let udp = o.str("udp");
    let localaddr = o.str("localaddr");
    let reconnect = o.int("reconnect");
    let given = [&fd, &listen, &connect, &mcast, &udp]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given != 1 {
        return Err(NetdevError::Invalid(
            "exactly one of fd=, listen=, connect=, mcast=, udp= is required".into(),
        ));
    }
    if localaddr.is_some() && mcast.is_none() && udp.is_none() {
        return Err(NetdevError::Invalid(
            "localaddr= is only valid with mcast= or udp=".into(),
        ));
    }
    if reconnect.is_some() && connect.is_none() {
        return Err(NetdevError::Invalid(
            "reconnect= is only valid with connect=".into(),
        ));
    }
    if let Some(v) = fd {
        return Ok(SocketMode::Fd(fd_number("fd", &v, source)?));
    }
    if let Some(v) = listen {
        return Ok(SocketMode::Listen(SockAddr::Inet(host_port("listen", &v)?)));
    }
    if let Some(v) = connect {
        return Ok(SocketMode::Connect {
            addr: SockAddr::Inet(host_port("connect", &v)?),
            reconnect: reconnect_delay(reconnect)?,
        });
    }
    if let Some(v) = udp {
        let remote = host_port("udp", &v)?;
        let local = localaddr
            .ok_or_else(|| NetdevError::Invalid("localaddr= is mandatory with udp=".into()))?;
        return Ok(SocketMode::Udp {
            local: host_port("localaddr", &local)?,
            remote,
        });
    }
    let group = host_port("mcast", &mcast.expect("one was given"))?;
    mcast_mode(group, localaddr.as_deref())
}

fn mcast_mode(group: SocketAddr, interface: Option<&str>) -> Result<SocketMode, NetdevError> {
    match group.ip() {
        IpAddr::V4(ip) if ip.is_multicast() => {}
        _ => {
            return Err(bad(
                "mcast",
                "an IPv4 multicast group such as 239.1.2.3:5000",
                group.to_string(),
            ))
        }
    }
    let interface = match interface {
        None => None,
        Some(a) => Some(
            a.parse::<Ipv4Addr>()
                .map_err(|_| bad("localaddr", "an IPv4 interface address", a))?,
        ),
    };
    Ok(SocketMode::Mcast { group, interface })
}

fn reconnect_delay(v: Option<i64>) -> Result<Option<Duration>, NetdevError> {
    match v.unwrap_or(DEFAULT_RECONNECT_S) {
        0 => Ok(None),
        s if (1..=86_400).contains(&s) => Ok(Some(Duration::from_secs(s as u64))),
        s => Err(bad(
            "reconnect",
            "seconds between 0 (never) and 86400",
            s.to_string(),
        )),
    }
}

/// A QAPI `SocketAddress` given as dotted keys under `prefix` (`addr.type=inet,addr.host=…`).
fn socket_address(
    o: &mut Opts,
    prefix: &str,
    source: Source,
) -> Result<Option<SockAddr>, NetdevError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let ty = o.str(&key("type"));
    let host = o.str(&key("host"));
    let port = o.str(&key("port"));
    let path = o.str(&key("path"));
    let fd = o.str(&key("str"));
    let Some(ty) = ty else {
        if host.is_some() || port.is_some() || path.is_some() || fd.is_some() {
            return Err(NetdevError::Missing(key("type")));
        }
        return Ok(None);
    };
    let unexpected = |k: &str, given: bool| -> Result<(), NetdevError> {
        if given {
            return Err(NetdevError::Invalid(format!(
                "Parameter '{}' is unexpected with {}={ty}",
                key(k),
                key("type")
            )));
        }
        Ok(())
    };
    match ty.as_str() {
        "inet" => {
            unexpected("path", path.is_some())?;
            unexpected("str", fd.is_some())?;
            let host = host.ok_or_else(|| NetdevError::Missing(key("host")))?;
            let port = port.ok_or_else(|| NetdevError::Missing(key("port")))?;
            let port: u16 = port
                .parse()
                .map_err(|_| bad(&key("port"), "a port number", port.clone()))?;
            let a = resolve(&host, port).map_err(|why| NetdevError::Address {
                option: key("host"),
                why,
            })?;
            Ok(Some(SockAddr::Inet(a)))
        }
        "unix" => {
            unexpected("host", host.is_some())?;
            unexpected("port", port.is_some())?;
            unexpected("str", fd.is_some())?;
            let path = path.ok_or_else(|| NetdevError::Missing(key("path")))?;
            if path.is_empty() || path.len() >= 108 {
                return Err(bad(&key("path"), "a socket path of 1 to 107 bytes", path));
            }
            Ok(Some(SockAddr::Unix(PathBuf::from(path))))
        }
        "fd" => {
            unexpected("host", host.is_some())?;
            unexpected("path", path.is_some())?;
            let v = fd.ok_or_else(|| NetdevError::Missing(key("str")))?;
            Ok(Some(SockAddr::Fd(fd_number(&key("str"), &v, source)?)))
        }
        other => Err(bad(&key("type"), "inet, unix or fd", other)),
    }
}

/// `stream` (QEMU 7.2): `server=on|off` and an `addr`.
pub(crate) fn stream(o: &mut Opts, source: Source) -> Result<SocketMode, NetdevError> {
    let server = o.bool("server").unwrap_or(false);
    let reconnect = o.int("reconnect");
    let addr = socket_address(o, "addr", source)?.ok_or(NetdevError::Missing("addr".into()))?;
    if let SockAddr::Fd(fd) = addr {
        return Ok(SocketMode::Fd(fd));
    }
    if server {
        if reconnect.is_some() {
            return Err(NetdevError::Invalid(
                "reconnect= is only valid with server=off".into(),
            ));
        }
        return Ok(SocketMode::Listen(addr));
    }
    Ok(SocketMode::Connect {
        addr,
        reconnect: reconnect_delay(reconnect)?,
    })
}

/// `dgram` (QEMU 7.2): `local` and `remote` addresses; a multicast `remote` joins the group.
pub(crate) fn dgram(o: &mut Opts, source: Source) -> Result<SocketMode, NetdevError> {
    let local = socket_address(o, "local", source)?;
    let remote = socket_address(o, "remote", source)?;
    match (local, remote) {
        (Some(SockAddr::Fd(fd)), None) => Ok(SocketMode::Fd(fd)),
        (l, Some(SockAddr::Inet(r))) if r.ip().is_multicast() => {
            let interface = match l {
                None => None,
                Some(SockAddr::Inet(a)) => Some(a.ip().to_string()),
                Some(_) => {
                    return Err(NetdevError::Invalid(
                        "a multicast remote needs an inet local (the interface) or none".into(),
                    ))
                }
            };
            mcast_mode(r, interface.as_deref())
        }
        (Some(SockAddr::Inet(l)), Some(SockAddr::Inet(r))) => Ok(SocketMode::Udp {
            local: l,
            remote: r,
        }),
        (Some(SockAddr::Unix(l)), Some(SockAddr::Unix(r))) => Ok(SocketMode::UnixDgram {
            local: l,
            remote: r,
        }),
        (None, _) => Err(NetdevError::Missing("local".into())),
        (_, None) => Err(NetdevError::Missing("remote".into())),
        _ => Err(NetdevError::Invalid(
            "local and remote must be of the same type (inet or unix)".into(),
        )),
    }
}

fn uint(o: &mut Opts, k: &str, max: u64) -> Result<Option<u64>, NetdevError> {
    match o.uint(k) {
        Some(v) if v > max => Err(bad(k, "a smaller number", v.to_string())),
        v => Ok(v),
    }
}

/// `l2tpv3`.
pub(crate) fn l2tpv3(o: &mut Opts) -> Result<L2tpv3Options, NetdevError> {
    let src = o.str("src").ok_or(NetdevError::Missing("src".into()))?;
    let dst = o.str("dst").ok_or(NetdevError::Missing("dst".into()))?;
    let ipv6 = o.bool("ipv6").unwrap_or(false);
    let udp = o.bool("udp").unwrap_or(false);
    let ip = |k: &str, v: &str| -> Result<IpAddr, NetdevError> {
        let a = resolve(v, 0).map_err(|why| NetdevError::Address {
            option: k.into(),
            why,
        })?;
        if a.ip().is_ipv6() != ipv6 {
            return Err(bad(
                k,
                if ipv6 {
                    "an IPv6 address (ipv6=on)"
                } else {
                    "an IPv4 address (ipv6=off)"
                },
                v,
            ));
        }
        Ok(a.ip())
    };
    let src = ip("src", &src)?;
    let dst = ip("dst", &dst)?;
    let port = |o: &mut Opts, k: &str| -> Result<u16, NetdevError> {
        match o.str(k) {
            None if udp => Err(NetdevError::Missing(k.into())),
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| bad(k, "a port number", v)),
        }
    };
    let srcport = port(o, "srcport")?;
    let dstport = port(o, "dstport")?;
    let txcookie = uint(o, "txcookie", u64::MAX)?;
    let rxcookie = uint(o, "rxcookie", u64::MAX)?;
    if txcookie.is_some() != rxcookie.is_some() {
        return Err(NetdevError::Invalid(
            "txcookie= and rxcookie= must be given together".into(),
        ));
    }
    let cookie64 = o.bool("cookie64").unwrap_or(false);
    for (k, c) in [("txcookie", txcookie), ("rxcookie", rxcookie)] {
        if let Some(c) = c {
            if !cookie64 && c > u32::MAX as u64 {
                return Err(bad(k, "a 32-bit cookie (or cookie64=on)", c.to_string()));
            }
        }
    }
    let txsession = uint(o, "txsession", u32::MAX as u64)?
        .ok_or(NetdevError::Missing("txsession".into()))? as u32;
    let rxsession = uint(o, "rxsession", u32::MAX as u64)?.map_or(txsession, |v| v as u32);
    let offset = uint(o, "offset", 256)?.unwrap_or(0) as u32;
    Ok(L2tpv3Options {
        src,
        dst,
        srcport,
        dstport,
        udp,
        cookie64,
        counter: o.bool("counter").unwrap_or(false),
        pincounter: o.bool("pincounter").unwrap_or(false),
        txcookie,
        rxcookie,
        txsession,
        rxsession,
        offset,
    })
}

/// `bridge`: the Linux bridge `br=` to attach a new tap to.
pub(crate) fn bridge(o: &mut Opts) -> Result<String, NetdevError> {
    let br = o.str("br").ok_or(NetdevError::Missing("br".into()))?;
    validate_ifname(&br).map_err(|e| NetdevError::Ifname(format!("Parameter 'br': {e}")))?;
    Ok(br)
}

/// `vhost-user`: `chardev=ID` (required) and `queues=N` (queue pairs, 1 to
/// `MAX_PAIRS`; QEMU allows 1024, and says so in the same words).
pub(crate) fn vhost_user(o: &mut Opts) -> Result<(String, u16), NetdevError> {
    let chardev = o
        .str("chardev")
        .ok_or(NetdevError::Missing("chardev".into()))?;
    NetdevId::new(&chardev).map_err(|_| bad("chardev", "a chardev id", chardev.clone()))?;
    let queues = o.int("queues").unwrap_or(1);
    let max = ringswitch_switch::port::vhost_user::MAX_PAIRS;
    if queues < 1 || queues > max as i64 {
        return Err(NetdevError::Invalid(format!(
            "vhost-user number of queues must be in range [1, {max}]"
        )));
    }
    let _ = o.bool("vhostforce");
    Ok((chardev, queues as u16))
}

/// `vde`: `sock=DIR`, `port=N` (0 to 65535), `group=NAME`, `mode=OCTAL` (default 0700).
pub(crate) fn vde(o: &mut Opts) -> Result<crate::vde::VdeOptions, NetdevError> {
    let sock = o.str("sock").map(std::path::PathBuf::from);
    let port = match o.uint("port") {
        Some(p) => u16::try_from(p)
            .map_err(|_| bad("port", "a port number from 0 to 65535", p.to_string()))?,
        None => 0,
    };
    let mode = match o.uint("mode") {
        Some(m) if m <= 0o7777 => m as u32,
        Some(m) => {
            return Err(bad(
                "mode",
                "permissions from 0 to 07777",
                format!("{m:#o}"),
            ))
        }
        None => 0o700,
    };
    Ok(crate::vde::VdeOptions {
        sock,
        port,
        group: o.str("group"),
        mode,
    })
}

/// `hubport`: `hubid=N` places the netdev named by `netdev=` in bridge domain N.
pub(crate) fn hubport(o: &mut Opts) -> Result<(u16, Option<NetdevId>), NetdevError> {
    let hubid = o.int("hubid").ok_or(NetdevError::Missing("hubid".into()))?;
    let hubid = u16::try_from(hubid)
        .map_err(|_| bad("hubid", "a hub number from 0 to 65535", hubid.to_string()))?;
    let netdev = match o.str("netdev") {
        Some(n) => Some(NetdevId::new(&n).map_err(|_| bad("netdev", "a netdev id", n))?),
        None => None,
    };
    Ok((hubid, netdev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netdev::{parse_netdev, NetdevKind};

    fn kind(s: &str) -> NetdevKind {
        parse_netdev(s).unwrap_or_else(|e| panic!("{s}: {e}")).kind
    }

    fn err(s: &str) -> String {
        parse_netdev(s).unwrap_err().to_string()
    }

    #[test]
    fn socket_kinds_in_qemu_syntax() {
        use crate::addr::SockAddr;
        use std::time::Duration;
        assert_eq!(
            kind("socket,id=a,listen=:4000"),
            NetdevKind::Socket(SocketMode::Listen(SockAddr::Inet(
                "0.0.0.0:4000".parse().unwrap()
            )))
        );
        assert_eq!(
            kind("socket,id=a,connect=127.0.0.1:4000"),
            NetdevKind::Socket(SocketMode::Connect {
                addr: SockAddr::Inet("127.0.0.1:4000".parse().unwrap()),
                reconnect: Some(Duration::from_secs(1))
            })
        );
        assert_eq!(
            kind("socket,id=a,connect=127.0.0.1:4000,reconnect=0"),
            NetdevKind::Socket(SocketMode::Connect {
                addr: SockAddr::Inet("127.0.0.1:4000".parse().unwrap()),
                reconnect: None
            })
        );
        assert_eq!(
            kind("socket,id=a,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000"),
            NetdevKind::Socket(SocketMode::Udp {
                local: "127.0.0.1:5000".parse().unwrap(),
                remote: "127.0.0.1:5001".parse().unwrap()
            })
        );
        assert_eq!(
            kind("socket,id=a,mcast=239.1.2.3:5000,localaddr=127.0.0.1"),
            NetdevKind::Socket(SocketMode::Mcast {
                group: "239.1.2.3:5000".parse().unwrap(),
                interface: Some("127.0.0.1".parse().unwrap())
            })
        );
        assert_eq!(
            kind("socket,id=a,fd=5"),
            NetdevKind::Socket(SocketMode::Fd(5))
        );
        assert_eq!(
            kind("stream,id=a,server=on,addr.type=unix,addr.path=/tmp/s"),
            NetdevKind::Stream(SocketMode::Listen(SockAddr::Unix("/tmp/s".into())))
        );
        assert!(matches!(
            kind("stream,id=a,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=4000"),
            NetdevKind::Stream(SocketMode::Connect { .. })
        ));
        assert_eq!(
            kind(
                "dgram,id=a,local.type=unix,local.path=/tmp/l,remote.type=unix,remote.path=/tmp/r"
            ),
            NetdevKind::Dgram(SocketMode::UnixDgram {
                local: "/tmp/l".into(),
                remote: "/tmp/r".into()
            })
        );
        assert!(matches!(
            kind("dgram,id=a,remote.type=inet,remote.host=239.0.0.9,remote.port=6000"),
            NetdevKind::Dgram(SocketMode::Mcast { .. })
        ));
    }

    #[test]
    fn socket_kind_errors_name_the_offender() {
        for (spec, needle) in [
            ("socket,id=a", "exactly one of"),
            ("socket,id=a,listen=:1,connect=h:2", "exactly one of"),
            ("socket,id=a,listen=nope", "'listen'"),
            ("socket,id=a,listen=:1,localaddr=:2", "localaddr= is only valid"),
            ("socket,id=a,udp=127.0.0.1:1", "localaddr= is mandatory"),
            ("socket,id=a,mcast=127.0.0.1:5000", "multicast group"),
            ("socket,id=a,listen=:1,reconnect=3", "reconnect= is only valid"),
            ("socket,id=a,connect=127.0.0.1:1,reconnect=-1", "'reconnect'"),
            ("stream,id=a,server=on", "'addr' is missing"),
            ("stream,id=a,addr.host=x", "'addr.type' is missing"),
            ("stream,id=a,addr.type=inet,addr.port=1", "'addr.host' is missing"),
            ("stream,id=a,addr.type=inet,addr.host=h", "'addr.port' is missing"),
            ("stream,id=a,addr.type=unix", "'addr.path' is missing"),
            ("stream,id=a,addr.type=tipc", "'addr.type'"),
            ("stream,id=a,addr.type=unix,addr.path=/x,addr.port=1", "unexpected"),
            ("stream,id=a,server=maybe,addr.type=unix,addr.path=/x", "'server'"),
            ("stream,id=a,addr.type=inet,addr.host=h,addr.port=1,addr.to=9", "not supported"),
            ("dgram,id=a,local.type=unix,local.path=/l", "'remote' is missing"),
            ("dgram,id=a,local.type=unix,local.path=/l,remote.type=inet,remote.host=1.2.3.4,remote.port=1", "same type"),
            ("l2tpv3,id=a,dst=1.2.3.4,txsession=1", "'src' is missing"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5", "'txsession' is missing"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5,txsession=1,udp=on", "'srcport' is missing"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5,txsession=1,txcookie=1", "together"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5,txsession=1,txcookie=0x100000000,rxcookie=1", "32-bit cookie"),
            ("l2tpv3,id=a,src=1.2.3.4,dst=1.2.3.5,txsession=4294967296", "'txsession'"),
            ("l2tpv3,id=a,src=::1,dst=1.2.3.5,txsession=1", "IPv4"),
            ("bridge,id=a", "'br' is missing"),
            ("bridge,id=a,br=br0,helper=/x", "without a helper"),
            ("hubport,id=a", "'hubid' is missing"),
            ("hubport,id=a,hubid=70000", "'hubid'"),
        ] {
            let e = err(spec);
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn l2tpv3_options_and_defaults() {
        let NetdevKind::L2tpv3(o) = kind("l2tpv3,id=a,src=127.0.0.2,dst=127.0.0.3,udp=on,srcport=1701,dstport=1702,txsession=0x11223344,cookie64=on,txcookie=0xa1a2a3a4a5a6a7a8,rxcookie=9,counter=on,offset=4") else {
            panic!()
        };
        assert_eq!(
            (o.txsession, o.rxsession, o.txcookie, o.rxcookie),
            (
                0x1122_3344,
                0x1122_3344,
                Some(0xa1a2_a3a4_a5a6_a7a8),
                Some(9)
            )
        );
        assert!(o.udp && o.counter && o.cookie64 && !o.pincounter);
        assert_eq!((o.srcport, o.dstport, o.offset), (1701, 1702, 4));
    }

    #[test]
    fn vde_options_as_qemu_spells_them() {
        let NetdevKind::Vde(o) = kind("vde,id=a,sock=/run/sw,port=3,group=kvm,mode=0770") else {
            panic!()
        };
        assert_eq!(o.sock.as_deref(), Some(std::path::Path::new("/run/sw")));
        assert_eq!(
            (o.port, o.group.as_deref(), o.mode),
            (3, Some("kvm"), 0o770)
        );
        let NetdevKind::Vde(o) = kind("vde,id=a") else {
            panic!()
        };
        assert_eq!((o.sock, o.port, o.group, o.mode), (None, 0, None, 0o700));
        assert!(err("vde,id=a,port=65536").contains("'port'"));
        assert!(err("vde,id=a,mode=010000").contains("'mode'"));
    }
}
