"""Flow action checks: the template a `send_email` action names exists, and the handler
of a `python` action imports and takes `(event, api)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from service.config import BaseAction, Config, PythonAction, SendEmailAction

__all__ = ["Handler", "action_problems"]

Handler = Callable[..., Any]


def action_problems(
    config: Config,
    trigger: str,
    index: int,
    action: BaseAction,
    known: set[str] | None,
    handlers: dict[str, Handler],
) -> list[str]:
    """A missing template or a handler that does not load; a loaded one goes in handlers."""
    key = "template" if isinstance(action, SendEmailAction) else "handler"
    prefix = f"{config.location('flows', trigger, index, key)}: flows.{trigger}[{index}].{key}"
    if isinstance(action, SendEmailAction) and known is not None and action.template not in known:
        names = ", ".join(sorted(known)) or "none"
        where = config.templates_dir
        return [f"{prefix}: template {action.template!r} not found in {where} (known: {names})"]
    if isinstance(action, PythonAction):
        handler, problem = _load_handler(action.handler)
        if handler is not None:
            handlers[action.handler] = handler
        if problem:
            return [f"{prefix}: {problem}"]
    return []


def _load_handler(spec: str) -> tuple[Handler | None, str | None]:
    """The imported handler, and what is wrong with it."""
    # Imported only when a flow has a python action: it pulls in the mailer and its clients.
    from service.python_actions import load_handler

    try:
        handler = load_handler(spec)
    except ImportError as exc:
        return None, str(exc)
    except SystemExit:  # a module that exits on import must not end `herald check`
        return None, f"handler {spec!r}: its module exits while being imported"
    try:
        inspect.signature(handler).bind(None, None)
    except TypeError:
        return handler, f"handler {spec!r} must take two arguments, (event, api)"
    except ValueError:  # no signature to inspect (a builtin): it is called as it is
        pass
    return handler, None
