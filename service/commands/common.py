"""What every `herald` subcommand shares: the one-line failure, loading the config."""

from __future__ import annotations

import argparse
import logging
import os

from service.config import Config, load_config, resolve_config_path

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INVALID",
    "CliError",
    "describe",
    "load",
    "quiet_kafka_client",
]

EXIT_FAILURE = 1
EXIT_INVALID = 2


class CliError(Exception):
    """A failure to report as one line (exit code `code`)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def load(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(args.config, os.environ))


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def quiet_kafka_client() -> None:
    """aiokafka logs connection failures itself; the command reports them in one line."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
