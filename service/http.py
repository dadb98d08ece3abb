"""HTTP endpoints (SPEC §8): liveness, readiness, Prometheus metrics, the decision webhook."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service.events import MAX_EVENT_BYTES, MalformedEvent, validate_envelope
from service.triggers import TRIGGERS

if TYPE_CHECKING:
    from service.app import Herald

__all__ = ["HttpServer"]

_READY_CACHE_S = 1.0


class HttpServer:
    """An aiohttp server bound to `http.host:http.port` for one Herald instance."""

    def __init__(self, herald: Herald) -> None:
        self.herald = herald
        self.app = web.Application(client_max_size=MAX_EVENT_BYTES)
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.post("/v1/decisions/{trigger}", self.decide),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._ready: tuple[float, bool, dict[str, bool]] = (0.0, False, {})
        self.address = ""

    async def start(self) -> None:
        """Bind and serve; `address` tells where (port 0 picks a free one)."""
        cfg = self.herald.config.http
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.address = f"{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        checked_at, ok, checks = self._ready
        # Only a positive answer is cached: a probe that just failed is repeated, so
        # readiness turns true as soon as the dependency is back.
        if not ok or time.monotonic() - checked_at > _READY_CACHE_S:
            ok, checks = await self.herald.ready()
            self._ready = (time.monotonic(), ok, checks)
        return web.json_response(
            {"status": "ready" if ok else "not ready", **checks}, status=200 if ok else 503
        )

    async def metrics(self, _: web.Request) -> web.Response:
        body = self.herald.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def decide(self, request: web.Request) -> web.Response:
        """Run a synchronous trigger's flow on a CloudEvents body; return the decision."""
        trigger = TRIGGERS.get(request.match_info["trigger"])
        if trigger is None or not trigger.synchronous:
            return _error(404, f"no synchronous trigger {request.match_info['trigger']!r}")
        processor = self.herald.processor
        if processor is None:
            return _error(503, "not started")
        try:
            event = validate_envelope(orjson.loads(await request.read()))
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not valid JSON: {exc}")
        except MalformedEvent as exc:
            return _error(400, str(exc))
        if event is None or event.trigger is not trigger:
            return _error(400, f"event type does not match trigger {trigger.name!r}")
        return web.json_response(await processor.decide(event), dumps=_dumps)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": " ".join(message.split())}, status=status)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
