"""The base of every config model and the validators several of them share."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateSyntaxError
from pydantic import BaseModel, ConfigDict

from service.addresses import InvalidAddress, parse_mailbox
from service.sandbox import sandbox

__all__ = ["Model", "check_address", "check_expression", "none_if_empty"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_address(value: str | None) -> str | None:
    """`Name <a@b>` or `a@b`, valid by the rule of `service.addresses`."""
    if value is None:
        return None
    try:
        parse_mailbox(value)  # the mailer's own rule: check refuses what it would refuse
    except InvalidAddress:
        raise ValueError(
            f"{value!r} is not one valid email address (like 'Name <a@example.com>')"
        ) from None
    return value


def check_expression(value: str | None) -> str | None:
    """A Jinja2 expression that compiles in the sandbox the flows run in."""
    if value is None:
        return None
    try:
        sandbox().compile_expression(value)
    except TemplateSyntaxError as exc:
        raise ValueError(f"invalid Jinja2 expression: {exc.message}") from None
    return value


def none_if_empty(value: Any) -> Any:
    # `${VAR:-}` and `HERALD_X=` yield "", which means "not set" for optional keys.
    return None if value == "" else value
