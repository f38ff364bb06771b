"""Driving traffic through a started switch: teaching it where B's stations are, one
timed run of rs-gen with delivery counted by B's interface (no sink process, so nothing
competes with the generator), and runs with rs-sink in B that check sequence numbers and
measure one-way latency from kernel receive stamps."""

import json
import os
import subprocess
import time

from .system import (PID, RELEASE, BenchError, child_setup, cpu_seconds_all, ns_exec,
                     others_cpu_seconds, run, rx_packets)

FCS = 4
DRAIN = 0.3  # seconds after the generator stops before counters are read
SETTLE = 0.2  # seconds after the learning frames
SINK_FLOW_BASE = "0x800000"  # B's stations when a run uses many flows


def gen_cmd(ns, iface, *args):
    return ns_exec(ns, os.path.join(RELEASE, "rs-gen"), "--iface", iface, *map(str, args))


def teach(st, flows=1):
    """Broadcasts from B's station(s), so a learning switch knows where they are."""
    if flows == 1:
        run(gen_cmd(st.ns_b, st.if_b, "--count", 1, "--src", st.mac_b))
    else:
        # Paced, so a switch's input queue does not drop the lessons.
        run(gen_cmd(st.ns_b, st.if_b, "--count", flows, "--flows", flows, "--flow-base",
                    SINK_FLOW_BASE, "--rate", 200_000), timeout=flows / 100_000 + 30)
    time.sleep(SETTLE)


def flow_args(st, flows):
    if flows == 1:
        return ["--src", st.mac_a, "--dst", st.mac_b]
    return ["--flows", flows, "--dst-flows", flows, "--dst-base", SINK_FLOW_BASE]


def offered(st, size, duration, gen_cpus, rate=0, flows=1, threads=1, ours=()):
    """One timed run: rs-gen in A (at `rate`, 0 = as fast as it can), delivery from B's
    rx_packets. Returns the raw numbers; `derive` turns them into rates. `ours`: further
    processes of the measurement (a sink), not counted as other work."""
    exclude = {PID, *st.pids, *ours}
    others0 = others_cpu_seconds(exclude)
    rx0 = rx_packets(st.ns_b, st.if_b)
    cpu0 = cpu_seconds_all(st.pids) if st.pids else None
    cmd = gen_cmd(st.ns_a, st.if_a, "--cpu", ",".join(map(str, gen_cpus)), "--size", size - FCS,
                  "--duration", duration, "--rate", int(rate), "--threads", threads,
                  *flow_args(st, flows))
    out = run(cmd, timeout=duration + 30)
    gen = json.loads(out.strip().splitlines()[-1])
    time.sleep(DRAIN)
    rx1 = rx_packets(st.ns_b, st.if_b)
    cpu = cpu_seconds_all(st.pids) - cpu0 if st.pids else None
    return {"seconds": gen["seconds"], "sent": gen["sent"], "errors": gen["errors"],
            "delivered": rx1 - rx0, "cpu_s": cpu,
            "others_cpu_s": max(0.0, others_cpu_seconds(exclude) - others0)}


def derive(r, size):
    """Rates from one run. "Offered" counts every frame the generator tried to send:
    frames the kernel refused at port A (ENOBUFS when a tap's queue toward the switch is
    full) are the switch's input drops, so they count as offered and lost."""
    s, sent, errs, got, cpu = r["seconds"], r["sent"], r["errors"], r["delivered"], r["cpu_s"]
    if not s or sent is None or got is None:
        return {}
    tried = sent + (errs or 0)
    return {
        "offered_mpps": tried / s / 1e6,
        "delivered_mpps": got / s / 1e6,
        "loss_pct": max(0.0, (tried - got) / tried * 100) if tried else 0.0,
        "refused_pct": (errs or 0) / tried * 100 if tried else 0.0,
        "cpu_pct": cpu / s * 100 if cpu is not None else None,
        "mframes_per_cpu_s": got / cpu / 1e6 if cpu else None,
        "ns_per_frame": cpu / got * 1e9 if cpu and got else None,
        "gbit_s": got * (size - FCS) * 8 / s / 1e9,
    }


def with_sink(st, size, duration, gen_cpus, sink_cpu, rate, hist_path, flows=1):
    """A paced run with rs-sink in B: loss, reordering, duplicates and latency percentiles
    (µs, from the kernel's receive stamps) besides the counters of `offered`."""
    sink = run_sink_start(st, duration + 3, sink_cpu, hist_path)
    try:
        time.sleep(0.3)  # the sink's socket is bound before the first frame
        r = offered(st, size, duration, gen_cpus, rate=rate, flows=flows, ours=[sink.pid])
    finally:
        out, err = sink.communicate(timeout=duration + 30)
    if sink.returncode != 0:
        raise BenchError(f"rs-sink failed ({sink.returncode}): {err.strip()[-300:]}")
    rep = json.loads(out.strip().splitlines()[-1])
    r["sink"] = rep
    return r


def run_sink_start(st, duration, cpu, hist_path):
    cmd = ns_exec(st.ns_b, os.path.join(RELEASE, "rs-sink"), "--iface", st.if_b,
                  "--duration", str(duration), "--idle", "1.5", "--hist", hist_path)
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, preexec_fn=child_setup(None))
