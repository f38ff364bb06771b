"""A real QEMU 7.2 guest (TCG, the busybox initramfs of guest_rig.py) on a `stream` port of
ringswitch uses the switch's `user` port (libslirp) as a namespace station does, through the
same user port and at the same time as one: it takes its address by DHCP (busybox udhcpc in
the guest), sends a file to a TCP server on the loopback of ringswitch's namespace through NAT
(10.0.2.2) and gets the digest back, and is reached from that loopback through a `hostfwd`
rule added over QMP (a file sent in, its digest checked in the guest).

"The host" is ringswitch's namespace, as in test_user.py."""

from __future__ import annotations

import hashlib
import os
import re
import socket

from guest_rig import Guest, SockDir, timings_note
from portlib import Netns, Switch, ip, require_root, unique_name
from test_user import UDHCPC_SCRIPT, require_busybox, send_and_check, serve_once

SIZE = 1 << 20


def test_qemu_guest_on_a_stream_port_uses_the_user_port(cleanup, tmp_path):
    require_root()
    bb = require_busybox()
    d = cleanup.add(SockDir())
    sw = cleanup.add(Netns())
    cl = cleanup.add(Netns())
    tap = unique_name("rst")
    sock = d / "g.sock"
    s = cleanup.add(
        Switch(
            [
                f"tap,id=t,ifname={tap}",
                f"stream,id=g,server=on,addr.type=unix,addr.path={sock}",
                "user,id=u",
            ],
            ns=sw,
        )
    )
    g = cleanup.add(
        Guest("g", None, "", "52:54:00:12:34:77", netdev=f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}")
    )

    # A namespace station on the tap takes the first lease while the guest boots.
    ip("-n", sw.name, "link", "set", tap, "netns", cl.name)
    ip("-n", cl.name, "link", "set", tap, "up")
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    out = cl.exec(bb, "udhcpc", "-i", tap, "-s", script, "-q", "-n", "-t", "5", "-T", "1", timeout=30)
    assert out.returncode == 0 and "lease 10.0.2.15/" in out.stdout, out.stdout + out.stderr

    timings_note("boot", g.wait_ready())
    # DHCP in the guest: busybox udhcpc with the same script.
    g.check(f"cat > /tmp/dh.sh <<'EOF'\n{UDHCPC_SCRIPT}EOF\nchmod +x /tmp/dh.sh")
    lease = g.check("udhcpc -i eth0 -s /tmp/dh.sh -q -n -t 10 -T 2", timeout=60)
    m = re.search(r"^lease (10\.0\.2\.\d+)/(\S+) router 10\.0\.2\.2 dns 10\.0\.2\.3", lease, re.M)
    assert m, lease
    guest_ip = m.group(1)
    assert guest_ip != "10.0.2.15", f"the guest got the station's lease: {lease}"
    assert f"inet {guest_ip}/24" in g.check("ip -4 addr show dev eth0")

    # NAT: the guest sends 1 MiB to a server on the host's loopback through 10.0.2.2; the
    # server answers with its digest.
    t, r = serve_once(sw, "127.0.0.1", 8000)
    out = g.check(
        f"head -c {SIZE} /dev/urandom > /tmp/f && sha256sum /tmp/f && nc 10.0.2.2 8000 < /tmp/f; echo",
        timeout=90,
    )
    t.join(30)
    assert "error" not in r, r
    sent = out.split()[0]
    assert r["peer"][0] == "127.0.0.1", r
    assert r["digest"] == sent and out.split()[-1] == sent, (out, r)

    # The namespace station still uses the same port alongside.
    t, r = serve_once(sw, "127.0.0.1", 8001)
    send_and_check(cl, "10.0.2.2", 8001, size=65536)
    t.join(15)

    # hostfwd over QMP to the guest's address: 1 MiB in from the host's loopback.
    assert s.qmp("hostfwd-add", {"netdev": "u", "rule": f"tcp:127.0.0.1:2223-{guest_ip}:23"}) == {}
    g.check(
        "nc -l -p 23 > /tmp/got & i=0; until netstat -ltn | grep -q ':23 '; do i=$((i+1)); "
        "[ $i -ge 100 ] && exit 1; sleep 0.1; done"
    )
    data = os.urandom(SIZE)

    def push():
        c = socket.create_connection(("127.0.0.1", 2223), timeout=10)
        c.settimeout(60)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        while c.recv(1024):
            pass
        c.close()

    sw.run(push)
    got = g.check("wait; sha256sum /tmp/got", timeout=60)
    assert got.split()[0] == hashlib.sha256(data).hexdigest(), got
    usernet = s.qmp("query-usernet", {"netdev": "u"})[0]
    assert "HOST_FORWARD" in usernet["connections"], usernet
    # Both stations' frames went through the one user port.
    assert s.port("g")["rx-frames"] > SIZE // 1500 and s.port("t")["rx-frames"] > 40, s.qmp("query-ports")
    s.stop()
