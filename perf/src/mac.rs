//! `MacAddr`: an Ethernet address as the measuring tools need it — parsed from the command
//! line, printed, written into frames, and derived per flow for MAC-table stress runs.
//! (The switch has its own richer type; this one stays here so `perf/` builds on its own.)

use std::fmt;
use std::str::FromStr;

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// First two octets of the per-flow source addresses made by [`MacAddr::flow`]: the
/// locally administered bit set, the group bit clear, `0x88` to make them easy to spot.
const FLOW_PREFIX: [u8; 2] = [0x02, 0x88];

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit of the first octet.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    /// Locally administered (the U/L bit of the first octet).
    pub fn is_local(self) -> bool {
        self.0[0] & 2 == 2
    }

    /// The source address of flow `index` when a generator cycles through many flows:
    /// `02:88:` followed by `index` as four big-endian octets, so every flow address is
    /// unicast, locally administered and distinct.
    ///
    /// Index ranges name sides: a sink side's stations can be given another range
    /// (e.g. from `0x0080_0000`) than the sending side's.
    pub fn flow(index: u32) -> MacAddr {
        let i = index.to_be_bytes();
        MacAddr([FLOW_PREFIX[0], FLOW_PREFIX[1], i[0], i[1], i[2], i[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address '{0}': expected six hex octets separated by ':' or '-', such as 02:00:00:00:00:01")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_owned());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_colon_and_dash_forms_and_prints_lowercase() {
        let m: MacAddr = "02:AB:cd:0:1:ff".parse().unwrap();
        assert_eq!(m, MacAddr([0x02, 0xab, 0xcd, 0x00, 0x01, 0xff]));
        assert_eq!(m.to_string(), "02:ab:cd:00:01:ff");
        assert_eq!("02-ab-cd-00-01-ff".parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn rejects_wrong_octet_counts_and_non_hex() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0g",
            "002:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn flow_addresses_are_distinct_local_unicast() {
        let a = MacAddr::flow(0);
        let b = MacAddr::flow(0x0102_0304);
        assert_ne!(a, b);
        for m in [a, b] {
            assert!(m.is_local() && !m.is_multicast());
        }
        assert_eq!(b.to_string(), "02:88:01:02:03:04");
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
    }
}
