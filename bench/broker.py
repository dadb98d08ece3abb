"""The embedded Kafka-protocol broker in a process of its own.

    python -m bench.broker

prints `{"bootstrap": "127.0.0.1:PORT"}` on stdout, then reads commands on stdin, one
per line: `create TOPIC PARTITIONS` answers `ok` or `error MESSAGE`. It stops when
stdin closes, so it never outlives the benchmark. In its own process, the broker's
CPU is not charged to the Herald (or peer) process under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import IO

from bench.procs import ROOT, cpu_seconds, python, python_env
from service.devtools.broker import EmbeddedKafka

__all__ = ["BrokerProcess", "main"]


class BrokerProcess:
    """The benchmark's side of `python -m bench.broker`."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.bootstrap = ""

    def start(self) -> str:
        """Start the broker process; returns its bootstrap address."""
        self.proc = subprocess.Popen(
            python("-m", "bench.broker"),
            cwd=ROOT,
            env=python_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._stdout().readline()
        if not line:
            raise RuntimeError("the embedded broker did not start")
        self.bootstrap = json.loads(line)["bootstrap"]
        return self.bootstrap

    def create_topic(self, name: str, partitions: int) -> None:
        """Create `name` with `partitions` (the mock cluster has no CreateTopics API)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"create {name} {partitions}\n")
        self.proc.stdin.flush()
        reply = self._stdout().readline().strip()
        if reply != "ok":
            raise RuntimeError(f"cannot create topic {name}: {reply or 'broker gone'}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        """Close stdin (the broker exits), kill it if it lingers."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _stdout(self) -> IO[str]:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout


def main() -> None:
    """Run the broker until stdin closes."""
    with EmbeddedKafka() as kafka:
        print(json.dumps({"bootstrap": kafka.bootstrap}), flush=True)
        for line in sys.stdin:
            words = line.split()
            if len(words) != 3 or words[0] != "create":
                print(f"error unknown command {line.strip()!r}", flush=True)
                continue
            try:
                kafka.create_topic(words[1], int(words[2]))
            except Exception as exc:
                print(f"error {' '.join(str(exc).split())}", flush=True)
            else:
                print("ok", flush=True)


if __name__ == "__main__":
    main()
