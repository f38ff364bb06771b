"""Commands, processes and clean-up for perf/bench: `run` (bounded, checked), `Topology`
(every namespace, link, process and clean-up function of one case, removed by `close()`
even after an error or a signal), CPU accounting from /proc, and waiting for a quiet
machine. Everything a case creates is named `rsb<PID>...`, so runs never collide and
`perf/bench cleanup` can find what a killed run left."""

import json
import os
import re
import signal
import subprocess
import sys
import time

PERF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(PERF_DIR)
# Where cargo puts the release build: $CARGO_TARGET_DIR when set (as cargo itself reads it,
# so `perf/bench` builds and runs the same binaries), else the checkout's target/.
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"),
                       "release")
PID = os.getpid()
PREFIX = f"rsb{PID}"  # namespaces and root-namespace interfaces all start with this

CMD_TIMEOUT = 15  # seconds for any one ip/sysctl command
READY_TIMEOUT = 15  # seconds for a switch to say it is ready
STOP_TIMEOUT = 10  # seconds for a switch to exit after SIGTERM
QUIET = 0.10  # CPU busy fraction above which the machine counts as in use by others
DISTURBED = 0.05  # others' CPU-s per run second above which a run is repeated


class BenchError(Exception):
    """A case could not be measured; the message says why."""


class Interrupted(BaseException):
    """Raised from the signal handler so that every `finally` runs."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- process helpers

# One helper for every process the benchmarks start: SIGTERM when perf/bench dies, and
# pinned to a CPU if asked (perf/peers.py, which also runs on its own, owns it).
sys.path.insert(0, PERF_DIR)
from peers import child_setup  # noqa: E402


def run(cmd, timeout=CMD_TIMEOUT, check=True):
    """Runs a short command; returns its stdout. Raises BenchError on failure."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=child_setup(None))
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout}s: {' '.join(cmd)}")
    if check and p.returncode != 0:
        raise BenchError(f"failed ({p.returncode}): {' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


def ns_exec(ns, *cmd):
    return ["ip", "netns", "exec", ns, *cmd]


def link_info(ns, ifname):
    out = run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", ifname])
    return json.loads(out)[0]


def rx_packets(ns, ifname):
    return int(link_info(ns, ifname)["stats64"]["rx"]["packets"])


def mac_of(ns, ifname):
    return link_info(ns, ifname)["address"]


def cpu_seconds(pid):
    """utime + stime of all threads of `pid`, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_precise(pid):
    """CPU seconds of the live threads of `pid`, from each thread's schedstat: the scheduler's
    own nanosecond runtime. `cpu_seconds` reads utime/stime, which the tick samples (HZ times
    a second) and so misjudges a process that wakes briefly many times between ticks; use this
    one to compare per-frame costs of such a process. Threads that already exited are not
    counted."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def cpu_seconds_all(pids):
    """CPU seconds of every process in `pids` together (a switch may be several)."""
    return sum(cpu_seconds(p) for p in pids)


PF_KTHREAD = 0x00200000


def others_cpu_seconds(exclude):
    """CPU seconds used so far by user processes other than `exclude` (and the children
    they reaped). Kernel threads are left out: they do our traffic's softirq work too.
    Comparing two readings shows whether other work shared the machine during a run."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[6]) & PF_KTHREAD:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- topology with cleanup

class Topology:
    """Owns every namespace, root-namespace link and process of one case; `close()`
    removes them all (processes first, so non-persistent taps vanish with them)."""

    def __init__(self):
        self.namespaces = []
        self.root_links = []
        self.procs = []
        self.cleanups = []

    def add_cleanup(self, fn):
        """Runs `fn()` first thing in `close()` (last added, first run)."""
        self.cleanups.append(fn)

    def netns(self, suffix):
        name = f"{PREFIX}{suffix}"
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        # No IPv6 autoconfiguration chatter (DAD, router solicitations) in the counters;
        # "default" also covers interfaces moved in later.
        run(ns_exec(name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1"))
        return name

    def spawn(self, cmd, cpu, stdout_path, stderr_path):
        out = open(stdout_path, "w")
        err = open(stderr_path, "w")
        try:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 preexec_fn=child_setup(cpu))
        finally:
            out.close()
            err.close()
        self.procs.append(p)
        return p

    def stop(self, p):
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns a note if it misbehaved."""
        if p.poll() is not None:
            return f"exited early with status {p.returncode}"
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=STOP_TIMEOUT)
            return f"did not stop within {STOP_TIMEOUT}s of SIGTERM; killed"
        return None if rc == 0 else f"exit status {rc} after SIGTERM"

    def close(self):
        # A second Ctrl-C must not cut the cleanup short.
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self._close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _close(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # keep cleaning up
                log(f"cleanup: {e}")
        self.cleanups = []
        for p in self.procs:
            try:
                if p.poll() is None:
                    self.stop(p)
            except Exception as e:  # keep cleaning up
                log(f"cleanup: stopping pid {p.pid}: {e}")
        for name in self.root_links:
            remove(["ip", "link", "del", name], f"link {name}")
        for ns in reversed(self.namespaces):
            remove(["ip", "netns", "del", ns], f"namespace {ns}")
        self.procs, self.root_links, self.namespaces = [], [], []


def remove(cmd, what, tries=3):
    """Runs a deletion (`ip netns del`, `ip link del`) that must not stop the clean-up of
    what follows: a failure or a hung command is logged and tried again (a namespace can
    stay busy for a moment after the processes in it were ended); never raises."""
    for attempt in range(tries):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT,
                               preexec_fn=child_setup(None))
            if p.returncode == 0:
                return True
            why = p.stderr.strip() or f"status {p.returncode}"
        except (subprocess.TimeoutExpired, OSError) as e:
            why = str(e)
        if "Cannot find device" in why or "No such file" in why:
            return True  # already gone (a non-persistent tap goes with its process)
        log(f"cleanup: {what}: {why}" + (" (trying again)" if attempt + 1 < tries else ""))
        time.sleep(0.5 * (attempt + 1))
    return False


def sweep():
    """Removes every namespace and root-namespace link of this run (named PREFIX...) that
    is still there, logging each one: what a case's own clean-up could not remove."""
    left = 0
    try:
        names = [ln.split()[0] for ln in run(["ip", "netns", "list"]).splitlines() if ln.split()]
        links = [ln.split()[0].split("@")[0]
                 for ln in run(["ip", "-br", "link", "show"]).splitlines() if ln.split()]
    except BenchError as e:
        log(f"cleanup: could not list what is left: {e}")
        return 0
    for ns in names:
        if ns.startswith(PREFIX):
            log(f"cleanup: namespace {ns} was left behind; removing it")
            left += 1
            remove(["ip", "netns", "del", ns], f"namespace {ns}")
    for name in links:
        if name.startswith(PREFIX):
            log(f"cleanup: link {name} was left behind; removing it")
            left += 1
            remove(["ip", "link", "del", name], f"link {name}")
    return left


def wait_ready(proc, stderr_path, marker):
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        with open(stderr_path) as f:
            text = f.read()
        if marker in text:
            return
        if proc.poll() is not None:
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise BenchError(f"exited with status {proc.returncode} before '{marker}': {tail}")
        time.sleep(0.05)
    raise BenchError(f"no '{marker}' on stderr within {READY_TIMEOUT}s")




def cpu_busy(interval=0.3):
    """Fraction of all CPUs busy over `interval`, from /proc/stat."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return idle, sum(v)
    i0, t0 = sample()
    time.sleep(interval)
    i1, t1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit_s):
    """Waits (at most `limit_s`) until other work leaves the machine nearly idle; returns
    a note when it never did, since a busy machine steals the cores being measured."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy()
    said = False
    while busy > QUIET and time.monotonic() < deadline:
        if not said:
            log(f"waiting up to {limit_s:g}s for the machine to be idle ({busy:.0%} busy)")
            said = True
        time.sleep(1.0)
        busy = cpu_busy()
    return f"machine {busy:.0%} busy before the run" if busy > QUIET else ""


def machine_summary():
    cpu_model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            cpu_model = m.group(1) if m else "?"
    except OSError:
        pass
    rev = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False).strip()
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                check=False).strip()
    return (f"{os.uname().release}, {os.cpu_count()} CPUs ({cpu_model}), "
            f"load average {os.getloadavg()[0]:.2f}, commit {rev or '?'}"
            f"{' (with uncommitted changes)' if dirty else ''}")


def apt_install(packages, timeout=900):
    """Installs the Debian packages that are missing; returns None, or why it could not."""
    missing = []
    for pkg in packages:
        p = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg],
                           capture_output=True, text=True, timeout=CMD_TIMEOUT)
        if not p.stdout.startswith("ii"):
            missing.append(pkg)
    if not missing:
        return None
    log(f"installing {' '.join(missing)} ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd, t in ((["apt-get", "-qq", "update"], 300),
                   (["apt-get", "-qq", "-y", "install", "--no-install-recommends", *missing],
                    timeout)):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=t, env=env,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"{' '.join(cmd[:3])} timed out after {t}s"
        if p.returncode != 0:
            tail = " | ".join(p.stderr.strip().splitlines()[-2:])
            return f"apt-get install {' '.join(missing)} failed: {tail}"
    return None
