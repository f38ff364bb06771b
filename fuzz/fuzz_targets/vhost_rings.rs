//! A vhost-user guest's rings as the worker walks them: guest memory whose every byte (rings,
//! descriptors, indirect tables, buffers) comes from the input, ring sizes and addresses and
//! features chosen by the input. Taking transmit chains and writing frames into receive chains
//! must end in frames moved or a fault reported, never a panic, a hang or an access outside
//! the memory (AddressSanitizer watches the mapping's neighbours).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringswitch_switch::port::vhost_user::{
    walk_rings, GuestMem, VhostConf, VringConf, F_EVENT_IDX, F_MRG_RXBUF, RXQ, TXQ,
};
use vm_memory::{Bytes, GuestAddress};

/// Guest memory: two regions with a hole between them.
const LOW: usize = 64 << 10;
const HIGH_AT: u64 = 1 << 20;
const HIGH: usize = 16 << 10;

#[derive(Debug, Arbitrary)]
struct Ring {
    size_log2: u8,
    desc: u32,
    avail: u32,
    used: u32,
    base: u16,
}

#[derive(Debug, Arbitrary)]
struct Input {
    rx: Ring,
    tx: Ring,
    event_idx: bool,
    mrg: bool,
    frame_len: u16,
    low: Vec<u8>,
    high: Vec<u8>,
}

fn ring(r: &Ring) -> VringConf {
    VringConf {
        size: 1u16 << (r.size_log2 % 9),
        desc: r.desc as u64 % (HIGH_AT + HIGH as u64 + 4096),
        avail: r.avail as u64 % (HIGH_AT + HIGH as u64 + 4096),
        used: r.used as u64 % (HIGH_AT + HIGH as u64 + 4096),
        base: r.base,
        kick: None,
        call: None,
        enabled: true,
        started: true,
    }
}

fuzz_target!(|input: Input| {
    let mem = std::sync::Arc::new(
        GuestMem::from_ranges(&[(GuestAddress(0), LOW), (GuestAddress(HIGH_AT), HIGH)])
            .expect("guest memory"),
    );
    let n = input.low.len().min(LOW);
    mem.write_slice(&input.low[..n], GuestAddress(0)).unwrap();
    let n = input.high.len().min(HIGH);
    mem.write_slice(&input.high[..n], GuestAddress(HIGH_AT)).unwrap();
    let mut conf = VhostConf::default();
    conf.features = (if input.event_idx { F_EVENT_IDX } else { 0 })
        | (if input.mrg { F_MRG_RXBUF } else { 0 });
    conf.vrings[RXQ] = ring(&input.rx);
    conf.vrings[TXQ] = ring(&input.tx);
    let mut buf = vec![0u8; 65536 + 4096];
    let frame = vec![0x5au8; input.frame_len as usize % 9100];
    let _ = walk_rings(&mem, &conf, &mut buf, &frame);
});
