"""compose.yaml and the Dockerfile, checked without a container engine (none runs here).

The structure that matters: every service has an image or a build and a health check,
Herald starts after its dependencies are healthy and the topics exist, and the
`HERALD_*` variables it is given are real config keys that point at those services.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import ConfigError, load_config
from service.kafka.topics import Cluster, plan_topics

ROOT = Path(__file__).resolve().parent.parent
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")
# What an operator exports before `docker compose up` (compose.yaml's `${VAR:?}`).
SHELL = {"HERALD_HTTP_TOKEN": "compose-test-token"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` and `${VAR:?error}` (and `$$` for a literal `$`)."""

    def sub(m: re.Match[str]) -> str:
        if m[2] == "?" and not environ.get(m[1]):
            raise ValueError(f"required variable {m[1]} is missing a value: {m[3]}")
        return environ.get(m[1]) or (m[3] if m[2] == "-" else "") or ""

    return _VAR.sub(sub, value).replace("$$", "$")


def environment(service: dict[str, Any], shell: dict[str, str] = SHELL) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v), shell) for k, v in env.items()}


def test_every_service_has_an_image_or_a_build(services: dict[str, Any]) -> None:
    assert set(services) >= {"kafka", "kafka-init", "mailpit", "redis", "herald"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")
    assert services["herald"]["build"] == "."


def test_long_running_services_have_health_checks(services: dict[str, Any]) -> None:
    for name in ("kafka", "mailpit", "redis", "herald"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "/readyz" in " ".join(services["herald"]["healthcheck"]["test"])


def test_kafka_is_a_single_kraft_node(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["CLUSTER_ID"]


def test_herald_waits_for_healthy_dependencies(services: dict[str, Any]) -> None:
    depends = services["herald"]["depends_on"]
    for name in ("kafka", "mailpit", "redis"):
        assert depends[name] == {"condition": "service_healthy"}, name
    assert depends["kafka-init"] == {"condition": "service_completed_successfully"}
    assert services["kafka-init"]["depends_on"]["kafka"] == {"condition": "service_healthy"}


def test_herald_environment_is_real_config_pointing_at_the_services(
    services: dict[str, Any],
) -> None:
    env = environment(services["herald"])
    config = load_config(ROOT / "config" / "herald.yaml", environ=env)  # unknown keys fail
    assert config.kafka.bootstrap_servers == "kafka:9092"
    assert (config.smtp.host, config.smtp.port) == ("mailpit", 1025)
    assert (config.dedupe.backend, config.dedupe.url) == ("redis", "redis://redis:6379/0")
    assert (config.http.host, config.http.port) == ("0.0.0.0", 8080)
    assert config.http.token.get_secret_value() == SHELL["HERALD_HTTP_TOKEN"]
    assert "8080:8080" in services["herald"]["ports"]
    assert "1025:1025" in services["mailpit"]["ports"]
    assert "8025:8025" in services["mailpit"]["ports"]


def test_herald_webhook_token_comes_from_the_environment_and_is_required(
    services: dict[str, Any],
) -> None:
    """Herald listens on 0.0.0.0, so compose refuses to start it without a token."""
    with pytest.raises(ValueError, match="HERALD_HTTP_TOKEN"):
        environment(services["herald"], shell={})
    assert environment(services["kafka-init"], shell={})  # the one-shot needs none
    env = environment(services["herald"])
    assert env["HERALD_HTTP__TOKEN"] == SHELL["HERALD_HTTP_TOKEN"]
    del env["HERALD_HTTP__TOKEN"]
    with pytest.raises(ConfigError) as exc:
        load_config(ROOT / "config" / "herald.yaml", environ=env)  # 0.0.0.0, no token
    path = ROOT / "config" / "herald.yaml"
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "token:" in text)
    assert str(exc.value).splitlines() == [
        f"{path}:{line}: http.token: required when http.host is not a loopback address"
    ]


def test_kafka_init_runs_herald_topics_create_against_the_broker(
    services: dict[str, Any],
) -> None:
    init = services["kafka-init"]
    assert (init["build"], init["image"]) == (".", services["herald"]["image"])
    assert init["command"][:2] == ["topics", "create"]
    assert "--dry-run" not in init["command"]
    assert init["restart"] == "no"
    config = load_config(ROOT / "config" / "herald.yaml", environ=environment(init))
    assert config.kafka.bootstrap_servers == "kafka:9092"


def test_kafka_init_plans_every_topic_herald_uses(services: dict[str, Any]) -> None:
    config = load_config(ROOT / "config" / "herald.yaml", environ=environment(services["herald"]))
    init = load_config(ROOT / "config" / "herald.yaml", environ=environment(services["kafka-init"]))
    planned = {t.name for t in plan_topics(init.kafka, init.retry, Cluster({}, brokers=1))}
    k = config.kafka
    wanted = {
        *k.topics,
        *(t + k.dlq_suffix for t in k.topics),
        *(t + k.retry_suffix for t in k.topics),
        k.commands_topic,
        k.decisions_topic,
        k.status_topic,
    }
    assert planned == wanted - {None}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line, continuations joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_a_non_root_herald_run_image() -> None:
    steps = dockerfile()
    kinds = [kind for kind, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(kind == "RUN" and "pip install ." in args for kind, args in steps)
    copied = " ".join(args for kind, args in steps if kind == "COPY")
    for path in ("service", "templates", "config", "examples", "pyproject.toml"):
        assert path in copied, path
    entrypoint = dict(steps)["ENTRYPOINT"]
    assert (yaml.safe_load(entrypoint), yaml.safe_load(dict(steps)["CMD"])) == (["herald"], ["run"])
    health = dict(steps)["HEALTHCHECK"]
    assert "/healthz" in health and "curl" not in health
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")


def test_dockerignore_keeps_what_the_image_needs() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var"} <= ignored
    for needed in ("service", "templates", "config", "examples", "pyproject.toml", "README.md"):
        assert needed not in ignored, needed
