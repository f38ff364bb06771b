"""set_link: a port whose link is down neither receives nor transmits; frames to it are
dropped and counted as link-down; a tap shows it to its kernel side as NO-CARRIER; up
restores all of it. Unknown names are DeviceNotFound."""

import socket
import time

import pytest

from qmprig import frame, has_tag, legacy_client, port, require_qemu_qmp, wait_until

pytestmark = pytest.mark.usefixtures("needs_qemu_qmp")


@pytest.fixture
def needs_qemu_qmp():
    require_qemu_qmp()


@pytest.fixture
def qmp(lan, cleanup):
    return cleanup.add(legacy_client(lan.switch.qmp_path))


@pytest.fixture
def socks(lan, cleanup):
    """A packet socket per host; every host has spoken once, so the switch knows its MAC."""
    s = {pid: cleanup.add(h.packet_socket()) for pid, h in lan.hosts.items()}
    for pid, h in lan.hosts.items():
        s[pid].send(frame(h.mac))
    time.sleep(0.2)
    for x in s.values():
        x.drain()
    return s


def link_down_drops(q, name: str) -> int:
    return port(q, name)["drops"]["link-down"]


@pytest.mark.parametrize("name", ["nope", "A", ""])
def test_set_link_of_an_unknown_name_is_device_not_found(qmp, name):
    from qemu.qmp import ExecuteError

    for up in (False, True):
        with pytest.raises(ExecuteError) as e:
            qmp.cmd("set_link", name=name, up=up)
        assert e.value.error_class == "DeviceNotFound"
        assert str(e.value) == f"Device '{name}' not found"


def test_link_down_shows_no_carrier_and_up_restores_it(qmp, lan):
    c = lan["c"]
    assert "NO-CARRIER" not in c.link_show()
    assert qmp.cmd("set_link", name="c", up=False) == {}
    # Reflected by the time the command returned.
    assert "NO-CARRIER" in c.link_show(), c.link_show()
    assert port(qmp, "c")["link-up"] is False
    assert port(qmp, "a")["link-up"] is True
    # Idempotent.
    qmp.cmd("set_link", name="c", up=False)
    assert "NO-CARRIER" in c.link_show()
    assert qmp.cmd("set_link", name="c", up=True) == {}
    assert "NO-CARRIER" not in c.link_show(), c.link_show()
    assert "LOWER_UP" in c.link_show()
    assert port(qmp, "c")["link-up"] is True


def test_a_port_with_link_down_neither_receives_nor_transmits(qmp, lan, socks):
    a, b, c = lan["a"], lan["b"], lan["c"]
    qmp.cmd("set_link", name="c", up=False)
    before = port(qmp, "c")
    # A broadcast from a reaches b, not c.
    f = frame(a.mac)
    socks["a"].send(f)
    assert socks["b"].wait_for(has_tag(f[14:26]), 2), "the broadcast did not reach b"
    assert not socks["c"].collect(0.3), "a port with link down received a broadcast"
    # Unicast to c's learned MAC: dropped at c and counted as link-down.
    for _ in range(5):
        socks["a"].send(frame(a.mac, dst=c.mac))
    wait_until(lambda: link_down_drops(qmp, "c") >= before["drops"]["link-down"] + 5, 3, what="5 link-down drops on c")
    assert not socks["c"].collect(0.3), "a port with link down received unicast"
    assert port(qmp, "c")["tx-frames"] == before["tx-frames"]
    # From c: the kernel side has no carrier; whatever the switch might still read from c is
    # dropped, never forwarded.
    for _ in range(5):
        try:
            socks["c"].send(frame(c.mac))
        except OSError:
            pass  # ENOBUFS: the kernel refuses to send without carrier
    assert not socks["a"].collect(0.3) and not socks["b"].collect(0.1), "a frame from a link-down port was forwarded"
    after = port(qmp, "c")
    read = after["rx-frames"] - before["rx-frames"]
    assert after["drops"]["link-down"] - before["drops"]["link-down"] >= 5 + read
    # Up again: both directions work, and nothing queued while down comes out late.
    qmp.cmd("set_link", name="c", up=True)
    f = frame(a.mac)
    socks["a"].send(f)
    got = socks["c"].collect(0.5)
    assert [tg for tg in (x[0][14:26] for x in got)] == [f[14:26]], f"c received {len(got)} frames after link up"
    g = frame(c.mac, dst=a.mac)
    socks["c"].send(g)
    assert socks["a"].wait_for(has_tag(g[14:26]), 2), "c -> a after link up"
    assert not socks["b"].collect(0.2, has_tag(g[14:26])), "unicast to a leaked to b"


def test_link_down_on_a_socket_port_drops_both_ways_and_counts(qmp, lan, socks, cleanup):
    """A UDP port (loopback) shows the switch's own receive side: datagrams that arrive while
    the link is down are read, dropped and counted, not forwarded."""
    peer = cleanup.add(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(0.3)
    peer_port = peer.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    qmp.cmd("netdev_add", type="socket", id="u", udp=f"127.0.0.1:{peer_port}", localaddr=f"127.0.0.1:{local}")
    umac = bytes.fromhex("025100ee0001")
    # The switch learns umac behind u.
    peer.sendto(frame(umac), ("127.0.0.1", local))
    wait_until(lambda: any(e["port"] == "u" for e in qmp.cmd("query-mac-table")), 3, what="umac learned on u")
    socks["a"].drain()
    qmp.cmd("set_link", name="u", up=False)
    before = port(qmp, "u")
    for _ in range(10):
        peer.sendto(frame(umac), ("127.0.0.1", local))
    wait_until(lambda: port(qmp, "u")["rx-frames"] >= before["rx-frames"] + 10, 3, what="10 datagrams read on u")
    assert not socks["a"].collect(0.3), "frames received on a link-down port were forwarded"
    for _ in range(10):
        socks["a"].send(frame(lan["a"].mac, dst=umac))
    wait_until(lambda: link_down_drops(qmp, "u") >= before["drops"]["link-down"] + 20, 3, what="20 link-down drops on u")
    with pytest.raises(TimeoutError):
        peer.recv(100)
    assert port(qmp, "u")["tx-frames"] == before["tx-frames"]
    qmp.cmd("set_link", name="u", up=True)
    f = frame(umac)
    peer.sendto(f, ("127.0.0.1", local))
    assert socks["a"].wait_for(has_tag(f[14:26]), 2), "u -> a after link up"
    g = frame(lan["a"].mac, dst=umac)
    socks["a"].send(g)
    peer.settimeout(2)
    assert peer.recv(100) == g
    qmp.cmd("netdev_del", id="u")
