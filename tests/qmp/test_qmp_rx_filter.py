"""set-rx-filter (issue 14): its arguments are one RxFilterInfo object exactly as
query-rx-filter returns it, so query -> set -> query gives the same object; each kind of bad
argument gets GenericError naming the member; and NIC_RX_FILTER_CHANGED follows QEMU's
one-shot rule (sent once, then held back for that port until query-rx-filter; a set that
changes nothing raises nothing). Ports here are listening socket ports: no root needed."""

import json
import subprocess
import time

import pytest

from qmprig import BINARY, RawQmp, Switch, assert_error, free_tcp_port, require_switch

MEMBERS = [
    "name", "promiscuous", "multicast", "unicast", "vlan", "broadcast-allowed",
    "multicast-overflow", "unicast-overflow", "main-mac", "vlan-table", "unicast-table",
    "multicast-table",
]  # fmt: skip


def guest(name: str) -> dict:
    """What a Linux guest's virtio-net NIC reports once its driver is up (QEMU 7.2)."""
    return {
        "name": name,
        "promiscuous": False,
        "multicast": "normal",
        "unicast": "normal",
        "vlan": "normal",
        # QEMU's inverted meaning (it reports nobcast under this name): broadcast is taken.
        "broadcast-allowed": False,
        "multicast-overflow": False,
        "unicast-overflow": False,
        "main-mac": "52:54:00:12:34:56",
        "vlan-table": [4, 0],
        "unicast-table": ["02:00:00:00:00:09"],
        "multicast-table": ["33:33:ff:00:77:09", "01:00:5e:00:00:01", "33:33:00:00:00:01"],
    }


@pytest.fixture
def qmp(switch, cleanup):
    """A negotiated client of a switch with two listening socket ports, p and q."""
    c = cleanup.add(RawQmp(unix=switch.qmp_path))
    c.negotiate()
    for pid in ("p", "q"):
        c.ok("netdev_add", {"type": "socket", "id": pid, "listen": f"127.0.0.1:{free_tcp_port()}"})
    return c


def rx_filter(qmp, name: str) -> dict:
    got = qmp.ok("query-rx-filter", {"name": name})
    assert len(got) == 1, got
    return got[0]


def changed_events(qmp, seconds: float = 0.3) -> list[str]:
    """The ports named by NIC_RX_FILTER_CHANGED events received so far and within `seconds`
    (each taken once)."""
    deadline = time.monotonic() + seconds
    for _ in range(1000):
        line = qmp.read_line(max(0.0, deadline - time.monotonic()))
        if line is None:
            break
        qmp.events.append(json.loads(line))
    names = [e["data"]["name"] for e in qmp.events if e.get("event") == "NIC_RX_FILTER_CHANGED"]
    for e in qmp.events:
        if e.get("event") == "NIC_RX_FILTER_CHANGED":
            assert set(e["data"]) == {"name", "path"}, e
    qmp.events.clear()
    return names


def test_query_set_query_round_trips(qmp):
    before = rx_filter(qmp, "p")
    assert before["promiscuous"] is True, "a port is promiscuous until a filter is set"
    # The promiscuous default, set back as it was queried, changes nothing.
    assert qmp.ok("set-rx-filter", before) == {}
    assert rx_filter(qmp, "p") == before
    want = guest("p")
    want["vlan-table"] = [0, 4]  # listed highest first, as QEMU does
    assert qmp.ok("set-rx-filter", want) == {}
    got = rx_filter(qmp, "p")
    assert got == {**want, "vlan-table": [4, 0]}
    assert list(got) == list(before), "members in query-rx-filter's order"
    assert qmp.ok("set-rx-filter", got) == {}
    assert rx_filter(qmp, "p") == got
    assert rx_filter(qmp, "q") == {**before, "name": "q"}, "the other port is untouched"


def test_tables_beyond_qemus_capacity_set_the_overflow_flags(qmp):
    f = guest("p")
    f["unicast-table"] = [f"02:00:00:00:01:{i:02x}" for i in range(40)]
    f["multicast-table"] = [f"01:00:5e:00:01:{i:02x}" for i in range(30)]
    qmp.ok("set-rx-filter", f)
    got = rx_filter(qmp, "p")
    assert got["unicast-table"] == f["unicast-table"] and got["unicast-overflow"] is False
    assert got["multicast-table"] == [] and got["multicast-overflow"] is True
    f["unicast-table"] = [f"02:00:00:00:01:{i:02x}" for i in range(65)]
    qmp.ok("set-rx-filter", f)
    got = rx_filter(qmp, "p")
    assert got["unicast-table"] == [] and got["unicast-overflow"] is True


def _without(member: str) -> dict:
    f = guest("p")
    del f[member]
    return f


def _with(member: str, value) -> dict:
    return {**guest("p"), member: value}


ERRORS = [
    *[(_without(m), f"^Parameter '{m}' is missing$") for m in MEMBERS],
    (None, "^Parameter 'name' is missing$"),
    (_with("extra", 1), "^Parameter 'extra' is unexpected$"),
    (_with("name", 1), r"^Invalid parameter type for 'name', expected: string$"),
    (_with("promiscuous", "no"), r"^Invalid parameter type for 'promiscuous', expected: boolean$"),
    (_with("broadcast-allowed", 1), r"^Invalid parameter type for 'broadcast-allowed', expected: boolean$"),
    (_with("multicast", True), r"^Invalid parameter type for 'multicast', expected: string$"),
    (_with("unicast", "x"), r"^Parameter 'unicast' does not accept value 'x'"),
    (_with("vlan", "ALL"), r"^Parameter 'vlan' does not accept value 'ALL'"),
    (_with("main-mac", "52:54:00:12:34"), r"^Parameter 'main-mac' expects a MAC address"),
    (_with("main-mac", 5), r"^Invalid parameter type for 'main-mac', expected: string$"),
    (_with("vlan-table", [1, 4096]), r"^Parameter 'vlan-table\[1\]' expects a VLAN id, 0 to 4095, got '4096'$"),
    (_with("vlan-table", [-1]), r"^Parameter 'vlan-table\[0\]' expects a VLAN id, 0 to 4095"),
    (_with("vlan-table", ["1"]), r"^Invalid parameter type for 'vlan-table\[0\]', expected: integer$"),
    (_with("vlan-table", 1), r"^Invalid parameter type for 'vlan-table', expected: array$"),
    (_with("unicast-table", ["zz:00:00:00:00:01"]), r"^Parameter 'unicast-table\[0\]' expects a unicast MAC address"),
    (_with("unicast-table", ["01:00:5e:00:00:01"]), r"^Parameter 'unicast-table\[0\]' expects a unicast MAC address"),
    (_with("multicast-table", ["02:00:00:00:00:01"]), r"^Parameter 'multicast-table\[0\]' expects a multicast MAC address"),
    (_with("name", "nope"), "^invalid net client name: nope$"),
]  # fmt: skip


@pytest.mark.parametrize("args, desc", ERRORS, ids=[f"e{i}" for i in range(len(ERRORS))])
def test_each_bad_argument_is_refused_naming_it(qmp, args, desc):
    before = rx_filter(qmp, "p")
    changed_events(qmp)
    r = qmp.execute("set-rx-filter", args, id="rxf")
    assert r["id"] == "rxf"
    assert_error(r, "GenericError", desc)
    assert rx_filter(qmp, "p") == before, "a refused set-rx-filter changed the filter"
    assert changed_events(qmp) == [], "a refused set-rx-filter raised an event"


def test_nic_rx_filter_changed_once_until_queried(qmp, switch, cleanup):
    other = cleanup.add(RawQmp(unix=switch.qmp_path))
    other.negotiate()
    rx_filter(qmp, "p")  # armed
    changed_events(qmp)
    f = guest("p")
    qmp.ok("set-rx-filter", f)
    assert changed_events(qmp) == ["p"], "the first change is announced"
    assert changed_events(other) == ["p"], "to every client"
    # More changes before anyone queried: held back.
    f["broadcast-allowed"] = True
    qmp.ok("set-rx-filter", f)
    f["multicast"] = "all"
    qmp.ok("set-rx-filter", f)
    assert changed_events(qmp) == []
    # Another port has its own event.
    qmp.ok("set-rx-filter", guest("q"))
    assert changed_events(qmp) == ["q"]
    # The query re-arms; an unchanged filter raises nothing, the next change one event.
    assert rx_filter(qmp, "p") == f
    qmp.ok("set-rx-filter", f)
    assert changed_events(qmp) == [], "a set that changes nothing raises nothing"
    f["promiscuous"] = True
    qmp.ok("set-rx-filter", f)
    assert changed_events(qmp) == ["p"], "after the query, the next change is announced"
    qmp.ok("set-rx-filter", guest("p"))
    assert changed_events(qmp) == []


def test_netdev_add_takes_an_rx_filter_inline(qmp):
    f = guest("ignored")
    del f["name"]
    args = {"type": "socket", "id": "r", "listen": f"127.0.0.1:{free_tcp_port()}", "rx-filter": f}
    assert qmp.ok("netdev_add", args) == {}
    assert rx_filter(qmp, "r") == {**f, "name": "r"}
    port = qmp.ok("query-ports", {"name": "r"})[0]
    assert port["rx-filter"] == "userspace"
    assert port["drops"]["filtered"] == 0
    bad = {**args, "id": "r2", "rx-filter": {**f, "unicast": "some"}}
    assert_error(
        qmp.execute("netdev_add", bad),
        "GenericError",
        r"^Parameter 'rx-filter': Parameter 'unicast' does not accept value 'some'",
    )
    assert [p["id"] for p in qmp.ok("query-ports")] == ["p", "q", "r"]


def test_rx_filter_option_names_a_file_on_the_command_line(cleanup, tmp_path):
    """`-netdev …,rx-filter=PATH`: the port starts with the file's filter (its `name` is not
    looked at); a file with a bad member stops the switch at start, naming it."""
    require_switch()
    f = guest("some-qemu-nic")
    path = tmp_path / "rx.json"
    path.write_text(json.dumps(f))
    spec = f"socket,id=s,listen=127.0.0.1:{free_tcp_port()},rx-filter={path}"
    sw = cleanup.add(Switch([spec]))
    q = cleanup.add(RawQmp(unix=sw.qmp_path))
    q.negotiate()
    assert rx_filter(q, "s") == {**f, "name": "s"}
    assert q.ok("query-ports", {"name": "s"})[0]["options"]["rx-filter"] == str(path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**f, "vlan-table": [5000]}))
    out = subprocess.run(
        [str(BINARY), "-netdev", f"socket,id=s,listen=127.0.0.1:{free_tcp_port()},rx-filter={bad}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert out.returncode == 2, f"exit {out.returncode}: {out.stderr}"
    assert f"Parameter 'rx-filter': {bad}: Parameter 'vlan-table[0]' expects a VLAN id" in out.stderr
    assert "ringswitch: ready" not in out.stderr
