"""Interop with real QEMU: for each netdev kind QEMU 7.2 has, a QEMU process joins its netdev
`q` of that kind by a hub to a `socket,udp=` netdev the test drives (`ctl`), and ringswitch
has the matching port `k` (the other role) plus a UDP port `t` the test drives:

    test ─udp─► QEMU ctl ─hub─► QEMU q ══kind══► ringswitch k ─► ringswitch t ─udp─► test
    test ◄─udp─ QEMU ctl ◄─hub─ QEMU q ◄══kind══ ringswitch k ◄─ ringswitch t ◄─udp─ test

Frames of 60 to 1522 bytes, each with a unique tag, must come out byte for byte as they went
in, broadcast both ways and then unicast to the address the switch learned. Kinds with two
roles run in both (ringswitch listens and QEMU connects, and the reverse). Everything runs in
a namespace of the test's own. QEMU 7.2 quirks the order of start-up respects: a QEMU client
connects once and never retries (ringswitch's listener starts first); QEMU's multicast
netdev hears its own frames (ignored here, by tag).
"""

from dataclasses import dataclass

import pytest

from portlib import (
    Netns,
    Qemu,
    Switch,
    drain,
    frame,
    hexdiff,
    mac,
    recv_tagged,
    require_qemu,
    tag_of,
    until_delivered,
    wait_until,
)

CTL_TO, CTL_FROM = 40001, 40002  # QEMU's ctl sends to CTL_TO from CTL_FROM
T_TO, T_FROM = 40003, 40004  # ringswitch's t sends to T_TO from T_FROM
P, P2 = 41000, 41001  # the kind under test
SIZES = [60, 61, 64, 100, 333, 1000, 1514, 1522]
LOCAL = "127.0.0.1"


@dataclass
class Case:
    id: str
    qemu: str  # QEMU's netdev, without id
    switch: str  # ringswitch's port k, without id
    switch_first: bool = False  # QEMU is a client that never retries
    multicast: bool = False
    raw: bool = False  # IP protocol 115 (raw sockets)


def inet(prefix, port, host=LOCAL):
    return f"{prefix}.type=inet,{prefix}.host={host},{prefix}.port={port}"


def unix(prefix, path):
    return f"{prefix}.type=unix,{prefix}.path={path}"


L2TP_UDP = f"l2tpv3,src={LOCAL},dst={LOCAL},udp=on"
COOKIES = "cookie64=on,txcookie=0xa1a2a3a4a5a6a7a8,rxcookie=0xb1b2b3b4b5b6b7b8"
COOKIES_SW = "cookie64=on,txcookie=0xb1b2b3b4b5b6b7b8,rxcookie=0xa1a2a3a4a5a6a7a8"


def cases(d):
    """The cases; `d` is a directory for unix socket paths."""
    return [
        Case("socket-tcp-switch-listens", f"socket,connect={LOCAL}:{P}", f"socket,listen={LOCAL}:{P}", switch_first=True),
        Case("socket-tcp-qemu-listens", f"socket,listen={LOCAL}:{P}", f"socket,connect={LOCAL}:{P}"),
        Case("socket-udp", f"socket,udp={LOCAL}:{P2},localaddr={LOCAL}:{P}", f"socket,udp={LOCAL}:{P},localaddr={LOCAL}:{P2}"),
        Case("socket-mcast", f"socket,mcast=239.77.1.1:{P},localaddr={LOCAL}", f"socket,mcast=239.77.1.1:{P},localaddr={LOCAL}", multicast=True),
        Case("stream-inet-switch-server", f"stream,server=off,{inet('addr', P)}", f"stream,server=on,{inet('addr', P)}", switch_first=True),
        Case("stream-inet-qemu-server", f"stream,server=on,{inet('addr', P)}", f"stream,server=off,{inet('addr', P)}"),
        Case("stream-unix-switch-server", f"stream,server=off,{unix('addr', d / 's.sock')}", f"stream,server=on,{unix('addr', d / 's.sock')}", switch_first=True),
        Case("stream-unix-qemu-server", f"stream,server=on,{unix('addr', d / 's.sock')}", f"stream,server=off,{unix('addr', d / 's.sock')}"),
        Case("dgram-inet", f"dgram,{inet('local', P2)},{inet('remote', P)}", f"dgram,{inet('local', P)},{inet('remote', P2)}"),
        Case("dgram-unix", f"dgram,{unix('local', d / 'q.sock')},{unix('remote', d / 'k.sock')}", f"dgram,{unix('local', d / 'k.sock')},{unix('remote', d / 'q.sock')}"),
        Case("dgram-mcast", f"dgram,{inet('remote', P, '239.77.1.2')},{inet('local', 0)}", f"dgram,{inet('remote', P, '239.77.1.2')},{inet('local', 0)}", multicast=True),
        Case("l2tpv3-udp-plain", f"{L2TP_UDP},srcport={P2},dstport={P},txsession=17,rxsession=18", f"{L2TP_UDP},srcport={P},dstport={P2},txsession=18,rxsession=17"),
        Case("l2tpv3-udp-cookie64-counter-offset", f"{L2TP_UDP},srcport={P2},dstport={P},txsession=0x11223344,rxsession=0x55667788,{COOKIES},counter=on,offset=8",
             f"{L2TP_UDP},srcport={P},dstport={P2},txsession=0x55667788,rxsession=0x11223344,{COOKIES_SW},counter=on,offset=8"),
        Case("l2tpv3-udp-cookie32-pincounter", f"{L2TP_UDP},srcport={P2},dstport={P},txsession=5,txcookie=0x01020304,rxcookie=0x0a0b0c0d,counter=on,pincounter=on",
             f"{L2TP_UDP},srcport={P},dstport={P2},txsession=5,txcookie=0x0a0b0c0d,rxcookie=0x01020304,counter=on,pincounter=on"),
        Case("l2tpv3-ip", "l2tpv3,src=127.100.1.2,dst=127.100.1.3,udp=off,txsession=0x101,rxsession=0x202,counter=on",
             "l2tpv3,src=127.100.1.3,dst=127.100.1.2,udp=off,txsession=0x202,rxsession=0x101,counter=on", raw=True),
        Case("l2tpv3-ip-cookie64", f"l2tpv3,src=127.100.1.2,dst=127.100.1.3,udp=off,txsession=7,rxsession=7,{COOKIES}",
             f"l2tpv3,src=127.100.1.3,dst=127.100.1.2,udp=off,txsession=7,rxsession=7,{COOKIES_SW}", raw=True),
    ]  # fmt: skip


def _all_ids():
    from pathlib import Path

    return [c.id for c in cases(Path("/unused"))]


@pytest.mark.parametrize("case_id", _all_ids())
def test_qemu_carries_frames_through_ringswitch_both_ways(case_id, tmp_path, cleanup):
    require_qemu()
    case = next(c for c in cases(tmp_path) if c.id == case_id)
    ns = cleanup.add(Netns(multicast=case.multicast))
    # The test's sockets are bound before anything can send to them.
    ctl = cleanup.add(ns.udp(CTL_TO))
    t = cleanup.add(ns.udp(T_TO))
    t_port = f"socket,id=t,udp={LOCAL}:{T_TO},localaddr={LOCAL}:{T_FROM}"

    def start_switch():
        return cleanup.add(Switch([f"{case.switch},id=k", t_port], ns))

    def start_qemu():
        return cleanup.add(Qemu(ns, case.qemu, CTL_TO, CTL_FROM))

    if case.switch_first:
        sw = start_switch()
        qemu = start_qemu()
    else:
        qemu = start_qemu()
        if case.id == "dgram-unix":
            # ringswitch connects its unix datagram socket to QEMU's at start-up, so QEMU's
            # must exist first (QEMU itself does not need its peer's to).
            wait_until(lambda: (tmp_path / "q.sock").exists(), 10, what="QEMU's q.sock")
        sw = start_switch()

    sent_by_t = set()

    def to_qemu(f):
        ctl.sendto(f, (LOCAL, CTL_FROM))

    def to_switch(f):
        sent_by_t.add(tag_of(f))
        t.sendto(f, (LOCAL, T_FROM))

    # QEMU → ringswitch first: once that works QEMU's sockets are open, so the switch never
    # sends to a QEMU socket that does not exist yet.
    until_delivered(to_qemu, t, timeout=15)
    until_delivered(to_switch, ctl, timeout=15)
    qemu.check_alive()

    a_src, b_src = mac(1), mac(2)
    # Broadcast, QEMU → ringswitch, then ringswitch → QEMU.
    _exchange("QEMU → ringswitch", to_qemu, t, [frame(a_src, n) for n in SIZES])
    _exchange("ringswitch → QEMU", to_switch, ctl, [frame(b_src, n) for n in SIZES])
    # Unicast to the address learned on the other side.
    _exchange("unicast QEMU → ringswitch", to_qemu, t, [frame(a_src, n, dst=b_src) for n in (60, 1514)])
    _exchange("unicast ringswitch → QEMU", to_switch, ctl, [frame(b_src, n, dst=a_src) for n in (60, 1514)])

    # A frame that came in on t never comes back out of t: not from the switch, and not
    # from QEMU's hub (which never reflects). With multicast this also shows the switch does
    # not hear its own frames back from the group, as QEMU's multicast netdev does.
    echoes = [f for f in drain(t, 0.2) if tag_of(f) in sent_by_t]
    assert not echoes, f"{len(echoes)} frame(s) sent into t came back out of t"

    port = sw.port("k")
    assert port["connected"], port
    n = len(SIZES) + 2  # broadcast and unicast frames each way, probes not counted
    assert port["rx-frames"] >= n and port["tx-frames"] >= n, port
    assert sum(port["drops"].values()) == 0, port["drops"]
    qemu.check_alive()
    stats = sw.stop()
    assert {p["id"] for p in stats["ports"]} == {"k", "t"}


def _exchange(what, send, sock, frames):
    want = {tag_of(f): f for f in frames}
    for f in frames:
        send(f)
    got = recv_tagged(sock, set(want), timeout=5)
    missing = [len(f) for t, f in want.items() if t not in got]
    assert not missing, f"{what}: frames of {missing} bytes never arrived"
    for tag, f in want.items():
        assert got[tag] == f, f"{what}: a {len(f)}-byte frame changed: {hexdiff(got[tag], f)}"
