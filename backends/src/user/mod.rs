//! `user` ports: QEMU's user-mode network (`-netdev user`), a virtual router with DHCP, DNS
//! forwarding, TFTP and NAT to the host's network, for every station of the port's domain,
//! built on libslirp as QEMU's is. Options are QEMU 7.2's, checked with its rules and error
//! texts (`options`, `hostfwd`); libslirp's C interface is bound by hand (`ffi`, a dozen
//! functions) and wrapped safely (`slirp`); each port's libslirp runs on a thread of its own
//! that trades frames with the worker over a unix datagram socket pair (`service`).

mod ffi;
mod gro;
pub mod hostfwd;
mod options;
mod outbox;
mod service;
mod slirp;

pub use hostfwd::{GuestFwd, HostFwd, HostFwdError, HostFwdKey};
pub use options::UserOptions;
pub use service::Service;
pub use slirp::{version as libslirp_version, StackCounters};
