//! `IfName`: a validated Linux network interface name. Checking it once here means the
//! socket and tap wrappers can copy it into `ifreq`/`if_nametoindex` without re-checking,
//! and a bad name is reported with what is accepted instead of as a kernel `EINVAL`.

use std::ffi::CString;
use std::fmt;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1 for the terminating NUL).
pub const MAX_LEN: usize = libc::IFNAMSIZ - 1;

/// An interface name the kernel would accept: 1..=15 bytes, no '/', ':', whitespace or NUL,
/// and not "." or "..".
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IfName(String);

/// Why a string is not a usable interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    #[error("interface name is empty")]
    Empty,
    #[error("interface name '{0}' is {1} bytes long; at most {MAX_LEN} are accepted")]
    TooLong(String, usize),
    #[error("interface name '{0}' contains '/', ':', whitespace or NUL, or is '.'/'..'")]
    BadCharacter(String),
}

impl IfName {
    pub fn new(name: &str) -> Result<IfName, IfNameError> {
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > MAX_LEN {
            return Err(IfNameError::TooLong(name.to_owned(), name.len()));
        }
        let bad = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
        if name.contains(bad) || name == "." || name == ".." {
            return Err(IfNameError::BadCharacter(name.to_owned()));
        }
        Ok(IfName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the fixed-size, NUL-padded array used in `struct ifreq`.
    pub fn to_ifr_name(&self) -> [libc::c_char; libc::IFNAMSIZ] {
        let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
        for (dst, src) in out.iter_mut().zip(self.0.bytes()) {
            *dst = src as libc::c_char;
        }
        out
    }

    pub fn to_cstring(&self) -> CString {
        // Validation above rejected NUL bytes, so this cannot fail.
        CString::new(self.0.as_bytes()).expect("IfName holds no NUL byte")
    }
}

impl std::str::FromStr for IfName {
    type Err = IfNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IfName::new(s)
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_fifteen_bytes_and_rejects_sixteen() {
        assert!(IfName::new("abcdefghijklmno").is_ok());
        assert_eq!(
            IfName::new("abcdefghijklmnop"),
            Err(IfNameError::TooLong("abcdefghijklmnop".into(), 16))
        );
    }

    #[test]
    fn rejects_empty_and_special_names() {
        assert_eq!(IfName::new(""), Err(IfNameError::Empty));
        for bad in ["a/b", "a b", "eth0:1", ".", "..", "a\0"] {
            assert!(
                matches!(IfName::new(bad), Err(IfNameError::BadCharacter(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ifr_name_is_nul_padded() {
        let n = IfName::new("tap0").unwrap().to_ifr_name();
        assert_eq!(&n[..5], &[b't' as _, b'a' as _, b'p' as _, b'0' as _, 0]);
        assert!(n.iter().skip(4).all(|&c| c == 0));
    }
}
