"""perf/bench udp: 64-byte frames between two UDP `socket` ports (QEMU's `-netdev
socket,udp=…,localaddr=…`, one frame per datagram), ringswitch against QEMU's own hub
joining two such netdevs, in one private network namespace on loopback:

    rs-udp send (generator CPU) -> port a -> switch (switch CPU) -> port b -> rs-udp sink

The switches alternate run by run, so all see the same machine. With --baseline the
baseline ringswitch binary takes its turn too, run exactly as ringswitch is, and so do the
ringswitch variants named in --switches (ringswitch-busy, ... : their options added; not
ringswitch-vnet, whose vnet_hdr=on is a tap option).
Delivered =
datagrams the sink received; switch CPU from /proc over the sender's run."""

import json
import os
import subprocess
import time

from . import switches
from .methods import pair_order
from .system import (RELEASE, BenchError, Topology, cpu_seconds_all, log, ns_exec, run,
                     wait_quiet, wait_ready)

LOCAL = "127.0.0.1"
A_FROM, A_TO, B_TO, B_FROM = 40001, 40002, 40004, 40003  # a: gen -> switch; b: switch -> sink
KINDS = ["ringswitch", "qemu-hub"]  # and the other builds and variants after ringswitch


def _start(kind, topo, ns, cpu, logs, tag):
    port_a = f"socket,id=a,udp={LOCAL}:{A_FROM},localaddr={LOCAL}:{A_TO}"
    port_b = f"socket,id=b,udp={LOCAL}:{B_TO},localaddr={LOCAL}:{B_FROM}"
    err = os.path.join(logs, f"{tag}.stderr")
    if kind in switches.RINGSWITCHES:
        cmd = ns_exec(ns, switches.binary(kind), "-netdev", port_a, "-netdev",
                      port_b, "--worker-cpu", str(cpu), *switches.variant_args(kind))
        proc = topo.spawn(cmd, cpu, os.path.join(logs, f"{tag}.stdout"), err)
        wait_ready(proc, err, "ringswitch: ready")
    else:
        cmd = ns_exec(ns, "qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
                      "-netdev", port_a, "-netdev", port_b,
                      "-netdev", "hubport,id=ha,hubid=0,netdev=a",
                      "-netdev", "hubport,id=hb,hubid=0,netdev=b")
        proc = topo.spawn(cmd, cpu, os.path.join(logs, f"{tag}.stdout"), err)
        # QEMU says nothing when it is ready: wait until it holds both sockets.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = run(ns_exec(ns, "ss", "-uanp"), check=False)
            if f":{A_TO} " in out and f":{B_FROM} " in out:
                break
            if proc.poll() is not None:
                raise BenchError(f"QEMU exited with status {proc.returncode}")
            time.sleep(0.1)
        else:
            raise BenchError("QEMU did not bind its UDP sockets within 15 s")
    return proc


def _one(kind, size, duration, gen_cpu, sw_cpu, logs, tag):
    topo = Topology()
    try:
        ns = topo.netns("u")
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        proc = _start(kind, topo, ns, sw_cpu, logs, tag)
        udp = os.path.join(RELEASE, "rs-udp")
        sink = subprocess.Popen(ns_exec(ns, udp, "sink", "--local", f"{LOCAL}:{B_TO}",
                                        "--duration", str(duration + 5), "--idle", "1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.2)
            cpu0 = cpu_seconds_all([proc.pid])
            out = run(ns_exec(ns, udp, "send", "--local", f"{LOCAL}:{A_FROM}", "--remote",
                              f"{LOCAL}:{A_TO}", "--size", str(size - 4), "--duration",
                              str(duration), "--cpu", str(gen_cpu)), timeout=duration + 30)
            cpu = cpu_seconds_all([proc.pid]) - cpu0
        finally:
            sout, serr = sink.communicate(timeout=duration + 30)
        gen = json.loads(out.strip().splitlines()[-1])
        got = json.loads(sout.strip().splitlines()[-1])["received"]
        s = gen["seconds"]
        return {"switch": kind, "size": size, "seconds": s, "sent": gen["sent"],
                "errors": gen["errors"],
                "delivered": got, "cpu_s": cpu, "offered_mpps": gen["sent"] / s / 1e6,
                "delivered_mpps": got / s / 1e6, "cpu_pct": cpu / s * 100,
                "mframes_per_cpu_s": got / cpu / 1e6 if cpu else None, "note": ""}
    finally:
        topo.close()


def measure(plan, sizes, repeat, duration, logs, builds=("ringswitch",)):
    """`repeat` runs of each switch per size, one of each in turn; `builds`: the builds
    and variants of ringswitch measured (ringswitch, baseline, ringswitch-busy, ...),
    taking turns in the order of methods.pair_order, then QEMU's hub."""
    rows, skipped = [], {}
    kinds = []
    for k in [*dict.fromkeys(builds), "qemu-hub"]:
        opts = switches.variant_netdev_opts(k)
        why = (f"{','.join(opts)} is an option of tap ports; udp runs on UDP socket ports"
               if opts else switches.availability(k))
        if why:
            skipped[k] = why
        else:
            kinds.append(k)
    for size in sizes:
        for rep in range(1, repeat + 1):
            pair = pair_order([k for k in kinds if k in switches.RINGSWITCHES], rep)
            for kind in [*pair, *(k for k in kinds if k not in pair)]:
                wait_quiet(plan.wait_idle)
                log(f"udp: {kind}, {size} B, run {rep}")
                try:
                    r = _one(kind, size, duration, plan.gen_cpus[0], plan.switch_cpu, logs,
                             f"udp-{kind}-{size}-{rep}")
                except (BenchError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
                    r = {"switch": kind, "size": size, "note": str(e)}
                r["run"] = rep
                rows.append(r)
                if "delivered_mpps" in r:
                    log(f"  delivered {r['delivered_mpps']:.3f} Mpps at {r['cpu_pct']:.0f}% CPU")
    return rows, skipped
