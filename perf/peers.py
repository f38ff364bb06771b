#!/usr/bin/env python3
"""perf/peers.py: the peer switches ringswitch is measured against, each on two tap ports.

    PEERS = {"qemu-hub": Peer, "vde": Peer, "ovs": Peer}

For each peer: `available()` says whether it can run (None) or why not (one line);
`ensure_installed(log)` installs its Debian package when it is missing; `start(topo, ns_a,
ns_b, cpu, logs, tag)` starts it pinned to `cpu` with two tap ports whose kernel sides end
up in namespaces `ns_a` and `ns_b`, and returns a `Started` that says where to send and
where to count, which processes' CPU time is the switch's, and how to tear it all down.

| peer | process(es) on `cpu` | how the taps come about |
| --- | --- | --- |
| qemu-hub | `qemu-system-x86_64 -M none`, two tap netdevs joined by hubports on hub 0 (floods) | QEMU creates them; moved to ns_a / ns_b |
| vde | one `vde_switch` with `-t TAP_A -t TAP_B` (learning switch, no vde_plug2tap needed) | vde_switch creates them; moved |
| ovs | ovs-vswitchd (userspace `netdev` datapath, bridge with the default NORMAL flow, `type=tap` ports) and its ovsdb-server, both in a private namespace `topo.netns("o")` | OVS creates them there; moved |

What the caller passes
----------------------
`ns_a`, `ns_b`: network namespaces the caller already created (perf/bench's
`topo.netns("a")`, `topo.netns("b")`); `start()` moves the taps' kernel sides into them and
sets them up, and creates no other namespace except OVS's own one.

`topo` needs only (perf/bench's `Topology` has all of them):
  - `topo.spawn(cmd, cpu, stdout_path, stderr_path)` -> subprocess.Popen: starts a process
    pinned to `cpu` with stdin from /dev/null and registers it for cleanup;
  - `topo.procs`: the list of those Popen objects (vde_switch is started here, because its
    stdin must be a pipe, and appended to it so that `topo.close()` stops it too);
  - `topo.netns(suffix)` -> name, and `topo.namespaces` (OVS only: its private namespace
    is created through it and removed from that list again by `stop()`);
  - `topo.close()`: `start()` makes it call `Started.stop()` first, through
    `topo.add_cleanup(fn)` if the topology has such a method, otherwise by wrapping that
    instance's `close`. So an exception anywhere between start() and the caller's close()
    still removes everything: processes, taps, OVS's namespace, temporary directories.

Names: taps are `rsp<PID>t<n>a` / `...b` (created in the root namespace, or OVS's, then
moved; the PID makes them unique), temporary directories `$TMPDIR/rsp<PID>-vde-*` and
`rsp<PID>-ovs-*`; OVS's bridge is `rspbr` inside its own namespace.

`logs`: an existing directory; each process's stdout/stderr (and OVS's log files) go there
as `<tag>.<process>.stdout|stderr|log`. `tag`: a file-name-safe string for those names.

Errors are raised as `PeerError` (a RuntimeError) whose message names what failed; the
caller turns it into a table note and moves on. Every subprocess call has a timeout, every
wait a deadline. Python 3.11, standard library only; start() needs root and iproute2.

Self-test (root): `python3 perf/peers.py selftest [qemu-hub vde ovs]` installs what is
missing, starts each peer between namespaces rsp<PID>a / rsp<PID>b pinned to CPU 1, sends a
learning broadcast from B, then 3 s of 60-byte frames from A (rs-gen on CPU 0) toward B's
MAC, prints offered / delivered Mpps and the peer's CPU seconds, tears it down and checks
that no namespace, link, directory or process of its own is left.
"""

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PERF_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(PERF_DIR)
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"),
                       "release")  # as cargo reads it
PID = os.getpid()
MARK = f"rsp{PID}"  # every tap, temporary directory and self-test namespace starts with this

CMD_TIMEOUT = 15  # seconds for one short command (ip, ovs-vsctl, a version query)
READY_TIMEOUT = 15  # seconds for a peer to create its taps / sockets
STOP_TIMEOUT = 10  # seconds for a process to exit once asked
INSTALL_TIMEOUT = 900  # seconds for one apt-get install
UPDATE_TIMEOUT = 300  # seconds for apt-get update
POLL = 0.05

POLICY_RC = "/usr/sbin/policy-rc.d"
POLICY_RC_SAVED = POLICY_RC + ".rsp-peers-saved"
POLICY_RC_OURS = "#!/bin/sh\n# perf/peers.py: no services start during its apt-get install\nexit 101\n"

OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
OVS_SYSTEM_RUNDIR = "/var/run/openvswitch"
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"


class PeerError(RuntimeError):
    """A peer could not be installed, started or stopped; the message says what failed."""


def _nolog(_msg):
    pass


# ---------------------------------------------------------------- processes and commands

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def child_setup(cpu):
    """Runs in the child before exec: SIGTERM when we die, and pinned to `cpu` if given."""

    def setup():
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return setup


def _run(cmd, timeout=CMD_TIMEOUT, check=True, env=None):
    """Runs a short command; returns its stdout. Raises PeerError if it fails or hangs."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL, preexec_fn=child_setup(None))
    except subprocess.TimeoutExpired:
        raise PeerError(f"timed out after {timeout}s: {' '.join(cmd)}")
    except OSError as e:
        raise PeerError(f"cannot run {cmd[0]}: {e}")
    if check and p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise PeerError(f"failed ({p.returncode}): {' '.join(cmd)}: {' | '.join(msg[-3:])}")
    return p.stdout


def _ip(ns, *args):
    """An `ip` command line, in namespace `ns` (None: ours)."""
    return ["ip", *(["-n", ns] if ns else []), *args]


def _popen(cmd, cpu, stdout_path, stderr_path, stdin_pipe=False, env=None):
    """Starts a process pinned to `cpu`, output to the two files, stdin /dev/null or a pipe
    that we keep open (closing it is then the way to ask the process to end)."""
    out, err = open(stdout_path, "w"), open(stderr_path, "w")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=err, env=env,
                                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                preexec_fn=child_setup(cpu))
    except OSError as e:
        raise PeerError(f"cannot start {cmd[0]}: {e}")
    finally:
        out.close()
        err.close()


def _spawn(topo, cmd, cpu, logs, tag, what):
    """Starts `cmd` through topo.spawn (so the caller's cleanup knows it); returns
    (Popen, stderr path)."""
    out, err = (os.path.join(logs, f"{tag}.{what}.{s}") for s in ("stdout", "stderr"))
    try:
        return topo.spawn(cmd, cpu, out, err), err
    except OSError as e:
        raise PeerError(f"cannot start {what} ({cmd[0]}): {e}")


def _tail(path, n=3):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-n:])
    except OSError:
        return ""


def _wait_for(what, cond, watch, timeout=READY_TIMEOUT):
    """Polls `cond()` until true; `watch` is [(Popen, stderr path, name)] that must stay
    alive meanwhile. Raises PeerError on timeout or when one of them exits."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        for p, err, name in watch:
            if p.poll() is not None:
                raise PeerError(f"{name} exited with status {p.returncode} before {what}: "
                                f"{_tail(err)}")
        if time.monotonic() > deadline:
            raise PeerError(f"{what}: not within {timeout}s")
        time.sleep(POLL)


def _stop_proc(p, name, gentle=None):
    """Ends one process: `gentle()` (if given) or SIGTERM, then SIGKILL after STOP_TIMEOUT.
    Returns a note when it had already exited or had to be killed, else None."""
    if p.poll() is not None:
        return f"{name} had already exited (status {p.returncode})"
    try:
        if gentle:
            gentle()
        else:
            p.send_signal(signal.SIGTERM)
        p.wait(timeout=STOP_TIMEOUT)
        return None
    except subprocess.TimeoutExpired:
        pass
    except (PeerError, OSError):
        pass
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=STOP_TIMEOUT)
            return f"{name} ignored the polite request; ended by SIGTERM" if gentle else None
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=STOP_TIMEOUT)
            return f"{name} did not stop within {STOP_TIMEOUT}s of SIGTERM; killed"
    return None


# ---------------------------------------------------------------- links and namespaces

_tap_counter = 0


def _tap_names():
    """Two new tap names, unique on this machine while we live (they contain our PID)."""
    global _tap_counter
    _tap_counter = (_tap_counter + 1) % 1000
    return f"{MARK}t{_tap_counter}a", f"{MARK}t{_tap_counter}b"


def _link_exists(ns, name):
    try:
        p = subprocess.run(_ip(ns, "link", "show", "dev", name), capture_output=True,
                           timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0


def _move_up(tap, from_ns, to_ns):
    """Moves a tap's kernel side from `from_ns` (None: ours) into `to_ns` and sets it up.
    The process holding the tap's fd keeps using it: the fd is bound to the device, not
    to its name or namespace."""
    _run(_ip(from_ns, "link", "set", "dev", tap, "netns", to_ns))
    _run(_ip(to_ns, "link", "set", "dev", tap, "up"))


def _delete_links(names, namespaces):
    """Deletes each of `names` wherever it is among `namespaces` (None: ours); taps the
    peer made persistent (OVS) would otherwise outlive it."""
    for ns in namespaces:
        for name in names:
            if _link_exists(ns, name):
                _run(_ip(ns, "link", "del", "dev", name), check=False)


def _delete_netns(topo, ns):
    _run(["ip", "netns", "del", ns], check=False)
    names = getattr(topo, "namespaces", None)
    if isinstance(names, list) and ns in names:
        names.remove(ns)


# ---------------------------------------------------------------- what start() returns

class Started:
    """A running peer. `if_a`: the interface in `ns_a` to send on; `if_b`: the interface in
    `ns_b` whose rx_packets count delivery; `pids`: the processes whose CPU time is the
    switch's; `helper_pids`: other processes it runs (control plane, idle during a run;
    exclude them when judging whether others disturbed the run); `exited()`: None while
    all of them run, else a note; `stop()`: ends and removes everything, any number of
    times (also after a failed start), and returns a note ("" when all went well)."""

    def __init__(self, peer, ns_a, ns_b, cpu):
        self.peer, self.ns_a, self.ns_b, self.cpu = peer, ns_a, ns_b, cpu
        self.if_a = self.if_b = None
        self.pids, self.helper_pids = [], []
        self._procs = []  # (name, Popen) of everything started
        self._undo = []  # (what, fn), undone last-first

    def track(self, name, proc, helper=False):
        """Records a process start() started: its pid goes to `pids` (or `helper_pids`)."""
        self._procs.append((name, proc))
        (self.helper_pids if helper else self.pids).append(proc.pid)

    def exited(self):
        """None while every process runs, else a note naming the one(s) that exited."""
        gone = [f"{n} exited with status {p.returncode}" for n, p in self._procs
                if p.poll() is not None]
        return "; ".join(gone) or None

    def defer(self, what, fn):
        """Registers `fn` (returns None or a note) to undo something `start()` just did."""
        self._undo.append((what, fn))

    def stop(self):
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        notes = []
        try:
            while self._undo:
                what, fn = self._undo.pop()
                try:
                    note = fn()
                except Exception as e:  # keep cleaning up
                    note = f"{type(e).__name__}: {e}"
                if note:
                    notes.append(f"{what}: {note}")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return "; ".join(notes)

    def __repr__(self):
        return (f"Started({self.peer}: {self.ns_a}/{self.if_a} -> {self.ns_b}/{self.if_b}, "
                f"pids {self.pids}, helpers {self.helper_pids})")


def _hook_cleanup(topo, started):
    """Makes the caller's topo.close() run started.stop() first."""
    add = getattr(topo, "add_cleanup", None)
    if callable(add):
        add(started.stop)
        return
    inner = topo.close

    def close(*args, **kwargs):
        try:
            started.stop()
        finally:
            inner(*args, **kwargs)

    topo.close = close


# ---------------------------------------------------------------- installing

@contextlib.contextmanager
def _services_blocked():
    """While active, Debian maintainer scripts may not start services: /usr/sbin/policy-rc.d
    answers 101 (the file already there is kept if it does so; otherwise it is set aside
    and put back afterwards)."""
    if os.path.exists(POLICY_RC_SAVED) and _is_ours(POLICY_RC):  # an earlier run died
        os.replace(POLICY_RC_SAVED, POLICY_RC)
    if _policy_denies():
        yield
        return
    saved = os.path.exists(POLICY_RC)
    if saved:
        os.replace(POLICY_RC, POLICY_RC_SAVED)
    try:
        with open(POLICY_RC, "w") as f:
            f.write(POLICY_RC_OURS)
        os.chmod(POLICY_RC, 0o755)
        yield
    finally:
        if saved:
            os.replace(POLICY_RC_SAVED, POLICY_RC)
        elif _is_ours(POLICY_RC):
            os.unlink(POLICY_RC)


def _is_ours(path):
    try:
        with open(path) as f:
            return f.read() == POLICY_RC_OURS
    except OSError:
        return False


def _policy_denies():
    if not os.access(POLICY_RC, os.X_OK):
        return False
    try:
        p = subprocess.run([POLICY_RC, "openvswitch-switch", "start"], capture_output=True,
                           timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 101


def _apt_get(args, timeout):
    """Runs apt-get non-interactively; returns None or the last lines of its complaint."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", APT_LISTCHANGES_FRONTEND="none",
               NEEDRESTART_MODE="a")
    cmd = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=120",
           "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
           *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout}s"
    except OSError as e:
        return str(e)
    if p.returncode == 0:
        return None
    lines = [x for x in (p.stderr + p.stdout).strip().splitlines() if x.strip()]
    return f"exit {p.returncode}: " + " | ".join(lines[-2:])


def _apt_install(package):
    """apt-get install --no-install-recommends PACKAGE, with no service started; one
    `apt-get update` and a second try if the package lists did not know it."""
    with _services_blocked():
        err = _apt_get(["install", "--no-install-recommends", package], INSTALL_TIMEOUT)
        if err and ("Unable to locate" in err or "has no installation candidate" in err
                    or "404" in err or "Failed to fetch" in err):
            if _apt_get(["update"], UPDATE_TIMEOUT) is None:
                err = _apt_get(["install", "--no-install-recommends", package],
                               INSTALL_TIMEOUT)
    return err


def install(package):
    """Installs a Debian package the way the peers' packages are installed (no service
    started, non-interactive, bounded in time): None, or why it failed. For the tools the
    benchmarks need beside the peers (perf/bench tcp: iperf3)."""
    return _apt_install(package)


# ---------------------------------------------------------------- the peers

class Peer:
    """One peer switch. Subclasses set `name`, `package` (Debian), `binaries` (all needed)
    and implement `_version()` and `_start(topo, started, cpu, logs, tag)`."""

    name = "?"
    package = "?"
    binaries = ()
    files = ()
    label_format = "{version}"

    def __init__(self):
        self._install_error = None
        self._found_version = None

    # -- availability

    def _missing(self):
        missing = [b for b in self.binaries if shutil.which(b) is None]
        return missing + [f for f in self.files if not os.path.exists(f)]

    def available(self):
        """None if the peer can be started now, else a one-line reason."""
        missing = self._missing()
        if missing:
            what = f"{missing[0]} not installed"
            if self._install_error:
                return f"{what} and apt-get install {self.package} failed: {self._install_error}"
            return f"{what} (Debian package {self.package})"
        if os.geteuid() != 0:
            return "needs root (namespaces, taps)"
        if shutil.which("ip") is None:
            return "ip (iproute2) not installed"
        return None

    def ensure_installed(self, log=None):
        """Installs the Debian package if something is missing (apt-get -y install
        --no-install-recommends, non-interactive, no service started, bounded in time,
        quiet unless it fails); returns None or the reason the peer is unavailable."""
        log = log or _nolog
        if not self._missing():
            return self.available()
        if os.geteuid() != 0:
            self._install_error = "not root"
            return self.available()
        log(f"{self.name}: installing Debian package {self.package} ...")
        err = _apt_install(self.package)
        self._install_error = err
        self._found_version = None
        if err:
            log(f"{self.name}: apt-get install {self.package} failed: {err}")
        else:
            note = self._after_install()
            if note:
                log(f"{self.name}: {note}")
        return self.available()

    def _after_install(self):
        return None

    # -- label

    @property
    def label(self):
        """E.g. "QEMU 7.2.22 net hub (tap)": the version is asked of the binary once."""
        if self._found_version is None and not self._missing():
            try:
                self._found_version = self._version() or "?"
            except PeerError:
                self._found_version = "?"
        return self.label_format.format(version=self._found_version or "?")

    def _version(self):
        raise NotImplementedError

    # -- start

    def start(self, topo, ns_a, ns_b, cpu, logs, tag):
        """Starts the peer pinned to `cpu` between ns_a and ns_b (both existing); see the
        module docstring for what `topo` must provide. Returns a Started; raises
        PeerError (after cleaning up what it had done) when something fails."""
        reason = self.available()
        if reason:
            raise PeerError(f"{self.name}: {reason}")
        started = Started(self.name, ns_a, ns_b, cpu)
        _hook_cleanup(topo, started)
        try:
            self._start(topo, started, cpu, logs, tag)
        except BaseException as e:
            note = started.stop()
            if isinstance(e, PeerError):
                raise PeerError(f"{self.name}: {e}" + (f" (cleanup: {note})" if note else ""))
            raise
        return started

    def _start(self, topo, started, cpu, logs, tag):
        raise NotImplementedError


def _first_match(pattern, text):
    m = re.search(pattern, text)
    return m.group(1) if m else None


class QemuHub(Peer):
    """QEMU's net hub, as users of `-netdev hubport` get it: `qemu-system-x86_64 -M none
    -nodefaults -display none` (no machine, no CPU, no devices) with two tap netdevs, each
    joined to hub 0 by a hubport. The hub floods every frame to every other port (it does
    not learn), which is what QEMU users compare against. QEMU creates the taps
    (ifname=, script=no); their kernel sides are then moved to ns_a / ns_b. The whole
    process (main loop and helper threads) is pinned to `cpu` from the child before exec."""

    name = "qemu-hub"
    package = "qemu-system-x86"
    binaries = ("qemu-system-x86_64",)
    label_format = "QEMU {version} net hub (tap)"

    def _version(self):
        out = _run(["qemu-system-x86_64", "--version"])
        return _first_match(r"version (\S+)", out)

    @staticmethod
    def command(tap_a, tap_b):
        return ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
                "-netdev", f"tap,id=a,ifname={tap_a},script=no,downscript=no",
                "-netdev", f"tap,id=b,ifname={tap_b},script=no,downscript=no",
                "-netdev", "hubport,id=ha,hubid=0,netdev=a",
                "-netdev", "hubport,id=hb,hubid=0,netdev=b"]

    def _start(self, topo, st, cpu, logs, tag):
        tap_a, tap_b = _tap_names()
        st.defer("taps", lambda: _delete_links((tap_a, tap_b), (None, st.ns_a, st.ns_b)))
        p, err = _spawn(topo, self.command(tap_a, tap_b), cpu, logs, tag, "qemu")
        st.defer("qemu", lambda: _stop_proc(p, "qemu-system-x86_64"))
        st.track("qemu-system-x86_64", p)
        watch = [(p, err, "qemu-system-x86_64")]
        _wait_for("QEMU's taps appeared",
                  lambda: _link_exists(None, tap_a) and _link_exists(None, tap_b), watch)
        _move_up(tap_a, None, st.ns_a)
        _move_up(tap_b, None, st.ns_b)
        st.if_a, st.if_b = tap_a, tap_b


class Vde(Peer):
    """vde_switch from vde2, a learning switch: one process, `vde_switch -f /dev/null -s
    DIR/ctl -t TAP_A -t TAP_B` (the tuntap module takes several -t; no vde_plug2tap
    processes needed). `-f /dev/null` keeps /etc/vde2/vde_switch.rc and ~/.vderc out; the
    data socket directory is private (a temporary directory) and no management socket is
    opened. It runs in the foreground; its stdin is its console and it exits at EOF, so
    stdin is a pipe we hold: closing it ends vde_switch cleanly (and it ends by itself if
    we die). It creates the taps; their kernel sides are moved to ns_a / ns_b."""

    name = "vde"
    package = "vde2"
    binaries = ("vde_switch",)
    label_format = "vde_switch (vde2 {version}, tap)"

    def _version(self):
        try:
            p = subprocess.run(["vde_switch", "-v"], capture_output=True, text=True,
                               timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PeerError(f"vde_switch -v: {e}")
        return _first_match(r"VDE (\S+)", p.stdout + p.stderr)

    @staticmethod
    def command(sockdir, tap_a, tap_b):
        return ["vde_switch", "-f", "/dev/null", "-s", os.path.join(sockdir, "ctl"),
                "-t", tap_a, "-t", tap_b]

    @staticmethod
    def _stop(p):
        """Closing stdin is vde_switch's own way out (it cleans up at EOF)."""
        try:
            return _stop_proc(p, "vde_switch", gentle=p.stdin.close)
        finally:
            p.stdin.close()

    def _start(self, topo, st, cpu, logs, tag):
        tap_a, tap_b = _tap_names()
        sockdir = tempfile.mkdtemp(prefix=f"{MARK}-vde-")
        st.defer("socket directory", lambda: shutil.rmtree(sockdir, ignore_errors=True))
        st.defer("taps", lambda: _delete_links((tap_a, tap_b), (None, st.ns_a, st.ns_b)))
        err = os.path.join(logs, f"{tag}.vde_switch.stderr")
        p = _popen(self.command(sockdir, tap_a, tap_b), cpu,
                   os.path.join(logs, f"{tag}.vde_switch.stdout"), err, stdin_pipe=True)
        topo.procs.append(p)
        st.defer("vde_switch", lambda: self._stop(p))
        st.track("vde_switch", p)
        ctl = os.path.join(sockdir, "ctl", "ctl")
        _wait_for("vde_switch's taps and socket appeared",
                  lambda: (os.path.exists(ctl) and _link_exists(None, tap_a)
                           and _link_exists(None, tap_b)),
                  [(p, err, "vde_switch")])
        _move_up(tap_a, None, st.ns_a)
        _move_up(tap_b, None, st.ns_b)
        st.if_a, st.if_b = tap_a, tap_b


class Ovs(Peer):
    """Open vSwitch with the userspace datapath (the kernel here has no openvswitch
    module): a private ovsdb-server and ovs-vswitchd with database, run directory, pid
    files, unixctl sockets and --remote under a temporary directory (OVS_RUNDIR,
    OVS_DBDIR, OVS_LOGDIR, OVS_SYSCONFDIR point there; every ovs-vsctl gets --db=unix:...),
    log files in `logs`. Bridge `rspbr` has datapath_type=netdev and no controller, so its
    default flow is NORMAL (MAC learning); the two ports are `type=tap` interfaces, which
    OVS creates itself. other_config: dpdk-init=false, pmd-cpu-mask=1<<cpu. Tap ports are
    not PMD ports, so no PMD thread is started and the main thread of ovs-vswitchd reads
    and writes the taps; all its threads (main, handler, revalidator, urcu, ct clean) are
    pinned to `cpu`, and so is ovsdb-server (idle during a run; in `helper_pids`).

    Both daemons run inside a namespace of their own, `topo.netns("o")`: the bridge's
    internal port (a tap in the netdev datapath) and whatever OVS leaves behind stay out
    of the root namespace and die with that namespace. OVS makes its taps persistent;
    after it created them their kernel sides are moved from there to ns_a / ns_b, as for
    the other peers. OVS then logs once that it can no longer query them by name
    (SIOCGIFINDEX / ethtool "No such device"), but reading and writing go through the tap
    fds it holds, so forwarding and learning are unaffected (checked: `ovs-appctl
    fdb/show` learns both MACs on the right ports). `stop()` asks `ovs-appctl exit
    --cleanup` (which removes the ports and taps), then ends ovsdb-server, deletes any tap
    still there and the namespace, and removes the temporary directory."""

    name = "ovs"
    package = "openvswitch-switch"
    binaries = ("ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ovs-appctl")
    files = (OVS_SCHEMA,)
    label_format = "Open vSwitch {version}, userspace netdev datapath (tap)"
    bridge = "rspbr"

    def _version(self):
        out = _run(["ovs-vswitchd", "--version"])
        return _first_match(r"Open vSwitch\)\s+(\S+)", out)

    def _after_install(self):
        """Stops any system-wide OVS that the package's scripts started despite the policy."""
        return _stop_system_ovs()

    def _start(self, topo, st, cpu, logs, tag):
        tap_a, tap_b = _tap_names()
        ns_o = topo.netns("o")
        st.defer("OVS namespace", lambda: _delete_netns(topo, ns_o))
        base = tempfile.mkdtemp(prefix=f"{MARK}-ovs-")
        st.defer("OVS directory", lambda: shutil.rmtree(base, ignore_errors=True))
        d = {k: os.path.join(base, k) for k in ("run", "db", "log", "etc")}
        for path in d.values():
            os.mkdir(path)
        env = dict(os.environ, OVS_RUNDIR=d["run"], OVS_DBDIR=d["db"], OVS_LOGDIR=d["log"],
                   OVS_SYSCONFDIR=d["etc"])
        env_cmd = ["env", *(f"{k}={env[k]}" for k in
                            ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"))]
        st.defer("taps", lambda: _delete_links((tap_a, tap_b, self.bridge),
                                               (ns_o, st.ns_a, st.ns_b)))
        db = os.path.join(d["db"], "conf.db")
        sock = os.path.join(d["run"], "db.sock")
        _run(["ovsdb-tool", "create", db, OVS_SCHEMA], env=env)

        dbs, dbs_err = _spawn(topo, env_cmd + ["ip", "netns", "exec", ns_o, *self.ovsdb_cmd(
            db, sock, d["run"], os.path.join(logs, f"{tag}.ovsdb-server.log"))], cpu, logs, tag,
                              "ovsdb-server")
        dbs_ctl = os.path.join(d["run"], "ovsdb-server.ctl")
        st.defer("ovsdb-server", lambda: _stop_proc(
            dbs, "ovsdb-server", gentle=lambda: _appctl(dbs_ctl, "exit", env=env)))
        st.track("ovsdb-server", dbs, helper=True)
        watch = [(dbs, dbs_err, "ovsdb-server")]
        _wait_for("ovsdb-server's socket appeared", lambda: os.path.exists(sock), watch)

        vsctl = ["ovs-vsctl", f"--db=unix:{sock}", "--timeout=10"]
        _run(vsctl + ["--no-wait", "init"], env=env)
        _run(vsctl + ["--no-wait", "set", "Open_vSwitch", ".", "other_config:dpdk-init=false",
                      f"other_config:pmd-cpu-mask={1 << cpu:#x}"], env=env)

        ctl = os.path.join(d["run"], "ovs-vswitchd.ctl")
        vsd, vsd_err = _spawn(topo, env_cmd + ["ip", "netns", "exec", ns_o, *self.vswitchd_cmd(
            sock, d["run"], os.path.join(logs, f"{tag}.ovs-vswitchd.log"))], cpu, logs, tag,
                              "ovs-vswitchd")
        st.defer("ovs-vswitchd", lambda: _stop_proc(
            vsd, "ovs-vswitchd", gentle=lambda: _appctl(ctl, "exit", "--cleanup", env=env)))
        st.track("ovs-vswitchd", vsd)
        watch.append((vsd, vsd_err, "ovs-vswitchd"))
        _wait_for("ovs-vswitchd's control socket appeared", lambda: os.path.exists(ctl), watch)

        # Without --no-wait, ovs-vsctl returns once ovs-vswitchd has applied the change.
        _run(vsctl + self.bridge_args(tap_a, tap_b), timeout=CMD_TIMEOUT + 10, env=env)
        for tap in (tap_a, tap_b):
            self._check_port(vsctl, tap, env)
        _wait_for("OVS's taps appeared",
                  lambda: _link_exists(ns_o, tap_a) and _link_exists(ns_o, tap_b), watch)
        _move_up(tap_a, ns_o, st.ns_a)
        _move_up(tap_b, ns_o, st.ns_b)
        st.if_a, st.if_b = tap_a, tap_b

    @staticmethod
    def ovsdb_cmd(db, sock, rundir, logfile):
        return ["ovsdb-server", db, f"--remote=punix:{sock}",
                f"--pidfile={os.path.join(rundir, 'ovsdb-server.pid')}",
                f"--unixctl={os.path.join(rundir, 'ovsdb-server.ctl')}",
                f"--log-file={logfile}", "--no-chdir", "-vconsole:err", "-vsyslog:off"]

    @staticmethod
    def vswitchd_cmd(sock, rundir, logfile):
        return ["ovs-vswitchd", f"unix:{sock}",
                f"--pidfile={os.path.join(rundir, 'ovs-vswitchd.pid')}",
                f"--unixctl={os.path.join(rundir, 'ovs-vswitchd.ctl')}",
                f"--log-file={logfile}", "--no-chdir", "--disable-system",
                "--disable-system-route", "-vconsole:err", "-vsyslog:off"]

    @classmethod
    def bridge_args(cls, tap_a, tap_b):
        br = cls.bridge
        return ["add-br", br, "--", "set", "Bridge", br, "datapath_type=netdev",
                "--", "add-port", br, tap_a, "--", "set", "Interface", tap_a, "type=tap",
                "--", "add-port", br, tap_b, "--", "set", "Interface", tap_b, "type=tap"]

    @staticmethod
    def _check_port(vsctl, tap, env):
        ofport = _run(vsctl + ["get", "Interface", tap, "ofport"], env=env).strip()
        if not ofport.isdigit() or int(ofport) <= 0:
            error = _run(vsctl + ["get", "Interface", tap, "error"], env=env, check=False)
            raise PeerError(f"OVS did not open tap port {tap} (ofport {ofport}): "
                            f"{error.strip()}")


def _appctl(target, *args, env=None):
    _run(["ovs-appctl", "-t", target, "--timeout=5", *args], timeout=STOP_TIMEOUT, env=env)


def _stop_system_ovs():
    """Stops a system-wide ovsdb-server / ovs-vswitchd (pid files in /var/run/openvswitch)
    if one runs; returns a note saying so."""
    alive = []
    for daemon in ("ovs-vswitchd", "ovsdb-server"):
        try:
            with open(os.path.join(OVS_SYSTEM_RUNDIR, f"{daemon}.pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            alive.append((daemon, pid))
        except (OSError, ValueError):
            continue
    if not alive:
        return None
    if os.access(OVS_CTL, os.X_OK):
        _run([OVS_CTL, "stop"], timeout=60, check=False)
    for daemon, pid in alive:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    return "stopped the system-wide " + ", ".join(d for d, _ in alive) + " the install started"


PEERS = {p.name: p for p in (QemuHub(), Vde(), Ovs())}


# ---------------------------------------------------------------- self-test

class _SelfTestTopology:
    """The part of perf/bench's Topology that start() uses, with names rsp<PID>...."""

    def __init__(self):
        self.namespaces, self.root_links, self.procs = [], [], []

    def netns(self, suffix):
        name = f"{MARK}{suffix}"
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        _run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
              "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        return name

    def spawn(self, cmd, cpu, stdout_path, stderr_path):
        p = _popen(cmd, cpu, stdout_path, stderr_path)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                _stop_proc(p, str(p.args[0]))
        for name in self.root_links:
            _run(["ip", "link", "del", name], check=False)
        for ns in reversed(self.namespaces):
            _run(["ip", "netns", "del", ns], check=False)
        self.procs, self.root_links, self.namespaces = [], [], []


def _link(ns, ifname):
    return json.loads(_run(_ip(ns, "-s", "-j", "link", "show", "dev", ifname)))[0]


def _rx_packets(ns, ifname):
    return int(_link(ns, ifname)["stats64"]["rx"]["packets"])


def _cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _rs_gen(ns, iface, *args, timeout):
    out = _run(["ip", "netns", "exec", ns, os.path.join(RELEASE, "rs-gen"), "--iface", iface,
                *args], timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def _ensure_rs_gen(log):
    if os.access(os.path.join(RELEASE, "rs-gen"), os.X_OK):
        return
    log("building ringswitch-perf (release) for rs-gen ...")
    p = subprocess.run(["cargo", "build", "--release", "-p", "ringswitch-perf"], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise PeerError(f"cargo build -p ringswitch-perf failed: {p.stderr[-500:]}")


def _leftovers(pids):
    """What of this process is still around: namespaces, links, temporary directories,
    processes among `pids` or naming MARK on their command line."""
    found = []
    found += [f"namespace {ln.split()[0]}" for ln in _run(["ip", "netns", "list"]).splitlines()
              if ln.startswith(MARK)]
    found += [f"link {ln.split(':')[1].strip()}" for ln in _run(["ip", "-o", "link"]).splitlines()
              if MARK in ln]
    tmp = tempfile.gettempdir()
    found += [f"directory {os.path.join(tmp, n)}" for n in os.listdir(tmp) if n.startswith(MARK)]
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == PID:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if int(d) in pids or (MARK in cmd and "peers.py" not in cmd):
            found.append(f"process {d} ({cmd[:80]})")
    return found


def _other_peer_processes():
    """ovs/vde/qemu processes on the machine that are not ours (e.g. another engineer's)."""
    names = ("ovs-vswitchd", "ovsdb-server", "vde_switch", "qemu-system-x86")
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm in names:
                out.append(f"{comm} {d}")
    return out


def _selftest_one(peer, logs, duration, close_only, log):
    """Starts one peer, measures A -> B once, tears down; returns (ok, line, pids)."""
    reason = peer.ensure_installed(log)
    if reason:
        return False, f"{peer.name}: unavailable: {reason}", []
    topo = _SelfTestTopology()
    pids = []
    try:
        ns_a, ns_b = topo.netns("a"), topo.netns("b")
        st = peer.start(topo, ns_a, ns_b, 1, logs, f"selftest-{peer.name}")
        pids = st.pids + st.helper_pids
        log(f"{peer.name}: {peer.label}: {st}")
        mac_a, mac_b = _link(ns_a, st.if_a)["address"], _link(ns_b, st.if_b)["address"]
        _rs_gen(ns_b, st.if_b, "--count", "1", "--src", mac_b, "--dst", "ff:ff:ff:ff:ff:ff",
                timeout=CMD_TIMEOUT)
        time.sleep(0.2)
        rx0, cpu0 = _rx_packets(ns_b, st.if_b), _cpu_seconds(st.pids)
        gen = _rs_gen(ns_a, st.if_a, "--cpu", "0", "--size", "60", "--duration", str(duration),
                      "--src", mac_a, "--dst", mac_b, timeout=duration + 30)
        time.sleep(0.3)
        rx1, cpu1 = _rx_packets(ns_b, st.if_b), _cpu_seconds(st.pids)
        if st.exited():
            raise PeerError(f"during the run: {st.exited()}")
        s = gen["seconds"]
        line = (f"{peer.name}: offered {(gen['sent'] + gen['errors']) / s / 1e6:.3f} Mpps, "
                f"delivered {(rx1 - rx0) / s / 1e6:.3f} Mpps, CPU {cpu1 - cpu0:.2f} s")
        ok = rx1 > rx0
        if close_only:
            line += " (torn down by topo.close() alone)"
        else:
            note = st.stop()
            if note:
                line += f"; stop: {note}"
    except (PeerError, OSError, ValueError, KeyError, IndexError) as e:
        ok, line = False, f"{peer.name}: FAILED: {e}"
    finally:
        topo.close()
    return ok, line, pids


def selftest(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="perf/peers.py selftest")
    ap.add_argument("names", nargs="*", default=list(PEERS), help=", ".join(PEERS))
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--close-only", action="store_true",
                    help="skip Started.stop(): check that topo.close() alone cleans up")
    ap.add_argument("--logs", help="keep the processes' logs here (default: a temporary "
                                   "directory, removed when all passed)")
    args = ap.parse_args(argv)
    bad = [n for n in args.names if n not in PEERS]
    if bad:
        ap.error(f"unknown peer {', '.join(bad)}; valid: {', '.join(PEERS)}")
    if os.geteuid() != 0:
        raise SystemExit("perf/peers.py selftest: needs root")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("perf/peers.py selftest: needs 2 CPUs")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    _ensure_rs_gen(log)
    logs = args.logs or tempfile.mkdtemp(prefix="peers-selftest-logs-")
    os.makedirs(logs, exist_ok=True)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    all_ok, pids = True, []
    for name in args.names:
        ok, line, p = _selftest_one(PEERS[name], logs, args.duration, args.close_only, log)
        pids += p
        print(line, flush=True)
        all_ok &= ok
    time.sleep(0.2)
    left = _leftovers(set(pids))
    if left:
        all_ok = False
        print("LEFT BEHIND: " + "; ".join(left))
    else:
        print("cleanup: no namespace, link, directory or process of ours is left")
    others = _other_peer_processes()
    if others:
        print("note: other ovs/vde/qemu processes on this machine (not ours): "
              + ", ".join(others))
    for name in args.names:
        print(f"  {name}: {PEERS[name].label}")
    if all_ok and not args.logs:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"logs: {logs}")
    return 0 if all_ok else 1


def main(argv):
    if len(argv) >= 1 and argv[0] == "selftest":
        return selftest(argv[1:])
    print(__doc__.split("\n\n")[0])
    print("usage: perf/peers.py selftest [--duration S] [--close-only] [--logs DIR] "
          f"[{' '.join(PEERS)}]")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
