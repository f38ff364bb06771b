"""Datagram ports whose peer is away for a while — a QEMU that is restarting, or not started
yet — must carry frames again once the peer is back: a switch should not lose a port for good
because a peer restarted (issue 4). While the peer is away, frames flooded to the port go
nowhere (the kernel answers with ICMP port or protocol unreachable, or the unix socket is
gone); then the peer binds the same address again and frames must pass both ways.
"""

import os
import socket
import time

import pytest

from portlib import Netns, Switch, exchange, frame, mac, require_root, until_delivered

LOCAL = "127.0.0.1"
T_TO, T_FROM = 40003, 40004
PEER, X = 45001, 45002
T_PORT = f"socket,id=t,udp={LOCAL}:{T_TO},localaddr={LOCAL}:{T_FROM}"

def l2tp_ip_addresses():
    n = os.getpid() % 200 + 1
    return f"127.100.{n}.2", f"127.100.{n}.3"  # the peer's, the switch's


def kinds(d):
    """id → (ringswitch spec, open the peer in ns → (socket, send function))."""
    mine, theirs = l2tp_ip_addresses()

    def udp_peer(ns):
        s = ns.udp(PEER)
        return s, lambda f: s.sendto(f, (LOCAL, X))

    def unix_peer(ns):
        path = str(d / "peer.sock")
        if os.path.exists(path):
            os.unlink(path)
        s = ns.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        return s, lambda f: s.sendto(f, str(d / "x.sock"))

    def l2tp_udp_peer(ns):
        s = ns.udp(PEER)
        return s, lambda f: s.sendto(b"\x00\x03\x00\x00\x00\x00\x00\x07" + f, (LOCAL, X))

    def l2tp_ip_peer(ns):
        s = ns.socket(socket.AF_INET, socket.SOCK_RAW, 115)
        s.bind((mine, 0))
        return s, lambda f: s.sendto(b"\x00\x00\x00\x07" + f, (theirs, 0))

    return {
        "socket-udp": (f"socket,udp={LOCAL}:{PEER},localaddr={LOCAL}:{X}", udp_peer, None),
        "dgram-unix": (
            f"dgram,local.type=unix,local.path={d / 'x.sock'},remote.type=unix,remote.path={d / 'peer.sock'}",
            unix_peer,
            None,
        ),
        "l2tpv3-udp": (
            f"l2tpv3,src={LOCAL},dst={LOCAL},udp=on,srcport={X},dstport={PEER},txsession=7",
            l2tp_udp_peer,
            lambda d: d[8:],
        ),
        "l2tpv3-ip": (f"l2tpv3,src={theirs},dst={mine},udp=off,txsession=7", l2tp_ip_peer, lambda d: d[24:]),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "socket-udp",
        "dgram-unix",
        "l2tpv3-udp",
        "l2tpv3-ip",
    ],
)
def test_datagram_port_works_again_after_its_peer_was_away(kind, tmp_path, cleanup):
    require_root()
    spec, open_peer, strip = kinds(tmp_path)[kind]
    ns = cleanup.add(Netns())
    t = cleanup.add(ns.udp(T_TO))
    peer, send = open_peer(ns)
    cleanup.add(peer)
    sw = cleanup.add(Switch([f"{spec},id=x", T_PORT], ns))

    def to_t(f):
        t.sendto(f, (LOCAL, T_FROM))

    reader = (lambda s: strip(s.recv(70000))) if strip else None
    until_delivered(to_t, peer, 10, reader=reader)

    # The peer goes away; a frame is flooded to the port meanwhile.
    peer.close()
    to_t(frame(mac(1), 60))
    # Sent (or refused) by the port, and the kernel's answer had time to arrive.
    sw.wait_port("x", lambda p: p["tx-frames"] + p["drops"]["tx-error"] >= 2, 5, "x to send the frame")
    time.sleep(0.3)

    # The peer is back on the same address.
    peer, send = open_peer(ns)
    cleanup.add(peer)
    try:
        until_delivered(send, t, 3, src_n=0xFFF1)
        until_delivered(to_t, peer, 3, src_n=0xFFF2, reader=reader)
        exchange("t → peer", to_t, peer, [frame(mac(2), 100)], reader)
    except AssertionError as e:
        port = sw.port("x")
        drops = {k: v for k, v in port["drops"].items() if v}
        raise AssertionError(f"{e}; port x: connected={port['connected']}, drops {drops}") from None
