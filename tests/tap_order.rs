//! Frames between two taps keep their order, also at low rates, in each way a tap can
//! receive (`--tap-rx polled`, the default, and `multishot`). With several blocking reads
//! parked on one tap (`--tap-rx reads`) the kernel wakes them all for each frame and hands
//! a read that kept losing to a worker thread, which then races the others: at a few tens
//! of thousands of frames per second that reordered several percent of the frames here.

mod common;

use std::time::{Duration, Instant};

use common::{carries, marked, require_root, serial, Lan, PacketSocket};

const FRAMES: u32 = 4000;
const MARKER: &[u8] = b"order";
/// Spacing between frames: slow enough that the tap's queue is empty between them.
const GAP: Duration = Duration::from_micros(40);

fn sequence_of(frame: &[u8]) -> Option<u32> {
    let at = 14 + MARKER.len();
    Some(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
}

fn frames_keep_their_order(tap_rx: &str) {
    let _serial = serial();
    let mut lan = Lan::new(2, false, &["--tap-rx", tap_rx]);
    let (ha, hb) = (lan.host("a"), lan.host("b"));
    // B speaks first, so A's frames are unicast to B's port only.
    let speak_b = PacketSocket::open(&hb.ns, &hb.ifname, false).expect("socket on B");
    speak_b
        .send(&marked(common::MacAddr::BROADCAST, hb.mac, b"hello"))
        .expect("hello from B");
    let capture = PacketSocket::open(&hb.ns, &hb.ifname, true).expect("capture on B");
    let collector =
        std::thread::spawn(move || capture.collect(Duration::from_secs(4), |f| carries(f, MARKER)));
    let sender = PacketSocket::open(&ha.ns, &ha.ifname, false).expect("socket on A");
    let (dst, src) = (hb.mac, ha.mac);
    let sent = ha.ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut sent = 0u32;
        // Bounded by FRAMES and by the deadline.
        while sent < FRAMES && Instant::now() < deadline {
            let mut payload = MARKER.to_vec();
            payload.extend_from_slice(&sent.to_be_bytes());
            let mut f = marked(dst, src, &payload);
            f.truncate(60.max(14 + payload.len()));
            if sender.send(&f).is_ok() {
                sent += 1;
            }
            let until = Instant::now() + GAP;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        sent
    });
    let got = collector.join().expect("collector");
    let stopped = lan.stop();
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "stderr:\n{}",
        stopped.stderr
    );
    let seqs: Vec<u32> = got.iter().filter_map(|f| sequence_of(f)).collect();
    let out_of_order = seqs.windows(2).filter(|w| w[1] <= w[0]).count();
    println!(
        "--tap-rx {tap_rx}: sent {sent}, received {}, out of order {out_of_order}",
        seqs.len()
    );
    assert!(sent > FRAMES / 2, "only {sent} frames sent in 3 s");
    assert!(
        seqs.len() as u32 * 10 >= sent * 9,
        "only {} of {sent} frames arrived",
        seqs.len()
    );
    assert_eq!(
        out_of_order, 0,
        "frames arrived out of order with --tap-rx {tap_rx}"
    );
}

#[test]
fn frames_keep_their_order_with_polled_reads() {
    if require_root("frames_keep_their_order_with_polled_reads") {
        frames_keep_their_order("polled");
    }
}

#[test]
fn frames_keep_their_order_with_a_multishot_read() {
    if require_root("frames_keep_their_order_with_a_multishot_read") {
        frames_keep_their_order("multishot");
    }
}
