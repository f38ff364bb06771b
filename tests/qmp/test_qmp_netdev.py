"""netdev_add and netdev_del on a running switch, through qemu.qmp's client: the errors QEMU
gives (duplicate id, unknown type, bad id, no fd over QMP, unknown device), a port added at
run time that forwards at once, and a deleted port whose tap is gone and whose id and
interface name can be used again."""

import pytest

from qmprig import Host, Netns, frame, has_tag, legacy_client, link_exists, mac, require_qemu_qmp, unique_name

pytestmark = pytest.mark.usefixtures("needs_qemu_qmp")


@pytest.fixture
def needs_qemu_qmp():
    require_qemu_qmp()


@pytest.fixture
def qmp(lan, cleanup):
    return cleanup.add(legacy_client(lan.switch.qmp_path))


def execute_error(q, cmd, **args):
    from qemu.qmp import ExecuteError

    with pytest.raises(ExecuteError) as e:
        q.cmd(cmd, **args)
    return e.value.error_class, str(e.value)


def port_ids(q) -> list[str]:
    return [p["id"] for p in q.cmd("query-ports")]


def add_host(q, cleanup, port_id: str, ifname: str | None = None, n: int = 0x200) -> Host:
    """netdev_add of a tap port, its kernel side moved into a new namespace and brought up."""
    ifname = ifname or unique_name("t")
    ns = cleanup.add(Netns())
    assert q.cmd("netdev_add", type="tap", id=port_id, ifname=ifname) == {}
    h = Host(port_id, ifname, mac(n), ns)
    h.adopt()
    return h


def assert_forwards(src: Host, dst: Host, cleanup, timeout: float = 2) -> None:
    """A broadcast from `src` reaches `dst`, and a unicast back reaches `src`."""
    rx_dst = cleanup.add(dst.packet_socket())
    rx_src = cleanup.add(src.packet_socket())
    f = frame(src.mac)
    rx_src.send(f)
    assert rx_dst.wait_for(has_tag(f[14:26]), timeout), f"{src.id} -> {dst.id}: broadcast not delivered"
    g = frame(dst.mac, dst=src.mac)
    rx_dst.send(g)
    assert rx_src.wait_for(has_tag(g[14:26]), timeout), f"{dst.id} -> {src.id}: unicast not delivered"


def test_duplicate_id_is_refused(qmp, lan):
    ifname = unique_name("t")
    cls, desc = execute_error(qmp, "netdev_add", type="tap", id="a", ifname=ifname)
    assert (cls, desc) == ("GenericError", "Duplicate ID 'a'")
    assert not link_exists(ifname), "a refused netdev_add created its tap"
    # Also for a port added at run time, and for other kinds.
    qmp.cmd("netdev_add", type="tap", id="x", ifname=unique_name("t"))
    cls, desc = execute_error(qmp, "netdev_add", type="socket", id="x", listen="127.0.0.1:1")
    assert (cls, desc) == ("GenericError", "Duplicate ID 'x'")
    assert port_ids(qmp) == ["a", "b", "c", "x"]


@pytest.mark.parametrize("kind", ["bogus", "TAP", "", "tap "])
def test_unknown_type_is_refused(qmp, kind):
    cls, desc = execute_error(qmp, "netdev_add", type=kind, id="n1")
    assert cls == "GenericError"
    assert desc.startswith(f"Parameter 'type' does not accept value '{kind}'"), desc
    assert port_ids(qmp) == ["a", "b", "c"]


@pytest.mark.parametrize("bad", ["1a", "a b", "", "-x", "a,b", "é", "x" * 200])
def test_bad_id_is_refused(qmp, bad):
    cls, desc = execute_error(qmp, "netdev_add", type="tap", id=bad, ifname=unique_name("t"))
    assert cls == "GenericError"
    assert desc.startswith("Parameter 'id' expects an identifier"), desc
    assert port_ids(qmp) == ["a", "b", "c"]


def test_fd_over_qmp_is_refused(qmp):
    cls, desc = execute_error(qmp, "netdev_add", type="tap", id="n1", fd="3")
    assert cls == "GenericError" and "'fd'" in desc, desc
    cls, desc = execute_error(qmp, "netdev_add", type="tap", id="n1", fds="3:4")
    assert cls == "GenericError" and "'fds'" in desc, desc
    assert port_ids(qmp) == ["a", "b", "c"]


def test_added_port_forwards_at_once(qmp, lan, cleanup):
    n = add_host(qmp, cleanup, "n")
    p = qmp.cmd("query-ports", name="n")[0]
    assert p["type"] == "tap" and p["ifname"] == n.ifname and p["link-up"] is True
    assert_forwards(lan["a"], n, cleanup)
    assert_forwards(n, lan["b"], cleanup)
    # The switch saw it: the new port's counters moved.
    p = qmp.cmd("query-ports", name="n")[0]
    assert p["rx-frames"] >= 2 and p["tx-frames"] >= 2, p


@pytest.mark.parametrize("name", ["nope", "A", "a "])
def test_netdev_del_of_an_unknown_id_is_device_not_found(qmp, name):
    cls, desc = execute_error(qmp, "netdev_del", id=name)
    assert (cls, desc) == ("DeviceNotFound", f"Device '{name}' not found")
    assert port_ids(qmp) == ["a", "b", "c"]


def test_netdev_del_removes_the_tap_and_the_id_can_be_reused(qmp, lan, cleanup):
    ifname = unique_name("t")
    qmp.cmd("netdev_add", type="tap", id="d", ifname=ifname)
    assert link_exists(ifname)
    assert qmp.cmd("netdev_del", id="d") == {}
    # Gone by the time the command returned: no polling.
    assert not link_exists(ifname), f"tap {ifname} still exists after netdev_del returned"
    assert port_ids(qmp) == ["a", "b", "c"]
    cls, desc = execute_error(qmp, "netdev_del", id="d")
    assert (cls, desc) == ("DeviceNotFound", "Device 'd' not found")
    # The same id and interface name again, moved into a namespace: it forwards.
    d = add_host(qmp, cleanup, "d", ifname)
    assert_forwards(lan["a"], d, cleanup)
    # Deleting a tap whose kernel side sits in a namespace removes it there too.
    qmp.cmd("netdev_del", id="d")
    assert not link_exists(ifname, d.ns.name)


def test_netdev_del_of_a_startup_port_and_traffic_on_the_others(qmp, lan, cleanup):
    assert_forwards(lan["a"], lan["c"], cleanup)
    macs = {e["port"] for e in qmp.cmd("query-mac-table")}
    assert "c" in macs
    qmp.cmd("netdev_del", id="c")
    assert not link_exists(lan["c"].ifname, lan["c"].ns.name)
    assert "c" not in {e["port"] for e in qmp.cmd("query-mac-table")}, "MACs learned on a deleted port remain"
    assert_forwards(lan["a"], lan["b"], cleanup)
    # `c` can come back as a new port with the same name.
    c2 = add_host(qmp, cleanup, "c", lan["c"].ifname, n=0x300)
    assert_forwards(c2, lan["a"], cleanup)


def test_netdev_add_takes_vnet_hdr_as_qemu_spells_it(qmp, lan):
    """`vnet_hdr` is net.json's boolean: the tap gets a virtio-net header and offloads, and
    query-ports lists them; `false` keeps a plain tap; a string is refused by type."""
    on, off = unique_name("t"), unique_name("t")
    assert qmp.cmd("netdev_add", type="tap", id="v", ifname=on, vnet_hdr=True) == {}
    assert qmp.cmd("netdev_add", type="tap", id="p", ifname=off, vnet_hdr=False) == {}
    ports = {p["id"]: p for p in qmp.cmd("query-ports")}
    assert {"csum", "tso4", "tso6"} <= set(ports["v"]["offloads"]), ports["v"]
    assert ports["v"]["io"]["offloads"] is True
    assert "offloads" not in ports["p"], ports["p"]
    assert ports["p"]["io"]["offloads"] is False
    cls, desc = execute_error(qmp, "netdev_add", type="tap", id="s", ifname=unique_name("t"), vnet_hdr="on")
    assert cls == "GenericError" and "vnet_hdr" in desc, desc
    qmp.cmd("netdev_del", id="v")
    qmp.cmd("netdev_del", id="p")


def test_netdev_add_of_a_unix_dgram_port_whose_peer_is_not_there_yet(qmp, lan, cleanup, tmp_path):
    """QEMU 7.2 accepts a unix `dgram` netdev whose remote socket does not exist yet and
    delivers once the peer binds; so does ringswitch, over QMP as on the command line."""
    import socket
    import time

    local, remote = str(tmp_path / "sw.sock"), str(tmp_path / "peer.sock")
    assert qmp.cmd("netdev_add", type="dgram", id="d",
                   local={"type": "unix", "path": local},
                   remote={"type": "unix", "path": remote}) == {}
    peer = cleanup.add(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    peer.bind(remote)
    peer.settimeout(0.2)
    # Broadcasts from a tap host reach the peer once the switch has connected to it (it
    # tries again every 100 ms).
    rx = cleanup.add(lan["a"].packet_socket())
    got = None
    deadline = time.monotonic() + 5
    while got is None and time.monotonic() < deadline:
        f = frame(lan["a"].mac)
        rx.send(f)
        try:
            data = peer.recv(65536)
            if data[14:26] == f[14:26]:
                got = data
        except socket.timeout:
            pass
    assert got is not None, "no frame reached the peer that bound after netdev_add"
    # And the peer's frames reach the taps.
    rx_b = cleanup.add(lan["b"].packet_socket())
    g = frame(mac(0x3ff))
    peer.sendto(g, local)
    assert rx_b.wait_for(has_tag(g[14:26]), 2), "the peer's frame did not reach tap b"
    # A unix datagram socket sends at once, what its peer has room for; a tap does not.
    ports = {p["id"]: p for p in qmp.cmd("query-ports")}
    assert ports["d"]["io"]["sends-now"] is True, ports["d"]
    assert ports["a"]["io"]["sends-now"] is False, ports["a"]
