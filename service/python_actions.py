"""`python` actions: `async def handler(event, api)` in the shape of Auth0 Actions."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from service.config import PythonAction
from service.failures import ActionFailed, EmailDeferred, EmailFailed
from service.flows import ActionFn, RunContext
from service.mail.mailer import EmailRequest, Mailer
from service.mail.render import template_context

__all__ = ["ActionNotAllowed", "Api", "Obj", "load_handler", "python_action"]

Handler = Callable[["Obj", "Api"], Awaitable[Any] | Any]


class ActionNotAllowed(RuntimeError):
    """An `api` call the event's trigger does not support (e.g. a redirect on sign-up)."""


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
    """What a handler may do: `api.access`, `api.user`, `api.redirect`, `api.email`."""

    def __init__(self, ctx: RunContext, action: PythonAction, mailer: Mailer) -> None:
        self.access = _Access(ctx)
        self.user = _User(ctx)
        self.redirect = _Redirect(ctx)
        self.email = _Email(ctx, action, mailer)


class _Access:
    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def deny(self, reason: str, user_message: str = "") -> None:
        """Refuse the sign-up or login; the flow stops after this action."""
        _allowed(self._ctx, "deny", "api.access.deny")
        result = self._ctx.result
        result.decision, result.reason, result.user_message = "deny", str(reason), str(user_message)


class _User:
    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def set_user_metadata(self, key: str, value: Any) -> None:
        """Set (or with None, delete) one key of `user_metadata`."""
        self._ctx.result.user_metadata[str(key)] = value

    def set_app_metadata(self, key: str, value: Any) -> None:
        """Set (or with None, delete) one key of `app_metadata`."""
        self._ctx.result.app_metadata[str(key)] = value


class _Redirect:
    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def send_user_to(self, url: str, query: Mapping[str, Any] | None = None) -> None:
        """Redirect the user before the login completes."""
        _allowed(self._ctx, "redirect", "api.redirect.send_user_to")
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"api.redirect.send_user_to needs an absolute http(s) URL, got {url!r}"
            )
        self._ctx.result.decision = "redirect"
        self._ctx.result.redirect = {
            "url": str(url),
            "query": {k: str(v) for k, v in (query or {}).items()},
        }


class _Email:
    def __init__(self, ctx: RunContext, action: PythonAction, mailer: Mailer) -> None:
        self._ctx = ctx
        self._action = action
        self._mailer = mailer
        self.pending: list[asyncio.Task[str]] = []

    def send(
        self, template: str, to: str | None = None, data: Mapping[str, Any] | None = None
    ) -> asyncio.Task[str]:
        """Send `template` (to `event.user.email` by default); await it or not — the action
        finishes only when every email it asked for was sent."""
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
        task = asyncio.ensure_future(self._send(request))
        self.pending.append(task)
        return task

    async def _send(self, request: EmailRequest) -> str:
        try:
            return await self._mailer.send(request)
        except EmailDeferred as exc:  # scheduled for retry when the flow ends
            self._ctx.result.deferred.append((request, exc.reason))
            return "deferred"


def _allowed(ctx: RunContext, action: str, call: str) -> None:
    trigger = ctx.event.trigger
    if action not in trigger.actions:
        raise ActionNotAllowed(f"{call} is not available on trigger {trigger.name!r}")


def load_handler(spec: str) -> Handler:
    """Import `package.module:function`; the working directory is importable, as in uvicorn."""
    module_name, _, function = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ImportError(f"handler {spec!r}: cannot import {module_name!r}: {exc}") from None
    handler = getattr(module, function, None)
    if not callable(handler):
        raise ImportError(f"handler {spec!r}: {module_name!r} has no function {function!r}")
    return handler  # type: ignore[no-any-return]


def python_action(action: PythonAction, mailer: Mailer) -> ActionFn:
    """Bind a configured `python` action to its imported handler."""
    handler = load_handler(action.handler)

    async def run(ctx: RunContext) -> str:
        api = Api(ctx, action, mailer)
        try:
            outcome = handler(Obj(ctx.view), api)
            if inspect.isawaitable(outcome):
                await outcome
            await asyncio.gather(*api.email.pending)
        except EmailFailed as exc:
            raise ActionFailed(exc.error, exc.reason) from None
        finally:
            for task in api.email.pending:
                task.cancel()
        return "done"

    return run
