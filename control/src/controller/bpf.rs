//! The eBPF ingress filter on the control side (issue 14; the program and its maps are
//! `ringswitch_bpf`'s). Every bridge domain of at most 64 ports gets one set of maps, each of
//! its ports a bit; the maps hold the ports' rx-filters (rewritten after every configuration
//! change: `sync_bpf`, from `publish`) and the addresses learned on them (`sync_learned`,
//! from the control loop when the MAC table changed). Each tap and datagram socket port
//! gets the program of its bit attached (`TUNSETFILTEREBPF`, `SO_ATTACH_BPF`), which drops
//! a frame in the kernel when no other port of its domain would accept it — attached only
//! where that can happen: a port with a promiscuous neighbour keeps none. Other ports
//! (streams, vhost-user, user, l2tpv3, multicast sockets) keep their bit, since they accept frames, but are
//! served in userspace alone. A domain of more than 64 ports is served in userspace alone;
//! where BPF cannot be loaded the switch says so once and the workers' egress check is all.

use super::{Controller, Port};
use ringswitch_backends::kinds::SocketMode;
use ringswitch_backends::NetdevKind;
use ringswitch_bpf::{Attachment, BpfDomain, PortBit};
use ringswitch_switch::{DomainId, PortId};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// How often the learned addresses are looked at while the MAC table is changing, and at
/// the latest while it is not (stations age out without a count moving).
const LEARNED_EVERY: Duration = Duration::from_millis(100);
const LEARNED_REFRESH: Duration = Duration::from_secs(2);

/// The switch's kernel-side filtering: off, or one set of maps per domain.
pub(super) struct BpfState {
    enabled: bool,
    domains: BTreeMap<DomainId, DomainBpf>,
    learned_capacity: u32,
    /// The workers' learned-station count when last synced, and when.
    learned_seen: u64,
    learned_at: Option<Instant>,
}

struct DomainBpf {
    maps: BpfDomain,
    bits: BTreeMap<PortId, PortBit>,
}

/// A port's attachment: where its program runs, and a duplicate of the descriptor it runs on
/// (to detach it when the port goes, and to tell a new connection from the old one).
pub(super) struct PortBpf {
    domain: DomainId,
    bit: PortBit,
    fd: OwnedFd,
    attachment: Option<Attachment>,
}

impl Drop for PortBpf {
    fn drop(&mut self) {
        // A persistent tap keeps its filter after its descriptors close: take it off.
        if let Some(a) = self.attachment.take() {
            let _ = a.detach(self.fd.as_fd());
        }
    }
}

/// Where a port's frames arrive, if the program can see them there: a tap, or a datagram
/// socket whose datagrams carry the frame at an offset (8: after a UDP header).
enum Target {
    Tap,
    Socket(u32),
}

fn target(p: &Port) -> Option<Target> {
    match &p.spec.kind {
        NetdevKind::Tap(_) | NetdevKind::Bridge { .. } => Some(Target::Tap),
        NetdevKind::Socket(m) | NetdevKind::Dgram(m) => match m {
            SocketMode::Udp { .. } => Some(Target::Socket(8)),
            // A multicast port's socket has its classic filter (its own frames looped back
            // are not heard); a socket holds one filter, so it stays in userspace.
            SocketMode::UnixDgram { .. } => Some(Target::Socket(0)),
            _ => None,
        },
        NetdevKind::Vde(_) | NetdevKind::VdeServed { .. } => Some(Target::Socket(0)),
        _ => None,
    }
}

/// Whether two descriptors are the same open file (device and inode).
fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    fn id(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
        // SAFETY: `st` is plain data that fstat(2) fills; the descriptor is borrowed, open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above: a valid descriptor and a valid pointer to a stat buffer.
        let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
        (rc == 0).then_some((st.st_dev, st.st_ino))
    }
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

impl BpfState {
    /// `enabled`: `--rx-filter-bpf auto`. Probes once; says why not, once, when it cannot.
    pub(super) fn new(enabled: bool, mac_table_size: usize) -> BpfState {
        let enabled = enabled
            && match ringswitch_bpf::probe() {
                Ok(()) => true,
                Err(why) => {
                    eprintln!("ringswitch: {why}");
                    false
                }
            };
        BpfState {
            enabled,
            domains: BTreeMap::new(),
            learned_capacity: mac_table_size.clamp(1, u32::MAX as usize) as u32,
            learned_seen: 0,
            learned_at: None,
        }
    }
}

impl Port {
    /// Where the port's rx-filter drops frames: "bpf" (in the kernel too) or "userspace".
    pub fn rx_filter_path(&self) -> &'static str {
        match &self.bpf {
            Some(b) if b.attachment.is_some() => "bpf",
            _ => "userspace",
        }
    }
}

impl Controller {
    /// Brings the kernel's maps and attachments in line with the ports: domains, bits,
    /// filters, and a program on each tap and datagram socket port (a new connection gets
    /// it again). Called after every published change.
    pub(super) fn sync_bpf(&mut self) {
        if !self.bpf.enabled {
            return;
        }
        let mut by_domain: BTreeMap<DomainId, Vec<usize>> = BTreeMap::new();
        for (i, p) in self.ports.iter().enumerate() {
            by_domain.entry(p.domain).or_default().push(i);
        }
        let Controller { ports, bpf, .. } = self;
        bpf.domains.retain(|d, _| by_domain.contains_key(d));
        for (&d, idx) in &by_domain {
            if idx.len() > PortBit::COUNT {
                // Served in userspace alone: every port of the domain lets go.
                for &i in idx {
                    ports[i].bpf = None;
                }
                if bpf.domains.remove(&d).is_some() {
                    eprintln!(
                        "ringswitch: hub {} has more than {} ports: its rx-filters are enforced in the workers only",
                        d.0,
                        PortBit::COUNT
                    );
                }
                continue;
            }
            if !bpf.domains.contains_key(&d) {
                match BpfDomain::new(bpf.learned_capacity) {
                    Ok(maps) => {
                        bpf.domains.insert(
                            d,
                            DomainBpf {
                                maps,
                                bits: BTreeMap::new(),
                            },
                        );
                    }
                    Err(e) => {
                        eprintln!(
                            "ringswitch: the eBPF ingress filter is off from now on ({e}); frames are filtered in the workers"
                        );
                        bpf.enabled = false;
                        bpf.domains.clear();
                        for p in ports.iter_mut() {
                            p.bpf = None;
                        }
                        return;
                    }
                }
            }
            let dom = bpf.domains.get_mut(&d).expect("inserted above");
            dom.bits
                .retain(|id, _| idx.iter().any(|&i| ports[i].index == *id));
            for &i in idx {
                let id = ports[i].index;
                if !dom.bits.contains_key(&id) {
                    let free = (0..PortBit::COUNT)
                        .find(|b| !dom.bits.values().any(|v| usize::from(v.index()) == *b))
                        .expect("at most 64 ports");
                    dom.bits
                        .insert(id, PortBit::new(free).expect("a bit under 64"));
                }
            }
            let list: Vec<(PortBit, &ringswitch_switch::RxFilter)> = idx
                .iter()
                .map(|&i| (dom.bits[&ports[i].index], &*ports[i].rx_filter))
                .collect();
            if let Err(e) = dom.maps.update(&list) {
                eprintln!("ringswitch: hub {}: the eBPF filter's maps: {e}", d.0);
            }
            // A port with a promiscuous neighbour can have nothing dropped: no program runs on
            // it (a hub of promiscuous ports, the default, costs the kernel nothing).
            let promiscuous = idx
                .iter()
                .filter(|&&i| ports[i].rx_filter.accepts_all())
                .count();
            for &i in idx {
                let bit = dom.bits[&ports[i].index];
                let p = &mut ports[i];
                let useful = promiscuous - usize::from(p.rx_filter.accepts_all()) == 0;
                let (Some(t), Some(conn), true) = (target(p), p.opened.conn(), useful) else {
                    p.bpf = None;
                    continue;
                };
                let keep = p.bpf.as_ref().is_some_and(|b| {
                    b.domain == d && b.bit == bit && same_file(b.fd.as_fd(), conn.fd.as_fd())
                });
                if keep {
                    continue;
                }
                p.bpf = None;
                let attached = match t {
                    Target::Tap => dom.maps.attach_tap(conn.fd.as_fd(), bit),
                    Target::Socket(off) => dom.maps.attach_socket(conn.fd.as_fd(), bit, off),
                };
                let fd = conn.fd.try_clone();
                match (attached, fd) {
                    (Ok(a), Ok(fd)) => {
                        p.bpf = Some(PortBpf {
                            domain: d,
                            bit,
                            fd,
                            attachment: Some(a),
                        })
                    }
                    (Ok(a), Err(e)) => {
                        let _ = a.detach(conn.fd.as_fd());
                        eprintln!(
                            "ringswitch: netdev '{}': the eBPF filter is not used: {e}",
                            p.id()
                        );
                    }
                    (Err(e), _) => eprintln!(
                        "ringswitch: netdev '{}': the eBPF filter is not used: {e}",
                        p.id()
                    ),
                }
            }
        }
    }

    /// Copies the stations learned on each port into its domain's maps (a learned address
    /// counts as accepted by its port), when the workers learned something since the last
    /// look (at most every 100 ms) and every 2 s anyway (stations age out silently).
    pub fn sync_learned(&mut self, now: Instant) {
        // Only ports with a program need the learned stations (and asking a worker for its
        // table every 2 s would wake an idle one for nothing).
        if !self.bpf.enabled || !self.ports.iter().any(|p| p.bpf.is_some()) {
            return;
        }
        let learned: u64 = self
            .workers
            .iter()
            .map(|w| w.counters.mac_learned.get())
            .sum();
        let due = match self.bpf.learned_at {
            None => true,
            Some(at) => {
                let since = now.saturating_duration_since(at);
                (learned != self.bpf.learned_seen && since >= LEARNED_EVERY)
                    || since >= LEARNED_REFRESH
            }
        };
        if !due {
            return;
        }
        self.bpf.learned_seen = learned;
        self.bpf.learned_at = Some(now);
        let Ok(entries) = self.mac_entries() else {
            return;
        };
        for (d, dom) in &self.bpf.domains {
            let list: Vec<_> = entries
                .iter()
                .filter(|e| e.domain == *d)
                .filter_map(|e| Some((e.mac, *dom.bits.get(&e.port)?)))
                .collect();
            if let Err(e) = dom.maps.set_learned(&list) {
                eprintln!("ringswitch: hub {}: learned addresses: {e}", d.0);
            }
        }
    }

    /// `query-ports`' `rx-filter-bpf` of a port whose program is attached: frames its
    /// program passed and dropped.
    pub fn bpf_counts(&self, p: &Port) -> Option<Value> {
        let b = p.bpf.as_ref()?;
        b.attachment.as_ref()?;
        let c = self.bpf.domains.get(&b.domain)?.maps.counters(b.bit).ok()?;
        Some(json!({"passed": c.passed, "dropped": c.dropped}))
    }
}
