//! `BpfDomain`: the maps of one switching domain and the program instances attached to its
//! ports. The controller owns it: `update` on every configuration snapshot, `learn`/`forget`
//! on MAC-table changes; ports attach their tap or socket fds as they open. All methods take
//! `&self` (the state behind them is locked), so the domain may be shared with the threads
//! that open ports. Every change reaches running programs at once, with no reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};
use ringswitch_switch::{MacAddr, RxFilter};

use crate::maps::{mac_key, DomainMasks, Encoded};
use crate::program::{PortProgram, SharedMaps};
use crate::{BpfError, PortBit};

/// The packets a port's program passed and dropped, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterCounts {
    pub passed: u64,
    pub dropped: u64,
}

/// One switching domain's filter: up to 64 ports, each a bit of a `u64`. Dropping it does
/// not detach anything: attached programs keep the maps alive as last written, so detach
/// the ports (or close them) first.
pub struct BpfDomain {
    masks: MapHandle,
    listed: MapHandle,
    vlans: MapHandle,
    learned: MapHandle,
    counters: MapHandle,
    learned_capacity: u32,
    state: Mutex<State>,
    /// One instance per (port bit, Ethernet offset), loaded on first use and kept: the
    /// kernel holds its own reference while attached, this one serves later attachments and
    /// test runs.
    programs: Mutex<HashMap<(PortBit, u32), Arc<PortProgram>>>,
}

/// What the maps hold now, so that changes are written as differences.
struct State {
    current: Encoded,
    learned: HashMap<[u8; 6], PortBit>,
    /// The learned map ran out of room: the domain passes everything until it fits again.
    learned_full: bool,
    /// An update failed part-way: the maps may hold anything between two configurations.
    out_of_step: bool,
}

fn map_err(map: &'static str) -> impl Fn(libbpf_rs::Error) -> BpfError {
    move |source| BpfError::Map { map, source }
}

impl BpfDomain {
    /// Creates the maps of an empty domain (no ports: every frame but broadcast would be
    /// dropped) with room for `learned_capacity` learned addresses — the MAC table's
    /// capacity, so the map cannot fill before the table does.
    pub fn new(learned_capacity: u32) -> Result<BpfDomain, BpfError> {
        let first = PortProgram::load(PortBit::MIN, 0, None, learned_capacity)?;
        let mut handles = first.map_handles()?.into_iter();
        let mut next = || handles.next().expect("one handle per map name");
        let domain = BpfDomain {
            masks: next(),
            listed: next(),
            vlans: next(),
            learned: next(),
            counters: next(),
            learned_capacity: learned_capacity.max(1),
            state: Mutex::new(State {
                current: Encoded::empty(),
                learned: HashMap::new(),
                learned_full: false,
                out_of_step: false,
            }),
            programs: Mutex::new(HashMap::from([((PortBit::MIN, 0), Arc::new(first))])),
        };
        Ok(domain)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps and shadow at worst out of step in the
        // permissive direction (see `update`); carry on with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rewrites the masks and tables from a configuration snapshot: the domain's ports and
    /// their filters. Ports left out are no longer in the domain. A frame that both the old
    /// and the new configuration pass is never dropped while this runs: the maps go through
    /// the union of the two first. After a failed update (the error is returned) the next
    /// one rewrites every entry.
    pub fn update(&self, ports: &[(PortBit, &RxFilter)]) -> Result<(), BpfError> {
        let new = Encoded::new(ports)?;
        let mut st = self.state();
        let pass_all = DomainMasks {
            pass_all: u64::from(st.learned_full),
            ..DomainMasks::default()
        };
        let written = if st.out_of_step {
            self.rewrite(&new, pass_all)
        } else {
            self.write_changes(&st.current, &new, pass_all)
        };
        st.out_of_step = written.is_err();
        if written.is_ok() {
            st.current = new;
        }
        written
    }

    /// Moves the maps from `old` to `new` through their union, writing only what differs.
    fn write_changes(
        &self,
        old: &Encoded,
        new: &Encoded,
        pass_all: DomainMasks,
    ) -> Result<(), BpfError> {
        // 1. Tables: old | new (the `listed` map has room for both).
        for (mac, &bits) in &new.listed {
            let was = old.listed.get(mac).copied().unwrap_or(0);
            if bits & !was != 0 {
                self.write_listed(mac, was | bits)?;
            }
        }
        for (vid, (&was, &bits)) in old.vlans.iter().zip(new.vlans.iter()).enumerate() {
            if bits & !was != 0 {
                self.write_vlan(vid, was | bits)?;
            }
        }
        // 2. Masks: old | new, then new.
        self.write_masks(old.masks.union(&new.masks).union(&pass_all))?;
        self.write_masks(new.masks.union(&pass_all))?;
        // 3. Tables: exactly new.
        for (mac, &was) in &old.listed {
            match new.listed.get(mac) {
                None => self.delete_listed(mac)?,
                Some(&bits) if was & !bits != 0 => self.write_listed(mac, bits)?,
                Some(_) => {}
            }
        }
        for (vid, (&was, &bits)) in old.vlans.iter().zip(new.vlans.iter()).enumerate() {
            if was & !bits != 0 {
                self.write_vlan(vid, bits)?;
            }
        }
        Ok(())
    }

    /// Writes `new` whatever the maps hold (after a failed update): new entries first, then
    /// the masks, then whatever else the `listed` map still has goes.
    fn rewrite(&self, new: &Encoded, pass_all: DomainMasks) -> Result<(), BpfError> {
        for (mac, &bits) in &new.listed {
            self.write_listed(mac, bits)?;
        }
        for (vid, &bits) in new.vlans.iter().enumerate() {
            self.write_vlan(vid, bits)?;
        }
        self.write_masks(new.masks.union(&pass_all))?;
        let stale: Vec<[u8; 6]> = self
            .listed
            .keys()
            .filter_map(|k| k.get(..6).and_then(|m| <[u8; 6]>::try_from(m).ok()))
            .filter(|m| !new.listed.contains_key(m))
            .collect();
        for mac in &stale {
            self.delete_listed(mac)?;
        }
        Ok(())
    }

    fn delete_listed(&self, mac: &[u8; 6]) -> Result<(), BpfError> {
        match self.listed.delete(&mac_key(*mac)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(map_err("listed")(e)),
            _ => Ok(()),
        }
    }

    fn write_masks(&self, m: DomainMasks) -> Result<(), BpfError> {
        self.masks
            .update(&0u32.to_ne_bytes(), &m.to_bytes(), MapFlags::ANY)
            .map_err(map_err("masks"))
    }

    fn write_listed(&self, mac: &[u8; 6], bits: u64) -> Result<(), BpfError> {
        self.listed
            .update(&mac_key(*mac), &bits.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("listed"))
    }

    fn write_vlan(&self, vid: usize, bits: u64) -> Result<(), BpfError> {
        self.vlans
            .update(
                &(vid as u32).to_ne_bytes(),
                &bits.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_err("vlans"))
    }

    /// Records that `mac` was learned on `bit` (moving it from wherever it was).
    pub fn learn(&self, mac: MacAddr, bit: PortBit) -> Result<(), BpfError> {
        let mut st = self.state();
        self.learn_locked(&mut st, mac, bit)
    }

    fn learn_locked(&self, st: &mut State, mac: MacAddr, bit: PortBit) -> Result<(), BpfError> {
        if st.learned.get(&mac.0) == Some(&bit) {
            return Ok(());
        }
        match self
            .learned
            .update(&mac_key(mac.0), &bit.mask().to_ne_bytes(), MapFlags::ANY)
        {
            Ok(()) => {
                st.learned.insert(mac.0, bit);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::TooBig => {
                // A learned address missing from the map could get its frames dropped;
                // passing everything is the safe side.
                self.learn_overflowed(st)?;
                Err(BpfError::LearnedFull {
                    capacity: self.learned_capacity,
                })
            }
            Err(e) => Err(map_err("learned")(e)),
        }
    }

    /// Removes `mac` from the learned addresses (aged out, or its port went away).
    pub fn forget(&self, mac: MacAddr) -> Result<(), BpfError> {
        let mut st = self.state();
        if st.learned.contains_key(&mac.0) {
            self.learned
                .delete(&mac_key(mac.0))
                .map_err(map_err("learned"))?;
            st.learned.remove(&mac.0);
        }
        Ok(())
    }

    /// Replaces the learned addresses with `entries` (the MAC table as it is now). New and
    /// moved entries are written before stale ones are removed.
    pub fn set_learned(&self, entries: &[(MacAddr, PortBit)]) -> Result<(), BpfError> {
        let mut st = self.state();
        let want: HashMap<[u8; 6], PortBit> = entries.iter().map(|&(m, b)| (m.0, b)).collect();
        let stale: Vec<[u8; 6]> = st
            .learned
            .keys()
            .filter(|m| !want.contains_key(*m))
            .copied()
            .collect();
        if want.len() > self.learned_capacity as usize {
            // Cannot fit: keep what is there, pass everything.
            self.learn_overflowed(&mut st)?;
            return Err(BpfError::LearnedFull {
                capacity: self.learned_capacity,
            });
        }
        // Make room first when the union would not fit.
        if st.learned.len() + want.len() > self.learned_capacity as usize {
            for mac in &stale {
                self.learned
                    .delete(&mac_key(*mac))
                    .map_err(map_err("learned"))?;
                st.learned.remove(mac);
            }
        }
        for (&mac, &bit) in &want {
            self.learn_locked(&mut st, MacAddr(mac), bit)?;
        }
        for mac in &stale {
            if st.learned.remove(mac).is_some() {
                self.learned
                    .delete(&mac_key(*mac))
                    .map_err(map_err("learned"))?;
            }
        }
        if st.learned_full {
            st.learned_full = false;
            self.write_masks(st.current.masks)?;
        }
        Ok(())
    }

    fn learn_overflowed(&self, st: &mut State) -> Result<(), BpfError> {
        st.learned_full = true;
        self.write_masks(st.current.masks.union(&DomainMasks {
            pass_all: 1,
            ..DomainMasks::default()
        }))
    }

    /// Whether the learned map overflowed and the domain passes every frame for now.
    pub fn passes_everything(&self) -> bool {
        self.state().learned_full
    }

    pub(crate) fn program(&self, bit: PortBit, eth_off: u32) -> Result<Arc<PortProgram>, BpfError> {
        let mut progs = self.programs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = progs.get(&(bit, eth_off)) {
            return Ok(Arc::clone(p));
        }
        let shared: SharedMaps<'_> = [
            &self.masks,
            &self.listed,
            &self.vlans,
            &self.learned,
            &self.counters,
        ];
        let p = Arc::new(PortProgram::load(bit, eth_off, Some(&shared), 0)?);
        progs.insert((bit, eth_off), Arc::clone(&p));
        Ok(p)
    }

    /// What port `bit`'s programs passed and dropped so far (all its attachments, test runs
    /// included).
    pub fn counters(&self, bit: PortBit) -> Result<FilterCounts, BpfError> {
        let per_cpu = self
            .counters
            .lookup_percpu(&u32::from(bit.index()).to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("counters"))?
            .unwrap_or_default();
        let mut sum = FilterCounts::default();
        for v in per_cpu {
            let word = |i: usize| {
                v.get(i * 8..i * 8 + 8)
                    .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
            };
            sum.passed += word(0);
            sum.dropped += word(1);
        }
        Ok(sum)
    }

    /// The decision of port `bit`'s program on `frame` (an Ethernet frame, from its
    /// destination on), through `BPF_PROG_TEST_RUN`: for tests. At most
    /// [`crate::TEST_RUN_MAX_FRAME`] bytes.
    pub fn verdict(&self, frame: &[u8], bit: PortBit) -> Result<bool, BpfError> {
        self.program(bit, 0)?.test_run(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringswitch_switch::RxState;

    fn bpf_here(test: &str) -> bool {
        match crate::probe() {
            Ok(()) => true,
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{test}: needs BPF, but {why} (CI=true)")
            }
            Err(why) => {
                eprintln!("skipping {test}: {why}");
                false
            }
        }
    }

    fn station(mac: [u8; 6]) -> RxFilter {
        RxFilter {
            promiscuous: false,
            unicast: RxState::Normal,
            ..RxFilter::promiscuous(MacAddr(mac))
        }
    }

    fn to(mac: [u8; 6]) -> Vec<u8> {
        let mut f = mac.to_vec();
        f.resize(60, 0);
        f
    }

    #[test]
    fn an_update_after_a_failed_one_rewrites_every_entry() {
        if !bpf_here("an_update_after_a_failed_one_rewrites_every_entry") {
            return;
        }
        let (a, b, c) = (
            [2, 0, 0, 0, 0, 0xa],
            [2, 0, 0, 0, 0, 0xb],
            [2, 0, 0, 0, 0, 0xc],
        );
        let p = |i| PortBit::new(i).unwrap();
        let d = BpfDomain::new(4).unwrap();
        d.update(&[(p(0), &station(a)), (p(1), &station(b))])
            .unwrap();
        // As if the last update had stopped anywhere: the shadow no longer says what the
        // maps hold.
        d.state().current = Encoded::empty();
        d.state().out_of_step = true;
        d.update(&[(p(0), &station(a)), (p(1), &station(c))])
            .unwrap();
        assert!(!d.state().out_of_step);
        assert_eq!(d.listed.keys().count(), 2, "b went, a and c are left");
        assert!(d.verdict(&to(c), p(0)).unwrap());
        assert!(!d.verdict(&to(b), p(0)).unwrap());
        assert!(d.verdict(&to(a), p(1)).unwrap());
    }
}
