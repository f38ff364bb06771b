"""The switches perf/bench measures, each set up between two namespaces A and B: the
generator sends on `if_a` in A, delivery is counted on `if_b` in B, and the switch's CPU
time is that of `pids`. ringswitch and the two reference forwarders (rs-rwfwd: one blocking
read()+write() per frame, the floor; rs-urfwd: a hand-written io_uring read->write loop,
what a careful C programmer gets) run on taps; the Linux bridge and the direct veth pair
(the generator's own ceiling) on veths; QEMU's hub, vde_switch and Open vSwitch come from
perf/peers.py and are installed from Debian when missing. `baseline` is another ringswitch
binary (perf/bench --baseline PATH, e.g. a build of an older commit) run exactly as
ringswitch is, for before/after comparisons in one run. `ringswitch-busy`,
`ringswitch-sleep` and `ringswitch-adaptive` are the same ringswitch binary with
`--poll busy|sleep|adaptive` added to its arguments (VARIANTS), to compare its poll modes
in one run; plain `ringswitch` runs with the binary's default. `ringswitch-vnet` is the
same binary with `vnet_hdr=on` on both tap netdevs (a virtio-net header and the tap's
TSO/checksum offloads, QEMU's option): whole 64 KiB TCP segments cross it (perf/bench tcp).

    start(kind, topo, cpu, logs, tag) -> Started

Everything it creates is registered with `topo`, so `topo.close()` removes it even after
an error."""

import hashlib
import os
import re
import shutil
import sys
import tempfile

from .system import (ROOT, BenchError, PREFIX, RELEASE, Topology, log, mac_of, ns_exec, run,
                     wait_ready)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import peers  # noqa: E402  (perf/peers.py)

BUILTIN = ["ringswitch", "bridge", "rwfwd", "urfwd", "direct"]
PEER_NAMES = list(peers.PEERS)
ALL = ["ringswitch", "bridge", *PEER_NAMES, "urfwd", "rwfwd", "direct"]
# ringswitch run with extra options: name -> (options added to its command line, how
# tables name it, options added to each of its two `-netdev tap,...` specs). Same binary,
# same taps, pinning and --ringswitch-args as `ringswitch`.
VARIANTS = {
    "ringswitch-adaptive": (["--poll", "adaptive"], "ringswitch --poll adaptive", []),
    "ringswitch-busy": (["--poll", "busy"], "ringswitch --poll busy", []),
    "ringswitch-sleep": (["--poll", "sleep"], "ringswitch --poll sleep", []),
    "ringswitch-vnet": ([], "ringswitch vnet_hdr=on", ["vnet_hdr=on"]),
    # Two workers, one tap each (the controller spreads them: a, the generator's side, on
    # worker 0), so every frame crosses between workers; instead of --worker-cpu. Worker 0
    # gets the switch CPU (1) and worker 1 the generator's (0): on two cores one worker has
    # to share with the generator.
    "ringswitch-2w": (["--cores", "1,0"], "ringswitch --cores 1,0 (a worker per tap)", []),
}
# What --switches accepts: `baseline` only runs with --baseline PATH and the variants only
# when named, so they are not in ALL (the default set of a run without --baseline).
SELECTABLE = [*ALL, "baseline", *VARIANTS]
# Switches whose process does the forwarding (a CPU column); the bridge and the direct
# pair forward in the kernel on the generator's core.
KERNEL = {"bridge", "direct"}

LABELS = {
    "ringswitch": "ringswitch (tap)",
    "bridge": "Linux bridge (veth)",
    "rwfwd": "rs-rwfwd read()/write() forwarder (tap)",
    "urfwd": "rs-urfwd hand-written io_uring forwarder (tap)",
    "direct": "no switch: direct veth (generator ceiling)",
}
BINARIES = {"ringswitch": "ringswitch", "rwfwd": "rs-rwfwd", "urfwd": "rs-urfwd"}
# Extra command-line options for ringswitch (perf/bench --ringswitch-args); the baseline
# gets them too.
RINGSWITCH_ARGS = []
# The poll mode each build or variant of ringswitch reported on its start-up line
# ("poll=busy"): kind -> set of modes seen (builds that do not say are absent).
POLL_SEEN = {}
# The baseline ringswitch binary (perf/bench --baseline PATH): absolute path, or None.
BASELINE = [None]
# The builds and variants of ringswitch: run the same way, with the same arguments (plus a
# variant's own); measured as a group that takes turns (methods.run_group).
RINGSWITCHES = ("ringswitch", "baseline", *VARIANTS)


def set_baseline(path):
    BASELINE[0] = os.path.abspath(path) if path else None


def baseline_name():
    return os.path.basename(BASELINE[0]) if BASELINE[0] else "not given"


def builds_summary():
    """One line naming the two ringswitch binaries compared, with a digest of each so a
    report says whether they differ at all."""
    def digest(path):
        try:
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()[:12]
        except OSError as e:
            return f"unreadable: {e.strerror}"
    mine, base = binary("ringswitch"), BASELINE[0]
    dm, db = digest(mine), digest(base)
    same = " — the same file content: the comparison shows only noise" if dm == db else ""
    return (f"Builds compared: ringswitch = `{mine}` (sha256 {dm}…), ringswitch baseline = "
            f"`{base}` (sha256 {db}…){same}.")


def binary(kind):
    """The executable of one of our switches (ringswitch and its variants, baseline, rwfwd,
    urfwd)."""
    if kind == "baseline":
        return BASELINE[0]
    if kind in VARIANTS:
        return os.path.join(RELEASE, BINARIES["ringswitch"])
    return os.path.join(RELEASE, BINARIES[kind])


def variant_args(kind):
    """The options a ringswitch variant adds to the command line ([] for any other)."""
    return list(VARIANTS[kind][0]) if kind in VARIANTS else []


def variant_netdev_opts(kind):
    """The options a ringswitch variant adds to each of its tap netdevs ([] for any
    other), e.g. ["vnet_hdr=on"]."""
    return list(VARIANTS[kind][2]) if kind in VARIANTS else []


def variant_desc(kind):
    """What a variant changes, in words: `--poll busy`, `vnet_hdr=on on both taps`."""
    args, _, opts = VARIANTS[kind]
    return " ".join([*args, *([f"{','.join(opts)} on both taps"] if opts else [])])


def label(kind, ports="tap"):
    """How a switch is named in tables; `ports` says over what its ports run (tap, UDP
    socket ports) for the builds of ringswitch."""
    if kind == "baseline":
        return f"ringswitch baseline ({baseline_name()}, {ports})"
    if kind in VARIANTS:
        return f"{VARIANTS[kind][1]} ({ports})"
    if kind in peers.PEERS:
        return peers.PEERS[kind].label
    return LABELS[kind]


class Started:
    """Where to send (ns_a/if_a), where to count (ns_b/if_b), whose CPU (pids)."""

    def __init__(self, ns_a, if_a, ns_b, if_b, pids, stats_json=None):
        self.ns_a, self.if_a, self.ns_b, self.if_b = ns_a, if_a, ns_b, if_b
        self.pids = pids
        self.stats_json = stats_json
        self.mac_a = mac_of(ns_a, if_a)
        self.mac_b = mac_of(ns_b, if_b)


def availability(kind):
    """None if `kind` can run here, else the reason (one line); installs peers."""
    if kind in peers.PEERS:
        return peers.PEERS[kind].ensure_installed(log)
    if kind == "baseline":
        exe = BASELINE[0]
        if not exe:
            return "no --baseline PATH given"
        if not os.path.isfile(exe) or not os.access(exe, os.X_OK):
            return f"{exe} is not an executable file"
        return None
    if (kind in BINARIES or kind in VARIANTS) and not os.access(binary(kind), os.X_OK):
        return f"{binary(kind)} is missing (build failed?)"
    if kind in VARIANTS:
        return (_refused_options(binary(kind), variant_args(kind))
                or _refused_netdev_opts(binary(kind), variant_netdev_opts(kind)))
    return None


def _refused_options(exe, args):
    """None if `exe --help` mentions every option in `args`, else why not: a build
    without the option would only exit with a usage error at start."""
    if not args:
        return None
    try:
        text = run([exe, "--help"], check=False)
    except BenchError as e:
        return f"{exe} --help: {e}"
    missing = [a for a in args if a.startswith("-") and not re.search(
        rf"(^|[\s,\[]){re.escape(a)}([\s=,\]]|$)", text, re.M)]
    if missing:
        return (f"this build of ringswitch has no {' '.join(missing)} option (not in "
                f"`{os.path.relpath(exe, ROOT)} --help`)")
    return None


# (binary, netdev options) -> None or why that build refuses them: probed once per run.
_NETDEV_PROBES = {}


def _refused_netdev_opts(exe, opts):
    """None if `exe` starts with `opts` on a tap netdev, else why not. Probed once per
    binary by starting it for real on a tap in a namespace of its own (a build that does
    not know an option refuses it on the command line; one that knows it may still fail to
    open the tap with it), then stopping it."""
    if not opts:
        return None
    key = (exe, tuple(opts))
    if key not in _NETDEV_PROBES:
        _NETDEV_PROBES[key] = _probe_netdev_opts(exe, opts)
    return _NETDEV_PROBES[key]


def _probe_netdev_opts(exe, opts):
    spec = ",".join(opts)
    topo = Topology()
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}-probe-")
    try:
        ns = topo.netns("probe")
        err = os.path.join(tmp, "stderr")
        cmd = ns_exec(ns, exe, "-netdev", f"tap,id=a,ifname={PREFIX}pa,{spec}",
                      "-netdev", f"tap,id=b,ifname={PREFIX}pb,{spec}", *RINGSWITCH_ARGS)
        proc = topo.spawn(cmd, None, os.path.join(tmp, "stdout"), err)
        try:
            wait_ready(proc, err, "ringswitch: ready")
        except BenchError as e:
            with open(err, errors="replace") as f:
                lines = [x.strip() for x in f.read().splitlines() if x.strip()]
            why = " | ".join(lines[-2:]) or str(e)
            shown = os.path.relpath(exe, ROOT) if exe.startswith(ROOT + os.sep) else exe
            return (f"this build of ringswitch does not start with {spec} on its taps "
                    f"(`{shown} -netdev tap,...,{spec}`: {why})")
        return None
    except BenchError as e:
        return f"could not probe {spec} on a tap: {e}"
    finally:
        topo.close()
        shutil.rmtree(tmp, ignore_errors=True)


def start(kind, topo, cpu, logs, tag):
    ns_a, ns_b = topo.netns("a"), topo.netns("b")
    if kind in peers.PEERS:
        try:
            st = peers.PEERS[kind].start(topo, ns_a, ns_b, cpu, logs, tag)
        except peers.PeerError as e:
            raise BenchError(str(e)) from None
        return Started(ns_a, st.if_a, ns_b, st.if_b, list(st.pids))
    if kind in BINARIES or kind in RINGSWITCHES:
        return _tap_switch(kind, topo, ns_a, ns_b, cpu, logs, tag)
    if kind == "bridge":
        return _bridge(topo, ns_a, ns_b)
    if kind == "direct":
        return _direct(ns_a, ns_b)
    raise BenchError(f"unknown switch '{kind}'")


def _tap_switch(kind, topo, ns_a, ns_b, cpu, logs, tag):
    """Starts a tap-based switch of ours on two new taps, moves them into A and B. The
    baseline build and the variants run exactly as ringswitch does (a variant with its
    options added)."""
    tap_a, tap_b = f"{PREFIX}ta", f"{PREFIX}tb"
    exe = binary(kind)
    stats = None
    if kind in RINGSWITCHES:
        stats = os.path.join(logs, f"{tag}.stats.json")
        opts = "".join(f",{o}" for o in variant_netdev_opts(kind))
        extra = variant_args(kind)
        pin_args = [] if "--cores" in extra else ["--worker-cpu", str(cpu)]
        cmd = [exe, "-netdev", f"tap,id=a,ifname={tap_a}{opts}",
               "-netdev", f"tap,id=b,ifname={tap_b}{opts}", *pin_args,
               "--stats-json", stats, *RINGSWITCH_ARGS, *extra]
        marker = "ringswitch: ready"
    else:
        cmd = [exe, tap_a, tap_b, "--cpu", str(cpu)]
        marker = f"{BINARIES[kind]}: ready"
    err = os.path.join(logs, f"{tag}.stderr")
    # ringswitch pins its worker to `cpu` itself (--worker-cpu) and keeps its control thread
    # off that core, as it is deployed; confining the whole process to `cpu` would put the
    # control thread's ticks (about 50 a second) on the worker's core. The peers are one
    # thread (or one process) and are confined to `cpu`.
    pin = None if kind in RINGSWITCHES else cpu
    proc = topo.spawn(cmd, pin, os.path.join(logs, f"{tag}.stdout"), err)
    wait_ready(proc, err, marker)
    if kind in RINGSWITCHES:
        _note_poll_mode(kind, err)
    for tap, ns in ((tap_a, ns_a), (tap_b, ns_b)):
        run(["ip", "link", "set", tap, "netns", ns])
        run(["ip", "-n", ns, "link", "set", tap, "up"])
    return Started(ns_a, tap_a, ns_b, tap_b, [proc.pid], stats)


def _note_poll_mode(kind, stderr_path):
    with open(stderr_path, errors="replace") as f:
        m = re.search(r"\bpoll=([a-z-]+)", f.read())
    if m:
        POLL_SEEN.setdefault(kind, set()).add(m.group(1))


def poll_summary():
    """One line: the poll mode each ringswitch build or variant said it ran in, and
    whether RINGSWITCH_POLL in the environment chose plain ringswitch's; "" if none
    said."""
    text = ""
    if POLL_SEEN:
        text = "Poll modes from the switches' start-up lines: " + "; ".join(
            f"{label(k)}: {', '.join(sorted(v))}" for k, v in POLL_SEEN.items()) + "."
    env = os.environ.get("RINGSWITCH_POLL")
    if env:
        text += (f" RINGSWITCH_POLL={env} was set in the environment: plain ringswitch (and "
                 "the baseline) ran in that mode rather than the binary's default.")
    return text.strip()


def _bridge(topo, ns_a, ns_b):
    ns_br = topo.netns("br")
    for ns, v, p in ((ns_a, "va", "pa"), (ns_b, "vb", "pb")):
        run(["ip", "-n", ns, "link", "add", v, "type", "veth", "peer", "name", p,
             "netns", ns_br])
    run(["ip", "-n", ns_br, "link", "add", "br0", "type", "bridge", "stp_state", "0"])
    for port in ("pa", "pb"):
        run(["ip", "-n", ns_br, "link", "set", port, "master", "br0"])
        run(["ip", "-n", ns_br, "link", "set", port, "up"])
    run(["ip", "-n", ns_br, "link", "set", "br0", "up"])
    run(["ip", "-n", ns_a, "link", "set", "va", "up"])
    run(["ip", "-n", ns_b, "link", "set", "vb", "up"])
    return Started(ns_a, "va", ns_b, "vb", [])


def _direct(ns_a, ns_b):
    run(["ip", "-n", ns_a, "link", "add", "va", "type", "veth", "peer", "name", "vb",
         "netns", ns_b])
    run(["ip", "-n", ns_a, "link", "set", "va", "up"])
    run(["ip", "-n", ns_b, "link", "set", "vb", "up"])
    return Started(ns_a, "va", ns_b, "vb", [])
