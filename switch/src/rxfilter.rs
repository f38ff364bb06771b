//! Rx-filters: what the station behind a port accepts, with the fields and the meaning of
//! QEMU's `RxFilterInfo` (qapi/net.json) and the decision of QEMU virtio-net's
//! `receive_filter()`. Default: promiscuous, so a port with no filter set accepts every frame.
//!
//! Two decisions are built on it and must agree with the eBPF program in `bpf/`:
//! - egress: [`RxFilter::accepts`], whether a frame may go out of a port;
//! - ingress: [`ingress_pass`], whether a frame that arrived on a port is wanted by anyone
//!   else in its domain (its destination is broadcast, or some other port's filter accepts
//!   it, or it was learned on some other port) — what the kernel may drop before userspace.

use std::fmt;
use std::str::FromStr;

use crate::mac::MacAddr;

/// QEMU virtio-net's MAC table: unicast and multicast entries share 64 places
/// (`MAC_TABLE_ENTRIES`); what does not fit sets the kind's overflow flag instead.
pub const MAC_TABLE_ENTRIES: usize = 64;
/// VLAN ids 0..4096 (`MAX_VLAN`).
pub const MAX_VLAN: usize = 4096;

const TPID_8021Q: [u8; 2] = [0x81, 0x00];

/// QAPI's `RxState`: `normal` (the tables decide), `none` (nothing of that kind), `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RxState {
    #[default]
    Normal,
    None,
    All,
}

impl RxState {
    pub fn as_str(self) -> &'static str {
        match self {
            RxState::Normal => "normal",
            RxState::None => "none",
            RxState::All => "all",
        }
    }
}

impl fmt::Display for RxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RxState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(RxState::Normal),
            "none" => Ok(RxState::None),
            "all" => Ok(RxState::All),
            _ => Err(format!("'{s}' is not one of normal, none, all")),
        }
    }
}

/// A set of VLAN ids, 4096 bits (QEMU keeps `uint32_t vlans[MAX_VLAN >> 5]`).
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet(Box<[u64; MAX_VLAN / 64]>);

impl VlanSet {
    pub fn empty() -> VlanSet {
        VlanSet(Box::new([0; MAX_VLAN / 64]))
    }

    pub fn full() -> VlanSet {
        VlanSet(Box::new([u64::MAX; MAX_VLAN / 64]))
    }

    /// Adds `vid` (ids past 4095 are the caller's error; they are masked to 12 bits here).
    pub fn insert(&mut self, vid: u16) {
        let v = usize::from(vid) & (MAX_VLAN - 1);
        self.0[v / 64] |= 1 << (v % 64);
    }

    #[inline]
    pub fn contains(&self, vid: u16) -> bool {
        let v = usize::from(vid) & (MAX_VLAN - 1);
        self.0[v / 64] & (1 << (v % 64)) != 0
    }

    /// The ids, highest first (the order QEMU's `vlan-table` lists them in).
    pub fn ids_descending(&self) -> impl Iterator<Item = u16> + '_ {
        (0..MAX_VLAN as u16).rev().filter(|&v| self.contains(v))
    }

    pub fn words(&self) -> &[u64; MAX_VLAN / 64] {
        &self.0
    }
}

impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VlanSet({} ids)",
            self.0.iter().map(|w| w.count_ones()).sum::<u32>()
        )
    }
}

/// What the station behind a port accepts. The fields are `RxFilterInfo`'s, kept exactly as
/// they were set so that `query-rx-filter` reports them back unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFilter {
    pub promiscuous: bool,
    pub unicast: RxState,
    pub multicast: RxState,
    pub vlan: RxState,
    pub broadcast_allowed: bool,
    pub unicast_overflow: bool,
    pub multicast_overflow: bool,
    pub main_mac: MacAddr,
    pub unicast_table: Vec<MacAddr>,
    pub multicast_table: Vec<MacAddr>,
    pub vlan_table: VlanSet,
}

impl RxFilter {
    /// A port's filter until one is set: promiscuous, everything `all` (accepts every frame).
    pub fn promiscuous(main_mac: MacAddr) -> RxFilter {
        RxFilter {
            promiscuous: true,
            unicast: RxState::All,
            multicast: RxState::All,
            vlan: RxState::All,
            broadcast_allowed: true,
            unicast_overflow: false,
            multicast_overflow: false,
            main_mac,
            unicast_table: Vec::new(),
            multicast_table: Vec::new(),
            vlan_table: VlanSet::empty(),
        }
    }

    /// Whether this filter accepts every frame (the flood loop skips the check then).
    pub fn accepts_all(&self) -> bool {
        self.promiscuous
    }

    /// Applies QEMU virtio-net's table capacity: unicast entries first, then multicast, 64
    /// places together; a kind that does not fit is dropped and its overflow flag set (as
    /// `virtio_net_handle_mac` does). Returns whether anything overflowed.
    pub fn fit_tables(&mut self) -> bool {
        let mut over = false;
        if self.unicast_table.len() > MAC_TABLE_ENTRIES {
            self.unicast_table.clear();
            self.unicast_overflow = true;
            over = true;
        }
        if self.unicast_table.len() + self.multicast_table.len() > MAC_TABLE_ENTRIES {
            self.multicast_table.clear();
            self.multicast_overflow = true;
            over = true;
        }
        over
    }

    /// QEMU's `receive_filter()`: whether the station takes `frame` (an Ethernet frame from
    /// its destination address on). Frames too short to carry a destination are refused.
    #[inline]
    pub fn accepts(&self, frame: &[u8]) -> bool {
        if self.promiscuous {
            return true;
        }
        if frame.len() < 6 {
            return false;
        }
        if frame.len() >= 16 && frame[12..14] == TPID_8021Q {
            let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
            let ok = match self.vlan {
                RxState::All => true,
                RxState::None => false,
                RxState::Normal => self.vlan_table.contains(vid),
            };
            if !ok {
                return false;
            }
        }
        let dst = &frame[..6];
        if dst[0] & 1 != 0 {
            if dst == MacAddr::BROADCAST.0 {
                return self.broadcast_allowed;
            }
            match self.multicast {
                RxState::None => false,
                RxState::All => true,
                RxState::Normal => {
                    self.multicast_overflow || self.multicast_table.iter().any(|m| m.0 == dst)
                }
            }
        } else {
            match self.unicast {
                RxState::None => false,
                RxState::All => true,
                RxState::Normal => {
                    self.unicast_overflow
                        || self.main_mac.0 == dst
                        || self.unicast_table.iter().any(|m| m.0 == dst)
                }
            }
        }
    }
}

/// The kernel-side decision, in userspace: whether a frame that arrived on one port is
/// wanted by anyone else in its domain. `others` are the filters of the domain's other ports;
/// `learned_elsewhere` says whether the destination was learned on one of those ports.
/// Broadcast always passes (the switch floods it and counts what each port refuses), and so
/// does a frame shorter than an Ethernet header: the switch counts it as a `runt`, so bad
/// input is seen where it is counted, not lost in the kernel.
pub fn ingress_pass<'a>(
    frame: &[u8],
    learned_elsewhere: bool,
    others: impl IntoIterator<Item = &'a RxFilter>,
) -> bool {
    if frame.len() < crate::ethernet::HEADER_LEN {
        return true;
    }
    if frame[..6] == MacAddr::BROADCAST.0 || learned_elsewhere {
        return true;
    }
    others.into_iter().any(|f| f.accepts(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn frame(dst: [u8; 6], vid: Option<u16>) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        if let Some(v) = vid {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(64, 0);
        f
    }

    fn linux_guest() -> RxFilter {
        // What a Linux guest's virtio-net NIC reports once up (qemu-qmp-behaviour.md).
        RxFilter {
            promiscuous: false,
            unicast: RxState::Normal,
            multicast: RxState::Normal,
            vlan: RxState::None,
            broadcast_allowed: true,
            unicast_overflow: false,
            multicast_overflow: false,
            main_mac: MAIN,
            unicast_table: vec![],
            multicast_table: vec!["33:33:ff:00:77:09".parse().unwrap()],
            vlan_table: VlanSet::empty(),
        }
    }

    #[test]
    fn promiscuous_accepts_everything() {
        let f = RxFilter::promiscuous(MAIN);
        assert!(f.accepts(&frame([0x02, 9, 9, 9, 9, 9], Some(7))));
        assert!(f.accepts(&frame([0x33, 0x33, 0, 0, 0, 1], None)));
        assert!(f.accepts(&[1, 2, 3]));
    }

    #[test]
    fn a_guests_filter_takes_its_own_address_broadcast_and_its_groups() {
        let f = linux_guest();
        assert!(f.accepts(&frame(MAIN.0, None)));
        assert!(!f.accepts(&frame([0x02, 9, 9, 9, 9, 9], None)));
        assert!(f.accepts(&frame([0xff; 6], None)));
        assert!(f.accepts(&frame([0x33, 0x33, 0xff, 0, 0x77, 9], None)));
        assert!(!f.accepts(&frame([0x33, 0x33, 0, 0, 0, 2], None)));
        // vlan none: tagged frames are refused, even to its own address.
        assert!(!f.accepts(&frame(MAIN.0, Some(5))));
    }

    #[test]
    fn states_and_overflow_flags_decide_before_the_tables() {
        let mut f = linux_guest();
        f.broadcast_allowed = false;
        assert!(!f.accepts(&frame([0xff; 6], None)));
        f.multicast = RxState::All;
        assert!(f.accepts(&frame([0x01, 0, 0x5e, 1, 2, 3], None)));
        f.multicast = RxState::None;
        assert!(!f.accepts(&frame([0x33, 0x33, 0xff, 0, 0x77, 9], None)));
        f.unicast = RxState::None;
        assert!(!f.accepts(&frame(MAIN.0, None)));
        f.unicast = RxState::Normal;
        f.unicast_overflow = true;
        assert!(f.accepts(&frame([0x02, 9, 9, 9, 9, 9], None)));
        f.vlan = RxState::Normal;
        f.vlan_table.insert(5);
        assert!(f.accepts(&frame(MAIN.0, Some(5))));
        assert!(f.accepts(&frame(MAIN.0, Some(0x1005)))); // the id is 12 bits
        assert!(!f.accepts(&frame(MAIN.0, Some(6))));
    }

    #[test]
    fn tables_that_do_not_fit_set_the_overflow_flags_as_qemu_does() {
        let mut f = linux_guest();
        f.unicast_table = (0..40u64)
            .map(|i| MacAddr::from_u64(0x0200_0000_0000 + i))
            .collect();
        f.multicast_table = (0..30u64)
            .map(|i| MacAddr::from_u64(0x0100_5e00_0000 + i))
            .collect();
        assert!(f.fit_tables());
        assert!(!f.unicast_overflow && f.unicast_table.len() == 40);
        assert!(f.multicast_overflow && f.multicast_table.is_empty());
        f.unicast_table = (0..65u64)
            .map(|i| MacAddr::from_u64(0x0200_0000_0000 + i))
            .collect();
        assert!(f.fit_tables());
        assert!(f.unicast_overflow && f.unicast_table.is_empty());
    }

    #[test]
    fn ingress_passes_what_some_other_port_wants() {
        let guest = linux_guest();
        let other = frame([0x02, 9, 9, 9, 9, 9], None);
        assert!(ingress_pass(&frame([0xff; 6], None), false, [&guest]));
        assert!(ingress_pass(&frame(MAIN.0, None), false, [&guest]));
        assert!(!ingress_pass(&other, false, [&guest]));
        assert!(ingress_pass(&other, true, [&guest]));
        assert!(!ingress_pass(&other, false, []));
        // Runts reach the switch, which counts them.
        assert!(ingress_pass(&[0x02; 5], false, []));
        assert!(ingress_pass(&[0x02; 13], false, [&guest]));
    }

    #[test]
    fn vlan_ids_list_highest_first() {
        let mut s = VlanSet::empty();
        for v in [3, 4095, 0] {
            s.insert(v);
        }
        assert_eq!(s.ids_descending().collect::<Vec<_>>(), vec![4095, 3, 0]);
        assert_eq!(VlanSet::full().ids_descending().count(), MAX_VLAN);
    }
}
