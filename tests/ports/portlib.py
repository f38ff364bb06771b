"""Harness of the port-kind tests: private network namespaces, the ringswitch and QEMU
processes inside them, sockets opened inside a namespace, and Ethernet frames that carry a
unique tag so a test recognises its own frames among anything else on the wire.

Each test runs in namespaces of its own, so fixed port numbers never collide with other
tests or with other work on the machine, and deleting the namespace takes every address with
it. Every object here is a context manager, and the `Cleanup` stack given to each test closes
them in reverse order even when the test fails. Every wait is bounded in time, every loop in
count or time.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
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
BINARY = Path(os.environ.get("RINGSWITCH_BIN", ROOT / "target" / "release" / "ringswitch"))
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
READY_LINE = "ringswitch: ready"
CLONE_NEWNET = 0x40000000
BROADCAST = b"\xff" * 6
ETHERTYPE_TEST = 0x88B5  # IEEE local experimental

_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count()


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


def require_root() -> None:
    require(os.geteuid() == 0, "needs root for network namespaces, taps and raw sockets")
    require(shutil.which("ip") is not None, "needs the `ip` tool (iproute2)")
    require(BINARY.exists(), f"{BINARY} is missing: run `cargo build --release` first")


def require_qemu() -> None:
    require_root()
    require(shutil.which(QEMU) is not None, f"needs {QEMU} (Debian package qemu-system-x86)")


def qemu_version() -> str | None:
    if shutil.which(QEMU) is None:
        return None
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.splitlines()[0].strip() if out.stdout else None


# ---------------------------------------------------------------------------------------------
# names, commands, waiting


def unique_name(prefix: str) -> str:
    """An interface or namespace name unique to this process and call, within IFNAMSIZ, in the
    form scripts/test's leak check recognises (`rsn…x07`, `rsc…x07`)."""
    assert len(prefix) <= 6
    n = next(_names) & 0xFF
    return f"{prefix}{os.getpid() & 0x3FFFFF:x}x{n:02x}"


def ip(*args: str, check: bool = True) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def wait_until(cond, timeout: float, every: float = 0.05, what: str = "condition"):
    """Polls `cond` until it returns a true value (returned) or `timeout` passes (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Cleanup:
    """Closes what a test opened, last first, whatever happened; errors in one close do not
    stop the others."""

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
    """A network namespace with loopback up and IPv6 off; deleted on close. With `multicast`,
    224.0.0.0/4 is routed to lo so multicast groups work on loopback."""

    def __init__(self, multicast: bool = False):
        self.name = unique_name("rsn")
        ip("netns", "add", self.name)
        try:
            ip("-n", self.name, "link", "set", "lo", "up")
            self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            if multicast:
                ip("-n", self.name, "route", "add", "224.0.0.0/4", "dev", "lo")
        except Exception:
            self.close()
            raise

    def __repr__(self):
        return f"Netns({self.name})"

    def sysctl(self, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")

        def write():
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write(value)

        self.run(write)

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

    def socket(self, family=socket.AF_INET, kind=socket.SOCK_DGRAM, proto=0) -> socket.socket:
        return self.run(lambda: socket.socket(family, kind, proto))

    def udp(self, port: int, host: str = "127.0.0.1") -> socket.socket:
        s = self.socket()
        s.bind((host, port))
        return s

    def argv(self, argv) -> list[str]:
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def exec(self, *argv, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False)

    def listening(self, where: str, unix: bool = False) -> bool:
        """Whether a socket listens on `where` (HOST:PORT, or a unix socket path)."""
        out = self.exec("ss", "-Hlnx" if unix else "-Hltn").stdout
        return any(where in line.split() for line in out.splitlines())

    def close(self):
        if self.name:
            ip("netns", "del", self.name, check=False)
            self.name = None


# ---------------------------------------------------------------------------------------------
# processes


class _Process:
    """A child process whose stderr is collected (and echoed, prefixed) by a thread."""

    label = "process"

    def _spawn(self, argv, ns: Netns | None):
        full = ns.argv(argv) if ns else [str(a) for a in argv]
        self.argv = full
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._new_line = threading.Condition(self._lock)
        self.proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._out: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_err, daemon=True),
            threading.Thread(target=self._read_out, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_err(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            print(f"[{self.label}] {line}", flush=True)
            with self._lock:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._lock:
            self._new_line.notify_all()

    def _read_out(self):
        for line in self.proc.stdout:
            self._out.append(line)

    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def stdout(self) -> str:
        return "".join(self._out)

    def wait_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if any(line.strip() == text for line in self.lines):
                    return
                if self.proc.poll() is not None and not self._threads[0].is_alive():
                    raise AssertionError(
                        f"{self.label} exited ({self.proc.returncode}) before '{text}':\n" + "\n".join(self.lines)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.label} did not print '{text}' in {timeout}s:\n" + "\n".join(self.lines)
                    )
                self._new_line.wait(min(left, 0.2))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig) -> int | None:
        """Sends `sig`, waits up to 10 s for the exit, kills after that; returns the status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.label} ignored signal {sig} for 10 s and was killed")
        for t in self._threads:
            t.join(2)
        return self.proc.returncode

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None:
            for t in self._threads:
                t.join(2)


class Switch(_Process):
    """ringswitch with the given -netdev specs (and extra arguments), optionally inside a
    namespace, with a QMP socket of its own; started when the constructor returns (its ready
    line seen)."""

    label = "ringswitch"

    def __init__(self, netdevs, ns: Netns | None = None, extra=(), label="ringswitch"):
        self.label = label
        self.tmp = tempfile.mkdtemp(prefix="rs-ports-")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.stats_path = os.path.join(self.tmp, "stats.json")
        argv = [BINARY]
        for nd in netdevs:
            argv += ["-netdev", nd]
        argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off", "--stats-json", self.stats_path]
        argv += list(extra)
        self.proc = None
        self._spawn(argv, ns)
        try:
            self.wait_line(READY_LINE, 20)
        except BaseException:
            self.close()
            raise

    def __repr__(self):
        return f"Switch({self.label})"

    def qmp(self, command: str, args: dict | None = None):
        argv = [BINARY, "qmp", self.qmp_path, command]
        if args is not None:
            argv.append(json.dumps(args))
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if out.returncode != 0:
            raise AssertionError(f"qmp {command} {args}: {out.stderr.strip()}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def port(self, name: str) -> dict:
        ports = self.qmp("query-ports", {"name": name})
        assert len(ports) == 1, ports
        return ports[0]

    def drops(self, name: str) -> dict:
        """The port's drop counters by reason (QMP spelling: `bad-session`)."""
        return self.port(name)["drops"]

    def wait_port(self, name: str, pred, timeout: float = 10, what: str = "port state"):
        """Polls query-ports until `pred(port)` holds; returns that port's record."""
        last = {}

        def check():
            last["p"] = self.port(name)
            return last["p"] if pred(last["p"]) else None

        try:
            return wait_until(check, timeout, 0.1, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; port {name} is {json.dumps(last.get('p'))}") from None

    def wait_drop(self, name: str, reason: str, at_least: int, timeout: float = 5) -> dict:
        return self.wait_port(
            name,
            lambda p: p["drops"][reason] >= at_least,
            timeout,
            f"port {name} drops.{reason} >= {at_least}",
        )

    def stop(self) -> dict:
        """SIGTERM; the exit status must be 0; returns the --stats-json document."""
        rc = self.signal(signal.SIGTERM)
        assert rc == 0, f"ringswitch exited {rc}; stderr:\n{self.stderr()}"
        with open(self.stats_path) as f:
            return json.load(f)

    def close(self):
        super().close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Qemu(_Process):
    """`qemu-system-x86_64 -M none` with netdev `q` (the kind under test) joined by hub 0 to a
    `socket,udp=` netdev `ctl` the test drives: QEMU sends to 127.0.0.1:`ctl_to` from
    127.0.0.1:`ctl_from`."""

    label = "qemu"

    def __init__(self, ns: Netns, netdev_q: str, ctl_to: int, ctl_from: int):
        argv = [
            QEMU, "-M", "none", "-nodefaults", "-display", "none",
            "-netdev", f"{netdev_q},id=q",
            "-netdev", f"socket,id=ctl,udp=127.0.0.1:{ctl_to},localaddr=127.0.0.1:{ctl_from}",
            "-netdev", "hubport,id=h1,hubid=0,netdev=q",
            "-netdev", "hubport,id=h2,hubid=0,netdev=ctl",
        ]  # fmt: skip
        self.proc = None
        self._spawn(argv, ns)

    def __repr__(self):
        return "Qemu()"

    def check_alive(self):
        assert self.running(), f"QEMU exited ({self.proc.returncode}):\n{self.stderr()}"

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        super().close()


# ---------------------------------------------------------------------------------------------
# frames

_tags = itertools.count(1)
_run_id = os.urandom(3)


def mac(n: int) -> bytes:
    """A locally administered unicast MAC, distinct per `n` and per test process."""
    return bytes([0x02, 0x52]) + _run_id[:2] + struct.pack(">H", n & 0xFFFF)


def new_tag() -> bytes:
    """12 bytes that appear in one frame only."""
    return b"RSPT" + _run_id + b"\x00" + struct.pack(">I", next(_tags))


def frame(src: bytes, size: int = 60, dst: bytes = BROADCAST, tag: bytes | None = None) -> bytes:
    """An Ethernet frame of `size` bytes: dst, src, the test EtherType, the tag, then a pattern."""
    tag = tag or new_tag()
    head = dst + src + struct.pack(">H", ETHERTYPE_TEST) + tag
    assert size >= len(head), size
    fill = bytes((i * 7 + 3) & 0xFF for i in range(size - len(head)))
    return head + fill


def tag_of(data: bytes) -> bytes | None:
    if len(data) >= 26 and data[14:18] == b"RSPT":
        return bytes(data[14:26])
    return None


def recv_tagged(sock: socket.socket, want: set, timeout: float, reader=None) -> dict:
    """Reads datagrams (or frames from `reader(sock)`) until every tag in `want` was seen or
    `timeout` passes; returns {tag: frame} of those seen (other frames are ignored)."""
    got = {}
    deadline = time.monotonic() + timeout
    read = reader or (lambda s: s.recv(70000))
    while want - got.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not _buffered(read):
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                break
        data = read(sock)
        if data is None:
            continue
        t = tag_of(data)
        if t in want and t not in got:
            got[t] = data
    return got


def _buffered(reader) -> bool:
    """Whether a reader (a StreamReader) holds a whole frame already, so select must not wait."""
    return bool(getattr(reader, "pending", None) and reader.pending())


def drain(sock: socket.socket, seconds: float = 0.05, reader=None) -> list:
    """Reads whatever arrives within `seconds`; returns it."""
    out = []
    read = reader or (lambda s: s.recv(70000))
    deadline = time.monotonic() + seconds
    for _ in range(100000):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not _buffered(read):
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                break
        d = read(sock)
        if d is not None:
            out.append(d)
    return out


def until_delivered(send, sock, timeout: float = 10, every: float = 0.25, src_n: int = 0xFFF0, reader=None):
    """Sends a probe frame through `send(frame)` every `every` seconds until one comes out of
    `sock`; fails after `timeout`. Used to wait until a path (a QEMU starting, a client
    reconnecting) carries frames."""
    deadline = time.monotonic() + timeout
    sent = set()
    while time.monotonic() < deadline:
        f = frame(mac(src_n), 60)
        sent.add(tag_of(f))
        send(f)
        if recv_tagged(sock, sent, every, reader):
            return
    raise AssertionError(f"no probe frame went through in {timeout}s ({len(sent)} sent)")


def hexdiff(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"length {len(a)} != {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at byte {i}: {x:#04x} != {y:#04x}"
    return "identical"


# ---------------------------------------------------------------------------------------------
# stream framing (QEMU's socket/stream netdevs: 4-byte big-endian length, then the frame)


def framed(f: bytes) -> bytes:
    return struct.pack(">I", len(f)) + f


class StreamReader:
    """Reassembles length-prefixed frames from a stream socket (bounded buffer)."""

    def __init__(self):
        self.buf = b""

    def __call__(self, sock):
        """One frame if a whole one is buffered after at most one recv, else None."""
        if not self._whole():
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the peer closed the stream")
            self.buf += data
        if not self._whole():
            return None
        n = struct.unpack(">I", self.buf[:4])[0]
        f, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        return f

    def _whole(self):
        if len(self.buf) < 4:
            return False
        n = struct.unpack(">I", self.buf[:4])[0]
        assert n <= 70000, f"impossible length {n} from the switch"
        return len(self.buf) >= 4 + n

    def pending(self) -> bool:
        return self._whole()


def exchange(what: str, send, sock, frames, reader=None, timeout: float = 5) -> None:
    """Sends `frames` through `send` and checks each comes out of `sock` byte for byte."""
    want = {tag_of(f): f for f in frames}
    for f in frames:
        send(f)
    got = recv_tagged(sock, set(want), timeout, reader)
    missing = [len(f) for t, f in want.items() if t not in got]
    assert not missing, f"{what}: frames of {missing} bytes never arrived"
    for tag, f in want.items():
        assert got[tag] == f, f"{what}: a {len(f)}-byte frame changed: {hexdiff(got[tag], f)}"


class StreamPeer:
    """One stream connection the test holds with a switch port: frames go out length-prefixed,
    and `reader` reassembles what comes back."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = StreamReader()

    def send(self, f: bytes) -> None:
        self.sock.sendall(framed(f))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed_by_peer(self, timeout: float) -> bool:
        """Whether the other end closes the connection within `timeout` (frames read on the
        way are discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return False
            try:
                if not self.sock.recv(1 << 20):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True

    def close(self) -> None:
        self.sock.close()


class StreamEndpoint:
    """Where the test meets a stream port: `inet` (127.0.0.1:port) or `unix` (path). With
    `listen`, the test is the server (the switch port connects); otherwise the test connects."""

    def __init__(self, ns: Netns, family: str, where, listen: bool):
        self.ns, self.family, self.where, self.listen = ns, family, where, listen
        self.listener = None
        if listen:
            self.open_listener()

    def _socket(self):
        fam = socket.AF_INET if self.family == "inet" else socket.AF_UNIX
        return self.ns.socket(fam, socket.SOCK_STREAM)

    def _addr(self):
        return (LOCAL_HOST, self.where) if self.family == "inet" else str(self.where)

    def open_listener(self) -> None:
        s = self._socket()
        if self.family == "inet":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        elif os.path.exists(self.where):
            os.unlink(self.where)
        s.bind(self._addr())
        s.listen(4)
        self.listener = s

    def close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            if self.family == "unix" and os.path.exists(self.where):
                os.unlink(self.where)

    def peer(self, timeout: float = 10) -> StreamPeer:
        """A new connection with the switch port: accepted (the switch connects, within
        `timeout`) or made (retrying while the port is not listening yet)."""
        if self.listen:
            r, _, _ = select.select([self.listener], [], [], timeout)
            assert r, f"the switch port did not connect within {timeout}s"
            conn, _ = self.listener.accept()
            return StreamPeer(conn)
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            s = self._socket()
            try:
                s.connect(self._addr())
                return StreamPeer(s)
            except (ConnectionRefusedError, FileNotFoundError):
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.close_listener()


LOCAL_HOST = "127.0.0.1"
