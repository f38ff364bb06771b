//! Segmentation checked against an independent parser (etherparse): generated TCP and UDP
//! frames of random sizes, options, IPv4/IPv6 and VLAN tags, built with etherparse; every
//! piece must parse, carry valid checksums, carry the fields as specified, and all pieces
//! together the input's payload. Plus each refusal, one by one.

use super::*;
use etherparse::{
    IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header, LinkExtSlice, NetSlice,
    SlicedPacket, TcpHeader, TransportSlice, UdpHeader,
};
use proptest::prelude::*;

const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

#[derive(Debug, Clone)]
enum L4 {
    Tcp {
        option_words: u8,
        seq: u32,
        ack: u32,
        /// The nine flag bits.
        flags: u16,
        window: u16,
        urgent: u16,
    },
    /// `ufo`: cut as IPv4 fragments (UFO) rather than datagrams (USO).
    Udp { ufo: bool },
}

#[derive(Debug, Clone)]
struct Case {
    tags: Vec<(u16, u16)>,
    v6: bool,
    ip_option_words: u8,
    ident: u16,
    dont_frag: bool,
    ttl: u8,
    flow: u32,
    l4: L4,
    payload: Vec<u8>,
    gso_size: u16,
    needs_csum: bool,
    ecn: bool,
    /// The checksum field when NEEDS_CSUM is off (GSO ignores it).
    stale_check: u16,
}

/// A built frame and where its parts lie.
struct Built {
    frame: Vec<u8>,
    offload: Offload,
    l3: usize,
    l4: usize,
    /// Where the payload (TCP/USO) or the datagram (UFO) begins.
    cut_from: usize,
}

fn ip_addrs(v6: bool) -> ([u8; 16], [u8; 16]) {
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    if v6 {
        s[0] = 0xfd;
        s[15] = 1;
        d[0] = 0xfd;
        d[15] = 2;
    } else {
        s[..4].copy_from_slice(&[10, 1, 2, 3]);
        d[..4].copy_from_slice(&[10, 4, 5, 6]);
    }
    (s, d)
}

fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// Builds the frame with etherparse's headers (VLAN tags by hand).
fn build(c: &Case) -> Built {
    let ip_ethertype = if c.v6 { 0x86dd } else { 0x0800 };
    let mut frame = Vec::new();
    frame.extend_from_slice(&DST);
    frame.extend_from_slice(&SRC);
    let mut types: Vec<u16> = c.tags.iter().map(|t| t.0).collect();
    types.push(ip_ethertype);
    frame.extend_from_slice(&types[0].to_be_bytes());
    for (i, (_, tci)) in c.tags.iter().enumerate() {
        frame.extend_from_slice(&tci.to_be_bytes());
        frame.extend_from_slice(&types[i + 1].to_be_bytes());
    }
    let l3 = frame.len();
    let (src, dst) = ip_addrs(c.v6);
    let (proto, mut l4_bytes) = match &c.l4 {
        L4::Tcp {
            option_words,
            seq,
            ack,
            flags,
            window,
            urgent,
        } => {
            let mut h = TcpHeader::new(1234, 80, *seq, *window);
            h.acknowledgment_number = *ack;
            h.fin = flags & 0x001 != 0;
            h.syn = flags & 0x002 != 0;
            h.rst = flags & 0x004 != 0;
            h.psh = flags & 0x008 != 0;
            h.ack = flags & 0x010 != 0;
            h.urg = flags & 0x020 != 0;
            h.ece = flags & 0x040 != 0;
            h.cwr = flags & 0x080 != 0;
            h.ns = flags & 0x100 != 0;
            h.urgent_pointer = *urgent;
            let opts: Vec<u8> = (0..usize::from(*option_words) * 4)
                .map(|i| if i % 4 == 3 { 0 } else { 1 })
                .collect();
            h.set_options_raw(&opts).unwrap();
            (IpNumber::TCP, h.to_bytes().to_vec())
        }
        L4::Udp { .. } => {
            let h = UdpHeader {
                source_port: 5000,
                destination_port: 6000,
                length: (8 + c.payload.len()) as u16,
                checksum: 0,
            };
            (IpNumber::UDP, h.to_bytes().to_vec())
        }
    };
    let l4_hlen = l4_bytes.len();
    l4_bytes.extend_from_slice(&c.payload);
    let l4_len = l4_bytes.len();
    let is_tcp = matches!(c.l4, L4::Tcp { .. });
    let check_at = if is_tcp { 16 } else { 6 };
    // The checksum field: the pseudo-header sum when partial (what a virtio sender leaves),
    // else a stale value that segmentation must not trust.
    let field = if c.needs_csum {
        let p = if c.v6 {
            pseudo_header_v6(&src, &dst, proto.0, l4_len as u32)
        } else {
            pseudo_header_v4(v4(&src), v4(&dst), proto.0, l4_len as u32)
        };
        p.fold()
    } else {
        c.stale_check
    };
    l4_bytes[check_at..check_at + 2].copy_from_slice(&field.to_be_bytes());
    if c.v6 {
        let h = Ipv6Header {
            traffic_class: 0x28,
            flow_label: Ipv6FlowLabel::try_new(c.flow).unwrap(),
            payload_length: l4_len as u16,
            next_header: proto,
            hop_limit: c.ttl,
            source: src,
            destination: dst,
        };
        frame.extend_from_slice(&h.to_bytes());
    } else {
        let opts: Vec<u8> = (0..usize::from(c.ip_option_words) * 4)
            .map(|i| if i % 4 == 3 { 0 } else { 1 })
            .collect();
        let mut h = Ipv4Header::new(l4_len as u16, c.ttl, proto, v4(&src), v4(&dst)).unwrap();
        h.identification = c.ident;
        h.dont_fragment = c.dont_frag;
        h.options = Ipv4Options::try_from(&opts[..]).unwrap();
        h.total_len = (h.header_len() + l4_len) as u16;
        h.header_checksum = h.calc_header_checksum();
        frame.extend_from_slice(&h.to_bytes());
    }
    let l4 = frame.len();
    frame.extend_from_slice(&l4_bytes);
    let (gso_type, cut_from) = match (&c.l4, c.v6) {
        (L4::Tcp { .. }, false) => (GSO_TCPV4, l4 + l4_hlen),
        (L4::Tcp { .. }, true) => (GSO_TCPV6, l4 + l4_hlen),
        (L4::Udp { ufo: true }, _) => (GSO_UDP, l4),
        (L4::Udp { ufo: false }, _) => (GSO_UDP_L4, l4 + l4_hlen),
    };
    let ecn = if c.ecn && is_tcp { GSO_ECN } else { 0 };
    let offload = Offload {
        flags: if c.needs_csum { F_NEEDS_CSUM } else { 0 },
        gso_type: gso_type | ecn,
        hdr_len: (l4 + l4_hlen) as u16,
        gso_size: c.gso_size,
        csum_start: if c.needs_csum { l4 as u16 } else { 0 },
        csum_offset: if c.needs_csum { check_at as u16 } else { 0 },
    };
    Built {
        frame,
        offload,
        l3,
        l4,
        cut_from,
    }
}

fn case() -> impl Strategy<Value = Case> {
    let tag = (prop_oneof![Just(0x8100u16), Just(0x88a8u16)], any::<u16>());
    let tcp = (
        0u8..=10,
        any::<u32>(),
        any::<u32>(),
        0u16..0x200,
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(option_words, seq, ack, flags, window, urgent)| L4::Tcp {
            option_words,
            seq,
            ack,
            flags,
            window,
            urgent,
        });
    let udp = any::<bool>().prop_map(|ufo| L4::Udp { ufo });
    (
        proptest::collection::vec(tag, 0..=2),
        any::<bool>(),
        0u8..=10,
        any::<u16>(),
        any::<bool>(),
        any::<u8>(),
        0u32..0x10_0000,
        prop_oneof![tcp, udp],
        (0usize..4000, any::<u8>()),
        1u16..2000,
        (any::<bool>(), any::<bool>(), any::<u16>()),
    )
        .prop_map(
            |(
                tags,
                v6,
                ip_option_words,
                ident,
                dont_frag,
                ttl,
                flow,
                l4,
                (n, seed),
                gso_size,
                (needs_csum, ecn, stale_check),
            )| {
                let v6 = v6 && !matches!(l4, L4::Udp { ufo: true });
                let payload = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
                let gso_size = if matches!(l4, L4::Udp { ufo: true }) {
                    gso_size.max(8)
                } else {
                    gso_size
                };
                Case {
                    tags,
                    v6,
                    ip_option_words,
                    ident,
                    dont_frag,
                    ttl,
                    flow,
                    l4,
                    payload,
                    gso_size,
                    needs_csum,
                    ecn,
                    stale_check,
                }
            },
        )
}

/// Cuts `b.frame` into its pieces.
fn cut(b: &Built, max_frame: usize) -> Result<Vec<Vec<u8>>, GsoError> {
    let s = Segmenter::new(&b.frame, &b.offload, max_frame)?;
    let mut pieces = Vec::new();
    for i in 0..s.count() {
        let n = s.segment_len(i);
        assert!(n <= max_frame);
        let mut out = vec![0xee; n + 7];
        assert_eq!(s.write(&b.frame, i, &mut out), n);
        assert!(
            out[n..].iter().all(|&x| x == 0xee),
            "wrote past the segment"
        );
        out.truncate(n);
        pieces.push(out);
    }
    assert_eq!(s.segment_len(s.count()), 0);
    Ok(pieces)
}

/// The VLAN ids (whole TCIs) etherparse found.
fn tcis_of(p: &SlicedPacket) -> Vec<u16> {
    p.link_exts
        .iter()
        .map(|e| match e {
            LinkExtSlice::Vlan(v) => {
                let s = v.slice();
                u16::from_be_bytes([s[0], s[1]])
            }
            LinkExtSlice::Macsec(_) => panic!("no MACsec here"),
        })
        .collect()
}

/// Checks the IP header of piece `i` of `n` against the input's; returns its payload.
fn check_ip<'a>(c: &Case, b: &Built, p: &'a SlicedPacket, piece: &[u8], i: usize) -> &'a [u8] {
    let (src, dst) = ip_addrs(c.v6);
    match p.net.as_ref().expect("an IP header") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert!(!c.v6);
            assert_eq!(usize::from(h.total_len), piece.len() - b.l3);
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!((h.source, h.destination), (v4(&src), v4(&dst)));
            assert_eq!(h.time_to_live, c.ttl);
            assert_eq!(h.options.len(), usize::from(c.ip_option_words) * 4);
            if matches!(c.l4, L4::Udp { ufo: true }) {
                assert_eq!(h.identification, c.ident);
                assert!(!h.dont_fragment);
            } else {
                assert_eq!(h.identification, c.ident.wrapping_add(i as u16));
                assert_eq!(h.dont_fragment, c.dont_frag);
                assert!(!h.more_fragments && h.fragment_offset.value() == 0);
            }
            ip.payload().payload
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header().to_header();
            assert!(c.v6);
            assert_eq!(usize::from(h.payload_length), piece.len() - b.l3 - 40);
            assert_eq!((h.source, h.destination), (src, dst));
            assert_eq!((h.hop_limit, h.flow_label.value()), (c.ttl, c.flow));
            ip.payload().payload
        }
        NetSlice::Arp(_) => panic!("not ARP"),
    }
}

/// Checks every piece against the input and etherparse's reading of it.
fn check(c: &Case, b: &Built, pieces: &[Vec<u8>]) {
    let mss = usize::from(c.gso_size);
    let rest = b.frame.len() - b.cut_from;
    if rest <= mss {
        // Sent whole: the input, its checksum completed if partial.
        assert_eq!(pieces.len(), 1);
        let mut want = b.frame.clone();
        complete_checksum(&mut want, &b.offload).unwrap();
        assert_eq!(pieces[0], want);
        return;
    }
    let step = match c.l4 {
        L4::Udp { ufo: true } => mss & !7,
        _ => mss,
    };
    assert_eq!(pieces.len(), rest.div_ceil(step));
    let (src, dst) = ip_addrs(c.v6);
    let mut carried = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        assert_eq!(&piece[..b.l3], &b.frame[..b.l3]);
        let p = SlicedPacket::from_ethernet(piece).expect("every piece parses");
        assert_eq!(tcis_of(&p), c.tags.iter().map(|t| t.1).collect::<Vec<_>>());
        let ip_payload = check_ip(c, b, &p, piece, i);
        match (&c.l4, p.transport.as_ref()) {
            (L4::Tcp { seq, flags, .. }, Some(TransportSlice::Tcp(t))) => {
                assert_eq!(t.sequence_number(), seq.wrapping_add((i * mss) as u32));
                let want = if c.v6 {
                    t.calc_checksum_ipv6(src, dst)
                } else {
                    t.calc_checksum_ipv4(v4(&src), v4(&dst))
                };
                assert_eq!(t.checksum(), want.unwrap());
                assert_eq!(t.fin(), last && flags & 0x001 != 0);
                assert_eq!(t.psh(), last && flags & 0x008 != 0);
                assert_eq!(t.cwr(), i == 0 && flags & 0x080 != 0);
                assert_eq!(t.syn(), flags & 0x002 != 0);
                assert_eq!(t.ack(), flags & 0x010 != 0);
                assert_eq!(t.ns(), flags & 0x100 != 0);
                // The header is the input's but for sequence number, flags and checksum.
                let got = t.header_slice();
                let mut want = b.frame[b.l4..b.cut_from].to_vec();
                for k in [4, 5, 6, 7, 13, 16, 17] {
                    want[k] = got[k];
                }
                assert_eq!(got, &want[..]);
                carried.extend_from_slice(t.payload());
            }
            (L4::Udp { ufo: false }, Some(TransportSlice::Udp(u))) => {
                assert_eq!(usize::from(u.length()), piece.len() - b.l4);
                let h = u.to_header();
                let want = if c.v6 {
                    h.calc_checksum_ipv6_raw(src, dst, u.payload())
                } else {
                    h.calc_checksum_ipv4_raw(v4(&src), v4(&dst), u.payload())
                };
                assert_eq!(u.checksum(), want.unwrap());
                assert_ne!(u.checksum(), 0);
                carried.extend_from_slice(u.payload());
            }
            (L4::Udp { ufo: true }, _) => {
                let NetSlice::Ipv4(ip) = p.net.as_ref().unwrap() else {
                    panic!("UFO is IPv4");
                };
                let h = ip.header();
                assert_eq!(h.more_fragments(), !last);
                assert_eq!(usize::from(h.fragments_offset().value()) * 8, carried.len());
                carried.extend_from_slice(ip_payload);
            }
            (l4, t) => panic!("{l4:?} came out as {t:?}"),
        }
    }
    match c.l4 {
        L4::Udp { ufo: true } => {
            // The datagram reassembled: the input's but for a checksum now complete.
            assert_eq!(carried.len(), rest);
            assert_eq!(carried[..6], b.frame[b.l4..b.l4 + 6]);
            assert_eq!(carried[8..], b.frame[b.l4 + 8..]);
            let u = etherparse::UdpSlice::from_slice(&carried).unwrap();
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(v4(&src), v4(&dst), u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want);
        }
        _ => assert_eq!(carried, c.payload),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn pieces_parse_and_carry_the_payload(c in case(), slack in 0usize..100) {
        let b = build(&c);
        let head = if matches!(c.l4, L4::Udp { ufo: true }) { b.l4 } else { b.cut_from };
        let rest = b.frame.len() - b.cut_from;
        let step = usize::from(if matches!(c.l4, L4::Udp { ufo: true }) { c.gso_size & !7 } else { c.gso_size });
        let need = if rest <= usize::from(c.gso_size) { b.frame.len() } else { head + step };
        let uso_too_many = matches!(c.l4, L4::Udp { ufo: false }) && rest.div_ceil(step) > MAX_USO_SEGMENTS;
        match cut(&b, need + slack) {
            Ok(pieces) => {
                prop_assert!(!uso_too_many);
                check(&c, &b, &pieces);
            }
            Err(GsoError::TooManySegments) => prop_assert!(uso_too_many),
            Err(e) => prop_assert!(false, "refused: {e}"),
        }
        if need > 0 {
            prop_assert_eq!(
                Segmenter::new(&b.frame, &b.offload, need - 1).unwrap_err(),
                if uso_too_many { GsoError::TooManySegments } else { GsoError::SegmentTooLarge { need, max: need - 1 } }
            );
        }
    }

    #[test]
    fn any_bytes_and_header_never_panic(
        frame in proptest::collection::vec(any::<u8>(), 0..200),
        flags: u8, gso_type: u8, hdr_len in 0u16..256, gso_size in 0u16..100,
        csum_start in 0u16..256, csum_offset in 0u16..64, max_frame in 0usize..300,
    ) {
        let o = Offload { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset };
        let mut f = frame.clone();
        let _ = complete_checksum(&mut f, &o);
        if let Ok(s) = Segmenter::new(&frame, &o, max_frame) {
            prop_assert!(s.count() >= 1);
            let mut out = [0u8; 300];
            for i in 0..s.count() + 1 {
                let n = s.write(&frame, i, &mut out);
                prop_assert_eq!(n, s.segment_len(i));
                prop_assert!(n <= max_frame);
            }
        }
    }
}

/// A TCP/IPv4 frame of `payload` bytes for the refusal tests: 14 + 20 + 20 bytes of headers.
fn tcp4(payload: usize) -> (Vec<u8>, Offload) {
    let c = Case {
        tags: vec![],
        v6: false,
        ip_option_words: 0,
        ident: 7,
        dont_frag: true,
        ttl: 64,
        flow: 0,
        l4: L4::Tcp {
            option_words: 0,
            seq: 1,
            ack: 2,
            flags: 0x018,
            window: 100,
            urgent: 0,
        },
        payload: vec![0x5a; payload],
        gso_size: 100,
        needs_csum: true,
        ecn: false,
        stale_check: 0,
    };
    let b = build(&c);
    (b.frame, b.offload)
}

#[test]
fn each_refusal_has_its_reason() {
    let (f, o) = tcp4(1000);
    let new = |f: &[u8], o: Offload| Segmenter::new(f, &o, 1514).err();
    assert_eq!(new(&f, o), None);
    for t in [2, 6, 7, 0x40, 0x80, 0x85] {
        let o = Offload { gso_type: t, ..o };
        assert_eq!(new(&f, o), Some(GsoError::UnknownType(t)));
    }
    assert!(new(
        &f,
        Offload {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..o
        }
    )
    .is_none());
    assert_eq!(
        new(&f, Offload { gso_size: 0, ..o }),
        Some(GsoError::ZeroGsoSize)
    );
    assert_eq!(
        new(&f, Offload { hdr_len: 1055, ..o }),
        Some(GsoError::HeaderBeyondData {
            hdr_len: 1055,
            len: 1054
        })
    );
    assert_eq!(
        new(
            &f,
            Offload {
                csum_offset: 1019,
                ..o
            }
        ),
        Some(GsoError::CsumBeyondData {
            csum_start: 34,
            csum_offset: 1019,
            len: 1054
        })
    );
    assert_eq!(
        new(
            &f,
            Offload {
                csum_offset: 6,
                ..o
            }
        ),
        Some(GsoError::CsumMismatch {
            csum_start: 34,
            csum_offset: 6,
            expected_start: 34,
            expected_offset: 16
        })
    );
    assert_eq!(
        new(
            &f,
            Offload {
                gso_type: GSO_TCPV6,
                ..o
            }
        ),
        Some(GsoError::IpVersionMismatch {
            gso_type: GSO_TCPV6,
            ethertype: 0x0800
        })
    );
    assert_eq!(
        new(
            &f,
            Offload {
                gso_type: GSO_UDP_L4,
                csum_offset: 6,
                ..o
            }
        ),
        Some(GsoError::NotUdp(6))
    );
    assert_eq!(
        new(&f, Offload { gso_size: 10, ..o }),
        None,
        "TCP segments of 10 bytes are fine"
    );
    assert_eq!(
        Segmenter::new(&f, &o, 153).err(),
        Some(GsoError::SegmentTooLarge {
            need: 154,
            max: 153
        })
    );

    let mut g = f.clone();
    g[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(new(&g, o), Some(GsoError::NotIp(0x0806)));
    let mut g = f.clone();
    g[14] = 0x44;
    assert_eq!(new(&g, o), Some(GsoError::BadHeader("IPv4")));
    let mut g = f.clone();
    g[20] |= 0x20;
    assert_eq!(new(&g, o), Some(GsoError::Fragment));
    let mut g = f.clone();
    g[23] = 17;
    assert_eq!(new(&g, o), Some(GsoError::NotTcp(17)));
    let mut g = f.clone();
    g[46] = 0x40;
    assert_eq!(new(&g, o), Some(GsoError::BadHeader("TCP")));
    let mut g = f.clone();
    g[46] = 0xf0;
    assert_eq!(
        new(&g[..80], Offload { hdr_len: 0, ..o }),
        Some(GsoError::Truncated {
            layer: "TCP",
            need: 94,
            len: 80
        })
    );
    assert_eq!(
        new(
            &f[..40],
            Offload {
                hdr_len: 0,
                flags: 0,
                ..o
            }
        ),
        Some(GsoError::Truncated {
            layer: "TCP",
            need: 54,
            len: 40
        })
    );
    assert_eq!(
        new(
            &f[..10],
            Offload {
                hdr_len: 0,
                flags: 0,
                ..o
            }
        ),
        Some(GsoError::Truncated {
            layer: "Ethernet",
            need: 14,
            len: 10
        })
    );
    // Three VLAN tags: the third stays unread and is not IP.
    let mut g = f[..12].to_vec();
    for _ in 0..3 {
        g.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    }
    g.extend_from_slice(&f[12..]);
    assert_eq!(
        new(&g, Offload { flags: 0, ..o }),
        Some(GsoError::NotIp(0x8100))
    );
}

#[test]
fn udp_refusals() {
    let c = Case {
        tags: vec![],
        v6: true,
        ip_option_words: 0,
        ident: 0,
        dont_frag: false,
        ttl: 1,
        flow: 0,
        l4: L4::Udp { ufo: false },
        payload: vec![1; 2000],
        gso_size: 10,
        needs_csum: true,
        ecn: false,
        stale_check: 0,
    };
    let b = build(&c);
    let new = |o: Offload| Segmenter::new(&b.frame, &o, 9000).err();
    assert_eq!(new(b.offload), Some(GsoError::TooManySegments));
    assert_eq!(
        new(Offload {
            gso_size: 16,
            ..b.offload
        }),
        None
    );
    assert_eq!(
        new(Offload {
            gso_type: GSO_UDP,
            ..b.offload
        }),
        Some(GsoError::UfoOverIpv6)
    );
    assert_eq!(
        new(Offload {
            gso_type: GSO_UDP_L4 | GSO_ECN,
            ..b.offload
        }),
        Some(GsoError::UnknownType(GSO_UDP_L4 | GSO_ECN))
    );
    let mut g = b.frame.clone();
    g[b.l3 + 6] = 0; // hop-by-hop options
    assert_eq!(
        Segmenter::new(&g, &b.offload, 9000).err(),
        Some(GsoError::Ipv6ExtensionHeader(0))
    );
    g[b.l3 + 6] = 58; // ICMPv6
    assert_eq!(
        Segmenter::new(&g, &b.offload, 9000).err(),
        Some(GsoError::NotUdp(58))
    );

    let c = Case {
        v6: false,
        l4: L4::Udp { ufo: true },
        gso_size: 7,
        ..c
    };
    let b = build(&c);
    assert_eq!(
        Segmenter::new(&b.frame, &b.offload, 9000).err(),
        Some(GsoError::FragmentTooSmall(7))
    );
    let c = Case {
        payload: vec![1; 70_000],
        gso_size: 8,
        ..c
    };
    let b = build(&c);
    assert_eq!(
        Segmenter::new(&b.frame, &b.offload, 9000).err(),
        Some(GsoError::DatagramTooLong(70_008))
    );
}

#[test]
fn partial_checksums_complete_in_place() {
    let (mut f, o) = tcp4(333);
    let o = Offload {
        gso_type: GSO_NONE,
        gso_size: 0,
        ..o
    };
    complete_checksum(&mut f, &o).unwrap();
    {
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("TCP");
        };
        assert_eq!(
            t.checksum(),
            t.calc_checksum_ipv4([10, 1, 2, 3], [10, 4, 5, 6]).unwrap()
        );
    }
    // Through a segmenter the same: one piece, the completed frame.
    let (g, _) = tcp4(333);
    let s = Segmenter::new(&g, &o, 1514).unwrap();
    assert!(s.is_whole());
    let mut out = vec![0; 2000];
    assert_eq!(s.write(&g, 0, &mut out), g.len());
    assert_eq!(&out[..g.len()], &f[..]);
    // Nothing to do without NEEDS_CSUM; out of bounds is refused.
    complete_checksum(&mut f[..10], &Offload::NONE).unwrap();
    assert_eq!(
        complete_checksum(&mut f[..40], &o),
        Err(GsoError::CsumBeyondData {
            csum_start: 34,
            csum_offset: 16,
            len: 40
        })
    );
}

#[test]
fn a_zero_sum_is_written_as_ffff() {
    // Twelve bytes whose sum from csum_start is 0xFFFF: the checksum computes to 0.
    let mut f = [0u8; 12];
    f[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
    f[6..8].copy_from_slice(&0x0001u16.to_be_bytes());
    let o = Offload {
        flags: F_NEEDS_CSUM,
        csum_start: 4,
        csum_offset: 6,
        ..Offload::NONE
    };
    complete_checksum(&mut f, &o).unwrap();
    assert_eq!(f[10..12], [0xff, 0xff]);
}

#[test]
fn write_refuses_what_new_did_not_see() {
    let (f, o) = tcp4(1000);
    let s = Segmenter::new(&f, &o, 1514).unwrap();
    assert_eq!(s.count(), 10);
    let mut out = vec![0; 2000];
    assert_eq!(s.write(&f, 10, &mut out), 0);
    assert_eq!(s.write(&f, 0, &mut out[..153]), 0);
    assert_eq!(s.write(&f[..1000], 0, &mut out), 0);
    // Bytes of the same length whose IP header grew past the headers `new` measured: refused.
    let mut g = f.clone();
    g[14] = 0x4f;
    assert_eq!(s.write(&g, 3, &mut out), 0);
    // Whose TCP header grew into the payload: garbage out, but no panic and no overrun.
    let mut g = f.clone();
    g[46] = 0xf0;
    assert_eq!(s.write(&g, 3, &mut out), 154);
    assert_eq!(s.write(&f, 9, &mut out), 154);
}
