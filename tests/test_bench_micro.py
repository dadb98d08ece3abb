"""Tiny runs of the in-process benchmarks (`bench.pipeline_bench`, `bench.render_bench`),
so that they do not rot. No timing is asserted: see BENCHMARKS.md for the real runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import pipeline_bench
from tests.harness import ROOT


async def test_pipeline_bench_sends_every_email(tmp_path: Path) -> None:
    # `_one_run` raises unless every event became exactly one sent email.
    blocks = await pipeline_bench._one_run(tmp_path, "smoke", 120)
    assert len(blocks) == 1 and min(blocks[0]) > 0


def test_render_bench_runs() -> None:
    command = [sys.executable, "-m", "bench.render_bench", "--n", "60", "--repeat", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["locale", "en", "de"]
