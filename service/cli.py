"""`herald` command line (SPEC §3). Every failure is one human line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from service.config import Config, ConfigError, load_config, resolve_config_path

if TYPE_CHECKING:  # the heavy imports wait until a command needs them
    from service.app import Herald

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_INVALID = 2


class CliError(Exception):
    """A failure to report as one line (exit code `code`)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


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
    """`--config` after a command or subcommand too (SPEC §3); the last one given wins.

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
    run.set_defaults(func=_run)
    dev = commands.add_parser("dev", help="embedded broker + capture SMTP server + Herald")
    dev.add_argument("--no-demo", action="store_true", help="do not publish the example events")
    dev.add_argument("--outbox", default="var/outbox", help="where captured .eml files go")
    dev.set_defaults(func=_dev)
    check = commands.add_parser("check", help="validate config and templates, connect to nothing")
    check.set_defaults(func=_check)
    preview = commands.add_parser("preview", help="web page: every template rendered, live")
    preview.add_argument("--port", type=int, default=8025, help="port (default: 8025)")
    preview.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    preview.add_argument("--events", default="examples/events", help="sample events directory")
    preview.set_defaults(func=_preview)
    publish = commands.add_parser("publish", help="produce events from JSON files to Kafka")
    publish.add_argument("files", nargs="+", metavar="FILE")
    publish.add_argument("--topic", help="topic (default: the first of kafka.topics)")
    publish.set_defaults(func=_publish)
    _add_operator_commands(commands)
    return parser


def _add_operator_commands(commands: argparse._SubParsersAction[_CommandParser]) -> None:
    """`render`, `dlq replay`, `topics create` and `asyncapi`."""
    render = commands.add_parser("render", help="print the MIME message a template makes")
    render.add_argument("template", metavar="TEMPLATE")
    render.add_argument("--event", required=True, metavar="FILE", help="event JSON file")
    render.add_argument("--locale", help="locale (default: the event's data.user.locale)")
    render.set_defaults(func=_render)
    dlq = commands.add_parser("dlq", help="dead-letter tools")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    replay = dlq_commands.add_parser("replay", help="re-publish dead letters to their topic")
    replay.add_argument(
        "--topic", help="input topic whose DLQ to replay (default: the first of kafka.topics)"
    )
    replay.add_argument("--limit", type=_positive, metavar="N", help="stop after N")
    replay.add_argument("--dry-run", action="store_true", help="list, produce nothing")
    replay.set_defaults(func=_dlq_replay)
    _add_topics_command(commands)
    _add_delivery_commands(commands)
    asyncapi = commands.add_parser("asyncapi", help="print the AsyncAPI document (JSON)")
    asyncapi.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    asyncapi.set_defaults(func=_asyncapi)


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
    create.set_defaults(func=_topics_create)


def _add_delivery_commands(commands: argparse._SubParsersAction[_CommandParser]) -> None:
    """`messages` and `resend`."""
    messages = commands.add_parser("messages", help="delivery records: did the email go out?")
    messages.add_argument("--event", metavar="ID", help="of this event id")
    messages.add_argument("--user", metavar="USER_ID", help="of this user id")
    messages.add_argument("--to", metavar="ADDRESS", help="to this (full) address")
    messages.add_argument("--limit", type=_positive, default=50, metavar="N", help="(50)")
    messages.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    messages.set_defaults(func=_messages)
    resend = commands.add_parser("resend", help="send an event's email again, on purpose")
    resend.add_argument("event_id", metavar="EVENT_ID")
    resend.add_argument("--action", metavar="ID", help="only this action's email")
    resend.set_defaults(func=_resend)


def _messages(args: argparse.Namespace) -> None:
    from service.messages import MessagesError, find_messages, table

    config = _load(args)
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


def _resend(args: argparse.Namespace) -> None:
    from service.messages import MessagesError, resend

    config = _load(args)
    _quiet_kafka_client()
    try:
        lines = asyncio.run(resend(config, args.event_id, args.action))
    except MessagesError as exc:
        raise CliError(str(exc)) from None
    except (ConnectionError, LookupError) as exc:
        raise CliError(_describe(exc)) from None
    for line in lines:
        print(line)
    if any(line.startswith("not resent") for line in lines):
        raise SystemExit(1)


def _positive(value: str) -> int:
    number = int(value) if value.isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def _load(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(args.config, os.environ))


def _run(args: argparse.Namespace) -> None:
    from service.app import Herald
    from service.logs import setup_logging

    path = resolve_config_path(args.config, os.environ)
    config = _load_checked(path)
    setup_logging(config.log.level, config.log.show_addresses)
    asyncio.run(_serve(Herald(config), path))
    _exit_despite_handler_threads()


def _exit_despite_handler_threads() -> None:
    """Herald stopped cleanly; a sync python handler still blocking in its thread (past
    its timeout) would hold the interpreter's exit forever: exit without it."""
    from service.python_actions import handler_threads_busy

    busy = handler_threads_busy()
    if busy:
        logging.getLogger("herald").warning(
            "exiting while python handlers still run in their threads", extra={"threads": busy}
        )
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)


def _load_checked(path: Path) -> Config:
    """Startup runs the same validation as `herald check`."""
    from service.checks import check_file

    return check_file(path, os.environ)


async def _serve(herald: Herald, path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, herald.reload, path)
    # Herald.start waits for Kafka as long as it takes; a signal may end that wait.
    starting = asyncio.create_task(_start(herald))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failure to start: its one line
            await stopping
    finally:
        for task in (starting, stopping):
            task.cancel()
        await asyncio.wait({starting, stopping})  # a cancelled start closes what it opened
        await herald.stop()


async def _start(herald: Herald) -> None:
    """Start Herald, turning a failure to open a resource into one line."""
    try:
        await herald.start()
    except Exception as exc:
        raise CliError(f"cannot start: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _dev(args: argparse.Namespace) -> None:
    from service.devtools.dev import run_dev

    config = _load(args)
    asyncio.run(run_dev(config, outbox=Path(args.outbox), demo=not args.no_demo))


def _check(args: argparse.Namespace) -> None:
    """Exit 2 with one `path:line: message` line per problem on stderr, else print `ok`."""
    path = resolve_config_path(args.config, os.environ)
    _load_checked(path)
    print(f"{path}: ok")


def _preview(args: argparse.Namespace) -> None:
    from service.preview import serve_preview

    config = _load(args)
    events = Path(args.events)
    try:
        asyncio.run(serve_preview(config, host=args.host, port=args.port, events_dir=events))
    except OSError as exc:  # the port is taken, or the address is not ours
        reason = os.strerror(exc.errno).lower() if exc.errno else _describe(exc)
        raise CliError(f"cannot serve the preview on {args.host}:{args.port}: {reason}") from None


def _publish(args: argparse.Namespace) -> None:
    from service.kafka.publish import publish_files

    config = _load(args)
    topic = args.topic or config.kafka.topics[0]
    _quiet_kafka_client()
    try:
        count = asyncio.run(publish_files(config.kafka, topic, [Path(f) for f in args.files]))
    except (OSError, ValueError) as exc:
        raise CliError(_describe(exc)) from None
    print(f"published {count} event(s) to {topic}")


def _render(args: argparse.Namespace) -> None:
    from service.render_event import RenderError, render_event

    config = _load(args)
    try:
        data = render_event(config, args.template, Path(args.event), args.locale)
    except RenderError as exc:
        raise CliError(str(exc)) from None
    # The wire form, CRLF line ends turned into the terminal's.
    sys.stdout.write(data.decode("utf-8", errors="replace").replace("\r\n", "\n"))


def _quiet_kafka_client() -> None:
    """aiokafka logs connection failures itself; the command reports them in one line."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _dlq_replay(args: argparse.Namespace) -> None:
    from service.kafka.dlq import dlq_topic_for, replay

    config = _load(args)
    _quiet_kafka_client()
    topic = dlq_topic_for(config.kafka, args.topic)
    try:
        result = asyncio.run(
            replay(
                config.kafka,
                topic,
                limit=args.limit,
                dry_run=args.dry_run,
                emit=lambda line: print(line, flush=True),
                show_addresses=config.log.show_addresses,
            )
        )
    except (ConnectionError, LookupError) as exc:
        raise CliError(_describe(exc)) from None
    skipped = f", {result.skipped} skipped (no original topic)" if result.skipped else ""
    if args.dry_run:
        print(f"dry run: would replay {result.replayed} dead letter(s) from {topic}{skipped}")
    else:
        print(f"replayed {result.replayed} dead letter(s) from {topic}{skipped}")


def _topics_create(args: argparse.Namespace) -> None:
    """One line per topic; a topic that could not be created makes the exit non-zero.

    The embedded broker of `herald dev` cannot create topics: that exits 1 too, since the
    topics asked for (with their settings) were not made, and a script that runs this
    before `herald run` should stop at a broker that is not the one it meant.
    """
    from service.kafka.topics import Status, TopicsError, create_topics

    config = _load(args)
    _quiet_kafka_client()
    try:
        outcomes = asyncio.run(
            create_topics(
                config.kafka,
                config.retry,
                partitions=args.partitions,
                replication_factor=args.replication_factor,
                dry_run=args.dry_run,
            )
        )
    except TopicsError as exc:
        raise CliError(str(exc)) from None
    failed: dict[str, list[str]] = {}  # one line per reason: RF 3 on one broker fails all
    for outcome in outcomes:
        if outcome.status is Status.FAILED:
            failed.setdefault(outcome.error, []).append(outcome.spec.name)
        else:
            print(outcome.line())
    lines = [f"cannot create {', '.join(names)}: {error}" for error, names in failed.items()]
    for line in lines[:-1]:
        print(f"herald: {line}", file=sys.stderr)
    if lines:
        raise CliError(lines[-1])


def _asyncapi(args: argparse.Namespace) -> None:
    from service.kafka.asyncapi import render_document

    text = render_document(_load(args))
    if not args.output:
        sys.stdout.write(text)
        return
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{args.output}: cannot write: {exc.strerror}") from None
    print(f"wrote {args.output}")
