"""pytest set-up of the port-kind tests: the QEMU version in the report header, and a
`cleanup` fixture that closes what a test opened even when it fails."""

import pytest

from portlib import Cleanup, qemu_version


def pytest_report_header(config):
    return f"QEMU: {qemu_version() or 'not installed'}"


@pytest.fixture
def cleanup():
    c = Cleanup()
    try:
        yield c
    finally:
        c.close()
