//! Acceptance tests of issue 2: ringswitch forwarding between tap ports, each tap moved into
//! a network namespace of its own, driven with ping and raw AF_PACKET frames, and checked
//! against the kernel's interface counters and the switch's `--stats-json`.
//!
//! The tests need root (taps, namespaces); see `common::require_root` for what happens
//! without it. Tests that move traffic run one at a time (`common::serial`).

mod common;

use std::io;
use std::time::{Duration, Instant};

use common::{
    carries, ethernet_frame, link_exists, marked, require_root, run_cli, serial, unique_name,
    wait_until, Lan, MacAddr, PacketSocket, ETHERTYPE_IPV4, ETHERTYPE_TEST,
};

#[test]
fn two_namespaces_ping_each_other_both_ways() {
    if !require_root("two_namespaces_ping_each_other_both_ways") {
        return;
    }
    let _serial = serial();
    let mut lan = Lan::new(2, true, &[]);
    let (a, b) = (lan.host("a"), lan.host("b"));
    a.ping(b, 3);
    b.ping(a, 3);
    let stopped = lan.stop();
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "stderr:\n{}",
        stopped.stderr
    );
    let stats = stopped.stats();
    for id in ["a", "b"] {
        let p = stats.port(id);
        assert!(p.rx_frames >= 6 && p.tx_frames >= 6, "port {id}: {p:?}");
    }
}

#[test]
fn unicast_goes_only_to_learned_port_and_broadcast_floods() {
    if !require_root("unicast_goes_only_to_learned_port_and_broadcast_floods") {
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

    // Before anyone else has spoken, a unicast frame has no learned port and is flooded.
    let nobody = MacAddr([0x02, 0, 0, 0, 0x99, 0x99]);
    a.send(&marked(nobody, hosts[0].mac, b"unknown-unicast"))
        .expect("send unknown unicast");
    for (s, id) in [(b, "b"), (c, "c")] {
        let got = s.wait_for(Duration::from_secs(2), |f| carries(f, b"unknown-unicast"));
        assert!(
            got.is_some(),
            "unicast to an unknown MAC was not flooded to {id}"
        );
    }

    // Learning: every host speaks once; a host has seen the other two's hellos only after
    // the switch has processed (and learned from) them.
    for (h, s) in hosts.iter().zip(&socks) {
        let hello = marked(
            MacAddr::BROADCAST,
            h.mac,
            format!("hello-{}", h.id).as_bytes(),
        );
        s.send(&hello).expect("send hello");
    }
    for (i, s) in socks.iter().enumerate() {
        // The other two hellos may come in either order (with two workers, one of them may
        // cross between workers and be overtaken by the other): wait for both at once.
        let others: Vec<(usize, String)> = hosts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, h)| (j, format!("hello-{}", h.id)))
            .collect();
        let seen = s.wait_for_all(Duration::from_secs(2), others.len(), |f| {
            others
                .iter()
                .position(|(_, hello)| carries(f, hello.as_bytes()))
        });
        for ((j, hello), seen) in others.iter().zip(seen) {
            assert!(
                seen,
                "host {} never saw {hello} (from port {j})",
                hosts[i].id
            );
        }
        let echo = s.collect(Duration::from_millis(100), |f| {
            carries(f, format!("hello-{}", hosts[i].id).as_bytes())
        });
        assert!(
            echo.is_empty(),
            "host {}'s hello came back to it",
            hosts[i].id
        );
    }

    a.send(&marked(hosts[1].mac, hosts[0].mac, b"unicast-a-to-b"))
        .expect("send unicast");
    let at_b = b.wait_for(Duration::from_secs(2), |f| carries(f, b"unicast-a-to-b"));
    assert!(at_b.is_some(), "unicast from A to B's MAC never reached B");
    let window = Duration::from_millis(300);
    assert!(
        c.collect(window, |f| carries(f, b"unicast-a-to-b"))
            .is_empty(),
        "C saw a unicast frame meant for B's learned port"
    );
    assert!(
        b.collect(window, |f| carries(f, b"unicast-a-to-b"))
            .is_empty(),
        "B got the unicast frame more than once"
    );

    a.send(&marked(
        MacAddr::BROADCAST,
        hosts[0].mac,
        b"broadcast-from-a",
    ))
    .expect("send broadcast");
    for (s, id) in [(b, "b"), (c, "c")] {
        let got = s.wait_for(Duration::from_secs(2), |f| carries(f, b"broadcast-from-a"));
        assert!(got.is_some(), "broadcast from A never reached {id}");
    }
    let back = a.collect(window, |f| {
        carries(f, b"broadcast-from-a") || carries(f, b"unicast-a-to-b")
    });
    assert!(back.is_empty(), "the switch sent A's own frames back to A");
}

/// Every frame of the burst ends in exactly one place, so
/// `sent = delivered + switch drops + tap A tx_dropped + tap B rx_dropped`, exactly:
/// - sent: frames handed to the kernel on A, including those a full tun queue refused on
///   the spot (`ENOBUFS`; the tap counts them as `tx_dropped`);
/// - tap A `tx_packets`/`tx_dropped`: the kernel passing frames *to* the switch (read) or
///   dropping them because the switch had not read fast enough;
/// - switch drops: frames it read but did not write, by reason, over all ports;
/// - tap B `rx_packets`/`rx_dropped`: frames the switch wrote into B, accepted or dropped.
#[test]
fn burst_of_a_million_frames_is_fully_accounted_for() {
    if !require_root("burst_of_a_million_frames_is_fully_accounted_for") {
        return;
    }
    const FRAMES: u64 = 1_000_000;
    let _serial = serial();
    let mut lan = Lan::new(2, false, &[]);
    let (ha, hb) = (lan.host("a"), lan.host("b"));

    // B speaks first, so the switch knows where B is before the burst starts.
    let capture_a = PacketSocket::open(&ha.ns, &ha.ifname, true).expect("capture on A");
    let speak_b = PacketSocket::open(&hb.ns, &hb.ifname, false).expect("socket on B");
    speak_b
        .send(&marked(MacAddr::BROADCAST, hb.mac, b"hello-b"))
        .expect("send hello");
    assert!(
        capture_a
            .wait_for(Duration::from_secs(2), |f| carries(f, b"hello-b"))
            .is_some(),
        "B's hello never reached A"
    );
    drop(capture_a);

    // 60 bytes without FCS: a minimum-size (64-byte) Ethernet frame on a wire. IPv4
    // EtherType with a zeroed header: B's stack discards it as a header error, which
    // counts in its IP statistics, not in the interface's rx_dropped.
    let frame = ethernet_frame(hb.mac, ha.mac, ETHERTYPE_IPV4, &[], 60);
    let sender = PacketSocket::open(&ha.ns, &ha.ifname, false).expect("socket on A");
    sender.bypass_qdisc().expect("PACKET_QDISC_BYPASS");
    let (a0, b0) = (ha.ns.link_stats(&ha.ifname), hb.ns.link_stats(&hb.ifname));
    let deadline = Instant::now() + Duration::from_secs(60);
    let burst = ha
        .ns
        .run(move || sender.send_burst(&frame, FRAMES, deadline))
        .expect("burst");
    assert_eq!(
        burst.attempted, FRAMES,
        "burst hit its time limit: {burst:?}"
    );

    // Settle: every frame sent has left A's tap (read by the switch or dropped there) and
    // B's counters have stopped moving.
    let mut last = hb.ns.link_stats(&hb.ifname);
    let settled = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let a = ha.ns.link_stats(&ha.ifname);
        let b = hb.ns.link_stats(&hb.ifname);
        let left_a = (a.tx_packets + a.tx_dropped) - (a0.tx_packets + a0.tx_dropped);
        let still = b == last;
        last = b;
        left_a >= FRAMES && still
    });
    let (a1, b1) = (ha.ns.link_stats(&ha.ifname), hb.ns.link_stats(&hb.ifname));
    let stopped = lan.stop();
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "stderr:\n{}",
        stopped.stderr
    );
    let stats = stopped.stats();

    let delivered = b1.rx_packets - b0.rx_packets;
    let switch_drops = stats.total_drops();
    let tap_a_tx_dropped = a1.tx_dropped - a0.tx_dropped;
    let tap_b_rx_dropped = b1.rx_dropped - b0.rx_dropped;
    let read_by_switch = a1.tx_packets - a0.tx_packets;
    let rate = burst.accepted as f64 / burst.elapsed.as_secs_f64();
    println!(
        "burst: sent {} (accepted {}, refused by the tap {}) in {:.2?} ({:.0} frames/s)\n\
         tap A: read by switch {read_by_switch}, tx_dropped {tap_a_tx_dropped}\n\
         tap B: delivered (rx_packets) {delivered}, rx_dropped {tap_b_rx_dropped}\n\
         switch: drops {switch_drops}, port a rx {}, port b tx {}, drops a {:?}, drops b {:?}\n\
         settled: {settled}",
        burst.attempted,
        burst.accepted,
        burst.refused,
        burst.elapsed,
        rate,
        stats.port("a").rx_frames,
        stats.port("b").tx_frames,
        stats.port("a").drops,
        stats.port("b").drops,
    );
    assert_eq!(
        burst.attempted,
        delivered + switch_drops + tap_a_tx_dropped + tap_b_rx_dropped,
        "sent != delivered + switch drops + tap A tx_dropped + tap B rx_dropped"
    );
    assert!(
        delivered * 4 >= burst.attempted * 3,
        "only {delivered} of {} frames delivered",
        burst.attempted
    );
}

#[test]
fn oversize_frames_are_dropped_and_counted_and_forwarding_continues() {
    if !require_root("oversize_frames_are_dropped_and_counted_and_forwarding_continues") {
        return;
    }
    let _serial = serial();
    let mut lan = Lan::new(2, true, &["--max-frame-size", "1522"]);
    let (ha, hb) = (lan.host("a"), lan.host("b"));
    ha.ping(hb, 1);

    // With --max-frame-size 1522 (jumbo frames pass by default), both sizes are oversize. The tap's MTU
    // must be raised for the kernel to transmit them at all.
    ha.ns.set_mtu(&ha.ifname, 9000);
    let sock = PacketSocket::open(&ha.ns, &ha.ifname, false).expect("socket on A");
    let mut injected = 0;
    for len in [2000, 9000] {
        for _ in 0..3 {
            let f = ethernet_frame(hb.mac, ha.mac, ETHERTYPE_TEST, b"oversize", len);
            sock.send(&f)
                .unwrap_or_else(|e| panic!("inject {len}-byte frame: {e}"));
            injected += 1;
        }
    }

    // Runts cannot be injected through a real tap: the kernel refuses to transmit a frame
    // shorter than an Ethernet header (dev_validate_header, even with CAP_SYS_RAWIO),
    // so nothing under 14 bytes ever reaches the switch from a tap. The runt drop path is
    // covered by the forwarding engine's unit tests (switch/src/engine.rs, test
    // `runts_oversize_and_bad_sources_are_dropped_and_counted`); here we pin down the
    // kernel fact.
    let runt = sock
        .send(&[0xff; 13])
        .expect_err("kernel transmitted a 13-byte frame");
    assert_eq!(runt.kind(), io::ErrorKind::InvalidInput, "{runt}");

    ha.ping(hb, 2);
    hb.ping(ha, 2);
    let stopped = lan.stop();
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "stderr:\n{}",
        stopped.stderr
    );
    let port_a = stopped.stats().port("a");
    assert_eq!(
        port_a.drop_count("oversize"),
        injected,
        "port a: {port_a:?}"
    );
    assert_eq!(port_a.drop_count("runt"), 0, "port a: {port_a:?}");
}

#[test]
fn argument_errors_exit_2_name_the_offender_and_create_no_tap() {
    let (t1, t2) = (unique_name("rsc"), unique_name("rsc"));
    let ok = format!("tap,id=a,ifname={t1}");
    struct Case<'a> {
        what: &'a str,
        args: Vec<String>,
        offender: &'a str,
    }
    let cases = [
        Case {
            what: "unknown netdev kind",
            args: vec![
                "-netdev".into(),
                ok.clone(),
                "-netdev".into(),
                format!("bogus9,id=b,ifname={t2}"),
            ],
            offender: "bogus9",
        },
        Case {
            what: "unknown option",
            args: vec!["-netdev".into(), ok.clone(), "--frobnicate".into()],
            offender: "frobnicate",
        },
        Case {
            what: "unknown tap option",
            args: vec![
                "-netdev".into(),
                format!("tap,id=a,ifname={t1},colour=blue"),
            ],
            offender: "colour",
        },
        Case {
            what: "missing id",
            args: vec![
                "-netdev".into(),
                ok.clone(),
                "-netdev".into(),
                format!("tap,ifname={t2}"),
            ],
            offender: "id",
        },
        Case {
            what: "duplicate id",
            args: vec![
                "-netdev".into(),
                format!("tap,id=dup7,ifname={t1}"),
                "-netdev".into(),
                format!("tap,id=dup7,ifname={t2}"),
            ],
            offender: "dup7",
        },
    ];
    for case in &cases {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let out = run_cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {args:?}; stderr:\n{stderr}",
            case.what
        );
        let named = stderr
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| word == case.offender);
        assert!(
            named,
            "{}: stderr does not name '{}':\n{stderr}",
            case.what, case.offender
        );
        for tap in [&t1, &t2] {
            assert!(
                !link_exists(tap),
                "{}: interface {tap} exists after the error",
                case.what
            );
        }
    }
}

#[test]
fn sigint_and_sigterm_stop_cleanly_and_print_counters() {
    if !require_root("sigint_and_sigterm_stop_cleanly_and_print_counters") {
        return;
    }
    let _serial = serial();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let (t1, t2) = (unique_name("rst"), unique_name("rst"));
        let (n1, n2) = (
            format!("tap,id=left,ifname={t1}"),
            format!("tap,id=right,ifname={t2}"),
        );
        let sw = common::Switch::start(&["-netdev", &n1, "--netdev", &n2]);
        assert!(link_exists(&t1) && link_exists(&t2), "taps not created");
        let stopped = sw.stop_with(signal);
        assert_eq!(
            stopped.status.code(),
            Some(0),
            "signal {signal}: {}; stderr:\n{}",
            stopped.status,
            stopped.stderr
        );
        for id in ["left", "right"] {
            assert!(
                stopped.stdout.contains(id),
                "signal {signal}: counter table lacks port {id}:\n{}",
                stopped.stdout
            );
        }
        assert_eq!(stopped.stats().ports.len(), 2, "signal {signal}");
        // The taps go when the kernel drops the last reference to their files, which the
        // io_uring's asynchronous teardown may do a few milliseconds after the exit.
        for tap in [&t1, &t2] {
            let gone = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
                !link_exists(tap)
            });
            assert!(
                gone,
                "signal {signal}: tap {tap} outlived the switch by 2 s"
            );
        }
    }
}
