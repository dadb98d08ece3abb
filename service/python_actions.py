"""`python` actions: `async def handler(event, api)` in the shape of Auth0 Actions.

An `async def` handler runs on the event loop, like everything else in Herald: it must
not block. Any other handler (a plain `def`, a callable object, a partial of either) runs
in a worker thread of a bounded pool, so blocking code in it stalls nobody and the
action's `timeout_s` holds. A thread cannot be killed: when its action times out it
runs on, but its `api` is closed by then, so whatever it asks for later is refused
(`ActionEnded`) and changes nothing. The `api` and `event` objects: service/python_api.py
(its names are importable from here too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import importlib
import inspect
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from service.config import PythonAction
from service.failures import ActionFailed, EmailFailed
from service.flows import ActionFn, RunContext
from service.mail.mailer import Mailer
from service.python_api import ActionEnded, ActionNotAllowed, Api, Obj

__all__ = [
    "ActionEnded",
    "ActionNotAllowed",
    "Api",
    "Obj",
    "handler_threads_busy",
    "is_async_handler",
    "load_handler",
    "python_action",
]

Handler = Callable[[Obj, Api], Awaitable[Any] | Any]

#: Where handlers that are not coroutine functions run. Bounded: a burst of blocking
#: handlers queues here (each still within its own `timeout_s`) instead of spawning
#: threads without limit; a timed-out handler keeps its thread until it returns.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(
    max_workers=32, thread_name_prefix="herald-action"
)
_busy = 0
_busy_lock = threading.Lock()


def handler_threads_busy() -> int:
    """How many sync handlers are still running in worker threads (one that outlived its
    `timeout_s` included): the process must not wait for them at exit."""
    return _busy


def _in_thread(call: Callable[[], Any]) -> Any:
    global _busy
    with _busy_lock:
        _busy += 1
    try:
        return call()
    finally:
        with _busy_lock:
            _busy -= 1


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


def is_async_handler(handler: Callable[..., Any]) -> bool:
    """Whether `handler` is a coroutine function: an `async def`, a method or a
    functools.partial of one, or an object whose `__call__` is one."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - an async __call__ is looked for
    return inspect.iscoroutinefunction(call)


def python_action(action: PythonAction, mailer: Mailer) -> ActionFn:
    """Bind a configured `python` action to its imported handler.

    A coroutine function is awaited on the event loop; any other handler runs in a
    worker thread, awaited from the loop, so that `timeout_s` (flows.py) cancels the
    wait on time even while the thread blocks.
    """
    handler = load_handler(action.handler)
    on_loop = is_async_handler(handler)

    async def run(ctx: RunContext) -> str:
        loop = asyncio.get_running_loop()
        api = Api(ctx, action, mailer, loop)
        try:
            if on_loop:
                outcome = handler(Obj(ctx.view), api)
            else:
                # In the action's context (as asyncio.to_thread): what the thread hands
                # back to the loop (its emails) runs with the action's context variables.
                call = functools.partial(
                    contextvars.copy_context().run, handler, Obj(ctx.view), api
                )
                outcome = await loop.run_in_executor(_EXECUTOR, _in_thread, call)
            if inspect.isawaitable(outcome):  # e.g. a plain def that returns a coroutine
                await outcome
            await api.email.wait_all_then_close()
        except EmailFailed as exc:
            raise ActionFailed(exc.error, exc.reason) from None
        finally:
            # Returned, failed or timed out: a handler thread still running (or a task
            # the handler left behind) can change nothing from here on.
            api.close()
            api.email.cancel()
        return "done"

    return run
