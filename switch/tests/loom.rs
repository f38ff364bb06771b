//! Model checks of the cross-worker protocols under every interleaving loom finds:
//! `RUSTFLAGS="--cfg ringswitch_loom" cargo test -p ringswitch-switch --test loom --release`
//! (`.ci/run` runs it). Without the cfg this file is empty.
#![cfg(ringswitch_loom)]

use loom::thread;
use ringswitch_switch::sync::spsc::Spsc;
use std::sync::Arc;

/// Items cross in order, none lost or duplicated, and a full ring refuses rather than
/// overwrites, whatever the interleaving of the two sides.
#[test]
fn spsc_keeps_order_and_refuses_when_full() {
    loom::model(|| {
        let r = Arc::new(Spsc::<u32>::new(2));
        let p = {
            let r = r.clone();
            thread::spawn(move || {
                let mut sent = Vec::new();
                for i in 0..3 {
                    if r.push(i).is_ok() {
                        sent.push(i);
                    }
                }
                sent
            })
        };
        let mut got = Vec::new();
        for _ in 0..3 {
            if let Some(v) = r.pop() {
                got.push(v);
            }
        }
        let sent = p.join().unwrap();
        while let Some(v) = r.pop() {
            got.push(v);
        }
        assert_eq!(got, sent);
    });
}

/// A frame lent across the fabric: the owner reads the bytes its home wrote, gives the
/// reference back through the return ring, and the home gets every buffer back — in every
/// interleaving, with the home reclaiming concurrently.
#[test]
fn a_lent_buffer_is_read_whole_and_comes_home() {
    use ringswitch_switch::fabric::{CrossFrame, Fabric};
    use ringswitch_switch::{BufferPool, Frame, Offload, PortId, WorkerId};
    loom::model(|| {
        let fabric = Fabric::new(2, 2);
        let mut home =
            BufferPool::with_home(WorkerId(0), 2, 2048, 0, fabric.registry().clone()).unwrap();
        let mut owner =
            BufferPool::with_home(WorkerId(1), 2, 2048, 0, fabric.registry().clone()).unwrap();
        let b = home.alloc().unwrap();
        home.buf_mut(b)[64..68].copy_from_slice(b"ring");
        let f = Frame::new(WorkerId(0), PortId(0), b, 64, 4);
        let t = {
            let fabric = fabric.clone();
            thread::spawn(move || {
                let cf = loop {
                    match fabric.ring(WorkerId(0), WorkerId(1)).pop() {
                        Some(cf) => break cf,
                        None => thread::yield_now(),
                    }
                };
                // SAFETY: the reference came through the ring and goes back only below.
                let bytes = unsafe {
                    fabric
                        .registry()
                        .remote_frame(cf.frame.home, cf.frame.buf, 64, 4)
                        .unwrap()
                        .to_vec()
                };
                assert_eq!(bytes, b"ring");
                owner.release_to(cf.frame.home, cf.frame.buf);
                owner
            })
        };
        fabric
            .ring(WorkerId(0), WorkerId(1))
            .push(CrossFrame {
                port: PortId(1),
                frame: f,
                offload: Offload::NONE,
            })
            .unwrap();
        while home.available() < 2 {
            home.reclaim();
            thread::yield_now();
        }
        let _owner = t.join().unwrap();
    });
}

/// No lost wake-up: a worker that decided to sleep is always kicked by a worker that handed
/// it a frame meanwhile, or saw the frame before sleeping.
#[test]
fn a_sleeping_owner_is_always_woken_or_sees_the_frame() {
    use ringswitch_switch::fabric::{CrossFrame, Fabric};
    use ringswitch_switch::{BufIndex, Frame, Offload, PortId, WorkerId};
    loom::model(|| {
        let fabric = Fabric::new(2, 2);
        let pusher = {
            let fabric = fabric.clone();
            thread::spawn(move || {
                let f = Frame::new(WorkerId(0), PortId(0), BufIndex(0), 0, 60);
                fabric
                    .ring(WorkerId(0), WorkerId(1))
                    .push(CrossFrame {
                        port: PortId(1),
                        frame: f,
                        offload: Offload::NONE,
                    })
                    .unwrap();
                fabric.nudge(WorkerId(1))
            })
        };
        let slept = fabric.prepare_sleep(WorkerId(1));
        let kicked = pusher.join().unwrap();
        assert!(
            !slept || kicked,
            "slept with a frame waiting and nobody woke it"
        );
        if slept {
            fabric.woke(WorkerId(1));
        }
    });
}
