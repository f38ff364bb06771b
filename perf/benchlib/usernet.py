"""perf/bench usernet: one TCP stream through a `user` port (libslirp NAT), ringswitch
against QEMU 7.2's own `-netdev user` joined by a guest-less hub to a tap, in the same
topology, in both directions:

    up:   iperf3 -c 10.0.2.2 (namespace C, generator CPU) -> tap -> switch (switch CPU)
              -> user port (libslirp) -> iperf3 -s on 127.0.0.1 of the switch's namespace H
    down: the same with iperf3 -R: the server sends, through libslirp, to the station

ringswitch: `-netdev tap -netdev user`. QEMU: `-M none -netdev tap -netdev user` with both
in hub 0 (`hubport,netdev=`). The station has 10.0.2.15/24 and its default route via
10.0.2.2, set by hand (DHCP is the tests' business). The switches alternate run by run;
per run: Gbit/s at the receiver, retransmits and the switch process's CPU seconds (all its
threads: ringswitch's worker and its libslirp thread; QEMU's main loop and I/O threads).

    measure(plan, repeat, seconds, logs, builds) -> (rows, skipped {kind: why})"""

import json
import os
import statistics
import subprocess
import time

from . import switches
from .methods import pair_order
from .system import (PREFIX, BenchError, Topology, cpu_seconds_all, log, ns_exec, run, wait_quiet,
                     wait_ready)

PORT = 5201
TAP = f"{PREFIX}ut"


def _start(kind, topo, ns_h, ns_c, cpu, logs, tag):
    err = os.path.join(logs, f"{tag}.stderr")
    if kind in switches.RINGSWITCHES:
        opts = "".join(f",{o}" for o in switches.variant_netdev_opts(kind))
        cmd = ns_exec(ns_h, switches.binary(kind), "-netdev", f"tap,id=t,ifname={TAP}{opts}",
                      "-netdev", "user,id=u", "--worker-cpu", str(cpu),
                      *switches.variant_args(kind))
        proc = topo.spawn(cmd, cpu, os.path.join(logs, f"{tag}.stdout"), err)
        wait_ready(proc, err, "ringswitch: ready")
    else:
        cmd = ns_exec(ns_h, "qemu-system-x86_64", "-M", "none", "-nodefaults", "-display",
                      "none", "-netdev", f"tap,id=t,ifname={TAP},script=no,downscript=no",
                      "-netdev", "user,id=u", "-netdev", "hubport,id=h0,hubid=0,netdev=t",
                      "-netdev", "hubport,id=h1,hubid=0,netdev=u")
        proc = topo.spawn(cmd, cpu, os.path.join(logs, f"{tag}.stdout"), err)
        deadline = time.monotonic() + 15
        while TAP not in run(ns_exec(ns_h, "ip", "-o", "link"), check=False):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"QEMU did not create {TAP} (status {proc.poll()})")
            time.sleep(0.1)
    run(["ip", "-n", ns_h, "link", "set", TAP, "netns", ns_c])
    run(["ip", "-n", ns_c, "link", "set", TAP, "up"])
    run(["ip", "-n", ns_c, "addr", "add", "10.0.2.15/24", "dev", TAP])
    run(["ip", "-n", ns_c, "route", "add", "default", "via", "10.0.2.2"])
    return proc


def _one(kind, seconds, gen_cpu, sw_cpu, logs, tag, down=False):
    topo = Topology()
    try:
        ns_h, ns_c = topo.netns("uh"), topo.netns("uc")
        for ns in (ns_h, ns_c):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        proc = _start(kind, topo, ns_h, ns_c, sw_cpu, logs, tag)
        topo.spawn(ns_exec(ns_h, "iperf3", "-s", "-B", "127.0.0.1", "-p", str(PORT)), gen_cpu,
                   os.path.join(logs, f"{tag}.iperf3-server.stdout"),
                   os.path.join(logs, f"{tag}.iperf3-server.stderr"))
        deadline = time.monotonic() + 10
        while f":{PORT}" not in run(ns_exec(ns_h, "ss", "-Htln"), check=False):
            if time.monotonic() > deadline:
                raise BenchError("iperf3 -s did not listen within 10 s")
            time.sleep(0.05)
        cpu0 = cpu_seconds_all([proc.pid])
        t0 = time.monotonic()
        p = subprocess.run(ns_exec(ns_c, "taskset", "-c", str(gen_cpu), "iperf3", "-c",
                                   "10.0.2.2", "-p", str(PORT), "-t", f"{seconds:g}", "-J",
                                   "--connect-timeout", "5000", *(["-R"] if down else [])),
                           capture_output=True, text=True, timeout=seconds + 30,
                           stdin=subprocess.DEVNULL)
        window = time.monotonic() - t0
        cpu = cpu_seconds_all([proc.pid]) - cpu0
        with open(os.path.join(logs, f"{tag}.iperf3.json"), "w") as f:
            f.write(p.stdout + p.stderr)
        rep = json.loads(p.stdout)
        if rep.get("error") or p.returncode != 0:
            raise BenchError(f"iperf3 failed ({p.returncode}): {rep.get('error', '')}")
        recv, sent = rep["end"]["sum_received"], rep["end"]["sum_sent"]
        gb = recv["bytes"] / 1e9
        return {"switch": kind, "dir": "down" if down else "up", "gbit_s": recv["bits_per_second"] / 1e9,
                "retransmits": sent.get("retransmits"), "cpu_s": cpu,
                "cpu_pct": cpu / window * 100, "cpu_s_per_gb": cpu / gb if gb else None,
                "note": ""}
    finally:
        topo.close()


def measure(plan, repeat, seconds, logs, builds=("ringswitch",)):
    rows, skipped, kinds = [], {}, []
    for k in [*dict.fromkeys(builds), "qemu-hub"]:
        why = switches.availability(k)
        if why:
            skipped[k] = why
        else:
            kinds.append(k)
    for rep in range(1, repeat + 1):
        for kind, down in pair_order([(k, d) for d in (False, True) for k in kinds], rep):
            wait_quiet(plan.wait_idle)
            way = "down" if down else "up"
            log(f"usernet: {kind}, {way}, run {rep}")
            try:
                r = _one(kind, seconds, plan.gen_cpus[0], plan.switch_cpu, logs,
                         f"usernet-{kind}-{way}-{rep}", down)
            except (BenchError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                r = {"switch": kind, "dir": way, "note": str(e)}
            r["run"] = rep
            rows.append(r)
            if "gbit_s" in r:
                log(f"  {r['gbit_s']:.3f} Gbit/s, {r['retransmits']} retransmits, "
                    f"switch CPU {r['cpu_pct']:.0f}%")
            else:
                log(f"  failed: {r['note']}")
    return rows, skipped


def markdown(rows, skipped):
    """The table: median Gbit/s (range), retransmits, switch CPU per switch and direction
    (up: station to host, down: host to station)."""
    out = ["## usernet: one TCP stream through a user port (libslirp NAT)", "",
           "| switch | direction | runs | Gbit/s (median) | range | retransmits | "
           "switch CPU % | CPU s/GB |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for way in ("up", "down"):
        for kind in dict.fromkeys(r["switch"] for r in rows):
            out.append(_row(rows, kind, way))
    for k, why in skipped.items():
        out.append(f"\n{k} skipped: {why}")
    return "\n".join(out) + "\n"


def _row(rows, kind, way):
    ok = [r for r in rows if r["switch"] == kind and r.get("dir", "up") == way and "gbit_s" in r]
    if not ok:
        return f"| {kind} | {way} | 0 | — | — | — | — | — |"
    g = [r["gbit_s"] for r in ok]

    def med(k):
        v = [r[k] for r in ok if r.get(k) is not None]
        return statistics.median(v) if v else float("nan")

    return (f"| {kind} | {way} | {len(ok)} | {statistics.median(g):.3f} | {min(g):.3f}–"
            f"{max(g):.3f} | {med('retransmits'):.0f} | {med('cpu_pct'):.0f} | "
            f"{med('cpu_s_per_gb'):.2f} |")
