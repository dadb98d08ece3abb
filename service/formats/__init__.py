"""Input formats (`kafka.format`): CloudEvents, or an identity provider's own JSON (README: Events).

Each provider module maps its JSON to a CloudEvents envelope, which then goes through
the same validation as native CloudEvents: one place decides "malformed → dead letter".
"""

from __future__ import annotations

from service.events import parse_cloudevent
from service.formats import auth0, keycloak
from service.formats._common import Parser

__all__ = ["FORMATS", "Parser", "parser_for"]

FORMATS: dict[str, Parser] = {
    "cloudevents": parse_cloudevent,
    "auth0-log-stream": auth0.parse,
    "keycloak": keycloak.parse,
}


def parser_for(fmt: str) -> Parser:
    """The record parser for `kafka.format`; ValueError for an unknown format."""
    try:
        return FORMATS[fmt]
    except KeyError:
        known = ", ".join(FORMATS)
        raise ValueError(f"unknown kafka.format {fmt!r} (known: {known})") from None
