"""The QMP protocol as QEMU 7.2 speaks it, over a raw unix socket and loopback TCP: greeting,
negotiation, id echo, envelope errors, malformed JSON, the JSON stream's framing, and input
too large or too deep (refused without the switch growing)."""

import json

import pytest

from qmprig import RawQmp, assert_error, error_of

NEGOTIATE_FIRST = r"^Expecting capabilities negotiation with 'qmp_capabilities'$"
#: How much VmRSS may grow (kB) while the switch refuses huge or deep input: a 1 MiB input
#: buffer plus slack, far below what holding the input (or a parse tree of it) would take.
RSS_SLACK_KB = 8 * 1024


@pytest.fixture(params=["unix", "tcp"])
def connect(request, switch, cleanup):
    """Opens a raw QMP connection over the parametrized transport (greeting read)."""

    def open_one(greeting=True):
        if request.param == "unix":
            return cleanup.add(RawQmp(unix=switch.qmp_path, greeting=greeting))
        return cleanup.add(RawQmp(tcp=("127.0.0.1", switch.tcp_port), greeting=greeting))

    return open_one


def negotiated(connect):
    q = connect()
    q.negotiate()
    return q


def test_greeting_has_qemus_shape(connect):
    q = connect(greeting=False)
    line = q.read_line(5)
    assert line is not None, "no greeting within 5 s: the server must talk first"
    assert q.buf == b"", f"more than one message before any command: {q.buf!r}"
    g = json.loads(line)
    assert list(g) == ["QMP"] and set(g["QMP"]) == {"version", "capabilities"}, g
    v = g["QMP"]["version"]
    assert set(v) == {"qemu", "package"} and set(v["qemu"]) == {"major", "minor", "micro"}, v
    assert all(type(v["qemu"][k]) is int for k in ("major", "minor", "micro")), v
    assert isinstance(v["package"], str) and "ringswitch" in v["package"], v
    assert isinstance(g["QMP"]["capabilities"], list), g
    assert all(isinstance(c, str) for c in g["QMP"]["capabilities"]), g
    # The greeting's version is query-version's.
    q.negotiate()
    assert q.ok("query-version") == v


def test_every_message_is_one_compact_crlf_line(connect):
    q = negotiated(connect)
    q.send('{"execute": "query-commands"}')
    line = q.read_line()
    assert line is not None and q.buf == b"", "one answer, ending in CR LF"
    assert b"\n" not in line and b"\r" not in line


@pytest.mark.parametrize("cmd", ["query-version", "query-commands", "quit", "set_link", "netdev_del", "nonexistent"])
def test_commands_before_negotiation_get_command_not_found(connect, switch, cmd):
    q = connect()
    r = q.execute(cmd, id="early")
    assert r["id"] == "early", r
    assert_error(r, "CommandNotFound", NEGOTIATE_FIRST)
    # Nothing happened: the switch still runs and the session can still negotiate.
    assert switch.running()
    q.negotiate()
    assert "qemu" in q.ok("query-version")


def test_second_negotiation_is_refused(connect):
    q = negotiated(connect)
    r = q.execute("qmp_capabilities", id=2)
    assert r["id"] == 2
    assert_error(r, "CommandNotFound", r"^Capabilities negotiation is already complete, command ignored$")
    r = q.execute("qmp_capabilities", {"enable": []})
    assert_error(r, "CommandNotFound", "already complete")
    assert "qemu" in q.ok("query-version")


@pytest.mark.parametrize("caps", [["bogus-cap"], ["oob"], ["bogus-cap", "oob"]])
def test_unknown_capability_is_refused_and_negotiation_still_possible(connect, caps):
    q = connect()
    offered = q.greeting["QMP"]["capabilities"]
    if all(c in offered for c in caps):
        pytest.skip(f"the greeting offers {caps}")
    r = q.execute("qmp_capabilities", {"enable": caps})
    bad = next(c for c in caps if c not in offered)
    assert_error(r, "GenericError", f"does not accept value '{bad}'")
    # A refused negotiation leaves the session un-negotiated.
    assert_error(q.execute("query-version"), "CommandNotFound", NEGOTIATE_FIRST)
    q.negotiate()


def test_negotiation_argument_errors(connect):
    q = connect()
    assert_error(q.execute("qmp_capabilities", {"enable": "oob"}), "GenericError", "'enable'")
    assert_error(q.execute("qmp_capabilities", {"enable": [1]}), "GenericError", "'enable'")
    assert_error(q.execute("qmp_capabilities", {"frob": 1}), "GenericError", r"Parameter 'frob' is unexpected")
    q.negotiate()


ID_VALUES = ["s", "", 0, 7, -3, 2**53, 1.5, -0.25, True, False, None, [], [1, {"a": 2}], {}, {"x": [None, "y"]}]


@pytest.mark.parametrize("value", ID_VALUES, ids=lambda v: json.dumps(v))
def test_id_is_echoed_unchanged_for_every_json_type(connect, value):
    q = connect()
    # An error before negotiation, the negotiation itself, a success, an unknown command,
    # an argument error, and an envelope error: each answer carries the id as sent.
    r = q.execute("query-version", id=value)
    assert "error" in r and r["id"] == value and type(r["id"]) is type(value), r
    r = q.execute("qmp_capabilities", id=value)
    assert r == {"return": {}, "id": value}, r
    r = q.execute("query-version", id=value)
    assert set(r) == {"return", "id"} and r["id"] == value and type(r["id"]) is type(value), r
    r = q.execute("no-such-command", id=value)
    assert r["id"] == value
    assert_error(r, "CommandNotFound", "no-such-command")
    r = q.execute("set_link", {"name": "x"}, id=value)
    assert r["id"] == value
    assert_error(r, "GenericError", "'up'")
    q.send(json.dumps({"id": value, "arguments": {}}))
    r = q.reply()
    assert r["id"] == value
    assert_error(r, "GenericError", "lacks member 'execute'")


def test_answers_without_id_have_no_id(connect):
    q = negotiated(connect)
    assert set(q.execute("query-version")) == {"return"}
    assert set(q.execute("nope")) == {"error"}


def test_unknown_command(connect):
    q = negotiated(connect)
    r = q.execute("no-such-command", id="u")
    assert_error(r, "CommandNotFound", r"^The command no-such-command has not been found$")
    # QEMU's names are exact: no case folding, no '_'/'-' aliasing.
    assert_error(q.execute("Query-Version"), "CommandNotFound", "Query-Version")
    assert_error(q.execute("query_version"), "CommandNotFound", "query_version")


@pytest.mark.parametrize(
    "raw, desc",
    [
        ("[1, 2, 3]", r"^QMP input must be a JSON object$"),
        ('"query-version"', r"^QMP input must be a JSON object$"),
        ("42 ", r"^QMP input must be a JSON object$"),
        ("true ", r"^QMP input must be a JSON object$"),
        ("null ", r"^QMP input must be a JSON object$"),
        ('{"exec": "query-version"}', r"^QMP input member 'exec' is unexpected$"),
        ('{"execute": "query-version", "extra": 1}', r"^QMP input member 'extra' is unexpected$"),
        ('{"execute": "query-version", "arguments": [1]}', r"^QMP input member 'arguments' must be an object$"),
        ('{"execute": "query-version", "arguments": "x"}', r"^QMP input member 'arguments' must be an object$"),
        ('{"execute": "query-version", "arguments": null}', r"^QMP input member 'arguments' must be an object$"),
        ('{"execute": 42}', r"^QMP input member 'execute' must be a string$"),
        ('{"execute": ["query-version"]}', r"^QMP input member 'execute' must be a string$"),
        ("{}", r"^QMP input lacks member 'execute'$"),
        ('{"arguments": {}}', r"^QMP input lacks member 'execute'$"),
    ],
)
def test_envelope_errors_keep_the_connection_usable(connect, raw, desc):
    q = negotiated(connect)
    q.send(raw)
    assert_error(q.reply(), "GenericError", desc)
    assert q.execute("query-version", id="after")["id"] == "after"


@pytest.mark.parametrize(
    "garbage, errors",
    [
        ("garbage", 1),  # an invalid keyword
        ("@", 1),  # a character no JSON token starts with
        ('{"execute": "query-version"}}', 1),  # one answer, then a stray '}'
        ("]]", 2),  # two stray ']'
        ('{"execute": query-version}', None),  # a bare word inside an object
        ('{"execute": "query-version",}', None),  # trailing comma
        ('{"execute" "query-version"}', None),  # missing colon
        ('"\\q"', None),  # invalid escape
        ('"a\x01b"', None),  # control character in a string
        (b"\xff\xfe", None),  # not UTF-8
    ],
    ids=lambda v: repr(v)[:30] if not isinstance(v, int | None) else str(v),
)
def test_malformed_json_is_answered_and_the_connection_stays_usable(connect, switch, garbage, errors):
    q = negotiated(connect)
    q.send(garbage)
    # Each bad token gets a GenericError; a good value in the same write is still answered.
    q.send('{"execute": "query-version", "id": "after"}')
    replies = []
    for _ in range(50):
        r = q.reply()
        if r.get("id") == "after":
            break
        replies.append(r)
    else:
        raise AssertionError("no answer to the command after the garbage")
    assert "return" in r, r
    bad = [x for x in replies if "error" in x]
    assert bad, f"no error for {garbage!r}: {replies}"
    for x in bad:
        c, d = error_of(x)
        assert c == "GenericError", x
        assert "JSON parse error" in d or "QMP input" in d, x
    if errors is not None:
        assert len(bad) == errors, replies
    assert switch.running()


def test_several_values_in_one_write_are_answered_in_order(connect):
    q = negotiated(connect)
    batch = "".join(json.dumps({"execute": "query-version", "id": i}) for i in range(20))
    q.send(batch + '[1]{"execute": "nope", "id": "last"}')
    ids = [q.reply()["id"] for _ in range(20)]
    assert ids == list(range(20))
    assert_error(q.reply(), "GenericError", "must be a JSON object")
    assert q.reply()["id"] == "last"
    # Newlines and other whitespace between values are optional and harmless.
    q.send(' \n\t{"execute": "query-version", "id": 1}\r\n\n{"execute": "query-version", "id": 2}  ')
    assert [q.reply()["id"], q.reply()["id"]] == [1, 2]


def test_a_value_split_across_writes_waits_for_the_rest(connect):
    q = negotiated(connect)
    msg = json.dumps({"execute": "set_link", "arguments": {"name": "nope", "up": False}, "id": "split"})
    for ch in msg[:-1]:
        q.send(ch)
    q.nothing(0.3)
    q.send(msg[-1])
    r = q.reply()
    assert r["id"] == "split"
    assert_error(r, "DeviceNotFound", "'nope'")
    # A split right inside a string, a number and an escape.
    for parts in (['{"execute": "query-ver', 'sion", "id": 12', '345}'], ['{"execute": "query-version", "id": "a\\', 'u0041"}']):
        for i, p in enumerate(parts):
            q.send(p)
            if i < len(parts) - 1:
                q.nothing(0.05)
        r = q.reply()
        assert r["id"] in (12345, "aA"), r


def test_single_quoted_strings_are_accepted_as_in_qemu(connect):
    q = negotiated(connect)
    q.send("{'execute': 'query-version', 'id': 'sq'}")
    r = q.reply()
    assert r["id"] == "sq" and "return" in r, r
    q.send("{'execute': 'set_link', 'arguments': {'name': 'nope', 'up': true}, 'id': \"it's\"}")
    r = q.reply()
    assert r["id"] == "it's"
    assert_error(r, "DeviceNotFound", "nope")


def _rss_kb(switch) -> int:
    return switch.status("VmRSS")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: b'{"execute": "query-version", "id": "' + b"x" * (2 << 20) + b'"}', id="2MiB-string"),
        pytest.param(lambda: b"[" + b"1," * (1 << 20) + b"1]", id="2MiB-array"),
        pytest.param(lambda: b'{"execute": "query-version", "arguments": {"a": "' + b"y" * (64 << 20) + b'"}}', id="64MiB-string"),
    ],
)
def test_input_over_the_limit_is_refused_without_growing(connect, switch, make):
    q = negotiated(connect)
    data = make()
    before = _rss_kb(switch)
    q.send(data)
    r = q.reply(30)
    c, d = error_of(r)
    assert c == "GenericError" and ("larger" in d or "too" in d or "limit" in d), r
    assert _rss_kb(switch) - before < RSS_SLACK_KB, f"VmRSS grew from {before} to {_rss_kb(switch)} kB"
    assert switch.status("VmHWM") - before < RSS_SLACK_KB, "the peak RSS shows the input was held"
    assert q.execute("query-version", id="after")["id"] == "after"
    q.nothing(0.2)


def test_input_just_under_the_limit_is_served(connect):
    q = negotiated(connect)
    # Well within 1 MiB: a long id is echoed back whole.
    long_id = "z" * (512 << 10)
    r = q.execute("query-version", id=long_id)
    assert r.get("id") == long_id and "return" in r


@pytest.mark.parametrize("depth", [65, 1000, 200000])
@pytest.mark.parametrize("kind", ["array", "object"])
def test_deep_nesting_is_refused_without_growing(connect, switch, depth, kind):
    q = negotiated(connect)
    if kind == "array":
        data = b"[" * depth + b"]" * depth
    else:
        data = b'{"a":' * depth + b"1" + b"}" * depth
    before = _rss_kb(switch)
    q.send(data)
    r = q.reply(30)
    assert_error(r, "GenericError", "nesting|depth|deep")
    q.nothing(0.2)  # one error for the whole value, not one per level
    assert _rss_kb(switch) - before < RSS_SLACK_KB
    assert q.execute("query-version", id="after")["id"] == "after"


def test_moderate_nesting_is_parsed(connect):
    q = negotiated(connect)
    deep_id = json.loads("[" * 30 + "]" * 30)
    assert q.execute("query-version", id=deep_id)["id"] == deep_id
