"""What a paused consumer says: the dependency that is down, by name (a dedupe store
outage is not reported as an unreachable SMTP server)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from service.failures import SmtpUnavailable, StoreUnavailable
from service.kafka.batches import BatchRunner
from service.metrics import Metrics


async def _answers() -> bool:
    return True


@pytest.mark.parametrize(
    ("outage", "paused", "resumed"),
    [
        (
            StoreUnavailable("cannot claim in the redis dedupe store at redis://h:6379: refused"),
            "dedupe store unavailable, consumption paused",
            "consumption resumed, trying the dedupe store again",
        ),
        (
            SmtpUnavailable("Connection refused by 127.0.0.1:25"),
            "smtp server unreachable, consumption paused",
            "smtp server reachable again, consumption resumed",
        ),
    ],
)
async def test_the_pause_names_what_is_down(
    outage: Exception, paused: str, resumed: str, caplog: pytest.LogCaptureFixture
) -> None:
    processor: Any = None
    runner = BatchRunner(processor, _answers, Metrics(), initial_backoff_s=0, max_backoff_s=0)
    with caplog.at_level(logging.INFO, logger="herald"):
        await runner._wait_out_outage(outage)  # type: ignore[arg-type]
    said = [(r.levelname, r.getMessage(), getattr(r, "reason", None)) for r in caplog.records]
    assert said == [("ERROR", paused, str(outage)), ("WARNING", resumed, None)]
    assert not runner.paused
