//! A `user` netdev's options, checked as QEMU 7.2's `net_slirp_init` checks them (same
//! defaults, same order of checks, same error texts), into the addresses libslirp is given.
//! QEMU's defaults: network 10.0.2.0/24, gateway (`host`) 10.0.2.2, DNS 10.0.2.3, DHCP from
//! 10.0.2.15, IPv6 prefix fec0::/64 with host ::2 and DNS ::3; IPv4 and IPv6 both on.

use super::hostfwd::{c_strtol, inet_aton, GuestFwd, HostFwd};
use crate::netdev::{NetdevError, Opts};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A user port's configuration, every address resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOptions {
    pub restricted: bool,
    pub ipv4: bool,
    pub net: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub host: Ipv4Addr,
    pub dhcp_start: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub ipv6: bool,
    pub prefix6: Ipv6Addr,
    pub prefix6_len: u8,
    pub host6: Ipv6Addr,
    pub dns6: Ipv6Addr,
    pub hostname: Option<String>,
    pub tftp: Option<String>,
    pub tftp_server_name: Option<String>,
    pub bootfile: Option<String>,
    pub dnssearch: Vec<String>,
    pub domainname: Option<String>,
    /// With the rule's text, in the order QEMU sets them up (the reverse of the command
    /// line's).
    pub hostfwd: Vec<(String, HostFwd)>,
    pub guestfwd: Vec<(String, GuestFwd)>,
}

fn invalid(msg: impl Into<String>) -> NetdevError {
    NetdevError::Invalid(msg.into())
}

fn v4(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

/// The classful mask QEMU guesses for `net=ADDR` without a prefix length.
fn classful_mask(addr: u32) -> u32 {
    if addr & 0x8000_0000 == 0 {
        0xff00_0000
    } else if addr & 0xfff0_0000 == 0xac10_0000 {
        0xfff0_0000
    } else if addr & 0xc000_0000 == 0x8000_0000 || addr & 0xffff_0000 == 0xc0a8_0000 {
        // Class B, and the private 192.168.0.0/16.
        0xffff_0000
    } else if addr & 0xffff_0000 == 0xc612_0000 {
        0xfffe_0000
    } else if addr & 0xe000_0000 == 0xe000_0000 {
        0xffff_ff00
    } else {
        0xffff_fff0
    }
}

/// `net=ADDR[/LEN|/MASK]`: the network and its mask.
fn network(vnet: &str) -> Result<(u32, u32), NetdevError> {
    let Some((addr, rest)) = vnet.split_once('/') else {
        let net = inet_aton(vnet).ok_or_else(|| invalid("Failed to parse netmask"))?;
        return Ok((v4(net), classful_mask(v4(net))));
    };
    let net = inet_aton(addr).ok_or_else(|| invalid("Failed to parse netmask"))?;
    let mask =
        match c_strtol(rest, 10) {
            None => v4(inet_aton(rest)
                .ok_or_else(|| invalid("Failed to parse netmask (trailing chars)"))?),
            Some(shift) if !(4..=32).contains(&shift) => {
                return Err(invalid("Invalid netmask provided (must be in range 4-32)"))
            }
            Some(shift) => (u64::from(u32::MAX) << (32 - shift)) as u32,
        };
    Ok((v4(net), mask))
}

fn in6_equal_net(a: Ipv6Addr, b: Ipv6Addr, len: u8) -> bool {
    let (a, b) = (u128::from(a), u128::from(b));
    len == 0 || (a ^ b) >> (128 - u32::from(len)) == 0
}

fn inet_pton6(s: &str) -> Option<Ipv6Addr> {
    let c = std::ffi::CString::new(s).ok()?;
    let mut a = [0u8; 16];
    // SAFETY: `c` is NUL-terminated and `a` has room for an in6_addr; both live for the call.
    let ok = unsafe { super::ffi::inet_pton(libc::AF_INET6, c.as_ptr(), a.as_mut_ptr().cast()) };
    (ok == 1).then(|| Ipv6Addr::from(a))
}

fn with_last(a: Ipv6Addr, or: u8) -> Ipv6Addr {
    let mut o = a.octets();
    o[15] |= or;
    Ipv6Addr::from(o)
}

impl UserOptions {
    pub(crate) fn build(o: &mut Opts) -> Result<UserOptions, NetdevError> {
        let has_ipv4 = o.bool("ipv4");
        let has_ipv6 = o.bool("ipv6");
        // QEMU: naming one family on alone turns the other off.
        let ipv4 = !(matches!((has_ipv6, has_ipv4), (Some(true), None)) || has_ipv4 == Some(false));
        let ipv6 = !(matches!((has_ipv4, has_ipv6), (Some(true), None)) || has_ipv6 == Some(false));
        let restricted = o.bool("restrict").unwrap_or(false);
        let vnet = match (o.str("net"), o.str("ip")) {
            (Some(n), _) => Some(n),
            (None, Some(ip)) => Some(format!("{ip}/24")),
            (None, None) => None,
        };
        let vhost = o.str("host");
        let vdns = o.str("dns");
        let dhcpstart = o.str("dhcpstart");
        let prefix6 = o.str("ipv6-prefix");
        let prefix6_len = o.int("ipv6-prefixlen");
        let host6 = o.str("ipv6-host");
        let dns6 = o.str("ipv6-dns");
        let hostname = o.str("hostname");
        let tftp = o.str("tftp");
        let tftp_server_name = o.str("tftp-server-name");
        let bootfile = o.str("bootfile");
        let dnssearch = o.list("dnssearch");
        let domainname = o.str("domainname");
        let hostfwd = o.list("hostfwd");
        let guestfwd = o.list("guestfwd");

        if !ipv4 && (vnet.is_some() || vhost.is_some() || vdns.is_some()) {
            return Err(invalid("IPv4 disabled but netmask/host/dns provided"));
        }
        if !ipv6 && (prefix6.is_some() || host6.is_some() || dns6.is_some()) {
            return Err(invalid("IPv6 disabled but prefix/host6/dns6 provided"));
        }
        if !ipv4 && !ipv6 {
            return Err(invalid("IPv4 and IPv6 disabled"));
        }
        let (mut net, mut mask) = (0x0a00_0200u32, 0xffff_ff00u32);
        let (mut host, mut dhcp, mut dns) = (0x0a00_0202u32, 0x0a00_020fu32, 0x0a00_0203u32);
        if let Some(v) = &vnet {
            (net, mask) = network(v)?;
            net &= mask;
            host = net | (0x0202 & !mask);
            dhcp = net | (0x020f & !mask);
            dns = net | (0x0203 & !mask);
        }
        if let Some(h) = &vhost {
            host = v4(inet_aton(h).ok_or_else(|| invalid("Failed to parse host"))?);
        }
        if host & mask != net {
            return Err(invalid("Host doesn't belong to network"));
        }
        if let Some(d) = &vdns {
            dns = v4(inet_aton(d).ok_or_else(|| invalid("Failed to parse DNS"))?);
        }
        if restricted && dns & mask != net {
            return Err(invalid("DNS doesn't belong to network"));
        }
        if dns == host {
            return Err(invalid("DNS must be different from host"));
        }
        if let Some(d) = &dhcpstart {
            dhcp = v4(inet_aton(d).ok_or_else(|| invalid("Failed to parse DHCP start address"))?);
        }
        if dhcp & mask != net {
            return Err(invalid("DHCP doesn't belong to network"));
        }
        if dhcp == host || dhcp == dns {
            return Err(invalid("DHCP must be different from host and DNS"));
        }
        let prefix6 = inet_pton6(prefix6.as_deref().unwrap_or("fec0::"))
            .ok_or_else(|| invalid("Failed to parse IPv6 prefix"))?;
        let prefix6_len =
            match prefix6_len.unwrap_or(0) {
                0 => 64,
                n if !(0..=126).contains(&n) => return Err(invalid(
                    "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
                )),
                n => n as u8,
            };
        let host6 = match &host6 {
            Some(h) => {
                let h = inet_pton6(h).ok_or_else(|| invalid("Failed to parse IPv6 host"))?;
                if !in6_equal_net(prefix6, h, prefix6_len) {
                    return Err(invalid("IPv6 Host doesn't belong to network"));
                }
                h
            }
            None => with_last(prefix6, 2),
        };
        let dns6 = match &dns6 {
            Some(d) => {
                let d = inet_pton6(d).ok_or_else(|| invalid("Failed to parse IPv6 DNS"))?;
                if restricted && !in6_equal_net(prefix6, d, prefix6_len) {
                    return Err(invalid("IPv6 DNS doesn't belong to network"));
                }
                d
            }
            None => with_last(prefix6, 3),
        };
        match &domainname {
            Some(d) if d.is_empty() => {
                return Err(invalid("'domainname' parameter cannot be empty"))
            }
            Some(d) if d.len() > 255 => {
                return Err(invalid("'domainname' parameter cannot exceed 255 bytes"))
            }
            _ => {}
        }
        if hostname.as_ref().is_some_and(|h| h.len() > 255) {
            return Err(invalid("'vhostname' parameter cannot exceed 255 bytes"));
        }
        if tftp_server_name.as_ref().is_some_and(|h| h.len() > 255) {
            return Err(invalid(
                "'tftp-server-name' parameter cannot exceed 255 bytes",
            ));
        }
        for s in [&hostname, &tftp, &tftp_server_name, &bootfile, &domainname]
            .into_iter()
            .flatten()
            .chain(&dnssearch)
        {
            if s.contains('\0') {
                return Err(invalid("option values cannot contain NUL characters"));
            }
        }
        // QEMU keeps the rules in a list it pushes onto, guest rules last, then sets them up
        // from the front: guest rules first, each kind last-given first.
        let guestfwd = guestfwd
            .iter()
            .rev()
            .map(|r| Ok((r.clone(), GuestFwd::parse(r).map_err(NetdevError::Invalid)?)))
            .collect::<Result<Vec<_>, _>>()?;
        let hostfwd = hostfwd
            .iter()
            .rev()
            .map(|r| {
                Ok((
                    r.clone(),
                    HostFwd::parse(r).map_err(|e| invalid(e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UserOptions {
            restricted,
            ipv4,
            net: net.into(),
            mask: mask.into(),
            host: host.into(),
            dhcp_start: dhcp.into(),
            dns: dns.into(),
            ipv6,
            prefix6,
            prefix6_len,
            host6,
            dns6,
            hostname,
            tftp,
            tftp_server_name,
            bootfile,
            dnssearch,
            domainname,
            hostfwd,
            guestfwd,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::netdev::{netdev_from_qmp, parse_netdev, NetdevKind};
    use crate::user::UserOptions;

    fn user(s: &str) -> UserOptions {
        match parse_netdev(s).unwrap_or_else(|e| panic!("{s}: {e}")).kind {
            NetdevKind::User(o) => *o,
            other => panic!("{other:?}"),
        }
    }

    fn err(s: &str) -> String {
        parse_netdev(s).unwrap_err().to_string()
    }

    #[test]
    fn qemus_defaults() {
        let o = user("user,id=u");
        assert_eq!(o.net.to_string(), "10.0.2.0");
        assert_eq!(o.mask.to_string(), "255.255.255.0");
        assert_eq!(o.host.to_string(), "10.0.2.2");
        assert_eq!(o.dns.to_string(), "10.0.2.3");
        assert_eq!(o.dhcp_start.to_string(), "10.0.2.15");
        assert_eq!((o.ipv4, o.ipv6, o.restricted), (true, true, false));
        assert_eq!(o.prefix6.to_string(), "fec0::");
        assert_eq!(o.prefix6_len, 64);
        assert_eq!(o.host6.to_string(), "fec0::2");
        assert_eq!(o.dns6.to_string(), "fec0::3");
    }

    #[test]
    fn addresses_follow_the_network() {
        let o = user("user,id=u,net=192.168.76.0/24,restrict=on");
        assert_eq!(o.host.to_string(), "192.168.76.2");
        assert_eq!(o.dhcp_start.to_string(), "192.168.76.15");
        assert!(o.restricted);
        let o = user("user,id=u,ip=10.9.0.0");
        assert_eq!(o.host.to_string(), "10.9.0.2");
        let o = user("user,id=u,net=172.20.0.0");
        assert_eq!(o.mask.to_string(), "255.240.0.0");
        let o = user("user,id=u,net=10.0.2.0/255.255.0.0");
        assert_eq!(o.host.to_string(), "10.0.2.2");
        assert_eq!(o.mask.to_string(), "255.255.0.0");
        assert!(!user("user,id=u,ipv6=on").ipv4);
        assert!(!user("user,id=u,ipv4=on").ipv6);
        let o = user("user,id=u,ipv4=on,ipv6=on");
        assert!(o.ipv4 && o.ipv6);
    }

    #[test]
    fn bad_options_give_qemus_text() {
        for (spec, text) in [
            (
                "user,id=u,net=10.0.2.0/40",
                "Invalid netmask provided (must be in range 4-32)",
            ),
            (
                "user,id=u,net=10.0.2.0/",
                "Invalid netmask provided (must be in range 4-32)",
            ),
            (
                "user,id=u,net=10.0.2.0/8x",
                "Failed to parse netmask (trailing chars)",
            ),
            ("user,id=u,net=300.0.0.0", "Failed to parse netmask"),
            ("user,id=u,host=1.2.3.4", "Host doesn't belong to network"),
            ("user,id=u,host=x", "Failed to parse host"),
            ("user,id=u,dns=10.0.2.2", "DNS must be different from host"),
            (
                "user,id=u,dns=1.1.1.1,restrict=on",
                "DNS doesn't belong to network",
            ),
            (
                "user,id=u,dhcpstart=10.0.2.3",
                "DHCP must be different from host and DNS",
            ),
            (
                "user,id=u,dhcpstart=10.1.2.3",
                "DHCP doesn't belong to network",
            ),
            ("user,id=u,ipv4=off,ipv6=off", "IPv4 and IPv6 disabled"),
            (
                "user,id=u,ipv4=off,net=10.0.0.0/8",
                "IPv4 disabled but netmask/host/dns provided",
            ),
            (
                "user,id=u,ipv6=off,ipv6-dns=fec0::3",
                "IPv6 disabled but prefix/host6/dns6 provided",
            ),
            ("user,id=u,ipv6-prefix=zz", "Failed to parse IPv6 prefix"),
            (
                "user,id=u,ipv6-prefixlen=130",
                "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
            ),
            (
                "user,id=u,ipv6-host=fe00::1",
                "IPv6 Host doesn't belong to network",
            ),
            (
                "user,id=u,domainname=",
                "'domainname' parameter cannot be empty",
            ),
            (
                "user,id=u,hostfwd=tcp:bad",
                "Invalid host forwarding rule 'tcp:bad' (Missing : separator)",
            ),
            (
                "user,id=u,guestfwd=bad",
                "Invalid guest forwarding rule 'bad'",
            ),
        ] {
            assert_eq!(err(spec), text, "{spec}");
        }
        assert!(err("user,id=u,smb=/srv").contains("'smb' of netdev type 'user'"));
        assert!(err("user,id=u,smbserver=10.0.2.4").contains("'smbserver'"));
        assert!(err("user,id=u,restrict=on,restrict=off").contains("given twice"));
    }

    #[test]
    fn hostfwd_repeats_on_the_command_line_and_is_a_list_over_qmp() {
        let o = user("user,id=u,hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53,dnssearch=a.test,dnssearch=b.test");
        // QEMU sets rules up last-given first.
        assert_eq!(o.hostfwd[0].0, "udp::5353-:53");
        assert_eq!(o.hostfwd[1].1.host.port(), 2222);
        assert_eq!(o.dnssearch, ["a.test", "b.test"]);
        let q = serde_json::json!({"type": "user", "id": "u",
            "hostfwd": [{"str": "tcp::2222-:22"}, {"str": "udp::5353-:53"}], "restrict": true});
        let NetdevKind::User(o) = netdev_from_qmp(q.as_object().unwrap()).unwrap().kind else {
            panic!()
        };
        assert_eq!(o.hostfwd.len(), 2);
        assert!(o.restricted);
        let q = serde_json::json!({"type": "user", "id": "u", "hostfwd": ["tcp::2222-:22"]});
        assert!(netdev_from_qmp(q.as_object().unwrap())
            .unwrap_err()
            .to_string()
            .contains("'hostfwd', expected: array of String"));
    }
}
