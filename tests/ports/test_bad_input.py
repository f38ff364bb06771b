"""Bad input on every socket-based kind: the test is the port's peer and sends what a broken or
hostile peer might — runts, oversized frames, impossible stream lengths, streams cut
mid-frame, L2TPv3 datagrams with short headers, wrong sessions, wrong cookies, garbage. Each
is dropped, counted under its reason (QMP query-ports), never forwarded, and afterwards the
port and its peer port `t` still carry frames both ways. Connections: a listening port serves
one peer at a time and accepts the next after a disconnect; a connecting port reconnects after
its listener comes back.

Layout of every test, inside a namespace of its own:

    test ◄══kind══► ringswitch x ◄──► ringswitch t ◄─udp─► test
"""

import select
import socket
import struct
import time

import pytest

from portlib import (
    Netns,
    StreamEndpoint,
    Switch,
    drain,
    exchange,
    frame,
    mac,
    require_root,
    tag_of,
    until_delivered,
)

LOCAL = "127.0.0.1"
T_TO, T_FROM = 40003, 40004
PEER, X = 43001, 43002  # the test's end and the port's end of the kind under test
T_PORT = f"socket,id=t,udp={LOCAL}:{T_TO},localaddr={LOCAL}:{T_FROM}"
OVERSIZED = (1523, 2000, 9000)
#: The frame size limit these tests set (jumbo frames pass by default; the limit is the
#: operator's option).
LIMIT = ("--max-frame-size", "1522")


class Rig:
    """A namespace with ringswitch (port `x` of the kind under test plus UDP port `t`) and the
    test's socket facing `t`."""

    def __init__(self, cleanup, spec: str, multicast: bool = False, before=None, extra=()):
        self.ns = cleanup.add(Netns(multicast=multicast))
        self.t = cleanup.add(self.ns.udp(T_TO))
        if before:
            before(self.ns)
        self.sw = cleanup.add(Switch([f"{spec},id=x", T_PORT], self.ns, extra=extra))

    def to_t(self, f: bytes) -> None:
        self.t.sendto(f, (LOCAL, T_FROM))

    def works(self, send_x, sock_x, reader=None, what="x") -> None:
        """Frames go x → t and t → x, byte for byte (after the path is seen to work)."""
        until_delivered(send_x, self.t, timeout=10, src_n=0xFFF1)
        until_delivered(self.to_t, sock_x, timeout=10, src_n=0xFFF2, reader=reader)
        exchange(f"{what} → t", send_x, self.t, [frame(mac(1), n) for n in (60, 1514)])
        exchange(f"t → {what}", self.to_t, sock_x, [frame(mac(2), n) for n in (60, 1514)], reader)

    def nothing_reached_t(self) -> None:
        leaked = drain(self.t, 0.2)
        assert not leaked, f"{len(leaked)} frame(s) reached t: {[len(f) for f in leaked]}"


def bad_frames():
    """Frames a switch must drop, and the drop reason each counts under."""
    src = mac(9)
    return [
        (b"", "runt"),
        (b"\x01" * 10, "runt"),
        (frame(src, 30)[:13], "runt"),
        *[(frame(src, n), "oversize") for n in OVERSIZED],
    ]


def expected(drops):
    out = {}
    for _, reason in drops:
        out[reason] = out.get(reason, 0) + 1
    return out


def assert_drops(sw, port, want: dict):
    p = sw.wait_port(port, lambda p: all(p["drops"][r] >= n for r, n in want.items()), 5, f"drops {want}")
    others = {r: n for r, n in p["drops"].items() if r not in want and n}
    assert not others, f"unexpected drops on {port}: {others}"
    for r, n in want.items():
        assert p["drops"][r] == n, f"{port} drops.{r} = {p['drops'][r]}, want {n}"


# ---------------------------------------------------------------------------------------------
# datagram kinds: socket udp=, dgram inet/unix, multicast


def _udp_peer(ns):
    s = ns.udp(PEER)
    return s, lambda f: s.sendto(f, (LOCAL, X)), []


def _unix_peer(d):
    def make(ns):
        s = ns.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(d / "peer.sock"))
        return s, lambda f: s.sendto(f, str(d / "x.sock")), []

    return make


def _mcast_peer(group):
    def make(ns):
        rx = ns.socket()
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind((group, PEER))
        mreq = socket.inet_aton(group) + socket.inet_aton(LOCAL)
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        tx = ns.socket()
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOCAL))
        return rx, lambda f: tx.sendto(f, (group, PEER)), [tx]

    return make


def datagram_kinds(d):
    def inet(p, port, host=LOCAL):
        return f"{p}.type=inet,{p}.host={host},{p}.port={port}"

    def unix(p, path):
        return f"{p}.type=unix,{p}.path={path}"

    return {
        "socket-udp": (f"socket,udp={LOCAL}:{PEER},localaddr={LOCAL}:{X}", _udp_peer, False),
        "dgram-inet": (f"dgram,{inet('local', X)},{inet('remote', PEER)}", _udp_peer, False),
        "dgram-unix": (f"dgram,{unix('local', d / 'x.sock')},{unix('remote', d / 'peer.sock')}", _unix_peer(d), False),
        "socket-mcast": (f"socket,mcast=239.77.3.1:{PEER},localaddr={LOCAL}", _mcast_peer("239.77.3.1"), True),
        "dgram-mcast": (f"dgram,{inet('remote', PEER, '239.77.3.2')},{inet('local', 0)}", _mcast_peer("239.77.3.2"), True),
    }  # fmt: skip


DATAGRAM_IDS = ["socket-udp", "dgram-inet", "dgram-unix", "socket-mcast", "dgram-mcast"]


@pytest.mark.parametrize("kind", DATAGRAM_IDS)
def test_datagram_runts_and_oversized_frames_are_dropped_and_counted(kind, tmp_path, cleanup):
    require_root()
    spec, make_peer, multicast = datagram_kinds(tmp_path)[kind]
    peer = {}

    def before(ns):
        sock, send, others = make_peer(ns)
        for s in [sock, *others]:
            cleanup.add(s)
        peer.update(sock=sock, send=send)

    rig = Rig(cleanup, spec, multicast, before, extra=LIMIT)
    rig.works(peer["send"], peer["sock"], what=kind)
    drops = bad_frames()
    for f, _ in drops:
        peer["send"](f)
    assert_drops(rig.sw, "x", expected(drops))
    rig.nothing_reached_t()
    rig.works(peer["send"], peer["sock"], what=kind)
    assert_drops(rig.sw, "t", {})


# ---------------------------------------------------------------------------------------------
# stream kinds: socket listen=/connect=, stream inet/unix server/client


def stream_kinds(d):
    """id → (ringswitch spec, family, where, whether the test listens)."""
    inet = f"addr.type=inet,addr.host={LOCAL},addr.port={PEER}"
    unix = f"addr.type=unix,addr.path={d / 's.sock'}"
    return {
        "socket-listen": (f"socket,listen={LOCAL}:{PEER}", "inet", PEER, False),
        "stream-inet-server": (f"stream,server=on,{inet}", "inet", PEER, False),
        "stream-unix-server": (f"stream,server=on,{unix}", "unix", d / "s.sock", False),
        "socket-connect": (f"socket,connect={LOCAL}:{PEER}", "inet", PEER, True),
        "stream-inet-client": (f"stream,server=off,{inet}", "inet", PEER, True),
        "stream-unix-client": (f"stream,server=off,{unix}", "unix", d / "s.sock", True),
    }


STREAM_IDS = [
    "socket-listen",
    "stream-inet-server",
    "stream-unix-server",
    "socket-connect",
    "stream-inet-client",
    "stream-unix-client",
]
SERVER_IDS = [k for k in STREAM_IDS if "listen" in k or "server" in k]
CLIENT_IDS = [k for k in STREAM_IDS if k not in SERVER_IDS]


def stream_rig(cleanup, tmp_path, kind, spec_suffix="", extra=()):
    spec, family, where, test_listens = stream_kinds(tmp_path)[kind]
    ep = {}

    def before(ns):
        ep["ep"] = cleanup.add(StreamEndpoint(ns, family, where, listen=test_listens))

    rig = Rig(cleanup, spec + spec_suffix, before=before, extra=extra)
    return rig, ep["ep"]


def stream_works(rig, p, what):
    rig.works(p.send, p.sock, p.reader, what)


@pytest.mark.parametrize("kind", STREAM_IDS)
def test_stream_bad_lengths_are_dropped_and_an_impossible_one_ends_the_connection(kind, tmp_path, cleanup):
    require_root()
    rig, ep = stream_rig(cleanup, tmp_path, kind, extra=LIMIT)
    p = cleanup.add(ep.peer())
    stream_works(rig, p, kind)

    # Length 0, runts and frames over the switch's limit (but within QEMU's) are skipped
    # without losing step: the good frame behind them arrives.
    p.send_raw(struct.pack(">I", 0))
    drops = [(f, r) for f, r in bad_frames() if f]
    for f, _ in drops:
        p.send(f)
    good = frame(mac(3), 100)
    p.send(good)
    got = rig.t.recv(70000) if wait_readable(rig.t, 5) else None
    assert got == good, "the frame after the bad ones did not arrive intact"
    want = expected(drops)
    want["runt"] += 1  # the length 0
    assert_drops(rig.sw, "x", want)
    rig.nothing_reached_t()
    stream_works(rig, p, kind)

    # A length of 1 GiB cannot be a frame: the switch closes that connection.
    p.send_raw(struct.pack(">I", 1 << 30) + b"\x00" * 64)
    assert p.closed_by_peer(5), "the switch kept a connection whose length prefix was 1 GiB"
    want["oversize"] += 1
    assert_drops(rig.sw, "x", want)
    rig.nothing_reached_t()
    # …and serves a new one: a listening port accepts the next peer, a client reconnects.
    p2 = cleanup.add(ep.peer())
    rig.sw.wait_port("x", lambda p: p["connected"], 10, "x connected again")
    stream_works(rig, p2, kind)
    assert_drops(rig.sw, "t", {})


@pytest.mark.parametrize("kind", STREAM_IDS)
def test_stream_cut_mid_frame_counts_truncated_and_the_port_recovers(kind, tmp_path, cleanup):
    require_root()
    rig, ep = stream_rig(cleanup, tmp_path, kind)
    # Cut inside a frame, then cut inside a length prefix.
    for n, cut in enumerate((struct.pack(">I", 100) + b"\x02" * 50, b"\x00\x00"), start=1):
        p = cleanup.add(ep.peer())
        stream_works(rig, p, kind)
        p.send_raw(cut)
        p.close()
        rig.sw.wait_port("x", lambda p: not p["connected"], 5, "x to notice the disconnect")
        assert_drops(rig.sw, "x", {"truncated": n})
    p = cleanup.add(ep.peer())
    stream_works(rig, p, kind)
    rig.nothing_reached_t()


def wait_readable(sock, timeout):
    return bool(select.select([sock], [], [], timeout)[0])


@pytest.mark.parametrize("kind", SERVER_IDS)
def test_listening_port_serves_one_peer_at_a_time_and_accepts_the_next(kind, tmp_path, cleanup):
    require_root()
    rig, ep = stream_rig(cleanup, tmp_path, kind)
    first = cleanup.add(ep.peer())
    stream_works(rig, first, kind)
    peer_before = rig.sw.port("x")["peer"]

    # A second peer may connect (the kernel's backlog) but is not served meanwhile.
    second = cleanup.add(ep.peer())
    waiting = frame(mac(4), 80)
    second.send(waiting)
    rig.nothing_reached_t()
    flood = frame(mac(5), 90)
    rig.to_t(flood)
    assert tag_of(flood) in {tag_of(f) for f in drain(first.sock, 1, first.reader)}, "the first peer lost its frame"
    assert not drain(second.sock, 0.3, second.reader), "the waiting peer was sent frames"
    assert rig.sw.port("x")["peer"] == peer_before

    first.close()
    # The next peer is served: what it sent while waiting, then everything else.
    rig.sw.wait_port(
        "x",
        lambda p: p["connected"] and p["peer"] != peer_before or kind.startswith("stream-unix"),
        10,
        "the second peer served",
    )
    stream_works(rig, second, kind)
    third = cleanup.add(ep.peer())  # waits in the backlog again
    second.close()
    stream_works(rig, third, kind)
    assert_drops(rig.sw, "x", {})


@pytest.mark.parametrize("kind", CLIENT_IDS)
def test_connecting_port_reconnects_after_its_listener_restarts(kind, tmp_path, cleanup):
    require_root()
    rig, ep = stream_rig(cleanup, tmp_path, kind)
    p = cleanup.add(ep.peer())
    stream_works(rig, p, kind)
    # The peer goes away altogether (connection and listener), stays away for a while (so
    # at least one attempt fails), then comes back on the same address.
    p.close()
    ep.close_listener()
    rig.sw.wait_port("x", lambda p: not p["connected"], 5, "x to notice its peer left")
    time.sleep(1.5)
    ep.open_listener()
    p2 = cleanup.add(ep.peer(timeout=10))
    rig.sw.wait_port("x", lambda p: p["connected"], 5, "x connected again")
    stream_works(rig, p2, kind)
    assert_drops(rig.sw, "x", {})


def test_connecting_port_with_reconnect_0_stays_down(tmp_path, cleanup):
    require_root()
    rig, ep = stream_rig(cleanup, tmp_path, "socket-connect", ",reconnect=0")
    p = cleanup.add(ep.peer())
    stream_works(rig, p, "socket-connect")
    p.close()
    rig.sw.wait_port("x", lambda p: not p["connected"], 5, "x to notice its peer left")
    assert not select.select([ep.listener], [], [], 2.5)[0], "reconnect=0 reconnected"
    assert not rig.sw.port("x")["connected"]
    # Its peer port keeps working on its own: a broadcast from t is not sent to x.
    rig.to_t(frame(mac(6), 60))
    rig.sw.wait_port("t", lambda p: p["rx-frames"] > 0, 5, "t receiving")


def test_stream_length_limit_is_qemus(tmp_path, cleanup):
    """69632 bytes (QEMU's NET_BUFSIZE) is the longest length a QEMU peer may send: it is
    skipped as oversize and the stream goes on; one byte more closes the connection."""
    require_root()
    rig, ep = stream_rig(cleanup, tmp_path, "socket-listen")
    p = cleanup.add(ep.peer())
    stream_works(rig, p, "socket-listen")
    p.send(frame(mac(3), 69632))
    exchange("after a 69632-byte frame", p.send, rig.t, [frame(mac(3), 100)])
    assert_drops(rig.sw, "x", {"oversize": 1})
    assert rig.sw.port("x")["connected"]
    p.send_raw(struct.pack(">I", 69633) + b"\x00" * 100)
    assert p.closed_by_peer(5), "the switch kept a connection whose length prefix was 69633"
    assert_drops(rig.sw, "x", {"oversize": 2})


def test_connecting_port_with_reconnect_0_needs_its_peer_at_start(tmp_path, cleanup):
    """reconnect=0 is QEMU 7.2's behaviour: no peer at start is an error, named."""
    require_root()
    ns = cleanup.add(Netns())
    with pytest.raises(AssertionError, match=r"exited \(\d+\) before 'ringswitch: ready'") as failed:
        cleanup.add(Switch([f"socket,id=x,connect={LOCAL}:{PEER},reconnect=0", T_PORT], ns))
    assert "'x'" in str(failed.value), str(failed.value)
