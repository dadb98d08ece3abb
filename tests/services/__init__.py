"""Real servers the test suite starts for itself on free loopback ports, and stops.

`install` (run by `make test`) puts the programs in place; these classes run them.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

__all__ = ["free_port", "missing"]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing(program: str, how: str) -> None:
    """Fail in CI, skip elsewhere, when `program` is not installed."""
    if shutil.which(program):
        return
    message = f"{program} is not installed: {how}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
