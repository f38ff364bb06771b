//! What the domain's maps hold, computed in plain Rust from the ports' filters: the masks,
//! the MAC → ports table and the vid → ports table (see bpf/README.md), their byte layouts
//! (kept in step with the structs in `bpf/rxfilter.bpf.c`), and [`Encoded::passes`], the
//! program's decision over them, so the encoding can be checked against `ingress_pass`
//! without a kernel. Never touches the kernel itself.

use std::collections::{HashMap, HashSet};

use ringswitch_switch::rxfilter::{RxFilter, RxState, MAX_VLAN};
#[cfg(test)]
use ringswitch_switch::MacAddr;

use crate::{BpfError, PortBit};

/// Entries of the `listed` map (`rxfilter.bpf.c`): 64 ports, each its main address and a
/// MAC table of 64 places (`RxFilter::fit_tables`).
pub(crate) const LISTED_CAPACITY: usize = 64 * 65;

/// `struct domain_masks`: one bit per port in each mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DomainMasks {
    pub ports: u64,
    pub pass_all: u64,
    pub promisc: u64,
    pub uni_all: u64,
    pub uni_normal: u64,
    pub multi_all: u64,
    pub multi_normal: u64,
    pub vlan_all: u64,
    pub vlan_normal: u64,
}

impl DomainMasks {
    pub const SIZE: usize = 9 * 8;

    fn fields(&self) -> [u64; 9] {
        [
            self.ports,
            self.pass_all,
            self.promisc,
            self.uni_all,
            self.uni_normal,
            self.multi_all,
            self.multi_normal,
            self.vlan_all,
            self.vlan_normal,
        ]
    }

    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        for (chunk, v) in b.chunks_exact_mut(8).zip(self.fields()) {
            chunk.copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    /// Field by field union: a state that passes whatever either side passes (the decision
    /// only ever ORs and ANDs these bits, never negates them, apart from the port's own).
    pub fn union(&self, o: &DomainMasks) -> DomainMasks {
        DomainMasks {
            ports: self.ports | o.ports,
            pass_all: self.pass_all | o.pass_all,
            promisc: self.promisc | o.promisc,
            uni_all: self.uni_all | o.uni_all,
            uni_normal: self.uni_normal | o.uni_normal,
            multi_all: self.multi_all | o.multi_all,
            multi_normal: self.multi_normal | o.multi_normal,
            vlan_all: self.vlan_all | o.vlan_all,
            vlan_normal: self.vlan_normal | o.vlan_normal,
        }
    }
}

/// `struct mac_key`: the address, then two zero bytes.
pub(crate) fn mac_key(mac: [u8; 6]) -> [u8; 8] {
    let mut k = [0; 8];
    k[..6].copy_from_slice(&mac);
    k
}

/// `struct port_conf`, the read-only data of one program instance.
pub(crate) fn port_conf(bit: PortBit, eth_off: u32) -> [u8; 8] {
    let mut b = [0; 8];
    b[..4].copy_from_slice(&u32::from(bit.index()).to_ne_bytes());
    b[4..].copy_from_slice(&eth_off.to_ne_bytes());
    b
}

/// The maps' contents for one configuration snapshot (all but the learned addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub masks: DomainMasks,
    /// MAC → ports that list it, only where non-zero.
    pub listed: HashMap<[u8; 6], u64>,
    /// vid → `vlan_normal` ports that list it.
    pub vlans: Box<[u64]>,
}

impl Encoded {
    /// An empty domain: no ports, so every frame but broadcast is dropped.
    pub fn empty() -> Encoded {
        Encoded {
            masks: DomainMasks::default(),
            listed: HashMap::new(),
            vlans: vec![0; MAX_VLAN].into_boxed_slice(),
        }
    }

    pub fn new(ports: &[(PortBit, &RxFilter)]) -> Result<Encoded, BpfError> {
        let mut e = Encoded::empty();
        let m = &mut e.masks;
        let mut seen = HashSet::new();
        for &(bit, f) in ports {
            if !seen.insert(bit) {
                return Err(BpfError::DuplicateBit(bit.index()));
            }
            let b = bit.mask();
            m.ports |= b;
            if f.promiscuous {
                // Nothing else of the filter matters.
                m.promisc |= b;
                continue;
            }
            match (f.unicast, f.unicast_overflow) {
                (RxState::None, _) => {}
                (RxState::All, _) | (RxState::Normal, true) => m.uni_all |= b,
                (RxState::Normal, false) => {
                    m.uni_normal |= b;
                    // The unicast branch only ever sees unicast destinations.
                    for mac in std::iter::once(&f.main_mac).chain(&f.unicast_table) {
                        if !mac.is_multicast() {
                            *e.listed.entry(mac.0).or_default() |= b;
                        }
                    }
                }
            }
            match (f.multicast, f.multicast_overflow) {
                (RxState::None, _) => {}
                (RxState::All, _) | (RxState::Normal, true) => m.multi_all |= b,
                (RxState::Normal, false) => {
                    m.multi_normal |= b;
                    // Broadcast always passes before the tables are asked.
                    for mac in &f.multicast_table {
                        if mac.is_multicast() && !mac.is_broadcast() {
                            *e.listed.entry(mac.0).or_default() |= b;
                        }
                    }
                }
            }
            match f.vlan {
                RxState::None => {}
                RxState::All => m.vlan_all |= b,
                RxState::Normal => {
                    m.vlan_normal |= b;
                    for (wi, &word) in f.vlan_table.words().iter().enumerate() {
                        let mut w = word;
                        while w != 0 {
                            e.vlans[wi * 64 + w.trailing_zeros() as usize] |= b;
                            w &= w - 1;
                        }
                    }
                }
            }
        }
        if e.listed.len() > LISTED_CAPACITY {
            return Err(BpfError::TablesTooLarge {
                entries: e.listed.len(),
                capacity: LISTED_CAPACITY,
            });
        }
        Ok(e)
    }

    #[cfg(test)]
    /// The program's decision for `frame` (from its destination on) arriving on `bit`, with
    /// `learned` the learned-address map: `rxfilter.bpf.c`'s `wanted`, in Rust.
    pub fn passes(&self, frame: &[u8], bit: PortBit, learned: &HashMap<[u8; 6], u64>) -> bool {
        let m = &self.masks;
        if frame.len() < 14 {
            return true;
        }
        let dst = MacAddr::from_slice(&frame[..6]);
        if dst.is_broadcast() || m.pass_all != 0 {
            return true;
        }
        let others = m.ports & !bit.mask();
        if learned.get(&dst.0).is_some_and(|l| l & others != 0) {
            return true;
        }
        let mut vlan_ok = u64::MAX;
        if frame.len() >= 16 && frame[12..14] == [0x81, 0x00] {
            let vid = usize::from(u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff);
            vlan_ok = m.vlan_all | (m.vlan_normal & self.vlans[vid]);
        }
        let hit = self.listed.get(&dst.0).copied().unwrap_or(0);
        let kind_ok = if dst.is_multicast() {
            m.multi_all | (m.multi_normal & hit)
        } else {
            m.uni_all | (m.uni_normal & hit)
        };
        others & (m.promisc | (vlan_ok & kind_ok)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{case, Case};
    use proptest::prelude::*;

    fn encode(case: &Case) -> Encoded {
        let bits: Vec<(PortBit, &RxFilter)> = case
            .ports
            .iter()
            .map(|(b, f)| (PortBit::new(usize::from(*b)).unwrap(), f))
            .collect();
        Encoded::new(&bits).unwrap()
    }

    fn learned_masks(case: &Case) -> HashMap<[u8; 6], u64> {
        case.learned_map()
            .into_iter()
            .map(|(m, b)| (m.0, 1u64 << b))
            .collect()
    }

    fn union(a: &Encoded, b: &Encoded) -> Encoded {
        let mut u = a.clone();
        u.masks = a.masks.union(&b.masks);
        for (mac, bits) in &b.listed {
            *u.listed.entry(*mac).or_default() |= bits;
        }
        for (v, bits) in u.vlans.iter_mut().zip(b.vlans.iter()) {
            *v |= bits;
        }
        u
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The encoding, decided as the program decides, is `ingress_pass`.
        #[test]
        fn the_encoding_decides_as_ingress_pass(case in case(1600)) {
            let enc = encode(&case);
            let learned = learned_masks(&case);
            let reference_learned = case.learned_map();
            for frame in &case.frames {
                for (bit, _) in &case.ports {
                    let model = enc.passes(frame, PortBit(*bit), &learned);
                    let want = case.reference(frame, *bit, &reference_learned);
                    prop_assert_eq!(model, want, "frame {:02x?} on bit {}", frame, bit);
                }
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// What `update` goes through between two configurations passes whatever either
        /// passes, so no frame both want is dropped during the change.
        #[test]
        fn the_union_of_two_configurations_passes_what_either_passes(
            old in case(200),
            new in case(200),
        ) {
            let (a, b) = (encode(&old), encode(&new));
            let u = union(&a, &b);
            let learned = learned_masks(&new);
            for frame in old.frames.iter().chain(&new.frames) {
                for bit in old.ports.iter().chain(&new.ports).map(|(b, _)| PortBit(*b)) {
                    if a.passes(frame, bit, &learned) || b.passes(frame, bit, &learned) {
                        prop_assert!(u.passes(frame, bit, &learned));
                    }
                }
            }
        }
    }

    #[test]
    fn a_bit_given_twice_is_refused() {
        let f = RxFilter::promiscuous(MacAddr::ZERO);
        let b = PortBit::new(3).unwrap();
        assert!(matches!(
            Encoded::new(&[(b, &f), (b, &f)]),
            Err(BpfError::DuplicateBit(3))
        ));
        assert!(matches!(PortBit::new(64), Err(BpfError::TooManyPorts(64))));
    }

    #[test]
    fn tables_list_only_addresses_of_the_kind_they_serve() {
        let mut f = RxFilter::promiscuous(MacAddr([0x02, 0, 0, 0, 0, 1]));
        f.promiscuous = false;
        f.unicast = RxState::Normal;
        f.multicast = RxState::Normal;
        f.unicast_table = vec![MacAddr([0x01, 0, 0x5e, 0, 0, 1])];
        f.multicast_table = vec![MacAddr([0x02, 0, 0, 0, 0, 9]), MacAddr::BROADCAST];
        let e = Encoded::new(&[(PortBit::new(5).unwrap(), &f)]).unwrap();
        assert_eq!(e.listed.len(), 1);
        assert_eq!(e.listed[&[0x02, 0, 0, 0, 0, 1]], 1 << 5);
    }
}
