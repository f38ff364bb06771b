"""Real QEMU guests on ringswitch vhost-user ports: a Linux kernel (the host's, Debian package
linux-image-amd64) and a busybox initramfs (tests/ports/guest/build-initramfs.sh, cached under
target/guest), booted with TCG, their virtio-net-pci device backed by a ringswitch vhost-user
port. The guest's serial console is QEMU's stdio: the test writes command lines into it and
reads until the marker line it asked for (tests/ports/guest/init serves a shell there, with no
echo and no prompt).

QEMU 7.2 under TCG segfaults in `vhost_net_start` when the guest's driver starts a vhost-user
virtio-net-pci device with MSI-X (`virtio_pci_set_guest_notifiers` → `msix_set_vector_notifiers`
→ `virtio_pci_vector_unmask`: vhost-user turns `use_guest_notifier_mask` off, so QEMU takes
the KVM irqfd branch, and without KVM its `vector_irqfd` table is NULL). That happens before
QEMU sends the backend anything about the rings, so no backend can avoid it: the guests here
use `vectors=0` (INTx; QEMU's main loop relays the backend's call eventfd to the guest).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from portlib import QEMU, ROOT, require, require_qemu

GUEST_DIR = ROOT / "target" / "guest"
BUILD = Path(__file__).resolve().parent / "guest" / "build-initramfs.sh"
BOOT_TIMEOUT = 90  # TCG on a busy 2-core machine; a boot takes ~10-20 s
MEM_MB = 256

# virtio-net-pci properties that switch every offload off (and mergeable buffers with them).
NO_OFFLOADS = (
    "csum=off,guest_csum=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,"
    "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off,mrg_rxbuf=off"
)

_image_lock = threading.Lock()


def guest_image() -> tuple[Path, Path]:
    """The kernel and initramfs, built (or found up to date) once per run."""
    require_qemu()
    require(Path("/bin/busybox").exists(), "needs /bin/busybox (Debian package busybox-static)")
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    require(bool(kernels), "needs a kernel in /boot (Debian package linux-image-amd64)")
    with _image_lock:
        out = subprocess.run(
            ["bash", str(BUILD), str(GUEST_DIR)], capture_output=True, text=True, timeout=300, check=False
        )
    require(out.returncode == 0, f"could not build the guest initramfs: {out.stderr.strip()}")
    return GUEST_DIR / "vmlinuz", GUEST_DIR / "initramfs.cpio.gz"


class Guest:
    """One QEMU guest whose NIC is a vhost-user virtio-net-pci device on `sock`.

    `server`: QEMU listens on `sock` (ringswitch's port connects); otherwise QEMU connects,
    retrying every `reconnect` seconds when given (so it finds the port again after a
    `netdev_del`/`netdev_add`). `offloads=False` switches the device's offloads off; `msix=True`
    leaves the device its MSI-X vectors (QEMU 7.2 under TCG crashes then: see above).
    `vde=DIR`: the NIC is QEMU's `-netdev vde,sock=DIR` instead (libvdeplug; `sock` unused).
    `netdev=SPEC`: the NIC is QEMU's `-netdev SPEC` instead (e.g. `stream,…`; its id must be
    n0; `sock` unused). `addr=""` leaves eth0 without an address (up only). `qmp=PATH`: QEMU
    serves QMP on that unix socket, and the NIC gets the id `nic0` (for query-rx-filter)."""

    def __init__(self, name: str, sock: Path | None, addr: str, mac: str, *, server: bool = False,
                 reconnect: int | None = None, offloads: bool = True, msix: bool = False,
                 vde: Path | None = None, queues: int = 1, netdev: str | None = None,
                 qmp: Path | None = None):  # fmt: skip
        self.name = name
        kernel, initrd = guest_image()
        chardev = f"socket,id=c0,path={sock}"
        if server:
            chardev += ",server=on,wait=off"
        elif reconnect:
            chardev += f",reconnect={reconnect}"
        device = f"virtio-net-pci,netdev=n0,mac={mac}" + ("" if msix else ",vectors=0")
        if queues > 1:
            device += ",mq=on"
        if not offloads:
            device += "," + NO_OFFLOADS
        if qmp is not None:
            device += ",id=nic0"
        self.argv = [
            QEMU, "-accel", "tcg", "-m", str(MEM_MB), "-smp", str(queues),
            "-object", f"memory-backend-memfd,id=mem,size={MEM_MB}M,share=on", "-numa", "node,memdev=mem",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet panic=-1 rs.ip={addr}",
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-device", device,
        ]  # fmt: skip
        if qmp is not None:
            self.argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
        if netdev is not None:
            self.argv += ["-netdev", netdev]
        elif vde is None:
            self.argv += ["-chardev", chardev, "-netdev", f"vhost-user,id=n0,chardev=c0,queues={queues}"]
        else:
            self.argv += ["-netdev", f"vde,id=n0,sock={vde}"]
        self.lines: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._seq = 0
        self.proc = None
        self.start()

    def __repr__(self):
        return f"Guest({self.name})"

    def start(self) -> None:
        """Starts QEMU (again); `wait_ready` waits for the guest."""
        self.close()
        with self._cond:
            self.lines, self.err = [], []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        proc = self.proc
        for stream, sink, label in ((proc.stdout, self.lines, None), (proc.stderr, self.err, "qemu")):
            threading.Thread(target=self._read, args=(stream, sink, label), daemon=True).start()

    def _read(self, stream, sink, label):
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            if label:
                print(f"[{label} {self.name}] {line}", flush=True)
            with self._cond:
                sink.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred()
                if v is not None:
                    return v
                if not self.running():
                    # (what it printed last may still be on its way)
                    self._cond.wait(0.5)
                    v = pred()
                    if v is not None:
                        return v
                    raise AssertionError(f"{self.name}: QEMU exited ({self.proc.returncode}) before {what}\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no {what} in {timeout}s\n{self.log()}")
                self._cond.wait(min(left, 0.5))

    def log(self) -> str:
        return "console:\n  " + "\n  ".join(self.lines[-40:]) + "\nQEMU stderr:\n  " + "\n  ".join(self.err[-20:])

    def wait_ready(self, boots: int = 1, timeout: float = BOOT_TIMEOUT) -> float:
        """Waits until the guest has come up `boots` times since QEMU started; the seconds since
        QEMU started."""

        def ready():
            n = sum(1 for line in self.lines if line.strip() == "RS-GUEST-READY")
            failed = [line for line in self.lines if line.startswith("RS-GUEST-FAILED")]
            if failed:
                raise AssertionError(f"{self.name}: {failed[0]}\n{self.log()}")
            return True if n >= boots else None

        self._wait(ready, timeout, f"boot {boots}")
        return time.monotonic() - self.started

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def run(self, cmd: str, timeout: float = 60) -> tuple[int, str]:
        """Runs `cmd` in the guest's shell; its exit status and output."""
        self._seq += 1
        tag = f"RSDONE{self._seq:04d}"
        with self._cond:
            start = len(self.lines)
        # The marker is built by the shell, so it cannot match the command line itself.
        self.send(f"{cmd}\nrs_rc=$?; echo \"RS\"\"DONE{self._seq:04d} $rs_rc\"")
        pat = re.compile(rf"^{tag} (\d+)$")

        def done():
            for i in range(start, len(self.lines)):
                m = pat.match(self.lines[i].strip())
                if m:
                    return int(m.group(1)), "\n".join(self.lines[start:i])
            return None

        return self._wait(done, timeout, f"the end of `{cmd}`")

    def check(self, cmd: str, timeout: float = 60) -> str:
        rc, out = self.run(cmd, timeout)
        assert rc == 0, f"{self.name}: `{cmd}` exited {rc}:\n{out}\n{self.log()}"
        return out

    def reach(self, peer: str, timeout: int = 30) -> str:
        """Waits (inside the guest, at most `timeout` s) until `peer` answers a ping, then pings
        it 3 times; the output."""
        loop = (
            f"i=0; until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do i=$((i+1)); "
            f"[ $i -ge {timeout} ] && break; done; ping -c 3 -i 0.2 -W 2 {peer}"
        )
        return self.check(loop, timeout + 20)

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        finally:
            for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    s.close()
                except OSError:
                    pass
            self.proc = None


class SockDir:
    """A directory for the vhost-user sockets, removed on close."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="rs-guest-"))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def close(self):
        for p in self.path.iterdir():
            p.unlink(missing_ok=True)
        self.path.rmdir()


def timings_note(label: str, seconds: float) -> None:
    print(f"[timing] {label}: {seconds:.1f} s", flush=True)

