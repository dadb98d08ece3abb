"""What the dedupe and rate-limit tests hand the mailer: a transport that accepts
everything (`Recorder`), a request built from an example event, and a mailer over both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from service.dedupe import DedupeStore
from service.deliveries import DeliveryLog
from service.mail.mailer import EmailRequest, Mailer
from service.mail.render import Renderer
from service.metrics import Metrics
from service.ratelimit import RateLimiter

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A transport that accepts everything: the mailer's decisions are what is tested."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    async def send(self, sender: str, recipients: list[str], message: bytes, **options: Any) -> str:
        self.sent.append(recipients)
        return "250 OK"


def email_request(event_id: str, to: str) -> EmailRequest:
    event = orjson.loads((ROOT / "examples/events/post-change-password.json").read_bytes())
    user = {**event["data"]["user"], "email": to}
    view: dict[str, Any] = {**event["data"], **event, "user": user}
    context = {"event": view, "user": user, "secrets": {}, "data": {}}
    return EmailRequest(event_id, "notify", "password_changed", to, "", "en", context)


def mailer(
    dedupe: DedupeStore,
    transport: Recorder,
    *,
    metrics: Metrics | None = None,
    rate_limiter: RateLimiter | None = None,
    deliveries: DeliveryLog | None = None,
) -> Mailer:
    return Mailer(
        renderer=Renderer(ROOT / "templates"),
        transport=transport,
        dedupe=dedupe,
        default_sender="Herald <no-reply@herald.test>",
        metrics=metrics or Metrics(),
        rate_limiter=rate_limiter,
        deliveries=deliveries,
    )
