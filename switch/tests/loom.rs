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
