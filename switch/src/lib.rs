//! ringswitch's data plane: the buffer pool, MAC learning, the forwarding engine (pure logic,
//! no I/O), the port interface with one module per kind of port, and the per-core io_uring
//! worker that drives ports with it. Raw kernel interfaces (io_uring submissions, message
//! headers, provided-buffer rings, descriptors) live in `sys` alone.

pub mod config;
pub mod counters;
pub mod engine;
pub mod ethernet;
pub mod fabric;
pub mod frame;
pub mod gso;
pub mod ids;
pub mod mac;
pub mod mactable;
pub mod memport;
pub mod pool;
pub mod port;
pub mod rxfilter;
pub mod sync;
mod sys;
pub mod txqueue;
pub mod worker;

pub use sys::{affinity, uring};

pub use config::{
    link, BufferStats, ControlLink, LinkError, PortCell, PortEntry, QueueEntry, Request, Snapshot,
    WorkerEvent, WorkerLink,
};
pub use counters::{DropReason, DropStats, PortCounters, PortStats, WorkerCounters, WorkerStats};
pub use engine::{Engine, PortConf};
pub use frame::{Frame, Offload};
pub use ids::{BufGroup, BufIndex, DomainId, PortId, Slot, WorkerId};
pub use mac::MacAddr;
pub use mactable::MacTable;
pub use memport::MemSwitch;
pub use pool::{BufferPool, PoolRegistry};
pub use port::{AnyPort, Caps, PortEnv, RxMode, TapRx};
pub use rxfilter::{RxFilter, RxState};
pub use txqueue::TxQueues;
pub use worker::{PollMode, StopHandle, Worker, WorkerConfig, WorkerError, WorkerHandle};
