"""Where QMP listens: a unix socket only its owner may use, TCP on loopback only unless the
operator explicitly allows another address."""

import os
import stat
import subprocess

import pytest

from qmprig import BINARY, Netns, RawQmp, Switch, free_tcp_port, ip, require_root, require_switch


def test_unix_socket_has_mode_0600(switch):
    st = os.stat(switch.qmp_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)


def test_unix_socket_mode_does_not_follow_the_umask(cleanup):
    require_switch()
    old = os.umask(0)
    try:
        sw = cleanup.add(Switch())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(sw.qmp_path).st_mode) == 0o600


@pytest.mark.parametrize("host", ["0.0.0.0", "10.255.0.1", "[::]", "192.0.2.7"])
def test_tcp_refuses_a_non_loopback_address_without_the_flag(host):
    require_switch()
    out = subprocess.run(
        [str(BINARY), "-qmp", f"tcp:{host}:{free_tcp_port()},server=on"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert out.returncode == 1, f"exit {out.returncode}: {out.stderr}"
    assert "--qmp-allow-remote" in out.stderr, out.stderr
    assert "refusing to listen" in out.stderr, out.stderr
    assert "ringswitch: ready" not in out.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "[::1]"])
def test_tcp_on_loopback_needs_no_flag(cleanup, host):
    require_switch()
    if host == "[::1]" and not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 on this kernel")
    port = free_tcp_port()
    sw = cleanup.add(Switch(extra=["-qmp", f"tcp:{host}:{port},server=on"]))
    q = cleanup.add(RawQmp(tcp=(host.strip("[]"), port)))
    q.negotiate()
    assert "qemu" in q.ok("query-version")
    assert sw.running()


def test_tcp_with_the_flag_serves_a_non_loopback_address(cleanup):
    """Inside a private namespace, so nothing leaves it: a non-loopback address (on lo)."""
    require_root()
    ns = cleanup.add(Netns())
    ip("-n", ns.name, "addr", "add", "10.255.77.1/32", "dev", "lo")
    port = 4444
    sw = cleanup.add(Switch(ns=ns, extra=["-qmp", f"tcp:10.255.77.1:{port},server=on", "--qmp-allow-remote"]))
    assert any("QMP on tcp:10.255.77.1" in line for line in sw.lines), sw.stderr()

    def talk():
        q = RawQmp(tcp=("10.255.77.1", port))
        try:
            q.negotiate()
            return q.ok("query-version")
        finally:
            q.close()

    assert "qemu" in ns.run(talk)
