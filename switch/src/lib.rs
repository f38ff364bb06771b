//! ringswitch's data plane: the buffer pool, the MAC learning table, the forwarding engine
//! (pure logic, no I/O) and the per-core io_uring worker that drives ports with it.

mod bufring;
pub mod config;
pub mod counters;
pub mod engine;
pub mod ethernet;
pub mod ids;
pub mod l2tpv3;
pub mod mac;
pub mod mactable;
pub mod memport;
pub mod pool;
pub mod stream;
pub mod uring;
pub mod worker;

pub use config::{
    link, BufferStats, ControlLink, Framing, LinkError, PortEntry, Request, Snapshot, WorkerEvent,
    WorkerLink,
};
pub use counters::{DropReason, PortCounters, PortStats, WorkerCounters, WorkerStats};
pub use engine::{Engine, PortConf, RxDesc, TxDesc, TxQueues};
pub use ids::{BufGroup, BufIndex, DomainId, PortId};
pub use mac::MacAddr;
pub use mactable::MacTable;
pub use memport::MemSwitch;
pub use pool::BufferPool;
pub use worker::{StopHandle, TapRx, Worker, WorkerConfig, WorkerError, WorkerHandle};
