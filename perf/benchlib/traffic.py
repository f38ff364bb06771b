"""Driving traffic through a started switch: teaching it where B's stations are, one
timed run of rs-gen with delivery counted by B's interface (no sink process, so nothing
competes with the generator), runs with rs-sink in B that check sequence numbers and
measure one-way latency from kernel receive stamps, and idle round trips with ping(8)
between addresses given to A's and B's interfaces."""

import json
import math
import os
import re
import statistics
import subprocess
import time

from .system import (PID, RELEASE, BenchError, apt_install, child_setup, cpu_seconds_all,
                     ns_exec, others_cpu_seconds, run, rx_packets)

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
    t0 = time.monotonic()
    cmd = gen_cmd(st.ns_a, st.if_a, "--cpu", ",".join(map(str, gen_cpus)), "--size", size - FCS,
                  "--duration", duration, "--rate", int(rate), "--threads", threads,
                  *flow_args(st, flows))
    out = run(cmd, timeout=duration + 30)
    gen = json.loads(out.strip().splitlines()[-1])
    time.sleep(DRAIN)
    rx1 = rx_packets(st.ns_b, st.if_b)
    cpu = cpu_seconds_all(st.pids) - cpu0 if st.pids else None
    # The switch's CPU time covers the whole window (generator start-up and the drain
    # included), so its share of a core is taken over that window, not over the
    # generator's seconds: a switch that polls would otherwise show more than 100%.
    window = time.monotonic() - t0
    return {"seconds": gen["seconds"], "sent": gen["sent"], "errors": gen["errors"],
            "delivered": rx1 - rx0, "cpu_s": cpu, "cpu_window_s": window,
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
        "cpu_pct": cpu / r.get("cpu_window_s", s) * 100 if cpu is not None else None,
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


# ---------------------------------------------------------------- ping

# The two ends of the ping phase (TEST-NET-1, RFC 5737), on A's and B's interfaces; each
# namespace is the run's own, so nothing else sees them.
PING_A, PING_B, PING_PREFIX = "192.0.2.1", "192.0.2.2", 24
PING_WARMUP = 5  # echo requests before the measured ones: ARP, and the switch learns both
_TIME = re.compile(r"icmp_seq=(\d+)\b.*\btime=([\d.]+) ms(.*)$")
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ensure_ping():
    """None if ping(8) from iputils is there (installed when missing), else why not."""
    if os.access("/usr/bin/ping", os.X_OK) or os.access("/bin/ping", os.X_OK):
        return None
    return apt_install(["iputils-ping"])


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an ascending list (the smallest value with at least
    `pct`% of the values at or below it)."""
    n = len(sorted_values)
    return sorted_values[max(0, min(n - 1, math.ceil(pct / 100 * n) - 1))]


def parse_ping(text):
    """(round trips in µs of the replies, in arrival order; duplicates; transmitted,
    received from the summary or None) from ping's output. Each reply's own `time=`
    is used, not the summary's statistics."""
    rtts, dups, seen = [], 0, set()
    for line in text.splitlines():
        m = _TIME.search(line)
        if not m:
            continue
        if "DUP!" in m.group(3) or m.group(1) in seen:
            dups += 1
            continue
        seen.add(m.group(1))
        rtts.append(round(float(m.group(2)) * 1e3, 1))
    m = _SUMMARY.search(text)
    return rtts, dups, (int(m.group(1)), int(m.group(2))) if m else None


def ping(st, count, interval, cpu, rtts_path):
    """`count` ICMP echo requests from A to B's address, one every `interval` s, ping
    pinned to `cpu`: round-trip percentiles (µs) from each reply's `time=` value, lost
    replies, and the switch's CPU time meanwhile. Each reply's round trip goes to
    `rtts_path` (CSV) and ping's own output beside it (.txt)."""
    why = ensure_ping()
    if why:
        raise BenchError(f"no ping(8): {why}")
    for ns, ifname, addr in ((st.ns_a, st.if_a, PING_A), (st.ns_b, st.if_b, PING_B)):
        run(["ip", "-n", ns, "addr", "replace", f"{addr}/{PING_PREFIX}", "dev", ifname])
    # ARP both ways and the switch's learning, before anything is measured.
    run(ns_exec(st.ns_a, "ping", "-n", "-q", "-c", str(PING_WARMUP), "-i", "0.05", "-W", "1",
                PING_B), timeout=PING_WARMUP + 10, check=False)
    exclude = {PID, *st.pids}
    others0 = others_cpu_seconds(exclude)
    cpu0 = cpu_seconds_all(st.pids) if st.pids else None
    t0 = time.monotonic()
    cmd = ns_exec(st.ns_a, "ping", "-n", "-i", f"{interval:g}", "-c", str(count), "-W", "1",
                  PING_B)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=count * interval * 2 + 30, preexec_fn=child_setup(cpu))
    except subprocess.TimeoutExpired:
        raise BenchError(f"ping timed out: {' '.join(cmd)}")
    seconds = time.monotonic() - t0
    cpu_s = cpu_seconds_all(st.pids) - cpu0 if st.pids else None
    others = max(0.0, others_cpu_seconds(exclude) - others0)
    with open(os.path.splitext(rtts_path)[0] + ".txt", "w") as f:
        f.write(p.stdout + p.stderr)
    rtts, dups, summary = parse_ping(p.stdout)
    if summary is None:
        raise BenchError(f"ping failed ({p.returncode}): {p.stderr.strip()[-300:]}")
    sent, received = summary
    with open(rtts_path, "w") as f:
        f.write("rtt_us\n" + "".join(f"{v:.1f}\n" for v in rtts))
    row = {"pings": count, "interval_ms": interval * 1e3, "sent": sent,
           "received": len(rtts), "lost": max(0, sent - received), "duplicates": dups,
           "seconds": seconds, "cpu_s": cpu_s,
           "cpu_pct": cpu_s / seconds * 100 if cpu_s is not None and seconds else None,
           "others_cpu_s": others}
    if rtts:
        v = sorted(rtts)
        row.update(rtt_min_us=v[0], rtt_mean_us=statistics.fmean(v),
                   rtt_p50_us=percentile(v, 50), rtt_p90_us=percentile(v, 90),
                   rtt_p99_us=percentile(v, 99), rtt_max_us=v[-1])
    return row
