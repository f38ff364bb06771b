//! How ringswitch attaches to taps it did not create (a persistent tap by name, an open
//! tap handed over as `fd=N`) and how it stops in the middle of heavy traffic. Needs root
//! like `tap_forwarding`.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    ethernet_frame, host_mac, open_tap, require_root, serial, unique_name, wait_until, Lan, Netns,
    PacketSocket, PersistentTap, Switch, ETHERTYPE_IPV4,
};

#[test]
fn existing_persistent_tap_is_attached_by_name_and_outlives_the_switch() {
    if !require_root("existing_persistent_tap_is_attached_by_name_and_outlives_the_switch") {
        return;
    }
    let _serial = serial();
    let persistent = PersistentTap::new();
    let (na, nb) = (Netns::new(), Netns::new());
    let created = unique_name("rst");
    let (pa, pb) = (
        format!("tap,id=a,ifname={}", persistent.name()),
        format!("tap,id=b,ifname={created}"),
    );
    let switch = Switch::start(&["-netdev", &pa, "-netdev", &pb]);
    na.adopt(persistent.name(), host_mac(1), Some("10.77.0.1/24"), None);
    nb.adopt(&created, host_mac(2), Some("10.77.0.2/24"), None);
    na.ping("10.77.0.2", 2);
    nb.ping("10.77.0.1", 2);

    let stopped = switch.stop();
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "stderr:\n{}",
        stopped.stderr
    );
    assert!(
        na.has_link(persistent.name()),
        "the persistent tap did not survive the switch"
    );
    let gone = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        !nb.has_link(&created)
    });
    assert!(gone, "the tap ringswitch created outlived it by 2 s");
}

#[test]
fn tap_handed_over_as_an_open_fd_forwards_traffic() {
    if !require_root("tap_handed_over_as_an_open_fd_forwards_traffic") {
        return;
    }
    let _serial = serial();
    let (na, nb) = (Netns::new(), Netns::new());
    let (by_fd, by_name) = (unique_name("rst"), unique_name("rst"));
    let fd = open_tap(&by_fd).expect("open tap through /dev/net/tun");
    let (pa, pb) = (
        format!("tap,id=a,fd={}", fd.as_raw_fd()),
        format!("tap,id=b,ifname={by_name}"),
    );
    let switch = Switch::start_passing(&["-netdev", &pa, "-netdev", &pb], &[fd.as_fd()]);
    // The switch holds its own copy of the descriptor now.
    drop(fd);
    na.adopt(&by_fd, host_mac(1), Some("10.77.0.1/24"), None);
    nb.adopt(&by_name, host_mac(2), Some("10.77.0.2/24"), None);
    na.ping("10.77.0.2", 2);
    nb.ping("10.77.0.1", 2);

    let stopped = switch.stop();
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "stderr:\n{}",
        stopped.stderr
    );
    let port_a = stopped.stats().port("a");
    assert!(
        port_a.rx_frames >= 2 && port_a.tx_frames >= 2,
        "port a: {port_a:?}"
    );
}

#[test]
fn sigterm_in_the_middle_of_a_burst_stops_cleanly_and_accounts_for_every_frame() {
    if !require_root("sigterm_in_the_middle_of_a_burst_stops_cleanly_and_accounts_for_every_frame")
    {
        return;
    }
    let _serial = serial();
    let mut lan = Lan::new(2, false, &[]);
    let (ha, hb) = (lan.host("a"), lan.host("b"));
    let sender = PacketSocket::open(&ha.ns, &ha.ifname, false).expect("socket on A");
    sender.bypass_qdisc().expect("PACKET_QDISC_BYPASS");
    let frame = ethernet_frame(hb.mac, ha.mac, ETHERTYPE_IPV4, &[], 60);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The burst ends at its deadline, or earlier with an error once the tap is gone.
    let burst = thread::spawn(move || sender.send_burst(&frame, u64::MAX, deadline));

    let busy = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        ha.ns.link_stats(&ha.ifname).tx_packets >= 20_000
    });
    assert!(busy, "the switch read fewer than 20000 frames in 5 s");
    let t0 = Instant::now();
    let stopped = lan.stop();
    let took = t0.elapsed();
    let _ = burst.join().expect("burst thread");
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "stderr:\n{}",
        stopped.stderr
    );
    assert!(
        took < Duration::from_secs(2),
        "stopping under load took {took:?}"
    );
    let stats = stopped.stats();
    let (a, b) = (stats.port("a"), stats.port("b"));
    println!("stopped in {took:?}; port a: {a:?}\nport b: {b:?}");
    // Every frame the switch read was either written to B or counted as dropped: a stop
    // may drop frames in flight, but not lose them silently.
    assert_eq!(
        a.rx_frames,
        b.tx_frames + stats.total_drops(),
        "frames read on a != frames written to b + drops"
    );
}
