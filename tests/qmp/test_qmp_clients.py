"""Real QMP clients against the switch: qemu.qmp's asynchronous QMPClient and its legacy
synchronous QEMUMonitorProtocol, the qmp-shell it ships, several clients at once, clients
that vanish mid-command, events (to negotiated clients only) and `quit`."""

import asyncio
import json
import os
import socket
import subprocess
import time

import pytest

from qmprig import (
    QMP_SHELL,
    RawQmp,
    Switch,
    assert_error,
    legacy_client,
    require,
    require_qemu_qmp,
    require_switch,
    wait_until,
)

#: Every test here needs the real client library.
pytestmark = pytest.mark.usefixtures("needs_qemu_qmp")


@pytest.fixture
def needs_qemu_qmp():
    require_qemu_qmp()


def run_async(coro, timeout: float = 30):
    """Runs a coroutine to completion within `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def stream_netdev(tmp: str, nid: str) -> dict:
    """netdev_add arguments of a stream server on a unix socket: connecting to it raises
    NETDEV_STREAM_CONNECTED, without any network traffic."""
    return {"type": "stream", "id": nid, "server": True, "addr": {"type": "unix", "path": os.path.join(tmp, f"{nid}.sock")}}


def connect_unix(path: str, timeout: float = 5) -> socket.socket:
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# qemu.qmp


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_qmpclient_drives_the_switch(switch, transport):
    from qemu.qmp import ExecuteError, QMPClient

    address = switch.qmp_path if transport == "unix" else ("127.0.0.1", switch.tcp_port)

    async def scenario():
        client = QMPClient("rsq-test")
        await client.connect(address)
        try:
            # The greeting parsed by the library is the switch's.
            assert client.greeting is not None
            assert client.greeting.QMP.version["qemu"]["major"] == 7
            version = await client.execute("query-version")
            assert version["qemu"] == {"major": 7, "minor": 2, "micro": 0} or version["qemu"]["major"] == 7
            names = {c["name"] for c in await client.execute("query-commands")}
            assert {"netdev_add", "netdev_del", "set_link", "query-rx-filter", "announce-self"} <= names
            with pytest.raises(ExecuteError) as e:
                await client.execute("set_link", {"name": "nope", "up": False})
            assert e.value.error_class == "DeviceNotFound"
            assert "nope" in str(e.value)
            with pytest.raises(ExecuteError) as e:
                await client.execute("no-such-command")
            assert e.value.error_class == "CommandNotFound"
            with pytest.raises(ExecuteError) as e:
                await client.execute("set_link", {"name": "nope", "up": "x"})
            assert e.value.error_class == "GenericError" and "'up'" in str(e.value)
            # Commands issued concurrently on one connection are matched to their answers by id.
            many = await asyncio.gather(*(client.execute("query-version") for _ in range(50)))
            assert all(v == version for v in many)
            assert await client.execute("query-ports") == []
        finally:
            await client.disconnect()

    run_async(scenario())
    assert switch.running()


def test_qmpclient_receives_events_with_timestamps(switch):
    from qemu.qmp import QMPClient

    async def scenario():
        client = QMPClient("rsq-events")
        await client.connect(switch.qmp_path)
        try:
            with client.listener(("NETDEV_STREAM_CONNECTED", "NETDEV_STREAM_DISCONNECTED")) as listener:
                await client.execute("netdev_add", stream_netdev(switch.tmp, "s1"))
                before = time.time()
                peer = await asyncio.to_thread(connect_unix, os.path.join(switch.tmp, "s1.sock"))
                ev = await asyncio.wait_for(listener.get(), 5)
                after = time.time()
                assert ev["event"] == "NETDEV_STREAM_CONNECTED"
                assert ev["data"]["netdev-id"] == "s1"
                ts = ev["timestamp"]
                assert set(ts) == {"seconds", "microseconds"}
                assert type(ts["seconds"]) is int and type(ts["microseconds"]) is int
                assert 0 <= ts["microseconds"] < 1_000_000
                stamp = ts["seconds"] + ts["microseconds"] / 1e6
                assert before - 1 <= stamp <= after + 1, "the timestamp is wall-clock time"
                peer.close()
                ev = await asyncio.wait_for(listener.get(), 5)
                assert ev["event"] == "NETDEV_STREAM_DISCONNECTED" and ev["data"] == {"netdev-id": "s1"}
            await client.execute("netdev_del", {"id": "s1"})
        finally:
            await client.disconnect()

    run_async(scenario())


def test_legacy_sync_client(switch):
    from qemu.qmp import ExecuteError

    q = legacy_client(switch.qmp_path)
    try:
        assert q.cmd("query-version")["qemu"]["major"] == 7
        # cmd_obj sends the message as given (string ids only) and returns the whole reply.
        r = q.cmd_obj({"execute": "query-version", "id": "legacy-1"})
        assert r["id"] == "legacy-1" and "return" in r
        r = q.cmd_raw("set_link", {"name": "nope", "up": True})
        assert_error(r, "DeviceNotFound", "'nope'")
        with pytest.raises(ExecuteError) as e:
            q.cmd("netdev_del", id="nope")
        assert e.value.error_class == "DeviceNotFound"
        q.cmd("netdev_add", **stream_netdev(switch.tmp, "s2"))
        peer = connect_unix(os.path.join(switch.tmp, "s2.sock"))
        try:
            ev = q.pull_event(wait=5.0)
            assert ev["event"] == "NETDEV_STREAM_CONNECTED", ev
        finally:
            peer.close()
        q.cmd("netdev_del", id="s2")
        assert q.cmd("query-ports") == []
    finally:
        q.close()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_qmp_shell(switch, transport):
    require(QMP_SHELL.exists(), f"needs qmp-shell ({QMP_SHELL}, from qemu.qmp)")
    address = switch.qmp_path if transport == "unix" else f"127.0.0.1:{switch.tcp_port}"
    script = "\n".join(
        [
            "query-version",
            "query-commands",
            "set_link name=nope up=false",
            "query-rx-filter name=nope",
            # qmp-shell's dotted keys (addr.type=… addr.path=…) nest wrongly after the first
            # one (qemu.qmp 0.0.6), so the nested address goes in as JSON.
            f'netdev_add type=stream id=sh server=true addr={{"type":"unix","path":"{switch.tmp}/sh.sock"}}',
            "query-ports name=sh",
            "netdev_del id=sh",
            "query-ports",
            "",
        ]
    )
    out = subprocess.run([str(QMP_SHELL), address], input=script, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Welcome to the QMP low-level shell!", out.stdout
    assert lines[1] == "Connected to QEMU 7.2.0", out.stdout
    answers = [json.loads(line.split("(QEMU) ", 1)[1]) for line in lines if line.startswith("(QEMU) {")]
    assert len(answers) == 8, out.stdout
    version, commands, link, rxf, add, ports, delete, empty = answers
    assert version["return"]["qemu"]["major"] == 7
    assert {c["name"] for c in commands["return"]} >= {"set_link", "netdev_add"}
    assert_error(link, "DeviceNotFound", "'nope'")
    assert_error(rxf, "GenericError", "invalid net client name: nope")
    assert add == {"return": {}} and delete == {"return": {}}
    assert ports["return"][0]["id"] == "sh" and ports["return"][0]["type"] == "stream"
    assert empty == {"return": []}


def test_qmp_shell_pretty_and_verbose(switch):
    require(QMP_SHELL.exists(), f"needs qmp-shell ({QMP_SHELL}, from qemu.qmp)")
    out = subprocess.run(
        [str(QMP_SHELL), "-p", "-v", switch.qmp_path], input="query-workers\n", capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    # -v echoes the command; -p pretty-prints (several lines per message).
    assert '"execute": "query-workers"' in out.stdout, out.stdout
    assert '"buffers-total"' in out.stdout and out.stdout.count("\n") > 20, out.stdout


# ---------------------------------------------------------------------------------------------
# several clients


def test_several_clients_at_once(switch, cleanup):
    """Eight raw clients on unix and TCP and four qemu.qmp clients, interleaved: each gets its
    own answers, in order, with its own ids."""
    from qemu.qmp import QMPClient

    raws = []
    for i in range(8):
        if i % 2:
            q = cleanup.add(RawQmp(tcp=("127.0.0.1", switch.tcp_port)))
        else:
            q = cleanup.add(RawQmp(unix=switch.qmp_path))
        raws.append(q)
    for i, q in enumerate(raws):
        # Half negotiate, half ask first: sessions are independent.
        if i % 2:
            assert_error(q.execute("query-version"), "CommandNotFound", "negotiation")
        q.negotiate()
    for rnd in range(20):
        for i, q in enumerate(raws):
            q.send(json.dumps({"execute": "query-version", "id": [i, rnd]}))
    for i, q in enumerate(raws):
        assert [q.reply()["id"] for _ in range(20)] == [[i, rnd] for rnd in range(20)]

    async def async_clients():
        clients = [QMPClient(f"rsq-{i}") for i in range(4)]
        try:
            for c in clients:
                await c.connect(switch.qmp_path)

            async def work(i, c):
                for j in range(25):
                    await c.execute("netdev_add", stream_netdev(switch.tmp, f"c{i}x{j}"))
                    ports = {p["id"] for p in await c.execute("query-ports")}
                    assert f"c{i}x{j}" in ports
                    await c.execute("netdev_del", {"id": f"c{i}x{j}"})

            await asyncio.gather(*(work(i, c) for i, c in enumerate(clients)))
        finally:
            for c in clients:
                await c.disconnect()

    run_async(async_clients(), 60)
    for q in raws:
        assert q.ok("query-ports") == []


def test_client_disconnecting_mid_command_harms_nothing(switch, cleanup):
    watcher = cleanup.add(RawQmp(unix=switch.qmp_path))
    watcher.negotiate()
    fds_before = switch.fd_count()
    cut_offs = [
        b"",  # before reading the greeting
        b'{"execute": "qmp_capabilities"}{"execute": "query-ver',  # half a command
        b'{"execute": "qmp_capabilities"}{"execute": "netdev_add", "arguments": {"type": "stream", ',
        b'{"execute": "qmp_capabilities"}{"execute": "query-commands"}',  # never reads the answer
        b'{"execute": "qmp_capabilities"}' + b'{"execute": "query-workers"}' * 2000,  # lots unread
        b'{"execute": "qmp_capabilities"}["',  # inside a string
        b'{"execute": "qmp_capabilities"}' + b"[" * 5000,  # deep, unfinished
    ]
    for rnd in range(10):
        for data in cut_offs:
            for family, where in ((socket.AF_UNIX, switch.qmp_path), (socket.AF_INET, ("127.0.0.1", switch.tcp_port))):
                s = socket.socket(family, socket.SOCK_STREAM)
                try:
                    s.settimeout(5)
                    s.connect(where)
                    if data:
                        s.sendall(data)
                    if rnd % 2:
                        # An abortive close (RST on TCP) as well as an orderly one.
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                finally:
                    s.close()
    # The switch notices every hang-up and releases each connection's descriptor. (While a
    # burst of dead connections is not yet reaped, the client limit may refuse a new one.)
    wait_until(lambda: switch.fd_count() == fds_before, 5, what=f"fd count back to {fds_before}")
    # A whole command whose client hangs up before its answer still takes effect, once.
    gone = RawQmp(unix=switch.qmp_path)
    gone.negotiate()
    gone.send(json.dumps({"execute": "netdev_add", "arguments": stream_netdev(switch.tmp, "gone")}))
    gone.close()
    ports = {}
    for _ in range(100):
        ports = {p["id"] for p in watcher.ok("query-ports")}
        if "gone" in ports:
            break
        time.sleep(0.02)
    assert ports == {"gone"}, ports
    assert watcher.ok("netdev_del", {"id": "gone"}) == {}
    assert switch.running()
    assert watcher.execute("query-version", id="still")["id"] == "still"
    wait_until(lambda: switch.fd_count() == fds_before, 5, what=f"fd count back to {fds_before}")


def test_events_go_to_every_negotiated_client_only(switch, cleanup):
    from qemu.qmp import QMPClient

    a = cleanup.add(RawQmp(unix=switch.qmp_path))
    b = cleanup.add(RawQmp(tcp=("127.0.0.1", switch.tcp_port)))
    early = cleanup.add(RawQmp(unix=switch.qmp_path))  # greeting read, not negotiated
    a.negotiate()
    b.negotiate()

    async def with_library_client():
        lib = QMPClient("rsq-ev")
        await lib.connect(switch.qmp_path)
        try:
            with lib.listener("NETDEV_STREAM_CONNECTED") as listener:
                a.ok("netdev_add", stream_netdev(switch.tmp, "ev"))
                peer = await asyncio.to_thread(connect_unix, os.path.join(switch.tmp, "ev.sock"))
                ev = await asyncio.wait_for(listener.get(), 5)
                peer.close()
                return dict(ev)
        finally:
            await lib.disconnect()

    lib_event = run_async(with_library_client())
    got_a = a.read(5)
    got_b = b.read(5)
    for ev in (got_a, got_b, lib_event):
        assert ev["event"] == "NETDEV_STREAM_CONNECTED" and ev["data"]["netdev-id"] == "ev", ev
        assert set(ev) == {"event", "data", "timestamp"}
        assert set(ev["timestamp"]) == {"seconds", "microseconds"}
    assert got_a == got_b, "every client gets the same event"
    assert got_a["timestamp"] == lib_event["timestamp"]
    # The DISCONNECTED event (the peer closed) reaches both raw clients too.
    assert a.read(5)["event"] == "NETDEV_STREAM_DISCONNECTED"
    assert b.read(5)["event"] == "NETDEV_STREAM_DISCONNECTED"
    # The client that never negotiated got nothing, and gets nothing old once it does.
    early.nothing(0.3)
    early.negotiate()
    early.nothing(0.3)
    # From now on it gets events like the others.
    peer = connect_unix(os.path.join(switch.tmp, "ev.sock"))
    peer.close()
    for q in (a, b, early):
        assert q.read(5)["event"] == "NETDEV_STREAM_CONNECTED"


def test_quit_sends_shutdown_then_return_then_closes(cleanup):
    require_switch()
    sw = cleanup.add(Switch(tcp=True))
    other = cleanup.add(RawQmp(tcp=("127.0.0.1", sw.tcp_port)))
    other.negotiate()
    early = cleanup.add(RawQmp(unix=sw.qmp_path))
    q = cleanup.add(RawQmp(unix=sw.qmp_path))
    q.negotiate()
    q.send('{"execute": "quit", "id": "bye"}')
    shutdown = q.read(5)
    assert shutdown["event"] == "SHUTDOWN", shutdown
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert set(shutdown["timestamp"]) == {"seconds", "microseconds"}
    assert q.read(5) == {"return": {}, "id": "bye"}
    assert q.closed_by_peer(5), "the switch did not close the connection after quit"
    assert sw.wait_exit(10) == 0, sw.stderr()
    # The other negotiated client saw SHUTDOWN too; the un-negotiated one did not.
    assert other.closed_by_peer(5), "a client of a switch that quit stays connected"
    assert any(b'"SHUTDOWN"' in x for x in other.raw_lines), other.raw_lines
    assert early.closed_by_peer(5)
    assert not any(b"SHUTDOWN" in x for x in early.raw_lines), early.raw_lines
    assert not os.path.exists(sw.qmp_path), "the unix socket was left behind"


def test_quit_through_qemu_qmp(cleanup):
    """qemu.qmp sees the answer to quit (or the hang-up right after it) as QEMU's."""
    from qemu.qmp import QMPClient
    from qemu.qmp.qmp_client import ExecInterruptedError

    require_switch()
    sw = cleanup.add(Switch())

    async def scenario():
        client = QMPClient("rsq-quit")
        await client.connect(sw.qmp_path)
        try:
            with client.listener("SHUTDOWN") as listener:
                try:
                    assert await client.execute("quit") == {}
                except ExecInterruptedError:
                    pass  # the library may see the hang-up first, as with QEMU
                ev = await asyncio.wait_for(listener.get(), 5)
                assert ev["data"]["reason"] == "host-qmp-quit"
        finally:
            try:
                await client.disconnect()
            except EOFError:
                pass  # the library reports the server's hang-up after quit, as with QEMU

    run_async(scenario())
    assert sw.wait_exit(10) == 0
