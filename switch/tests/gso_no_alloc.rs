//! Software GSO allocates nothing: a counting global allocator watches `Segmenter::new`,
//! `write` and `complete_checksum` on TSO, USO and UFO frames and on refusals.

use ringswitch_switch::frame::Offload;
use ringswitch_switch::gso::checksum::pseudo_header_v4;
use ringswitch_switch::gso::wire::{Ipv4Repr, TcpRepr, UdpRepr};
use ringswitch_switch::gso::{
    complete_checksum, Segmenter, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_UDP_L4,
};

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// An Ethernet + IPv4 frame with a TCP (`tcp`) or UDP header and `payload` bytes.
fn frame(tcp: bool, payload: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let l4_len = if tcp { 32 } else { 8 } + payload;
    let mut hdr = [0u8; 60];
    let n = Ipv4Repr {
        dscp_ecn: 0,
        total_len: (20 + l4_len) as u16,
        ident: 9,
        dont_frag: true,
        more_frags: false,
        frag_offset: 0,
        ttl: 64,
        protocol: if tcp { 6 } else { 17 },
        src: [10, 0, 0, 1],
        dst: [10, 0, 0, 2],
        options: [0; 40],
        options_len: 0,
    }
    .emit(&mut hdr);
    f.extend_from_slice(&hdr[..n]);
    let n = if tcp {
        TcpRepr {
            src_port: 1,
            dst_port: 2,
            seq: 3,
            ack: 4,
            flags: 0x018,
            window: 5,
            checksum: 0,
            urgent: 0,
            options: [1; 40],
            options_len: 12,
        }
        .emit(&mut hdr)
    } else {
        UdpRepr {
            src_port: 1,
            dst_port: 2,
            len: l4_len as u16,
            checksum: 0,
        }
        .emit(&mut hdr)
    };
    f.extend_from_slice(&hdr[..n]);
    f.extend((0..payload).map(|i| i as u8));
    let seed = pseudo_header_v4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        if tcp { 6 } else { 17 },
        l4_len as u32,
    );
    let at = if tcp { 34 + 16 } else { 34 + 6 };
    f[at..at + 2].copy_from_slice(&seed.fold().to_be_bytes());
    f
}

fn offload(gso_type: u8, tcp: bool, gso_size: u16) -> Offload {
    Offload {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: if tcp { 66 } else { 42 },
        gso_size,
        csum_start: 34,
        csum_offset: if tcp { 16 } else { 6 },
    }
}

#[test]
fn segmenting_allocates_nothing() {
    let tso = frame(true, 64_000);
    let udp = frame(false, 30_000);
    let cases = [
        (&tso, offload(GSO_TCPV4, true, 1448)),
        (&tso, offload(GSO_TCPV4, true, 100)),
        (&udp, offload(GSO_UDP_L4, false, 1472)),
        (&udp, offload(GSO_UDP, false, 1480)),
        // Refused: too many USO pieces, and pieces over the limit.
        (&udp, offload(GSO_UDP_L4, false, 100)),
        (&tso, offload(GSO_TCPV4, true, 9000)),
    ];
    let mut out = vec![0u8; 65_536];
    let mut whole = tso.clone();
    let before = common::thread_allocations();
    let mut pieces = 0;
    for (f, o) in &cases {
        if let Ok(s) = Segmenter::new(f, o, 1518) {
            for i in 0..s.count() {
                pieces += usize::from(s.write(f, i, &mut out) > 0);
            }
        }
    }
    let plain = Offload {
        gso_type: GSO_NONE,
        gso_size: 0,
        ..offload(GSO_NONE, true, 0)
    };
    complete_checksum(&mut whole, &plain).unwrap();
    let after = common::thread_allocations();
    assert_eq!(after - before, 0, "software GSO allocated");
    assert_eq!(pieces, 45 + 640 + 21 + 21);
}
