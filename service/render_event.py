"""`herald render` (README: Command line): the complete MIME message a template produces
for one event, built as the mailer builds it (`service.mail.compose`).

The event file is a CloudEvent, or a raw event in the configured `kafka.format` (an
Auth0 log event, a Keycloak event): the same parsing the consumer does. The context is
the one `send_email` gives its template; nothing is sent and nothing is connected to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from service.config import Config
from service.events import Event, MalformedEvent, validate_envelope
from service.flows import event_view
from service.formats import parser_for
from service.mail.compose import compose_email
from service.mail.message import InvalidAddress, parse_mailbox
from service.mail.render import Renderer, TemplateError, template_context

__all__ = ["PLACEHOLDER_RECIPIENT", "RenderError", "load_event", "render_event"]

#: The `To` of a rendered message whose event has no `data.user.email`.
PLACEHOLDER_RECIPIENT = "recipient@example.invalid"


class RenderError(Exception):
    """The message cannot be rendered; the text is one line for the operator."""


def load_event(path: Path, fmt: str) -> Event:
    """Read and validate the event in `path` (a CloudEvent or, else, in format `fmt`)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RenderError(f"{path}: file not found") from None
    except OSError as exc:
        raise RenderError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RenderError(f"{path}: not valid JSON ({exc})") from None
    try:
        is_cloudevent = isinstance(body, dict) and "specversion" in body
        event = validate_envelope(body) if is_cloudevent else parser_for(fmt)(raw, [])
    except MalformedEvent as exc:
        raise RenderError(f"{path}: not a valid event: {exc}") from None
    if event is None:
        raise RenderError(f"{path}: the event's type has no trigger, Herald would skip it")
    return event


def render_event(config: Config, template: str, event_path: Path, locale: str | None) -> bytes:
    """The wire bytes of the message `template` renders for the event in `event_path`."""
    event = load_event(event_path, config.kafka.format)
    view = event_view(event, config.secrets)
    context = template_context(view, config.secrets)
    user: dict[str, Any] = context["user"]
    renderer = Renderer(config.templates_dir, config.default_locale)
    try:
        rendered = renderer.render(template, locale or user.get("locale"), context)
    except TemplateError as exc:
        raise RenderError(str(exc)) from None
    address = user.get("email") or PLACEHOLDER_RECIPIENT
    name = user.get("name") if isinstance(user.get("name"), str) else ""
    try:
        recipient = parse_mailbox(address, name or "")
        sender = parse_mailbox(config.smtp.from_)
    except InvalidAddress as exc:
        raise RenderError(f"{event_path}: {exc}") from None
    email = compose_email(
        sender=sender, recipient=recipient, rendered=rendered, event_id=event.id, template=template
    )
    return email.data
