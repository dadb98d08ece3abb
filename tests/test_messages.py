"""Delivery records as support sees them: `herald messages`, `GET /v1/messages`, the status
topic and `herald resend`, against a running `herald run`."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.schemas import EmailStatus
from tests.harness import (
    GREY,
    ROOT,
    GreylistingSMTP,
    HeraldProcess,
    Kafka,
    config_file,
    grey_event,
    load_example,
    make_config,
    per_event,
    wait_until,
)

pytestmark = pytest.mark.integration

TOKEN = "messages-test-token-0123456789"
GONE = "gone@herald.test"


class _Refuses(GreylistingSMTP):
    """Greylists `GREY` (until told otherwise) and answers 550 for `GONE`."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == GONE:
            return "550 5.1.1 <gone@herald.test>: mailbox unavailable"
        return await super().handle_RCPT(server, session, envelope, address, options)


async def _herald(path: Path) -> tuple[HeraldProcess, str]:
    herald = HeraldProcess(path)
    await herald.start()
    listening = await herald.wait_log("http listening")
    return herald, f"http://{listening['http']}"


async def _cli(path: Path, *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "--config",
        str(path),
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _records(path: Path, event_id: str) -> list[dict[str, Any]]:
    code, out, err = await _cli(path, "messages", "--event", event_id, "--json")
    assert code == 0, err
    return [orjson.loads(line) for line in out.splitlines() if line]


async def _get(base: str, query: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/v1/messages?{query}", headers=headers) as response,
    ):
        return response.status, await response.json()


def _config(kafka: EmbeddedKafka, server: RecordingSMTP, tmp_path: Path) -> Any:
    return make_config(
        kafka,
        server,
        tmp_path,
        http={"host": "127.0.0.1", "port": 0, "token": TOKEN},
        retry={"attempts": 4, "initial_backoff_s": 1, "max_backoff_s": 1},
    )


async def test_a_sent_email_is_on_record_and_a_resend_sends_exactly_one_more(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with RecordingSMTP() as server:
        config = _config(kafka, server, tmp_path)
        path = config_file(config, tmp_path / "herald.yaml")
        herald, base = await _herald(path)
        event = load_example("post-change-password", user_id="user-ada", email="ada@herald.test")
        await client.send(config.kafka.topics[0], event)
        [email] = await server.wait_for(1, timeout=20)
        await herald.wait_log("event processed")
        [record] = await _records(path, event["id"])
        status, body = await _get(base, f"event_id={event['id']}")
        unauthorized, _ = await _get(base, f"event_id={event['id']}", token=None)
        code, table, _ = await _cli(path, "messages", "--event", event["id"])
        code_resend, resent, err_resend = await _cli(path, "resend", event["id"])
        await server.wait_for(2, timeout=20)
        await asyncio.sleep(0.5)  # a third copy would arrive now
        after = await _records(path, event["id"])
        assert await herald.stop() == 0
        copies = per_event(server)[event["id"]]
    statuses = await client.read(config.kafka.status_topic, 3, timeout=5)
    assert record["status"] == "sent"
    assert record["template"] == "password_changed"
    assert record["to"] == "a***@herald.test"
    assert record["message_id"] == email.message["Message-ID"]
    assert record["smtp_reply"].startswith("250")
    assert (record["topic"], record["attempts"]) == (config.kafka.topics[0], 1)
    assert status == 200 and body["messages"] == [record]
    assert unauthorized == 401
    assert code == 0 and "sent" in table and "a***@herald.test" in table
    assert "ada@herald.test" not in table + str(body)
    assert code_resend == 0, err_resend
    assert resent.startswith("resent password_changed to a***@herald.test"), resent
    assert copies == 2
    assert sorted(r["resend"] for r in after) == [False, True]
    assert all(r["status"] == "sent" for r in after)
    events = [orjson.loads(r.value) for r in statuses]
    assert [(e["type"], e["data"]["status"], e["data"]["resend"]) for e in events] == [
        ("herald.email.status", "sent", False),
        ("herald.email.status", "sent", True),
    ]
    assert all(r.key == b"user-ada" for r in statuses)
    for status_event in events:  # what docs/asyncapi.json promises
        EmailStatus.model_validate(status_event)
    assert all(e["data"]["to"] == "a***@herald.test" for e in events)


async def test_deferred_then_sent_failed_with_the_reply_and_an_expired_link_skipped(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with _Refuses() as server:
        config = _config(kafka, server, tmp_path)
        path = config_file(config, tmp_path / "herald.yaml")
        herald, base = await _herald(path)
        grey = grey_event()
        gone = load_example("post-change-password", user_id="user-gone", email=GONE)
        past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        stale = load_example("password-reset-requested", user_id="user-stale")
        stale["data"]["expires_at"] = past
        topic = config.kafka.topics[0]
        for event in (grey, gone, stale):
            await client.send(topic, event)
        await herald.wait_log("email retry scheduled", timeout=20)
        [deferred] = await _records(path, grey["id"])
        server.accept_grey = True
        await wait_until(lambda: per_event(server)[grey["id"]] == 1, "the greylisted email", 20)
        deferrals = server.grey_refusals  # a slow machine may see a retry refused too
        await herald.wait_log("event processed", count=2, timeout=20)
        await asyncio.sleep(0.3)
        [sent] = await _records(path, grey["id"])
        [failed] = await _records(path, gone["id"])
        [skipped] = await _records(path, stale["id"])
        _, by_user = await _get(base, "user_id=user-stale")
        assert await herald.stop() == 0
    statuses = [
        orjson.loads(r.value)["data"]
        for r in await client.read(config.kafka.status_topic, 3 + deferrals, timeout=5)
    ]
    assert deferred["status"] == "deferred" and deferred["next_attempt_at"]
    assert "451" in deferred["smtp_reply"]
    assert deferrals >= 1
    assert (sent["status"], sent["attempts"]) == ("sent", deferrals + 1)
    assert failed["status"] == "failed" and failed["reason"] == "SmtpPermanentError"
    assert failed["smtp_reply"].startswith("550 5.1.1")
    assert (skipped["status"], skipped["reason"]) == ("skipped", "expired")
    assert by_user["messages"] == [skipped]
    assert per_event(server)[stale["id"]] == 0 and per_event(server)[gone["id"]] == 0
    transitions = sorted((s["event_id"], s["status"]) for s in statuses)
    assert transitions == sorted(
        [
            *[(grey["id"], "deferred")] * deferrals,
            (grey["id"], "sent"),
            (gone["id"], "failed"),
            (stale["id"], "skipped"),
        ]
    ), transitions
    assert GREY not in str(statuses)


async def test_resend_of_an_unknown_event_and_messages_on_memory_are_one_clear_line(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    path = config_file(config, tmp_path / "herald.yaml")
    code, out, err = await _cli(path, "resend", "evt-never-seen")
    assert (code, out) == (1, "")
    assert err.strip() == "herald: no delivery record of event 'evt-never-seen'"
    memory = config.model_copy(
        update={"dedupe": config.dedupe.model_copy(update={"backend": "memory"})}
    )
    code, _, err = await _cli(config_file(memory, tmp_path / "memory.yaml"), "messages")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "GET /v1/messages" in err
