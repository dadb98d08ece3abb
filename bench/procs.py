"""Child processes of the benchmark, and what /proc says about them (CPU, peak RSS)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ROOT", "Child", "cpu_seconds", "free_port", "peak_rss_mb", "python", "python_env"]

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_env() -> dict[str, str]:
    """The environment for children: no HERALD_* overrides, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of `pid` (VmHWM), in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Child:
    """One child process, its output in `log`; `started` is the monotonic start time."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.started = 0.0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, env=python_env(), stdout=out, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        """The end of the child's output, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def python(*args: str) -> list[str]:
    """A command line running this interpreter."""
    return [sys.executable, *args]
