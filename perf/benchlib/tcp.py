"""perf/bench tcp: TCP throughput between namespaces A and B through each switch, with
iperf3 (Debian package iperf3, installed when missing):

    iperf3 -c (A, generator CPU) -> A's interface -> switch (switch CPU) -> B's interface
        -> iperf3 -s (B, --sink-cpu, default the generator CPU)

A's and B's interfaces get the ping method's addresses (192.0.2.1/24, 192.0.2.2/24). For
each switch: one stream, then four (`-P 4`; `plan.tcp_streams`), `plan.tcp_seconds` each,
`iperf3 -J`. Per run: Gbit/s at the receiver (`end.sum_received`), the sender's
retransmits, the switch's CPU seconds over the client's run and CPU seconds per GB
received. The switches take turns: repeat 1 runs every switch in order, repeat 2 in
reverse order, ..., each repeat on a freshly started switch; the table gives the median of
the repeats. The Linux bridge (and the direct veth pair) forward in softirq in the
sender's kernel context, on the client's core: they have no CPU of their own to count.

    measure(kinds, plan, logs) -> (summary rows, run rows, skipped {kind: why})"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from . import switches
from .methods import pair_order
from .system import (DISTURBED, PID, BenchError, Topology, cpu_seconds_all, log, ns_exec,
                     others_cpu_seconds, run, wait_quiet)
from .traffic import PING_A, PING_B, PING_PREFIX

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import peers  # noqa: E402  (perf/peers.py: installs packages the way peers are installed)

# The switches tcp runs when --switches is not given (with --baseline, baseline too).
DEFAULT = ["ringswitch", "ringswitch-vnet", "bridge", "qemu-hub", "vde", "ovs"]
PORT = 5201
SERVER_READY = 10  # seconds for iperf3 -s to listen
CONNECT_MS = 5000  # iperf3 --connect-timeout


def ensure_iperf3():
    """None if iperf3 is there (installed from Debian when missing, as the peers are),
    else why not."""
    if shutil.which("iperf3"):
        return None
    if os.geteuid() != 0:
        return "iperf3 not installed (Debian package iperf3) and not root"
    log("tcp: installing Debian package iperf3 ...")
    err = peers.install("iperf3")
    if err:
        return f"apt-get install iperf3 failed: {err}"
    return None if shutil.which("iperf3") else "iperf3 still missing after apt-get install"


def _listening(ns):
    out = run(ns_exec(ns, "ss", "-Htln", f"sport = :{PORT}"), check=False)
    return bool(out.strip())


def _server(st, topo, cpu, logs, tag):
    """iperf3 -s in B, pinned to `cpu`, serving the runs one after the other until the
    case is torn down; returns its Popen once it listens."""
    err = os.path.join(logs, f"{tag}.iperf3-server.stderr")
    proc = topo.spawn(ns_exec(st.ns_b, "iperf3", "-s", "-p", str(PORT), "-B", PING_B), cpu,
                      os.path.join(logs, f"{tag}.iperf3-server.stdout"), err)
    deadline = time.monotonic() + SERVER_READY
    while not _listening(st.ns_b):
        if proc.poll() is not None:
            with open(err, errors="replace") as f:
                tail = " | ".join(f.read().strip().splitlines()[-2:])
            raise BenchError(f"iperf3 -s exited with status {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise BenchError(f"iperf3 -s did not listen within {SERVER_READY}s")
        time.sleep(0.05)
    return proc


def _client(st, streams, seconds, cpu, json_path, server_pid):
    """One iperf3 client run from A: the numbers of one row (before the switch's name)."""
    exclude = {PID, server_pid, *st.pids}
    others0 = others_cpu_seconds(exclude)
    cpu0 = cpu_seconds_all(st.pids) if st.pids else None
    t0 = time.monotonic()
    cmd = ns_exec(st.ns_a, "iperf3", "-c", PING_B, "-p", str(PORT), "-B", PING_A,
                  "-t", f"{seconds:g}", "-P", str(streams), "-J",
                  "--connect-timeout", str(CONNECT_MS))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=seconds + 30, preexec_fn=peers.child_setup(cpu))
    except subprocess.TimeoutExpired:
        raise BenchError(f"iperf3 client timed out: {' '.join(cmd)}")
    window = time.monotonic() - t0
    cpu_s = cpu_seconds_all(st.pids) - cpu0 if st.pids else None
    others = max(0.0, others_cpu_seconds(exclude) - others0)
    with open(json_path, "w") as f:
        f.write(p.stdout + p.stderr)
    try:
        rep = json.loads(p.stdout)
    except ValueError:
        raise BenchError(f"iperf3 client ({p.returncode}) gave no JSON: "
                         f"{(p.stderr or p.stdout).strip()[-300:]}")
    if rep.get("error") or p.returncode != 0:
        status = f" (exit status {p.returncode})" if p.returncode else ""
        raise BenchError(f"iperf3 client failed{status}: {rep.get('error', '')}")
    end = rep.get("end", {})
    sent, recv = end.get("sum_sent", {}), end.get("sum_received", {})
    if "bytes" not in recv:
        raise BenchError("iperf3 -J has no end.sum_received")
    gbytes = recv["bytes"] / 1e9
    return {
        "streams": streams, "seconds": recv.get("seconds"), "bytes_received": recv["bytes"],
        "bytes_sent": sent.get("bytes"), "gbit_s": recv["bits_per_second"] / 1e9,
        "sent_gbit_s": sent["bits_per_second"] / 1e9 if "bits_per_second" in sent else None,
        "retransmits": sent.get("retransmits"), "cpu_s": cpu_s, "cpu_window_s": window,
        "cpu_pct": cpu_s / window * 100 if cpu_s is not None and window else None,
        "cpu_s_per_gb": cpu_s / gbytes if cpu_s is not None and gbytes else None,
        "others_cpu_s": others, "json": json_path,
    }


def _run_one(plan, fn, seconds):
    """`fn()` again (up to plan.retries times) while other work disturbed it, as the frame
    methods do (methods.undisturbed)."""
    for attempt in range(plan.retries + 1):
        busy = wait_quiet(plan.wait_idle)
        r = fn()
        r["tries"] = attempt + 1
        if r["others_cpu_s"] <= DISTURBED * seconds and not busy:
            return r, ""
        time.sleep(0.5)
    return r, busy


def _case(kind, rep, plan, logs, rows):
    """Starts `kind` afresh and runs every stream count of the plan on it."""
    tag = f"tcp-{kind}-run{rep}"
    topo = Topology()
    try:
        st = switches.start(kind, topo, plan.switch_cpu, logs, tag)
        for ns, ifname, addr in ((st.ns_a, st.if_a, PING_A), (st.ns_b, st.if_b, PING_B)):
            run(["ip", "-n", ns, "addr", "replace", f"{addr}/{PING_PREFIX}", "dev", ifname])
        server_cpu = plan.sink_cpu if plan.sink_cpu is not None else plan.gen_cpus[0]
        server = _server(st, topo, server_cpu, logs, tag)
        for streams in plan.tcp_streams:
            secs = plan.tcp_seconds
            log(f"tcp: {kind}, {streams} stream{'s' if streams > 1 else ''}, {secs:g} s, "
                f"run {rep}")
            path = os.path.join(logs, f"{tag}-P{streams}.iperf3.json")
            try:
                r, busy = _run_one(plan, lambda: _client(st, streams, secs, plan.gen_cpus[0],
                                                         path, server.pid), secs)
            except BenchError as e:
                log(f"  {e}")
                rows.append({"switch": kind, "streams": streams, "run": rep, "note": str(e)})
                continue
            notes = [busy] if busy else []
            r["disturbed"] = r["others_cpu_s"] > DISTURBED * secs
            if r["disturbed"]:
                notes.append(f"other processes used {r['others_cpu_s']:.2f} CPU-s")
            r.update(switch=kind, run=rep, busy=bool(busy), note="; ".join(notes))
            rows.append(r)
            cpu = (f", switch CPU {r['cpu_s']:.2f} s ({r['cpu_s_per_gb']:.3f} s/GB)"
                   if r["cpu_s_per_gb"] is not None else "")
            log(f"  {r['gbit_s']:.2f} Gbit/s received, {r['retransmits']} retransmits{cpu}")
        for p in topo.procs:
            if p.poll() is not None and p.returncode not in (0, None):
                log(f"tcp: {kind}: a process exited with status {p.returncode} during the runs")
    finally:
        topo.close()


def measure(kinds, plan, logs):
    """Every switch of `kinds` that can run, `plan.repeat` times in alternating order."""
    runs, skipped = [], {}
    why = ensure_iperf3()
    if why:
        return [], [], {k: f"no iperf3: {why}" for k in kinds}
    ready = []
    for kind in kinds:
        why = switches.availability(kind)
        if why:
            skipped[kind] = why
        else:
            ready.append(kind)
    for rep in range(1, plan.repeat + 1):
        for kind in pair_order(ready, rep):
            try:
                _case(kind, rep, plan, logs, runs)
            except BenchError as e:
                log(f"tcp: {kind}: {e}")
                skipped.setdefault(kind, f"run {rep}: {e}")
    return summarize(runs), runs, skipped


def _median(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(runs):
    """One row per switch and stream count: medians over the repeats, and the range of
    Gbit/s."""
    groups = {}
    for r in runs:
        groups.setdefault((r["switch"], r["streams"]), []).append(r)
    out = []
    for (kind, streams), rs in groups.items():
        ok = [r for r in rs if r.get("gbit_s") is not None]
        gbits = [r["gbit_s"] for r in ok]
        notes = []
        failed = [r for r in rs if r.get("gbit_s") is None]
        if failed:
            notes.append(f"{len(failed)} of {len(rs)} runs failed: {failed[-1]['note']}")
        busy = sum(1 for r in ok if r.get("busy"))
        if busy:
            notes.append(f"machine busy before {busy} of {len(rs)} runs")
        disturbed = [r["others_cpu_s"] for r in ok if r.get("disturbed")]
        if disturbed:
            notes.append(f"other processes used up to {max(disturbed):.2f} CPU-s in "
                         f"{len(disturbed)} of {len(rs)} runs")
        out.append({
            "switch": kind, "streams": streams, "runs": len(ok),
            "gbit_s": statistics.median(gbits) if gbits else None,
            "min_gbit_s": min(gbits) if gbits else None,
            "max_gbit_s": max(gbits) if gbits else None,
            "run_gbit_s": gbits,
            **{k: _median(ok, k) for k in ("retransmits", "cpu_s", "cpu_pct",
                                            "cpu_s_per_gb", "bytes_received")},
            "note": "; ".join(notes)})
    kinds = list(dict.fromkeys(r["switch"] for r in runs))
    out.sort(key=lambda r: (kinds.index(r["switch"]), r["streams"]))
    return out
