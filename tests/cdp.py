"""Debian's headless Chromium for the browser tests, driven over the DevTools protocol.

`chromium(profile)` starts /usr/bin/chromium with the flags a closed network needs and a
fresh profile, and yields a `Browser` on its DevTools socket (a loopback port of its own
choosing). `Browser.open(url)` loads a page; `Browser.frame(page)` is the session of the
page's out-of-process iframe (Chromium puts a sandboxed iframe in a process of its own),
so a test can read what the frame itself shows. Missing Chromium fails in CI, skips
elsewhere, with the line `tests/services/install` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.services import missing

__all__ = ["CHROMIUM", "Browser", "Session", "chromium", "require_chromium"]

CHROMIUM = "/usr/bin/chromium"
#: As root on a machine with no way out: no sandbox, no GPU, and none of the background
#: connections (QUIC, component updates, sync) that a closed network refuses.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)  # fmt: skip
TIMEOUT = 30.0


def require_chromium() -> None:
    """Fail in CI, skip elsewhere, when Chromium is not installed."""
    missing("chromium", "tests/services/install installs it (apt-get, as root)")


class Session:
    """One DevTools session: a page, or an iframe in a process of its own."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, self.id, **params)

    async def evaluate(self, expression: str) -> Any:
        """The value of `expression` in the frame's own document."""
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in reply, (expression, reply["exceptionDetails"])
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Polls `expression` until it is truthy; its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (value := await self.evaluate(expression)):
            assert loop.time() < deadline, f"still falsy after {timeout} s: {expression}"
            await asyncio.sleep(0.05)
        return value


class Browser:
    """The browser's DevTools socket: commands in, replies and events out."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._arrived = asyncio.Event()
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = message.json()
            future = self._pending.pop(data.get("id", -1), None)
            if future is None:
                self.events.append(data)
                self._arrived.set()
            elif not future.done():
                future.set_result(data)
        for future in self._pending.values():
            future.set_exception(ConnectionError("the DevTools socket closed"))

    async def send(self, method: str, session_id: str | None = None, **params: Any) -> Any:
        number = next(self._ids)
        future = self._pending[number] = asyncio.get_running_loop().create_future()
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        await self._ws.send_json(message)
        reply = await asyncio.wait_for(future, TIMEOUT)
        assert "error" not in reply, (method, reply["error"])
        return reply["result"]

    async def event(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event, already here or still to come, that `match`es."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for event in self.events:
                    if match(event):
                        return event
                self._arrived.clear()
                await self._arrived.wait()

    async def open(self, url: str) -> Session:
        """A new tab that loaded `url`, with its iframes attached as sessions of their own."""
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Session(self, attached["sessionId"])
        await page.send(
            "Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=False, flatten=True
        )
        await page.send("Page.enable")
        navigated = await page.send("Page.navigate", url=url)
        assert "errorText" not in navigated, navigated
        await page.wait_for("document.readyState === 'complete'")
        return page

    async def frame(self, page: Session) -> Session:
        """The session of `page`'s (first) out-of-process iframe, once it has loaded."""
        event = await self.event(
            lambda e: (
                e.get("method") == "Target.attachedToTarget"
                and e.get("sessionId") == page.id
                and e["params"]["targetInfo"]["type"] == "iframe"
            )
        )
        frame = Session(self, event["params"]["sessionId"])
        await frame.wait_for("document.readyState === 'complete'")
        return frame

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close")
        self._reader.cancel()


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Browser]:
    """Headless Chromium with a fresh profile in `profile`; its stderr in `profile`.log."""
    require_chromium()
    profile.mkdir(parents=True, exist_ok=True)
    log = profile.with_suffix(".log")
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
    try:
        active = profile / "DevToolsActivePort"  # "<port>\n/devtools/browser/<id>"
        async with asyncio.timeout(TIMEOUT):
            while not active.exists() or len(active.read_text().split()) < 2:
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        assert proc.returncode is None, f"chromium exited {proc.returncode}:\n{log.read_text()}"
        port, path = active.read_text().split()[:2]
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as ws,
        ):
            browser = Browser(ws)
            try:
                yield browser
            finally:
                await browser.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group we started: browser + helpers
            await proc.wait()
