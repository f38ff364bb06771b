//! Software GSO (`ringswitch_switch::gso`) on arbitrary frames with arbitrary virtio-net
//! headers and frame limits: `Segmenter::new` and `complete_checksum` never panic; when `new`
//! accepts, every piece is written within `segment_len` (nothing past it), fits the limit,
//! and re-parses: its IP header checksum is right, its lengths match the piece, its TCP or UDP
//! checksum is right, and a TCP or UDP piece is accepted again as a frame of its kind.
//!
//! Half the inputs get well-formed headers built from the fuzzer's fields (VLAN tags, IPv4
//! with options or IPv6, TCP with options or UDP, an offload header that matches), so the
//! cutting paths are reached, not only the refusals.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringswitch_switch::frame::Offload;
use ringswitch_switch::gso::checksum::{pseudo_header_v4, pseudo_header_v6};
use ringswitch_switch::gso::wire::{
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpRepr, TcpSegment, UdpDatagram, UdpRepr,
    VlanHeader,
};
use ringswitch_switch::gso::{
    complete_checksum, Segmenter, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4,
};

#[derive(Debug, Arbitrary)]
struct Headers {
    tags: u8,
    v6: bool,
    tcp: bool,
    ufo: bool,
    ip_option_words: u8,
    tcp_option_words: u8,
    ident: u16,
    seq: u32,
    tcp_flags: u16,
    needs_csum: bool,
    ecn: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    offload: (u8, u8, u16, u16, u16, u16),
    max_frame: u16,
    /// Headers to put in front of `bytes`, and an offload header to match them.
    built: Option<Headers>,
    bytes: Vec<u8>,
}

/// A well-formed frame with `payload` behind headers `h`, and its offload header.
fn build(h: &Headers, payload: &[u8], gso_size: u16) -> (Vec<u8>, Offload) {
    let ufo = h.ufo && !h.tcp && !h.v6;
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    let ip_type: u16 = if h.v6 { 0x86dd } else { 0x0800 };
    let tags = usize::from(h.tags % 3);
    f.extend_from_slice(&(if tags > 0 { 0x8100u16 } else { ip_type }).to_be_bytes());
    for i in 0..tags {
        f.extend_from_slice(&(i as u16 + 1).to_be_bytes());
        f.extend_from_slice(&(if i + 1 < tags { 0x88a8u16 } else { ip_type }).to_be_bytes());
    }
    let l4_hlen = if h.tcp {
        20 + usize::from(h.tcp_option_words % 11) * 4
    } else {
        8
    };
    let l4_len = l4_hlen + payload.len();
    let proto = if h.tcp { 6 } else { 17 };
    let mut hdr = [0u8; 60];
    let (src4, dst4) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let (src6, dst6) = ([0xfd; 16], [0xfe; 16]);
    let n = if h.v6 {
        Ipv6Repr {
            traffic_class: 0,
            flow_label: 1,
            payload_len: l4_len as u16,
            next_header: proto,
            hop_limit: 64,
            src: src6,
            dst: dst6,
        }
        .emit(&mut hdr)
    } else {
        Ipv4Repr {
            dscp_ecn: 0,
            total_len: 0,
            ident: h.ident,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            ttl: 64,
            protocol: proto,
            src: src4,
            dst: dst4,
            options: [1; 40],
            options_len: h.ip_option_words % 11 * 4,
        }
        .emit(&mut hdr)
    };
    f.extend_from_slice(&hdr[..n]);
    let l4 = f.len();
    let n = if h.tcp {
        TcpRepr {
            src_port: 1,
            dst_port: 2,
            seq: h.seq,
            ack: 0,
            flags: h.tcp_flags & 0x1ff,
            window: 0,
            checksum: 0,
            urgent: 0,
            options: [1; 40],
            options_len: h.tcp_option_words % 11 * 4,
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
    f.extend_from_slice(payload);
    let check_at = if h.tcp { 16 } else { 6 };
    let gso_type = match (h.tcp, h.v6, ufo) {
        (true, false, _) => GSO_TCPV4,
        (true, true, _) => GSO_TCPV6,
        (false, _, true) => GSO_UDP,
        (false, _, false) => GSO_UDP_L4,
    };
    let o = Offload {
        flags: if h.needs_csum { F_NEEDS_CSUM } else { 0 },
        gso_type: gso_type | if h.ecn && h.tcp { GSO_ECN } else { 0 },
        hdr_len: (l4 + l4_hlen) as u16,
        gso_size,
        csum_start: l4 as u16,
        csum_offset: check_at,
    };
    (f, o)
}

fuzz_target!(|input: Input| {
    let (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) = input.offload;
    let (frame, o) = match &input.built {
        Some(h) => build(h, &input.bytes, gso_size),
        None => (
            input.bytes.clone(),
            Offload {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
            },
        ),
    };
    let max_frame = usize::from(input.max_frame);

    let mut whole = frame.clone();
    let _ = complete_checksum(&mut whole, &o);
    assert_eq!(whole.len(), frame.len());

    let Ok(seg) = Segmenter::new(&frame, &o, max_frame) else {
        return;
    };
    assert!(seg.count() >= 1);
    let gso = o.gso_type & !GSO_ECN;
    // The first piece is the largest; 16 bytes more show a write past the end.
    let mut out = vec![0u8; seg.segment_len(0) + 16];
    for i in 0..seg.count() {
        let n = seg.segment_len(i);
        assert!(n <= max_frame, "segment {i} of {n} bytes over {max_frame}");
        assert!(n <= seg.segment_len(0));
        out[n..n + 16].fill(0xa5);
        assert_eq!(seg.write(&frame, i, &mut out[..n + 16]), n);
        assert!(
            out[n..n + 16].iter().all(|&b| b == 0xa5),
            "wrote past segment {i}"
        );
        if !seg.is_whole() {
            check_piece(&out[..n], gso, i, seg.count());
        }
    }
    assert_eq!(seg.segment_len(seg.count()), 0);
    assert_eq!(seg.write(&frame, seg.count(), &mut out), 0);
});

/// Re-parses piece `i` of `count` of a frame of GSO type `gso`.
fn check_piece(piece: &[u8], gso: u8, i: usize, count: usize) {
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes([piece[12], piece[13]]);
    while matches!(ethertype, 0x8100 | 0x88a8) && l3 < 22 {
        ethertype = VlanHeader::new_checked(&piece[l3..]).unwrap().ethertype();
        l3 += 4;
    }
    let (l4, proto, pseudo) = if ethertype == 0x86dd {
        let ip = Ipv6Packet::new_checked(&piece[l3..]).unwrap();
        assert_eq!(usize::from(ip.payload_len()), piece.len() - l3 - 40);
        let len = (piece.len() - l3 - 40) as u32;
        let p = pseudo_header_v6(&ip.src_addr(), &ip.dst_addr(), ip.next_header(), len);
        (l3 + 40, ip.next_header(), p)
    } else {
        let ip = Ipv4Packet::new_checked(&piece[l3..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(usize::from(ip.total_len()), piece.len() - l3);
        if gso == GSO_UDP {
            assert_eq!(ip.more_frags(), i + 1 < count);
            assert!(!ip.dont_frag());
            return;
        }
        let len = (piece.len() - l3 - ip.header_len()) as u32;
        let p = pseudo_header_v4(ip.src_addr(), ip.dst_addr(), ip.protocol(), len);
        (l3 + ip.header_len(), ip.protocol(), p)
    };
    if proto == 6 {
        assert!(TcpSegment::new_checked(&piece[l4..])
            .unwrap()
            .verify_checksum(pseudo));
    } else {
        let u = UdpDatagram::new_checked(&piece[l4..]).unwrap();
        assert_eq!(usize::from(u.len()), piece.len() - l4);
        assert_ne!(u.checksum(), 0);
        assert!(u.verify_checksum(pseudo));
    }
    // The piece is a frame of its kind again, sent whole when cut with room to spare.
    let again = Offload {
        flags: 0,
        gso_type: gso,
        hdr_len: 0,
        gso_size: u16::MAX,
        csum_start: 0,
        csum_offset: 0,
    };
    assert!(Segmenter::new(piece, &again, usize::MAX)
        .unwrap()
        .is_whole());
}
