"""The command line as operators write it: `--config` before or after any command
(README: Command line), and Kubernetes' `HERALD_*` service variables beside Herald's own
(README: Configuration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from tests.harness import KUBERNETES, HeraldProcess, config_file, make_config, unique

ROOT = Path(__file__).resolve().parent.parent


def herald(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` in `cwd`, with none of the caller's HERALD_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("HERALD_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


def write(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A valid config, `herald.yaml`, with one template, and `event.json`."""
    (tmp_path / "templates/hello").mkdir(parents=True)
    (tmp_path / "templates/hello/subject.txt.j2").write_text("Hello {{ user.name }}\n")
    (tmp_path / "templates/hello/text.txt.j2").write_text("Hi {{ user.name }}\n")
    flows = {"post-login": [{"action": "send_email", "template": "hello"}]}
    write(tmp_path / "herald.yaml", {"flows": flows})
    event = json.loads((ROOT / "examples/events/post-login.json").read_text())
    (tmp_path / "event.json").write_text(json.dumps(event))
    return tmp_path


# --- --config before or after the command -----------------------------------------------


COMMANDS = [
    ["run"],
    ["check"],
    ["dev"],
    ["render", "hello", "--event", "event.json"],
    ["preview"],
    ["publish", "event.json"],
    ["dlq", "replay", "--dry-run"],
    ["topics", "create", "--dry-run"],
    ["asyncapi"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_config_after_the_command_is_the_one_read(tmp_path: Path, command: list[str]) -> None:
    # A file that does not exist shows which path the command took, before any connection.
    result = herald(tmp_path, *command, "--config", "after.yaml")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "after.yaml: config file not found\n"


@pytest.mark.parametrize("command", [["check"], ["dlq", "replay"], ["topics", "create"]])
def test_config_before_the_command_is_the_one_read(tmp_path: Path, command: list[str]) -> None:
    result = herald(tmp_path, "--config", "before.yaml", *command)
    assert (result.returncode, result.stderr) == (2, "before.yaml: config file not found\n")


def test_config_between_command_and_subcommand(tmp_path: Path) -> None:
    result = herald(tmp_path, "dlq", "--config", "between.yaml", "replay", "--dry-run")
    assert (result.returncode, result.stderr) == (2, "between.yaml: config file not found\n")


def test_the_last_config_given_wins_and_an_earlier_one_is_kept(work: Path) -> None:
    assert herald(work, "--config", "nowhere.yaml", "check", "--config", "herald.yaml").stdout == (
        "herald.yaml: ok\n"
    )
    assert herald(work, "--config", "herald.yaml", "check").stdout == "herald.yaml: ok\n"
    result = herald(work, "check", "--config", "herald.yaml")
    assert (result.returncode, result.stdout, result.stderr) == (0, "herald.yaml: ok\n", "")


def test_render_with_config_in_either_place(work: Path) -> None:
    before = herald(work, "--config", "herald.yaml", "render", "hello", "--event", "event.json")
    after = herald(work, "render", "hello", "--event", "event.json", "--config", "herald.yaml")
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert "Subject: Hello" in after.stdout
    # Date and Message-ID differ from one run to the next; the rest does not.
    assert before.stdout.splitlines()[-3:] == after.stdout.splitlines()[-3:]


@pytest.mark.integration
def test_dlq_replay_with_config_in_either_place(kafka: EmbeddedKafka, tmp_path: Path) -> None:
    topic = unique("events")
    kafka.create_topic(topic, 1)
    kafka.create_topic(f"{topic}.dlq", 1)
    write(
        tmp_path / "herald.yaml",
        {"kafka": {"bootstrap_servers": kafka.bootstrap, "topics": [topic]}},
    )
    expected = f"dry run: would replay 0 dead letter(s) from {topic}.dlq\n"
    for args in (
        ("--config", "herald.yaml", "dlq", "replay", "--dry-run"),
        ("dlq", "replay", "--dry-run", "--config", "herald.yaml"),
    ):
        result = herald(tmp_path, *args)
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, ""), args


# --- HERALD_* names that are not Herald's -------------------------------------------------


def test_check_ignores_kubernetes_service_variables(work: Path) -> None:
    result = herald(work, "check", "--config", "herald.yaml", env=KUBERNETES)
    assert (result.returncode, result.stdout, result.stderr) == (0, "herald.yaml: ok\n", "")


def test_a_misspelt_override_meant_for_herald_is_still_an_error(work: Path) -> None:
    env = {**KUBERNETES, "HERALD_KAFKA__NOPE": "x"}
    result = herald(work, "check", "--config", "herald.yaml", env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "HERALD_KAFKA__NOPE: unknown key 'nope' in section 'kafka'\n"


@pytest.mark.integration
async def test_run_starts_with_kubernetes_service_variables(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    path = config_file(make_config(kafka, smtp, tmp_path), tmp_path / "herald.yaml")
    process = HeraldProcess(path, env=KUBERNETES)
    await process.start()  # waits for "partitions assigned"
    assert await process.stop() == 0
