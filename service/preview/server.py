"""The preview's HTTP side: routes, security headers, binding, running until Ctrl-C."""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from service.config import Config
from service.mail.render import Renderer
from service.preview.assets import CSP, RAW_CSP, RELOAD_JS
from service.preview.catalog import Catalog, Preview
from service.preview.pages import email_page, email_url, index_page, not_found_page

__all__ = ["DEFAULT_PORT", "EXAMPLES", "PreviewServer", "serve_preview"]

DEFAULT_PORT = 8025
EXAMPLES = Path("examples/events")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PreviewServer:
    """Serves every template, locale and sample event; reloads when files change."""

    def __init__(self, config: Config, events_dir: Path = EXAMPLES) -> None:
        renderer = Renderer(config.templates_dir, config.default_locale)
        self.catalog = Catalog(config, renderer, events_dir)
        self.app = web.Application(middlewares=[_headers])
        self.app.add_routes(
            [
                web.get("/", self.index),
                web.get("/version", self.version),
                web.get("/preview.js", self.script),
                web.get("/t/{template}", self.first_email),
                web.get("/t/{template}/{locale}/{sample}", self.email),
                web.get("/t/{template}/{locale}/{sample}/html", self.html_part),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(
        self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, any_port: bool = False
    ) -> str:
        """Bind and serve; returns the URL. With `any_port`, a taken port means a free one."""
        self.catalog.refresh()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        try:
            bound = await self._bind(host, port)
        except OSError as exc:
            if not (any_port and exc.errno == errno.EADDRINUSE):
                await self.stop()
                raise
            bound = await self._bind(host, 0)
        self.url = f"http://{bound}/"
        return self.url

    async def stop(self) -> None:
        """Stop serving; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _bind(self, host: str, port: int) -> str:
        assert self._runner is not None
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        name = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        return f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"

    async def index(self, _: web.Request) -> web.Response:
        """Every template, locale and sample event."""
        self.catalog.refresh()
        return _html(index_page(self.catalog))

    async def version(self, _: web.Request) -> web.Response:
        """The fingerprint of the templates and samples; the page reloads when it changes."""
        self.catalog.refresh()
        return web.json_response({"version": self.catalog.version})

    async def script(self, _: web.Request) -> web.Response:
        return web.Response(text=RELOAD_JS, content_type="application/javascript")

    async def first_email(self, request: web.Request) -> web.StreamResponse:
        """`/t/NAME`: the template in the default locale with its first sample event."""
        self.catalog.refresh()
        name = request.match_info["template"]
        if name not in self.catalog.templates():
            return self._not_found(f"There is no template {name!r}.")
        samples = self.catalog.samples_for(name)
        if not samples:
            return self._not_found(f"There are no sample events to render {name!r} with.")
        url = email_url(name, self.catalog.renderer.default_locale, samples[0].name)
        raise web.HTTPFound(url)

    async def email(self, request: web.Request) -> web.Response:
        """One email, side by side; a render error is shown on the page (status 200)."""
        preview = self._preview(request)
        if isinstance(preview, web.Response):
            return preview
        return _html(email_page(self.catalog, preview))

    async def html_part(self, request: web.Request) -> web.Response:
        """The HTML part alone, as a sandboxed document (no scripts, unique origin)."""
        preview = self._preview(request)
        if isinstance(preview, web.Response):
            return preview
        if preview.email is None or preview.email.html is None:
            return self._not_found(preview.error or "This email has no HTML part.")
        response = _html(preview.email.html)
        response.headers["Content-Security-Policy"] = RAW_CSP
        return response

    def _preview(self, request: web.Request) -> Preview | web.Response:
        self.catalog.refresh()
        info = request.match_info
        template, locale = info["template"], info["locale"]
        sample = self.catalog.sample(info["sample"])
        if template not in self.catalog.templates():
            return self._not_found(f"There is no template {template!r}.")
        if locale not in self.catalog.locales(template):
            return self._not_found(f"Template {template!r} has no locale {locale!r}.")
        if sample is None:
            return self._not_found(f"There is no sample event {info['sample']!r}.")
        return self.catalog.preview(template, locale, sample)

    def _not_found(self, message: str) -> web.Response:
        return _html(not_found_page(self.catalog, message), status=404)


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Never cached (it is live), never sniffed, scripts only from this server."""
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


async def serve_preview(config: Config, *, host: str, port: int, events_dir: Path) -> None:
    """`herald preview`: serve until Ctrl-C. A taken port raises OSError."""
    server = PreviewServer(config, events_dir)
    url = await server.start(host, port)
    print(f"herald preview: {url}  (reloads when templates change; Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
