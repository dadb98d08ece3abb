"""Retry items finish out of order; the committed offset is the oldest unfinished one, and
what finished above it rides in the commit's metadata, so a restart attempts it no more."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.mail.request import EmailRequest
from service.retry.item import retry_headers
from service.retry.offsets import decode_done, encode_done
from tests.harness import Kafka, load_example, make_config, metric, running, wait_until

pytestmark = pytest.mark.integration

REFUSED = "refused@herald.test"


class _Refusing(RecordingSMTP):
    refusals = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == REFUSED:
            self.refusals += 1
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@dataclass
class _Source:
    topic: str
    partition: int = 0
    offset: int = 0
    key: bytes | None = b"user"
    value: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


async def _item(client: Kafka, topic: str, to: str, due_in_s: float) -> None:
    """Write a retry item for the welcome email to `to` to partition 0 of `topic`.retry."""
    event = load_example("post-change-password", email=to)
    source = _Source(topic, value=orjson.dumps(event))
    request = EmailRequest(
        event["id"], "email-password_changed", "password_changed", to, "", "en", {}
    )
    original, headers = retry_headers(source, request, 2, time.time() + due_in_s, "451 later")
    await client.producer.send_and_wait(
        topic + ".retry",
        original.value,
        key=original.key,
        headers=[*original.headers, *headers],
        partition=0,
    )


async def test_an_item_finished_ahead_of_an_older_one_is_not_attempted_again_after_restart(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with _Refusing() as server:
        config = make_config(kafka, server, tmp_path)
        topic = config.kafka.topics[0]
        await _item(client, topic, "later@herald.test", due_in_s=3600)  # offset 0: waits
        await _item(client, topic, REFUSED, due_in_s=0)  # offset 1: due now, refused: DLQ
        async with running(config) as herald:
            [dead] = await client.read(topic + ".dlq", 1, timeout=20)
            await wait_until(lambda: metric(herald, "herald_retries_pending") == 1, "one left")
        assert server.refusals == 1
        async with running(config) as again:
            await wait_until(lambda: metric(again, "herald_retries_pending") == 1, "read back", 20)
            # Had it been read as unfinished, the due item would be attempted at once.
            dead_letters = await client.read(topic + ".dlq", 2, timeout=3)
    print(f"after restart: {len(dead_letters)} dead letter(s), {server.refusals} refusal(s)")
    assert dict(dead.headers)["x-herald-error"] == b"SmtpPermanentError"
    assert len(dead_letters) == 1, "the finished item was attempted again"
    assert server.refusals == 1
    assert server.messages == []  # the item due in an hour waits


def test_done_offsets_round_trip_as_ranges_within_the_limit() -> None:
    assert encode_done([9, 3, 4, 5, 11, 12]) == "done:3-5,9,11-12"
    assert decode_done("done:3-5,9,11-12") == {3, 4, 5, 9, 11, 12}
    assert encode_done([]) == "" and decode_done("") == set()
    many = encode_done(range(0, 100_000, 2), limit=100)
    assert len(many) <= 100 and decode_done(many) == set(range(0, 2 * (many.count(",") + 1), 2))
    assert decode_done("not ours") == set() and decode_done("done:1-x") == set()
