//! vhost-user ports, the protocol side: ringswitch as the backend (device side) of a QEMU
//! virtio-net device.
//!
//! The frontend's messages on the chardev socket are read and answered by the `vhost` crate
//! (`BackendReqHandler`: framing, descriptor passing, REPLY_ACK, size checks). What they mean
//! for the device is `Device` here: features, the memory table (mapped with `vm-memory`, the
//! frontend's addresses translated to guest-physical ones), ring sizes, addresses, bases and
//! eventfds. Each change is published to the port's worker through `VhostShared`; the worker
//! serves the rings (`ringswitch_switch::port::vhost_user`). One thread per port runs the
//! protocol, off the workers: it blocks only on its own socket and, for `GET_VRING_BASE`, on
//! the worker's answer (bounded).
//!
//! A connection that ends (the frontend exited, was killed, or its guest's device was reset)
//! resets the device: memory unmapped once the worker lets go, rings stopped. A listening
//! port then waits for the next frontend; a connecting one tries again every `reconnect`.
//! A frontend the worker caught breaking the rules (`frontend_fault`) is disconnected the same
//! way.

use crate::chardev::ChardevSocket;
use ringswitch_switch::port::vhost_user::{
    GuestMem, VhostConf, VhostShared, VringConf, F_EVENT_IDX, F_MRG_RXBUF, QUEUES,
};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vm_memory::{FileOffset, GuestAddress};

const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
/// Several queue pairs: offered only by a port of `queues=N` above 1 (QEMU keeps it from the
/// guest unless the backend offers it).
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// The virtio features ringswitch offers a frontend.
pub const FEATURES: u64 = VIRTIO_F_VERSION_1
    | F_MRG_RXBUF
    | F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// Memory slots accepted with CONFIGURE_MEM_SLOTS (QEMU uses up to 8 for a plain guest).
const MAX_MEM_SLOTS: u64 = 32;
/// The longest the protocol thread waits for the worker to stop a ring.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// How often the protocol thread looks at faults and the stop flag while idle.
const TICK: Duration = Duration::from_millis(100);

/// One memory region as the frontend described it, with its file.
struct Region {
    gpa: u64,
    size: u64,
    /// The frontend's own address of the region (ring addresses come in these).
    qva: u64,
    mmap_offset: u64,
    file: Arc<File>,
    /// How many times the frontend added it: QEMU adds every region once per queue pair
    /// (each pair is a device of its own to it) and removes it as often.
    adds: u32,
}

/// The device state one frontend connection builds.
pub struct Device {
    shared: Arc<VhostShared>,
    features: u64,
    protocol: u64,
    regions: Vec<Region>,
    vrings: [VringConf; QUEUES],
    /// Ring addresses as the frontend gave them (its virtual addresses): desc, used, avail.
    qva: [Option<(u64, u64, u64)>; QUEUES],
}

impl Device {
    pub fn new(shared: Arc<VhostShared>) -> Device {
        Device {
            shared,
            features: 0,
            protocol: 0,
            regions: Vec::new(),
            vrings: Default::default(),
            qva: [None; QUEUES],
        }
    }

    fn ring(&self, index: u32) -> VuResult<usize> {
        let i = index as usize;
        if i < 2 * self.shared.pairs() {
            Ok(i)
        } else {
            Err(VuError::InvalidParam)
        }
    }

    fn to_gpa(&self, qva: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| qva >= r.qva && qva - r.qva < r.size)
            .map(|r| r.gpa + (qva - r.qva))
    }

    /// Translates the rings' addresses with the current memory table.
    fn translate(&mut self) -> VuResult<()> {
        for i in 0..QUEUES {
            if let Some((d, u, a)) = self.qva[i] {
                let (Some(d), Some(u), Some(a)) = (self.to_gpa(d), self.to_gpa(u), self.to_gpa(a))
                else {
                    return Err(VuError::InvalidParam);
                };
                self.vrings[i].desc = d;
                self.vrings[i].used = u;
                self.vrings[i].avail = a;
            }
        }
        Ok(())
    }

    /// Maps the memory table anew.
    fn map(&self) -> VuResult<Option<Arc<GuestMem>>> {
        if self.regions.is_empty() {
            return Ok(None);
        }
        let mut sorted: Vec<&Region> = self.regions.iter().collect();
        sorted.sort_by_key(|r| r.gpa);
        let ranges = sorted.iter().map(|r| {
            (
                GuestAddress(r.gpa),
                r.size as usize,
                Some(FileOffset::from_arc(r.file.clone(), r.mmap_offset)),
            )
        });
        GuestMem::from_ranges_with_files(ranges)
            .map(|m| Some(Arc::new(m)))
            .map_err(|_| VuError::InvalidParam)
    }

    /// Tells the worker what the device looks like now, with the memory `mem` (None: keep).
    fn publish(&self, mem: Option<Option<Arc<GuestMem>>>) -> u64 {
        let vrings = self.vrings.clone();
        let features = self.features;
        self.shared.update(move |c: &mut VhostConf| {
            if let Some(m) = mem {
                c.mem = m;
            }
            c.features = features;
            c.vrings = vrings;
        })
    }

    fn set_regions(&mut self) -> VuResult<()> {
        let mem = self.map()?;
        self.translate()?;
        self.publish(Some(mem));
        Ok(())
    }

    fn add_region(&mut self, r: &VhostUserMemoryRegion, file: File) -> VuResult<()> {
        if r.memory_size == 0 || self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(VuError::InvalidParam);
        }
        self.regions.push(Region {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            qva: r.user_addr,
            mmap_offset: r.mmap_offset,
            file: Arc::new(file),
            adds: 1,
        });
        Ok(())
    }

    /// The virtio features offered: `FEATURES`, and `MQ` with several queue pairs.
    fn offered(&self) -> u64 {
        if self.shared.pairs() > 1 {
            FEATURES | VIRTIO_NET_F_MQ
        } else {
            FEATURES
        }
    }

    fn protocol_on(&self) -> bool {
        self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0
    }

    fn reply_ack_on(&self) -> bool {
        self.protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }
}

impl VhostUserBackendReqHandlerMut for Device {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.reset_device()
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.vrings = Default::default();
        self.qva = [None; QUEUES];
        self.features = 0;
        self.publish(None);
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.offered())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.offered() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.features = features;
        if !self.protocol_on() {
            // Without protocol features a ring is enabled as soon as it starts.
            for v in &mut self.vrings {
                v.enabled = true;
            }
        }
        self.publish(None);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() {
            return Err(VuError::InvalidParam);
        }
        let old = std::mem::take(&mut self.regions);
        for (r, f) in ctx.iter().zip(files) {
            if let Err(e) = self.add_region(r, f) {
                self.regions = old;
                return Err(e);
            }
        }
        if let Err(e) = self.set_regions() {
            self.regions = old;
            return Err(e);
        }
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let i = self.ring(index)?;
        if num == 0 || num > 32768 || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        self.vrings[i].size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let i = self.ring(index)?;
        self.qva[i] = Some((descriptor, used, available));
        self.translate()?;
        self.publish(None);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let i = self.ring(index)?;
        self.vrings[i].base = base as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let i = self.ring(index)?;
        self.vrings[i].started = false;
        self.shared.take_base(i);
        let g = self.publish(None);
        self.shared.wait_applied(g, STOP_WAIT);
        let base = self.shared.take_base(i).unwrap_or(self.vrings[i].base);
        self.vrings[i].base = base;
        self.vrings[i].kick = None;
        self.vrings[i].call = None;
        Ok(VhostUserVringState::new(index, base as u32))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = self.ring(index as u32)?;
        self.vrings[i].kick = fd.map(|f| Arc::new(OwnedFd::from(f)));
        self.vrings[i].started = self.vrings[i].kick.is_some();
        if !self.protocol_on() {
            self.vrings[i].enabled = true;
        }
        self.publish(None);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = self.ring(index as u32)?;
        self.vrings[i].call = fd.map(|f| Arc::new(OwnedFd::from(f)));
        self.publish(None);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        self.ring(index as u32)?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::RARP
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.shared.pairs() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let i = self.ring(index)?;
        self.vrings[i].enabled = enable;
        self.publish(None);
        Ok(())
    }

    fn get_config(
        &mut self,
        _offset: u32,
        _size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        Err(VuError::InvalidOperation("no device config space"))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        Err(VuError::InvalidOperation("no device config space"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(VuError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(VuError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        Err(VuError::InvalidOperation("no inflight tracking"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("no inflight tracking"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        if let Some(r) = self.regions.iter_mut().find(|r| {
            (r.gpa, r.size, r.qva, r.mmap_offset)
                == (
                    region.guest_phys_addr,
                    region.memory_size,
                    region.user_addr,
                    region.mmap_offset,
                )
        }) {
            // The same region again (another queue pair's device): counted, not mapped twice.
            r.adds += 1;
            return Ok(None);
        }
        self.add_region(region, fd)?;
        if let Err(e) = self.set_regions() {
            self.regions.pop();
            return Err(e);
        }
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        let Some(at) = self
            .regions
            .iter()
            .position(|r| r.gpa == region.guest_phys_addr && r.size == region.memory_size)
        else {
            return Err(VuError::InvalidParam);
        };
        self.regions[at].adds -= 1;
        if self.regions[at].adds > 0 {
            return Ok(());
        }
        self.regions.remove(at);
        self.set_regions()
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(VuError::InvalidOperation("no device state transfer"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(VuError::InvalidOperation("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(VuError::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation(
            "no dirty logging (live migration)",
        ))
    }
}

/// What the protocol thread says about its port, for listings.
#[derive(Debug, Default)]
pub struct ServiceState {
    /// A frontend is connected.
    pub connected: AtomicBool,
    /// Frontend connections served so far.
    pub connections: AtomicU64,
    /// Connections ended because the frontend broke the rules.
    pub faults: AtomicU64,
    /// Why the last connection ended.
    pub last_error: Mutex<Option<String>>,
}

/// A vhost-user port's protocol thread: stops when dropped.
pub struct Service {
    stop: Arc<AtomicBool>,
    conn: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
    pub state: Arc<ServiceState>,
    pub shared: Arc<VhostShared>,
    /// The socket file this port created (removed when it goes).
    owned_path: Option<PathBuf>,
}

impl Service {
    /// Starts serving `socket` for the port `name`. A listening socket is bound here, so an
    /// error (path in use, no such directory) reaches `netdev_add`.
    pub fn start(name: &str, socket: &ChardevSocket, pairs: usize) -> io::Result<Service> {
        let shared = VhostShared::with_pairs(pairs)?;
        let listener = match socket {
            ChardevSocket::Listen(p) => {
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p)?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            ChardevSocket::Connect { .. } => None,
        };
        let owned_path = listener.as_ref().map(|_| socket.path().clone());
        let stop = Arc::new(AtomicBool::new(false));
        let conn = Arc::new(Mutex::new(None));
        let state = Arc::new(ServiceState::default());
        let run = Runner {
            name: name.to_string(),
            socket: socket.clone(),
            listener,
            stop: stop.clone(),
            conn: conn.clone(),
            state: state.clone(),
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("rs-vhu-{name}"))
            .spawn(move || run.run())?;
        Ok(Service {
            stop,
            conn,
            thread: Some(thread),
            state,
            shared,
            owned_path,
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(s) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.owned_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct Runner {
    name: String,
    socket: ChardevSocket,
    listener: Option<UnixListener>,
    stop: Arc<AtomicBool>,
    conn: Arc<Mutex<Option<UnixStream>>>,
    state: Arc<ServiceState>,
    shared: Arc<VhostShared>,
}

impl Runner {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn run(self) {
        while !self.stopped() {
            let Some(stream) = self.next_stream() else {
                continue;
            };
            self.serve(stream);
        }
    }

    /// Waits (in ticks, watching the stop flag) for the next frontend connection.
    fn next_stream(&self) -> Option<UnixStream> {
        match (&self.listener, &self.socket) {
            (Some(l), _) => match l.accept() {
                Ok((s, _)) => Some(s),
                Err(_) => {
                    std::thread::sleep(TICK);
                    None
                }
            },
            (None, ChardevSocket::Connect { path, reconnect }) => match UnixStream::connect(path) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.note(format!("connecting to {}: {e}", path.display()));
                    let wait = reconnect.unwrap_or(Duration::from_secs(1));
                    let end = std::time::Instant::now() + wait;
                    while !self.stopped() && std::time::Instant::now() < end {
                        std::thread::sleep(TICK);
                    }
                    None
                }
            },
            _ => {
                std::thread::sleep(TICK);
                None
            }
        }
    }

    fn note(&self, why: String) {
        *self
            .state
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Serves one frontend connection until it ends, then resets the device.
    fn serve(&self, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = stream.try_clone().ok();
        self.shared.clear_report();
        let fd = stream.as_raw_fd();
        let device = Arc::new(Mutex::new(Device::new(self.shared.clone())));
        let mut handler = BackendReqHandler::from_stream(stream, device.clone());
        self.state.connected.store(true, Ordering::Release);
        self.state.connections.fetch_add(1, Ordering::Relaxed);
        let why = loop {
            if self.stopped() {
                break "the port was removed".to_string();
            }
            if let Some(f) = self.shared.take_fault() {
                self.state.faults.fetch_add(1, Ordering::Relaxed);
                break f;
            }
            match readable(fd, TICK) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => break format!("polling the socket: {e}"),
            }
            match early_vring_enable(fd, &device) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => break format!("answering an early SET_VRING_ENABLE: {e}"),
            }
            match send_rarp(fd, &device) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => break format!("taking SEND_RARP: {e}"),
            }
            // The request's code, to name it if it is refused.
            let mut head = [0u8; 4];
            let request = match recv(fd, &mut head, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
                Ok(4) => u32::from_le_bytes(head),
                _ => 0,
            };
            if let Err(e) = handler.handle_request() {
                break match e {
                    VuError::Disconnected | VuError::PartialMessage => {
                        "the frontend disconnected".to_string()
                    }
                    e => {
                        self.state.faults.fetch_add(1, Ordering::Relaxed);
                        self.shared.protocol_fault();
                        format!("frontend message (request {request}) refused: {e}")
                    }
                };
            }
        };
        drop(handler);
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.state.connected.store(false, Ordering::Release);
        // Said as a stream port says a lost peer: the operator's only view of why a guest's
        // network went away.
        eprintln!("ringswitch: netdev '{}': {why}", self.name);
        self.note(format!("vhost-user port {}: {why}", self.name));
        // The device is gone with its connection: rings stopped, memory released once the
        // worker lets go of it.
        let g = self.shared.update(|c| *c = VhostConf::default());
        if !self.stopped() {
            // (A removed port's worker may already have let go of it: no one to wait for.)
            self.shared.wait_applied(g, STOP_WAIT);
        }
        self.shared.clear_report();
    }
}

/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
/// Header flags: protocol version 1, a reply, a reply wanted.
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// Takes a `SET_VRING_ENABLE` that arrives before `SET_FEATURES` acked
/// `VHOST_USER_F_PROTOCOL_FEATURES`, if that is the next message on `fd`; true if it did.
///
/// QEMU 7.2 sends one for queue pair 0 as soon as it has read the backend's features
/// (`virtio_net` `peer_attach` at device realize and at every reconnection), long before
/// `SET_FEATURES`: it checks the feature the backend *offered*. The `vhost` crate refuses the
/// message until the feature is *acked* (`InactiveFeature`), which would end every QEMU
/// connection at its 18th message with the guest's link down. The message is taken here
/// instead, as DPDK's vhost library takes it: the ring's enable state is recorded (and
/// acknowledged if the frontend asked for that).
fn early_vring_enable(fd: i32, device: &Mutex<Device>) -> io::Result<bool> {
    // The header (request, flags, size) and a `VhostUserVringState` (index, num).
    let mut msg = [0u8; 20];
    let n = recv(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
    let [request, flags, size, index, num] =
        std::array::from_fn(|i| u32::from_le_bytes(msg[i * 4..i * 4 + 4].try_into().expect("4")));
    if n < msg.len() || request != SET_VRING_ENABLE || size != 8 {
        return Ok(false);
    }
    let mut dev = device.lock().unwrap_or_else(|p| p.into_inner());
    if dev.protocol_on() || index as usize >= 2 * dev.shared.pairs() || num > 1 {
        // Acked, or bad: the crate's rules apply.
        return Ok(false);
    }
    recv(fd, &mut msg, libc::MSG_DONTWAIT)?;
    dev.vrings[index as usize].enabled = num == 1;
    dev.publish(None);
    if flags & FLAG_NEED_REPLY != 0 && dev.reply_ack_on() {
        ack(fd, SET_VRING_ENABLE)?;
    }
    Ok(true)
}

/// `VHOST_USER_SEND_RARP`.
const SEND_RARP: u32 = 19;

/// Takes a `SEND_RARP` if that is the next message on `fd` (the `vhost` crate's handler has
/// no method for it); true if it did. QEMU sends it after a migration (or on its own
/// `announce-self`) for a guest without `VIRTIO_NET_F_GUEST_ANNOUNCE`, with the guest's MAC
/// in the first 6 bytes of a u64: the port announces that MAC as the guest (`VhostConf::rarp`).
fn send_rarp(fd: i32, device: &Mutex<Device>) -> io::Result<bool> {
    let mut msg = [0u8; 20];
    let n = recv(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
    let [request, flags, size] =
        std::array::from_fn(|i| u32::from_le_bytes(msg[i * 4..i * 4 + 4].try_into().expect("4")));
    if n < msg.len() || request != SEND_RARP || size != 8 {
        // (Anything else, a short or bad one included, goes to the crate, which refuses it.)
        return Ok(false);
    }
    let dev = device.lock().unwrap_or_else(|p| p.into_inner());
    if dev.protocol & VhostUserProtocolFeatures::RARP.bits() == 0 {
        return Ok(false);
    }
    recv(fd, &mut msg, libc::MSG_DONTWAIT)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&msg[12..18]);
    dev.shared.update(|c| c.rarp = Some(mac));
    if flags & FLAG_NEED_REPLY != 0 && dev.reply_ack_on() {
        ack(fd, SEND_RARP)?;
    }
    Ok(true)
}

/// Answers `request` with REPLY_ACK's success (a u64 0).
fn ack(fd: i32, request: u32) -> io::Result<()> {
    let mut reply = [0u8; 20];
    reply[0..4].copy_from_slice(&request.to_le_bytes());
    reply[4..8].copy_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
    reply[8..12].copy_from_slice(&8u32.to_le_bytes());
    // SAFETY: `reply` is valid for reads of its length for the duration of the call.
    let r = unsafe { libc::send(fd, reply.as_ptr().cast(), reply.len(), libc::MSG_NOSIGNAL) };
    if r != reply.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `recv(2)` into `buf`; the bytes received.
fn recv(fd: i32, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Whether `fd` has something to read within `wait`.
fn readable(fd: i32, wait: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, wait.as_millis() as i32) };
    match r {
        0 => Ok(false),
        r if r > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}
