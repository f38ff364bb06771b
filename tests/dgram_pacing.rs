//! A flood through unix `dgram` ports to a peer that reads slowly: the sending port sends
//! what the peer has room for and then waits for room, so frames leave in order, and the
//! receiving port is held while the sending port's queue is backed up, so the flood waits in
//! the sender's socket rather than being read and dropped in the switch (all but a few
//! frames arrive). No privileges needed.

mod common;

use common::{seq_frame as frame, seq_of, unique_name, DgramPeer as Peer, Switch};
use std::path::PathBuf;
use std::time::Duration;

/// Removes the test's socket directory however the test ends.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_flood_to_a_slow_unix_peer_arrives_in_order_and_paced() {
    let dir = Dir(std::env::temp_dir().join(unique_name("rs-dgp")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (a, a_arg) = Peer::new(&dir.0, "a");
    let (b, b_arg) = Peer::new(&dir.0, "b");
    // Both ports on one worker: pacing holds the ports of the worker whose queue backed up
    // (the suites also run every switch with two workers, which would otherwise put a and b
    // on different ones; frames between workers follow the rings' rules instead).
    let (a_arg, b_arg) = (format!("{a_arg},worker=0"), format!("{b_arg},worker=0"));
    let switch = Switch::start(&["-netdev", &a_arg, "-netdev", &b_arg]);
    // Station 2 is behind b; station 1 behind a.
    b.send(&frame(2, 0xff, 0));
    assert_eq!(seq_of(&a.recv()), 0);
    a.send(&frame(1, 0xff, 0));
    assert_eq!(seq_of(&b.recv()), 0);

    // Blocking sends as fast as the switch takes them, many times what the sockets and the
    // port's queue hold; the reader pauses every 16 frames.
    let total = 20_000u64;
    let sender = std::thread::spawn(move || {
        for s in 1..=total {
            a.send(&frame(1, 2, s));
        }
        a
    });
    let mut got = Vec::with_capacity(total as usize);
    let mut buf = [0u8; 2048];
    while (got.len() as u64) < total {
        match b.sock.recv(&mut buf) {
            Ok(n) => got.push(seq_of(&buf[..n])),
            Err(_) => break, // 2 s without a frame
        }
        if got.len() % 16 == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    sender.join().expect("the sender");

    let behind: Vec<(usize, u64)> = got
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] <= w[0])
        .map(|(i, w)| (i + 1, w[1]))
        .take(10)
        .collect();
    assert!(
        behind.is_empty(),
        "{} received; frames behind an earlier one (position, seq): {behind:?}",
        got.len()
    );
    // Every frame is received or counted. A reader descheduled for longer than the switch
    // waits for a port that sends nothing (10 ms, on a loaded machine) lets the flood through
    // to be dropped for a moment; without pacing, most of it would be.
    let stopped = switch.stop();
    let stats = stopped.stats();
    let dropped = stats.port("b").drops["queue_full"];
    assert_eq!(got.len() as u64 + dropped, total, "{:?}", stats.port("b"));
    assert_eq!(stats.total_drops(), dropped);
    assert!(
        dropped * 20 < total,
        "{dropped} of {total} frames dropped for a full queue at b"
    );
}
