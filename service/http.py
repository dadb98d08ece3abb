"""HTTP endpoints (README: Operations): liveness, readiness, Prometheus metrics, the
decision webhook, the delivery records.

What keeps the webhook from being abused by whoever can reach the port:

- `/v1/*` needs `Authorization: Bearer <http.token>` when a token is set (401 with
  `WWW-Authenticate: Bearer` otherwise, compared in constant time, before the body is
  read). `/healthz`, `/readyz` and `/metrics` stay open for probes and scrapers.
- Bodies over 1 MiB get 413 (aiohttp's `client_max_size`).
- At most `_MAX_DECISIONS` decisions run at once; one more gets 503 at once rather than
  queueing behind them.
- A connection whose request headers are not all in within `HEADER_TIMEOUT_S` is
  closed. aiohttp has no header timeout of its own; its keep-alive timer does that job:
  it is armed when a connection is made and again after each response, is not reset by
  incoming bytes, and closes the connection only while no request is being handled
  (aiohttp >= 3.14 arms it at connection start; before, only after a first response).
  The price: an idle keep-alive connection is also closed after that time.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr

from service.config import HttpConfig
from service.dedupe import DedupeUnavailable
from service.deliveries import DeliveryStore, Query
from service.events import MAX_EVENT_BYTES, Event, MalformedEvent, validate_envelope
from service.triggers import TRIGGERS, Trigger

__all__ = ["HEADER_TIMEOUT_S", "Decider", "HttpServer"]

HEADER_TIMEOUT_S = 10.0
_READY_CACHE_S = 1.0
_MAX_DECISIONS = 64
_MESSAGES_LIMIT = 50
_MESSAGES_MAX = 1000
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Decider(Protocol):
    """What answers a synchronous trigger (service/processor.py's Processor)."""

    async def decide(self, event: Event) -> dict[str, Any]: ...


class HttpServer:
    """An aiohttp server bound to `http.host:http.port` for one Herald instance.

    It is given what it serves, each asked for at request time (they exist only once
    Herald has started, and a reload may change them): `ready` checks the dependencies,
    `metrics` renders the Prometheus text, `decider` answers the webhook, `records` holds
    the delivery records, `show_addresses` says whether they are shown unmasked."""

    def __init__(
        self,
        config: HttpConfig,
        *,
        ready: Callable[[], Awaitable[tuple[bool, dict[str, bool]]]],
        metrics: Callable[[], bytes],
        decider: Callable[[], Decider | None],
        records: Callable[[], DeliveryStore | None],
        show_addresses: Callable[[], bool],
    ) -> None:
        self.config = config
        self._check_ready = ready
        self._render_metrics = metrics
        self._decider = decider
        self._records = records
        self._show_addresses = show_addresses
        self.app = web.Application(client_max_size=MAX_EVENT_BYTES, middlewares=[self._auth])
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.post("/v1/decisions/{trigger}", self.decide),
                web.get("/v1/messages", self.messages),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._ready: tuple[float, bool, dict[str, bool]] = (0.0, False, {})
        self._decisions = asyncio.Semaphore(_MAX_DECISIONS)
        # Fixed at start like host and port: a changed `http` section needs a restart.
        self._token = SecretStr("")
        self.address = ""

    async def start(self) -> None:
        """Bind and serve; `address` tells where (port 0 picks a free one)."""
        cfg = self.config
        self._token = cfg.token
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=HEADER_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.address = f"{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """`/v1/*` needs the bearer token when one is set; the token is never logged."""
        token = self._token.get_secret_value()
        if token and request.path.startswith("/v1/"):
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode(), token.encode()
            )
            if not ok:
                response = _error(401, "missing or wrong bearer token (see http.token)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="herald"'
                return response
        return await handler(request)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        checked_at, ok, checks = self._ready
        # Only a positive answer is cached: a probe that just failed is repeated, so
        # readiness turns true as soon as the dependency is back.
        if not ok or time.monotonic() - checked_at > _READY_CACHE_S:
            ok, checks = await self._check_ready()
            self._ready = (time.monotonic(), ok, checks)
        return web.json_response(
            {"status": "ready" if ok else "not ready", **checks}, status=200 if ok else 503
        )

    async def metrics(self, _: web.Request) -> web.Response:
        body = self._render_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def decide(self, request: web.Request) -> web.Response:
        """Run a synchronous trigger's flow on a CloudEvents body; return the decision."""
        trigger = TRIGGERS.get(request.match_info["trigger"])
        if trigger is None or not trigger.synchronous:
            return _error(404, f"no synchronous trigger {request.match_info['trigger']!r}")
        if self._decisions.locked():
            return _error(503, f"busy: {_MAX_DECISIONS} decisions in progress", retry_after=1)
        async with self._decisions:
            return await self._decide(trigger, request)

    async def _decide(self, trigger: Trigger, request: web.Request) -> web.Response:
        decider = self._decider()
        if decider is None:
            return _error(503, "not started")
        try:
            event = validate_envelope(orjson.loads(await request.read()))
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not valid JSON: {exc}")
        except MalformedEvent as exc:
            return _error(400, str(exc))
        if event is None or event.trigger is not trigger:
            return _error(400, f"event type does not match trigger {trigger.name!r}")
        return web.json_response(await decider.decide(event), dumps=_dumps)

    async def messages(self, request: web.Request) -> web.Response:
        """The delivery records matching `event_id`, `user_id`, `to`, newest first."""
        records = self._records()
        if records is None:
            return _error(503, "not started")
        query = request.query
        raw_limit = query.get("limit", str(_MESSAGES_LIMIT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _MESSAGES_MAX:
            return _error(400, f"limit must be a number from 1 to {_MESSAGES_MAX}")
        try:
            found = await records.find(
                Query(
                    event_id=query.get("event_id") or None,
                    user_id=query.get("user_id") or None,
                    to=query.get("to") or None,
                    limit=int(raw_limit),
                )
            )
        except DedupeUnavailable as exc:
            return _error(503, str(exc))
        show = self._show_addresses()
        return web.json_response({"messages": [d.public(show) for d in found]}, dumps=_dumps)


def _error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": " ".join(message.split())}, status=status, headers=headers)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
