//! The vhost-user protocol as ringswitch's backend handles it: arbitrary bytes from a
//! frontend (message headers, sizes, bodies, in any order) through the `vhost` crate's request
//! handler into ringswitch's `Device`. Every message must be answered, refused, or end the
//! connection, never panic or hang. (Descriptors cannot travel in the input: messages that
//! need them are refused as a frontend without them would be.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringswitch_backends::vhost_user::Device;
use ringswitch_switch::port::vhost_user::VhostShared;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vhost::vhost_user::BackendReqHandler;

fuzz_target!(|data: &[u8]| {
    let (mut frontend, backend) = UnixStream::pair().expect("socket pair");
    // Replies go unread into the socket buffer; 4 KiB of input is a few hundred messages.
    frontend.write_all(data).expect("writing the input");
    frontend
        .shutdown(std::net::Shutdown::Write)
        .expect("ending the input");
    let shared = VhostShared::new().expect("shared state");
    let device = Arc::new(Mutex::new(Device::new(shared)));
    let mut handler = BackendReqHandler::from_stream(backend, device);
    for _ in 0..1024 {
        if handler.handle_request().is_err() {
            break;
        }
    }
});
