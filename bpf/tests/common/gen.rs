//! Random domains, learned addresses and frames for checking the kernel's ingress decision
//! against `ingress_pass` (shared by the crate's unit tests and `tests/equivalence.rs`).
//! Addresses and VLAN ids are drawn mostly from small pools, so that frames hit the
//! tables, tables share entries and the learned addresses matter.

use std::collections::HashMap;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use ringswitch_switch::rxfilter::{ingress_pass, RxFilter, RxState, VlanSet};
use ringswitch_switch::MacAddr;

/// A domain: each port's bit (0..64, distinct) and filter, learned addresses (bit of the
/// port learned on, not always one of the domain's), and the frames to decide on.
#[derive(Clone, Debug)]
pub struct Case {
    pub ports: Vec<(u8, RxFilter)>,
    pub learned: Vec<(MacAddr, u8)>,
    pub frames: Vec<Vec<u8>>,
}

const POOL: [[u8; 6]; 13] = [
    [0x02, 0, 0, 0, 0, 1],
    [0x02, 0, 0, 0, 0, 2],
    [0x02, 0, 0, 0, 0, 3],
    [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    [0, 0, 0, 0, 0, 0],
    [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff],
    [0x01, 0, 0x5e, 0, 0, 1],
    [0x01, 0, 0x5e, 0x7f, 0xff, 0xfa],
    [0x33, 0x33, 0, 0, 0, 1],
    [0x33, 0x33, 0xff, 0, 0x77, 9],
    [0x01, 0x80, 0xc2, 0, 0, 0],
    [0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
    [0xff; 6],
];

const VIDS: [u16; 6] = [0, 1, 5, 100, 4094, 4095];

fn mac() -> impl Strategy<Value = MacAddr> {
    prop_oneof![
        6 => select(&POOL[..]).prop_map(MacAddr),
        1 => any::<[u8; 6]>().prop_map(MacAddr),
    ]
}

fn state() -> impl Strategy<Value = RxState> {
    prop_oneof![3 => Just(RxState::Normal), 1 => Just(RxState::None), 1 => Just(RxState::All)]
}

fn vid() -> impl Strategy<Value = u16> {
    prop_oneof![4 => select(&VIDS[..]), 1 => 0u16..4096]
}

fn filter() -> impl Strategy<Value = RxFilter> {
    (
        (
            proptest::bool::weighted(0.2),
            state(),
            state(),
            state(),
            proptest::bool::weighted(0.8),
            proptest::bool::weighted(0.15),
            proptest::bool::weighted(0.15),
        ),
        mac(),
        vec(mac(), 0..5),
        vec(mac(), 0..5),
        vec(vid(), 0..4),
    )
        .prop_map(
            |((promiscuous, unicast, multicast, vlan, bcast, uo, mo), main, uni, multi, vids)| {
                let mut vlan_table = VlanSet::empty();
                for v in vids {
                    vlan_table.insert(v);
                }
                RxFilter {
                    promiscuous,
                    unicast,
                    multicast,
                    vlan,
                    broadcast_allowed: bcast,
                    unicast_overflow: uo,
                    multicast_overflow: mo,
                    main_mac: main,
                    unicast_table: uni,
                    multicast_table: multi,
                    vlan_table,
                }
            },
        )
}

/// A frame: a destination, maybe an 802.1Q (or other) tag, then cut or padded to a length
/// from a few bytes (shorter than a destination, than a header — both pass, counted by the
/// switch as runts — or than a tag) to `max_len`.
pub fn frame(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let tpid = prop_oneof![6 => Just(0x8100u16), 1 => Just(0x88a8u16), 1 => Just(0x0800u16)];
    let tci = (vid(), 0u16..16).prop_map(|(v, pcp_dei)| v | pcp_dei << 12);
    let len = prop_oneof![
        1 => 0usize..14,
        2 => 14usize..20,
        3 => 20usize..=64,
        2 => 64usize..=1518,
        1 => Just(1518usize),
        1 => Just(max_len),
    ];
    (
        prop_oneof![8 => mac(), 1 => Just(MacAddr::BROADCAST)],
        proptest::option::weighted(0.4, (tpid, tci)),
        len,
    )
        .prop_map(|(dst, tag, len)| {
            let mut f = dst.0.to_vec();
            f.extend_from_slice(&[0x02, 0xaa, 0, 0, 0, 1]);
            if let Some((tpid, tci)) = tag {
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&tci.to_be_bytes());
            }
            f.extend_from_slice(&[0x88, 0xb5]);
            let mut i = 0u8;
            f.resize_with(len, || {
                i = i.wrapping_add(1);
                i
            });
            f
        })
}

/// A domain of 1..=10 ports with learned addresses and 1..8 frames up to `max_len` bytes.
pub fn case(max_len: usize) -> impl Strategy<Value = Case> {
    (1usize..=10)
        .prop_flat_map(|n| {
            (
                subsequence((0u8..64).collect::<Vec<_>>(), n),
                vec(filter(), n),
            )
        })
        .prop_flat_map(move |(bits, filters)| {
            let learned_bit = prop_oneof![4 => select(bits.clone()), 1 => 0u8..64];
            let ports: Vec<(u8, RxFilter)> = bits.into_iter().zip(filters).collect();
            (
                Just(ports),
                vec((mac(), learned_bit), 0..6),
                vec(frame(max_len), 1..8),
            )
        })
        .prop_map(|(ports, learned, frames)| Case {
            ports,
            learned,
            frames,
        })
}

impl Case {
    /// Learned address → bit, the last entry for an address winning.
    pub fn learned_map(&self) -> HashMap<MacAddr, u8> {
        self.learned.iter().copied().collect()
    }

    /// `ingress_pass` for `frame` arriving on the port with bit `on`.
    pub fn reference(&self, frame: &[u8], on: u8, learned: &HashMap<MacAddr, u8>) -> bool {
        let others = self.ports.iter().filter(|(b, _)| *b != on);
        let learned_elsewhere = frame.len() >= 6
            && learned
                .get(&MacAddr::from_slice(frame))
                .is_some_and(|&l| l != on && self.ports.iter().any(|(b, _)| *b == l));
        ingress_pass(frame, learned_elsewhere, others.map(|(_, f)| f))
    }
}
