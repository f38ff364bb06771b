//! An RxFilterInfo object from a QMP client (`set-rx-filter`, `netdev_add`'s `rx-filter`) or
//! from a followed QEMU (`query-rx-filter`'s answers), read by
//! `ringswitch_backends::rxfilter::rx_filter_from_json`: arbitrary JSON never panics; what it
//! accepts is written back by `rx_filter_to_json` and read again to the same filter (after
//! QEMU's capacity, `fit_tables`), and the filter decides on arbitrary frames without panic,
//! the kernel-side decision (`ingress_pass`) too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringswitch_backends::rxfilter::{rx_filter_from_json, rx_filter_to_json, Name};
use ringswitch_switch::rxfilter::ingress_pass;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // Half the input is the JSON, the rest a frame to decide on.
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (json, frame) = data.split_at(cut);
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    for name in [Name::Required, Name::Optional] {
        let Ok(mut info) = rx_filter_from_json(&m, name) else {
            continue;
        };
        info.filter.fit_tables();
        let v = rx_filter_to_json("p", &info.filter);
        let Value::Object(back) = &v else {
            panic!("not an object: {v}")
        };
        let again = rx_filter_from_json(back, Name::Required).expect("its own output reads back");
        assert_eq!(again.filter, info.filter, "round trip of {v}");
        assert_eq!(again.name.as_deref(), Some("p"));
        let _ = info.filter.accepts(frame);
        let _ = ingress_pass(frame, frame.len() % 2 == 0, [&info.filter, &again.filter]);
    }
});
