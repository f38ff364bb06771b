"""Harness of the QMP acceptance tests (issue 3): a ringswitch process whose tap ports each sit
in a private network namespace, QMP clients (a raw one for the malformed cases, qemu.qmp's
for everything a real client does), and AF_PACKET sockets that send and capture frames in
those namespaces with kernel timestamps.

Names: namespaces are `rsqn<pid>x<nnn>` and taps `rsqt<pid>x<nnn>`, so scripts/test's leak
check recognises anything left behind. Every object is closed by the `Cleanup` stack the test
gets, last first, even when the test fails. Every wait is bounded in time, every loop in count
or time.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"
BINARY = Path(os.environ.get("RINGSWITCH_BIN", RELEASE / "ringswitch"))
RS_GEN = RELEASE / "rs-gen"
RS_SINK = RELEASE / "rs-sink"
QMP_SHELL = Path(os.environ.get("QMP_SHELL", ROOT / ".venv" / "bin" / "qmp-shell"))
READY_LINE = "ringswitch: ready"
CLONE_NEWNET = 0x40000000
BROADCAST = b"\xff" * 6
ETHERTYPE_TEST = 0x88B5  # IEEE local experimental
ETHERTYPE_RARP = 0x8035
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35  # Linux; the ancillary message type (SCM_TIMESTAMPNS) is the same number

_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count()
_run_id = os.urandom(2)


# ---------------------------------------------------------------------------------------------
# capabilities


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require(ok: bool, why: str) -> None:
    """A missing capability fails the test under CI=true and skips it (saying why) elsewhere."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{why} (CI=true: a missing capability is a failure)")
    pytest.skip(why)


def require_switch() -> None:
    require(BINARY.exists(), f"{BINARY} is missing: run `cargo build --release` first")


def require_root() -> None:
    require(os.geteuid() == 0, "needs root for network namespaces, taps and AF_PACKET sockets")
    require(shutil.which("ip") is not None, "needs the `ip` tool (iproute2)")
    require_switch()


def require_qemu_qmp():
    """The qemu.qmp package (scripts/test installs it into .venv)."""
    try:
        import qemu.qmp  # noqa: F401
    except ImportError:
        require(False, "needs the qemu.qmp package (pip install qemu.qmp==0.0.6)")


def require_perf_tools() -> None:
    require_root()
    for tool in (RS_GEN, RS_SINK):
        require(tool.exists(), f"{tool} is missing: run `cargo build --release` first")


# ---------------------------------------------------------------------------------------------
# names, commands, waiting


def unique_name(kind: str) -> str:
    """`rsq` + kind (`n` namespace, `t` tap) + pid + counter: unique to this run, within
    IFNAMSIZ, and in the form scripts/test's leak check looks for."""
    n = next(_names) & 0xFFF
    return f"rsq{kind}{os.getpid() & 0x3FFFFF:x}x{n:03x}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def link_exists(ifname: str, ns: str | None = None) -> bool:
    args = ["-n", ns] if ns else []
    return ip(*args, "link", "show", "dev", ifname, check=False).returncode == 0


def wait_until(cond, timeout: float, every: float = 0.02, what: str = "condition"):
    """Polls `cond` until it returns a true value (returned) or `timeout` passes (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def mac(n: int) -> bytes:
    """A locally administered unicast MAC, distinct per `n` and per test run."""
    return bytes([0x02, 0x51]) + _run_id + struct.pack(">H", n & 0xFFFF)


def mac_str(m: bytes) -> str:
    return ":".join(f"{b:02x}" for b in m)


def mac_bytes(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


class Cleanup:
    """Closes what a test opened, last first, whatever happened; an error in one close does
    not stop the others."""

    def __init__(self):
        self._items = []

    def add(self, obj):
        self._items.append(obj)
        return obj

    def close(self):
        errors = []
        while self._items:
            obj = self._items.pop()
            try:
                obj.close()
            except Exception as e:  # noqa: BLE001 - keep closing the rest
                errors.append(f"{obj!r}: {e}")
        if errors:
            raise RuntimeError("cleanup failed: " + "; ".join(errors))


# ---------------------------------------------------------------------------------------------
# namespaces


class Netns:
    """A network namespace with loopback up and IPv6 off (so the kernel sends no frames of
    its own); deleted on close."""

    def __init__(self):
        self.name = unique_name("n")
        ip("netns", "add", self.name)
        try:
            ip("-n", self.name, "link", "set", "lo", "up")
            for conf in ("all", "default"):
                self.write(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "1")
        except Exception:
            self.close()
            raise

    def __repr__(self):
        return f"Netns({self.name})"

    def write(self, path: str, value: str) -> None:
        def body():
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write(value)

        self.run(body)

    def run(self, fn):
        """Runs `fn` on a thread that joined this namespace and returns its result. Sockets
        created there stay in the namespace and may be used from any thread."""
        result = {}

        def body():
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns {self.name}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                result["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
                result["error"] = e

        t = threading.Thread(target=body, name=f"in-{self.name}")
        t.start()
        t.join(60)
        if t.is_alive():
            raise AssertionError(f"code in {self.name} did not finish in 60 s")
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def argv(self, argv) -> list[str]:
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def close(self):
        if self.name:
            ip("netns", "del", self.name, check=False)
            self.name = None


# ---------------------------------------------------------------------------------------------
# the switch


class Switch:
    """ringswitch with the given -netdev specs and a QMP unix socket of its own (plus a
    loopback TCP listener with `tcp=True`); started when the constructor returns (ready line
    seen). stderr is collected by a thread."""

    def __init__(self, netdevs=(), tcp: bool = False, extra=(), ns: Netns | None = None):
        self.tmp = tempfile.mkdtemp(prefix="rs-qmp-")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.stats_path = os.path.join(self.tmp, "stats.json")
        argv = [str(BINARY)]
        for nd in netdevs:
            argv += ["-netdev", nd]
        argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off", "--stats-json", self.stats_path]
        self.tcp_port = None
        if tcp:
            self.tcp_port = free_tcp_port()
            argv += ["-qmp", f"tcp:127.0.0.1:{self.tcp_port},server=on"]
        argv += list(extra)
        self.argv = ns.argv(argv) if ns else argv
        self.lines: list[str] = []
        self._out: list[str] = []
        self._cv = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._threads = [
            threading.Thread(target=self._read_err, daemon=True),
            threading.Thread(target=self._read_out, daemon=True),
        ]
        for t in self._threads:
            t.start()
        try:
            self.wait_line(READY_LINE, 20)
        except BaseException:
            self.close()
            raise

    def __repr__(self):
        return f"Switch(pid {self.proc.pid})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_err(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            print(f"[ringswitch] {line}", flush=True)
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def _read_out(self):
        for line in self.proc.stdout:
            self._out.append(line)

    def stderr(self) -> str:
        with self._cv:
            return "\n".join(self.lines)

    def stdout(self) -> str:
        return "".join(self._out)

    def wait_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not any(line.strip() == text for line in self.lines):
                if self.proc.poll() is not None and not self._threads[0].is_alive():
                    raise AssertionError(f"ringswitch exited ({self.proc.returncode}) before '{text}':\n{self.stderr_locked()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"ringswitch did not print '{text}' in {timeout}s:\n{self.stderr_locked()}")
                self._cv.wait(min(left, 0.2))

    def stderr_locked(self) -> str:
        return "\n".join(self.lines)

    def running(self) -> bool:
        return self.proc.poll() is None

    def status(self, key: str) -> int:
        """A kB field of /proc/PID/status (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_exit(self, timeout: float = 10) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ringswitch still running {timeout}s later") from None
        for t in self._threads:
            t.join(2)
        return rc

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 10 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("ringswitch ignored SIGTERM for 10 s and was killed") from None
        for t in self._threads:
            t.join(2)
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._threads:
            t.join(2)
        shutil.rmtree(self.tmp, ignore_errors=True)


def free_tcp_port() -> int:
    """A loopback port free now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# hosts: a switch port's tap inside a namespace


class Host:
    """One host: a namespace holding one switch port's tap (kernel side up, MAC `mac`)."""

    def __init__(self, port_id: str, ifname: str, mac_addr: bytes, ns: Netns):
        self.id, self.ifname, self.mac, self.ns = port_id, ifname, mac_addr, ns

    def __repr__(self):
        return f"Host({self.id} {self.ifname} in {self.ns.name})"

    def adopt(self) -> None:
        """Moves the tap from the root namespace into this host's and brings it up."""
        ip("link", "set", "dev", self.ifname, "netns", self.ns.name)
        ip("-n", self.ns.name, "link", "set", "dev", self.ifname, "address", mac_str(self.mac))
        ip("-n", self.ns.name, "link", "set", "dev", self.ifname, "up")

    def link_show(self) -> str:
        return ip("-n", self.ns.name, "link", "show", "dev", self.ifname).stdout

    def packet_socket(self, bypass_qdisc: bool = False) -> PacketSocket:
        return PacketSocket(self.ns, self.ifname, bypass_qdisc)


class Lan:
    """A switch with one tap port per id, each tap in a namespace of its own. `macaddr` maps
    ids to a `macaddr=` option; `tcp` adds a loopback QMP listener."""

    def __init__(self, cleanup: Cleanup, ids=("a", "b", "c"), macaddr=None, tcp=False, extra=()):
        macaddr = macaddr or {}
        self.hosts: dict[str, Host] = {}
        for i, pid in enumerate(ids):
            ns = cleanup.add(Netns())
            self.hosts[pid] = Host(pid, unique_name("t"), mac(0x100 + i), ns)
        specs = []
        for h in self.hosts.values():
            spec = f"tap,id={h.id},ifname={h.ifname}"
            if h.id in macaddr:
                spec += f",macaddr={macaddr[h.id]}"
            specs.append(spec)
        # The switch closes before the namespaces (its taps vanish first).
        self.switch = cleanup.add(Switch(specs, tcp=tcp, extra=extra))
        for h in self.hosts.values():
            h.adopt()

    def __getitem__(self, port_id: str) -> Host:
        return self.hosts[port_id]


# ---------------------------------------------------------------------------------------------
# frames


class PacketSocket:
    """An AF_PACKET socket on one interface in a namespace: sends whole frames, receives the
    frames that arrive on the interface (not those it sent) with their kernel receive time
    (CLOCK_REALTIME, seconds)."""

    def __init__(self, ns: Netns, ifname: str, bypass_qdisc: bool = False):
        def open_socket():
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                s.bind((ifname, 0))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                if bypass_qdisc:
                    s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            except BaseException:
                s.close()
                raise
            return s

        self.sock = ns.run(open_socket)
        self.ifname = ifname

    def __repr__(self):
        return f"PacketSocket({self.ifname})"

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def recv(self, timeout: float):
        """(frame, kernel timestamp) of the next incoming frame, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            data, anc, _flags, addr = self.sock.recvmsg(70000, 256)
            if addr[2] == PACKET_OUTGOING:
                continue
            stamp = time.time()
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    stamp = sec + nsec / 1e9
            return data, stamp
        return None

    def collect(self, seconds: float, pred=lambda f: True) -> list[tuple[bytes, float]]:
        """Every incoming frame that satisfies `pred` within `seconds`."""
        out = []
        deadline = time.monotonic() + seconds
        for _ in range(1000000):
            got = self.recv(deadline - time.monotonic())
            if got is None:
                break
            if pred(got[0]):
                out.append(got)
        return out

    def wait_for(self, pred, timeout: float):
        """The first incoming frame that satisfies `pred`, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        for _ in range(1000000):
            got = self.recv(deadline - time.monotonic())
            if got is None:
                return None
            if pred(got[0]):
                return got[0]
        return None

    def drain(self) -> None:
        self.collect(0.01)

    def close(self):
        self.sock.close()


_tags = itertools.count(1)


def frame(src: bytes, dst: bytes = BROADCAST, tag: bytes | None = None, size: int = 60) -> bytes:
    """A test frame: dst, src, EtherType 0x88b5, a 12-byte tag (`RSQT` + run + counter)."""
    tag = tag or new_tag()
    head = dst + src + struct.pack(">H", ETHERTYPE_TEST) + tag
    return head + bytes(max(0, size - len(head)))


def new_tag() -> bytes:
    return b"RSQT" + _run_id + b"\x00\x00" + struct.pack(">I", next(_tags))


def tag_of(f: bytes) -> bytes | None:
    if len(f) >= 26 and f[12:14] == struct.pack(">H", ETHERTYPE_TEST) and f[14:18] == b"RSQT":
        return bytes(f[14:26])
    return None


def has_tag(tag: bytes):
    return lambda f: tag_of(f) == tag


def is_rarp(f: bytes) -> bool:
    return len(f) >= 14 and f[12:14] == struct.pack(">H", ETHERTYPE_RARP)


def rarp_frame(m: bytes) -> bytes:
    """QEMU's announce frame for MAC `m` (research/qemu-wire-formats.md), byte for byte."""
    return (
        BROADCAST + m + struct.pack(">H", ETHERTYPE_RARP)
        + struct.pack(">HHBBH", 1, 0x0800, 6, 4, 3)  # htype Ethernet, ptype IPv4, hlen, plen, op 3
        + m + bytes(4)  # sender hardware address, sender IP 0
        + m + bytes(4)  # target hardware address, target IP 0
        + bytes(18)  # padding to 60
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# raw QMP


class RawQmp:
    """A QMP connection that writes bytes as given and reads CR LF terminated lines, for the
    cases a real client refuses to produce. `unix` is a socket path; `tcp` a (host, port)."""

    def __init__(self, unix: str | None = None, tcp: tuple | None = None, greeting: bool = True):
        if unix is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            where = unix
        else:
            family = socket.AF_INET6 if ":" in tcp[0] else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            where = tcp
        try:
            self.sock.settimeout(10)
            self.sock.connect(where)
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""
        self.raw_lines: list[bytes] = []
        self.events: list[dict] = []
        self.greeting = self.read() if greeting else None

    def __repr__(self):
        return "RawQmp()"

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def read_line(self, timeout: float = 10) -> bytes | None:
        """The next CR LF terminated line, or None after `timeout`; raises EOFError at the end."""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError(f"the switch closed the connection (unparsed: {self.buf[:200]!r})")
            self.buf += data
            assert len(self.buf) < 64 << 20, "unbounded answer"
        line, self.buf = self.buf.split(b"\r\n", 1)
        self.raw_lines.append(line)
        return line

    def read(self, timeout: float = 10) -> dict:
        """The next message, events included; fails after `timeout`."""
        line = self.read_line(timeout)
        assert line is not None, f"no message within {timeout}s"
        assert b"\n" not in line and b"\r" not in line, f"a message spans lines: {line!r}"
        return json.loads(line)

    def reply(self, timeout: float = 10) -> dict:
        """The next message that is not an event (events are kept in `events`)."""
        deadline = time.monotonic() + timeout
        for _ in range(10000):
            msg = self.read(max(0.0, deadline - time.monotonic()))
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg
        raise AssertionError("too many events")

    def nothing(self, seconds: float = 0.3) -> None:
        """Asserts no message arrives within `seconds`."""
        line = self.read_line(seconds)
        assert line is None, f"unexpected message: {line!r}"

    def execute(self, cmd: str, args: dict | None = None, **kw) -> dict:
        """Sends one command (`id=` adds an id) and returns the whole reply."""
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        if "id" in kw:
            msg["id"] = kw["id"]
        self.send(json.dumps(msg))
        return self.reply()

    def negotiate(self) -> None:
        r = self.execute("qmp_capabilities")
        assert r == {"return": {}}, r

    def ok(self, cmd: str, args: dict | None = None):
        r = self.execute(cmd, args)
        assert "return" in r, f"{cmd} {args}: {r}"
        return r["return"]

    def closed_by_peer(self, timeout: float = 5) -> bool:
        """Whether the switch closes the connection within `timeout` (messages on the way are
        kept in raw_lines)."""
        deadline = time.monotonic() + timeout
        for _ in range(10000):
            try:
                if self.read_line(max(0.0, deadline - time.monotonic())) is None:
                    return False
            except (EOFError, ConnectionResetError):
                return True
        return False

    def close(self):
        self.sock.close()


def error_of(reply: dict) -> tuple[str, str]:
    """(class, desc) of an error reply, checking its shape: exactly class and desc."""
    assert "error" in reply and "return" not in reply, reply
    err = reply["error"]
    assert set(err) == {"class", "desc"}, reply
    return err["class"], err["desc"]


def assert_error(reply: dict, cls: str, desc_pattern: str) -> None:
    c, d = error_of(reply)
    assert c == cls, f"class {c} != {cls}: {reply}"
    assert re.search(desc_pattern, d), f"desc {d!r} does not match {desc_pattern!r}"


# ---------------------------------------------------------------------------------------------
# qemu.qmp's synchronous client, bounded


def legacy_client(path_or_addr, timeout: float = 10):
    """qemu.qmp.legacy.QEMUMonitorProtocol, connected and negotiated, every call bounded."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    q = QEMUMonitorProtocol(path_or_addr)
    try:
        q.connect(negotiate=True)
        q.settimeout(timeout)
    except BaseException:
        q.close()
        raise
    return q


def tap_port_count(q) -> int:
    return sum(1 for p in q.cmd("query-ports") if p["type"] == "tap")


def port(q, name: str) -> dict:
    ports = q.cmd("query-ports", name=name)
    assert len(ports) == 1, ports
    return ports[0]


def worker_idle(q) -> list | None:
    """The workers' records if no buffer pool shows a leak and nothing is in flight to send
    (one worker, or several with --cores / RINGSWITCH_CORES)."""
    workers = q.cmd("query-workers")
    ok = all(
        w["buffers-free"] + w["reads-in-flight"] == w["buffers-total"]
        and w["writes-in-flight"] == 0
        and w["frames-queued"] == 0
        for w in workers
    )
    return workers if ok else None
