//! One loaded instance of the filter program: the object compiled by `build.rs`, opened
//! from the bytes embedded here, with its port's bit and Ethernet offset written into its
//! read-only data and the domain's maps put in place of its own before load. Also runs the
//! instance on a test frame (`BPF_PROG_TEST_RUN`).

use std::os::fd::{AsFd, BorrowedFd};

use libbpf_rs::{
    MapCore, MapHandle, Object, ObjectBuilder, OpenObject, ProgramHandle, ProgramInput, ProgramMut,
};

use crate::maps::port_conf;
use crate::{BpfError, PortBit};

/// The program as clang built it (`build.rs`).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rxfilter.bpf.o"));

const PROGRAM: &str = "rxfilter";

/// The maps shared by every instance of a domain, in the order of [`MAP_NAMES`].
pub(crate) const MAP_NAMES: [&str; 5] = ["masks", "listed", "vlans", "learned", "counters"];

/// The domain's maps, in the order of [`MAP_NAMES`].
pub(crate) type SharedMaps<'a> = [&'a MapHandle; MAP_NAMES.len()];

/// What `BPF_PROG_TEST_RUN` takes in front of a socket filter's input: a dummy Ethernet
/// header, which the kernel consumes (`eth_type_trans`) before the program runs. Its
/// EtherType is a local experimental one, so the kernel looks no further into the input.
const TEST_RUN_HEADER: [u8; 14] = [0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5];

/// The longest frame a test run accepts: the kernel takes at most a page of input, less the
/// skb's head and tail room (`bpf_test_init`), and the dummy header comes out of that.
pub const TEST_RUN_MAX_FRAME: usize = 4096 - 64 - 320 - TEST_RUN_HEADER.len();

pub(crate) struct PortProgram {
    obj: Object,
    /// The program's fd, duplicated so it can be lent out for as long as `self` lives.
    handle: ProgramHandle,
}

impl PortProgram {
    /// Loads an instance for `bit` reading the frame at `eth_off`. With `shared`, the
    /// instance uses those maps; without, it creates its own (the domain's first load), the
    /// learned-address map sized for `learned_capacity` entries.
    pub fn load(
        bit: PortBit,
        eth_off: u32,
        shared: Option<&SharedMaps<'_>>,
        learned_capacity: u32,
    ) -> Result<PortProgram, BpfError> {
        let mut open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(BpfError::Load)?;
        configure(&mut open, bit, eth_off, shared, learned_capacity)?;
        let obj = open.load().map_err(BpfError::Load)?;
        let handle = {
            let prog = obj
                .progs_mut()
                .find(|p| p.name() == PROGRAM)
                .ok_or(BpfError::Missing("the program `rxfilter`"))?;
            ProgramHandle::try_from(&prog).map_err(BpfError::Load)?
        };
        Ok(PortProgram { obj, handle })
    }

    /// Owned handles on this instance's maps, in the order of [`MAP_NAMES`].
    pub fn map_handles(&self) -> Result<Vec<MapHandle>, BpfError> {
        MAP_NAMES
            .iter()
            .map(|&name| {
                let map = self
                    .obj
                    .maps()
                    .find(|m| m.name() == name)
                    .ok_or(BpfError::Missing(name))?;
                MapHandle::try_from(&map).map_err(BpfError::Load)
            })
            .collect()
    }

    fn program(&self) -> ProgramMut<'_> {
        self.obj
            .progs_mut()
            .find(|p| p.name() == PROGRAM)
            .expect("the object was loaded with its program")
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }

    /// Runs the instance on `frame` (from its destination address on) and returns whether
    /// it passed. The run counts in the port's counters like a real frame.
    pub fn test_run(&self, frame: &[u8]) -> Result<bool, BpfError> {
        if frame.len() > TEST_RUN_MAX_FRAME {
            return Err(BpfError::FrameTooLong {
                len: frame.len(),
                max: TEST_RUN_MAX_FRAME,
            });
        }
        let mut data = Vec::with_capacity(TEST_RUN_HEADER.len() + frame.len());
        data.extend_from_slice(&TEST_RUN_HEADER);
        data.extend_from_slice(frame);
        let input = ProgramInput {
            data_in: Some(&data),
            ..Default::default()
        };
        let out = self.program().test_run(input).map_err(BpfError::TestRun)?;
        Ok(out.return_value != 0)
    }
}

fn configure(
    open: &mut OpenObject,
    bit: PortBit,
    eth_off: u32,
    shared: Option<&SharedMaps<'_>>,
    learned_capacity: u32,
) -> Result<(), BpfError> {
    let conf = port_conf(bit, eth_off);
    let mut conf_set = false;
    for mut map in open.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if name.ends_with(".rodata") {
            let value = map
                .initial_value_mut()
                .filter(|v| v.len() == conf.len())
                .ok_or(BpfError::Missing(
                    "read-only data of the size of struct port_conf",
                ))?;
            value.copy_from_slice(&conf);
            conf_set = true;
        } else if let Some(i) = MAP_NAMES.iter().position(|&n| n == name) {
            match shared {
                Some(handles) => map.reuse_fd(handles[i].as_fd()).map_err(BpfError::Load)?,
                None if name == "learned" => map
                    .set_max_entries(learned_capacity.max(1))
                    .map_err(BpfError::Load)?,
                None => {}
            }
        }
    }
    if !conf_set {
        return Err(BpfError::Missing("read-only data (struct port_conf)"));
    }
    Ok(())
}
