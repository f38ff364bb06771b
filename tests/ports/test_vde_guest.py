"""A real QEMU 7.2 guest (TCG, the busybox initramfs of guest_rig.py) plugged into ringswitch's
own vde service (`--vde-serve DIR`) with QEMU's `-netdev vde,sock=DIR` (libvdeplug, as QEMU
users plug into a vde_switch): the guest and a network namespace behind a tap port of
ringswitch ping each other both ways; the served port is listed by `query-ports` and counts
the guest's frames; when QEMU goes, its port goes.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

from guest_rig import Guest, timings_note
from portlib import QEMU, Netns, Switch, ip, require, require_qemu, unique_name, wait_until


class _Dir:
    """A directory path for the vde service (ringswitch makes it), removed on close."""

    def __init__(self):
        self.path = Path(tempfile.gettempdir()) / unique_name("rsvde")

    def close(self):
        shutil.rmtree(self.path, ignore_errors=True)


def _qemu_has_vde() -> bool:
    out = subprocess.run([QEMU, "-netdev", "help"], capture_output=True, text=True, timeout=30, check=False)
    return "vde" in out.stdout.split()


def test_qemu_guest_with_netdev_vde_on_ringswitch_pings_a_tap_namespace(cleanup):
    require_qemu()
    require(_qemu_has_vde(), f"{QEMU} has no -netdev vde (built without libvdeplug)")
    d = cleanup.add(_Dir())
    ns = cleanup.add(Netns())
    tap = unique_name("rst")
    sw = cleanup.add(Switch([f"tap,id=t,ifname={tap}"], extra=["--vde-serve", f"{d.path},id=vm"]))
    ip("link", "set", "dev", tap, "netns", ns.name)
    ip("-n", ns.name, "addr", "add", "10.9.5.1/24", "dev", tap)
    ip("-n", ns.name, "link", "set", "dev", tap, "up")
    g = cleanup.add(Guest("g", None, "10.9.5.10/24", "02:52:09:00:05:10", vde=d.path))
    # QEMU plugs in as it starts, before the guest boots.
    port = wait_until(
        lambda: next((p for p in sw.qmp("query-ports") if p["id"] == "vm.1" and p["connected"]), None),
        30,
        what="QEMU's vde port vm.1",
    )
    assert port["type"] == "vde-served", port
    timings_note("boot", g.wait_ready())
    g.reach("10.9.5.1")
    out = ns.exec("ping", "-c", "3", "-i", "0.2", "-W", "2", "10.9.5.10")
    assert out.returncode == 0, out.stdout + out.stderr
    # Full-size frames too.
    g.check("ping -c 3 -i 0.2 -s 1472 -W 2 10.9.5.1")
    p = sw.port("vm.1")
    assert p["rx-frames"] >= 9 and p["tx-frames"] >= 9, p
    served = sw.qmp("query-vde-serve")
    assert served[0]["ports"] == ["vm.1"] and served[0]["refused"] == {}, served
    # QEMU goes: so does its port.
    g.close()
    wait_until(lambda: all(p["id"] != "vm.1" for p in sw.qmp("query-ports")), 10, what="vm.1 removed")
