//! The data path's split-ring walker (`port::vring`) against rust-vmm's `virtio-queue`, the
//! reference it replaced for speed: on random rings (chains of any length, loops, indices past
//! the ring, indirect tables good and bad) both must see the same chains, and where ours
//! refuses a chain, `virtio-queue` must have cut it short too (it ends its iteration silently
//! where ours reports the fault).

use proptest::prelude::*;
use ringswitch_switch::port::vhost_user::{GuestMem, VringConf};
use ringswitch_switch::port::vring::{HostMem, SplitRing};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
const INDIRECT: u64 = 0x8000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const IND: u16 = 4;

#[derive(Debug, Clone)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn raw_desc(size: u16) -> impl Strategy<Value = RawDesc> {
    (
        any::<u32>(),
        0u32..4096,
        prop_oneof![
            6 => Just(0u16),
            6 => Just(NEXT),
            3 => Just(WRITE),
            3 => Just(NEXT | WRITE),
            1 => Just(IND),
            1 => Just(IND | NEXT),
        ],
        0..size + 2,
    )
        .prop_map(|(addr, len, flags, next)| RawDesc {
            addr: u64::from(addr),
            len,
            flags,
            next,
        })
}

#[derive(Debug, Clone)]
struct Case {
    size: u16,
    table: Vec<RawDesc>,
    /// Indirect tables: where a descriptor flagged IND points (`addr` is replaced by one of
    /// these, `len` by its size in bytes unless `bad_len`).
    indirect: Vec<Vec<RawDesc>>,
    bad_len: bool,
    heads: Vec<u16>,
}

fn case() -> impl Strategy<Value = Case> {
    (0u32..7)
        .prop_flat_map(|log| {
            let size = 1u16 << log;
            (
                Just(size),
                prop::collection::vec(raw_desc(size), size as usize),
                prop::collection::vec(prop::collection::vec(raw_desc(8), 1..8), 1..3),
                prop::bool::weighted(0.1),
                prop::collection::vec(0..size + 1, 1..(size as usize + 1)),
            )
        })
        .prop_map(|(size, table, indirect, bad_len, heads)| Case {
            size,
            table,
            indirect,
            bad_len,
            heads,
        })
}

fn put(mem: &GuestMem, at: u64, d: &RawDesc) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.flags.to_le_bytes());
    b[14..16].copy_from_slice(&d.next.to_le_bytes());
    mem.write_slice(&b, GuestAddress(at)).unwrap();
}

/// What a walk saw: (addr, len, writable) of each descriptor, and whether it ended cleanly.
type Seen = (Vec<(u64, u32, bool)>, bool);

fn build(c: &Case) -> Arc<GuestMem> {
    let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 64 << 10)]).unwrap());
    for (t, table) in c.indirect.iter().enumerate() {
        for (i, d) in table.iter().enumerate() {
            put(&mem, INDIRECT + 0x400 * t as u64 + 16 * i as u64, d);
        }
    }
    for (i, d) in c.table.iter().enumerate() {
        let mut d = d.clone();
        if d.flags & IND != 0 {
            let t = (d.addr as usize) % c.indirect.len();
            d.addr = INDIRECT + 0x400 * t as u64;
            d.len = 16 * c.indirect[t].len() as u32 + if c.bad_len { 8 } else { 0 };
        }
        put(&mem, DESC + 16 * i as u64, &d);
    }
    for (i, h) in c.heads.iter().enumerate() {
        mem.write_obj(*h, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(c.heads.len() as u16, GuestAddress(AVAIL + 2))
        .unwrap();
    mem
}

fn conf(size: u16) -> VringConf {
    VringConf {
        size,
        desc: DESC,
        avail: AVAIL,
        used: USED,
        base: 0,
        kick: None,
        call: None,
        enabled: true,
        started: true,
    }
}

fn reference(mem: &Arc<GuestMem>, c: &Case) -> Vec<Seen> {
    let mut q = Queue::new(c.size).unwrap();
    q.set_size(c.size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    let mut out = Vec::new();
    let m: &GuestMem = mem;
    while let Some(chain) = q.pop_descriptor_chain(m) {
        let mut seen = Vec::new();
        let mut clean = true;
        for d in chain {
            seen.push((d.addr().0, d.len(), d.is_write_only()));
            clean = !d.has_next();
        }
        out.push((seen, clean));
    }
    out
}

/// Each chain ours took (or why it refused it), and whether it popped every head.
type Ours = (Vec<Result<Vec<(u64, u32, bool)>, String>>, bool);

fn ours(mem: &Arc<GuestMem>, c: &Case) -> Ours {
    let host = HostMem::new(mem.clone());
    let mut ring = SplitRing::new(&host, &conf(c.size), false).unwrap();
    let mut out = Vec::new();
    loop {
        match ring.pop() {
            Ok(Some(head)) => {
                let mut seen = Vec::new();
                let r = ring.walk(&host, head, |d| {
                    seen.push((d.addr, d.len, d.write_only()));
                    Ok(true)
                });
                out.push(r.map(|()| seen).map_err(|e| e.0));
            }
            Ok(None) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn the_walker_sees_what_virtio_queue_sees(c in case()) {
        let mem = build(&c);
        let theirs = reference(&mem, &c);
        let (mine, popped_all) = ours(&mem, &c);
        // A head past the ring stops both at the same chain.
        let bad_head = c.heads.iter().position(|h| *h >= c.size);
        if let Some(at) = bad_head {
            prop_assert!(!popped_all);
            prop_assert_eq!(mine.len(), at);
            // (virtio-queue yields an empty chain for it and goes on.)
            prop_assert!(theirs.get(at).is_none_or(|(t, _)| t.is_empty()));
        } else {
            prop_assert!(popped_all);
            prop_assert_eq!(mine.len(), theirs.len());
        }
        for (m, (t, clean)) in mine.iter().zip(&theirs) {
            match m {
                Ok(seen) => {
                    prop_assert_eq!(seen, t);
                    prop_assert!(*clean, "ours took a chain virtio-queue cut short");
                }
                Err(why) => {
                    let indirect = c.table.iter().any(|d| d.flags & IND != 0);
                    prop_assert!(
                        !*clean || indirect,
                        "ours refused ({}) a chain virtio-queue walked whole: {:?}", why, t
                    );
                }
            }
        }
    }
}

#[test]
fn a_ring_outside_memory_or_misaligned_is_refused() {
    let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 64 << 10)]).unwrap());
    let host = HostMem::new(mem);
    let mut c = conf(256);
    assert!(SplitRing::new(&host, &c, true).is_ok());
    c.used = (64 << 10) - 8;
    assert!(SplitRing::new(&host, &c, true).is_err());
    c = conf(256);
    c.desc = DESC + 8;
    assert!(SplitRing::new(&host, &c, true).is_err());
    c = conf(100);
    assert!(SplitRing::new(&host, &c, true).is_err());
}
