//! The L2TPv3 data header as QEMU writes it: `L2tpv3Codec::decap` on arbitrary datagrams with
//! arbitrary session parameters never panics and never points past the datagram; a header
//! `encap` wrote (behind an IPv4 header where the codec expects one) decodes to the frame
//! behind it; and a change to the session id, to the cookie or to the length is refused for
//! that reason.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringswitch_switch::counters::DropReason;
use ringswitch_switch::port::l2tpv3::codec::{L2tpv3Codec, MAX_HEADER};

#[derive(Debug, Arbitrary)]
struct Params {
    udp: bool,
    ipv4_header: bool,
    cookie: u8,
    counter: bool,
    pincounter: bool,
    offset: u32,
    txsession: u32,
    rxsession: u32,
    txcookie: u64,
    rxcookie: u64,
}

#[derive(Debug, Arbitrary)]
enum Change {
    None,
    Session(u8, u8),
    Cookie(u8, u8),
    Truncate(u16),
}

#[derive(Debug, Arbitrary)]
struct Input {
    params: Params,
    datagram: Vec<u8>,
    seq: u32,
    ihl_words: u8,
    frame: Vec<u8>,
    change: Change,
}

fn codec(p: &Params) -> L2tpv3Codec {
    L2tpv3Codec {
        udp: p.udp,
        ipv4_header: p.ipv4_header,
        cookie_len: [0, 4, 8][p.cookie as usize % 3],
        counter: p.counter,
        pincounter: p.pincounter,
        offset: p.offset as usize,
        txsession: p.txsession,
        rxsession: p.rxsession,
        txcookie: p.txcookie,
        rxcookie: p.rxcookie,
    }
}

fuzz_target!(|input: Input| {
    // Any datagram, any parameters the type allows.
    let c = codec(&input.params);
    if let Ok(off) = c.decap(&input.datagram) {
        assert!(
            off <= input.datagram.len(),
            "frame offset {off} past the datagram"
        );
    }

    // What the switch can be configured with (offset ≤ 256), talking to itself.
    let mut c = c;
    c.offset %= 257;
    c.rxsession = c.txsession;
    c.rxcookie = if c.cookie_len == 4 {
        c.txcookie & 0xffff_ffff
    } else {
        c.txcookie
    };
    let mut d = Vec::new();
    if c.ipv4_header {
        let ihl = 5 + (input.ihl_words % 11) as usize;
        d.push(0x40 | ihl as u8);
        d.resize(ihl * 4, 0);
    }
    let ip = d.len();
    let mut h = [0u8; MAX_HEADER];
    let n = c.encap(&mut h, input.seq);
    assert_eq!(n, c.header_len());
    d.extend_from_slice(&h[..n]);
    d.extend_from_slice(&input.frame);
    assert_eq!(c.decap(&d), Ok(ip + n));

    let first = if c.udp { 4 } else { 0 };
    match input.change {
        Change::None => {}
        Change::Session(at, bits) if bits != 0 => {
            d[ip + first + at as usize % 4] ^= bits;
            assert_eq!(c.decap(&d), Err(DropReason::BadSession));
        }
        Change::Cookie(at, bits) if bits != 0 && c.cookie_len > 0 => {
            d[ip + first + 4 + at as usize % c.cookie_len] ^= bits;
            assert_eq!(c.decap(&d), Err(DropReason::BadCookie));
        }
        Change::Truncate(keep) => {
            let keep = keep as usize % (ip + n);
            assert_eq!(c.decap(&d[..keep]), Err(DropReason::ShortHeader));
        }
        _ => {}
    }
});
