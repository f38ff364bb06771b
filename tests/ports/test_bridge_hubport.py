"""`bridge` and `hubport` ports.

bridge: ringswitch creates a tap in its own namespace and attaches it to the named Linux
bridge, so this test makes a uniquely named bridge in the root namespace (removed on cleanup)
with a veth pair whose other end sits in a test namespace; a second ringswitch port is a tap
in another namespace. The two namespaces ping each other through the bridge and the switch.

hubport: ports placed in hub 1 and ports left in hub 0 never exchange frames, whatever the
destination; ports of the same hub do. Removing the hubport puts its port back in hub 0.
"""

import json
import os
import time

from portlib import (
    Netns,
    Switch,
    drain,
    exchange,
    frame,
    ip,
    mac,
    require_root,
    tag_of,
    unique_name,
    until_delivered,
    wait_until,
)

LOCAL = "127.0.0.1"


class RootLink:
    """An interface in the root namespace, deleted on close (a veth's peer goes with it)."""

    def __init__(self, name: str, *create):
        self.name = name
        ip("link", "add", name, *create)

    def close(self):
        ip("link", "del", self.name, check=False)


def _no_ipv6(ifname: str):
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    if os.path.exists(path):
        with open(path, "w") as f:
            f.write("1")


def test_bridge_port_joins_a_linux_bridge_and_forwards_to_another_port(cleanup):
    require_root()
    br = cleanup.add(RootLink(unique_name("rsc"), "type", "bridge", "stp_state", "0", "forward_delay", "0"))
    _no_ipv6(br.name)
    ip("link", "set", br.name, "up")
    veth_root, veth_ns = unique_name("rsc"), unique_name("rsc")
    cleanup.add(RootLink(veth_root, "type", "veth", "peer", "name", veth_ns))
    _no_ipv6(veth_root)
    ip("link", "set", veth_root, "master", br.name)
    ip("link", "set", veth_root, "up")

    ns_a, ns_b = cleanup.add(Netns()), cleanup.add(Netns())
    ip("link", "set", veth_ns, "netns", ns_a.name)
    ip("-n", ns_a.name, "addr", "add", "10.77.2.1/24", "dev", veth_ns)
    ip("-n", ns_a.name, "link", "set", veth_ns, "up")

    tap = unique_name("rst")
    sw = cleanup.add(Switch([f"bridge,id=br,br={br.name}", f"tap,id=h,ifname={tap}"]))
    ip("link", "set", tap, "netns", ns_b.name)
    ip("-n", ns_b.name, "link", "set", tap, "address", "02:77:00:00:02:02")
    ip("-n", ns_b.name, "addr", "add", "10.77.2.2/24", "dev", tap)
    ip("-n", ns_b.name, "link", "set", tap, "up")

    # The tap ringswitch made is a port of the bridge, and up.
    bridge_tap = sw.port("br")["ifname"]
    assert bridge_tap, sw.port("br")
    link = json.loads(ip("-j", "link", "show", "dev", bridge_tap))[0]
    assert link.get("master") == br.name, link
    assert "UP" in link["flags"], link

    for ns, dst in ((ns_a, "10.77.2.2"), (ns_b, "10.77.2.1")):
        out = ns.exec("ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-w", "10", dst, timeout=20)
        assert out.returncode == 0, f"ping {dst} from {ns.name}:\n{out.stdout}{out.stderr}"

    for port in ("br", "h"):
        p = sw.port(port)
        assert p["rx-frames"] >= 3 and p["tx-frames"] >= 3, p
    sw.stop()
    # Its tap goes with the switch; the bridge stays (it is not ringswitch's).
    wait_until(lambda: ip("link", "show", "dev", bridge_tap, check=False) == "", 5, what="the tap to go")
    assert ip("link", "show", "dev", br.name)


# ---------------------------------------------------------------------------------------------
# hubport


def _udp_port(name: str, n: int) -> str:
    return f"socket,id={name},udp={LOCAL}:{46000 + 2 * n},localaddr={LOCAL}:{46001 + 2 * n}"


def test_hubs_are_separate_bridge_domains(cleanup):
    require_root()
    ns = cleanup.add(Netns())
    names = ["a", "b", "c", "d"]  # b and c in hub 1; a and d stay in hub 0
    socks = {name: cleanup.add(ns.udp(46000 + 2 * n)) for n, name in enumerate(names)}
    sw = cleanup.add(
        Switch(
            [_udp_port(name, n) for n, name in enumerate(names)]
            + ["hubport,id=hb,hubid=1,netdev=b", "hubport,id=hc,hubid=1,netdev=c"],
            ns,
        )
    )

    def send(name):
        n = names.index(name)
        return lambda f: socks[name].sendto(f, (LOCAL, 46001 + 2 * n))

    assert {name: sw.port(name)["hub"] for name in names} == {"a": 0, "b": 1, "c": 1, "d": 0}

    # Within a hub, broadcast passes; both hubs work at once.
    until_delivered(send("a"), socks["d"], 5)
    until_delivered(send("b"), socks["c"], 5)
    sent = []

    def tracked(name):
        def go(f):
            sent.append((name, tag_of(f)))
            send(name)(f)

        return go

    exchange("a → d", tracked("a"), socks["d"], [frame(mac(1), 60)])
    exchange("d → a", tracked("d"), socks["a"], [frame(mac(4), 60)])
    exchange("b → c", tracked("b"), socks["c"], [frame(mac(2), 60)])
    exchange("c → b", tracked("c"), socks["b"], [frame(mac(3), 60)])
    # Across hubs nothing passes: broadcast, or unicast to an address learned in the other hub.
    for src, dst_mac in (("a", None), ("a", mac(3)), ("d", mac(2)), ("b", mac(1)), ("c", mac(4))):
        f = frame(mac(10 + names.index(src)), 100, dst=dst_mac) if dst_mac else frame(mac(1), 100)
        tracked(src)(f)
    time.sleep(0.3)
    hub_of = {"a": 0, "d": 0, "b": 1, "c": 1}
    origin = {tag: name for name, tag in sent}
    for name in names:
        for f in drain(socks[name], 0.1):
            src = origin.get(tag_of(f))
            if src is not None:
                assert (
                    hub_of[src] == hub_of[name]
                ), f"a frame from {src} (hub {hub_of[src]}) reached {name} (hub {hub_of[name]})"

    # Removing b's hubport puts b back in hub 0: now a's broadcast reaches b, and not c.
    sw.qmp("netdev_del", {"id": "hb"})
    sw.wait_port("b", lambda p: p["hub"] == 0, 5, "b back in hub 0")
    f = frame(mac(1), 60)
    exchange("a → b after netdev_del", send("a"), socks["b"], [f])
    leaked = [g for g in drain(socks["c"], 0.3) if tag_of(g) == tag_of(f)]
    assert not leaked, "hub 0's broadcast reached c, still in hub 1"
    # And a hubport added over QMP moves a port at run time.
    sw.qmp("netdev_add", {"type": "hubport", "id": "hd", "hubid": 1, "netdev": "d"})
    sw.wait_port("d", lambda p: p["hub"] == 1, 5, "d in hub 1")
    exchange("c → d after netdev_add", send("c"), socks["d"], [frame(mac(3), 60)])
    sw.stop()
