"""perf/bench vde: frames tap -> vde -> tap, ringswitch's two vde modes against vde_switch
alone, in one run. rs-gen in namespace A sends into a tap as fast as it can (as in
throughput); B's interface counts what arrived (rx_packets, no sink process). Each kind is
a chain of processes, all of them pinned to --switch-cpu (ringswitch's worker with
--worker-cpu; its control thread, which serves no frames, stays off that core as in the
other methods):

    vde-client    tap A -> ringswitch (-netdev vde) -> vde_switch -> vde_plug2tap -> tap B
    vde-serve     tap A -> ringswitch (--vde-serve DIR) -> vde_plug2tap -> tap B
    vde-plug2tap  tap A -> vde_plug2tap -> vde_switch -> vde_plug2tap -> tap B (reference)
    vde-tap       tap A -> vde_switch -t A -t B -> tap B (only when named: vde_switch's own
                  tuntap ports, perf/peers.py's `vde`; what the vde_plug2tap relays cost)
    vde-client-baseline  vde-client with the --baseline binary (only when named, with
                  --baseline: a before/after comparison in one run)
    vde-serve-baseline   vde-serve with the --baseline binary (the same)
    vde-qemu      tap A -> QEMU 7.2 (-netdev tap and -netdev vde joined by a guest-less
                  hub: libvdeplug) -> vde_switch -> vde_plug2tap -> tap B (only when named:
                  QEMU's own figure in ringswitch's place in vde-client)

Between the processes frames travel one per unix datagram (vde2's data sockets). vde_plug2tap
(vde2) runs inside its namespace (`ip netns exec`), where it creates its tap; its tap is
then set up. Switch CPU is the sum of every process of the chain, vde_plug2tap included;
each process's share is kept too (`cpu_split`). Every run starts the chain afresh, checks
that a broadcast from B reaches A (which also teaches the switches where B is), then runs
the generator for --duration s; the kinds take turns run by run (A B C, C B A, ...).

`start(kind, topo, cpu, logs, tag)` returns a `switches.Started` (with `names`: pid -> the
process's name), so `perf/bench profile --switches vde-serve,vde-plug2tap` profiles the
same chains."""

import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from . import switches
from .methods import pair_order, undisturbed
from .system import (DISTURBED, PREFIX, BenchError, Topology, cpu_seconds, log, ns_exec, run,
                     rx_packets, wait_ready)
from .traffic import derive, offered, teach

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import peers  # noqa: E402  (perf/peers.py: vde2's install and vde_switch's clean stop)

KINDS = ["vde-client", "vde-serve", "vde-plug2tap"]
BASELINES = ["vde-client-baseline", "vde-serve-baseline"]
ALL = [*KINDS, "vde-tap", *BASELINES, "vde-qemu"]
REFERENCE = "vde-plug2tap"
LABELS = {
    "vde-client": "ringswitch -netdev vde → vde_switch → vde_plug2tap",
    "vde-serve": "ringswitch --vde-serve ← vde_plug2tap",
    "vde-plug2tap": "vde_plug2tap → vde_switch → vde_plug2tap (reference)",
    "vde-tap": "vde_switch -t (its own taps, no vde_plug2tap)",
    "vde-client-baseline": "the --baseline build -netdev vde → vde_switch → vde_plug2tap",
    "vde-serve-baseline": "the --baseline build --vde-serve ← vde_plug2tap",
    "vde-qemu": "QEMU 7.2 -netdev vde (hub) → vde_switch → vde_plug2tap",
}
PATHS = {
    "vde-client": "tap A → ringswitch → vde_switch → vde_plug2tap → tap B",
    "vde-serve": "tap A → ringswitch → vde_plug2tap → tap B",
    "vde-plug2tap": "tap A → vde_plug2tap → vde_switch → vde_plug2tap → tap B",
    "vde-tap": "tap A → vde_switch → tap B",
    "vde-client-baseline": "tap A → baseline ringswitch → vde_switch → vde_plug2tap → tap B",
    "vde-serve-baseline": "tap A → baseline ringswitch → vde_plug2tap → tap B",
    "vde-qemu": "tap A → QEMU (tap, hub, libvdeplug) → vde_switch → vde_plug2tap → tap B",
}
SIZES = [64, 1518]
PATH_TIMEOUT = 10  # seconds for a broadcast from B to reach A through a new chain


# ---------------------------------------------------------------- the chains

def _vde_switch(topo, d, cpu, logs, tag):
    """vde_switch serving `d` (which it creates), no taps, no rc file, stdin a pipe we hold
    (closing it is its clean exit, as for perf/peers.py's vde)."""
    err = os.path.join(logs, f"{tag}.vde_switch.stderr")
    try:
        p = peers._popen(["vde_switch", "-f", "/dev/null", "-s", d], cpu,
                         os.path.join(logs, f"{tag}.vde_switch.stdout"), err, stdin_pipe=True)
    except peers.PeerError as e:
        raise BenchError(str(e)) from None
    topo.procs.append(p)
    topo.add_cleanup(lambda: peers.Vde._stop(p))
    _wait(lambda: os.path.exists(os.path.join(d, "ctl")), [(p, err, "vde_switch")],
          "vde_switch's control socket")
    return p


def _plug2tap(topo, ns, sock, tap, cpu, logs, tag):
    """vde_plug2tap plugged into `sock`, its tap `tap` created in namespace `ns` and set up."""
    name = f"vde_plug2tap-{tap[-1]}"
    err = os.path.join(logs, f"{tag}.{name}.stderr")
    p = topo.spawn(ns_exec(ns, "vde_plug2tap", "-s", sock, tap), cpu,
                   os.path.join(logs, f"{tag}.{name}.stdout"), err)

    def exists():
        return subprocess.run(["ip", "-n", ns, "link", "show", "dev", tap],
                              capture_output=True).returncode == 0
    _wait(exists, [(p, err, "vde_plug2tap")], f"vde_plug2tap's tap {tap}")
    run(["ip", "-n", ns, "link", "set", tap, "up"])
    return p, name


def _ringswitch(topo, ports, cpu, logs, tag, extra=(), build="ringswitch"):
    """ringswitch (`build`: or baseline) with a tap port (moved into A by the caller) and
    `extra` options."""
    stats = os.path.join(logs, f"{tag}.stats.json")
    cmd = [switches.binary(build), "-netdev", f"tap,id=a,ifname={ports}",
           *extra, "--worker-cpu", str(cpu), "--stats-json", stats, *switches.RINGSWITCH_ARGS]
    err = os.path.join(logs, f"{tag}.ringswitch.stderr")
    p = topo.spawn(cmd, None, os.path.join(logs, f"{tag}.ringswitch.stdout"), err)
    wait_ready(p, err, "ringswitch: ready")
    return p, stats


def _qemu(topo, tap, sock, cpu, logs, tag):
    """QEMU 7.2 with no machine and no guest: its tap backend `tap` and its vde backend
    (libvdeplug, plugged into `sock`) joined by hub 0, every thread pinned to `cpu`."""
    err = os.path.join(logs, f"{tag}.qemu.stderr")
    cmd = ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
           "-netdev", f"tap,id=t,ifname={tap},script=no,downscript=no",
           "-netdev", f"vde,id=v,sock={sock}",
           "-netdev", "hubport,id=h0,hubid=0,netdev=t",
           "-netdev", "hubport,id=h1,hubid=0,netdev=v"]
    p = topo.spawn(cmd, cpu, os.path.join(logs, f"{tag}.qemu.stdout"), err)

    def exists():
        return subprocess.run(["ip", "link", "show", "dev", tap],
                              capture_output=True).returncode == 0
    _wait(exists, [(p, err, "qemu-system-x86_64")], f"QEMU's tap {tap}")
    return p


def _wait(cond, watch, what):
    deadline = time.monotonic() + PATH_TIMEOUT
    while not cond():
        for p, err, name in watch:
            if p.poll() is not None:
                raise BenchError(f"{name} exited with status {p.returncode} before "
                                 f"{what} appeared: {peers._tail(err)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not appear within {PATH_TIMEOUT}s")
        time.sleep(0.05)


def start(kind, topo, cpu, logs, tag):
    """Starts chain `kind` between two new namespaces; returns a switches.Started whose
    `pids` are every process of the chain and `names` their names."""
    if kind == "vde-tap":
        st = switches.start("vde", topo, cpu, logs, tag)
        st.names = {pid: "vde_switch" for pid in st.pids}
        return _checked(st)
    ns_a, ns_b = topo.netns("a"), topo.netns("b")
    d = tempfile.mkdtemp(prefix=f"{PREFIX}-vde-")
    topo.add_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    sock = os.path.join(d, "sw")  # made (and removed) by the switch that serves it
    tap_a, tap_b = f"{PREFIX}va", f"{PREFIX}vb"
    names, stats = {}, None
    if kind in ("vde-client", "vde-client-baseline", "vde-plug2tap", "vde-qemu"):
        names[_vde_switch(topo, sock, cpu, logs, tag).pid] = "vde_switch"
    if kind == "vde-plug2tap":
        p, name = _plug2tap(topo, ns_a, sock, tap_a, cpu, logs, tag)
        names[p.pid] = name
    elif kind == "vde-qemu":
        names[_qemu(topo, tap_a, sock, cpu, logs, tag).pid] = "qemu"
        run(["ip", "link", "set", tap_a, "netns", ns_a])
        run(["ip", "-n", ns_a, "link", "set", tap_a, "up"])
    else:
        client = kind in ("vde-client", "vde-client-baseline")
        extra = (["-netdev", f"vde,id=v,sock={sock}"] if client
                 else ["--vde-serve", f"{sock},id=v"])
        build = "baseline" if kind in BASELINES else "ringswitch"
        p, stats = _ringswitch(topo, tap_a, cpu, logs, tag, extra, build)
        names[p.pid] = "ringswitch"
        run(["ip", "link", "set", tap_a, "netns", ns_a])
        run(["ip", "-n", ns_a, "link", "set", tap_a, "up"])
    p, name = _plug2tap(topo, ns_b, sock, tap_b, cpu, logs, tag)
    names[p.pid] = name
    st = switches.Started(ns_a, tap_a, ns_b, tap_b, list(names), stats)
    st.names = names
    return _checked(st)


def _checked(st):
    """Broadcasts from B until one reaches A (the chain forwards, and every switch in it has
    learnt B's station); a chain that never passes one is an error."""
    deadline = time.monotonic() + PATH_TIMEOUT
    while True:
        before = rx_packets(st.ns_a, st.if_a)
        teach(st)
        if rx_packets(st.ns_a, st.if_a) > before:
            return st
        if time.monotonic() > deadline:
            raise BenchError(f"no broadcast from B reached A within {PATH_TIMEOUT}s")


# ---------------------------------------------------------------- one run

def _one(kind, size, plan, duration, logs, tag):
    topo = Topology()
    try:
        st = start(kind, topo, plan.switch_cpu, logs, tag)
        split = {}

        def measured():
            c0 = {pid: cpu_seconds(pid) for pid in st.pids}
            r = offered(st, size, duration, plan.gen_cpus, threads=plan.threads)
            for pid in st.pids:
                split[st.names[pid]] = cpu_seconds(pid) - c0[pid]
            return r

        r = undisturbed(plan, measured, duration)
        r.update(switch=kind, size=size, **derive(r, size))
        window = r["cpu_window_s"]
        r["cpu_split"] = {k: v / window * 100 for k, v in split.items()}
        notes = [r.pop("busy")] if r.get("busy") else []
        if r["others_cpu_s"] > DISTURBED * duration:
            notes.append(f"other processes used {r['others_cpu_s']:.2f} CPU-s")
        for p in topo.procs:
            if p.poll() is not None:
                notes.append(f"a process of the chain exited with status {p.returncode}")
        r["note"] = "; ".join(notes)
        return r
    finally:
        topo.close()


# ---------------------------------------------------------------- the method

def availability(kind):
    """None if chain `kind` can run here, else why not (installs vde2 when missing)."""
    why = peers.PEERS["vde"].ensure_installed(log)
    if why:
        return f"vde2: {why}"
    if not shutil.which("vde_plug2tap"):
        return "vde_plug2tap (Debian vde2) is missing"
    if kind in ("vde-client", "vde-serve") and not os.access(switches.binary("ringswitch"),
                                                            os.X_OK):
        return f"{switches.binary('ringswitch')} is missing (build failed?)"
    if kind in BASELINES and not switches.BASELINE[0]:
        return "no --baseline PATH given"
    if kind == "vde-qemu" and not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is missing"
    return None


def label(kind):
    return LABELS[kind]


def measure(plan, sizes, repeat, duration, logs, kinds=None):
    """Every chain of `kinds` (default KINDS), `repeat` runs per size, the chains taking
    turns (pair_order), each run on a freshly started chain. Returns (summary rows, run
    rows, skipped {kind: why})."""
    kinds = list(kinds or KINDS)
    skipped = {}
    for kind in list(kinds):
        why = availability(kind)
        if why:
            log(f"vde: {kind}: skipped: {why}")
            skipped[kind] = why
            kinds.remove(kind)
    runs = []
    for size in sizes:
        for rep in range(1, repeat + 1):
            for kind in pair_order(kinds, rep):
                log(f"vde: {kind}, {size} B, {duration:g} s, run {rep}")
                try:
                    # undisturbed() waits for a quiet machine before each try.
                    r = _one(kind, size, plan, duration, logs, f"vde-{kind}-{size}-{rep}")
                    log(f"  offered {r['offered_mpps']:.3f} Mpps, delivered "
                        f"{r['delivered_mpps']:.3f} Mpps, loss {r['loss_pct']:.1f}%, CPU "
                        + ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu_split"].items()))
                except (BenchError, OSError, subprocess.SubprocessError) as e:
                    log(f"  {kind}: {e}")
                    r = {"switch": kind, "size": size, "note": str(e)}
                r["run"] = rep
                runs.append(r)
    for kind in kinds:
        mine = [r for r in runs if r["switch"] == kind]
        if mine and not any("delivered_mpps" in r for r in mine):
            skipped[kind] = mine[-1]["note"]
    return summarize(runs), runs, skipped


def summarize(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["switch"], r["size"]), []).append(r)
    out = []
    for (kind, size), rs in groups.items():
        ok = [r for r in rs if "delivered_mpps" in r]
        if not ok:
            continue

        def med(key):
            v = [r[key] for r in ok if r.get(key) is not None]
            return statistics.median(v) if v else None
        mpps = [r["delivered_mpps"] for r in ok]
        notes = [f"{len(rs) - len(ok)} of {len(rs)} runs failed: {rs[-1]['note']}"
                 ] if len(ok) < len(rs) else []
        disturbed = [r for r in ok if r.get("note")]
        if disturbed:
            notes.append(f"{len(disturbed)} of {len(rs)} runs: "
                         + "; ".join(r["note"] for r in disturbed))
        split = {name: statistics.median(r["cpu_split"][name] for r in ok)
                 for name in ok[0]["cpu_split"]}
        out.append({"switch": kind, "size": size, "runs": len(ok),
                    "delivered_mpps": med("delivered_mpps"), "min_mpps": min(mpps),
                    "max_mpps": max(mpps), "offered_mpps": med("offered_mpps"),
                    "loss_pct": med("loss_pct"), "gbit_s": med("gbit_s"),
                    "cpu_pct": med("cpu_pct"), "ns_per_frame": med("ns_per_frame"),
                    "mframes_per_cpu_s": med("mframes_per_cpu_s"), "cpu_split": split,
                    "note": "; ".join(notes)})
    return out


# ---------------------------------------------------------------- report

def _f(v, fmt="{:.3f}"):
    return "—" if v is None else fmt.format(v)


def markdown(rows, runs, skipped):
    lines = ["## vde: tap → vde → tap", "",
             "| chain | frames cross | processes on the switch CPU |", "|---|---|---|"]
    for kind in dict.fromkeys([r["switch"] for r in runs] + list(skipped)):
        procs = {"vde-client": "ringswitch worker, vde_switch, vde_plug2tap",
                 "vde-client-baseline": "baseline ringswitch worker, vde_switch, vde_plug2tap",
                 "vde-serve": "ringswitch worker, vde_plug2tap",
                 "vde-serve-baseline": "baseline ringswitch worker, vde_plug2tap",
                 "vde-plug2tap": "vde_plug2tap ×2, vde_switch",
                 "vde-tap": "vde_switch",
                 "vde-qemu": "QEMU (all its threads), vde_switch, vde_plug2tap"}[kind]
        lines.append(f"| {LABELS[kind]} | {PATHS[kind]} | {procs} |")
    head = ["chain", "frame B", "runs", "delivered Mpps (median)", "min–max", "offered Mpps",
            "loss %", "Gbit/s", "switch CPU % (sum)", "CPU split %", "CPU ns / frame",
            f"vs {REFERENCE}", "note"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = {r["size"]: r["delivered_mpps"] for r in rows if r["switch"] == REFERENCE}
    for r in rows:
        vs = (f"{r['delivered_mpps'] / ref[r['size']]:.2f}×" if ref.get(r["size"]) and
              r["switch"] != REFERENCE else "")
        split = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_split"].items())
        lines.append("| " + " | ".join(str(x).replace("|", "/") for x in [
            LABELS[r["switch"]], r["size"], r["runs"], _f(r["delivered_mpps"]),
            f"{_f(r['min_mpps'])}–{_f(r['max_mpps'])}", _f(r["offered_mpps"]),
            _f(r["loss_pct"], "{:.1f}"), _f(r["gbit_s"], "{:.2f}"), _f(r["cpu_pct"], "{:.0f}"),
            split, _f(r["ns_per_frame"], "{:.0f}"), vs, r["note"]]) + " |")
    lines += ["", "Every run:", "",
              "| chain | frame B | run | offered Mpps | delivered Mpps | loss % | switch CPU % "
              "| CPU ns / frame | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append("| " + " | ".join(str(x).replace("|", "/") for x in [
            LABELS[r["switch"]], r["size"], r["run"], _f(r.get("offered_mpps")),
            _f(r.get("delivered_mpps")), _f(r.get("loss_pct"), "{:.1f}"),
            _f(r.get("cpu_pct"), "{:.0f}"), _f(r.get("ns_per_frame"), "{:.0f}"),
            r.get("note", "")]) + " |")
    if skipped:
        lines += ["", "Not measured:", ""]
        lines += [f"- {LABELS.get(k, k)}: {v}" for k, v in skipped.items()]
    lines += ["", LEGEND, ""]
    return "\n".join(lines)


LEGEND = (
    "rs-gen in A sends as fast as it can into tap A for the run's duration; delivered = "
    "rx_packets of tap B in namespace B. Offered includes frames the kernel refused at tap "
    "A because the first process's queue was full (they count as lost). Every process of a "
    "chain runs on the switch CPU; switch CPU % = their utime+stime together over the run "
    "(% of one core: at most 100), the CPU split each one's share, CPU ns / frame = that "
    "sum / delivered frames. Medians over the runs (min–max: the runs' spread); the chains "
    "took turns, each run on a freshly started chain. Frame sizes include the 4-byte FCS.")

CSV_KEYS = ["switch", "size", "runs", "delivered_mpps", "min_mpps", "max_mpps", "offered_mpps",
            "loss_pct", "gbit_s", "cpu_pct", "ns_per_frame", "mframes_per_cpu_s", "cpu_split",
            "note"]
RUN_KEYS = ["switch", "size", "run", "seconds", "sent", "errors", "delivered", "offered_mpps",
            "delivered_mpps", "loss_pct", "refused_pct", "gbit_s", "cpu_s", "cpu_pct",
            "ns_per_frame", "mframes_per_cpu_s", "cpu_split", "others_cpu_s", "tries", "note"]


def write_csvs(out, rows, runs):
    paths = []
    for name, keys, data in (("vde.csv", CSV_KEYS, rows), ("vde-runs.csv", RUN_KEYS, runs)):
        path = os.path.join(out, name)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for r in data:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else
                                ";".join(f"{n}={c:.1f}" for n, c in v.items())
                                if isinstance(v, dict) else v) for k, v in r.items()})
        paths.append(path)
    return paths


def sane(rows, runs, skipped):
    bad = []
    for kind in dict.fromkeys(r["switch"] for r in runs):
        if not any(r["switch"] == kind for r in rows):
            bad.append(f"vde: {kind} has no result ({skipped.get(kind, 'every run failed')})")
    for r in rows:
        if not r["delivered_mpps"] > 0:
            bad.append(f"vde: {r['switch']} {r['size']} B: nothing delivered")
        if not 0 <= r["loss_pct"] <= 100:
            bad.append(f"vde: {r['switch']} {r['size']} B: loss {r['loss_pct']}% out of range")
        if not r["cpu_pct"]:
            bad.append(f"vde: {r['switch']} {r['size']} B: no switch CPU time measured")
    if not rows and not bad:
        bad.append("vde: nothing measured" + "".join(f"; {k}: {v}" for k, v in skipped.items()))
    return bad
