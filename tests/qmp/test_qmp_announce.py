"""announce-self checked on the wire: QEMU's 60-byte RARP frame for each MAC behind each
announced port (its macaddr= and the stations learned on it), out of every other port of its
domain and never back into its own, on QEMU's schedule (at once, then `initial`,
`initial + step`, ... each capped at `max`, `rounds` in all); `id` names a timer that a
later call replaces; `interfaces` restricts the ports. Frames are captured with AF_PACKET
in the hosts' namespaces, with kernel receive timestamps."""

import os
import time

import pytest

from qmprig import Lan, RawQmp, frame, is_rarp, mac_bytes, mac_str, rarp_frame, require_root

#: Allowed timing error of one gap: 25 ms, plus slack for scheduling on a small busy VM.
TOLERANCE = 0.025 + int(os.environ.get("RSQ_TIMING_SLACK_MS", "25")) / 1000
CONFIGURED = "52:54:00:5a:00:01"


@pytest.fixture
def rig(cleanup):
    """Ports a (macaddr=52:54:00:…, and its host has spoken: one learned station), b and c
    (silent: nothing learned behind them); a capture socket per host, opened after the
    learning frame went by."""
    require_root()
    lan = Lan(cleanup, macaddr={"a": CONFIGURED})
    socks = {pid: cleanup.add(h.packet_socket()) for pid, h in lan.hosts.items()}
    q = cleanup.add(RawQmp(unix=lan.switch.qmp_path))
    q.negotiate()
    socks["a"].send(frame(lan["a"].mac))
    for _ in range(50):
        if any(e["port"] == "a" for e in q.ok("query-mac-table")):
            break
        time.sleep(0.02)
    time.sleep(0.1)
    for s in socks.values():
        s.drain()
    return lan, socks, q


def rarps(sock, seconds: float) -> list[tuple[bytes, float]]:
    return sock.collect(seconds, is_rarp)


def by_mac(frames) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for f, t in frames:
        out.setdefault(mac_str(f[6:12]), []).append(t)
    return out


def schedule(initial: int, max_: int, rounds: int, step: int) -> list[float]:
    """QEMU's send times in seconds after the command (research/qemu-wire-formats.md)."""
    at_ms, t = [0], 0
    for k in range(rounds - 1):
        delay = initial + k * step
        if delay < 0 or delay > max_:
            delay = max_
        t += delay
        at_ms.append(t)
    return [ms / 1000 for ms in at_ms]


def test_frames_layout_count_and_spacing(rig):
    lan, socks, q = rig
    params = {"initial": 100, "max": 250, "rounds": 4, "step": 100}
    want = schedule(params["initial"], params["max"], params["rounds"], params["step"])
    assert want == [0.0, 0.1, 0.3, 0.55]
    sent_at = time.time()
    assert q.ok("announce-self", params) == {}
    got = {pid: rarps(socks[pid], want[-1] + 0.4) for pid in ("b", "c", "a")}
    macs = {CONFIGURED, mac_str(lan["a"].mac)}
    assert got["a"] == [], "the announced port's own namespace received its announcements"
    for pid in ("b", "c"):
        frames = got[pid]
        assert len(frames) == params["rounds"] * len(macs), f"{pid}: {len(frames)} RARP frames"
        for f, _ in frames:
            assert len(f) == 60, f"{pid}: a {len(f)}-byte frame"
            assert f == rarp_frame(f[6:12]), f"{pid}: not QEMU's RARP layout: {f.hex(' ')}"
        times = by_mac(frames)
        assert set(times) == macs, f"{pid}: announced {set(times)}"
        for m, stamps in times.items():
            assert len(stamps) == params["rounds"]
            first = stamps[0] - sent_at
            assert -0.005 <= first <= TOLERANCE, f"{pid} {m}: first frame {first * 1000:.1f} ms after the command"
            gaps = [b - a for a, b in zip(stamps, stamps[1:])]
            want_gaps = [b - a for a, b in zip(want, want[1:])]
            for i, (g, w) in enumerate(zip(gaps, want_gaps)):
                assert abs(g - w) <= TOLERANCE, (
                    f"{pid} {m}: gap {i + 1} was {g * 1000:.1f} ms, want {w * 1000:.0f} ± {TOLERANCE * 1000:.0f} ms"
                    f" (all gaps: {[round(x * 1000, 1) for x in gaps]})"
                )
    assert rarps(socks["b"], 0.3) == [], "frames after the last round"


def test_layout_is_qemus_byte_for_byte():
    """The expected frame itself, against the dump recorded from QEMU 7.2."""
    dump = (
        "ff ff ff ff ff ff 52 54 00 12 34 56 80 35 00 01 08 00 06 04 00 03 52 54 00 12 34 56 00 00 00 00 "
        "52 54 00 12 34 56 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
    )
    assert rarp_frame(mac_bytes("52:54:00:12:34:56")) == bytes.fromhex(dump)


def test_an_id_names_a_timer_that_a_later_call_replaces(rig):
    lan, socks, q = rig
    slow = {"initial": 300, "max": 300, "rounds": 10, "step": 0}
    t0 = time.monotonic()
    q.ok("announce-self", {**slow, "id": "t"})
    # Rounds at 0 and 300 ms; replaced at 450 ms, before the one due at 600 ms.
    time.sleep(max(0.0, 0.45 - (time.monotonic() - t0)))
    q.ok("announce-self", {"initial": 50, "max": 50, "rounds": 1, "step": 0, "id": "t"})
    frames = rarps(socks["b"], 1.2)
    counts = {m: len(s) for m, s in by_mac(frames).items()}
    assert counts == {CONFIGURED: 3, mac_str(lan["a"].mac): 3}, f"{counts}: the old timer kept running or was lost"
    # Timers with different ids run side by side: 3 + 2 rounds.
    socks["c"].drain()
    q.ok("announce-self", {"initial": 200, "max": 200, "rounds": 3, "step": 0, "id": "x"})
    q.ok("announce-self", {"initial": 100, "max": 100, "rounds": 2, "step": 0, "id": "y"})
    counts = {m: len(s) for m, s in by_mac(rarps(socks["c"], 0.9)).items()}
    assert counts == {CONFIGURED: 5, mac_str(lan["a"].mac): 5}, counts


def test_interfaces_restrict_the_announced_ports(rig):
    lan, socks, q = rig
    # b speaks once, so a station is learned behind b too.
    socks["b"].send(frame(lan["b"].mac))
    time.sleep(0.2)
    for s in socks.values():
        s.drain()
    q.ok("announce-self", {"initial": 50, "max": 50, "rounds": 2, "step": 0, "interfaces": ["b"]})
    got = {pid: by_mac(rarps(socks[pid], 0.4)) for pid in ("a", "c", "b")}
    b_mac = mac_str(lan["b"].mac)
    assert {m: len(s) for m, s in got["a"].items()} == {b_mac: 2}, got["a"]
    assert {m: len(s) for m, s in got["c"].items()} == {b_mac: 2}, got["c"]
    assert got["b"] == {}, "the announced port received its own announcement"
    # Names that are no port, and an empty list, announce nothing (and are no error, as in QEMU).
    for interfaces in (["vn2", "vn3"], []):
        assert q.ok("announce-self", {"initial": 50, "max": 50, "rounds": 2, "step": 0, "interfaces": interfaces, "id": "bob"}) == {}
        assert not any(rarps(socks[pid], 0.25) for pid in ("a", "b", "c")), f"interfaces={interfaces} sent frames"


def test_odd_parameters_are_accepted(rig):
    lan, socks, q = rig
    assert q.ok("announce-self", {"initial": 50, "max": 550, "rounds": 0, "step": 50}) == {}
    assert rarps(socks["b"], 0.3) == [], "rounds=0 sent frames"
    assert q.ok("announce-self", {"initial": -1, "max": 30, "rounds": 2, "step": 10}) == {}
    assert len(rarps(socks["b"], 0.3)) == 2 * 2


def test_announcements_stay_in_the_domain_and_skip_link_down_ports(cleanup):
    require_root()
    lan = Lan(cleanup, ids=("a", "b", "c", "d"), macaddr={"a": CONFIGURED})
    socks = {pid: cleanup.add(h.packet_socket()) for pid, h in lan.hosts.items()}
    q = cleanup.add(RawQmp(unix=lan.switch.qmp_path))
    q.negotiate()
    q.ok("netdev_add", {"type": "hubport", "id": "h1", "hubid": 1, "netdev": "c"})
    q.ok("set_link", {"name": "d", "up": False})
    q.ok("announce-self", {"initial": 50, "max": 50, "rounds": 2, "step": 0, "interfaces": ["a"]})
    assert len(rarps(socks["b"], 0.3)) == 2
    assert rarps(socks["c"], 0.1) == [], "an announcement crossed into another hub"
    assert rarps(socks["d"], 0.1) == [], "a link-down port received an announcement"
