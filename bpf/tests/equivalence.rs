//! Issue 14's acceptance: the kernel program and `ingress_pass` decide alike. Random domains
//! (1–10 ports, promiscuous or not, every state, overflow flags, shared table entries, VLAN
//! tables), random learned addresses and random frames (unicast, multicast, broadcast,
//! tagged or not, from 0 bytes to the longest a test run takes); every frame is run, with
//! `BPF_PROG_TEST_RUN`, through the program of every port of its domain. One domain serves
//! all cases, so `update` and `set_learned` are checked to rewrite everything too.

mod common;

use std::cell::Cell;
use std::time::Instant;

use proptest::test_runner::{Config, TestCaseError, TestRunner};
use ringswitch_bpf::{BpfDomain, PortBit, TEST_RUN_MAX_FRAME};
use ringswitch_switch::RxFilter;

use common::gen::{case, Case};

/// Domains per run; each brings 1–7 frames, each decided on every port.
const CASES: u32 = 5000;

fn check(domain: &BpfDomain, case: &Case, tally: &Cell<[u64; 2]>) -> Result<(), TestCaseError> {
    let ports: Vec<(PortBit, &RxFilter)> = case
        .ports
        .iter()
        .map(|(b, f)| (PortBit::new(usize::from(*b)).unwrap(), f))
        .collect();
    domain.update(&ports).unwrap();
    let learned: Vec<_> = case
        .learned
        .iter()
        .map(|&(m, b)| (m, PortBit::new(usize::from(b)).unwrap()))
        .collect();
    domain.set_learned(&learned).unwrap();
    let reference_learned = case.learned_map();
    for frame in &case.frames {
        for &(bit, _) in &ports {
            let kernel = domain.verdict(frame, bit).unwrap();
            let want = case.reference(frame, bit.index(), &reference_learned);
            let mut t = tally.get();
            t[usize::from(want)] += 1;
            tally.set(t);
            if kernel != want {
                return Err(TestCaseError::fail(format!(
                    "{bit}: kernel says {kernel}, ingress_pass says {want}, for the {}-byte \
                     frame {frame:02x?}",
                    frame.len()
                )));
            }
        }
    }
    Ok(())
}

#[test]
fn the_kernel_program_decides_as_ingress_pass() {
    if !common::require_bpf("the_kernel_program_decides_as_ingress_pass", false) {
        return;
    }
    let domain = BpfDomain::new(64).expect("create the domain's maps");
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let tally = Cell::new([0u64; 2]);
    let start = Instant::now();
    let result = runner.run(&case(TEST_RUN_MAX_FRAME), |case| {
        check(&domain, &case, &tally)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.get();
    let verdicts = tally[0] + tally[1];
    eprintln!(
        "{CASES} domains, {verdicts} verdicts compared ({} pass, {} drop) in {:.1?}",
        tally[1],
        tally[0],
        start.elapsed()
    );
    // The generator must keep both outcomes common (one in 20 at least: thousands of each
    // per run), or the comparison proves little.
    assert!(
        tally[0] * 20 > verdicts && tally[1] * 20 > verdicts,
        "{tally:?}"
    );
}
