"""`user` ports (libslirp): a namespace on a tap port of ringswitch gets its address by DHCP
from a real client (busybox udhcpc), reaches a TCP server on the loopback of ringswitch's own
namespace through NAT (10.0.2.2), is reached from there through hostfwd (command line and
QMP's hostfwd-add/-remove), runs a guestfwd command, and is cut off by restrict=on; bad
specs give QEMU 7.2's own error text, checked against QEMU itself.

Every network object lives in namespaces the test creates: "the host" is ringswitch's
namespace, whose loopback is where libslirp's NAT and hostfwd lead."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading

import pytest

from portlib import BINARY, QEMU, Netns, Switch, ip, require, require_qemu, require_root, unique_name, wait_until

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "lease $ip/$mask router $router dns $dns" ;;
esac
exit 0
"""


def require_busybox() -> str:
    bb = shutil.which("busybox")
    require(bb is not None, "needs busybox (Debian package busybox-static) for udhcpc")
    return bb


def station(cleanup, sw: Netns, spec: str, tmp_path, tap_opts: str = ""):
    """ringswitch in `sw` with a tap (`tap_opts` appended to its -netdev) and the user port
    `spec`; the tap moved into a namespace of its own that takes its address by DHCP.
    Returns (switch, station namespace, lease)."""
    bb = require_busybox()
    cl = cleanup.add(Netns())
    tap = unique_name("rst")
    s = cleanup.add(Switch([f"tap,id=t,ifname={tap}{tap_opts}", spec], ns=sw))
    ip("-n", sw.name, "link", "set", tap, "netns", cl.name)
    ip("-n", cl.name, "link", "set", tap, "up")
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    out = cl.exec(bb, "udhcpc", "-i", tap, "-s", script, "-q", "-n", "-t", "5", "-T", "1", timeout=30)
    assert out.returncode == 0, f"udhcpc failed: {out.stdout}{out.stderr}"
    lease = next((line for line in out.stdout.splitlines() if line.startswith("lease ")), "")
    return s, cl, lease


def serve(ns: Netns, host: str, port: int, handle, accept_timeout: float = 15):
    """A TCP server in `ns` that takes one connection and runs `handle(conn, result)` on it
    in a thread. Returns (thread, result dict with 'peer', what `handle` adds, or 'error')."""
    srv = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    srv.settimeout(accept_timeout)
    result = {}

    def body():
        try:
            c, result["peer"] = srv.accept()
            c.settimeout(15)
            handle(c, result)
            c.close()
        except OSError as e:
            result["error"] = e
        finally:
            srv.close()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, result


def serve_once(ns: Netns, host: str, port: int, reply_digest: bool = True, accept_timeout: float = 15):
    """A TCP server in `ns` that takes one connection, reads until EOF and answers with the
    SHA-256 of what it read. Returns (thread, result dict with 'peer' and 'digest')."""

    def handle(c, result):
        h = hashlib.sha256()
        while chunk := c.recv(65536):
            h.update(chunk)
        result["digest"] = h.hexdigest()
        if reply_digest:
            c.sendall(h.hexdigest().encode())

    return serve(ns, host, port, handle, accept_timeout)


def send_and_check(ns: Netns, host: str, port: int, size: int = 1 << 20) -> str:
    """Connects from `ns`, sends `size` random bytes, half-closes and checks the digest the
    server sends back."""
    data = os.urandom(size)

    def body():
        c = socket.create_connection((host, port), timeout=10)
        c.settimeout(15)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := c.recv(1024):
            got += chunk
        c.close()
        return got.decode()

    got = ns.run(body)
    assert got == hashlib.sha256(data).hexdigest(), "digest mismatch"
    return got


def serve_data(ns: Netns, host: str, port: int, data: bytes, accept_timeout: float = 15):
    """A TCP server in `ns` that takes one connection and sends `data`, then closes.
    Returns (thread, result dict with 'peer' or 'error')."""
    return serve(ns, host, port, lambda c, _: c.sendall(data), accept_timeout)


def receive_all(ns: Netns, host: str, port: int) -> bytes:
    def body():
        c = socket.create_connection((host, port), timeout=10)
        c.settimeout(15)
        got = bytearray()
        while chunk := c.recv(1 << 16):
            got += chunk
        c.close()
        return bytes(got)

    return ns.run(body)


def connect_fails(ns: Netns, host: str, port: int, timeout: float = 3) -> bool:
    def body():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return False
        except OSError:
            return True

    return ns.run(body)


def threads_of(pid: int) -> list[str]:
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                out.append(f.read().strip())
        except OSError:
            pass
    return out


def test_dhcp_nat_hostfwd_guestfwd_and_removal(cleanup, tmp_path):
    require_root()
    sw = cleanup.add(Netns())
    s, cl, lease = station(
        cleanup,
        sw,
        "user,id=u,hostfwd=tcp:127.0.0.1:2222-:22,guestfwd=tcp:10.0.2.100:7-cmd:cat",
        tmp_path,
    )
    assert lease.startswith("lease 10.0.2.15/"), lease
    assert "router 10.0.2.2" in lease and "dns 10.0.2.3" in lease, lease
    assert "10.0.2.15/24" in ip("-n", cl.name, "addr")

    # NAT: 10.0.2.2 is the loopback of ringswitch's namespace.
    t, r = serve_once(sw, "127.0.0.1", 8000)
    send_and_check(cl, "10.0.2.2", 8000)
    t.join(15)
    assert r["peer"][0] == "127.0.0.1", r

    # hostfwd from the command line: the host's 127.0.0.1:2222 reaches the station's :22.
    t, r = serve_once(cl, "0.0.0.0", 22)
    send_and_check(sw, "127.0.0.1", 2222)
    t.join(15)
    assert r["peer"][0] == "10.0.2.2", r

    # hostfwd over QMP, then removed.
    assert s.qmp("hostfwd-add", {"netdev": "u", "rule": "tcp:127.0.0.1:2223-:23"}) == {}
    t, r = serve_once(cl, "0.0.0.0", 23)
    send_and_check(sw, "127.0.0.1", 2223)
    t.join(15)
    assert s.qmp("hostfwd-remove", {"netdev": "u", "rule": "tcp:127.0.0.1:2223"}) == {}
    assert connect_fails(sw, "127.0.0.1", 2223)
    with pytest.raises(AssertionError, match="host forwarding rule for tcp:127.0.0.1:2223 not found"):
        s.qmp("hostfwd-remove", {"netdev": "u", "rule": "tcp:127.0.0.1:2223"})
    with pytest.raises(AssertionError, match=r"Invalid host forwarding rule 'tcp::x-:1' \(Bad host port\)"):
        s.qmp("hostfwd-add", {"rule": "tcp::x-:1"})
    with pytest.raises(AssertionError, match="Could not set up host forwarding rule 'tcp:127.0.0.1:2222-:24'"):
        s.qmp("hostfwd-add", {"rule": "tcp:127.0.0.1:2222-:24"})
    with pytest.raises(AssertionError, match="invalid device specified"):
        s.qmp("hostfwd-add", {"netdev": "t", "rule": "tcp::2224-:24"})

    # guestfwd: 10.0.2.100:7 runs `cat`, an echo.
    def echo():
        c = socket.create_connection(("10.0.2.100", 7), timeout=10)
        c.settimeout(10)
        c.sendall(b"ringswitch guestfwd\n")
        got = b""
        while not got.endswith(b"\n"):
            chunk = c.recv(100)
            if not chunk:
                break
            got += chunk
        c.close()
        return got

    assert cl.run(echo) == b"ringswitch guestfwd\n"
    usernet = s.qmp("query-usernet", {"netdev": "u"})[0]
    assert usernet["to-slirp"] > 0 and usernet["from-slirp"] > 0, usernet
    assert usernet["to-slirp-joined"] >= 0 and usernet["from-slirp-dropped"] >= 0, usernet
    assert "HOST_FORWARD" in usernet["connections"], usernet

    # netdev_del stops libslirp's thread and closes its sockets.
    pid = s.proc.pid
    assert any(n.startswith("slirp-u") for n in threads_of(pid)), threads_of(pid)
    assert sw.listening("127.0.0.1:2222")
    assert s.qmp("netdev_del", {"id": "u"}) == {}
    wait_until(lambda: not any(n.startswith("slirp-u") for n in threads_of(pid)), 5, what="slirp thread gone")
    assert not sw.listening("127.0.0.1:2222")
    # Added again over QMP, as QEMU's netdev_add takes it.
    s.qmp("netdev_add", {"type": "user", "id": "u", "hostfwd": [{"str": "tcp:127.0.0.1:2222-:22"}]})
    t, r = serve_once(cl, "0.0.0.0", 22)
    send_and_check(sw, "127.0.0.1", 2222, size=4096)
    t.join(15)
    s.stop()


@pytest.mark.parametrize("vnet", [False, True], ids=["plain-tap", "vnet-tap"])
def test_bulk_transfers_both_ways_cross_joined_and_arrive_intact(cleanup, tmp_path, vnet):
    """8 MiB from the host to the station and back, through NAT: libslirp's segments toward
    the station cross the pair joined into GSO frames (cut by the worker for a plain tap,
    written whole to a vnet_hdr tap), and a vnet_hdr station's TSO segments cross whole the
    other way; every byte arrives, digests checked."""
    require_root()
    sw = cleanup.add(Netns())
    s, cl, lease = station(cleanup, sw, "user,id=u", tmp_path, ",vnet_hdr=on" if vnet else "")
    assert lease.startswith("lease 10.0.2.15/"), lease
    data = os.urandom(8 << 20)
    t, r = serve_data(sw, "127.0.0.1", 8001, data)
    got = receive_all(cl, "10.0.2.2", 8001)
    t.join(15)
    assert "error" not in r, r
    assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # About 5,800 segments went down: most crossed as part of a joined frame.
    usernet = s.qmp("query-usernet", {"netdev": "u"})[0]
    assert usernet["from-slirp-joined"] > 1000, usernet
    t, r = serve_once(sw, "127.0.0.1", 8002)
    send_and_check(cl, "10.0.2.2", 8002, size=8 << 20)
    t.join(15)


def test_restrict_on_cuts_the_station_off_but_keeps_dhcp_and_hostfwd(cleanup, tmp_path):
    require_root()
    sw = cleanup.add(Netns())
    s, cl, lease = station(cleanup, sw, "user,id=u,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22", tmp_path)
    assert lease.startswith("lease 10.0.2.15/"), lease
    t, r = serve_once(sw, "127.0.0.1", 8000, accept_timeout=4)
    assert connect_fails(cl, "10.0.2.2", 8000)
    t.join(10)
    assert "peer" not in r, f"restrict=on let a connection through: {r}"
    t, r = serve_once(cl, "0.0.0.0", 22)
    send_and_check(sw, "127.0.0.1", 2222)
    t.join(15)
    s.stop()


# Specs QEMU 7.2 refuses, with the text it gives; ringswitch must give the same.
BAD_SPECS = [
    "user,id=u,hostfwd=tcp:bad",
    "user,id=u,hostfwd=tcp",
    "user,id=u,hostfwd=foo:1:2-3",
    "user,id=u,hostfwd=TCP::2288-:22",
    "user,id=u,hostfwd=tcp:999.1.1.1:80-:22",
    "user,id=u,hostfwd=tcp::22",
    "user,id=u,hostfwd=tcp::99999-:22",
    "user,id=u,hostfwd=tcp::2280x-:22",
    "user,id=u,hostfwd=tcp::22-1.2.3.4",
    "user,id=u,hostfwd=tcp::80-x:22",
    "user,id=u,hostfwd=tcp::22-:0",
    "user,id=u,hostfwd=tcp::22-:",
    "user,id=u,hostfwd=tcp::2222-:22,hostfwd=udp:",
    "user,id=u,guestfwd=bad",
    "user,id=u,guestfwd=udp:10.0.2.100:80-cmd:true",
    "user,id=u,guestfwd=tcp:10.0.2.100:0-cmd:true",
    "user,id=u,net=10.0.2.0/40",
    "user,id=u,net=10.0.2.0/",
    "user,id=u,net=10.0.2.0/8x",
    "user,id=u,net=300.0.0.0",
    "user,id=u,host=1.2.3.4",
    "user,id=u,host=nonsense",
    "user,id=u,dns=10.0.2.2",
    "user,id=u,dns=1.1.1.1,restrict=on",
    "user,id=u,dhcpstart=10.0.2.3",
    "user,id=u,dhcpstart=10.9.2.3",
    "user,id=u,ipv4=off,ipv6=off",
    "user,id=u,ipv4=off,net=10.0.0.0/8",
    "user,id=u,ipv6=off,ipv6-dns=fec0::3",
    "user,id=u,ipv6-prefix=zz",
    "user,id=u,ipv6-prefixlen=130",
    "user,id=u,ipv6-host=fe00::1",
    "user,id=u,domainname=",
]


def qemu_error(spec: str) -> str:
    out = subprocess.run(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-S", "-netdev", spec],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    prefix = f"-netdev {spec}: "
    lines = [ln for ln in out.stderr.splitlines() if prefix in ln]
    assert lines, f"QEMU took {spec!r}: {out.stderr}"
    return lines[-1].split(prefix, 1)[1]


def test_bad_specs_give_qemus_own_text():
    require_qemu()
    for spec in BAD_SPECS:
        want = qemu_error(spec)
        out = subprocess.run([BINARY, "-netdev", spec], capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode == 2, f"{spec}: {out.returncode} {out.stderr}"
        assert out.stderr.strip().endswith(": " + want), f"{spec}: QEMU says {want!r}, ringswitch {out.stderr!r}"


def test_a_taken_host_port_fails_as_in_qemu(cleanup):
    require_qemu()
    ns = cleanup.add(Netns())
    held = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    cleanup.add(held)
    held.bind(("127.0.0.1", 2222))
    held.listen(1)
    spec = "user,id=u,hostfwd=tcp:127.0.0.1:2222-:22"
    want = subprocess.run(
        ns.argv([QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-S", "-netdev", spec]),
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    ).stderr.strip().split(f"-netdev {spec}: ", 1)[-1]
    assert want == "Could not set up host forwarding rule 'tcp:127.0.0.1:2222-:22'", want
    out = subprocess.run(ns.argv([BINARY, "-netdev", spec]), capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0 and out.stderr.strip().endswith(want), out.stderr


@pytest.mark.parametrize("option", ["smb=/srv", "smbserver=10.0.2.4"])
def test_samba_options_are_refused_by_name(option):
    require_root()
    out = subprocess.run([BINARY, "-netdev", f"user,id=u,{option}"], capture_output=True, text=True, timeout=30, check=False)
    name = option.split("=")[0]
    assert out.returncode == 2 and f"'{name}' of netdev type 'user'" in out.stderr, out.stderr
