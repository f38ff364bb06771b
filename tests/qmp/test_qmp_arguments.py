"""Argument checking as QEMU's input visitor does it, for every command: a missing parameter,
a parameter of the wrong type and an unexpected parameter each give GenericError naming the
parameter, before the command looks at any device, and change nothing."""

import pytest

from qmprig import Lan, RawQmp, assert_error, is_rarp, link_exists, require_root, unique_name

MISSING = "Parameter '{}' is missing"
WRONG = "Invalid parameter type for '{}', expected: {}"
UNEXPECTED = "Parameter '{}' is unexpected"
ANNOUNCE = {"initial": 50, "max": 550, "rounds": 2, "step": 50}

CASES = [
    # set_link {name: str, up: bool}
    ("set_link", None, MISSING.format("name")),
    ("set_link", {"up": False}, MISSING.format("name")),
    ("set_link", {"name": "nope"}, MISSING.format("up")),
    ("set_link", {"name": 5, "up": False}, WRONG.format("name", "string")),
    ("set_link", {"name": "nope", "up": "yes"}, WRONG.format("up", "boolean")),
    ("set_link", {"name": "nope", "up": 0}, WRONG.format("up", "boolean")),
    ("set_link", {"name": "nope", "up": None}, WRONG.format("up", "boolean")),
    ("set_link", {"name": "nope", "up": False, "extra": 1}, UNEXPECTED.format("extra")),
    # netdev_del {id: str}
    ("netdev_del", None, MISSING.format("id")),
    ("netdev_del", {}, MISSING.format("id")),
    ("netdev_del", {"id": 1}, WRONG.format("id", "string")),
    ("netdev_del", {"id": ["a"]}, WRONG.format("id", "string")),
    ("netdev_del", {"id": "nope", "force": True}, UNEXPECTED.format("force")),
    # netdev_add: the flat Netdev union
    ("netdev_add", None, MISSING.format("type")),
    ("netdev_add", {"id": "n1"}, MISSING.format("type")),
    ("netdev_add", {"type": "tap"}, MISSING.format("id")),
    ("netdev_add", {"type": 1, "id": "n1"}, WRONG.format("type", "string")),
    ("netdev_add", {"type": "tap", "id": True}, WRONG.format("id", "string")),
    ("netdev_add", {"type": "tap", "id": "n1", "ifname": 7}, WRONG.format("ifname", "string")),
    ("netdev_add", {"type": "tap", "id": "n1", "frobnicate": 1}, UNEXPECTED.format("frobnicate")),
    ("netdev_add", {"type": "socket", "id": "n1", "listen": "127.0.0.1:1", "frobnicate": 1}, UNEXPECTED.format("frobnicate")),
    # query-rx-filter {name?: str}
    ("query-rx-filter", {"name": 1}, WRONG.format("name", "string")),
    ("query-rx-filter", {"name": None}, WRONG.format("name", "string")),
    ("query-rx-filter", {"nmae": "a"}, UNEXPECTED.format("nmae")),
    # announce-self (AnnounceParameters)
    ("announce-self", None, MISSING.format("initial")),
    ("announce-self", {"max": 550, "rounds": 2, "step": 50}, MISSING.format("initial")),
    ("announce-self", {"initial": 50, "rounds": 2, "step": 50}, MISSING.format("max")),
    ("announce-self", {"initial": 50, "max": 550, "step": 50}, MISSING.format("rounds")),
    ("announce-self", {"initial": 50, "max": 550, "rounds": 2}, MISSING.format("step")),
    ("announce-self", {**ANNOUNCE, "initial": "50"}, WRONG.format("initial", "integer")),
    ("announce-self", {**ANNOUNCE, "rounds": 1.5}, WRONG.format("rounds", "integer")),
    ("announce-self", {**ANNOUNCE, "step": True}, WRONG.format("step", "integer")),
    ("announce-self", {**ANNOUNCE, "interfaces": "a"}, "'interfaces'"),
    ("announce-self", {**ANNOUNCE, "interfaces": ["a", 1]}, "'interfaces'"),
    ("announce-self", {**ANNOUNCE, "id": 5}, WRONG.format("id", "string")),
    ("announce-self", {**ANNOUNCE, "extra": 1}, UNEXPECTED.format("extra")),
    # clear-mac-table {port?: str}
    ("clear-mac-table", {"port": 3}, WRONG.format("port", "string")),
    ("clear-mac-table", {"ports": "a"}, UNEXPECTED.format("ports")),
    # query-ports {name?: str}
    ("query-ports", {"name": 3}, WRONG.format("name", "string")),
    ("query-ports", {"id": "a"}, UNEXPECTED.format("id")),
    # commands without parameters
    ("query-version", {"x": 1}, UNEXPECTED.format("x")),
    ("query-commands", {"x": 1}, UNEXPECTED.format("x")),
    ("query-mac-table", {"port": "a"}, UNEXPECTED.format("port")),
    ("query-workers", {"id": 0}, UNEXPECTED.format("id")),
    ("quit", {"now": True}, UNEXPECTED.format("now")),
]


@pytest.fixture
def qmp(switch, cleanup):
    q = cleanup.add(RawQmp(unix=switch.qmp_path))
    q.negotiate()
    return q


@pytest.mark.parametrize("cmd, args, desc", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_argument_errors_name_the_parameter(qmp, switch, cmd, args, desc):
    r = qmp.execute(cmd, args, id=["arg", cmd])
    assert r["id"] == ["arg", cmd]
    # The class is exact and the description names the parameter; QEMU's own wording is
    # matched where the switch reproduces it.
    assert_error(r, "GenericError", desc.replace("(", r"\(").replace(")", r"\)"))
    # A refused `quit` does not stop anything.
    assert switch.running()
    assert "qemu" in qmp.ok("query-version")


def test_refused_commands_change_nothing(cleanup):
    """Argument errors are found before anything is done: no link change, no port, no tap,
    no announcement."""
    require_root()
    lan = Lan(cleanup, macaddr={"a": "52:54:00:00:aa:01"})
    b = cleanup.add(lan["b"].packet_socket())
    q = cleanup.add(RawQmp(unix=lan.switch.qmp_path))
    q.negotiate()
    assert_error(q.execute("set_link", {"name": "a", "up": False, "extra": 1}), "GenericError", "'extra'")
    assert q.ok("query-ports", {"name": "a"})[0]["link-up"] is True
    assert "NO-CARRIER" not in lan["a"].link_show()
    ifname = unique_name("t")
    r = q.execute("netdev_add", {"type": "tap", "id": "n9", "ifname": ifname, "frobnicate": 1})
    assert_error(r, "GenericError", "'frobnicate'")
    assert [p["id"] for p in q.ok("query-ports")] == ["a", "b", "c"]
    assert not link_exists(ifname), f"a refused netdev_add left tap {ifname}"
    assert_error(q.execute("netdev_del", {"id": "b", "extra": 1}), "GenericError", "'extra'")
    assert [p["id"] for p in q.ok("query-ports")] == ["a", "b", "c"]
    assert_error(q.execute("announce-self", {**ANNOUNCE, "bogus": 1}), "GenericError", "'bogus'")
    assert not b.collect(0.3, is_rarp), "a refused announce-self sent frames"
    # The same announcement without the bogus parameter does (the check above can fail).
    q.ok("announce-self", {**ANNOUNCE, "rounds": 1})
    assert b.wait_for(is_rarp, 2), "announce-self sent nothing to b"
