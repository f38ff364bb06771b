//! The `-netdev` parser (QEMU keyval) and its QMP twin: arbitrary text never panics, and an
//! accepted spec written back as keyval (type, id, then its options as given, `,` doubled)
//! parses to the same spec. Host names in addresses are resolved, so run this target where
//! there is no network (see fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringswitch_backends::{netdev_from_qmp, parse_netdev};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(spec) = parse_netdev(s) {
            let mut text = format!("{},id={}", spec.kind.name(), spec.id.as_str());
            for (k, v) in &spec.options {
                text.push_str(&format!(",{}={}", k, v.replace(',', ",,")));
            }
            let again = parse_netdev(&text)
                .unwrap_or_else(|e| panic!("'{s}' was accepted, its rewrite '{text}' is not: {e}"));
            assert_eq!(again, spec, "rewrite: {text}");
        }
    }
    if let Ok(serde_json::Value::Object(args)) = serde_json::from_slice(data) {
        let _ = netdev_from_qmp(&args);
    }
});
