//! ringswitch's eBPF ingress filter (issue 14): a socket-filter program, attached to each
//! tap (`TUNSETFILTEREBPF`) and datagram socket (`SO_ATTACH_BPF`) of a switching domain,
//! that drops in the kernel a frame no other port of the domain would accept — exactly
//! `ringswitch_switch::rxfilter::ingress_pass` — so unwanted traffic never reaches
//! userspace.
//!
//! [`BpfDomain`] owns one domain's maps; [`probe`] says why BPF cannot be used here. This
//! crate never forwards frames and never decides on its own: where it cannot load, the
//! switch's userspace path alone serves, and nothing here is on that path.

mod attach;
mod domain;
mod maps;
mod program;
mod sys;

#[cfg(test)]
#[path = "../tests/common/gen.rs"]
mod gen;

use std::fmt;
use std::sync::Mutex;

use libbpf_rs::PrintLevel;

pub use attach::{detach_tap, Attachment};
pub use domain::{BpfDomain, FilterCounts};
pub use program::TEST_RUN_MAX_FRAME;

/// A port's place in its domain's masks: bit 0..=63 of a `u64`. A domain with more ports
/// cannot be filtered in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortBit(u8);

impl PortBit {
    /// How many ports a domain's masks hold.
    pub const COUNT: usize = 64;
    pub const MIN: PortBit = PortBit(0);

    pub fn new(index: usize) -> Result<PortBit, BpfError> {
        if index < Self::COUNT {
            Ok(PortBit(index as u8))
        } else {
            Err(BpfError::TooManyPorts(index))
        }
    }

    pub fn index(self) -> u8 {
        self.0
    }

    pub(crate) fn mask(self) -> u64 {
        1 << self.0
    }
}

impl fmt::Display for PortBit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port bit {}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "port index {0} does not fit: a domain filtered in the kernel holds at most 64 ports \
         (bits 0..=63); serve this domain in userspace"
    )]
    TooManyPorts(usize),
    #[error("port bit {0} is given twice in one domain update; each port needs its own bit")]
    DuplicateBit(u8),
    #[error(
        "the domain's filters list {entries} distinct addresses, more than the kernel table \
         holds ({capacity}); fit each filter's tables to QEMU's 64 places (fit_tables)"
    )]
    TablesTooLarge { entries: usize, capacity: usize },
    #[error("loading the eBPF ingress filter failed: {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("the eBPF object has no {0} (built from a different rxfilter.bpf.c?)")]
    Missing(&'static str),
    #[error("writing the eBPF map `{map}` failed: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error(
        "the learned-address map is full ({capacity} entries): the domain passes every frame \
         to userspace until set_learned fits"
    )]
    LearnedFull { capacity: u32 },
    #[error("attaching the eBPF filter failed on the {what}: {source}")]
    Attach {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a stream socket cannot take a frame filter (dropping part of a stream corrupts it); \
         only datagram sockets can"
    )]
    StreamSocket,
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] libbpf_rs::Error),
    #[error("a test frame of {len} bytes is longer than BPF_PROG_TEST_RUN takes ({max})")]
    FrameTooLong { len: usize, max: usize },
}

/// Whether the ingress filter can be used here: loads the program and creates a domain's
/// maps once, then lets them go. The error says why not, in one line for the switch to print
/// once; libbpf's own messages during the probe are folded into it instead of going to
/// stderr.
pub fn probe() -> Result<(), String> {
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
    fn collect(_: PrintLevel, msg: String) {
        LOG.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
    }
    fn stderr(_: PrintLevel, msg: String) {
        eprint!("{msg}");
    }
    let previous = libbpf_rs::set_print(Some((PrintLevel::Warn, collect)));
    let result = BpfDomain::new(1);
    // libbpf's default is to print warnings and information to stderr.
    libbpf_rs::set_print(previous.or(Some((PrintLevel::Info, stderr))));
    let said: Vec<String> = std::mem::take(&mut *LOG.lock().unwrap_or_else(|p| p.into_inner()));
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let privilege = missing_capability()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            // The last word is libbpf's conclusion; the first is often about RLIMIT_MEMLOCK,
            // which kernels since 5.11 no longer use for BPF.
            let libbpf = said
                .last()
                .map(|m| format!(" [libbpf: {}]", m.trim().trim_start_matches("libbpf: ")))
                .unwrap_or_default();
            Err(format!(
                "the eBPF ingress filter is off{privilege}: {e}{libbpf}; frames are filtered in \
                 userspace"
            ))
        }
    }
}

/// A likely reason the kernel refused: not root and without CAP_BPF (or CAP_SYS_ADMIN).
fn missing_capability() -> Option<&'static str> {
    if sys::is_root() {
        return None;
    }
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if eff & (1 << CAP_BPF | 1 << CAP_SYS_ADMIN) == 0 {
        Some("not root, and without CAP_BPF")
    } else {
        None
    }
}
