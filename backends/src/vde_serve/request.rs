//! The request a vde client sends on a switch's control socket, read as vde2's `vde_switch`
//! reads it (`datasock.c`), and the answer the switch writes back.
//!
//! | bytes | v3 (libvdeplug, vdeplug4, QEMU) | v1 (vde2's oldest clients) |
//! | --- | --- | --- |
//! | 0..4 | magic `0xfeedface` (host order) | magic |
//! | 4..8 | version 3 | type (0 or 1) |
//! | 8..12 | type: low byte 0 (a new port) or 1 (port 0, management); port number << 8 | a MAC address (6 bytes), then |
//! | 12..122 | `struct sockaddr_un` of the client's data socket | `sockaddr_un` at 14..124 |
//! | rest | a description (≤ 128 bytes, not NUL-terminated on the wire) | description |
//!
//! The request has no length of its own: like `vde_switch`, the server takes what arrived (at
//! most 256 bytes) once the fixed part is there. This module only reads bytes; it never
//! trusts them: every length is checked and every refusal says why.

use crate::vde::{decode_reply, MAGIC, MAX_DESCR, SOCKADDR_UN_LEN};
use std::path::PathBuf;

/// The most a request can be: what `vde_switch` reads in one go.
pub const MAX_REQUEST: usize = 256;

/// Bytes of a v3 request before its description.
const V3_FIXED: usize = 12 + SOCKADDR_UN_LEN;
/// Bytes of a v1 request before its description (magic, type, MAC, address).
const V1_FIXED: usize = 8 + 6 + SOCKADDR_UN_LEN;

/// What the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A new port: that number, or any free one (`None`).
    Port(Option<u32>),
    /// Port 0, vde_switch's management port (`REQ_NEW_PORT0`).
    Port0,
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// 1 or 3.
    pub version: u32,
    pub wanted: Wanted,
    /// The client's data socket (an absolute path).
    pub client: PathBuf,
    /// The client's description, printable ASCII only (anything else shown as `?`).
    pub descr: String,
}

/// Why a request cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not all of the fixed part arrived yet (wait for more, up to a deadline).
    #[error("short request: {have} bytes, at least {need} expected")]
    Incomplete { have: usize, need: usize },
    #[error("bad magic {0:#010x} (expected 0xfeedface: a vde2 request)")]
    BadMagic(u32),
    #[error("request version {0} is not supported (1 and 3 are)")]
    Version(u32),
    #[error("unknown request type {0} (0: a new port, 1: port 0)")]
    Type(u32),
    #[error("the client's data socket is not a unix socket path")]
    Address,
    #[error("the client's data socket '{0}' is not an absolute path")]
    Relative(String),
}

impl RequestError {
    /// A short name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::Incomplete { .. } => "short",
            RequestError::BadMagic(_) => "bad-magic",
            RequestError::Version(_) => "bad-version",
            RequestError::Type(_) => "bad-type",
            RequestError::Address | RequestError::Relative(_) => "bad-address",
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a request from the bytes received so far.
pub fn parse_request(b: &[u8]) -> Result<Request, RequestError> {
    let incomplete = |need| RequestError::Incomplete {
        have: b.len(),
        need,
    };
    if b.len() < 8 {
        return Err(incomplete(8));
    }
    let magic = u32_at(b, 0);
    if magic != MAGIC {
        return Err(RequestError::BadMagic(magic));
    }
    let (version, ty, sock_at, fixed) = match u32_at(b, 4) {
        3 => {
            if b.len() < V3_FIXED {
                return Err(incomplete(V3_FIXED));
            }
            (3, u32_at(b, 8), 12, V3_FIXED)
        }
        // v1 has no version: its type (0 or 1) sits where v3's version does.
        t @ (0 | 1) => {
            if b.len() < V1_FIXED {
                return Err(incomplete(V1_FIXED));
            }
            (1, t, 14, V1_FIXED)
        }
        v => return Err(RequestError::Version(v)),
    };
    let wanted = match ty & 0xff {
        0 => Wanted::Port(Some(ty >> 8).filter(|&p| p != 0)),
        1 => Wanted::Port0,
        _ => return Err(RequestError::Type(ty)),
    };
    let client =
        decode_reply(&b[sock_at..sock_at + SOCKADDR_UN_LEN]).ok_or(RequestError::Address)?;
    if !client.is_absolute() {
        return Err(RequestError::Relative(
            client.display().to_string().chars().take(64).collect(),
        ));
    }
    let d = &b[fixed..b.len().min(fixed + MAX_DESCR)];
    let d = &d[..d.iter().position(|&c| c == 0).unwrap_or(d.len())];
    let descr = d
        .iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect();
    Ok(Request {
        version,
        wanted,
        client,
        descr,
    })
}

/// The answer to a served request: the `struct sockaddr_un` of the switch's data socket for
/// the port (what `crate::vde::decode_reply` reads on the client side).
pub fn encode_reply(path: &std::path::Path) -> std::io::Result<[u8; SOCKADDR_UN_LEN]> {
    crate::vde::encode_sockaddr(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vde::encode_request;
    use std::path::Path;

    #[test]
    fn a_request_as_libvdeplug_sends_it_reads_back() {
        let r = encode_request(7, Path::new("/tmp/sw/.01234-00000"), "qemu vde").unwrap();
        let req = parse_request(&r).unwrap();
        assert_eq!(req.version, 3);
        assert_eq!(req.wanted, Wanted::Port(Some(7)));
        assert_eq!(req.client, Path::new("/tmp/sw/.01234-00000"));
        assert_eq!(req.descr, "qemu vde");
        let any = encode_request(0, Path::new("/a"), "").unwrap();
        assert_eq!(parse_request(&any).unwrap().wanted, Wanted::Port(None));
    }

    #[test]
    fn a_request_that_is_not_all_there_asks_for_more() {
        let r = encode_request(0, Path::new("/tmp/x"), "d").unwrap();
        for cut in [0, 3, 7, 8, 100, V3_FIXED - 1] {
            assert!(
                matches!(
                    parse_request(&r[..cut]),
                    Err(RequestError::Incomplete { .. })
                ),
                "{cut}"
            );
        }
        assert!(
            parse_request(&r[..V3_FIXED]).is_ok(),
            "the description may be empty"
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_their_reason() {
        let good = encode_request(0, Path::new("/tmp/x"), "d").unwrap();
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(parse_request(&bad).unwrap_err().reason(), "bad-magic");
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(parse_request(&bad), Err(RequestError::Version(2)));
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert_eq!(parse_request(&bad), Err(RequestError::Type(5)));
        let mut bad = good.clone();
        bad[12..14].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        assert_eq!(parse_request(&bad), Err(RequestError::Address));
        let rel = encode_request(0, Path::new("x/y"), "").unwrap();
        assert_eq!(parse_request(&rel).unwrap_err().reason(), "bad-address");
        let mut port0 = good;
        port0[8..12].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(parse_request(&port0).unwrap().wanted, Wanted::Port0);
    }

    #[test]
    fn a_v1_request_is_read_at_its_own_offsets() {
        let mut r = Vec::new();
        r.extend_from_slice(&MAGIC.to_ne_bytes());
        r.extend_from_slice(&0u32.to_ne_bytes());
        r.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        r.extend_from_slice(&crate::vde::encode_sockaddr(Path::new("/run/c")).unwrap());
        r.extend_from_slice(b"old\x01client\0junk");
        let req = parse_request(&r).unwrap();
        assert_eq!(
            (req.version, req.client.as_path()),
            (1, Path::new("/run/c"))
        );
        assert_eq!(req.descr, "old?client");
    }
}
