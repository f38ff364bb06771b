"""Bad input on l2tpv3 ports, over UDP and over IP protocol 115: the test is the port's peer and
sends datagrams with a short header, a wrong session, a wrong cookie, garbage, and frames that
are too short or too long behind a good header. Each is dropped and counted under its reason,
nothing reaches the other port, and afterwards frames pass both ways with the header QEMU
writes (checked field by field by the test's own decoder).
"""

import os
import socket
import struct

import pytest

from portlib import Netns, Switch, drain, exchange, frame, mac, require_root, until_delivered

LOCAL = "127.0.0.1"
T_TO, T_FROM = 40003, 40004
PEER, X = 44001, 44002
TX_SESSION, RX_SESSION = 0xAA, 0xBB  # the switch's
TX_COOKIE, RX_COOKIE = 0xC1C2C3C4C5C6C7C8, 0xD1D2D3D4D5D6D7D8
T_PORT = f"socket,id=t,udp={LOCAL}:{T_TO},localaddr={LOCAL}:{T_FROM}"


def addresses():
    n = os.getpid() % 200 + 1
    return f"127.100.{n}.2", f"127.100.{n}.3"  # the test's, the switch's


def spec(udp: bool) -> str:
    common = f"txsession={TX_SESSION:#x},rxsession={RX_SESSION:#x},cookie64=on,txcookie={TX_COOKIE:#x},rxcookie={RX_COOKIE:#x},counter=on"
    if udp:
        return f"l2tpv3,src={LOCAL},dst={LOCAL},udp=on,srcport={X},dstport={PEER},{common}"
    mine, theirs = addresses()
    return f"l2tpv3,src={theirs},dst={mine},udp=off,{common}"


def header(udp: bool, session=RX_SESSION, cookie=RX_COOKIE, counter=1, first=0x00030000) -> bytes:
    h = struct.pack(">I", first) if udp else b""
    return h + struct.pack(">IQI", session, cookie, counter)


class Peer:
    """The test's end of the session: a UDP socket, or a raw IPv4 protocol-115 socket."""

    def __init__(self, ns: Netns, udp: bool):
        self.udp = udp
        self.counters = []
        if udp:
            self.sock = ns.udp(PEER)
            self.dest = (LOCAL, X)
        else:
            mine, theirs = addresses()
            self.sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, 115)
            self.sock.bind((mine, 0))
            self.dest = (theirs, 0)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.dest)

    def send(self, f: bytes) -> None:
        self.send_raw(header(self.udp) + f)

    def read(self, sock):
        """One frame from the switch, after checking its L2TPv3 header is what QEMU writes."""
        d = sock.recv(70000)
        if not self.udp:
            d = d[(d[0] & 0x0F) * 4 :]
            want_first = b""
        else:
            want_first = b"\x00\x03\x00\x00"
        n = len(want_first)
        assert d[:n] == want_first, d[:n].hex()
        session, cookie, counter = struct.unpack(">IQI", d[n : n + 16])
        assert (session, cookie) == (TX_SESSION, TX_COOKIE), f"header {d[: n + 16].hex()}"
        self.counters.append(counter)
        return d[n + 16 :]

    def close(self):
        self.sock.close()


def bad_datagrams(udp: bool):
    """(datagram, drop reason)."""
    good = header(udp)
    src = mac(9)
    cases = [
        (b"", "short-header"),
        (good[:10], "short-header"),
        (good[:-1], "short-header"),
        (header(udp, session=RX_SESSION + 1) + frame(src, 60), "bad-session"),
        (header(udp, session=TX_SESSION) + frame(src, 60), "bad-session"),
        (header(udp, cookie=RX_COOKIE ^ (1 << 63)) + frame(src, 60), "bad-cookie"),
        (header(udp, cookie=RX_COOKIE ^ 1) + frame(src, 60), "bad-cookie"),  # low word
        (header(udp, cookie=TX_COOKIE) + frame(src, 60), "bad-cookie"),
        (b"\xde\xad\xbe\xef" * 50, "bad-session"),  # garbage
        (good + b"\x01" * 10, "runt"),
        (good, "runt"),  # a header and no frame
        (good + frame(src, 2000), "oversize"),
        (good + frame(src, 9000), "oversize"),
    ]
    if not udp:
        # The UDP form over IP: the session is read from the flags word, as QEMU does.
        cases.append((header(True) + frame(src, 60), "bad-session"))
    return cases


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "ip"])
def test_l2tpv3_bad_headers_are_dropped_by_reason_and_the_session_goes_on(udp, cleanup):
    require_root()
    ns = cleanup.add(Netns())
    t = cleanup.add(ns.udp(T_TO))
    peer = cleanup.add(Peer(ns, udp))
    # The limit an operator sets: jumbo frames pass by default.
    sw = cleanup.add(Switch([f"{spec(udp)},id=x", T_PORT], ns, extra=("--max-frame-size", "1522")))

    def to_t(f):
        t.sendto(f, (LOCAL, T_FROM))

    def works():
        until_delivered(peer.send, t, 10, src_n=0xFFF1)
        until_delivered(to_t, peer.sock, 10, src_n=0xFFF2, reader=peer.read)
        exchange("peer → t", peer.send, t, [frame(mac(1), n) for n in (60, 1514)])
        exchange("t → peer", to_t, peer.sock, [frame(mac(2), n) for n in (60, 1514)], peer.read)

    works()
    bad = bad_datagrams(udp)
    for d, _ in bad:
        peer.send_raw(d)
    want = {}
    for _, reason in bad:
        want[reason] = want.get(reason, 0) + 1
    p = sw.wait_port("x", lambda p: all(p["drops"][r] >= n for r, n in want.items()), 5, f"drops {want}")
    assert {r: n for r, n in p["drops"].items() if n} == want
    leaked = drain(t, 0.2)
    assert not leaked, f"{len(leaked)} bad datagram(s) were forwarded"

    # What QEMU does not check passes: any flags word (UDP mode), a counter of 0.
    if udp:
        exchange(
            "flags word ffffffff", lambda f: peer.send_raw(header(True, first=0xFFFFFFFF) + f), t, [frame(mac(1), 60)]
        )
    exchange("counter 0", lambda f: peer.send_raw(header(udp, counter=0) + f), t, [frame(mac(1), 60)])
    works()
    # The switch's counter counts frames sent, from 1 and without gaps.
    assert peer.counters == list(range(1, len(peer.counters) + 1)), peer.counters
    assert sum(sw.drops("t").values()) == 0
    sw.stop()
