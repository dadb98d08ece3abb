"""The peer: the email consumer the FastStream, Jinja2 and aiosmtplib docs lead to.

    python -m bench.peer --bootstrap HOST:PORT --topic T --group G --smtp HOST:PORT

A `KafkaBroker` subscriber handles one message at a time: it renders the shipped
`password_changed` templates (compiled once, cached by the Jinja2 `Environment`),
builds a stdlib `EmailMessage` (`set_content` + `add_alternative`) and awaits
`aiosmtplib.send(...)`, which opens one SMTP connection per email. No dedupe store, no
retries, no dead letters: it does less than Herald and is the baseline Herald is
measured against (PERF.md: 190-300 emails/s on these machines).
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from faststream import FastStream
from faststream.kafka import KafkaBroker
from jinja2 import Environment, FileSystemLoader, select_autoescape

__all__ = ["build_app", "main"]

SENDER = Address("Example", addr_spec="no-reply@example.com")
TEMPLATE = "password_changed"
SECRETS = {"SUPPORT_URL": "https://example.com/support"}


def _datetime(value: Any, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """The `datetime` filter the shipped templates use."""
    return datetime.fromisoformat(str(value)).strftime(fmt) if value else ""


def _http_url(value: Any) -> str:
    """The `http_url` filter the shipped templates use."""
    url = str(value or "")
    return url if url.startswith(("https://", "http://")) else ""


def make_environment(templates: Path) -> Environment:
    """A Jinja2 environment over `templates/`, with HTML autoescaping."""
    env = Environment(
        loader=FileSystemLoader(templates),
        autoescape=select_autoescape(("html.j2",)),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(datetime=_datetime, http_url=_http_url)
    return env


def render(env: Environment, event: dict[str, Any]) -> tuple[str, str, str]:
    """Subject, text and HTML for `event`, in German when the user's locale says so."""
    user = event["data"]["user"]
    folder = f"{TEMPLATE}/de" if str(user.get("locale", "")).startswith("de") else TEMPLATE
    context = {"event": {**event, **event["data"]}, "user": user, "secrets": SECRETS}
    parts = [
        env.get_template(f"{folder}/{name}").render(context)
        for name in ("subject.txt.j2", "text.txt.j2", "html.html.j2")
    ]
    return parts[0].strip(), parts[1], parts[2]


def build_app(args: argparse.Namespace) -> FastStream:
    """The FastStream app: one subscriber, one email per event."""
    broker = KafkaBroker(args.bootstrap)
    env = make_environment(Path(args.templates))
    host, _, port = args.smtp.rpartition(":")

    @broker.subscriber(args.topic, group_id=args.group, auto_offset_reset="earliest")
    async def on_event(event: dict[str, Any]) -> None:
        if event.get("type") != "identity.user.password_changed":
            return
        subject, text, html = render(env, event)
        user = event["data"]["user"]
        msg = EmailMessage()
        msg["From"] = SENDER
        msg["To"] = Address(user.get("name", ""), addr_spec=user["email"])
        msg["Subject"] = subject
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        await aiosmtplib.send(msg, hostname=host, port=int(port))

    return FastStream(broker)


def main() -> None:
    """Run the peer until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--smtp", required=True, help="HOST:PORT")
    parser.add_argument("--templates", default="templates")
    args = parser.parse_args()
    asyncio.run(build_app(args).run())


if __name__ == "__main__":
    main()
