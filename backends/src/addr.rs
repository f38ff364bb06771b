//! Socket addresses: `SockAddr`, what a port binds or connects to (inet, unix, or an inherited
//! descriptor: the forms of QEMU's `SocketAddress`, whose dotted keys `kinds` reads), and the
//! resolution of hosts given as text (`HOST:PORT` for `socket`, bare hosts for `l2tpv3` and
//! `addr.host=`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::path::PathBuf;

/// A resolved socket address of any family ringswitch serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
    /// A descriptor inherited from the parent (command line only).
    Fd(RawFd),
}

impl std::fmt::Display for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SockAddr::Inet(a) => write!(f, "{a}"),
            SockAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            SockAddr::Fd(fd) => write!(f, "fd:{fd}"),
        }
    }
}

/// Parses `HOST:PORT` (`[V6]:PORT` for IPv6; an empty host means any address, as in QEMU's
/// `listen=:1234`). Host names are resolved, IPv4 first.
pub fn parse_host_port(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{port}' in '{s}' is not a port number"))?;
    resolve(host, port).map_err(|e| format!("'{s}': {e}"))
}

/// Resolves a host (name, IPv4, IPv6 with or without brackets; empty = any) and a port.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{host}': {e}"))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| format!("'{host}' has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            parse_host_port(":1234").unwrap(),
            "0.0.0.0:1234".parse().unwrap()
        );
        assert_eq!(
            parse_host_port("[::1]:9").unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert!(parse_host_port("localhost:7").unwrap().ip().is_loopback());
        for bad in ["", "1.2.3.4", "1.2.3.4:", "1.2.3.4:99999", "1.2.3.4:x"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }
}
