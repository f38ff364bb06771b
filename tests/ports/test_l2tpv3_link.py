"""Two ringswitch instances joined by an l2tpv3 port (the way two hosts join one L2 network),
each with a tap port into a network namespace of its own: the two namespaces ping each other
across both switches. Over UDP and over IP protocol 115 (each end on its own 127.100.N.x
address). The switches run in a transport namespace of the test's own; their taps move from
there into the two host namespaces once the switches are ready.
"""

import os

import pytest

from portlib import Netns, Switch, ip, require_root, unique_name

COOKIES = "cookie64=on,txcookie=0x0102030405060708,rxcookie=0x1112131415161718"
COOKIES_B = "cookie64=on,txcookie=0x1112131415161718,rxcookie=0x0102030405060708"


def _modes():
    n = os.getpid() % 200 + 1  # 127.100.N.x, distinct per test process
    a, b = f"127.100.{n}.2", f"127.100.{n}.3"
    return {
        "udp": (
            f"l2tpv3,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport=42001,dstport=42002,txsession=0x10,rxsession=0x20,{COOKIES},counter=on",
            f"l2tpv3,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport=42002,dstport=42001,txsession=0x20,rxsession=0x10,{COOKIES_B},counter=on",
        ),
        "ip": (
            f"l2tpv3,src={a},dst={b},udp=off,txsession=0x30,rxsession=0x40,{COOKIES}",
            f"l2tpv3,src={b},dst={a},udp=off,txsession=0x40,rxsession=0x30,{COOKIES_B}",
        ),
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["udp", "ip"])
def test_two_switches_joined_by_l2tpv3_carry_ping(mode, cleanup):
    require_root()
    l2_a, l2_b = _modes()[mode]
    transport = cleanup.add(Netns())
    host_a, host_b = cleanup.add(Netns()), cleanup.add(Netns())
    tap_a, tap_b = unique_name("rst"), unique_name("rst")
    sw_a = cleanup.add(Switch([f"tap,id=h,ifname={tap_a}", f"{l2_a},id=l"], transport, label="ringswitch-a"))
    sw_b = cleanup.add(Switch([f"tap,id=h,ifname={tap_b}", f"{l2_b},id=l"], transport, label="ringswitch-b"))
    for tap, host, addr, hw in (
        (tap_a, host_a, "10.77.1.1/24", "02:77:00:00:01:01"),
        (tap_b, host_b, "10.77.1.2/24", "02:77:00:00:01:02"),
    ):
        ip("-n", transport.name, "link", "set", "dev", tap, "netns", host.name)
        ip("-n", host.name, "link", "set", "dev", tap, "address", hw)
        ip("-n", host.name, "addr", "add", addr, "dev", tap)
        ip("-n", host.name, "link", "set", "dev", tap, "up")

    _ping(host_a, "10.77.1.2")
    _ping(host_b, "10.77.1.1")
    _ping(host_a, "10.77.1.2", size=1400)  # 1442-byte frames

    for sw in (sw_a, sw_b):
        port = sw.port("l")
        assert port["rx-frames"] >= 3 and port["tx-frames"] >= 3, port
        assert sum(port["drops"].values()) == 0, port["drops"]
    for sw in (sw_a, sw_b):
        sw.stop()


def _ping(ns, dst, count=3, size=56):
    out = ns.exec(
        "ping", "-n", "-c", count, "-s", size, "-i", "0.2", "-W", "1", "-w", count + 8, dst, timeout=count + 15
    )
    assert out.returncode == 0, f"ping {dst} from {ns.name} failed:\n{out.stdout}{out.stderr}"
