"""Where Herald's time goes per email: py-spy samples grouped by component.

`Profiler.attach(pid)` starts `py-spy record --format raw` (collapsed stacks,
non-blocking so that Herald is not paused) once the first email was accepted;
`finish(emails)` waits for py-spy to write its file when Herald exits and prints, per
component, the sampled time divided by the number of emails. A sample is charged to
the innermost frame that belongs to a known component (other standard-library frames,
asyncio's included, count for their caller), else to "event loop, other".

    python -m bench.profiling FILE.txt EMAILS [RATE]   # summarize an existing recording

Frames of `service/commands/serve.py` and of asyncio alone (task steps, `select`) count as "event
loop, other": the cost of running the loop, whichever task it serves.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.report import update_section

__all__ = ["COMPONENTS", "Profiler", "summarize"]

RATE = 200  # samples per second
_PIPELINE = (
    "flows",
    "actions",
    "mail/mailer",
    "mail/claims",
    "mail/request",
    "processor",
    "consumed",
    "deliveries",
    "kafka/batches",
    "app",
    "kafka/outputs",
    "kafka/status",
    "retry/policy",
    "retry/retrier",
    "retry/item",
    "retry/scheduler",
    "retry/progress",
)
#: (component, path fragments), the first match of the innermost matching frame wins.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("render (Jinja2)", ("service/mail/render.py", "/jinja2/", "<template>", ".j2")),
    ("MIME build", ("service/mail/message.py", "service/mail/encoding.py")),
    (
        "SMTP client (aiosmtplib, pool)",
        (
            "/aiosmtplib/",
            "service/mail/transport.py",
            "service/mail/smtp_",
            "service/mail/aiosmtplib",
        ),
    ),
    (
        "dedupe + rate limit (sqlite)",
        (
            "service/dedupe/",
            "service/ratelimit/",
            "service/shared_sqlite.py",
            "service/delivery_stores.py",
            "sqlite3",
        ),
    ),
    ("logging", ("/logging/", "service/logs.py")),
    ("metrics (prometheus_client)", ("/prometheus_client/", "service/metrics.py")),
    (
        "Kafka (aiokafka, FastStream)",
        (
            "/aiokafka/",
            "/faststream/",
            "service/kafka/__init__.py",
            "service/kafka/subscriber.py",
            "service/kafka/transactions.py",
            "service/kafka/retries.py",
            "service/kafka/lag.py",
        ),
    ),
    ("event parsing", ("service/events.py", "service/formats/")),
    (
        "flows, actions, mailer, consumer",
        tuple(f"service/{name}.py" for name in _PIPELINE),
    ),
    ("retry (tenacity)", ("/tenacity/",)),
]
OTHER = "event loop, other"


class Profiler:
    """py-spy attached to one process; the recording goes to `outdir/herald.txt`."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.output = outdir / "herald-pyspy.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.emails_before = 0  # accepted before py-spy started sampling

    def attach(self, pid: int, emails_before: int = 0) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(binary).exists():
            print("[bench] py-spy not installed (pip install py-spy): no profile", file=sys.stderr)
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "record", "--pid", str(pid), "--format", "raw", "--nonblocking"]
        args += ["--rate", str(RATE), "--full-filenames", "--output", str(self.output)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.emails_before = emails_before

    def finish(self, emails: int) -> str | None:
        """Wait for the recording and summarize it; None without one."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(10)
        if not self.output.exists():
            return None
        text = summarize(self.output, emails, RATE)
        print("\n" + text)
        update_section(self.outdir / "summary.md", "profile", text)
        return text


def summarize(path: Path, emails: int, rate: int = RATE) -> str:
    """A markdown table: µs per email and share of samples, per component."""
    totals: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            totals[_component(stack.split(";"))] += int(count)
    samples = sum(totals.values()) or 1
    lines = [
        f"{samples} samples at {rate} Hz over {emails} emails "
        f"({samples / rate / max(emails, 1) * 1e6:,.0f} µs sampled per email)",
        "",
        "| component | µs/email | share |",
        "| --- | ---: | ---: |",
    ]
    for name, hits in totals.most_common():
        per_email = hits / rate / max(emails, 1) * 1e6
        lines.append(f"| {name} | {per_email:,.0f} | {hits / samples:.0%} |")
    return "\n".join(lines)


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, fragments in COMPONENTS:
            if any(fragment in frame for fragment in fragments):
                return name
    return OTHER


if __name__ == "__main__":
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else RATE
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]), rate))
