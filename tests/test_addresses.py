"""The one address rule: `herald check`, the mailer, the SMTP envelope and the parsers
accept exactly the same addresses, and an invalid one is refused, never repaired."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import orjson
import pytest

from service.addresses import InvalidAddress, is_valid_address, mask_address, parse_mailbox
from service.config import ConfigError, parse_config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.formats._common import email_or_none
from service.logs import mask_addresses
from service.mail.smtp_session import Envelope
from tests.harness import ROOT, Kafka, load_example, make_config, running

VALID = [
    "ada@example.com",
    "a.b+tag@sub.example.co.uk",
    "o'brien@example.com",
    "x@localhost",
    "1@2.example",
    "a-b@x-y.example",
    "!#$%&'*+/=?^_`{|}~-@example.com",
    "l" * 64 + "@example.com",
]
INVALID = [
    "ops@mail_relay.example.com",  # underscore in a domain label
    "ops@example.com.",  # trailing dot
    "u@exa mple.com",  # whitespace: never "repaired" to u@example.com
    " ada@example.com",
    "ada@example.com ",
    '"a b"@example.com',  # quoted local parts are not accepted
    '"ada"@example.com',
    "ada",  # no @
    "@example.com",
    "ada@",
    "a@b@example.com",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "a@example..com",
    "a@.example.com",
    "a@-example.com",
    "a@example-.com",
    "a@[192.0.2.1]",
    "a(comment)@example.com",
    "a@exa(comment)mple.com",
    "a,b@example.com",
    "ada@exämple.com",  # non-ASCII: would need SMTPUTF8
    "adä@example.com",
    "a\r\nBcc: x@example.com",
    "a@example.com\n",
    "a\x00@example.com",
    "l" * 65 + "@example.com",
    "a@" + "l" * 64 + ".com",
    "a@" + ".".join(["l" * 63] * 4) + ".com",  # over 254 characters
    "",
]


@pytest.mark.parametrize("address", VALID)
def test_valid_addresses(address: str) -> None:
    assert is_valid_address(address)
    assert parse_mailbox(address).address == address
    assert parse_mailbox(f"Some One <{address}>").address == address
    assert email_or_none(address) == address


@pytest.mark.parametrize("address", INVALID)
def test_invalid_addresses_are_refused_everywhere(address: str) -> None:
    assert not is_valid_address(address)
    with pytest.raises(InvalidAddress):
        parse_mailbox(address)
    with pytest.raises(InvalidAddress):
        parse_mailbox(f"Some One <{address}>")
    with pytest.raises(ValueError, match="invalid address"):
        Envelope.of(address, ["ada@example.com"])
    assert email_or_none(address) is None


@pytest.mark.parametrize(
    "value",
    [
        "Ada <u@exa mple.com>",
        "Ada <ada@example.com> trailing",
        "Ada <ada@example.com>, bob@example.com",
        "ada@example.com bob@example.com",
        "Ada <ada @example.com>",
        "Ada ada@example.com",
        "<>",
    ],
)
def test_mailboxes_that_parsing_would_repair_are_refused(value: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_mailbox(value)


def test_display_names() -> None:
    assert parse_mailbox('"Lovelace, Ada" <ada@example.com>').name == "Lovelace, Ada"
    assert parse_mailbox("  Ada Lovelace <ada@example.com>  ").name == "Ada Lovelace"
    assert parse_mailbox("ada@example.com", "Ada\r\nBcc: x").name == "Ada Bcc: x"


def test_one_masker() -> None:
    assert mask_address("ada@example.com") == "a***@example.com"
    assert mask_address("no address") == "***"


# --- config validation refuses exactly what the mailer refuses ------------------------


def _config(sender: str, reply_to: str) -> str:
    return dedent(f"""\
        smtp:
          from: {orjson.dumps(sender).decode()}
        flows:
          post-login:
            - action: send_email
              template: hello
              from: {orjson.dumps(sender).decode()}
              reply_to: {orjson.dumps(reply_to).decode()}
        """)


@pytest.mark.parametrize("address", VALID + INVALID)
def test_config_accepts_exactly_what_the_mailer_accepts(address: str) -> None:
    if "\n" in address or "\r" in address or "\x00" in address:
        pytest.skip("not representable as one YAML scalar line")
    try:
        parse_config(_config(address, address), "herald.yaml", environ={})
        accepted = True
    except ConfigError as exc:
        assert "not one valid email address" in str(exc)
        accepted = False
    assert accepted == is_valid_address(address)


def _check(tmp_path: Path, action_from: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "templates/hello").mkdir(parents=True)
    (tmp_path / "templates/hello/subject.txt.j2").write_text("Hello\n")
    (tmp_path / "templates/hello/text.txt.j2").write_text("Hi\n")
    (tmp_path / "herald.yaml").write_text(
        "templates_dir: templates\n"
        "flows:\n"
        "  post-login:\n"
        "    - action: send_email\n"
        "      template: hello\n"
        f"      from: {action_from}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HERALD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "service", "--config", "herald.yaml", "check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("action_from", ["Ops <ops@mail_relay.example.com>", "ops@example.com."])
def test_herald_check_refuses_an_address_the_mailer_refuses(
    tmp_path: Path, action_from: str
) -> None:
    result = _check(tmp_path, action_from)
    assert (result.returncode, result.stdout) == (2, "")
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("herald.yaml:6: flows.post-login[0].from: "), lines[0]
    assert "not one valid email address" in lines[0]


def test_herald_check_accepts_a_valid_action_from(tmp_path: Path) -> None:
    result = _check(tmp_path, "Ops <ops@mail-relay.example.com>")
    assert (result.returncode, result.stdout, result.stderr) == (0, "herald.yaml: ok\n", "")


# --- envelope attributes never shadow data ----------------------------------------------


@pytest.mark.integration
async def test_an_envelope_attribute_named_user_does_not_redirect_mail(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    event = load_example("post-change-password", email="ada@herald.test", locale="en")
    event["user"] = {"email": "mallory@evil.test", "name": "Mallory"}
    async with running(config):
        await client.send(config.kafka.topics[0], event)
        [received] = await smtp.wait_for(1)
    assert received.rcpt_tos == ["ada@herald.test"]
    assert "mallory" not in received.message.as_string().lower()


def test_addresses_in_free_text_are_masked_as_mask_address_masks_one() -> None:
    reply = "550 5.1.1 <ada.lovelace@example.com>: unknown user; cc grace@mail.example.org"
    expected = (
        f"550 5.1.1 <{mask_address('ada.lovelace@example.com')}>: unknown user; "
        f"cc {mask_address('grace@mail.example.org')}"
    )
    assert (
        mask_addresses(reply)
        == expected
        == ("550 5.1.1 <a***@example.com>: unknown user; cc g***@mail.example.org")
    )
