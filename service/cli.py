"""`herald` command line (SPEC §3). Every failure is one human line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from service.config import Config, ConfigError, load_config, resolve_config_path

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herald", description=__doc__)
    parser.add_argument(
        "--config", help="config file (default: $HERALD_CONFIG or config/herald.yaml)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="consume events and run their flows (production)")
    run.set_defaults(func=_run)
    dev = commands.add_parser("dev", help="embedded broker + capture SMTP server + Herald")
    dev.add_argument("--no-demo", action="store_true", help="do not publish the example events")
    dev.add_argument("--outbox", default="var/outbox", help="where captured .eml files go")
    dev.set_defaults(func=_dev)
    check = commands.add_parser("check", help="validate config and templates, connect to nothing")
    check.set_defaults(func=_check)
    publish = commands.add_parser("publish", help="produce events from JSON files to Kafka")
    publish.add_argument("files", nargs="+", metavar="FILE")
    publish.add_argument("--topic", help="topic (default: the first of kafka.topics)")
    publish.set_defaults(func=_publish)
    return parser


def _load(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(args.config, os.environ))


def _run(args: argparse.Namespace) -> None:
    from service.app import Herald
    from service.logs import setup_logging

    path = resolve_config_path(args.config, os.environ)
    config = load_config(path)
    _fail_on_problems(config)
    setup_logging(config.log.level, config.log.show_addresses)
    asyncio.run(_serve(Herald(config), path))


def _fail_on_problems(config: Config) -> None:
    """Startup runs the same validation as `herald check`."""
    from service.checks import check_config

    problems = check_config(config)
    if problems:
        raise ConfigError(problems)


async def _serve(herald: object, path: Path) -> None:
    from service.app import Herald

    assert isinstance(herald, Herald)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, herald.reload, path)
    await _start(herald)
    try:
        await stop.wait()
    finally:
        await herald.stop()


async def _start(herald: object) -> None:
    """Start Herald, turning connection failures into one line."""
    from aiokafka.errors import KafkaConnectionError

    from service.app import Herald

    assert isinstance(herald, Herald)
    try:
        await herald.start()
    except KafkaConnectionError:
        await herald.stop()
        servers = herald.config.kafka.bootstrap_servers
        raise CliError(f"cannot reach Kafka at {servers}") from None
    except Exception as exc:
        await herald.stop()
        raise CliError(f"cannot start: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _dev(args: argparse.Namespace) -> None:
    from service.devtools.dev import run_dev

    config = _load(args)
    asyncio.run(run_dev(config, outbox=Path(args.outbox), demo=not args.no_demo))


def _check(args: argparse.Namespace) -> None:
    from service.checks import check_config

    config = _load(args)
    problems = check_config(config)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_INVALID)
    print(f"{resolve_config_path(args.config, os.environ)}: ok")


def _publish(args: argparse.Namespace) -> None:
    from service.publish import publish_files

    config = _load(args)
    topic = args.topic or config.kafka.topics[0]
    try:
        count = asyncio.run(publish_files(config.kafka, topic, [Path(f) for f in args.files]))
    except (OSError, ValueError) as exc:
        raise CliError(_describe(exc)) from None
    print(f"published {count} event(s) to {topic}")
