"""SMTP client micro-benchmark: `SmtpPool.send` of prebuilt messages to Postfix's smtp-sink.

    python -m bench.smtp_client [--messages 5000] [--pool-size 4] [--runs 3]

Builds N distinct ~8 KB messages (CRLF line ends, quoted-printable-like lines, some
starting with "."), then sends them through one `SmtpPool` from `pool-size` concurrent
senders, after a short warm-up that opens the connections. Reports the client's CPU
time per message (`time.process_time` delta / N: the whole benchmark process, which
only runs the client; smtp-sink is a separate process) and messages per second (wall
clock), per run and the median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Iterator

from bench.sinks import PostfixSink, find_smtp_sink
from service.mail.transport import SmtpPool

__all__ = ["main"]

SENDER = "no-reply@herald.example"
_LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod =\r\n"


def build_messages(count: int, size: int = 8192) -> list[tuple[str, bytes]]:
    """`count` (recipient, message bytes) pairs of about `size` bytes each."""
    messages = []
    for n in range(count):
        recipient = f"user{n}@example.com"
        head = (
            f"From: Herald <{SENDER}>\r\nTo: <{recipient}>\r\n"
            f"Subject: Benchmark message {n}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii")
        lines = [head]
        total = len(head)
        while total < size:
            line = b"." + _LINE if len(lines) % 17 == 0 else _LINE
            lines.append(line)
            total += len(line)
        messages.append((recipient, b"".join(lines)))
    return messages


async def _sender(pool: SmtpPool, work: Iterator[tuple[str, bytes]]) -> None:
    for recipient, message in work:
        await pool.send(SENDER, [recipient], message)


async def run_once(port: int, messages: list[tuple[str, bytes]], size: int) -> tuple[float, float]:
    """Send `messages` through a fresh pool; returns (CPU µs per message, messages/s)."""
    async with SmtpPool("127.0.0.1", port, size=size, local_hostname="bench.local") as pool:
        warm = iter(messages[: size * 10])
        await asyncio.gather(*(_sender(pool, warm) for _ in range(size)))
        work = iter(messages)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(_sender(pool, work) for _ in range(size)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / len(messages) * 1e6, len(messages) / wall


def _accepted(sink: PostfixSink, expected: int, timeout_s: float = 5) -> int:
    """smtp-sink's count once it reaches `expected` (its counter lags a little)."""
    deadline = time.monotonic() + timeout_s
    while sink.count < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return sink.count


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark against a fresh smtp-sink per run and print the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_client")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--message-bytes", type=int, default=8192)
    args = parser.parse_args(argv)
    binary = find_smtp_sink()
    if binary is None:
        print("smtp-sink not found (Debian package postfix)", file=sys.stderr)
        return 1
    messages = build_messages(args.messages, args.message_bytes)
    results = []
    for run in range(1, args.runs + 1):
        sink = PostfixSink(binary)
        port = sink.start()
        try:
            cpu_us, rate = asyncio.run(run_once(port, messages, args.pool_size))
            accepted = _accepted(sink, len(messages) + args.pool_size * 10)
        finally:
            sink.stop()
        results.append((cpu_us, rate))
        print(
            f"run {run}: {cpu_us:,.0f} µs client CPU/message, {rate:,.0f} messages/s "
            f"({accepted} accepted by smtp-sink, warm-up included)"
        )
    cpu_median = statistics.median(cpu for cpu, _ in results)
    rate_median = statistics.median(rate for _, rate in results)
    print(
        f"median of {args.runs}: {cpu_median:,.0f} µs client CPU/message, "
        f"{rate_median:,.0f} messages/s ({args.messages} messages of ~{args.message_bytes} B, "
        f"pool size {args.pool_size})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
