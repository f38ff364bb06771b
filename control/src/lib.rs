//! ringswitch's control plane: a QMP server (QEMU's Machine Protocol) driving the switch with
//! the net commands of QEMU's `qapi/net.json`, plus the operator's commands; and a QMP client
//! that follows the rx-filter of a NIC in a running QEMU (`follow`).

pub mod announce;
pub mod commands;
pub mod controller;
pub mod follow;
pub mod json;
pub mod metrics;
pub mod qmp;
pub mod server;

pub use controller::{Controller, ControllerConfig, Port, WorkerRef};
pub use metrics::MetricsServer;
pub use server::{Listener, Server};
