//! QMP's input, a stream of JSON values (QEMU's JSON with single-quoted strings):
//! `JsonStream` must give the same results however the bytes are split into reads, never hold
//! more than its size limit, and give back exactly the values a stream of serialised JSON
//! values carries.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ringswitch_control::json::{JsonError, JsonStream, Limits};
use serde_json::{Map, Number, Value};

#[derive(Debug, Arbitrary)]
struct Input {
    small_limits: bool,
    chunks: Vec<u8>,
    data: Vec<u8>,
}

fn limits(small: bool) -> Limits {
    if small {
        Limits {
            max_bytes: 256,
            max_depth: 4,
        }
    } else {
        Limits::default()
    }
}

/// Feeds `data` in reads of the sizes in `chunks` (used in turn; empty: one read).
fn run(l: Limits, data: &[u8], chunks: &[u8]) -> Vec<Result<Value, JsonError>> {
    let mut s = JsonStream::new(l);
    let mut out = Vec::new();
    let mut rest = data;
    let mut k = 0;
    while !rest.is_empty() {
        let n = match chunks.len() {
            0 => rest.len(),
            m => (chunks[k % m] as usize).clamp(1, rest.len()),
        };
        k += 1;
        s.feed(&rest[..n], |r| out.push(r));
        rest = &rest[n..];
        assert!(s.pending() <= l.max_bytes, "holds {} bytes", s.pending());
    }
    out
}

/// A string QMP accepts: QEMU refuses `\u0000` in its JSON, and so does `JsonStream`.
fn text(u: &mut Unstructured) -> arbitrary::Result<String> {
    Ok(u.arbitrary::<String>()?.replace('\0', ""))
}

/// A JSON value of bounded depth and size.
fn value(u: &mut Unstructured, depth: usize) -> arbitrary::Result<Value> {
    let pick = if depth >= 6 {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=6)?
    };
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(Number::from(u.arbitrary::<i64>()?)),
        3 => Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        4 => Value::String(text(u)?),
        5 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array(
                (0..n)
                    .map(|_| value(u, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(text(u)?, value(u, depth + 1)?);
            }
            Value::Object(m)
        }
    })
}

fuzz_target!(|raw: &[u8]| {
    let mut u = Unstructured::new(raw);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };

    // Arbitrary bytes: split anyhow, the same answers.
    for small in [input.small_limits, !input.small_limits] {
        let l = limits(small);
        let whole = run(l, &input.data, &[]);
        assert_eq!(run(l, &input.data, &input.chunks), whole);
    }

    // Serialised values, separated by whitespace, come back as they were.
    let mut u = Unstructured::new(&input.data);
    let mut values = Vec::new();
    let mut text = Vec::new();
    while values.len() < 4 {
        let Ok(v) = value(&mut u, 0) else { break };
        text.extend_from_slice(serde_json::to_string(&v).unwrap().as_bytes());
        text.push(b'\n');
        values.push(v);
    }
    let got = run(Limits::default(), &text, &input.chunks);
    let want: Vec<Result<Value, JsonError>> = values.into_iter().map(Ok).collect();
    assert_eq!(got, want, "input: {}", String::from_utf8_lossy(&text));
});
