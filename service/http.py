"""HTTP endpoints (SPEC §8): liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from service.app import Herald

__all__ = ["HttpServer"]

_READY_CACHE_S = 1.0


class HttpServer:
    """An aiohttp server bound to `http.host:http.port` for one Herald instance."""

    def __init__(self, herald: Herald) -> None:
        self.herald = herald
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
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
        if time.monotonic() - checked_at > _READY_CACHE_S:
            ok, checks = await self.herald.ready()
            self._ready = (time.monotonic(), ok, checks)
        return web.json_response(
            {"status": "ready" if ok else "not ready", **checks}, status=200 if ok else 503
        )

    async def metrics(self, _: web.Request) -> web.Response:
        body = self.herald.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
