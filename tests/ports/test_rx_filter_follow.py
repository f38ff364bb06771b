"""Follow mode end to end (issue 14): a QEMU 7.2 guest (TCG, tests/ports/guest_rig.py) whose
virtio-net NIC is a ringswitch vhost-user port, that port told to follow the NIC's rx-filter
through QEMU's QMP (`rx-filter-qmp=`, `rx-filter-nic=`). QEMU keeps the control virtqueue for
itself, so the guest's filter reaches the switch only this way. Inside the guest, toggling
promiscuous mode, joining a multicast group and adding a MAC (a macvlan) change the guest's
filter; ringswitch picks each change up and delivery through the port changes with it
(frames to a stranger's MAC are refused — in the kernel at the tap, by the eBPF ingress filter,
since the guest is the tap's only neighbour — until the guest goes promiscuous;
frames to the macvlan's MAC pass once it is up). QEMU killed and started again is followed
again. A tap in a network namespace is the other station."""

import time

from guest_rig import Guest, SockDir, timings_note
from portlib import Netns, Switch, ip, require_qemu, require_root, unique_name, wait_until

GUEST_MAC = "02:52:09:00:03:10"
STRANGER = "02:00:00:00:99:99"
MACVLAN = "02:00:00:aa:bb:cc"


def _tap_into(ns: Netns, tap: str, addr: str) -> None:
    ip("link", "set", "dev", tap, "netns", ns.name)
    ip("-n", ns.name, "addr", "add", addr, "dev", tap)
    ip("-n", ns.name, "link", "set", "dev", tap, "up")


def _filter(sw: Switch) -> dict:
    (f,) = sw.qmp("query-rx-filter", {"name": "vm"})
    return f


def _wait_filter(sw: Switch, pred, what: str, timeout: float = 30) -> dict:
    wait_until(lambda: pred(_filter(sw)), timeout, every=0.1, what=what)
    return _filter(sw)


def _send_to(ns: Netns, mac: str, ip_addr: str, n: int = 5) -> None:
    """`n` unicast frames from the namespace to `mac` (a static neighbour entry for
    `ip_addr`, so no ARP goes first): pings that nobody need answer."""
    ip("-n", ns.name, "neigh", "replace", ip_addr, "lladdr", mac, "dev", ns.tap, "nud", "permanent")
    ns.exec("ping", "-n", "-q", "-c", str(n), "-i", "0.05", "-W", "0.2", ip_addr, timeout=30)


def _counts(sw: Switch) -> tuple[int, int]:
    """Frames sent to the guest, and frames its filter refused: on egress at vm
    (`filtered`) or, with the eBPF ingress filter, in the kernel at the tap (vm is the tap's
    only neighbour, so what the guest refuses nobody takes)."""
    p, t = sw.port("vm"), sw.port("ta")
    return p["tx-frames"], p["drops"]["filtered"] + t.get("rx-filter-bpf", {}).get("dropped", 0)


def test_a_port_follows_a_guests_nic_filter_through_changes_and_a_qemu_restart(cleanup):
    require_root()
    require_qemu()
    d = cleanup.add(SockDir())
    ns = cleanup.add(Netns())
    ta = unique_name("rff")
    qmp = d / "qemu.qmp"
    sw = cleanup.add(
        Switch(
            [f"vhost-user,id=vm,chardev=c0,rx-filter-qmp={qmp},rx-filter-nic=nic0",
             f"tap,id=ta,ifname={ta}"],
            extra=["-chardev", f"socket,id=c0,path={d / 'vm.sock'},server=on"],
        )
    )  # fmt: skip
    _tap_into(ns, ta, "10.9.3.1/24")
    ns.tap = ta
    # Before QEMU is there, the port says it is connecting and keeps the default filter.
    follow = sw.port("vm")["rx-filter-follow"]
    assert follow["qmp"] == str(qmp) and follow["nic"] == "nic0", follow
    assert _filter(sw)["promiscuous"] is True

    g = cleanup.add(Guest("g", d / "vm.sock", "10.9.3.10/24", GUEST_MAC, reconnect=1, qmp=qmp))
    timings_note("boot", g.wait_ready())
    t0 = time.monotonic()
    f = _wait_filter(sw, lambda f: f["promiscuous"] is False and f["main-mac"] == GUEST_MAC,
                     "the guest's filter (driver up) on port vm")
    timings_note("first filter", time.monotonic() - t0)
    assert sw.port("vm")["rx-filter-follow"]["state"] == "following"
    # The tap's one neighbour has a filter now: the kernel drops what it refuses.
    assert sw.port("ta")["rx-filter"] == "bpf", sw.port("ta")
    # QEMU's broadcast-allowed is its inverted nobcast: false, and broadcast (ARP) is delivered.
    assert f["broadcast-allowed"] is False, f
    g.reach("10.9.3.1")

    # A stranger's MAC: flooded, refused at the port by the guest's filter.
    tx0, filtered0 = _counts(sw)
    _send_to(ns, STRANGER, "10.9.3.99")
    wait_until(lambda: _counts(sw)[1] >= filtered0 + 5, 5, what="5 frames refused (at vm, or in the kernel at ta)")
    assert _counts(sw)[0] == tx0, "frames to a stranger reached a non-promiscuous guest"

    # Promiscuous on: the same frames now go to the guest.
    g.check("ip link set eth0 promisc on")
    _wait_filter(sw, lambda f: f["promiscuous"] is True, "promiscuous on followed")
    tx0, filtered0 = _counts(sw)
    _send_to(ns, STRANGER, "10.9.3.99")
    wait_until(lambda: _counts(sw)[0] >= tx0 + 5, 5, what="5 frames delivered to a promiscuous guest")
    assert _counts(sw)[1] == filtered0, "frames filtered at a promiscuous guest"
    g.check("ip link set eth0 promisc off")
    _wait_filter(sw, lambda f: f["promiscuous"] is False, "promiscuous off followed")

    # A multicast group joined (an IPv6 address's solicited-node group).
    g.check("ip -6 addr add fd00::ab:cdef/64 dev eth0")
    _wait_filter(sw, lambda f: "33:33:ff:ab:cd:ef" in f["multicast-table"], "the group joined")

    # A MAC added to the NIC (a macvlan on eth0): frames to it pass, a stranger's still not.
    tx0, filtered0 = _counts(sw)
    _send_to(ns, MACVLAN, "10.9.3.98")
    wait_until(lambda: _counts(sw)[1] >= filtered0 + 5, 5, what="frames to the MAC filtered before")
    g.check(f"ip link add link eth0 name mv0 address {MACVLAN} type macvlan && ip link set mv0 up")
    _wait_filter(sw, lambda f: MACVLAN in f["unicast-table"], "the macvlan's MAC in the unicast table")
    tx0, filtered0 = _counts(sw)
    _send_to(ns, MACVLAN, "10.9.3.98")
    wait_until(lambda: _counts(sw)[0] >= tx0 + 5, 5, what="frames to the added MAC delivered")
    assert _counts(sw)[1] == filtered0

    # QEMU killed and started again: a new guest, followed again from its first answer.
    t0 = time.monotonic()
    g.start()
    g.wait_ready()
    _wait_filter(sw, lambda f: f["promiscuous"] is False and MACVLAN not in f["unicast-table"],
                 "the restarted guest's filter")
    timings_note("QEMU restart followed", time.monotonic() - t0)
    follow = sw.port("vm")["rx-filter-follow"]
    assert follow["reconnections"] >= 1 and follow["state"] == "following", follow
    g.reach("10.9.3.1")
    tx0, filtered0 = _counts(sw)
    _send_to(ns, MACVLAN, "10.9.3.98")
    wait_until(lambda: _counts(sw)[1] >= filtered0 + 5, 5, what="the old MAC filtered again")
