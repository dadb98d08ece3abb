"""End to end: real event bytes on the embedded broker → Herald → real SMTP server / DLQ."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

import orjson
import pytest

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from tests.harness import EMAIL_FLOWS, Kafka, load_example, make_config, metric, running, wait_until

pytestmark = pytest.mark.integration

SUBJECTS_EN = {
    "password_changed": "password",
    "welcome": "welcome",
    "password_reset": "reset",
    "verify_email": "verify",
    "login_alert": "sign-in",
}


def parts(message: EmailMessage) -> tuple[str, str | None]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    return text.get_content(), html.get_content() if html is not None else None


async def test_an_email_for_each_email_trigger(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    events = {trigger: load_example(trigger, locale="en") for trigger in EMAIL_FLOWS}
    async with running(config):
        for event in events.values():
            await client.send(config.kafka.topics[0], event)
        received = await smtp.wait_for(len(events))
    by_event = {r.message["X-Herald-Event-Id"]: r for r in received}
    assert len(received) == len(events)
    for trigger, event in events.items():
        got = by_event[event["id"]]
        user = event["data"]["user"]
        template = EMAIL_FLOWS[trigger]
        msg = got.message
        assert got.rcpt_tos == [user["email"]]
        assert got.mail_from == "no-reply@herald.test"
        assert parseaddr(msg["To"])[1] == user["email"]
        assert msg["From"] == "Herald Test <no-reply@herald.test>"
        assert msg["X-Herald-Template"] == template
        assert msg["Auto-Submitted"] == "auto-generated"
        assert msg["Message-ID"].endswith("@herald.test>")
        assert msg["Date"]
        assert msg.get_content_type() == "multipart/alternative"
        assert SUBJECTS_EN[template] in msg["Subject"].lower()
        text, html = parts(msg)
        assert html is not None and "<html" in html.lower()
        assert "<" not in text.replace("<http", "")  # plain text has no markup
        first_name = user.get("given_name") or user["name"].split()[0]
        assert first_name in text and first_name in html
    assert len({r.message["Message-ID"] for r in received}) == len(received)


async def test_locale_variant_and_fallback(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    german = load_example(
        "post-change-password", locale="de-AT", name="Jörg Müller", given_name="Jörg"
    )
    unknown = load_example("post-change-password", locale="pt-BR")
    async with running(config):
        await client.send(config.kafka.topics[0], german)
        await client.send(config.kafka.topics[0], unknown)
        received = await smtp.wait_for(2)
    by_id = {r.message["X-Herald-Event-Id"]: r.message for r in received}
    de = by_id[german["id"]]
    assert "geändert" in de["Subject"]
    assert b"=?utf-8?" in next(r.data for r in received if r.message is de)  # RFC 2047
    text, _ = parts(de)
    assert "Jörg" in text
    assert "password" in by_id[unknown["id"]]["Subject"].lower()  # pt-BR → pt → en


async def test_when_true_and_false(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    flows = {
        "post-change-password": [
            {
                "id": "verified-only",
                "action": "send_email",
                "template": "password_changed",
                "when": "event.user.email_verified",
            },
        ]
    }
    config = make_config(kafka, smtp, tmp_path, flows=flows)
    no = load_example("post-change-password", email_verified=False, email="no@herald.test")
    yes = load_example("post-change-password", email_verified=True, email="yes@herald.test")
    async with running(config) as herald:
        await client.send(config.kafka.topics[0], no)
        await client.send(config.kafka.topics[0], yes)
        await smtp.wait_for(1)
        await wait_until(lambda: metric(herald, "herald_events_total", outcome="ok") >= 2, "both")
    assert [r.rcpt_tos for r in smtp.messages] == [["yes@herald.test"]]
    assert metric(herald, "herald_actions_total", action="send_email", outcome="skipped") == 1


async def test_unknown_type_is_skipped_not_dead_lettered(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    other = load_example("post-change-password")
    other["type"] = "com.example.something_else"
    follow = load_example("post-change-password")
    topic = config.kafka.topics[0]
    async with running(config) as herald:
        await client.send(topic, other, key=b"same-user")
        await client.send(topic, follow, key=b"same-user")
        received = await smtp.wait_for(1)
        assert metric(herald, "herald_events_total", trigger="unknown", outcome="skipped") == 1
    assert received[0].message["X-Herald-Event-Id"] == follow["id"]
    assert await client.read(topic + ".dlq", 1, timeout=1) == []


async def test_binary_mode_cloudevent(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    event = load_example("post-change-password", email="binary@herald.test")
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event["id"].encode()),
        ("ce_source", b"https://login.herald.test"),
        ("ce_type", b"identity.user.password_changed"),
        ("ce_time", b"2026-11-26T10:00:00Z"),
        ("content-type", b"application/json"),
    ]
    async with running(config):
        await client.send(
            config.kafka.topics[0], orjson.dumps(event["data"]), key=b"user-bin", headers=headers
        )
        received = await smtp.wait_for(1)
    assert received[0].rcpt_tos == ["binary@herald.test"]
    assert received[0].message["X-Herald-Event-Id"] == event["id"]


async def test_malformed_events_are_dead_lettered_and_the_next_is_delivered(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    missing = load_example("post-change-password")
    del missing["data"]["user"]["user_id"]
    good = load_example("post-change-password")
    headers = [("traceparent", b"00-abc-01"), ("binary", b"\xff\x00")]
    async with running(config):
        await client.send(topic, b'{"specversion": "1.0", "id": ', key=b"k1", headers=headers)
        await client.send(topic, orjson.dumps(missing), key=b"k1", headers=headers)
        await client.send(topic, good, key=b"k1")
        await smtp.wait_for(1)
        dead = await client.read(topic + ".dlq", 2)
    assert smtp.messages[0].message["X-Herald-Event-Id"] == good["id"]
    assert [d.value for d in dead] == [b'{"specversion": "1.0", "id": ', orjson.dumps(missing)]
    for record in dead:
        h = dict(record.headers)
        assert record.key == b"k1"
        assert h["traceparent"] == b"00-abc-01" and h["binary"] == b"\xff\x00"
        assert h["x-herald-error"] == b"MalformedEvent"
        assert h["x-herald-original-topic"] == topic.encode()
        assert h["x-herald-original-partition"].isdigit()
        assert h["x-herald-original-offset"].isdigit()
        assert h["x-herald-failed-at"].startswith(b"20")
    assert b"not valid JSON" in dict(dead[0].headers)["x-herald-reason"]
    assert b"data.user.user_id" in dict(dead[1].headers)["x-herald-reason"]


async def test_crlf_in_name_and_address_never_reach_the_wire(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    bad_name = load_example(
        "post-change-password",
        name="Ada\r\nBcc: victim@evil.test\r\nX-Injected: yes",
        given_name="Ada\r\nBcc: victim2@evil.test",
        email="ada@herald.test",
    )
    bad_address = load_example(
        "post-change-password", email="eve@herald.test\r\nBcc: victim3@evil.test"
    )
    async with running(config):
        await client.send(topic, bad_name, key=b"u1")
        await client.send(topic, bad_address, key=b"u1")
        dead = await client.read(topic + ".dlq", 1)
        received = await smtp.wait_for(1)
    assert len(received) == 1
    msg = received[0]
    assert msg.rcpt_tos == ["ada@herald.test"]
    assert "Bcc" not in msg.message and "X-Injected" not in msg.message
    header_block = msg.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in header_block and b"\r\nX-Injected" not in header_block
    assert b"victim" not in b"".join(r.encode() for r in msg.rcpt_tos)
    assert dict(dead[0].headers)["x-herald-error"] == b"InvalidAddress"


async def test_html_and_template_syntax_in_names_are_only_data(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    event = load_example(
        "post-change-password",
        name="<script>alert(1)</script> {{ 7*7 }}",
        given_name="<script>alert(1)</script> {{ 7*7 }}",
    )
    async with running(config):
        await client.send(config.kafka.topics[0], event)
        received = await smtp.wait_for(1)
    text, html = parts(received[0].message)
    assert html is not None
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "{{ 7*7 }}" in html and "{{ 7*7 }}" in text and "49" not in text
    assert "<script>alert(1)</script>" in text


async def test_transient_421_then_250_sends_exactly_once(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    smtp.script("421 4.3.0 Try again later")
    event = load_example("post-change-password")
    async with running(config) as herald:
        await client.send(config.kafka.topics[0], event)
        await smtp.wait_for(1)
        await wait_until(lambda: metric(herald, "herald_events_total", outcome="ok") == 1, "ok")
        assert metric(herald, "herald_smtp_retries_total") == 1
    assert len(smtp.messages) == 1
    assert await client.read(config.kafka.topics[0] + ".dlq", 1, timeout=1) == []


async def test_permanent_550_is_dead_lettered_and_the_next_is_delivered(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    smtp.script("550 5.1.1 Mailbox unavailable")
    first = load_example("post-change-password")
    second = load_example("post-change-password")
    async with running(config) as herald:
        await client.send(topic, first, key=b"u")
        await client.send(topic, second, key=b"u")
        received = await smtp.wait_for(1)
        dead = await client.read(topic + ".dlq", 1)
        assert metric(herald, "herald_smtp_retries_total") == 0
    assert received[0].message["X-Herald-Event-Id"] == second["id"]
    headers = dict(dead[0].headers)
    assert dead[0].value == orjson.dumps(first)
    assert headers["x-herald-error"] == b"SmtpPermanentError"
    assert b"550 5.1.1 Mailbox unavailable" in headers["x-herald-reason"]


async def test_readyz_and_metrics(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    import aiohttp

    config = make_config(kafka, smtp, tmp_path)
    async with running(config) as herald, aiohttp.ClientSession() as http:
        base = f"http://{herald.http.address}"
        await client.send(config.kafka.topics[0], load_example("post-change-password"))
        await smtp.wait_for(1)
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200, await resp.text()
        await wait_until(lambda: metric(herald, "herald_events_total", outcome="ok") == 1, "ok")
        async with http.get(f"{base}/metrics") as resp:
            body = await resp.text()
    assert 'herald_events_total{outcome="ok",trigger="post-change-password"} 1.0' in body
    assert 'herald_emails_total{outcome="sent",template="password_changed"} 1.0' in body
    assert 'herald_actions_total{action="send_email",outcome="sent"} 1.0' in body
    for name in ("herald_smtp_retries_total", "herald_dlq_total", "herald_event_duration_seconds"):
        assert f"# TYPE {name.removesuffix('_total')}" in body


async def test_readyz_is_503_when_smtp_is_unreachable(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    import aiohttp

    config = make_config(kafka, smtp, tmp_path, smtp={"port": _free_port()})
    async with (
        running(config) as herald,
        aiohttp.ClientSession() as http,
        http.get(f"http://{herald.http.address}/readyz") as resp,
    ):
        assert resp.status == 503
        assert (await resp.json())["smtp_reachable"] is False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
