//! QEMU's forwarding rules, parsed as QEMU 7.2's `net/slirp.c` parses them (and refused with
//! its words): `hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`, the key of
//! `hostfwd_remove` (`[tcp|udp]:[HOSTADDR]:HOSTPORT`) and `guestfwd=[tcp]:[SERVER]:PORT-cmd:CMD`.
//! Addresses go through glibc's `inet_aton` and ports through C's `strtol` rules (base 0
//! for hostfwd, 10 for guestfwd; the whole field must be a number), so odd spellings that
//! QEMU takes (`127.1`, `0x50`, ` 22`, an empty host port meaning "any") are taken here too.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// A `hostfwd` rule: connections to `host` on the host side reach `guest` in the network
/// (`guest`'s address 0.0.0.0: the first DHCP address, as libslirp decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwd {
    pub udp: bool,
    pub host: SocketAddrV4,
    pub guest: SocketAddrV4,
}

/// What names a `hostfwd` rule for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwdKey {
    pub udp: bool,
    pub host: SocketAddrV4,
}

/// A bad `hostfwd` rule, with QEMU's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwdError {
    pub rule: String,
    pub reason: &'static str,
}

impl fmt::Display for HostFwdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Invalid host forwarding rule '{}' ({})",
            self.rule, self.reason
        )
    }
}

impl std::error::Error for HostFwdError {}

/// A `guestfwd` rule: connections from the network to `server:port` run `cmd` (its standard
/// input and output are the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFwd {
    pub server: Ipv4Addr,
    pub port: u16,
    pub cmd: String,
}

/// The text before `sep` and the rest after it, as QEMU's `get_str_sep`.
fn sep(p: &str, sep: char) -> Option<(&str, &str)> {
    p.split_once(sep)
}

/// glibc's `inet_aton` on `s` (an empty string is not an address).
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let c = std::ffi::CString::new(s).ok()?;
    let mut a = libc::in_addr { s_addr: 0 };
    // SAFETY: `c` is a NUL-terminated string and `a` a valid in_addr, both live for the call.
    let ok = unsafe { super::ffi::inet_aton(c.as_ptr(), &mut a) };
    (ok != 0).then(|| Ipv4Addr::from(u32::from_be(a.s_addr)))
}

/// C's `strtol(s, &end, base)` followed by QEMU's `*end != '\0'` check: the value when the
/// whole of `s` is one number (leading white space and a sign allowed; an empty string is 0,
/// as strtol leaves `end` at the terminating NUL). Out-of-range values saturate, as strtol's.
pub fn c_strtol(s: &str, base: u32) -> Option<i64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if (base == 0 || base == 16)
        && (t.starts_with("0x") || t.starts_with("0X"))
        && t[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (16, &t[2..])
    } else if base == 0 && t.starts_with('0') {
        (8, t)
    } else {
        (if base == 0 { 10 } else { base }, t)
    };
    let n = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if n == 0 {
        // No number: strtol's end is the start of `s`, which passes only if `s` is empty.
        return s.is_empty().then_some(0);
    }
    if n != digits.len() {
        return None;
    }
    let mut v: i64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix).expect("checked digit") as i64;
        v = v.saturating_mul(radix as i64).saturating_add(d);
    }
    Some(if neg { v.saturating_neg() } else { v })
}

fn protocol(p: &str) -> Option<bool> {
    match p {
        "tcp" | "" => Some(false),
        "udp" => Some(true),
        _ => None,
    }
}

impl HostFwd {
    pub fn parse(rule: &str) -> Result<HostFwd, HostFwdError> {
        let fail = |reason| HostFwdError {
            rule: rule.to_string(),
            reason,
        };
        let (proto, p) = sep(rule, ':').ok_or(fail("No : separators"))?;
        let udp = protocol(proto).ok_or(fail("Bad protocol name"))?;
        let (haddr, p) = sep(p, ':').ok_or(fail("Missing : separator"))?;
        let host_ip = match haddr {
            "" => Ipv4Addr::UNSPECIFIED,
            a => inet_aton(a).ok_or(fail("Bad host address"))?,
        };
        let (hport, p) = sep(p, '-').ok_or(fail("Bad host port separator"))?;
        let host_port = c_strtol(hport, 0)
            .and_then(|v| u16::try_from(v).ok())
            .ok_or(fail("Bad host port"))?;
        let (gaddr, p) = sep(p, ':').ok_or(fail("Missing guest address"))?;
        let guest_ip = match gaddr {
            "" => Ipv4Addr::UNSPECIFIED,
            a => inet_aton(a).ok_or(fail("Bad guest address"))?,
        };
        let guest_port = c_strtol(p, 0)
            .filter(|v| (1..=65535).contains(v))
            .ok_or(fail("Bad guest port"))? as u16;
        Ok(HostFwd {
            udp,
            host: SocketAddrV4::new(host_ip, host_port),
            guest: SocketAddrV4::new(guest_ip, guest_port),
        })
    }
}

impl HostFwdKey {
    /// `hostfwd_remove`'s argument; None where QEMU answers "invalid format".
    pub fn parse(rule: &str) -> Option<HostFwdKey> {
        let (proto, p) = sep(rule, ':')?;
        let udp = protocol(proto)?;
        let (haddr, p) = sep(p, ':')?;
        let ip = match haddr {
            "" => Ipv4Addr::UNSPECIFIED,
            a => inet_aton(a)?,
        };
        let port = c_strtol(p, 10).filter(|s| !p.is_empty() && *s >= 0)?;
        Some(HostFwdKey {
            udp,
            host: SocketAddrV4::new(ip, u16::try_from(port).ok()?),
        })
    }
}

impl GuestFwd {
    /// A `guestfwd` rule; the error is QEMU's text.
    pub fn parse(rule: &str) -> Result<GuestFwd, String> {
        let fail = || format!("Invalid guest forwarding rule '{rule}'");
        let (proto, p) = sep(rule, ':').ok_or_else(fail)?;
        if proto != "tcp" && !proto.is_empty() {
            return Err(fail());
        }
        let (server, p) = sep(p, ':').ok_or_else(fail)?;
        let server = match server {
            "" => Ipv4Addr::UNSPECIFIED,
            a => inet_aton(a).ok_or_else(fail)?,
        };
        let (port, target) = sep(p, '-').ok_or_else(fail)?;
        let port = c_strtol(port, 10)
            .filter(|v| (1..=65535).contains(v))
            .ok_or_else(fail)? as u16;
        match target.strip_prefix("cmd:") {
            Some(cmd) => Ok(GuestFwd {
                server,
                port,
                cmd: cmd.to_string(),
            }),
            None => Err(format!(
                "Could not open guest forwarding device 'guestfwd.tcp.{port}' \
                 (ringswitch forwards to a command only: guestfwd=tcp:[SERVER]:PORT-cmd:COMMAND; \
                 QEMU's chardev targets are not supported)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason(rule: &str) -> &'static str {
        HostFwd::parse(rule).unwrap_err().reason
    }

    #[test]
    fn hostfwd_rules_as_qemu_reads_them() {
        let r = HostFwd::parse("tcp::2222-:22").unwrap();
        assert_eq!(
            r,
            HostFwd {
                udp: false,
                host: "0.0.0.0:2222".parse().unwrap(),
                guest: "0.0.0.0:22".parse().unwrap()
            }
        );
        let r = HostFwd::parse("udp:127.1:0x50-10.0.2.15:010").unwrap();
        assert!(r.udp);
        assert_eq!(r.host, "127.0.0.1:80".parse().unwrap());
        assert_eq!(r.guest, "10.0.2.15:8".parse().unwrap());
        assert!(!HostFwd::parse(":127.0.0.1:2284-:22").unwrap().udp);
        assert_eq!(HostFwd::parse("tcp::-:22").unwrap().host.port(), 0);
        assert_eq!(HostFwd::parse("tcp:: 2282-: 22").unwrap().guest.port(), 22);
        assert_eq!(HostFwd::parse("tcp::+2287-:22").unwrap().host.port(), 2287);
    }

    #[test]
    fn bad_hostfwd_rules_give_qemus_reasons() {
        for (rule, why) in [
            ("tcp", "No : separators"),
            ("foo:1:2-3", "Bad protocol name"),
            ("TCP::1-:2", "Bad protocol name"),
            ("tcp:bad", "Missing : separator"),
            ("tcp:999.1.1.1:80-:22", "Bad host address"),
            ("tcp::22", "Bad host port separator"),
            ("tcp::99999-:22", "Bad host port"),
            ("tcp::2280x-:22", "Bad host port"),
            ("tcp::99999999999-:22", "Bad host port"),
            ("tcp::22-1.2.3.4", "Missing guest address"),
            ("tcp::80-x:22", "Bad guest address"),
            ("tcp::22-:0", "Bad guest port"),
            ("tcp::22-:", "Bad guest port"),
            ("tcp::22-:22x", "Bad guest port"),
        ] {
            assert_eq!(reason(rule), why, "{rule}");
        }
        assert_eq!(
            HostFwd::parse("tcp:bad").unwrap_err().to_string(),
            "Invalid host forwarding rule 'tcp:bad' (Missing : separator)"
        );
    }

    #[test]
    fn removal_keys_and_guest_rules() {
        assert_eq!(
            HostFwdKey::parse("tcp::2222"),
            Some(HostFwdKey {
                udp: false,
                host: "0.0.0.0:2222".parse().unwrap()
            })
        );
        assert!(HostFwdKey::parse("udp:127.0.0.1:53").unwrap().udp);
        assert_eq!(HostFwdKey::parse("tcp:2222"), None);
        assert_eq!(HostFwdKey::parse("sctp::1"), None);
        let g = GuestFwd::parse("tcp:10.0.2.100:80-cmd:cat").unwrap();
        assert_eq!(
            (g.server, g.port, g.cmd.as_str()),
            ("10.0.2.100".parse().unwrap(), 80, "cat")
        );
        for bad in [
            "udp:10.0.2.100:80-cmd:true",
            "tcp:10.0.2.100:0-cmd:true",
            "tcp:10.0.2.100:80x-cmd:true",
            "bad",
        ] {
            assert_eq!(
                GuestFwd::parse(bad).unwrap_err(),
                format!("Invalid guest forwarding rule '{bad}'")
            );
        }
        assert!(GuestFwd::parse("tcp:10.0.2.100:80-unix:/x")
            .unwrap_err()
            .contains("guestfwd.tcp.80"));
    }

    #[test]
    fn strtol_follows_c() {
        assert_eq!(c_strtol("", 0), Some(0));
        assert_eq!(c_strtol(" ", 0), None);
        assert_eq!(c_strtol("0x", 0), None);
        assert_eq!(c_strtol("0x1f", 0), Some(31));
        assert_eq!(c_strtol("017", 0), Some(15));
        assert_eq!(c_strtol("08", 0), None);
        assert_eq!(c_strtol("-5", 0), Some(-5));
        assert_eq!(c_strtol("017", 10), Some(17));
    }

    proptest! {
        #[test]
        fn any_rule_parses_or_names_a_reason(s in "[a-z0-9:.x -]{0,40}") {
            match HostFwd::parse(&s) {
                Ok(r) => prop_assert!(r.guest.port() >= 1),
                Err(e) => prop_assert!(e.to_string().starts_with("Invalid host forwarding rule")),
            }
            let _ = HostFwdKey::parse(&s);
            let _ = GuestFwd::parse(&s);
        }

        #[test]
        fn well_formed_rules_round_trip(udp: bool, h: [u8; 4], hp: u16, g: [u8; 4], gp in 1u16..) {
            let text = format!("{}:{}:{hp}-{}:{gp}", if udp { "udp" } else { "tcp" }, Ipv4Addr::from(h), Ipv4Addr::from(g));
            let r = HostFwd::parse(&text).unwrap();
            prop_assert_eq!(r, HostFwd { udp, host: SocketAddrV4::new(h.into(), hp), guest: SocketAddrV4::new(g.into(), gp) });
        }
    }
}
