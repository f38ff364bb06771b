//! Forwarding policy beyond issue 2's acceptance list, on real taps in namespaces: the
//! --max-frame-size boundary, frames with a source address no host may use, MAC ageing
//! and a station moving between ports.
//! Needs root like `tap_forwarding`.

mod common;

use std::time::Duration;

use common::{
    carries, ethernet_frame, marked, require_root, serial, Lan, MacAddr, PacketSocket,
    ETHERTYPE_TEST,
};

#[test]
fn learned_address_ages_out_and_unicast_floods_again() {
    if !require_root("learned_address_ages_out_and_unicast_floods_again") {
        return;
    }
    let _serial = serial();
    let lan = Lan::new(3, false, &["--mac-ageing", "1"]);
    let hosts = [lan.host("a"), lan.host("b"), lan.host("c")];
    let socks: Vec<PacketSocket> = hosts
        .iter()
        .map(|h| PacketSocket::open(&h.ns, &h.ifname, true).expect("open capture socket"))
        .collect();
    let (a, b, c) = (&socks[0], &socks[1], &socks[2]);
    b.send(&marked(MacAddr::BROADCAST, hosts[1].mac, b"hello-b"))
        .expect("send hello");
    assert!(a
        .wait_for(Duration::from_secs(2), |f| carries(f, b"hello-b"))
        .is_some());

    a.send(&marked(hosts[1].mac, hosts[0].mac, b"while-learned"))
        .expect("send");
    assert!(b
        .wait_for(Duration::from_secs(2), |f| carries(f, b"while-learned"))
        .is_some());
    assert!(
        c.collect(Duration::from_millis(200), |f| carries(f, b"while-learned"))
            .is_empty(),
        "C saw a unicast frame for B while B's address was learned"
    );

    // Well past the one-second ageing time, B's entry is gone: the same unicast floods.
    std::thread::sleep(Duration::from_millis(3500));
    a.send(&marked(hosts[1].mac, hosts[0].mac, b"after-ageing"))
        .expect("send");
    for (s, id) in [(b, "b"), (c, "c")] {
        let got = s.wait_for(Duration::from_secs(2), |f| carries(f, b"after-ageing"));
        assert!(
            got.is_some(),
            "after ageing, unicast to B's old address did not reach {id}"
        );
    }
}

#[test]
fn frames_up_to_max_frame_size_pass_and_one_byte_more_is_oversize() {
    if !require_root("frames_up_to_max_frame_size_pass_and_one_byte_more_is_oversize") {
        return;
    }
    let _serial = serial();
    // The limit an operator sets (jumbo frames pass by default).
    let mut lan = Lan::new(2, false, &["--max-frame-size", "1522"]);
    let (ha, hb) = (lan.host("a"), lan.host("b"));
    ha.ns.set_mtu(&ha.ifname, 9000);
    let a = PacketSocket::open(&ha.ns, &ha.ifname, true).expect("socket on A");
    let b = PacketSocket::open(&hb.ns, &hb.ifname, true).expect("socket on B");
    for (len, marker) in [(1522, b"largest-ok".as_slice()), (1523, b"one-too-many")] {
        a.send(&ethernet_frame(hb.mac, ha.mac, ETHERTYPE_TEST, marker, len))
            .unwrap_or_else(|e| panic!("inject {len}-byte frame: {e}"));
    }
    // The switch handles a port's frames in order: once the frame sent after the two has
    // arrived, both have been judged.
    a.send(&marked(hb.mac, ha.mac, b"after")).expect("send");
    let got = b.collect(Duration::from_secs(1), |f| {
        carries(f, b"largest-ok") || carries(f, b"one-too-many") || carries(f, b"after")
    });
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(lens, [1522, 60], "frames B received (lengths)");
    let stopped = lan.stop();
    let port_a = stopped.stats().port("a");
    assert_eq!(port_a.drop_count("oversize"), 1, "port a: {port_a:?}");
}

#[test]
fn frames_from_a_group_or_zero_source_are_dropped_as_bad_source() {
    if !require_root("frames_from_a_group_or_zero_source_are_dropped_as_bad_source") {
        return;
    }
    let _serial = serial();
    let mut lan = Lan::new(2, false, &[]);
    let (ha, hb) = (lan.host("a"), lan.host("b"));
    let a = PacketSocket::open(&ha.ns, &ha.ifname, false).expect("socket on A");
    let b = PacketSocket::open(&hb.ns, &hb.ifname, true).expect("socket on B");
    let bad = [
        MacAddr::BROADCAST,
        MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
        MacAddr::ZERO,
    ];
    for src in bad {
        a.send(&marked(hb.mac, src, b"bad-source")).expect("send");
    }
    a.send(&marked(hb.mac, ha.mac, b"good-source"))
        .expect("send");
    let got = b.collect(Duration::from_secs(1), |f| {
        carries(f, b"bad-source") || carries(f, b"good-source")
    });
    assert_eq!(
        got.len(),
        1,
        "B received {} test frames, expected only the good one",
        got.len()
    );
    assert!(carries(&got[0], b"good-source"));
    let stopped = lan.stop();
    let port_a = stopped.stats().port("a");
    assert_eq!(
        port_a.drop_count("bad_source"),
        bad.len() as u64,
        "port a: {port_a:?}"
    );
}

#[test]
fn station_that_moves_to_another_port_is_followed() {
    if !require_root("station_that_moves_to_another_port_is_followed") {
        return;
    }
    let _serial = serial();
    let lan = Lan::new(3, false, &[]);
    let hosts = [lan.host("a"), lan.host("b"), lan.host("c")];
    let socks: Vec<PacketSocket> = hosts
        .iter()
        .map(|h| PacketSocket::open(&h.ns, &h.ifname, true).expect("open capture socket"))
        .collect();
    let (a, b, c) = (&socks[0], &socks[1], &socks[2]);
    // A roaming station (not any host's own address) speaks first behind B, then behind C.
    let roamer = MacAddr([0x02, 0, 0, 0, 0x77, 0x77]);
    for (s, marker) in [(b, b"roam-1".as_slice()), (c, b"roam-2")] {
        s.send(&marked(MacAddr::BROADCAST, roamer, marker))
            .expect("send");
        assert!(
            a.wait_for(Duration::from_secs(2), |f| carries(f, marker))
                .is_some(),
            "A never saw the roamer's broadcast"
        );
    }
    a.send(&marked(roamer, hosts[0].mac, b"to-roamer"))
        .expect("send");
    assert!(
        c.wait_for(Duration::from_secs(2), |f| carries(f, b"to-roamer"))
            .is_some(),
        "unicast to the station did not follow it to C"
    );
    assert!(
        b.collect(Duration::from_millis(300), |f| carries(f, b"to-roamer"))
            .is_empty(),
        "unicast to the station still went to its old port B"
    );
}
