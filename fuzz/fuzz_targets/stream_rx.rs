//! The stream framing of QEMU's `socket`/`stream` netdevs (4-byte big-endian length, then the
//! frame): `StreamRx` fed in arbitrary chunks must yield exactly the items a decoder that sees
//! the whole input at once yields, hand out no frame outside its buffer or over the limit, and
//! know at the end whether it holds part of a frame.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringswitch_switch::port::stream::codec::{StreamItem, StreamRx, MAX_STREAM_FRAME, PREFIX_LEN};

#[derive(Debug, Arbitrary)]
struct Input {
    /// The switch's frame limit (`--max-frame-size`).
    max_frame: u32,
    /// Sizes of successive reads, used in turn (empty: one read).
    chunks: Vec<u16>,
    bytes: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum Item {
    Frame(Vec<u8>),
    Runt,
    Oversize(usize),
    Desync(u64),
}

/// The items of `bytes` seen whole, and whether it ends inside a prefix or frame.
fn reference(bytes: &[u8], max: usize) -> (Vec<Item>, bool) {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        if bytes.len() - i < PREFIX_LEN {
            return (out, i != bytes.len());
        }
        let len = u32::from_be_bytes(bytes[i..i + PREFIX_LEN].try_into().unwrap()) as usize;
        i += PREFIX_LEN;
        if len == 0 {
            out.push(Item::Runt);
        } else if len > MAX_STREAM_FRAME {
            out.push(Item::Desync(len as u64));
            return (out, false);
        } else if len > max {
            out.push(Item::Oversize(len));
            if i + len > bytes.len() {
                return (out, true);
            }
            i += len;
        } else if bytes.len() - i < len {
            return (out, true);
        } else {
            out.push(Item::Frame(bytes[i..i + len].to_vec()));
            i += len;
        }
    }
}

fuzz_target!(|input: Input| {
    let max = (input.max_frame as usize).min(2 * MAX_STREAM_FRAME);
    let mut rx = StreamRx::new();
    let mut got = Vec::new();
    let mut rest = &input.bytes[..];
    let mut k = 0;
    let mut desync = false;
    'feed: while !rest.is_empty() {
        let chunk = match input.chunks.len() {
            0 => rest.len(),
            n => (input.chunks[k % n] as usize).max(1),
        };
        k += 1;
        let target = rx.read_target();
        assert!(!target.is_empty(), "read_target is empty");
        let n = chunk.min(rest.len()).min(target.len());
        target[..n].copy_from_slice(&rest[..n]);
        rx.commit(n);
        rest = &rest[n..];
        while let Some(item) = rx.next_item(max) {
            match item {
                StreamItem::Frame { start, len } => {
                    assert!(len > 0 && len <= max, "frame of {len} bytes, limit {max}");
                    assert!(start + len <= rx.bytes().len());
                    got.push(Item::Frame(rx.bytes()[start..start + len].to_vec()));
                }
                StreamItem::Runt => got.push(Item::Runt),
                StreamItem::Oversize(len) => {
                    assert!(len > max && len <= MAX_STREAM_FRAME);
                    got.push(Item::Oversize(len));
                }
                StreamItem::Desync(len) => {
                    assert!(len as usize > MAX_STREAM_FRAME);
                    got.push(Item::Desync(len));
                    // The worker closes the connection here.
                    desync = true;
                    break 'feed;
                }
            }
        }
    }
    let (want, mid) = reference(&input.bytes, max);
    assert_eq!(got, want);
    if !desync {
        assert_eq!(rx.mid_frame(), mid, "mid_frame disagrees");
    }
});
