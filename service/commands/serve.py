"""`herald run`, `check`, `dev` and `preview`: Herald itself, validated or running."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.commands.common import CliError, describe, load
from service.config import Config, resolve_config_path

if TYPE_CHECKING:  # the heavy imports wait until a command needs them
    from service.app import Herald

__all__ = ["check", "dev", "preview", "run"]


def run(args: argparse.Namespace) -> None:
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
        raise CliError(f"cannot start: {describe(exc)}") from None


def dev(args: argparse.Namespace) -> None:
    from service.devtools.dev import run_dev

    config = load(args)
    asyncio.run(run_dev(config, outbox=Path(args.outbox), demo=not args.no_demo))


def check(args: argparse.Namespace) -> None:
    """Exit 2 with one `path:line: message` line per problem on stderr, else print `ok`."""
    path = resolve_config_path(args.config, os.environ)
    _load_checked(path)
    print(f"{path}: ok")


def preview(args: argparse.Namespace) -> None:
    from service.preview import serve_preview

    config = load(args)
    events = Path(args.events)
    try:
        asyncio.run(serve_preview(config, host=args.host, port=args.port, events_dir=events))
    except OSError as exc:  # the port is taken, or the address is not ours
        reason = os.strerror(exc.errno).lower() if exc.errno else describe(exc)
        raise CliError(f"cannot serve the preview on {args.host}:{args.port}: {reason}") from None
