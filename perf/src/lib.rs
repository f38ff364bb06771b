//! Measurement tools for ringswitch: the pieces shared by `rs-gen` (frame generator),
//! `rs-sink` (frame counter and checker) and `rs-rwfwd` (the read()/write() reference
//! forwarder). This crate owns thin, typed wrappers around the kernel objects those tools
//! use (AF_PACKET sockets, tap devices, CPU affinity, the monotonic clock) and the probe
//! frame format they exchange. It deliberately does not depend on the switch's own crates,
//! so the measuring side keeps building while the thing being measured is being changed.

pub mod batch;
pub mod clock;
pub mod cpu;
pub mod ifname;
pub mod mac;
pub mod packet;
pub mod probe;
pub mod seqtrack;
pub mod tap;
