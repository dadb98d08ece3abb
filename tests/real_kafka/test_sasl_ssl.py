"""Herald over SASL_SSL (SCRAM-SHA-512, a trustme CA) against Apache Kafka itself.

`herald run` consumes and produces through the secure listener; a refused login or an
untrusted certificate keeps it alive and unready with one clear log line, retrying; the
CLI says the same in one line and exits. The password never shows up anywhere. The
tests' own clients use the broker's PLAINTEXT listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

from service.devtools.smtp import RecordingSMTP
from tests.harness import ROOT, HeraldProcess, Kafka, config_file, load_example, make_config
from tests.services.kraft import KafkaCluster, Scram

#: Wall-clock bound for a CLI command that cannot log in (README: Command line: one line, non-zero).
CLI_BOUND_S = 30


@dataclass
class Setup:
    """One test's `herald.yaml` (no password in it) and the env var that carries it."""

    path: Path
    topic: str
    env: dict[str, str]
    password: str


def secure_setup(
    cluster: KafkaCluster,
    smtp: RecordingSMTP,
    tmp: Path,
    *,
    username: str,
    password: str,
    ca: trustme.CA,
) -> Setup:
    cafile = tmp / "kafka-ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    secure = {
        "bootstrap_servers": cluster.secure_bootstrap,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": username,
        "ssl_cafile": str(cafile),
    }
    config = make_config(cluster, smtp, tmp)  # type: ignore[arg-type]
    config = config.model_copy(update={"kafka": config.kafka.model_copy(update=secure)})
    path = config_file(config, tmp / "herald.yaml")  # blanks sasl_password: env gives it
    assert password not in path.read_text()
    env = {"HERALD_KAFKA__SASL_PASSWORD": password}
    return Setup(path, config.kafka.topics[0], env, password)


class UnreadyHerald(HeraldProcess):
    """`herald run` that may never get partitions: `start` returns once HTTP listens."""

    async def start(self, timeout: float = 20) -> None:
        self.started_at = time.monotonic()
        # The harness waits for "partitions assigned"; here that may never come.
        with contextlib.suppress(AssertionError):
            await super().start(timeout=0.001)
        self.address = (await self.wait_log("http listening", timeout=timeout))["http"]

    async def get(self, path: str) -> tuple[int, str]:
        url = f"http://{self.address}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.text()

    def raw_output(self) -> str:
        return orjson.dumps(self.lines).decode()


async def cli(setup: Setup, *args: str) -> tuple[int, str, str, float]:
    """`python -m service --config … ARGS`; exit code, stdout, stderr, seconds taken."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "--config",
        str(setup.path),
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **setup.env},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_BOUND_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"herald {' '.join(args)} ran past {CLI_BOUND_S} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


def write_event(tmp: Path, event: dict[str, Any]) -> Path:
    path = tmp / f"{event['id']}.json"
    path.write_bytes(orjson.dumps(event))
    return path


def kafka_errors(herald: HeraldProcess) -> list[dict[str, Any]]:
    return [line for line in herald.lines if "kafka_error" in line]


async def test_run_publish_and_dlq_over_sasl_ssl(
    secure_kafka: KafkaCluster, scram: Scram, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    setup = secure_setup(
        secure_kafka,
        smtp,
        tmp_path,
        username=scram.username,
        password=scram.password,
        ca=scram.ca,
    )
    herald = UnreadyHerald(setup.path, env=setup.env)
    await herald.start(timeout=60)
    await herald.wait_log("partitions assigned", timeout=60)
    event = load_example("post-change-password", email="ada@herald.test")
    code, out, err, _ = await cli(setup, "publish", str(write_event(tmp_path, event)))
    assert (code, err) == (0, ""), err
    assert out == f"published 1 event(s) to {setup.topic}\n"
    [mail] = await smtp.wait_for(1, timeout=30)
    assert mail.message["X-Herald-Event-Id"] == event["id"]

    client = Kafka(secure_kafka.bootstrap)  # PLAINTEXT: the test's own view
    await client.start()
    try:
        await client.send(setup.topic, b"{not json", key=b"user-9")
        [dead] = await client.read(setup.topic + ".dlq", 1, timeout=30)
    finally:
        await client.stop()
    assert (dead.key, dead.value) == (b"user-9", b"{not json")
    assert dict(dead.headers)["x-herald-original-topic"] == setup.topic.encode()

    status, body = await herald.get("/readyz")
    assert status == 200, body
    code, out, err, _ = await cli(setup, "dlq", "replay", "--dry-run")
    assert (code, err) == (0, ""), err
    assert out.splitlines()[-1].startswith("dry run: would replay 1 dead letter(s)")
    assert await herald.stop() == 0
    assert not kafka_errors(herald)
    for text in (herald.raw_output(), out, body):
        assert scram.password not in text


@pytest.fixture(params=["wrong-password", "untrusted-ca"])
def refused(
    request: pytest.FixtureRequest,
    secure_kafka: KafkaCluster,
    scram: Scram,
    smtp: RecordingSMTP,
    tmp_path: Path,
) -> tuple[Setup, str, str]:
    """A setup Kafka refuses; the expected `kafka_error` kind and message start."""
    if request.param == "wrong-password":
        password, ca = f"wrong-{uuid.uuid4().hex}", scram.ca
        kind, words = "authentication_failed", "Kafka authentication failed at"
    else:
        password, ca = scram.password, trustme.CA()
        kind, words = "tls_untrusted", "Kafka TLS certificate not trusted at"
    setup = secure_setup(
        secure_kafka, smtp, tmp_path, username=scram.username, password=password, ca=ca
    )
    return setup, kind, f"{words} {secure_kafka.secure_bootstrap}"


async def test_run_stays_up_unready_with_one_clear_line(
    refused: tuple[Setup, str, str],
) -> None:
    setup, kind, words = refused
    # Debug shows every retry; at info and above the outage must be one line.
    herald = UnreadyHerald(setup.path, env={**setup.env, "HERALD_LOG__LEVEL": "DEBUG"})
    await herald.start(timeout=30)
    async with asyncio.timeout(30):
        while not kafka_errors(herald):
            await asyncio.sleep(0.05)
    first_line_s = time.monotonic() - herald.started_at
    line = kafka_errors(herald)[0]
    assert line["level"] == "error" and line["kafka_error"] == kind
    assert line["msg"].startswith(words), line
    assert line["bootstrap_servers"] in line["msg"]

    await asyncio.sleep(8)  # several retries (backoff 0.5 s, 1 s, 2 s, …)
    assert herald.proc is not None and herald.proc.returncode is None  # not exiting
    assert await herald.get("/healthz") == (200, '{"status": "ok"}')
    status, body = await herald.get("/readyz")
    assert status == 503 and '"partitions_assigned": false' in body
    retries = kafka_errors(herald)
    assert len(retries) >= 3 and {x["msg"] for x in retries} == {line["msg"]}
    # Retries within a minute add nothing above debug: no traceback, nothing from aiokafka.
    loud = [x for x in herald.lines if x.get("level") not in ("debug", "info")]
    assert loud == [line], loud
    assert not [x for x in herald.lines if x.get("logger", "").startswith("aiokafka")]
    assert "Traceback" not in herald.raw_output()
    assert await herald.stop() == 0  # SIGTERM while connecting
    for text in (herald.raw_output(), body):
        assert setup.password not in text
    print(
        f"{kind}: first line after {first_line_s:.2f} s, {len(retries)} attempts in"
        f" {time.monotonic() - herald.started_at:.1f} s, {len(loud)} line above info"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "EVENT", "--topic", "TOPIC"],
        ["dlq", "replay", "--topic", "TOPIC"],
        ["topics", "create", "--dry-run"],
    ],
)
async def test_cli_refused_is_one_line_and_non_zero(
    refused: tuple[Setup, str, str], command: list[str], tmp_path: Path
) -> None:
    setup, _, words = refused
    event = write_event(tmp_path, load_example("post-change-password"))
    names = {"EVENT": str(event), "TOPIC": setup.topic}
    code, out, err, took = await cli(setup, *(names.get(arg, arg) for arg in command))
    assert code != 0
    assert err.count("\n") == 1 and err.startswith(f"herald: {words}"), err
    assert "Traceback" not in err and out == ""
    assert setup.password not in err + out
    print(f"herald {' '.join(command)}: exit {code} after {took:.2f} s: {err.strip()}")


async def test_run_connects_once_the_login_is_accepted(
    secure_kafka: KafkaCluster, scram: Scram, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    """A user created on the broker only after Herald started: the retries pick it up."""
    username, password = f"late-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    setup = secure_setup(
        secure_kafka, smtp, tmp_path, username=username, password=password, ca=scram.ca
    )
    herald = UnreadyHerald(setup.path, env=setup.env)
    await herald.start(timeout=30)
    async with asyncio.timeout(30):
        while not kafka_errors(herald):
            await asyncio.sleep(0.05)
    assert (await herald.get("/readyz"))[0] == 503
    credential = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    upsert = UserScramCredentialUpsertion(username, credential, password.encode())
    for future in secure_kafka.admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    created = time.monotonic()
    await herald.wait_log("kafka connected", timeout=60)  # consumer and retry consumer up
    print(f"connected {time.monotonic() - created:.2f} s after the user was created")
    assert herald.logged("partitions assigned")
    assert (await herald.get("/readyz"))[0] == 200
    assert await herald.stop() == 0
    assert password not in herald.raw_output()
