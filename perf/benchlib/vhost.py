"""perf/bench vhost: 64- and 1518-byte frames between two vhost-user ports, the switch as
the backend (device side) on --switch-cpu, and one DPDK testpmd as the frontend of both
ports on the generator CPU (two virtio_user devices, no guest, no TCG):

    testpmd (gen CPU)  port 0 = net_virtio_user0 --(vhost-user socket A)--> switch (switch
    CPU) --(socket B)--> net_virtio_user1 = port 1, and the same from port 1 back to port 0

testpmd runs `--forward-mode=flowgen` with one forwarding lcore (`--lcores 0@G,1@G`: the
interactive main lcore, which sleeps on stdin, and the forwarding one share CPU G): for each
port in turn it receives a burst and frees it (the sink), then builds a burst of UDP frames
and sends it on the other port (the generator). So the switch forwards both ways at once,
A -> B and B -> A, and sent / received are testpmd's own port counters. Why one process
and both directions: txonly and rxonly are modes of a whole testpmd, so a one-way test
needs two testpmd processes; on one core they take turns at the scheduler's pace (ms),
and while the sink is off the CPU its 1024-entry ring overflows: measured, 12% of what
the switch forwarded reached the sink. Frames are unicast: port 0 has MAC 02:00:00:00:00:0a,
port 1 02:00:00:00:00:0b, each sends to the other (--eth-peer), so a learning switch
learns both at the first burst (with two ports, flooding is the same path anyway).

Switches (`KINDS`), each started afresh for every run and pinned to --switch-cpu:
  - ringswitch: `--poll busy` (a core of its own, as a DPDK PMD has), two vhost-user
    ports on `-chardev socket,server=on`;
  - testpmd: the speed of light of this setup: a second testpmd, `--forward-mode=io`
    between two net_vhost ports (DPDK's own vhost-user backend), no switching at all;
  - ovs-dpdk: Open vSwitch with DPDK (Debian openvswitch-switch-dpdk, installed when
    missing; /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk is run directly, the
    ovs-vswitchd alternative is left alone), a netdev bridge with the NORMAL flow and two
    dpdkvhostuser ports (OVS listens), one PMD thread on the switch CPU.

Memory: the frontends' memory must be shareable with the backend (file descriptors): huge
pages through memfd (`--in-memory --single-file-segments`: no hugetlbfs mount needed, one
fd per segment list; without --single-file-segments virtio_user needs one memory region
per 2 MiB page and fails at 8) when the machine has or gives them (`vm.nr_hugepages` is
raised when short, and put back afterwards), otherwise `--no-huge` (plain memfd).

Per run: after `WARMUP` s of traffic, testpmd's port counters are read (`show port stats
all` on its stdin) at the start and end of the window; sent = TX-packets (frames the
rings accepted; a burst the ring had no room for is back-pressure, counted apart as
refused), received = RX-packets, loss = sent - received; switch CPU = utime+stime of the
switch's processes over the window from /proc (busy-polling switches use their core
whatever the load: Mpps per CPU-s is the comparable figure)."""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from . import switches
from .methods import pair_order
from .system import (DISTURBED, PID, PREFIX, BenchError, Topology, cpu_seconds_all, log,
                     others_cpu_seconds, wait_quiet, wait_ready)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import peers  # noqa: E402  (perf/peers.py: installs packages the way peers are installed)

KINDS = ["ringswitch", "testpmd", "ovs-dpdk"]
LABELS = {
    "ringswitch": "ringswitch --poll busy (vhost-user backend)",
    "testpmd": "DPDK testpmd io, net_vhost <-> net_vhost (speed of light)",
    "ovs-dpdk": "Open vSwitch + DPDK, dpdkvhostuser ports (NORMAL)",
}
SIZES = [64, 1518]
TESTPMD = "dpdk-testpmd"
OVS_DPDK = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
HUGEPAGES = 1536  # 2 MiB pages wanted free: the generator, ringswitch, OVS (about 1 GiB)
WARMUP = 1.5  # seconds of traffic before the window opens
MAC = ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]
QUEUE_SIZE = 1024
PROMPT_TIMEOUT = 20  # seconds for testpmd to answer a command or come up


# ---------------------------------------------------------------- tools and memory

def ensure_testpmd():
    """None if dpdk-testpmd is there (Debian dpdk-dev, installed when missing), else why."""
    if shutil.which(TESTPMD):
        return None
    log("vhost: installing Debian package dpdk-dev (dpdk-testpmd) ...")
    err = peers.install("dpdk-dev")
    if err:
        return f"apt-get install dpdk-dev failed: {err}"
    return None if shutil.which(TESTPMD) else "dpdk-testpmd still missing after install"


def ensure_ovs_dpdk():
    """None if OVS with DPDK can be started, else why not (installs it when missing)."""
    peer = peers.PEERS["ovs"]
    why = peer.ensure_installed(log)
    if why:
        return f"Open vSwitch: {why}"
    if not os.access(OVS_DPDK, os.X_OK):
        log("vhost: installing Debian package openvswitch-switch-dpdk ...")
        err = peers.install("openvswitch-switch-dpdk")
        peers._stop_system_ovs()
        if err:
            return f"apt-get install openvswitch-switch-dpdk failed: {err}"
        if not os.access(OVS_DPDK, os.X_OK):
            return f"{OVS_DPDK} missing after installing openvswitch-switch-dpdk"
    return None


def _meminfo(key):
    with open("/proc/meminfo") as f:
        m = re.search(rf"^{key}:\s+(\d+)", f.read(), re.M)
    return int(m.group(1)) if m else 0


class Memory:
    """Huge pages when the machine gives them (nr_hugepages raised if short, restored by
    `close()`), memfd without them; `eal` is the EAL memory options for every testpmd."""

    def __init__(self):
        self.saved = None
        self.huge = False
        free = _meminfo("HugePages_Free")
        if free < HUGEPAGES and _meminfo("Hugepagesize") == 2048:
            path = "/proc/sys/vm/nr_hugepages"
            try:
                with open(path) as f:
                    total = int(f.read())
                with open(path, "w") as f:
                    f.write(str(total + HUGEPAGES - free))
                self.saved = total
            except OSError as e:
                log(f"vhost: could not raise vm.nr_hugepages: {e}")
            free = _meminfo("HugePages_Free")
        self.huge = free >= HUGEPAGES
        if self.huge:
            self.eal = ["--in-memory", "--single-file-segments"]
            self.desc = (f"2 MiB huge pages ({free} free at the start"
                         + (f"; vm.nr_hugepages raised from {self.saved} for the run"
                            if self.saved is not None else "") +
                         "), shared as memfd (--in-memory --single-file-segments)")
        else:
            self.close()
            self.eal = ["--no-huge", "-m", "1024", "--single-file-segments"]
            self.desc = (f"no huge pages ({free} free, {HUGEPAGES} wanted): --no-huge, "
                         "memory shared as memfd")

    def close(self):
        if self.saved is not None:
            try:
                with open("/proc/sys/vm/nr_hugepages", "w") as f:
                    f.write(str(self.saved))
            except OSError as e:
                log(f"vhost: could not restore vm.nr_hugepages to {self.saved}: {e}")
            self.saved = None


# ---------------------------------------------------------------- testpmd

class Testpmd:
    """One interactive testpmd (stdin a pipe, stdout to a log file that is read back)."""

    def __init__(self, topo, cmd, cpu, log_path):
        self.log_path = log_path
        self.out = open(log_path, "w")
        # stdbuf: testpmd's printf output to a file is block-buffered otherwise.
        self.proc = subprocess.Popen(["stdbuf", "-o0", *cmd], stdin=subprocess.PIPE,
                                     stdout=self.out, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=peers.child_setup(cpu))
        topo.procs.append(self.proc)
        topo.add_cleanup(self.quit)

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, count=1, timeout=PROMPT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.proc.poll() is not None:
                tail = " | ".join(text.strip().splitlines()[-3:])
                raise BenchError(f"testpmd exited with status {self.proc.returncode}: {tail}")
            time.sleep(0.05)
        raise BenchError(f"testpmd: no '{pattern}' within {timeout}s")

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def port_stats(self):
        """{port: (rx_packets, tx_packets)} now ('show port stats all')."""
        n = len(re.findall(r"NIC statistics for port", self.text()))
        self.command("show port stats all")
        text = self.wait_for(r"NIC statistics for port", n + 2)
        blocks = re.split(r"#+ NIC statistics for port\s+(\d+)\s+#+", text)
        stats = {}
        for port, body in zip(blocks[1::2], blocks[2::2]):
            rx = re.search(r"RX-packets:\s+(\d+)", body)
            tx = re.search(r"TX-packets:\s+(\d+)", body)
            stats[int(port)] = (int(rx.group(1)), int(tx.group(1)))
        return stats

    def dropped(self):
        """TX-dropped (bursts the rings had no room for) per port, from 'stop'."""
        self.command("stop")
        text = self.wait_for(r"Accumulated forward statistics")
        return [int(x) for x in re.findall(r"TX-dropped:\s+(\d+)", text)]

    def quit(self):
        if self.proc.poll() is None:
            try:
                self.command("quit")
                self.proc.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()


def lcores(cpu):
    """testpmd's main and forwarding lcore, both on `cpu`."""
    return ["--lcores", f"0@{cpu},1@{cpu}"]


def generator(topo, mem, socks, size, cpu, logs, tag, server=False):
    srv = ",server=1" if server else ""
    vdevs = []
    for i, sock in enumerate(socks):
        vdevs += ["--vdev", f"net_virtio_user{i},path={sock},queues=1,queue_size={QUEUE_SIZE},"
                            f"mac={MAC[i]}{srv}"]
    cmd = [TESTPMD, *lcores(cpu), "--no-pci", *mem.eal, "--file-prefix", f"{PREFIX}gen",
           *vdevs, "--", "-i", "--nb-cores=1", "--forward-mode=flowgen", "--flowgen-flows=1",
           f"--txpkts={size - 4}", f"--eth-peer=0,{MAC[1]}", f"--eth-peer=1,{MAC[0]}",
           f"--rxd={QUEUE_SIZE}", f"--txd={QUEUE_SIZE}", "--auto-start"]
    return Testpmd(topo, cmd, cpu, os.path.join(logs, f"{tag}.generator.log"))


# ---------------------------------------------------------------- the switches

def _wait_sockets(socks, procs, what):
    deadline = time.monotonic() + PROMPT_TIMEOUT
    while not all(os.path.exists(s) for s in socks):
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{what} exited with status {p.returncode} before its "
                                 "vhost-user sockets appeared")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: vhost-user sockets did not appear within "
                             f"{PROMPT_TIMEOUT}s")
        time.sleep(0.05)


def start_ringswitch(topo, d, cpu, logs, tag):
    socks = [os.path.join(d, "a.sock"), os.path.join(d, "b.sock")]
    cmd = [switches.binary("ringswitch"), "--poll", "busy", "--worker-cpu", str(cpu),
           "--stats-json", os.path.join(logs, f"{tag}.ringswitch.json"),
           *switches.RINGSWITCH_ARGS]
    for c, s in zip("ab", socks):
        cmd += ["-chardev", f"socket,id={c},path={s},server=on",
                "-netdev", f"vhost-user,id=p{c},chardev={c}"]
    err = os.path.join(logs, f"{tag}.ringswitch.stderr")
    p = topo.spawn(cmd, cpu, os.path.join(logs, f"{tag}.ringswitch.stdout"), err)
    wait_ready(p, err, "ringswitch: ready")
    _wait_sockets(socks, [p], "ringswitch")
    return socks, [p.pid], False


def start_testpmd(topo, mem, d, cpu, logs, tag):
    socks = [os.path.join(d, "a.sock"), os.path.join(d, "b.sock")]
    cmd = [TESTPMD, *lcores(cpu), "--no-pci", *mem.eal, "--file-prefix", f"{PREFIX}ref",
           "--vdev", f"net_vhost0,iface={socks[0]},queues=1",
           "--vdev", f"net_vhost1,iface={socks[1]},queues=1",
           "--", "-i", "--nb-cores=1", "--forward-mode=io", f"--rxd={QUEUE_SIZE}",
           f"--txd={QUEUE_SIZE}", "--auto-start"]
    t = Testpmd(topo, cmd, cpu, os.path.join(logs, f"{tag}.testpmd-ref.log"))
    _wait_sockets(socks, [t.proc], "testpmd (net_vhost)")
    return socks, [t.proc.pid], False


def start_ovs(topo, mem, d, cpu, logs, tag):
    """ovsdb-server and ovs-vswitchd-dpdk with their files under `d`; ports dpdkvhostuser
    (OVS listens on <rundir>/<port>)."""
    ovs = peers.PEERS["ovs"]
    # A namespace of its own, as the ovs peer's: the bridge's internal port (a tap of the
    # netdev datapath) stays out of the root namespace and dies with it.
    ns = topo.netns("o")
    dirs = {k: os.path.join(d, k) for k in ("run", "db", "log", "etc")}
    for path in dirs.values():
        os.mkdir(path)
    env = dict(os.environ, OVS_RUNDIR=dirs["run"], OVS_DBDIR=dirs["db"],
               OVS_LOGDIR=dirs["log"], OVS_SYSCONFDIR=dirs["etc"])
    db = os.path.join(dirs["db"], "conf.db")
    sock = os.path.join(dirs["run"], "db.sock")
    peers._run(["ovsdb-tool", "create", db, peers.OVS_SCHEMA], env=env)
    dbs = subprocess.Popen(ovs.ovsdb_cmd(db, sock, dirs["run"], os.path.join(
        logs, f"{tag}.ovsdb-server.log")), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(logs, f"{tag}.ovsdb.stderr"), "w"),
        preexec_fn=peers.child_setup(cpu))
    topo.procs.append(dbs)
    deadline = time.monotonic() + PROMPT_TIMEOUT
    while not os.path.exists(sock):
        if dbs.poll() is not None or time.monotonic() > deadline:
            raise BenchError("ovsdb-server did not come up")
        time.sleep(0.05)
    vsctl = ["ovs-vsctl", f"--db=unix:{sock}", "--timeout=20"]
    mask = f"{1 << cpu:#x}"
    extra = " ".join(["--no-pci", *mem.eal, "--file-prefix", f"{PREFIX}ovs"])
    try:
        peers._run(vsctl + ["--no-wait", "init"], env=env)
        peers._run(vsctl + ["--no-wait", "set", "Open_vSwitch", ".",
                            "other_config:dpdk-init=true", f"other_config:dpdk-lcore-mask={mask}",
                            f"other_config:pmd-cpu-mask={mask}",
                            f"other_config:dpdk-extra={extra}"], env=env)
    except peers.PeerError as e:
        raise BenchError(str(e))
    ctl = os.path.join(dirs["run"], "ovs-vswitchd.ctl")
    cmd = ["env", *(f"{k}={env[k]}" for k in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR",
                                               "OVS_SYSCONFDIR")),
           "ip", "netns", "exec", ns, OVS_DPDK, *ovs.vswitchd_cmd(sock, dirs["run"], os.path.join(
        logs, f"{tag}.ovs-vswitchd.log"))[1:]]
    vsd = topo.spawn(cmd, cpu, os.path.join(logs, f"{tag}.ovs-vswitchd.stdout"),
                     os.path.join(logs, f"{tag}.ovs-vswitchd.stderr"))

    def stop_ovs():
        if vsd.poll() is None:
            peers._run(["ovs-appctl", "-t", ctl, "--timeout=5", "exit", "--cleanup"],
                       timeout=15, check=False)
        for p in (vsd, dbs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)

    topo.add_cleanup(stop_ovs)
    deadline = time.monotonic() + 60
    while not os.path.exists(ctl):
        if vsd.poll() is not None:
            raise BenchError(f"ovs-vswitchd-dpdk exited with status {vsd.returncode}: "
                             + _ovs_why(logs, tag))
        if time.monotonic() > deadline:
            raise BenchError("ovs-vswitchd-dpdk did not come up within 60 s")
        time.sleep(0.1)
    ports = ["va", "vb"]
    args = ["add-br", "rsvbr", "--", "set", "Bridge", "rsvbr", "datapath_type=netdev"]
    for port in ports:
        args += ["--", "add-port", "rsvbr", port, "--", "set", "Interface", port,
                 "type=dpdkvhostuser"]
    try:
        peers._run(vsctl + args, timeout=60, env=env)
    except peers.PeerError as e:
        raise BenchError(f"{e}: {_ovs_why(logs, tag)}")
    socks = [os.path.join(dirs["run"], p) for p in ports]
    _wait_sockets(socks, [vsd], "ovs-vswitchd-dpdk")
    return socks, [vsd.pid, dbs.pid], False


def _ovs_why(logs, tag):
    """The last error lines of ovs-vswitchd's log."""
    lines = []
    for name in (f"{tag}.ovs-vswitchd.log", f"{tag}.ovs-vswitchd.stderr"):
        try:
            with open(os.path.join(logs, name), errors="replace") as f:
                lines += [x.strip() for x in f if "|ERR|" in x or "|EMER|" in x
                          or "EAL:" in x and ("rror" in x or "annot" in x)]
        except OSError:
            pass
    return " | ".join(lines[-3:]) or "(nothing in its log)"


# ---------------------------------------------------------------- one run

def _one(kind, mem, size, plan, duration, logs, tag):
    topo = Topology()
    d = tempfile.mkdtemp(prefix=f"{PREFIX}-vhost-")
    topo.add_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    try:
        cpu = plan.switch_cpu
        if kind == "ringswitch":
            socks, pids, server = start_ringswitch(topo, d, cpu, logs, tag)
        elif kind == "testpmd":
            socks, pids, server = start_testpmd(topo, mem, d, cpu, logs, tag)
        else:
            socks, pids, server = start_ovs(topo, mem, d, cpu, logs, tag)
        gen = generator(topo, mem, socks, size, plan.gen_cpus[0], logs, tag, server)
        gen.wait_for(r"testpmd> ")
        time.sleep(WARMUP)
        exclude = {PID, gen.proc.pid, *pids, *(p.pid for p in topo.procs)}
        o0 = others_cpu_seconds(exclude)
        s0 = gen.port_stats()
        c0 = cpu_seconds_all(pids)
        t0 = time.monotonic()
        time.sleep(duration)
        s1 = gen.port_stats()
        window = time.monotonic() - t0
        cpu_s = cpu_seconds_all(pids) - c0
        others = max(0.0, others_cpu_seconds(exclude) - o0)
        refused = sum(gen.dropped())
        if set(s0) != {0, 1} or set(s1) != {0, 1}:
            raise BenchError(f"testpmd shows ports {sorted(s1)}, not 0 and 1")
        sent = sum(s1[p][1] - s0[p][1] for p in (0, 1))
        received = sum(s1[p][0] - s0[p][0] for p in (0, 1))
        if sent <= 0:
            raise BenchError("the generator sent nothing in the window (rings never "
                             "drained: is the backend serving them?)")
        per_dir = [(s1[p][1] - s0[p][1]) / window / 1e6 for p in (0, 1)]
        return {"switch": kind, "size": size, "seconds": window, "sent": sent,
                "received": received, "lost": sent - received,
                "loss_pct": (sent - received) / sent * 100,
                "sent_mpps": sent / window / 1e6, "mpps": received / window / 1e6,
                "a_to_b_mpps": per_dir[0], "b_to_a_mpps": per_dir[1],
                "gbit_s": received * size * 8 / window / 1e9, "cpu_s": cpu_s,
                "cpu_pct": cpu_s / window * 100,
                "mpps_per_cpu_s": received / cpu_s / 1e6 if cpu_s else None,
                "refused": refused, "others_cpu_s": others,
                "note": (f"other processes used {others:.2f} CPU-s"
                         if others > DISTURBED * window else "")}
    finally:
        topo.close()


# ---------------------------------------------------------------- the method

def measure(plan, sizes, repeat, duration, logs, kinds=None):
    """Every switch of `kinds` (default all), `repeat` runs per size, the switches taking
    turns (pair_order). Returns (summary rows, run rows, skipped {kind: why}, memory
    description)."""
    kinds = list(kinds or KINDS)
    skipped = {}
    why = ensure_testpmd()
    if why:
        return [], [], {k: why for k in kinds}, ""
    if "ovs-dpdk" in kinds:
        why = ensure_ovs_dpdk()
        if why:
            skipped["ovs-dpdk"] = why
            kinds.remove("ovs-dpdk")
    if "ringswitch" in kinds and not os.access(switches.binary("ringswitch"), os.X_OK):
        skipped["ringswitch"] = f"{switches.binary('ringswitch')} not built"
        kinds.remove("ringswitch")
    mem = Memory()
    runs = []
    try:
        for size in sizes:
            for rep in range(1, repeat + 1):
                for kind in pair_order(kinds, rep):
                    busy = wait_quiet(plan.wait_idle)
                    log(f"vhost: {kind}, {size} B, run {rep}")
                    try:
                        r = _one(kind, mem, size, plan, duration, logs,
                                 f"vhost-{kind}-{size}-{rep}")
                        r["note"] = "; ".join(x for x in (busy, r["note"]) if x)
                        log(f"  {r['mpps']:.3f} Mpps received ({r['a_to_b_mpps']:.3f} + "
                            f"{r['b_to_a_mpps']:.3f} sent), loss {r['loss_pct']:.2f}%, "
                            f"switch CPU {r['cpu_pct']:.0f}%")
                    except (BenchError, OSError, subprocess.SubprocessError) as e:
                        log(f"  {kind}: {e}")
                        r = {"switch": kind, "size": size, "note": str(e)}
                    r["run"] = rep
                    runs.append(r)
    finally:
        mem.close()
    for kind in kinds:
        failed = [r for r in runs if r["switch"] == kind and "mpps" not in r]
        if failed and len(failed) == sum(1 for r in runs if r["switch"] == kind):
            skipped[kind] = failed[-1]["note"]
    return summarize(runs), runs, skipped, mem.desc


def summarize(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["switch"], r["size"]), []).append(r)
    out = []
    for (kind, size), rs in groups.items():
        ok = [r for r in rs if "mpps" in r]
        if not ok:
            continue
        med = lambda k: statistics.median(r[k] for r in ok if r.get(k) is not None)  # noqa: E731
        mpps = [r["mpps"] for r in ok]
        notes = [f"{len(rs) - len(ok)} of {len(rs)} runs failed: {rs[-1]['note']}"
                 ] if len(ok) < len(rs) else []
        disturbed = [r for r in ok if r.get("note")]
        if disturbed:
            notes.append(f"{len(disturbed)} of {len(rs)} runs shared the machine: "
                         + "; ".join(r["note"] for r in disturbed))
        out.append({"switch": kind, "size": size, "runs": len(ok), "mpps": med("mpps"),
                    "min_mpps": min(mpps), "max_mpps": max(mpps),
                    "sent_mpps": med("sent_mpps"), "a_to_b_mpps": med("a_to_b_mpps"),
                    "b_to_a_mpps": med("b_to_a_mpps"), "gbit_s": med("gbit_s"),
                    "loss_pct": med("loss_pct"), "cpu_pct": med("cpu_pct"),
                    "mpps_per_cpu_s": med("mpps_per_cpu_s"), "note": "; ".join(notes)})
    return out


# ---------------------------------------------------------------- report

def _f(v, fmt="{:.3f}"):
    return "–" if v is None else fmt.format(v)


def markdown(rows, runs, skipped, memdesc):
    lines = ["## vhost-user: testpmd (virtio_user) -> switch -> testpmd, both ways", ""]
    if memdesc:
        lines += [f"Memory: {memdesc}.", ""]
    head = ["switch", "frame B", "runs", "Mpps (median)", "min–max", "A→B + B→A sent Mpps",
            "Gbit/s", "loss %", "switch CPU %", "Mpps / CPU-s", "vs testpmd", "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = {r["size"]: r["mpps"] for r in rows if r["switch"] == "testpmd"}
    for r in rows:
        vs = (f"{r['mpps'] / ref[r['size']]:.2f}x" if ref.get(r["size"]) and
              r["switch"] != "testpmd" else "")
        lines.append("| " + " | ".join(str(x) for x in [
            LABELS.get(r["switch"], r["switch"]), r["size"], r["runs"], _f(r["mpps"]),
            f"{_f(r['min_mpps'])}–{_f(r['max_mpps'])}",
            f"{_f(r['a_to_b_mpps'])} + {_f(r['b_to_a_mpps'])}", _f(r["gbit_s"], "{:.2f}"),
            _f(r["loss_pct"], "{:.3f}"), _f(r["cpu_pct"], "{:.0f}"),
            _f(r["mpps_per_cpu_s"]), vs, r["note"]]) + " |")
    if skipped:
        lines += ["", "Not measured:", ""]
        lines += [f"- {LABELS.get(k, k)}: {v}" for k, v in skipped.items()]
    lines += ["", LEGEND, ""]
    return "\n".join(lines)


LEGEND = (
    "One testpmd on the generator CPU is generator and sink of both ports (flowgen: "
    "receive a burst and free it, send a burst on the other port); the switch forwards "
    "A→B and B→A at once on the switch CPU. Mpps = frames testpmd received per second, "
    "both directions together, over the window after the warm-up; sent = frames its rings "
    "accepted (bursts a full ring refused are back-pressure, not loss); loss = sent − "
    "received. Switch CPU = utime+stime of the switch's processes over the window; all "
    "three busy-poll, so it is about 100% whatever the load and Mpps / CPU-s is the "
    "comparable cost. Frame sizes include the 4-byte FCS (testpmd sends size − 4 bytes).")

CSV_KEYS = ["switch", "size", "runs", "mpps", "min_mpps", "max_mpps", "sent_mpps",
            "a_to_b_mpps", "b_to_a_mpps", "gbit_s", "loss_pct", "cpu_pct", "mpps_per_cpu_s",
            "note"]
RUN_KEYS = ["switch", "size", "run", "seconds", "sent", "received", "lost", "loss_pct",
            "sent_mpps", "mpps", "a_to_b_mpps", "b_to_a_mpps", "gbit_s", "cpu_s", "cpu_pct",
            "mpps_per_cpu_s", "refused", "others_cpu_s", "note"]


def write_csvs(out, rows, runs):
    import csv
    paths = []
    for name, keys, data in (("vhost.csv", CSV_KEYS, rows), ("vhost-runs.csv", RUN_KEYS, runs)):
        path = os.path.join(out, name)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for r in data:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                            for k, v in r.items()})
        paths.append(path)
    return paths


def sane(rows, skipped):
    bad = []
    if not any(r["switch"] == "ringswitch" for r in rows):
        bad.append("vhost: ringswitch has no row" +
                   (f" ({skipped['ringswitch']})" if "ringswitch" in skipped else ""))
    for r in rows:
        if not r["mpps"] > 0:
            bad.append(f"vhost: {r['switch']} {r['size']} B: nothing received")
        if not -0.01 <= r["loss_pct"] <= 100:
            bad.append(f"vhost: {r['switch']} {r['size']} B: loss {r['loss_pct']}% out of range")
    return bad

