"""The webhook nobody can abuse (README: Configuration, Operations): bearer token, body
limit, header timeout.

Real Herald (in process or `herald run`) against the embedded broker and aiosmtpd.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from service.config import ConfigError, parse_config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.events import MAX_EVENT_BYTES
from service.http import HEADER_TIMEOUT_S
from tests.harness import (
    ROOT,
    HeraldProcess,
    Kafka,
    config_file,
    load_example,
    make_config,
    running,
)

TOKEN = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
# Sends the welcome email and sets metadata: what an anonymous caller must not trigger.
FLOWS = {
    "pre-user-registration": [
        {"id": "welcome", "action": "send_email", "template": "welcome"},
        {"id": "init", "action": "set_metadata", "app_metadata": {"is_new_user": True}},
    ]
}


def _config(kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp: Path, **http: Any) -> Any:
    return make_config(kafka, smtp, tmp, flows=FLOWS, http={"token": TOKEN, **http})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_v1_needs_the_bearer_token_and_probes_stay_open(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = _config(kafka, smtp, tmp_path)
    async with running(config) as herald, aiohttp.ClientSession() as http:
        url = f"http://{herald.http.address}/v1/decisions/pre-user-registration"
        refused = [
            {},
            _bearer("wrong"),
            _bearer(TOKEN[:-1]),
            _bearer(TOKEN + "x"),
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ]
        for headers in refused:
            async with http.post(
                url, json=load_example("pre-user-registration"), headers=headers
            ) as r:
                assert r.status == 401, headers
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN not in await r.text()
        assert smtp.messages == []
        for topic in (config.kafka.commands_topic, config.kafka.decisions_topic):
            assert await client.read(topic, 1, timeout=1) == []

        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(f"http://{herald.http.address}{path}") as r:
                assert r.status == 200, path
                assert TOKEN not in await r.text()

        event = load_example("pre-user-registration")
        async with http.post(url, json=event, headers={"authorization": f"bearer {TOKEN}"}) as r:
            assert r.status == 200
            body = await r.json()
    assert body["decision"] == "allow" and body["event_id"] == event["id"]
    assert body["app_metadata"] == {"is_new_user": True}
    assert [m.rcpt_tos for m in smtp.messages] == [[event["data"]["user"]["email"]]]


async def test_body_over_1_mib_gets_413(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    async with running(_config(kafka, smtp, tmp_path)) as herald, aiohttp.ClientSession() as http:
        url = f"http://{herald.http.address}/v1/decisions/pre-user-registration"
        async with http.post(url, data=b" " * (MAX_EVENT_BYTES + 1), headers=_bearer(TOKEN)) as r:
            assert r.status == 413
        async with http.post(url, data=b" " * MAX_EVENT_BYTES, headers=_bearer(TOKEN)) as r:
            assert r.status == 400  # read in full: whitespace is not JSON
        async with http.post(url, data=b" " * (MAX_EVENT_BYTES + 1)) as r:
            assert r.status == 401  # no token: refused before the body is read
    assert smtp.messages == []


async def test_decisions_beyond_the_limit_get_503(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    async with running(_config(kafka, smtp, tmp_path)) as herald, aiohttp.ClientSession() as http:
        url = f"http://{herald.http.address}/v1/decisions/pre-user-registration"
        slots = herald.http._decisions
        taken = 0
        while not slots.locked():  # as if every slot held a decision in progress
            await slots.acquire()
            taken += 1
        assert taken == 64
        event = load_example("pre-user-registration")
        async with http.post(url, json=event, headers=_bearer(TOKEN)) as r:
            assert (r.status, r.headers["Retry-After"]) == (503, "1")
        slots.release()
        async with http.post(url, json=event, headers=_bearer(TOKEN)) as r:
            assert r.status == 200


@pytest.mark.timeout(60)
async def test_a_client_that_stops_mid_headers_is_disconnected_within_10_s(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    assert HEADER_TIMEOUT_S == 10
    async with running(_config(kafka, smtp, tmp_path)) as herald:
        host, port = herald.http.address.rsplit(":", 1)
        silent = await asyncio.open_connection(host, int(port))  # sends nothing at all
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.monotonic()
        writer.write(b"POST /v1/decisions/x HTTP/1.1\r\nHost: a\r\n")
        await writer.drain()
        for i in range(5):  # dribbling more header bytes does not extend the deadline
            await asyncio.sleep(1)
            writer.write(b"X-Slow-%d: y\r\n" % i)
            await writer.drain()
        assert await asyncio.wait_for(reader.read(), 20) == b""  # EOF, no response
        elapsed = time.monotonic() - started
        assert await asyncio.wait_for(silent[0].read(), 5) == b""
        writer.close()
        silent[1].close()
    assert 8 <= elapsed <= 15, elapsed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_host_needs_no_token(host: str) -> None:
    config = parse_config(yaml.safe_dump({"http": {"host": host}}), "h.yaml", environ={})
    assert config.http.token.get_secret_value() == ""


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "herald.example.com"])
def test_non_loopback_host_without_token_is_one_line(host: str) -> None:
    text = yaml.safe_dump({"http": {"host": host, "port": 8080}})
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "h.yaml", environ={})
    assert str(exc.value).splitlines() == [
        "h.yaml:1: http.token: required when http.host is not a loopback address"
    ]
    config = parse_config(text, "h.yaml", environ={"HERALD_HTTP__TOKEN": TOKEN})
    assert TOKEN not in repr(config) and TOKEN not in str(config.model_dump())


def test_herald_check_and_run_refuse_a_public_host_without_token(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    path = config_file(make_config(kafka, smtp, tmp_path), tmp_path / "herald.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["http"] = {"host": "0.0.0.0", "port": 0, "token": ""}
    path.write_text(yaml.safe_dump(doc))
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "token:" in t)
    for command in ("check", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "service", "--config", str(path), command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.splitlines() == [
            f"{path}:{line}: http.token: required when http.host is not a loopback address"
        ], command


async def test_the_token_never_appears_in_the_log(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    config = _config(kafka, smtp, tmp_path, host="0.0.0.0")
    path = config_file(config, tmp_path / "herald.yaml")
    herald = HeraldProcess(path, env={"HERALD_LOG__LEVEL": "DEBUG"})
    await herald.start()
    address = herald.logged("http listening")[0]["http"]
    port = address.rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}/v1/decisions/pre-user-registration"
    wrong = TOKEN[:-4] + "zzzz"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json=load_example("pre-user-registration"), headers=_bearer(wrong)
        ) as r:
            assert r.status == 401
        async with http.post(
            url, json=load_example("pre-user-registration"), headers=_bearer(TOKEN)
        ) as r:
            assert r.status == 200
    await smtp.wait_for(1, timeout=10)
    assert await herald.stop() == 0
    logged = repr(herald.lines)
    assert "herald started" in logged
    assert TOKEN not in logged and wrong not in logged and TOKEN[:12] not in logged
