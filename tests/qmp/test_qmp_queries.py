"""The query commands' answers, checked against their documented schemas: query-rx-filter
(net.json's RxFilterInfo), and the operator commands of control/qapi/ringswitch.json
(query-ports, query-mac-table, clear-mac-table, query-workers), plus query-commands."""

import ast
import os
import re
import socket
import time

import pytest

from qmprig import ROOT, Lan, RawQmp, Switch, assert_error, frame, has_tag, mac_str, require_root, require_switch

SCHEMA_FILE = ROOT / "control" / "qapi" / "ringswitch.json"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
RX_STATE = {"normal", "none", "all"}
#: net.json's RxFilterInfo (QEMU 7.2).
RX_FILTER_INFO = {
    "name": "str",
    "promiscuous": "bool",
    "multicast": "RxState",
    "unicast": "RxState",
    "vlan": "RxState",
    "broadcast-allowed": "bool",
    "multicast-overflow": "bool",
    "unicast-overflow": "bool",
    "main-mac": "str",
    "vlan-table": ["int"],
    "unicast-table": ["str"],
    "multicast-table": ["str"],
}
#: Every command this suite uses; query-commands must list each.
COMMANDS_USED = {
    "qmp_capabilities", "query-version", "query-commands", "quit", "netdev_add", "netdev_del",
    "set_link", "query-rx-filter", "announce-self", "query-ports", "query-mac-table",
    "clear-mac-table", "query-workers",
}  # fmt: skip


def load_schema() -> dict:
    """The QAPI definitions of ringswitch.json: name -> definition."""
    text = "\n".join(line for line in SCHEMA_FILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    defs, depth, start = {}, 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                d = ast.literal_eval(text[start : i + 1])
                name = d.get("struct") or d.get("command") or d.get("enum") or d.get("union")
                defs[name] = d
    return defs


def conform(value, typ, structs: dict, path: str = "$") -> list[str]:
    """Where `value` departs from QAPI type `typ` (builtin, [list], or struct name)."""
    if isinstance(typ, list):
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [e for i, v in enumerate(value) for e in conform(v, typ[0], structs, f"{path}[{i}]")]
    builtins = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: type(v) is int,
        "bool": lambda v: type(v) is bool,
        "number": lambda v: type(v) in (int, float),
        "any": lambda v: True,
        "RxState": lambda v: v in RX_STATE,
    }
    if typ in builtins:
        return [] if builtins[typ](value) else [f"{path}: {value!r} is not {typ}"]
    members = structs[typ]
    if not isinstance(value, dict):
        return [f"{path}: {value!r} is not a {typ} object"]
    errors = []
    names = set()
    for key, mtyp in members.items():
        optional = key.startswith("*")
        name = key.lstrip("*")
        names.add(name)
        if name not in value:
            if not optional:
                errors.append(f"{path}.{name}: missing")
            continue
        errors += conform(value[name], mtyp, structs, f"{path}.{name}")
    errors += [f"{path}.{k}: not in {typ}" for k in value if k not in names]
    return errors


@pytest.fixture(scope="module")
def structs():
    defs = load_schema()
    out = {name: d["data"] for name, d in defs.items() if "struct" in d}
    out["RxFilterInfo"] = RX_FILTER_INFO
    return out


@pytest.fixture
def qmp(lan, cleanup):
    q = cleanup.add(RawQmp(unix=lan.switch.qmp_path))
    q.negotiate()
    return q


@pytest.fixture
def learned(lan, cleanup):
    """Every host has spoken once: the switch learned each host's MAC on its port."""
    socks = {pid: cleanup.add(h.packet_socket()) for pid, h in lan.hosts.items()}
    for pid, h in lan.hosts.items():
        socks[pid].send(frame(h.mac))
    time.sleep(0.2)
    for s in socks.values():
        s.drain()
    return socks


def without_null(value):
    """`value` with every null member dropped (what QAPI would have left out)."""
    if isinstance(value, dict):
        return {k: without_null(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_null(v) for v in value]
    return value


def test_query_rx_filter_for_every_port_and_one(structs, cleanup):
    require_root()
    lan = Lan(cleanup, ids=("a", "b"), macaddr={"b": "52:54:00:AB:CD:0E"})
    q = cleanup.add(RawQmp(unix=lan.switch.qmp_path))
    q.negotiate()
    every = q.ok("query-rx-filter")
    assert [f["name"] for f in every] == ["a", "b"]
    for f in every:
        assert not conform(f, "RxFilterInfo", structs), conform(f, "RxFilterInfo", structs)
        # A port whose filter was never set takes every frame, and says so (QEMU's
        # broadcast-allowed is its inverted nobcast: false, as a NIC before its driver).
        assert f["promiscuous"] is True and f["broadcast-allowed"] is False
        assert MAC_RE.match(f["main-mac"]), f
        assert all(MAC_RE.match(m) for m in f["unicast-table"] + f["multicast-table"]), f
    # The configured macaddr, lower case as QEMU prints it.
    assert every[1]["main-mac"] == "52:54:00:ab:cd:0e"
    one = q.ok("query-rx-filter", {"name": "b"})
    assert one == [every[1]]
    q.ok("netdev_add", {"type": "tap", "id": "n"})
    assert [f["name"] for f in q.ok("query-rx-filter")] == ["a", "b", "n"]
    q.ok("netdev_del", {"id": "n"})
    assert [f["name"] for f in q.ok("query-rx-filter")] == ["a", "b"]


@pytest.mark.parametrize("name", ["nope", "vnet0", "B"])
def test_query_rx_filter_of_an_unknown_name(qmp, name):
    r = qmp.execute("query-rx-filter", {"name": name}, id="rx")
    assert r["id"] == "rx"
    assert_error(r, "GenericError", rf"^invalid net client name: {name}$")


def test_query_ports(qmp, lan, learned, structs):
    ports = qmp.ok("query-ports")
    assert [p["id"] for p in ports] == ["a", "b", "c"]
    errors = conform(without_null(ports), ["PortInfo"], structs)
    assert not errors, errors
    for p in ports:
        assert p["type"] == "tap" and p["ifname"] == lan[p["id"]].ifname
        assert p["options"]["ifname"] == lan[p["id"]].ifname
        assert p["link-up"] is True and p["connected"] is True
        assert set(p["drops"]) == set(structs["PortDrops"]), "every documented drop reason"
        assert p["rx-frames"] >= 1 and p["tx-frames"] >= 2  # its own hello, the others'
    assert len({p["index"] for p in ports}) == 3
    (b,) = qmp.ok("query-ports", {"name": "b"})
    assert b["id"] == "b"
    assert_error(qmp.execute("query-ports", {"name": "nope"}), "DeviceNotFound", r"^Device 'nope' not found$")


def test_query_mac_table_and_clear_mac_table(qmp, lan, learned, structs):
    table = qmp.ok("query-mac-table")
    assert not conform(table, ["MacTableEntry"], structs), conform(table, ["MacTableEntry"], structs)
    want = {mac_str(h.mac): pid for pid, h in lan.hosts.items()}
    assert {e["mac"]: e["port"] for e in table} == want
    assert all(e["domain"] == 0 and 0 <= e["age"] <= 5 for e in table), table
    assert qmp.ok("clear-mac-table", {"port": "a"}) == {"removed": 1}
    assert {e["port"] for e in qmp.ok("query-mac-table")} == {"b", "c"}
    assert_error(qmp.execute("clear-mac-table", {"port": "nope"}), "DeviceNotFound", r"^Device 'nope' not found$")
    assert qmp.ok("clear-mac-table") == {"removed": 2}
    assert qmp.ok("query-mac-table") == []
    assert qmp.ok("clear-mac-table") == {"removed": 0}
    # Forgotten: unicast to b's MAC floods to c as well until b speaks again.
    f = frame(lan["a"].mac, dst=lan["b"].mac)
    learned["a"].send(f)
    assert learned["c"].wait_for(has_tag(f[14:26]), 2), "unicast to a forgotten MAC was not flooded"
    assert learned["b"].wait_for(has_tag(f[14:26]), 2)


def test_query_workers_shows_an_idle_pool_without_leaks(qmp, learned, structs):
    workers = qmp.ok("query-workers")
    assert workers, "no worker"
    errors = conform(without_null(workers), ["WorkerInfo"], structs)
    assert not errors, errors
    assert sum(w["ports"] for w in workers) == 3
    for w in workers:
        assert w["buffers-free"] + w["reads-in-flight"] == w["buffers-total"], w
        assert w["writes-in-flight"] == 0 and w["frames-queued"] == 0, w
    # The ports (and so the frames received and the stations learned) may be spread over
    # several workers (--cores, RINGSWITCH_CORES).
    assert sum(w["rx-frames"] for w in workers) >= 3, workers
    assert sum(w["mac-learned"] for w in workers) >= 3, workers


def test_optional_members_are_left_out_not_null(qmp, learned, structs):
    """QAPI leaves an absent optional member out; `null` is not a value of 'str' or 'int'
    (ringswitch.json: PortInfo '*peer': 'str', WorkerInfo '*cpu': 'int')."""
    ports = qmp.ok("query-ports")
    workers = qmp.ok("query-workers")
    errors = conform(ports, ["PortInfo"], structs) + conform(workers, ["WorkerInfo"], structs)
    assert not errors, errors


def test_query_commands_lists_every_command(qmp):
    cmds = qmp.ok("query-commands")
    assert all(set(c) == {"name"} and isinstance(c["name"], str) for c in cmds), cmds
    names = [c["name"] for c in cmds]
    assert len(names) == len(set(names)), "listed twice"
    assert COMMANDS_USED <= set(names), COMMANDS_USED - set(names)
    # Each listed command exists: none answers CommandNotFound.
    for name in names:
        if name in ("quit", "qmp_capabilities"):
            continue
        r = qmp.execute(name, {"__probe__": 1})
        cls, _ = r["error"]["class"], r["error"]["desc"]
        assert cls != "CommandNotFound", f"{name} is listed but not found"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra,asked", [((), True), (("--no-rx-multishot",), False)], ids=["multishot", "reads"])
def test_query_workers_says_how_socket_ports_receive(cleanup, structs, extra, asked):
    """The io_uring features are reported at start and in query-workers; multishot receive
    (kernel 6.0+) unless --no-rx-multishot. Either way each socket port holds rx-depth
    receive buffers, counted as reads in flight, and none is missing."""
    require_switch()
    expected = asked and int(os.uname().release.split(".")[0]) >= 6
    p = [free_udp_port() for _ in range(4)]
    specs = [f"socket,id=u{i},udp=127.0.0.1:{p[2 * i]},localaddr=127.0.0.1:{p[2 * i + 1]}" for i in range(2)]
    sw = cleanup.add(Switch(specs, extra=extra))
    assert ("socket rx=multishot recv + buffer ring" in sw.stderr()) == expected, sw.stderr()
    q = cleanup.add(RawQmp(unix=sw.qmp_path))
    q.negotiate()
    workers = q.ok("query-workers")
    assert not conform(workers, ["WorkerInfo"], structs)
    # Two ports, on one worker or spread over several (RINGSWITCH_CORES).
    assert sum(w["reads-in-flight"] for w in workers) == 2 * 64, workers
    for w in workers:
        assert w["io-uring"]["recv-multishot"] is expected, w
        assert w["buffers-free"] + w["reads-in-flight"] == w["buffers-total"], w
