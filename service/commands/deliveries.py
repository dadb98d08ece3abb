"""`herald render`, `messages` and `resend`: the email Herald makes, and what became of it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from service.commands.common import CliError, describe, load, quiet_kafka_client

__all__ = ["messages", "render", "resend"]


def render(args: argparse.Namespace) -> None:
    from service.render_event import RenderError, render_event

    config = load(args)
    try:
        data = render_event(config, args.template, Path(args.event), args.locale)
    except RenderError as exc:
        raise CliError(str(exc)) from None
    # The wire form, CRLF line ends turned into the terminal's.
    sys.stdout.write(data.decode("utf-8", errors="replace").replace("\r\n", "\n"))


def messages(args: argparse.Namespace) -> None:
    from service.messages import MessagesError, find_messages, table

    config = load(args)
    try:
        found = asyncio.run(
            find_messages(
                config, event_id=args.event, user_id=args.user, to=args.to, limit=args.limit
            )
        )
    except MessagesError as exc:
        raise CliError(str(exc)) from None
    show = config.log.show_addresses
    if args.json:
        for delivery in found:
            print(orjson.dumps(delivery.public(show)).decode())
    else:
        print(table(found, show))


def resend(args: argparse.Namespace) -> None:
    from service.messages import MessagesError
    from service.messages import resend as resend_event

    config = load(args)
    quiet_kafka_client()
    try:
        lines = asyncio.run(resend_event(config, args.event_id, args.action))
    except MessagesError as exc:
        raise CliError(str(exc)) from None
    except (ConnectionError, LookupError) as exc:
        raise CliError(describe(exc)) from None
    for line in lines:
        print(line)
    if any(line.startswith("not resent") for line in lines):
        raise SystemExit(1)
