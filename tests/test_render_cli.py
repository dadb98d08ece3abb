"""`herald render TEMPLATE --event FILE [--locale L]`: the complete MIME message, or one line."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

import orjson
import pytest
import yaml

from service.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "events" / "post-change-password.json"
FIXTURES = Path(__file__).parent / "fixtures"


def write_config(tmp_path: Path, fmt: str = "cloudevents") -> Path:
    path = tmp_path / "herald.yaml"
    doc = {
        "kafka": {"format": fmt},
        "smtp": {"from": "Security <security@herald.test>"},
        "templates_dir": str(ROOT / "templates"),
        "secrets": {"SUPPORT_URL": "https://support.herald.test/"},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def render(
    capsys: pytest.CaptureFixture[str], config: Path, *args: str
) -> tuple[EmailMessage, str]:
    main(["--config", str(config), "render", *args])
    out = capsys.readouterr().out
    message = email.message_from_bytes(out.encode(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message, out


def fail(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "render", *args])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


def test_prints_headers_and_every_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    message, out = render(capsys, config, "password_changed", "--event", str(EXAMPLE))
    assert message["From"] == "Security <security@herald.test>"
    assert message["To"] == "Emmy Noether <emmy.noether@example.com>"
    assert "geändert" in message["Subject"]  # the event's locale: de
    assert message["X-Herald-Event-Id"] == "evt-demo-0003-password-changed"
    assert message["X-Herald-Template"] == "password_changed"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@herald.test>")
    assert message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    text = message.get_body(("plain",))
    assert text is not None and "Emmy" in text.get_content()
    assert "\r" not in out  # terminal line ends


def test_locale_option_overrides_the_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message, _ = render(
        capsys,
        write_config(tmp_path),
        "password_changed",
        "--event",
        str(EXAMPLE),
        "--locale",
        "en",
    )
    assert "password" in message["Subject"].lower()


def test_event_without_address_gets_a_placeholder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event = orjson.loads(EXAMPLE.read_bytes())
    del event["data"]["user"]["email"]
    path = tmp_path / "event.json"
    path.write_bytes(orjson.dumps(event))
    message, _ = render(capsys, write_config(tmp_path), "password_changed", "--event", str(path))
    assert "recipient@example.invalid" in message["To"]


def test_provider_event_in_the_configured_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, fmt="keycloak")
    event = FIXTURES / "keycloak" / "register.json"
    message, _ = render(capsys, config, "welcome", "--event", str(event))
    assert message["To"] == "grace.hopper@example.com"
    assert message["X-Herald-Event-Id"] == "0f6b2c1e-8d4a-4b9e-9c3f-2a7d5e1b6c90"


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fail(capsys, write_config(tmp_path), "welcome", "--event", str(tmp_path / "nope.json"))
    assert "nope.json: file not found" in err


def test_invalid_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"specversion": "1.0",')
    err = fail(capsys, write_config(tmp_path), "welcome", "--event", str(path))
    assert "broken.json: not valid JSON" in err


def test_invalid_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    event = orjson.loads(EXAMPLE.read_bytes())
    del event["data"]["user"]["user_id"]
    path = tmp_path / "event.json"
    path.write_bytes(orjson.dumps(event))
    err = fail(capsys, write_config(tmp_path), "welcome", "--event", str(path))
    assert "not a valid event" in err and "data.user.user_id" in err


def test_unknown_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fail(capsys, write_config(tmp_path), "no_such_template", "--event", str(EXAMPLE))
    assert "unknown template 'no_such_template'" in err


def test_event_type_without_trigger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "event.json"
    path.write_bytes(orjson.dumps({**orjson.loads(EXAMPLE.read_bytes()), "type": "x.other"}))
    err = fail(capsys, write_config(tmp_path), "welcome", "--event", str(path))
    assert "no trigger" in err
