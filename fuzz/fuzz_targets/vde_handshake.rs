//! The vde handshake's parser: whatever a vde_switch answers (any bytes, any length) is
//! either a unix socket path or refused, never a panic; a path it accepts, written into a
//! request as ringswitch sends it, reads back the same; a request never exceeds what vde2
//! reads (12 + 110 + 128 bytes) and keeps its header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringswitch_backends::vde::{decode_reply, encode_request, SOCKADDR_UN_LEN};

fuzz_target!(|data: &[u8]| {
    let Some(path) = decode_reply(data) else {
        return;
    };
    let descr = String::from_utf8_lossy(data);
    let port = data.first().copied().unwrap_or(0) as u16 * 257;
    if let Ok(req) = encode_request(port, &path, &descr) {
        assert!(req.len() <= 12 + SOCKADDR_UN_LEN + 128);
        assert_eq!(&req[0..4], &0xfeed_faceu32.to_ne_bytes());
        assert_eq!(&req[8..12], &((port as u32) << 8).to_ne_bytes());
        assert_eq!(
            decode_reply(&req[12..12 + SOCKADDR_UN_LEN]).as_deref(),
            Some(path.as_path())
        );
    }
});
