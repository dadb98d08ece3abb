"""A slow or missing reply to the final "." never sends an email twice (README:
Configuration `smtp.data_timeout_s`, Outputs status `uncertain`, Delivery guarantees;
RFC 5321 §4.5.3.2.6, RFC 1047).

The servers here keep the message as soon as it arrives and only then take their time
to answer, as a real one that queued the email but is slow to say so."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.dedupe import Claim, MemoryDedupe, dedupe_key
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.mail.mailer import EmailRequest, Mailer
from service.mail.render import Renderer
from service.mail.transport import SmtpPool
from service.metrics import Metrics
from tests.harness import (
    ROOT,
    GreylistingSMTP,
    Kafka,
    grey_event,
    load_example,
    make_config,
    metric,
    per_event,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration

UNCERTAIN = "email uncertain: sent, but the server's reply never came; not sent again"
ADA = "ada@herald.test"


class SlowToAnswer(RecordingSMTP):
    """Keeps the message, then takes `delay` seconds to answer 250 to the final dot."""

    delay = 3.0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        await asyncio.sleep(self.delay)
        return reply


class DropsAfterData(RecordingSMTP):
    """Keeps the message, then drops the connection without answering it."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        assert server.transport is not None
        server.transport.abort()
        return reply


class SlowRcpt(RecordingSMTP):
    """Takes `delay` seconds to answer RCPT: a send cancelled there never sent its data."""

    delay = 2.0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await asyncio.sleep(self.delay)
        envelope.rcpt_tos.append(address)
        return "250 OK"


# --- end to end: Herald on the embedded broker -----------------------------------------


async def test_a_slow_reply_within_data_timeout_is_sent_once(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    """3 s for the 250 after the data, `timeout_s: 1`: this used to be a timeout, a
    scheduled retry and a second copy."""
    with SlowToAnswer() as server:
        smtp = {"timeout_s": 1, "data_timeout_s": 5}
        config = make_config(kafka, server, tmp_path, smtp=smtp)
        event = load_example("post-change-password", email=ADA)
        async with running(config) as herald:
            await client.send(config.kafka.topics[0], event)
            await wait_until(lambda: _emails(herald, "sent") == 1, "sent", timeout=10)
            await asyncio.sleep(1)  # room for a retry, were one scheduled
            retries = metric(herald, "herald_smtp_retries_total")
            deferred = _emails(herald, "deferred")
    assert per_event(server) == {event["id"]: 1}
    assert (retries, deferred) == (0, 0)


async def test_no_reply_within_data_timeout_is_uncertain_and_never_sent_again(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SlowToAnswer() as server:
        smtp = {"timeout_s": 1, "data_timeout_s": 1}
        config = make_config(kafka, server, tmp_path, smtp=smtp)
        topic = config.kafka.topics[0]
        event = load_example("post-change-password", email=ADA)
        with caplog.at_level(logging.WARNING, "service.mail.mailer"):
            async with running(config) as herald:
                await client.send(topic, event)
                await wait_until(lambda: _emails(herald, "uncertain") == 1, "uncertain", 10)
                await asyncio.sleep(3)  # the server finishes; no retry comes
                await client.send(topic, event)  # a redelivery of the same event
                await wait_until(lambda: _emails(herald, "duplicate") == 1, "duplicate", 10)
                await asyncio.sleep(0.5)
                retries = metric(herald, "herald_smtp_retries_total")
                actions = metric(
                    herald, "herald_actions_total", action="send_email", outcome="uncertain"
                )
                sent = _emails(herald, "sent")
    assert per_event(server) == {event["id"]: 1}  # the server did take it, once
    assert (retries, actions, sent, _emails(herald, "uncertain")) == (0, 1, 0, 1)
    [line] = [r for r in caplog.records if r.getMessage() == UNCERTAIN]
    assert line.levelno == logging.WARNING
    assert (line.event_id, line.action) == (event["id"], "email-password_changed")
    assert line.recipient == "a***@herald.test"
    assert line.reason == f"timed out waiting for 127.0.0.1:{server.port} to answer the message"
    assert ADA not in caplog.text
    assert await client.read(topic + ".dlq", 1, timeout=1) == []


async def test_a_connection_dropped_after_the_data_is_uncertain_and_not_sent_again(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with DropsAfterData() as server:
        config = make_config(kafka, server, tmp_path)
        topic = config.kafka.topics[0]
        event = load_example("post-change-password", email=ADA)
        async with running(config) as herald:
            await client.send(topic, event)
            await wait_until(lambda: _emails(herald, "uncertain") == 1, "uncertain", 10)
            await asyncio.sleep(1)
            await client.send(topic, event)
            await wait_until(lambda: _emails(herald, "duplicate") == 1, "duplicate", 10)
            retries = metric(herald, "herald_smtp_retries_total")
    assert per_event(server) == {event["id"]: 1}
    assert retries == 0
    assert await client.read(topic + ".dlq", 1, timeout=1) == []


async def test_451_to_rcpt_is_still_retried_not_uncertain(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    """A refusal before the data went out: nothing was delivered, so it is retried."""
    with GreylistingSMTP() as server:
        config = make_config(kafka, server, tmp_path, smtp={"timeout_s": 1, "data_timeout_s": 1})
        grey = grey_event()
        async with running(config) as herald:
            await client.send(config.kafka.topics[0], grey)
            await wait_until(lambda: server.grey_refusals >= 2, "a scheduled retry", 10)
            server.accept_grey = True
            await server.wait_for(1, timeout=10)
            await asyncio.sleep(0.3)
            retries = metric(herald, "herald_smtp_retries_total")
            uncertain = _emails(herald, "uncertain")
    assert retries >= 1 and uncertain == 0
    assert per_event(server) == {grey["id"]: 1}


# --- cancellation: the claim is released only when the data certainly did not go out ---


async def test_cancelled_while_the_reply_is_awaited_is_recorded_not_released() -> None:
    """As an action's `timeout_s` does it: the message was out, so the email may be
    delivered; releasing the claim would let a replay send it again."""
    with SlowToAnswer() as server:
        server.delay = 2.0
        async with SmtpPool("127.0.0.1", server.port, local_hostname="herald.test") as pool:
            mailer, dedupe, metrics = _mailer(pool)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await mailer.send(_request("e1"))
            assert len(server.messages) == 1
            key = dedupe_key("e1", "notify", ADA)
            assert await dedupe.claim(key) is Claim.SENT
            assert await mailer.send(_request("e1")) == "duplicate"
    assert len(server.messages) == 1
    assert metrics.emails.labels("password_changed", "uncertain")._value.get() == 1


async def test_cancelled_before_the_data_went_out_is_released() -> None:
    with SlowRcpt() as server:
        async with SmtpPool("127.0.0.1", server.port, local_hostname="herald.test") as pool:
            mailer, _, metrics = _mailer(pool)
            sending = asyncio.create_task(mailer.send(_request("e2")))
            await asyncio.sleep(0.5)  # waiting for the reply to RCPT
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            server.delay = 0
            assert await mailer.send(_request("e2")) == "sent"  # the claim was released
    assert len(server.messages) == 1
    assert metrics.emails.labels("password_changed", "uncertain")._value.get() == 0


def _emails(herald: object, outcome: str) -> float:
    return metric(herald, "herald_emails_total", outcome=outcome)


def _mailer(pool: SmtpPool) -> tuple[Mailer, MemoryDedupe, Metrics]:
    dedupe, metrics = MemoryDedupe(60), Metrics()
    mailer = Mailer(
        renderer=Renderer(ROOT / "templates"),
        transport=pool,
        dedupe=dedupe,
        default_sender="Herald <no-reply@herald.test>",
        metrics=metrics,
    )
    return mailer, dedupe, metrics


def _request(event_id: str) -> EmailRequest:
    event = load_example("post-change-password", email=ADA)
    user = event["data"]["user"]
    context = {"event": {**event["data"], **event}, "user": user, "secrets": {}, "data": {}}
    return EmailRequest(event_id, "notify", "password_changed", ADA, "", "en", context)
