//! Command-line parsing: clap for the options, the backends' parser for each `-netdev`. Every
//! error is reported before any port is opened and exits with status 2.
//!
//! One option table: the clap definition below. A `--config` file's members are looked up in
//! it by long name and checked by clap exactly as on the command line (config.rs), then merged
//! into one argument list that the same checks below validate; its netdev and chardev objects
//! are read by QMP's own `netdev_add`/`chardev-add` readers.

mod config;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use ringswitch_backends::netdev::split_keyval;
use ringswitch_backends::vde_serve::ServeOptions;
use ringswitch_backends::{parse_chardev, parse_netdev, Chardev, NetdevKind, NetdevSpec};
use ringswitch_switch::{PollMode, TapRx};
use std::ffi::OsString;
use std::path::PathBuf;

/// A userspace Ethernet switch whose ports speak QEMU's netdev formats.
#[derive(Parser, Debug)]
#[command(name = "ringswitch", version, about, long_about = None)]
struct Raw {
    /// Read the set-up from FILE, a JSON object: "netdevs" lists the objects QMP's netdev_add
    /// takes ({"type": "dgram", "id": "a", "local": {...}, "remote": {...}}), "chardevs" those
    /// chardev-add takes, and every other member is an option below by its long name
    /// ("mac-ageing": 300, "poll": "busy", "allow-scripts": true, "qmp": [...]; a repeatable
    /// option takes a list or one string). Options given on the command line override the
    /// file's: a single-valued option or flag replaces its value, -qmp and --vde-serve replace
    /// its list, and a -netdev or -chardev replaces the file's entry of the same id (others are
    /// added). RINGSWITCH_POLL and RINGSWITCH_CORES override the file's "poll" and "cores" as
    /// well; "cores" and "worker-cpu" are one setting, so either on the command line replaces
    /// the file's.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// A port, in QEMU's -netdev syntax: TYPE,id=ID[,OPTION=VALUE...], TYPE one of tap, socket,
    /// stream, dgram, l2tpv3, bridge, hubport, vhost-user, vde (e.g. tap,id=a,ifname=tap0). Repeat for each
    /// port. `-netdev` is accepted as well as `--netdev`.
    ///
    /// tap: ifname=NAME or fd=N; script=PATH|no, downscript=PATH|no; vnet_hdr=on|off.
    ///
    /// socket: one of listen=[HOST]:PORT, connect=HOST:PORT[,reconnect=SECS],
    /// udp=HOST:PORT,localaddr=HOST:PORT, mcast=GROUP:PORT[,localaddr=IFADDR], fd=N.
    ///
    /// stream: server=on|off and addr.type=inet,addr.host=H,addr.port=P or
    /// addr.type=unix,addr.path=P or addr.type=fd,addr.str=N; reconnect=SECS for clients.
    ///
    /// dgram: local.* and remote.* addresses of type inet or unix (a multicast remote joins the
    /// group), or local.type=fd,local.str=N alone.
    ///
    /// l2tpv3: src=, dst=, txsession= and optionally rxsession=, udp=on (with srcport=,
    /// dstport=), ipv6=on, cookie64=on, txcookie= with rxcookie=, counter=on, pincounter=on,
    /// offset=.
    ///
    /// bridge: br=BRIDGE. hubport: hubid=N,netdev=ID. vhost-user: chardev=ID (a -chardev
    /// socket), queues=1. vde: sock=DIR (a vde_switch's directory), port=N, group=NAME,
    /// mode=OCTAL. Every type also takes macaddr=MAC and worker=N (the worker to serve the
    /// port, with --cores).
    #[arg(long = "netdev", value_name = "SPEC")]
    netdev: Vec<String>,

    /// A socket for vhost-user ports, in QEMU's -chardev syntax:
    /// socket,id=ID,path=PATH[,server=on|off][,wait=on|off][,reconnect=SECS]. server=on: the
    /// switch listens (QEMU connects with -chardev socket,path=PATH); off: the switch connects
    /// to a QEMU that listens. `-chardev` is accepted as well.
    #[arg(long = "chardev", value_name = "SPEC")]
    chardev: Vec<String>,

    /// Be a vde switch too: serve vde2's control protocol at DIR (DIR/ctl), so vde_plug,
    /// vde_plug2tap, slirpvde and QEMU's -netdev vde,sock=DIR plug into ringswitch. Each
    /// client becomes a port named NAME.N (N its vde port number; NAME from id=, default
    /// vde) for as long as its control connection stays open. SPEC:
    /// DIR[,id=NAME][,mode=OCTAL][,group=GROUP] (mode of the sockets, default 0600, as
    /// vde_switch's -m; group as its -g). Repeatable, one directory each.
    #[arg(long = "vde-serve", value_name = "SPEC")]
    vde_serve: Vec<String>,

    /// Run one worker per CPU of LIST, each pinned to its CPU: CPU numbers and ranges, e.g.
    /// 2-5,8 (at most 64). Ports are spread over the workers (the one with the fewest ports
    /// takes the next), unless a -netdev names one with worker=N; QMP's set-port-worker moves
    /// a live port. Without it (and without --worker-cpu) one unpinned worker serves every port.
    /// The environment variable RINGSWITCH_CORES sets it too (the test suites run every switch
    /// with two workers this way); an explicit --worker-cpu wins over it.
    #[arg(long, value_name = "LIST", env = "RINGSWITCH_CORES")]
    cores: Option<String>,

    /// Pin the one worker thread to this CPU (the same as --cores CPU).
    #[arg(long, value_name = "CPU")]
    worker_cpu: Option<usize>,

    /// Seconds after which a learned MAC address is forgotten unless seen again.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    mac_ageing: u32,

    /// Capacity of the MAC table (entries); memory is fixed at start.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(8..=16_777_216))]
    mac_table_size: u32,

    /// Largest frame accepted, in bytes without FCS; larger frames are dropped as oversize.
    #[arg(long, value_name = "BYTES", default_value_t = 65535, value_parser = clap::value_parser!(u32).range(60..=65535))]
    max_frame_size: u32,

    /// Receive depth per port: the reads kept in flight (streams; taps with --tap-rx reads), the
    /// most reads in one round (taps with --tap-rx polled), or the buffers in the port's
    /// provided-buffer ring where one multishot receive serves it (datagram sockets; taps with
    /// --tap-rx multishot, and polled taps while idle).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    rx_depth: u32,

    /// Receive on datagram socket ports with reads, as on taps, even where the kernel supports
    /// one multishot receive over a provided-buffer ring per port.
    #[arg(long)]
    no_rx_multishot: bool,

    /// How taps receive: `polled` (under load, rounds of up to --rx-depth non-blocking reads;
    /// when the tap runs empty, one multishot read until a burst comes), `multishot` (one
    /// multishot read over a provided-buffer ring; kernel 6.7+) or `reads` (--rx-depth
    /// blocking reads in flight, which can reorder frames at low rates).
    #[arg(long, value_name = "HOW", default_value = "polled", value_parser = ["polled", "multishot", "reads"])]
    tap_rx: String,

    /// Where rx-filters drop unwanted frames: `auto` (also in the kernel, with an eBPF
    /// program on each tap and datagram socket port, where BPF can be loaded; said once when
    /// it cannot) or `off` (in the workers only, on egress).
    #[arg(long, value_name = "HOW", default_value = "auto", value_parser = ["auto", "off"])]
    rx_filter_bpf: String,

    /// Under load, wait up to this many microseconds for a batch of completions before
    /// handling them (kernel 6.12+); 0 handles each wake-up's completions at once.
    #[arg(long, value_name = "USECS", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    rx_coalesce_us: u32,

    /// How the worker waits for completions: `adaptive` (poll for a self-tuning while after
    /// the last work, at most --poll-max-us, then sleep), `busy` (never sleep: a core of its
    /// own) or `sleep` (sleep in io_uring_enter whenever nothing is ready). The environment
    /// variable RINGSWITCH_POLL sets it too (the test suites run every mode this way).
    #[arg(long, value_name = "MODE", env = "RINGSWITCH_POLL", default_value = "adaptive", value_parser = ["adaptive", "busy", "sleep"])]
    poll: String,

    /// The longest the adaptive poll goes on after the last work before the worker sleeps.
    #[arg(long, value_name = "USECS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    poll_max_us: u32,

    /// On exit, also write the final counters as JSON to this file.
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,

    /// Allow tap script=/downscript= programs to run (as this user, usually root).
    #[arg(long)]
    allow_scripts: bool,

    /// Serve QMP, in QEMU's -qmp syntax: unix:PATH,server=on[,wait=off] or
    /// tcp:HOST:PORT,server=on[,wait=off]. Repeatable. `-qmp` is accepted as well.
    #[arg(long = "qmp", value_name = "SPEC")]
    qmp: Vec<String>,

    /// Allow a QMP TCP listener on a non-loopback address (QMP has no authentication).
    #[arg(long)]
    qmp_allow_remote: bool,

    /// Serve the counters as Prometheus/OpenMetrics text on GET /metrics over HTTP:
    /// tcp:[HOST:]PORT. HOST defaults to 127.0.0.1; a non-loopback address (0.0.0.0, an
    /// interface's address) is used only when written out here, and the endpoint has no
    /// authentication. PORT 0 picks a free port (printed at start).
    #[arg(long, value_name = "SPEC")]
    metrics: Option<String>,

    /// Most ports the switch serves at once (memory for them is reserved at start).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_ports: u32,
}

/// Where QMP is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpAddr {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// Parses QEMU's `-qmp` chardev shorthand. Legacy bare flags (`server`, `nowait`) are
/// accepted as QEMU accepts them.
pub fn parse_qmp(s: &str) -> Result<QmpAddr, String> {
    let kv = split_keyval(s, "addr").map_err(|e| format!("-qmp '{s}': {e}"))?;
    let mut addr = None;
    let mut server = false;
    for (k, v) in kv {
        match (k.as_str(), v.as_str()) {
            ("addr", a) => addr = Some(a.to_string()),
            ("server", "on" | "yes" | "true") => server = true,
            ("server", "off" | "no" | "false") => server = false,
            ("wait", "on" | "off" | "yes" | "no" | "true" | "false") => {}
            (k, v) => {
                return Err(format!(
                    "-qmp '{s}': invalid option '{k}={v}'; valid: server=on|off, wait=on|off"
                ))
            }
        }
    }
    if !server {
        return Err(format!(
            "-qmp '{s}': ringswitch serves QMP, it does not connect out: add server=on"
        ));
    }
    let addr = addr.unwrap_or_default();
    if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!("-qmp '{s}': unix: needs a socket path"));
        }
        return Ok(QmpAddr::Unix(PathBuf::from(path)));
    }
    if let Some(hp) = addr.strip_prefix("tcp:") {
        use std::net::ToSocketAddrs;
        let a = hp
            .to_socket_addrs()
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| format!("-qmp '{s}': '{hp}' is not HOST:PORT"))?;
        return Ok(QmpAddr::Tcp(a));
    }
    Err(format!(
        "-qmp '{s}': unknown address '{addr}'; valid: unix:PATH or tcp:HOST:PORT"
    ))
}

/// Parses `--metrics tcp:[HOST:]PORT` (HOST defaults to the loopback address).
pub fn parse_metrics(s: &str) -> Result<std::net::SocketAddr, String> {
    let Some(rest) = s.strip_prefix("tcp:") else {
        return Err(format!(
            "--metrics '{s}': unknown address; valid: tcp:[HOST:]PORT (e.g. tcp:127.0.0.1:9100)"
        ));
    };
    let hp = if rest.contains(':') {
        rest.to_string()
    } else {
        format!("127.0.0.1:{rest}")
    };
    use std::net::ToSocketAddrs;
    hp.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| format!("--metrics '{s}': '{rest}' is not [HOST:]PORT"))
}

/// The interface a tap spec names, if it names one (templates such as `tap%d` excluded).
fn tap_ifname(spec: &NetdevSpec) -> Option<&str> {
    match &spec.kind {
        NetdevKind::Tap(t) => t.ifname.as_deref().filter(|n| !n.contains('%')),
        _ => None,
    }
}

/// Turns QEMU's bare legacy flags into key=value so the keyval splitter takes them.
fn legacy_qmp_flags(s: &str) -> String {
    s.split(',')
        .map(|e| match e {
            "server" => "server=on",
            "nowait" => "wait=off",
            "wait" => "wait=on",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Validated arguments.
#[derive(Debug)]
pub struct Args {
    pub netdevs: Vec<NetdevSpec>,
    pub chardevs: Vec<Chardev>,
    pub vde_serve: Vec<ServeOptions>,
    /// One pinned worker per CPU listed (`--cores`, `--worker-cpu`); empty: one unpinned worker.
    pub cores: Vec<usize>,
    pub mac_ageing: u32,
    pub mac_table_size: usize,
    pub max_frame_size: usize,
    pub rx_depth: u32,
    pub rx_multishot: bool,
    pub tap_rx: TapRx,
    /// Whether to filter in the kernel too (`--rx-filter-bpf auto`).
    pub rx_filter_bpf: bool,
    pub rx_coalesce_us: u32,
    pub poll: PollMode,
    pub poll_max_us: u32,
    pub stats_json: Option<PathBuf>,
    pub allow_scripts: bool,
    pub qmp: Vec<QmpAddr>,
    pub qmp_allow_remote: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub max_ports: usize,
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
            Some("-qmp") => OsString::from("--qmp"),
            Some("-chardev") => OsString::from("--chardev"),
            Some(s)
                if s.starts_with("-netdev=")
                    || s.starts_with("-qmp=")
                    || s.starts_with("-chardev=") =>
            {
                OsString::from(format!("-{s}"))
            }
            _ => a,
        })
        .collect()
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, CliExit> {
    let argv = normalise(args);
    let cmd = Raw::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(argv.clone())
        .map_err(CliExit::Clap)?;
    let raw = Raw::from_arg_matches(&matches).map_err(CliExit::Clap)?;
    let Some(path) = raw.config.clone() else {
        let cores_from_env = cores_from_env(&matches);
        return validate(
            raw,
            Origin {
                cores_from_env,
                ..Origin::default()
            },
        );
    };
    let file = config::load(&path, &cmd)?;
    // The file's options go first, as if typed before the command line's; an option the
    // command line (or the environment) gives is left out, so the command line overrides.
    let mut merged: Vec<OsString> = argv.iter().take(1).cloned().collect();
    let mut from_file = Vec::new();
    let source = |id: &str| matches.value_source(id);
    // An empty RINGSWITCH_CORES is no setting: the file's holds.
    let empty_env_cores = source("cores") == Some(ValueSource::EnvVariable)
        && matches
            .get_one::<String>("cores")
            .is_some_and(|v| v.trim().is_empty());
    for opt in &file.options {
        let mut given = match source(&opt.id) {
            Some(ValueSource::CommandLine) => true,
            Some(ValueSource::EnvVariable) => !(opt.id == "cores" && empty_env_cores),
            _ => false,
        };
        // --cores and --worker-cpu set one thing: either on the command line replaces the
        // file's other.
        if matches!(opt.id.as_str(), "cores" | "worker_cpu") {
            given |=
                [source("cores"), source("worker_cpu")].contains(&Some(ValueSource::CommandLine));
        }
        if !given {
            merged.extend(opt.tokens.iter().map(OsString::from));
            from_file.push(opt.long.clone());
        }
    }
    merged.extend(argv.iter().skip(1).cloned());
    let matches = cmd
        .clone()
        .try_get_matches_from(merged)
        .map_err(CliExit::Clap)?;
    let raw = Raw::from_arg_matches(&matches).map_err(CliExit::Clap)?;
    validate(
        raw,
        Origin {
            file: Some(path),
            from_file,
            netdevs: file.netdevs,
            chardevs: file.chardevs,
            cores_from_env: cores_from_env(&matches),
        },
    )
}

/// Whether `--cores` came from RINGSWITCH_CORES rather than the command line or a file.
fn cores_from_env(matches: &clap::ArgMatches) -> bool {
    matches.value_source("cores") == Some(ValueSource::EnvVariable)
}

/// Most workers `--cores` may start.
pub const MAX_WORKERS: usize = 64;

/// Parses a CPU list such as `2-5,8` into CPUs in the order given; `cpus` is how many the
/// machine has. Refuses an empty list or element, a reversed range, a CPU listed twice, a CPU
/// the machine does not have and more than `MAX_WORKERS` CPUs.
pub fn parse_cores(list: &str, cpus: usize) -> Result<Vec<usize>, String> {
    let fail = |what: String| Err(format!("--cores '{list}': {what}"));
    if list.trim().is_empty() {
        return fail("no CPUs; expected CPU numbers and ranges such as 2-5,8".into());
    }
    let num = |s: &str| -> Result<usize, String> {
        s.trim().parse::<usize>().map_err(|_| {
            format!("--cores '{list}': '{s}' is not a CPU number; expected CPU numbers and ranges such as 2-5,8")
        })
    };
    let mut out: Vec<usize> = Vec::new();
    for item in list.split(',') {
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let c = num(item)?;
                (c, c)
            }
        };
        if a > b {
            return fail(format!("range {a}-{b} is reversed; write {b}-{a}"));
        }
        if (b - a).saturating_add(out.len()) >= MAX_WORKERS {
            return fail(format!(
                "more than {MAX_WORKERS} CPUs; ringswitch runs at most {MAX_WORKERS} workers"
            ));
        }
        for c in a..=b {
            if out.contains(&c) {
                return fail(format!("CPU {c} is listed twice"));
            }
            out.push(c);
        }
    }
    if let Some(c) = out.iter().find(|c| **c >= cpus) {
        return fail(format!("CPU {c}: this machine has CPUs 0..{}", cpus - 1));
    }
    Ok(out)
}

/// The CPUs the system has (not `available_parallelism()`: that honours our own affinity
/// mask, e.g. under `taskset`, while a worker may be pinned to any CPU the system has).
fn system_cpus() -> usize {
    // SAFETY: sysconf only reads a system parameter.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize
}

/// Where the values being validated came from: the command line alone, or a `--config` file
/// too (its options by long name, and its netdevs and chardevs, already read by QMP's readers).
#[derive(Default)]
struct Origin {
    file: Option<PathBuf>,
    from_file: Vec<String>,
    netdevs: Vec<NetdevSpec>,
    chardevs: Vec<Chardev>,
    /// `--cores` came from RINGSWITCH_CORES (an explicit `--worker-cpu` then wins).
    cores_from_env: bool,
}

impl Origin {
    /// What an error about option `long` starts with: the file and the member when the value
    /// came from the file, nothing when it came from the command line.
    fn at(&self, long: &str) -> String {
        match &self.file {
            Some(f) if self.from_file.iter().any(|l| l == long) => {
                format!("{}: member \"{long}\": ", f.display())
            }
            _ => String::new(),
        }
    }

    fn file_label(&self, member: &str, i: usize, id: &str) -> String {
        let f = self.file.as_deref().unwrap_or(std::path::Path::new("?"));
        format!("{}: {member}[{i}] (id '{id}')", f.display())
    }
}

/// The checks every set-up passes, whichever way it was given.
fn validate(raw: Raw, origin: Origin) -> Result<Args, CliExit> {
    let mut vde_serve: Vec<ServeOptions> = Vec::with_capacity(raw.vde_serve.len());
    let at = origin.at("vde-serve");
    for s in &raw.vde_serve {
        let o = ServeOptions::parse(s).map_err(|e| CliExit::Invalid(format!("{at}{e}")))?;
        if vde_serve.iter().any(|v| v.dir == o.dir || v.name == o.name) {
            return Err(CliExit::Invalid(format!(
                "{at}--vde-serve '{s}': another --vde-serve has the same directory or id '{}'; give each an id= of its own",
                o.name
            )));
        }
        vde_serve.push(o);
    }
    let mut qmp = Vec::with_capacity(raw.qmp.len());
    for q in &raw.qmp {
        qmp.push(
            parse_qmp(&legacy_qmp_flags(q))
                .map_err(|e| CliExit::Invalid(format!("{}{e}", origin.at("qmp"))))?,
        );
    }
    let metrics = raw
        .metrics
        .as_deref()
        .map(parse_metrics)
        .transpose()
        .map_err(|e| CliExit::Invalid(format!("{}{e}", origin.at("metrics"))))?;

    // Chardevs: the file's, each replaced by a -chardev of the same id; other -chardevs added.
    let mut chardevs: Vec<Chardev> = origin.chardevs.clone();
    let mut cli_chardevs: Vec<String> = Vec::new();
    for s in &raw.chardev {
        let c = parse_chardev(s).map_err(|e| CliExit::Invalid(e.to_string()))?;
        if cli_chardevs.contains(&c.id) {
            return Err(CliExit::Invalid(format!(
                "-chardev '{s}': Duplicate ID '{}' for chardev",
                c.id
            )));
        }
        cli_chardevs.push(c.id.clone());
        match chardevs.iter_mut().find(|d| d.id == c.id) {
            Some(slot) => *slot = c,
            None => chardevs.push(c),
        }
    }

    // Netdevs likewise, each with how an error names it.
    let mut netdevs: Vec<(String, NetdevSpec)> = origin
        .netdevs
        .iter()
        .enumerate()
        .map(|(i, n)| (origin.file_label("netdevs", i, n.id.as_str()), n.clone()))
        .collect();
    let mut cli_netdevs: Vec<NetdevSpec> = Vec::new();
    for s in &raw.netdev {
        let spec = parse_netdev(s).map_err(|e| CliExit::Invalid(format!("-netdev '{s}': {e}")))?;
        if cli_netdevs.iter().any(|n| n.id == spec.id) {
            return Err(CliExit::Invalid(format!(
                "-netdev '{s}': Duplicate ID '{}' for netdev",
                spec.id
            )));
        }
        cli_netdevs.push(spec.clone());
        let entry = (format!("-netdev '{s}'"), spec);
        match netdevs.iter_mut().find(|(_, n)| n.id == entry.1.id) {
            Some(slot) => *slot = entry,
            None => netdevs.push(entry),
        }
    }
    for (i, (label, spec)) in netdevs.iter().enumerate() {
        if let Some(name) = tap_ifname(spec) {
            if netdevs[..i]
                .iter()
                .any(|(_, n)| tap_ifname(n) == Some(name))
            {
                return Err(CliExit::Invalid(format!(
                    "{label}: ifname '{name}' is already used by another -netdev"
                )));
            }
        }
        if spec.wants_scripts() && !raw.allow_scripts {
            return Err(CliExit::Invalid(format!(
                "{label}: script=/downscript= run a program as this user; pass --allow-scripts to allow it, or use script=no,downscript=no"
            )));
        }
        if let NetdevKind::VhostUser { chardev, .. } = &spec.kind {
            if !chardevs.iter().any(|c| &c.id == chardev) {
                return Err(CliExit::Invalid(format!(
                    "{label}: chardev \"{chardev}\" not found (give -chardev socket,id={chardev},path=…)"
                )));
            }
        }
    }
    if netdevs.is_empty() && qmp.is_empty() && vde_serve.is_empty() {
        let whence = match &origin.file {
            Some(f) => format!("{}: ", f.display()),
            None => String::new(),
        };
        return Err(CliExit::Invalid(format!(
            "{whence}no ports: give -netdev ports (e.g. -netdev tap,id=a,ifname=tap0), --vde-serve DIR for vde clients, or -qmp to add them at run time"
        )));
    }
    if netdevs.len() > raw.max_ports as usize {
        return Err(CliExit::Invalid(format!(
            "{}{} ports given but --max-ports is {}",
            origin.at("max-ports"),
            netdevs.len(),
            raw.max_ports
        )));
    }
    // An empty RINGSWITCH_CORES is no setting (a script's way to turn it off).
    let env_cores = origin.cores_from_env;
    let listed = raw
        .cores
        .as_ref()
        .filter(|l| !(env_cores && l.trim().is_empty()));
    let cores = match (listed, raw.worker_cpu) {
        (Some(_), Some(_)) if !origin.cores_from_env => {
            return Err(CliExit::Invalid(format!(
                "{}--cores and --worker-cpu cannot both be given; --worker-cpu N is --cores N",
                origin.at("cores")
            )))
        }
        (_, Some(cpu)) => {
            let n = system_cpus();
            if cpu >= n {
                return Err(CliExit::Invalid(format!(
                    "{}--worker-cpu {cpu}: this machine has CPUs 0..{}",
                    origin.at("worker-cpu"),
                    n - 1
                )));
            }
            vec![cpu]
        }
        (Some(list), None) => parse_cores(list, system_cpus()).map_err(|e| {
            let whence = if origin.cores_from_env {
                "RINGSWITCH_CORES: ".to_string()
            } else {
                origin.at("cores")
            };
            CliExit::Invalid(format!("{whence}{e}"))
        })?,
        (None, None) => Vec::new(),
    };
    let workers = cores.len().max(1);
    for (label, spec) in &netdevs {
        if let Some(w) = spec.worker.filter(|w| usize::from(*w) >= workers) {
            return Err(CliExit::Invalid(format!(
                "{label}: Parameter 'worker': no worker {w}; {}",
                match workers {
                    1 => "the switch runs worker 0 only (give --cores to run more)".to_string(),
                    n => format!("--cores starts workers 0 to {}", n - 1),
                }
            )));
        }
    }
    Ok(Args {
        netdevs: netdevs.into_iter().map(|(_, n)| n).collect(),
        chardevs,
        vde_serve,
        cores,
        mac_ageing: raw.mac_ageing,
        mac_table_size: raw.mac_table_size as usize,
        max_frame_size: raw.max_frame_size as usize,
        rx_depth: raw.rx_depth,
        rx_multishot: !raw.no_rx_multishot,
        tap_rx: match raw.tap_rx.as_str() {
            "multishot" if !raw.no_rx_multishot => TapRx::Multishot,
            "polled" => TapRx::Polled,
            _ => TapRx::Reads,
        },
        rx_filter_bpf: raw.rx_filter_bpf == "auto",
        rx_coalesce_us: raw.rx_coalesce_us,
        poll: match raw.poll.as_str() {
            "busy" => PollMode::Busy,
            "sleep" => PollMode::Sleep,
            _ => PollMode::Adaptive,
        },
        poll_max_us: raw.poll_max_us,
        stats_json: raw.stats_json,
        allow_scripts: raw.allow_scripts,
        qmp,
        qmp_allow_remote: raw.qmp_allow_remote,
        metrics,
        max_ports: raw.max_ports as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringswitch_backends::ChardevSocket;

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
        assert_eq!(a.max_frame_size, 65535);
    }

    #[test]
    fn multishot_receive_is_asked_for_unless_declined() {
        assert!(p(&["-netdev", "tap,id=a"]).unwrap().rx_multishot);
        assert!(
            !p(&["-netdev", "tap,id=a", "--no-rx-multishot"])
                .unwrap()
                .rx_multishot
        );
    }

    #[test]
    fn coalescing_wait_defaults_to_50_us_and_0_turns_it_off() {
        assert_eq!(p(&["-netdev", "tap,id=a"]).unwrap().rx_coalesce_us, 50);
        let a = p(&["-netdev", "tap,id=a", "--rx-coalesce-us", "0"]).unwrap();
        assert_eq!(a.rx_coalesce_us, 0);
        assert!(p(&["-netdev", "tap,id=a", "--rx-coalesce-us", "20000"]).is_err());
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
                a.cores.clone(),
                a.mac_ageing,
                a.mac_table_size,
                a.max_frame_size
            ),
            (vec![0], 10, 1024, 9018)
        );
        assert_eq!(
            a.stats_json.as_deref(),
            Some(std::path::Path::new("/tmp/x.json"))
        );
    }

    #[test]
    fn core_lists_take_numbers_and_ranges() {
        assert_eq!(parse_cores("2-5,8", 16), Ok(vec![2, 3, 4, 5, 8]));
        assert_eq!(parse_cores("1,0", 2), Ok(vec![1, 0]));
        assert_eq!(parse_cores("3-3", 4), Ok(vec![3]));
        assert_eq!(parse_cores("0-63", 128).map(|c| c.len()), Ok(64));
        for (list, wanted) in [
            ("", "no CPUs"),
            (" ", "no CPUs"),
            ("1,", "'' is not a CPU number"),
            ("a", "'a' is not a CPU number"),
            ("1-", "'' is not a CPU number"),
            ("-1", "'' is not a CPU number"),
            ("1-2-3", "'2-3' is not a CPU number"),
            ("5-2", "range 5-2 is reversed; write 2-5"),
            ("1,0-2", "CPU 1 is listed twice"),
            ("0,0", "CPU 0 is listed twice"),
            ("0-64", "more than 64 CPUs"),
            ("0-18446744073709551615", "more than 64 CPUs"),
            ("0,16", "CPU 16: this machine has CPUs 0..15"),
        ] {
            let e = parse_cores(list, 16).unwrap_err();
            assert!(e.starts_with(&format!("--cores '{list}': ")), "{list}: {e}");
            assert!(e.contains(wanted), "{list}: wanted {wanted:?} in {e}");
        }
    }

    #[test]
    fn cores_and_worker_cpu_are_one_setting() {
        let a = p(&["-netdev", "tap,id=a", "--cores", "0"]).unwrap();
        assert_eq!(a.cores, [0]);
        // Whatever RINGSWITCH_CORES says, an explicit --worker-cpu wins over it.
        let a = p(&["-netdev", "tap,id=a", "--worker-cpu", "0"]).unwrap();
        assert_eq!(a.cores, [0]);
        assert!(
            invalid(&["-netdev", "tap,id=a", "--cores", "0", "--worker-cpu", "0"])
                .contains("--cores and --worker-cpu cannot both be given")
        );
        assert!(invalid(&["-netdev", "tap,id=a", "--cores", "4096"])
            .contains("--cores '4096': CPU 4096: this machine has CPUs 0.."));
        assert!(invalid(&["-netdev", "tap,id=a", "--cores", "1-0"]).contains("reversed"));
        assert!(invalid(&["-netdev", "tap,id=a,worker=1", "--worker-cpu", "0"])
            .contains("-netdev 'tap,id=a,worker=1': Parameter 'worker': no worker 1; the switch runs worker 0 only"));
        // RINGSWITCH_CORES overrides a file's "cores": what follows holds without it.
        if std::env::var_os("RINGSWITCH_CORES").is_some_and(|v| !v.is_empty()) {
            return;
        }
        let f = config_file(r#"{"netdevs": [{"type": "tap", "id": "a"}], "cores": "0"}"#);
        assert_eq!(p(&["--config", &f]).unwrap().cores, [0]);
        // The command line's --worker-cpu replaces the file's --cores, as any option would.
        assert_eq!(
            p(&["--config", &f, "--worker-cpu", "0"]).unwrap().cores,
            [0]
        );
        let _ = std::fs::remove_file(&f);
        let f = config_file(
            r#"{"netdevs": [{"type": "tap", "id": "a"}], "cores": "0", "worker-cpu": 0}"#,
        );
        let e = invalid(&["--config", &f]);
        assert!(
            e.contains("member \"cores\": --cores and --worker-cpu cannot both be given"),
            "{e}"
        );
        let _ = std::fs::remove_file(&f);
    }

    #[test]
    fn qmp_addresses_in_qemu_syntax() {
        let a = p(&[
            "-qmp",
            "unix:/tmp/q.sock,server=on,wait=off",
            "--qmp",
            "tcp:127.0.0.1:4444,server=on",
            "-qmp",
            "unix:/tmp/x,,y,server,nowait",
        ])
        .unwrap();
        assert_eq!(
            a.qmp,
            vec![
                QmpAddr::Unix("/tmp/q.sock".into()),
                QmpAddr::Tcp("127.0.0.1:4444".parse().unwrap()),
                QmpAddr::Unix("/tmp/x,y".into()),
            ]
        );
        assert!(a.netdevs.is_empty(), "-qmp alone is a valid start");
        assert!(invalid(&["-qmp", "unix:/tmp/q"]).contains("server=on"));
        assert!(invalid(&["-qmp", "unix:/tmp/q,server=on,bogus=1"]).contains("'bogus=1'"));
        assert!(invalid(&["-qmp", "stdio,server=on"]).contains("unknown address"));
        assert!(invalid(&["-qmp", "tcp:nohost,server=on"]).contains("HOST:PORT"));
        assert!(invalid(&["-qmp", "unix:,server=on"]).contains("socket path"));
        assert!(invalid(&[
            "-netdev",
            "tap,id=a",
            "-netdev",
            "tap,id=b",
            "--max-ports",
            "1"
        ])
        .contains("--max-ports is 1"));
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
        assert!(invalid(&[
            "-netdev",
            "tap,id=a,ifname=t0",
            "-netdev",
            "tap,id=b,ifname=t0"
        ])
        .contains("ifname 't0'"));
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

    /// Writes `json` to a file of its own; its path.
    fn config_file(json: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "rs-cli-config-{}-{}.json",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, json).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn ids_and_ifnames(a: &Args) -> Vec<(String, Option<String>)> {
        a.netdevs
            .iter()
            .map(|n| (n.id.as_str().to_string(), tap_ifname(n).map(String::from)))
            .collect()
    }

    #[test]
    fn a_config_files_netdev_takes_an_rx_filter_inline() {
        let f = config_file(
            r#"{"netdevs": [{"type": "tap", "id": "a", "rx-filter": {
                "promiscuous": false, "multicast": "none", "unicast": "normal", "vlan": "all",
                "broadcast-allowed": true, "multicast-overflow": false,
                "unicast-overflow": false, "main-mac": "52:54:00:00:00:0a", "vlan-table": [],
                "unicast-table": [], "multicast-table": []}}]}"#,
        );
        let a = p(&["--config", &f]).unwrap();
        let rx = a.netdevs[0]
            .rx_filter
            .as_ref()
            .expect("the netdev's rx-filter");
        assert!(!rx.promiscuous && rx.main_mac.to_string() == "52:54:00:00:00:0a");
        let bad = config_file(r#"{"netdevs": [{"type": "tap", "id": "a", "rx-filter": {}}]}"#);
        let e = p(&["--config", &bad]).unwrap_err();
        assert!(
            matches!(&e, CliExit::Invalid(m) if m.contains("Parameter 'rx-filter': Parameter 'promiscuous' is missing")),
            "{e:?}"
        );
    }

    #[test]
    fn config_file_options_go_through_the_command_lines_table() {
        let f = config_file(
            r#"{"netdevs": [{"type": "tap", "id": "a", "ifname": "t0"}], "mac-ageing": 10,
                "worker-cpu": 0, "allow-scripts": true, "qmp": "unix:/tmp/q,server=on",
                "tap-rx": "reads", "max-frame-size": "9018"}"#,
        );
        let a = p(&["--config", &f]).unwrap();
        assert_eq!(
            (a.mac_ageing, a.cores.clone(), a.max_frame_size),
            (10, vec![0], 9018)
        );
        assert!(a.allow_scripts);
        assert_eq!(a.tap_rx, TapRx::Reads);
        assert_eq!(a.qmp, vec![QmpAddr::Unix("/tmp/q".into())]);
        assert_eq!(ids_and_ifnames(&a), [("a".into(), Some("t0".into()))]);

        // The command line overrides: values, the -qmp list, the netdev of the same id.
        let a = p(&[
            "--config",
            &f,
            "--mac-ageing",
            "20",
            "-netdev",
            "tap,id=a,ifname=t1",
            "-netdev",
            "tap,id=b",
            "-qmp",
            "unix:/tmp/r,server=on",
        ])
        .unwrap();
        assert_eq!((a.mac_ageing, a.max_frame_size), (20, 9018));
        assert_eq!(a.qmp, vec![QmpAddr::Unix("/tmp/r".into())]);
        assert_eq!(
            ids_and_ifnames(&a),
            [("a".into(), Some("t1".into())), ("b".into(), None)]
        );
        let _ = std::fs::remove_file(&f);
    }

    #[test]
    fn config_file_chardevs_are_chardev_add_objects_and_the_command_line_replaces_by_id() {
        let f = config_file(
            r#"{"chardevs": [{"id": "c", "backend": {"type": "socket", "data": {
                   "addr": {"type": "unix", "data": {"path": "/tmp/vu.sock"}}, "server": true}}}],
                "netdevs": [{"type": "vhost-user", "id": "v", "chardev": "c"}]}"#,
        );
        let a = p(&["--config", &f]).unwrap();
        assert_eq!(a.chardevs.len(), 1);
        assert_eq!(
            a.chardevs[0].socket,
            ChardevSocket::Listen("/tmp/vu.sock".into())
        );
        let a = p(&[
            "--config",
            &f,
            "-chardev",
            "socket,id=c,path=/tmp/other.sock,server=on",
            "-chardev",
            "socket,id=d,path=/tmp/d.sock,server=on",
        ])
        .unwrap();
        let shown: Vec<_> = a
            .chardevs
            .iter()
            .map(|c| (c.id.as_str(), c.socket.path().to_str().unwrap()))
            .collect();
        assert_eq!(shown, [("c", "/tmp/other.sock"), ("d", "/tmp/d.sock")]);
        let _ = std::fs::remove_file(&f);
    }

    #[test]
    fn config_file_errors_name_the_file_and_the_member() {
        let tap = r#""netdevs": [{"type": "tap", "id": "a"}]"#;
        for (json, wanted) in [
            (
                format!("{{{tap}, \"mac-ageing\": \"x\"}}"),
                "member \"mac-ageing\": invalid value 'x'",
            ),
            (
                format!("{{{tap}, \"worker-cpu\": 4096}}"),
                "member \"worker-cpu\": --worker-cpu 4096",
            ),
            (
                format!("{{{tap}, \"metrics\": \"udp:1\"}}"),
                "member \"metrics\": --metrics 'udp:1'",
            ),
            (
                format!("{{{tap}, \"help\": true}}"),
                "member \"help\": unknown member",
            ),
            (
                format!("{{{tap}, \"config\": \"x\"}}"),
                "member \"config\": a config file cannot",
            ),
            (
                r#"{"netdevs": [{"type": "tap", "id": "a", "script": "/bin/true"}]}"#.into(),
                "netdevs[0] (id 'a'): script=/downscript=",
            ),
            (
                r#"{"netdevs": [{"type": "vhost-user", "id": "v", "chardev": "c"}]}"#.into(),
                "netdevs[0] (id 'v'): chardev \"c\" not found",
            ),
            (
                r#"{"chardevs": [{"id": "c"}], "qmp": "unix:/tmp/q,server=on"}"#.into(),
                "member \"chardevs\"[0]: Parameter 'backend' is missing",
            ),
        ] {
            let f = config_file(&json);
            let e = invalid(&["--config", &f]);
            assert!(e.starts_with(&format!("{f}: ")), "{json}: {e}");
            assert!(e.contains(wanted), "{json}: wanted {wanted:?} in {e}");
            let _ = std::fs::remove_file(&f);
        }
    }

    #[test]
    fn metrics_address_defaults_to_loopback() {
        let a = p(&["-qmp", "unix:/tmp/q,server=on", "--metrics", "tcp:9100"]).unwrap();
        assert_eq!(a.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        let a = p(&[
            "-qmp",
            "unix:/tmp/q,server=on",
            "--metrics",
            "tcp:0.0.0.0:9100",
        ])
        .unwrap();
        assert_eq!(a.metrics, Some("0.0.0.0:9100".parse().unwrap()));
        let a = p(&["-qmp", "unix:/tmp/q,server=on"]).unwrap();
        assert_eq!(a.metrics, None);
        for bad in ["9100", "tcp:", "tcp:nohost:x", "unix:/tmp/m", "tcp:99999"] {
            let e = invalid(&["-qmp", "unix:/tmp/q,server=on", "--metrics", bad]);
            assert!(e.contains(&format!("--metrics '{bad}'")), "{bad}: {e}");
        }
    }
}
