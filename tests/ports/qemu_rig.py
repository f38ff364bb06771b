"""What the QEMU interop tests share: the netdev pairs (QEMU's netdev of each kind and
ringswitch's matching port in the other role) and `QemuRig`, which starts both in a namespace
of its own, in the order QEMU 7.2 needs, with the test's sockets on either side:

    test ─udp─► QEMU ctl ─hub─► QEMU q ══kind══► ringswitch k ─► ringswitch t ─udp─► test
"""

import time
from dataclasses import dataclass
from pathlib import Path

from portlib import Netns, Qemu, Switch, exchange, require_qemu, tag_of, until_delivered, wait_until

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


def case_ids():
    return [c.id for c in cases(Path("/unused"))]


class QemuRig:
    """One case set up: QEMU with q and ctl, ringswitch with k and t, the test's sockets `ctl`
    (facing QEMU's ctl) and `t` (facing ringswitch's t)."""

    def __init__(self, cleanup, case: Case, tmp_path: Path, extra=()):
        require_qemu()
        self.cleanup, self.case, self.tmp_path, self.extra = cleanup, case, tmp_path, extra
        self.ns = cleanup.add(Netns(multicast=case.multicast))
        # The test's sockets are bound before anything can send to them.
        self.ctl = cleanup.add(self.ns.udp(CTL_TO))
        self.t = cleanup.add(self.ns.udp(T_TO))
        self.sent_by_t = set()
        self.sw = self.qemu = None
        if case.switch_first:
            self.start_switch()
            self.start_qemu()
        else:
            self.start_qemu()
            self.start_switch()
        self.wait_paths()

    def start_switch(self):
        t_port = f"socket,id=t,udp={LOCAL}:{T_TO},localaddr={LOCAL}:{T_FROM}"
        if self.case.id == "dgram-unix":
            # ringswitch connects its unix datagram socket to QEMU's at start-up, so QEMU's
            # must exist first (QEMU itself does not need its peer's to).
            q_sock = self.tmp_path / "q.sock"
            wait_until(q_sock.exists, 10, what="QEMU's q.sock")
        self.sw = self.cleanup.add(Switch([f"{self.case.switch},id=k", t_port], self.ns, extra=self.extra))

    def start_qemu(self):
        self.qemu = self.cleanup.add(Qemu(self.ns, self.case.qemu, CTL_TO, CTL_FROM))
        if self.case.qemu.startswith("stream,server=on"):
            # QEMU 7.2.22 listens asynchronously, and a frame its hub hands the stream netdev
            # before that completes makes it segfault (about 1 start in 10 here, with frames
            # arriving on ctl from the start). So nothing is sent until it listens, and a
            # little longer.
            unix = "addr.type=unix" in self.case.qemu
            where = f"{self.tmp_path / 's.sock'}" if unix else f"{LOCAL}:{P}"
            wait_until(lambda: self.ns.listening(where, unix), 10, what=f"QEMU listening on {where}")
            time.sleep(0.3)

    def to_qemu(self, f: bytes) -> None:
        self.ctl.sendto(f, (LOCAL, CTL_FROM))

    def to_switch(self, f: bytes) -> None:
        self.sent_by_t.add(tag_of(f))
        self.t.sendto(f, (LOCAL, T_FROM))

    def wait_paths(self, timeout: float = 15) -> None:
        """Waits until frames pass both ways. QEMU → ringswitch first: once that works QEMU's
        sockets are open, so the switch never sends to a QEMU socket that does not exist yet."""
        try:
            until_delivered(self.to_qemu, self.t, timeout=timeout)
            until_delivered(self.to_switch, self.ctl, timeout=timeout, src_n=0xFFF1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnosis()}") from None
        self.qemu.check_alive()

    def diagnosis(self) -> str:
        """What a failed wait needs explained: QEMU alive?, the port's state, the sockets."""
        k = self.sw.port("k")
        k = {key: k[key] for key in ("connected", "peer", "link-up", "rx-frames", "tx-frames")} | {
            "drops": {r: n for r, n in k["drops"].items() if n}
        }
        ss = self.ns.exec("ss", "-anp", "-t", "-u", "-x", "-w").stdout
        return f"QEMU running: {self.qemu.running()} (exit status {self.qemu.proc.returncode}); port k: {k}\nsockets:\n{ss}"

    def qemu_to_switch(self, what: str, frames) -> None:
        exchange(what, self.to_qemu, self.t, frames)

    def switch_to_qemu(self, what: str, frames) -> None:
        exchange(what, self.to_switch, self.ctl, frames)

    def restart_qemu(self) -> None:
        """Stops QEMU and starts a new one with the same netdevs."""
        self.qemu.close()
        self.start_qemu()
