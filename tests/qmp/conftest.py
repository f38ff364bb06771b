"""pytest set-up of the QMP acceptance tests: fixtures that start a switch (alone, or with tap
ports in namespaces) and close everything a test opened, even when it fails."""

import importlib.metadata

import pytest

from qmprig import Cleanup, Lan, Switch, require_root, require_switch


def pytest_report_header(config):
    try:
        version = importlib.metadata.version("qemu.qmp")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return f"qemu.qmp: {version}"


@pytest.fixture
def cleanup():
    c = Cleanup()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def switch(cleanup):
    """A switch with no port, QMP on a unix socket and on a loopback TCP port."""
    require_switch()
    return cleanup.add(Switch(tcp=True))


@pytest.fixture
def lan(cleanup):
    """Three tap ports a, b, c, each in a namespace of its own."""
    require_root()
    return Lan(cleanup)
