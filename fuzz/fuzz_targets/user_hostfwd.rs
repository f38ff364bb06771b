//! The user port's forwarding-rule parsers (`hostfwd=`, `hostfwd-remove`'s key, `guestfwd=`):
//! arbitrary text never panics, an error is QEMU's "Invalid host forwarding rule" text, and
//! an accepted hostfwd rule written back in canonical form parses to the same rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringswitch_backends::user::{GuestFwd, HostFwd, HostFwdKey};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match HostFwd::parse(s) {
        Ok(r) => {
            let text = format!(
                "{}:{}:{}-{}:{}",
                if r.udp { "udp" } else { "tcp" },
                r.host.ip(),
                r.host.port(),
                r.guest.ip(),
                r.guest.port()
            );
            let again = HostFwd::parse(&text)
                .unwrap_or_else(|e| panic!("'{s}' was accepted, its rewrite '{text}' is not: {e}"));
            assert_eq!(again, r, "rewrite: {text}");
            assert!(r.guest.port() >= 1);
        }
        Err(e) => assert!(e.to_string().starts_with("Invalid host forwarding rule '")),
    }
    let _ = HostFwdKey::parse(s);
    let _ = GuestFwd::parse(s);
});
