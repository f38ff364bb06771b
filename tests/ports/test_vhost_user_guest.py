"""Real QEMU 7.2 guests (TCG, a busybox initramfs: tests/ports/guest_rig.py) on ringswitch
vhost-user ports: two guests ping each other (ringswitch listening for one QEMU, connecting to
the other); a guest and a network namespace behind a tap port exchange 4 MiB files both ways,
SHA-256 checked, with the guest's offloads on and off; a guest is served again after a
reboot, after its QEMU is killed and started again, and after the port is removed and added
again over QMP, while two taps keep forwarding between them; and QEMU 7.2's own crash with
MSI-X under TCG (why these guests use `vectors=0`) leaves the port serving the next guest.
"""

import hashlib
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from guest_rig import Guest, SockDir, timings_note
from portlib import Netns, Switch, ip, require_qemu, unique_name, wait_until

FILE_SIZE = 4 << 20


def _tap_into(ns: Netns, tap: str, addr: str) -> None:
    ip("link", "set", "dev", tap, "netns", ns.name)
    ip("-n", ns.name, "addr", "add", addr, "dev", tap)
    ip("-n", ns.name, "link", "set", "dev", tap, "up")


def _sha256_of(out: str) -> str:
    m = re.search(r"\b([0-9a-f]{64})\b", out)
    assert m, f"no SHA-256 in {out!r}"
    return m.group(1)


def test_two_guests_ping_each_other(cleanup):
    """Guest a: ringswitch listens, QEMU connects. Guest b: QEMU listens, ringswitch connects
    (and retries until QEMU is there)."""
    require_qemu()
    d = cleanup.add(SockDir())
    sw = cleanup.add(
        Switch(
            ["vhost-user,id=a,chardev=ca", "vhost-user,id=b,chardev=cb"],
            extra=["-chardev", f"socket,id=ca,path={d / 'a.sock'},server=on",
                   "-chardev", f"socket,id=cb,path={d / 'b.sock'},server=off,reconnect=1"],
        )
    )  # fmt: skip
    ga = cleanup.add(Guest("a", d / "a.sock", "10.9.0.1/24", "02:52:09:00:00:01"))
    gb = cleanup.add(Guest("b", d / "b.sock", "10.9.0.2/24", "02:52:09:00:00:02", server=True))
    timings_note("boot a", ga.wait_ready())
    timings_note("boot b", gb.wait_ready())
    ga.reach("10.9.0.2")
    gb.reach("10.9.0.1")
    # Full-size frames too (1514 bytes on the wire).
    ga.check("ping -c 3 -i 0.2 -s 1472 -W 2 10.9.0.2")
    for port in ("a", "b"):
        p = sw.port(port)
        assert p["connected"] and p["rx-frames"] >= 6 and p["tx-frames"] >= 6, p
        assert p["drops"]["frontend-fault"] == 0, p["drops"]


def test_multiqueue_guests_use_both_queue_pairs(cleanup):
    """Two 2-vCPU guests with `queues=2` (`mq=on`): QEMU negotiates two queue pairs with the
    port (GET_QUEUE_NUM, four rings), the guests' drivers bring both up, and they ping each
    other with small and full-size frames."""
    require_qemu()
    d = cleanup.add(SockDir())
    sw = cleanup.add(
        Switch(
            ["vhost-user,id=a,chardev=ca,queues=2", "vhost-user,id=b,chardev=cb,queues=2"],
            extra=["-chardev", f"socket,id=ca,path={d / 'a.sock'},server=on",
                   "-chardev", f"socket,id=cb,path={d / 'b.sock'},server=on"],
        )
    )  # fmt: skip
    ga = cleanup.add(Guest("a", d / "a.sock", "10.9.2.1/24", "02:52:09:02:00:01", queues=2))
    gb = cleanup.add(Guest("b", d / "b.sock", "10.9.2.2/24", "02:52:09:02:00:02", queues=2))
    timings_note("boot a (2 vCPUs)", ga.wait_ready())
    timings_note("boot b (2 vCPUs)", gb.wait_ready())
    for g in (ga, gb):
        queues = g.check("ls /sys/class/net/eth0/queues")
        assert "rx-1" in queues and "tx-1" in queues, queues
    ga.reach("10.9.2.2")
    gb.reach("10.9.2.1")
    ga.check("ping -c 3 -i 0.2 -s 1472 -W 2 10.9.2.2")
    for port in ("a", "b"):
        p = sw.port(port)
        assert p["connected"] and p["rx-frames"] >= 6 and p["tx-frames"] >= 6, p
        assert p["drops"]["frontend-fault"] == 0, p["drops"]


@pytest.mark.parametrize("offloads", [True, False], ids=["offloads-on", "offloads-off"])
def test_guest_and_tap_namespace_exchange_files(offloads, cleanup):
    require_qemu()
    d = cleanup.add(SockDir())
    ns = cleanup.add(Netns())
    tap = unique_name("rst")
    sw = cleanup.add(
        Switch(
            ["vhost-user,id=vm,chardev=c0", f"tap,id=t,ifname={tap}"],
            extra=["-chardev", f"socket,id=c0,path={d / 'vm.sock'},server=on"],
        )
    )
    _tap_into(ns, tap, "10.9.1.1/24")
    g = cleanup.add(Guest("g", d / "vm.sock", "10.9.1.10/24", "02:52:09:00:01:10", offloads=offloads))
    timings_note("boot", g.wait_ready())
    g.reach("10.9.1.1")

    # Guest → namespace: the guest makes the file and sends it with nc.
    t0 = time.monotonic()
    srv = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    cleanup.add(srv)
    srv.bind(("10.9.1.1", 5000))
    srv.listen(1)
    srv.settimeout(90)
    got = {}

    def receive():
        try:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(60)
                h, n = hashlib.sha256(), 0
                while chunk := conn.recv(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
                got["sha"], got["len"] = h.hexdigest(), n
        except OSError as e:
            got["error"] = e

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    out = g.check(f"dd if=/dev/urandom of=/tmp/out bs=64k count={FILE_SIZE >> 16} 2>/dev/null && sha256sum /tmp/out")
    sent_sha = _sha256_of(out)
    g.check("nc 10.9.1.1 5000 </tmp/out", timeout=120)
    rx.join(90)
    assert not rx.is_alive(), "the namespace never saw the end of the guest's file"
    assert "error" not in got, got
    assert (got["len"], got["sha"]) == (FILE_SIZE, sent_sha), got
    timings_note("guest → namespace, 4 MiB", time.monotonic() - t0)

    # Namespace → guest: the guest listens with nc; the namespace connects and sends.
    t0 = time.monotonic()
    data = _random(FILE_SIZE)
    g.check("nc -l -p 5001 </dev/null >/tmp/in &")
    c = None
    deadline = time.monotonic() + 20
    while c is None:
        s = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(60)
        try:
            s.connect(("10.9.1.10", 5001))
            c = s
        except OSError:
            s.close()
            assert time.monotonic() < deadline, "the guest's nc never listened"
            time.sleep(0.2)
    with c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        while c.recv(1 << 16):
            pass
    out = g.check("wait; ls -l /tmp/in; sha256sum /tmp/in", timeout=60)
    assert _sha256_of(out) == hashlib.sha256(data).hexdigest(), out
    timings_note("namespace → guest, 4 MiB", time.monotonic() - t0)

    vm, t = sw.port("vm"), sw.port("t")
    assert vm["drops"]["frontend-fault"] == 0, vm["drops"]
    assert vm["rx-bytes"] >= FILE_SIZE and vm["tx-bytes"] >= FILE_SIZE, vm
    if offloads:
        # The guest's driver took partial checksums and TSO toward it, and sent TCP segments
        # larger than a frame, which the switch cut for the tap: more frames left by the tap
        # than came from the guest (how large the guest's segments grow depends on its TCP's
        # timing, so no ratio is asserted).
        assert {"csum", "tso4"} <= set(vm.get("offloads") or []), vm
        assert t["tx-frames"] > vm["rx-frames"], (vm, t)
    else:
        assert not vm.get("offloads"), vm
        assert vm["rx-bytes"] <= 1514 * vm["rx-frames"], vm


def _random(n: int) -> bytes:
    with open("/dev/urandom", "rb") as f:
        return f.read(n)


def test_guest_served_again_after_reboot_restart_and_port_readd(cleanup):
    """Each event is followed by the guest reaching the namespace again; two taps keep
    forwarding a ping between them all along."""
    require_qemu()
    d = cleanup.add(SockDir())
    ns_a, ns_b = cleanup.add(Netns()), cleanup.add(Netns())
    ta, tb = unique_name("rst"), unique_name("rst")
    sw = cleanup.add(
        Switch(
            ["vhost-user,id=vm,chardev=c0", f"tap,id=ta,ifname={ta}", f"tap,id=tb,ifname={tb}"],
            extra=["-chardev", f"socket,id=c0,path={d / 'vm.sock'},server=on"],
        )
    )
    _tap_into(ns_a, ta, "10.9.2.1/24")
    _tap_into(ns_b, tb, "10.9.2.2/24")
    # The other pair: 5 pings a second from a to b for the whole test.
    pinger = subprocess.Popen(
        ns_a.argv(["ping", "-n", "-i", "0.2", "-w", "600", "10.9.2.2"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    cleanup.add(_Killer(pinger))

    g = cleanup.add(Guest("g", d / "vm.sock", "10.9.2.10/24", "02:52:09:00:02:10", reconnect=1))
    timings_note("boot", g.wait_ready())
    g.reach("10.9.2.1")

    # 1. The guest reboots (QEMU resets the device; the vhost-user connection stays).
    t0 = time.monotonic()
    g.send("reboot -f")
    g.wait_ready(boots=2)
    g.reach("10.9.2.1")
    timings_note("reboot", time.monotonic() - t0)

    # 2. QEMU is killed and started again (a new frontend on the same port).
    t0 = time.monotonic()
    g.start()
    g.wait_ready()
    g.reach("10.9.2.2")
    timings_note("QEMU restart", time.monotonic() - t0)

    # 3. The port is removed and added again over QMP; QEMU's chardev reconnects.
    t0 = time.monotonic()
    sw.qmp("netdev_del", {"id": "vm"})
    wait_until(lambda: not any(p["id"] == "vm" for p in sw.qmp("query-ports")), 10, what="port vm gone")
    sw.qmp("netdev_add", {"type": "vhost-user", "id": "vm", "chardev": "c0"})
    sw.wait_port("vm", lambda p: p["connected"], 30, "QEMU to reconnect to vm")
    g.reach("10.9.2.1")
    timings_note("netdev_del/netdev_add", time.monotonic() - t0)
    assert g.running()

    # The other pair forwarded throughout.
    pinger.send_signal(signal.SIGINT)
    out, _ = pinger.communicate(timeout=10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, received = int(m.group(1)), int(m.group(2))
    assert sent >= 20 and received >= sent - 2, f"the taps lost pings: {sent} sent, {received} received"
    assert sw.port("vm")["drops"]["frontend-fault"] == 0, sw.port("vm")["drops"]


def test_qemu_7_2_tcg_crash_with_msix_is_qemus_and_the_port_serves_the_next_guest(cleanup):
    """Why the guests here have `vectors=0`: with MSI-X, QEMU 7.2 under TCG segfaults when
    the guest's driver starts the device (guest_rig.py says where), before it has told the
    backend anything about the rings. The switch sees a frontend that went away (no fault
    counted) and serves the next QEMU on the same port. If this QEMU no longer crashes, the
    test is skipped, saying so: `vectors=0` can then go."""
    require_qemu()
    d = cleanup.add(SockDir())
    ns = cleanup.add(Netns())
    tap = unique_name("rst")
    sw = cleanup.add(
        Switch(
            ["vhost-user,id=vm,chardev=c0", f"tap,id=t,ifname={tap}"],
            extra=["-chardev", f"socket,id=c0,path={d / 'vm.sock'},server=on"],
        )
    )
    _tap_into(ns, tap, "10.9.3.1/24")
    g = cleanup.add(Guest("msix", d / "vm.sock", "10.9.3.10/24", "02:52:09:00:03:10", msix=True))
    try:
        g.wait_ready()
        g.run("ping -c 1 -W 5 10.9.3.1", 30)
    except AssertionError:
        if g.running() or g.proc.returncode != -signal.SIGSEGV:
            raise
    else:
        pytest.skip("this QEMU runs a vhost-user guest with MSI-X under TCG: vectors=0 is no longer needed")
    sw.wait_port("vm", lambda p: not p["connected"], 10, "the crashed QEMU's connection to end")
    assert sw.port("vm")["drops"]["frontend-fault"] == 0
    g.close()
    g = cleanup.add(Guest("intx", d / "vm.sock", "10.9.3.10/24", "02:52:09:00:03:10"))
    g.wait_ready()
    g.reach("10.9.3.1")


class _Killer:
    """Stops a helper process on cleanup."""

    def __init__(self, proc):
        self.proc = proc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
