"""Interop with real QEMU: for each netdev kind QEMU 7.2 has, a QEMU process joins its netdev
`q` of that kind by a hub to a `socket,udp=` netdev the test drives (`ctl`), and ringswitch
has the matching port `k` (the other role) plus a UDP port `t` the test drives:

    test ─udp─► QEMU ctl ─hub─► QEMU q ══kind══► ringswitch k ─► ringswitch t ─udp─► test
    test ◄─udp─ QEMU ctl ◄─hub─ QEMU q ◄══kind══ ringswitch k ◄─ ringswitch t ◄─udp─ test

Frames of 60 to 1522 bytes, each with a unique tag, must come out byte for byte as they went
in, broadcast both ways and then unicast to the address the switch learned. Kinds with two
roles run in both (ringswitch listens and QEMU connects, and the reverse). Everything runs in
a namespace of the test's own (qemu_rig.py). QEMU 7.2 quirks the order of start-up respects:
a QEMU client connects once and never retries (ringswitch's listener starts first); QEMU's
multicast netdev hears its own frames (ignored here, by tag); a 0-byte datagram stops QEMU's
udp receive for good (ringswitch must never send one).
"""

import pytest

from portlib import drain, frame, mac, tag_of
from qemu_rig import SIZES, QemuRig, case_ids, cases


@pytest.mark.parametrize("case_id", case_ids())
def test_qemu_carries_frames_through_ringswitch_both_ways(case_id, tmp_path, cleanup):
    case = next(c for c in cases(tmp_path) if c.id == case_id)
    rig = QemuRig(cleanup, case, tmp_path)

    a_src, b_src = mac(1), mac(2)
    # Broadcast, QEMU → ringswitch, then ringswitch → QEMU.
    rig.qemu_to_switch("QEMU → ringswitch", [frame(a_src, n) for n in SIZES])
    rig.switch_to_qemu("ringswitch → QEMU", [frame(b_src, n) for n in SIZES])
    # Unicast to the address learned on the other side.
    rig.qemu_to_switch("unicast QEMU → ringswitch", [frame(a_src, n, dst=b_src) for n in (60, 1514)])
    rig.switch_to_qemu("unicast ringswitch → QEMU", [frame(b_src, n, dst=a_src) for n in (60, 1514)])
    # Runts (an empty datagram among them) stay in the switch: QEMU goes on receiving.
    for runt in (b"", b"\x01" * 10, frame(b_src, 60)[:13]):
        rig.to_switch(runt)
    rig.switch_to_qemu("after runts", [frame(b_src, 60)])

    # A frame that came in on t never comes back out of t: not from the switch, and not
    # from QEMU's hub (which never reflects). With multicast this also shows the switch does
    # not hear its own frames back from the group, as QEMU's multicast netdev does.
    echoes = [f for f in drain(rig.t, 0.2) if tag_of(f) in rig.sent_by_t]
    assert not echoes, f"{len(echoes)} frame(s) sent into t came back out of t"

    port = rig.sw.port("k")
    assert port["connected"], port
    n = len(SIZES) + 2  # broadcast and unicast frames each way, probes not counted
    assert port["rx-frames"] >= n and port["tx-frames"] >= n, port
    assert sum(port["drops"].values()) == 0, port["drops"]
    assert rig.sw.drops("t")["runt"] == 3
    rig.qemu.check_alive()
    stats = rig.sw.stop()
    assert {p["id"] for p in stats["ports"]} == {"k", "t"}
