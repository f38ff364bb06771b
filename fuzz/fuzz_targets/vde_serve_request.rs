//! The vde service's request parser (`--vde-serve`): whatever a client sends on the control
//! socket (any bytes, any length, cut anywhere) is a request, a refusal with its reason, or a
//! wait for more bytes — never a panic. A request it accepts names an absolute path and a
//! printable description of at most 128 bytes; a prefix of a complete request is never
//! refused for anything but being short; and a request encoded as ringswitch's own vde client
//! sends it reads back with the same port, path and description.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringswitch_backends::vde::encode_request;
use ringswitch_backends::vde_serve::request::{parse_request, RequestError, Wanted};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(req) => {
            assert!(req.client.is_absolute());
            assert!(req.descr.len() <= 128);
            assert!(req.descr.bytes().all(|c| (0x20..0x7f).contains(&c)));
            for cut in 0..data.len().min(16) {
                match parse_request(&data[..cut]) {
                    Err(RequestError::Incomplete { .. }) => {}
                    other => panic!("prefix of {cut} bytes of a good request: {other:?}"),
                }
            }
        }
        Err(RequestError::Incomplete { have, need }) => {
            assert_eq!(have, data.len());
            assert!(need > have);
        }
        Err(e) => assert!(!e.reason().is_empty()),
    }
    // Round trip through the client's encoder: the first bytes pick the port, the rest make
    // a path and a description.
    if data.len() < 3 {
        return;
    }
    let port = u16::from_ne_bytes([data[0], data[1]]);
    let text = String::from_utf8_lossy(&data[2..]);
    let mid = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(text.len(), |(i, _)| i);
    let (p, d) = text.split_at(mid);
    let path = format!("/{}", p.replace('\0', ""));
    let descr: String = d.chars().filter(|c| (' '..='~').contains(c)).collect();
    if let Ok(req) = encode_request(port, std::path::Path::new(&path), &descr) {
        let back = parse_request(&req).expect("a request ringswitch's client sends");
        assert_eq!(back.wanted, Wanted::Port((port != 0).then_some(u32::from(port))));
        assert_eq!(back.client, std::path::Path::new(&path));
        assert_eq!(back.descr, descr.get(..127).unwrap_or(&descr));
    }
});
