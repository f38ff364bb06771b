"""More interop with real QEMU (see qemu_rig.py for the layout):

- a QEMU peer that restarts: a listening ringswitch port accepts the new QEMU, a connecting
  one reconnects to it, and datagram ports simply go on; frames pass both ways afterwards;
- jumbo frames pass byte for byte both ways (4000 and 9014 bytes by default; up to 9018 with
  `--max-frame-size 9018`, one byte more dropped as oversize)
  over the kinds that carry them to QEMU (its l2tpv3 truncates what it receives past 2048).
"""

import pytest

from portlib import frame, mac
from qemu_rig import QemuRig, cases

RESTART = [
    "socket-tcp-switch-listens",
    "socket-tcp-qemu-listens",
    "stream-inet-switch-server",
    "stream-inet-qemu-server",
    "stream-unix-switch-server",
    "stream-unix-qemu-server",
    "socket-udp",
    "socket-mcast",
    "l2tpv3-udp-plain",
]
JUMBO = ["socket-tcp-switch-listens", "stream-unix-qemu-server", "socket-udp", "dgram-inet", "socket-mcast"]


def _case(case_id, tmp_path):
    return next(c for c in cases(tmp_path) if c.id == case_id)


@pytest.mark.parametrize("case_id", RESTART)
def test_ringswitch_port_serves_a_restarted_qemu(case_id, tmp_path, cleanup):
    rig = QemuRig(cleanup, _case(case_id, tmp_path), tmp_path)
    rig.qemu_to_switch("before the restart", [frame(mac(1), 100)])
    rig.switch_to_qemu("before the restart", [frame(mac(2), 100)])
    stream = case_id.startswith(("socket-tcp", "stream"))

    rig.qemu.close()
    if stream:
        rig.sw.wait_port("k", lambda p: not p["connected"], 5, "k to see QEMU go")
    rig.start_qemu()
    rig.wait_paths()
    if stream:
        assert rig.sw.port("k")["connected"]
    rig.qemu_to_switch("after the restart", [frame(mac(1), n) for n in (60, 1514)])
    rig.switch_to_qemu("after the restart", [frame(mac(2), n) for n in (60, 1514)])
    drops = {r: n for r, n in rig.sw.drops("k").items() if n}
    assert not drops, f"k dropped frames across the restart: {drops}"


@pytest.mark.parametrize("case_id", JUMBO)
def test_jumbo_frames_pass_to_and_from_qemu(case_id, tmp_path, cleanup):
    rig = QemuRig(cleanup, _case(case_id, tmp_path), tmp_path, extra=["--max-frame-size", "9018"])
    sizes = (1523, 2049, 4000, 9014, 9018)
    rig.qemu_to_switch("jumbo QEMU → ringswitch", [frame(mac(1), n) for n in sizes])
    rig.switch_to_qemu("jumbo ringswitch → QEMU", [frame(mac(2), n) for n in sizes])
    # One byte over the limit is dropped as oversize, from either side.
    rig.to_qemu(frame(mac(1), 9019))
    rig.to_switch(frame(mac(2), 9019))
    rig.sw.wait_drop("k", "oversize", 1)
    rig.sw.wait_drop("t", "oversize", 1)
    rig.switch_to_qemu("after oversize", [frame(mac(2), 9014)])


@pytest.mark.parametrize("case_id", JUMBO)
def test_jumbo_frames_pass_by_default(case_id, tmp_path, cleanup):
    """Without --max-frame-size, as between QEMU's own hub ports: 4000- and 9014-byte frames
    pass byte for byte both ways."""
    rig = QemuRig(cleanup, _case(case_id, tmp_path), tmp_path)
    sizes = (4000, 9014)
    rig.qemu_to_switch("jumbo QEMU → ringswitch", [frame(mac(1), n) for n in sizes])
    rig.switch_to_qemu("jumbo ringswitch → QEMU", [frame(mac(2), n) for n in sizes])
    drops = {r: n for r, n in rig.sw.drops("k").items() if n}
    assert not drops, f"k dropped jumbo frames: {drops}"
