"""`herald` command line: its arguments and `main` (README "Command line"). Every failure
is one human line and a non-zero exit; the subcommands are in `service.commands`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from service.commands import deliveries, kafka_tools, serve
from service.commands.common import EXIT_INVALID, CliError
from service.config import ConfigError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `herald` console script and `python -m service`."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from None
    except CliError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


_CONFIG_HELP = "config file (default: $HERALD_CONFIG or config/herald.yaml)"


def _config_parent() -> argparse.ArgumentParser:
    """`--config` after a command or subcommand too (README "Command line"); the last
    one given wins.

    SUPPRESS sets nothing when it is absent, so a subcommand without it keeps the value
    given before it.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)
    return parent


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: takes `--config`; its subcommands' parsers are of this class too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs, parents=[_config_parent()])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald",
        description="Herald runs Auth0-style Actions (email, metadata, allow / deny / redirect)"
        " on identity events from Kafka.",
    )
    parser.add_argument("--config", help=_CONFIG_HELP)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )
    run = commands.add_parser("run", help="consume events and run their flows (production)")
    run.set_defaults(func=serve.run)
    dev = commands.add_parser("dev", help="embedded broker + capture SMTP server + Herald")
    dev.add_argument("--no-demo", action="store_true", help="do not publish the example events")
    dev.add_argument("--outbox", default="var/outbox", help="where captured .eml files go")
    dev.set_defaults(func=serve.dev)
    check = commands.add_parser("check", help="validate config and templates, connect to nothing")
    check.set_defaults(func=serve.check)
    preview = commands.add_parser("preview", help="web page: every template rendered, live")
    preview.add_argument("--port", type=int, default=8025, help="port (default: 8025)")
    preview.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    preview.add_argument("--events", default="examples/events", help="sample events directory")
    preview.set_defaults(func=serve.preview)
    publish = commands.add_parser("publish", help="produce events from JSON files to Kafka")
    publish.add_argument("files", nargs="+", metavar="FILE")
    publish.add_argument("--topic", help="topic (default: the first of kafka.topics)")
    publish.set_defaults(func=kafka_tools.publish)
    _add_operator_commands(commands)
    return parser


def _add_operator_commands(commands: argparse._SubParsersAction[_CommandParser]) -> None:
    """`render`, `dlq replay`, `topics create` and `asyncapi`."""
    render = commands.add_parser("render", help="print the MIME message a template makes")
    render.add_argument("template", metavar="TEMPLATE")
    render.add_argument("--event", required=True, metavar="FILE", help="event JSON file")
    render.add_argument("--locale", help="locale (default: the event's data.user.locale)")
    render.set_defaults(func=deliveries.render)
    dlq = commands.add_parser("dlq", help="dead-letter tools")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    replay = dlq_commands.add_parser("replay", help="re-publish dead letters to their topic")
    replay.add_argument(
        "--topic", help="input topic whose DLQ to replay (default: the first of kafka.topics)"
    )
    replay.add_argument("--limit", type=_positive, metavar="N", help="stop after N")
    replay.add_argument("--dry-run", action="store_true", help="list, produce nothing")
    replay.set_defaults(func=kafka_tools.dlq_replay)
    _add_topics_command(commands)
    _add_delivery_commands(commands)
    asyncapi = commands.add_parser("asyncapi", help="print the AsyncAPI document (JSON)")
    asyncapi.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    asyncapi.set_defaults(func=kafka_tools.asyncapi)


def _add_topics_command(commands: argparse._SubParsersAction[_CommandParser]) -> None:
    """`topics create`."""
    topics = commands.add_parser("topics", help="Kafka topic tools")
    topics_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="COMMAND")
    create = topics_commands.add_parser(
        "create", help="create the topics Herald writes, and missing input topics"
    )
    create.add_argument(
        "--partitions",
        type=_positive,
        metavar="N",
        help="for topics not sized by an input topic (default: the largest input, else 3)",
    )
    create.add_argument(
        "--replication-factor",
        type=_positive,
        metavar="R",
        help="replicas per partition (default: min(3, brokers))",
    )
    create.add_argument("--dry-run", action="store_true", help="list, create nothing")
    create.set_defaults(func=kafka_tools.topics_create)


def _add_delivery_commands(commands: argparse._SubParsersAction[_CommandParser]) -> None:
    """`messages` and `resend`."""
    messages = commands.add_parser("messages", help="delivery records: did the email go out?")
    messages.add_argument("--event", metavar="ID", help="of this event id")
    messages.add_argument("--user", metavar="USER_ID", help="of this user id")
    messages.add_argument("--to", metavar="ADDRESS", help="to this (full) address")
    messages.add_argument("--limit", type=_positive, default=50, metavar="N", help="(50)")
    messages.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    messages.set_defaults(func=deliveries.messages)
    resend = commands.add_parser("resend", help="send an event's email again, on purpose")
    resend.add_argument("event_id", metavar="EVENT_ID")
    resend.add_argument("--action", metavar="ID", help="only this action's email")
    resend.set_defaults(func=deliveries.resend)


def _positive(value: str) -> int:
    number = int(value) if value.isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number
