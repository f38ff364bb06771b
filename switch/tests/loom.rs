//! Model checks of the cross-worker protocols under every interleaving loom finds:
//! `RUSTFLAGS="--cfg ringswitch_loom" cargo test -p ringswitch-switch --test loom --release`
//! (`.ci/run` runs it). Without the cfg this file is empty.
#![cfg(ringswitch_loom)]

use loom::thread;
use ringswitch_switch::sync::spsc::Spsc;
use std::sync::Arc;

/// Items cross in order, none lost or duplicated, a full ring refuses rather than
/// overwrites, and a peek shows what the next pop takes, whatever the interleaving.
#[test]
fn spsc_keeps_order_and_refuses_when_full() {
    // The consumer runs in the spawned thread: loom explores interleavings around the
    // accesses of spawned threads against the model thread's (see the mactable models).
    loom::model(|| {
        let r = Arc::new(Spsc::<u32>::new(2));
        let c = {
            let r = r.clone();
            thread::spawn(move || {
                // A peek sees the item the next pop takes (the owner looks at a frame's port
                // before it takes the frame).
                let mut got = Vec::new();
                for _ in 0..3 {
                    let seen = r.peek();
                    if let Some(v) = r.pop() {
                        assert!(
                            seen.is_none() || seen == Some(v),
                            "peeked {seen:?}, took {v}"
                        );
                        got.push(v);
                    }
                }
                got
            })
        };
        let mut sent = Vec::new();
        for i in 0..3 {
            if r.push(i).is_ok() {
                sent.push(i);
            }
        }
        let mut got = c.join().unwrap();
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

mod mactable {
    use loom::thread;
    use ringswitch_switch::mactable::{Learned, MacTable};
    use ringswitch_switch::{DomainId, MacAddr, PortId};
    use std::sync::Arc;

    const D: DomainId = DomainId(0);

    fn mac(i: u64) -> MacAddr {
        MacAddr::from_u64(0x0200_0000_0000 | i)
    }

    /// Eight slots: one bucket, so every key shares it whatever the seed.
    fn one_bucket() -> Arc<MacTable> {
        Arc::new(MacTable::with_seed(8, 300, 0))
    }

    // The readers run in the spawned thread and the writers in the model's own: loom's DPOR
    // keeps one last access per atomic, so a writer that loads before it stores hides an
    // earlier reader's loads, and a reader scheduled first would never be interleaved with
    // the writer. With the writer first, each of the reader's loads finds the writer's stores
    // and every interleaving is explored (removing either seqlock fence, or the validation of
    // a read, makes `mactable_lookup_during_a_move_sees_old_new_or_nothing` fail).

    /// A station learned on port 1 and then moved to port 2, looked up meanwhile: the lookup
    /// answers nothing, 1 or 2 (never a torn or foreign port), and 2 once the learner is done.
    #[test]
    fn mactable_lookup_during_a_move_sees_old_new_or_nothing() {
        loom::model(|| {
            let t = one_bucket();
            let reader = {
                let t = t.clone();
                thread::spawn(move || t.lookup(D, mac(1), 0))
            };
            assert_eq!(t.learn(D, mac(1), PortId(1), 0), Learned::New);
            assert_eq!(t.learn(D, mac(1), PortId(2), 0), Learned::Moved);
            let seen = reader.join().unwrap();
            assert!(
                matches!(seen, None | Some(PortId(1)) | Some(PortId(2))),
                "{seen:?}"
            );
            assert_eq!(t.lookup(D, mac(1), 0), Some(PortId(2)));
        });
    }

    /// Two threads learn different stations into the same bucket at once: neither write is
    /// lost, and each station keeps its own port.
    #[test]
    fn mactable_concurrent_learns_into_one_bucket_both_stay() {
        loom::model(|| {
            let t = one_bucket();
            let other = {
                let t = t.clone();
                thread::spawn(move || t.learn(D, mac(1), PortId(1), 0))
            };
            assert_eq!(t.learn(D, mac(2), PortId(2), 0), Learned::New);
            assert_eq!(other.join().unwrap(), Learned::New);
            assert_eq!(t.lookup(D, mac(1), 0), Some(PortId(1)));
            assert_eq!(t.lookup(D, mac(2), 0), Some(PortId(2)));
            assert_eq!(t.len(0), 2);
        });
    }

    /// A port flushed while its station and another are looked up: the flushed station is
    /// found on its port or not at all, the other one is never reported elsewhere, and after
    /// the flush only the other one is left.
    #[test]
    fn mactable_flush_port_racing_a_lookup() {
        loom::model(|| {
            let t = one_bucket();
            t.learn(D, mac(1), PortId(1), 0);
            t.learn(D, mac(2), PortId(2), 0);
            let reader = {
                let t = t.clone();
                thread::spawn(move || (t.lookup(D, mac(1), 0), t.lookup(D, mac(2), 0)))
            };
            assert_eq!(t.flush_port(PortId(1)), 1);
            let (a, b) = reader.join().unwrap();
            assert!(matches!(a, None | Some(PortId(1))), "{a:?}");
            assert!(matches!(b, None | Some(PortId(2))), "{b:?}");
            assert_eq!(t.lookup(D, mac(1), 0), None);
            assert_eq!(t.lookup(D, mac(2), 0), Some(PortId(2)));
        });
    }

    /// A refresh (the stamp store outside the seqlock) racing the flush of its port never
    /// brings the flushed station back: if the learner found it (refreshed it), the flush
    /// removed it; if it found it gone, it learned it anew.
    #[test]
    fn mactable_refresh_racing_a_flush_does_not_resurrect() {
        loom::model(|| {
            let t = one_bucket();
            t.learn(D, mac(1), PortId(1), 0);
            let refresher = {
                let t = t.clone();
                thread::spawn(move || t.learn(D, mac(1), PortId(1), 5))
            };
            assert_eq!(t.flush_port(PortId(1)), 1);
            let outcome = refresher.join().unwrap();
            let left = t.lookup(D, mac(1), 5);
            match outcome {
                Learned::Refreshed => assert_eq!(left, None),
                Learned::New => assert_eq!(left, Some(PortId(1))),
                other => panic!("{other:?}"),
            }
        });
    }
}
