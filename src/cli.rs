//! Command-line parsing: clap for the options, the backends' parser for each `-netdev`. Every
//! error is reported before any port is opened and exits with status 2.

use clap::Parser;
use ringswitch_backends::{parse_netdev, NetdevSpec};
use std::ffi::OsString;
use std::path::PathBuf;

/// A userspace Ethernet switch whose ports speak QEMU's netdev formats.
#[derive(Parser, Debug)]
#[command(name = "ringswitch", version, about, long_about = None)]
struct Raw {
    /// A port, in QEMU's -netdev syntax: tap,id=ID[,ifname=NAME][,fd=N][,script=PATH|no][,downscript=PATH|no].
    /// Repeat for each port. `-netdev` is accepted as well as `--netdev`.
    #[arg(long = "netdev", value_name = "SPEC")]
    netdev: Vec<String>,

    /// Pin the worker thread to this CPU.
    #[arg(long, value_name = "CPU")]
    worker_cpu: Option<usize>,

    /// Seconds after which a learned MAC address is forgotten unless seen again.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    mac_ageing: u32,

    /// Capacity of the MAC table (entries); memory is fixed at start.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(8..=16_777_216))]
    mac_table_size: u32,

    /// Largest frame accepted, in bytes without FCS; larger frames are dropped as oversize.
    #[arg(long, value_name = "BYTES", default_value_t = 1522, value_parser = clap::value_parser!(u32).range(60..=65535))]
    max_frame_size: u32,

    /// Reads kept in flight per port.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    rx_depth: u32,

    /// On exit, also write the final counters as JSON to this file.
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,

    /// Allow tap script=/downscript= programs to run (as this user, usually root).
    #[arg(long)]
    allow_scripts: bool,
}

/// Validated arguments.
#[derive(Debug)]
pub struct Args {
    pub netdevs: Vec<NetdevSpec>,
    pub worker_cpu: Option<usize>,
    pub mac_ageing: u32,
    pub mac_table_size: usize,
    pub max_frame_size: usize,
    pub rx_depth: u32,
    pub stats_json: Option<PathBuf>,
}

/// How parsing ended without valid arguments.
#[derive(Debug)]
pub enum CliExit {
    /// clap's own outcome (help, version, or a usage error with status 2).
    Clap(clap::Error),
    /// A semantic error; the message names the offender.
    Invalid(String),
}

/// QEMU spells its long options with one dash (`-netdev`); clap wants two.
fn normalise(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|a| match a.to_str() {
            Some("-netdev") => OsString::from("--netdev"),
            Some(s) if s.starts_with("-netdev=") => OsString::from(format!("-{s}")),
            _ => a,
        })
        .collect()
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, CliExit> {
    let raw = Raw::try_parse_from(normalise(args)).map_err(CliExit::Clap)?;
    if raw.netdev.is_empty() {
        return Err(CliExit::Invalid(
            "no ports: give at least one -netdev (e.g. -netdev tap,id=a,ifname=tap0)".into(),
        ));
    }
    let mut netdevs: Vec<NetdevSpec> = Vec::with_capacity(raw.netdev.len());
    for s in &raw.netdev {
        let spec = parse_netdev(s).map_err(|e| CliExit::Invalid(format!("-netdev '{s}': {e}")))?;
        if netdevs.iter().any(|n| n.id == spec.id) {
            return Err(CliExit::Invalid(format!(
                "-netdev '{s}': Duplicate ID '{}' for netdev",
                spec.id
            )));
        }
        if spec.wants_scripts() && !raw.allow_scripts {
            return Err(CliExit::Invalid(format!(
                "-netdev '{s}': script=/downscript= run a program as this user; pass --allow-scripts to allow it, or use script=no,downscript=no"
            )));
        }
        netdevs.push(spec);
    }
    if netdevs.len() > 1024 {
        return Err(CliExit::Invalid(format!(
            "{} ports given; at most 1024",
            netdevs.len()
        )));
    }
    if let Some(cpu) = raw.worker_cpu {
        // Not available_parallelism(): that honours our own affinity mask (e.g. under
        // `taskset`), while the worker may be pinned to any CPU the system has.
        // SAFETY: sysconf only reads a system parameter.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize;
        if cpu >= n {
            return Err(CliExit::Invalid(format!(
                "--worker-cpu {cpu}: this machine has CPUs 0..{}",
                n - 1
            )));
        }
    }
    Ok(Args {
        netdevs,
        worker_cpu: raw.worker_cpu,
        mac_ageing: raw.mac_ageing,
        mac_table_size: raw.mac_table_size as usize,
        max_frame_size: raw.max_frame_size as usize,
        rx_depth: raw.rx_depth,
        stats_json: raw.stats_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, CliExit> {
        parse(
            std::iter::once("ringswitch")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    fn invalid(args: &[&str]) -> String {
        match p(args) {
            Err(CliExit::Invalid(m)) => m,
            other => panic!("expected Invalid for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn single_and_double_dash_netdev() {
        let a = p(&[
            "-netdev",
            "tap,id=a,ifname=t0",
            "--netdev",
            "tap,id=b,ifname=t1",
            "--netdev=tap,id=c",
        ])
        .unwrap();
        let ids: Vec<_> = a
            .netdevs
            .iter()
            .map(|n| n.id.as_str().to_string())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(a.mac_ageing, 300);
        assert_eq!(a.max_frame_size, 1522);
    }

    #[test]
    fn options_are_parsed() {
        let a = p(&[
            "-netdev",
            "tap,id=a",
            "--worker-cpu",
            "0",
            "--mac-ageing",
            "10",
            "--mac-table-size",
            "1024",
            "--max-frame-size",
            "9018",
            "--stats-json",
            "/tmp/x.json",
        ])
        .unwrap();
        assert_eq!(
            (
                a.worker_cpu,
                a.mac_ageing,
                a.mac_table_size,
                a.max_frame_size
            ),
            (Some(0), 10, 1024, 9018)
        );
        assert_eq!(
            a.stats_json.as_deref(),
            Some(std::path::Path::new("/tmp/x.json"))
        );
    }

    #[test]
    fn every_error_path_names_the_offender() {
        assert!(invalid(&[]).contains("no ports"));
        assert!(invalid(&["-netdev", "bogus,id=a"]).contains("'bogus'"));
        assert!(invalid(&["-netdev", "bogus,id=a"]).contains("valid types: tap"));
        assert!(invalid(&["-netdev", "tap"]).contains("'id' is missing"));
        assert!(invalid(&["-netdev", "tap,id=a,foo=1"]).contains("'foo'"));
        assert!(
            invalid(&["-netdev", "tap,id=a", "-netdev", "tap,id=a"]).contains("Duplicate ID 'a'")
        );
        assert!(invalid(&["-netdev", "tap,id=a,script=/bin/true"]).contains("--allow-scripts"));
        assert!(p(&["-netdev", "tap,id=a,script=/bin/true", "--allow-scripts"]).is_ok());
        assert!(
            invalid(&["-netdev", "tap,id=a", "--worker-cpu", "4096"]).contains("--worker-cpu 4096")
        );
        for bad in [
            &["-netdev", "tap,id=a", "--bogus"][..],
            &["-netdev", "tap,id=a", "--mac-ageing", "0"],
            &["-netdev", "tap,id=a", "--mac-ageing", "x"],
            &["-netdev", "tap,id=a", "--max-frame-size", "10"],
            &["-netdev", "tap,id=a", "--mac-table-size", "1"],
            &["-netdev"],
        ] {
            match p(bad) {
                Err(CliExit::Clap(e)) => assert_eq!(e.exit_code(), 2, "{bad:?}"),
                other => panic!("{bad:?}: expected a clap error, got {other:?}"),
            }
        }
    }
}
