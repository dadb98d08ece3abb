"""The `api` a `python` action's handler is given (`api.access`, `api.user`,
`api.redirect`, `api.email`) and the read-only `event` it sees (`Obj`), in the shape of
Auth0 Actions.

Usable while the action runs, from the event loop or from the handler's worker thread
(service/python_actions.py); once the action returned or timed out every call raises
`ActionEnded` and changes nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from service.config import PythonAction
from service.failures import EmailDeferred
from service.flows import RunContext
from service.mail.mailer import Mailer
from service.mail.render import template_context
from service.mail.request import EmailRequest

__all__ = ["ActionEnded", "ActionNotAllowed", "Api", "Obj"]


class ActionNotAllowed(RuntimeError):
    """An `api` call the event's trigger does not support (e.g. a redirect on sign-up)."""


class ActionEnded(ActionNotAllowed):
    """An `api` call after the action returned or ran past its `timeout_s` (a handler
    thread that outlived its action, a task it left behind): refused, nothing changes."""


class _State:
    """Whether the action is still running; `api` calls change the flow only while it is.

    The lock makes "check open, then change the result" one step with respect to
    `close()`, so a handler thread never writes to a result the flow already reads.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.closed = False

    def check(self, call: str) -> None:
        """Raise ActionEnded once the action ended; call with `lock` held."""
        if self.closed:
            raise ActionEnded(
                f"{call}: the action has ended (it returned or ran past its timeout_s)"
            )

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def on_loop(self) -> bool:
        """Whether the caller runs on the action's event loop (not in a worker thread)."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False


class Obj(Mapping[str, Any]):
    """A read-only view of event data: `event.user.email` or `event["user"]["email"]`;
    a missing field is None, as it is `undefined` in an Auth0 Action."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self._data.get(name))

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Obj({list(self._data)})"


def _wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Obj(value)
    if isinstance(value, list):
        return tuple(_wrap(v) for v in value)
    return value


class Api:
    """What a handler may do: `api.access`, `api.user`, `api.redirect`, `api.email`.

    Usable while the action runs, from the event loop or from the handler's worker
    thread; once the action returned or timed out every call raises `ActionEnded`.
    """

    def __init__(
        self,
        ctx: RunContext,
        action: PythonAction,
        mailer: Mailer,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._state = _State(loop or asyncio.get_running_loop())
        self.access = _Access(ctx, self._state)
        self.user = _User(ctx, self._state)
        self.redirect = _Redirect(ctx, self._state)
        self.email = _Email(ctx, action, mailer, self._state)

    def close(self) -> None:
        """End the action: from now on every `api` call is refused."""
        self._state.close()


class _Access:
    def __init__(self, ctx: RunContext, state: _State) -> None:
        self._ctx = ctx
        self._state = state

    def deny(self, reason: str, user_message: str = "") -> None:
        """Refuse the sign-up or login; the flow stops after this action."""
        _allowed(self._ctx, "deny", "api.access.deny")
        with self._state.lock:
            self._state.check("api.access.deny")
            result = self._ctx.result
            result.decision, result.reason = "deny", str(reason)
            result.user_message = str(user_message)


class _User:
    def __init__(self, ctx: RunContext, state: _State) -> None:
        self._ctx = ctx
        self._state = state

    def set_user_metadata(self, key: str, value: Any) -> None:
        """Set (or with None, delete) one key of `user_metadata`."""
        with self._state.lock:
            self._state.check("api.user.set_user_metadata")
            self._ctx.result.user_metadata[str(key)] = value

    def set_app_metadata(self, key: str, value: Any) -> None:
        """Set (or with None, delete) one key of `app_metadata`."""
        with self._state.lock:
            self._state.check("api.user.set_app_metadata")
            self._ctx.result.app_metadata[str(key)] = value


class _Redirect:
    def __init__(self, ctx: RunContext, state: _State) -> None:
        self._ctx = ctx
        self._state = state

    def send_user_to(self, url: str, query: Mapping[str, Any] | None = None) -> None:
        """Redirect the user before the login completes."""
        _allowed(self._ctx, "redirect", "api.redirect.send_user_to")
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"api.redirect.send_user_to needs an absolute http(s) URL, got {url!r}"
            )
        redirect = {"url": str(url), "query": {k: str(v) for k, v in (query or {}).items()}}
        with self._state.lock:
            self._state.check("api.redirect.send_user_to")
            self._ctx.result.decision = "redirect"
            self._ctx.result.redirect = redirect


class _Email:
    def __init__(
        self, ctx: RunContext, action: PythonAction, mailer: Mailer, state: _State
    ) -> None:
        self._ctx = ctx
        self._action = action
        self._mailer = mailer
        self._state = state
        #: Sends started on the loop (an async handler's).
        self.pending: list[asyncio.Task[str]] = []
        #: Sends a worker thread handed to the loop, and their tasks once started.
        self.handed_over: list[concurrent.futures.Future[str]] = []
        self._started: list[asyncio.Task[Any]] = []

    def send(
        self, template: str, to: str | None = None, data: Mapping[str, Any] | None = None
    ) -> asyncio.Task[str] | concurrent.futures.Future[str]:
        """Send `template` (to `event.user.email` by default); the action finishes only
        when every email it asked for was sent, whether or not the handler waits for it.

        From an `async def` handler: an asyncio Task, `await` it for the outcome. From a
        plain `def` handler (a worker thread): a `concurrent.futures.Future`, whose
        `.result()` blocks the thread until the outcome. The outcome is the mailer's
        (`sent`, `duplicate`, `rate_limited`, `uncertain`), or `deferred` when a
        transient failure scheduled a retry; a permanent failure (e.g. no address)
        raises EmailFailed and fails the action. Raises ActionEnded once the action
        ended: nothing is sent then.
        """
        context = template_context(self._ctx.view, self._ctx.secrets, data)
        user = context["user"]
        default_recipient = to is None  # the user's own address carries the user's name
        request = EmailRequest(
            event_id=self._ctx.event.id,
            action_id=f"{self._action.id}:{template}",
            template=str(template),
            to=user.get("email") if default_recipient else to,
            to_name=(user.get("name") or "") if default_recipient else "",
            locale=user.get("locale"),
            context=context,
        )
        call = "api.email.send"
        with self._state.lock:
            self._state.check(call)
            if self._state.on_loop():
                task = asyncio.ensure_future(self._send(request, call))
                self.pending.append(task)
                return task
            # From a worker thread: the send runs on the action's loop. Under the lock,
            # so the action either waits for this send or has ended and refuses it.
            future = asyncio.run_coroutine_threadsafe(self._send(request, call), self._state.loop)
            self.handed_over.append(future)
            return future

    async def _send(self, request: EmailRequest, call: str) -> str:
        # A send handed over by a thread starts a little later, on the loop: the action
        # may have ended meanwhile (timed out), and then nothing is sent.
        with self._state.lock:
            self._state.check(call)
            task = asyncio.current_task()
            if task is not None:
                self._started.append(task)  # so that cancel() reaches it at once
        try:
            return await self._mailer.send(request)
        except EmailDeferred as exc:  # scheduled for retry when the flow ends
            self._ctx.result.deferred.append((request, exc.reason))
            return "deferred"

    async def wait_all_then_close(self) -> None:
        """Wait for every email asked for, including any asked for meanwhile, then end
        the action: checking for new sends and closing is one step under the lock, so a
        send is either waited for or refused, never left running unwaited."""
        tasks_seen = handed_seen = 0
        while True:
            with self._state.lock:
                tasks, handed = self.pending[tasks_seen:], self.handed_over[handed_seen:]
                if not tasks and not handed:
                    self._state.closed = True
                    return
            tasks_seen, handed_seen = tasks_seen + len(tasks), handed_seen + len(handed)
            loop = self._state.loop
            await asyncio.gather(*tasks, *(asyncio.wrap_future(f, loop=loop) for f in handed))

    def cancel(self) -> None:
        """Cancel every send not finished (the mailer records one whose message went out)."""
        for task in (*self.pending, *self._started):
            task.cancel()
        for future in self.handed_over:
            future.cancel()  # one not started yet: its task will find the action ended


def _allowed(ctx: RunContext, action: str, call: str) -> None:
    trigger = ctx.event.trigger
    if action not in trigger.actions:
        raise ActionNotAllowed(f"{call} is not available on trigger {trigger.name!r}")
