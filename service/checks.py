"""Checks beyond the config file itself, run by `herald check`, startup and SIGHUP reload.

`load_config` reports what the file alone gets wrong: unknown keys, wrong types,
unknown triggers, actions not allowed on their trigger, unset `${VAR}`. The checks here
need the file system: every template a `send_email` action names exists, every template
file compiles, `python` handlers import and take `(event, api)`, and every secret used
is defined (`service.check_secrets`). Each problem is one `path:line: message` line.

Locale variants (`templates/<name>/<locale>/`) override the base files one by one, and
the base files are the default locale's text, so `default_locale` needs no folder of its
own whatever it is. A variant is incomplete, and reported, when:
- the base lacks `subject.txt.j2` or `text.txt.j2`, which every variant falls back on,
  or a file name is misspelt (both `Renderer.check`);
- it overrides one of the two bodies, text and HTML, but not the other: clients show
  the HTML part, so the email would carry two languages;
- its folder holds no template file, or is not named as a locale (`de`, `pt-BR`): the
  users it was meant for silently get the default locale.
A variant with only `subject.txt.j2` is fine: the body is the same in both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from service.check_secrets import secret_problems
from service.config import (
    BaseAction,
    Config,
    ConfigError,
    PythonAction,
    SendEmailAction,
    load_config,
)
from service.config.partial import partial_config
from service.mail.render import PARTS, Renderer

__all__ = ["check_config", "check_file"]

Handler = Callable[..., Any]


def check_file(path: Path, environ: Mapping[str, str]) -> Config:
    """Load the config at `path` and run every check; ConfigError holds all problems.

    When the file itself has problems, the checks below still run on what is valid in
    it (`service.config_partial`), so one run reports every problem it can find.
    """
    try:
        config = load_config(path, environ)
    except ConfigError as exc:
        partial = partial_config(path, environ)
        later = check_config(partial) if partial is not None else []
        raise ConfigError(dict.fromkeys(exc.problems + later)) from None
    if problems := check_config(config):
        raise ConfigError(problems)
    return config


def check_config(config: Config) -> list[str]:
    """Problems as `path:line: message`; empty when config and templates are usable."""
    renderer: Renderer | None = Renderer(config.templates_dir, config.default_locale)
    problems: list[str] = []
    if not config.templates_dir.is_dir():
        renderer = None  # one problem, rather than one per template named
        problems.append(
            f"{config.location('templates_dir')}: templates_dir: directory "
            f"'{config.templates_dir}' not found (relative to the working directory)"
        )
    known = set(renderer.names()) if renderer else None
    handlers: dict[str, Handler] = {}
    for trigger, actions in config.flows.items():
        for index, action in enumerate(actions):
            problems += _action_problems(config, trigger, index, action, known, handlers)
    if renderer is not None:
        problems += renderer.check()
        problems += [p for name in renderer.names() for p in _variant_problems(renderer, name)]
    problems += secret_problems(config, renderer, handlers)
    return problems


def _action_problems(
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


def _variant_problems(renderer: Renderer, name: str) -> Iterator[str]:
    """The locale folders of template `name` that users would not get in full."""
    base = renderer.templates_dir / name
    locales = set(renderer.locales(name))
    folders = (p for p in base.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for folder in sorted(folders):
        if folder.name not in locales:
            yield f"{folder}:1: not a locale folder (like 'de' or 'pt-BR'): its files are unused"
            continue
        has = {part for part, file in PARTS.items() if (folder / file).is_file()}
        if not any(folder.glob("*.j2")):
            yield f"{folder}:1: locale folder without templates: its users get the default"
        elif "html" in has and "text" not in has:
            yield _mixed(folder, missing="text", present="html")
        elif "text" in has and "html" not in has and (base / PARTS["html"]).is_file():
            yield _mixed(folder, missing="html", present="text")


def _mixed(folder: Path, missing: str, present: str) -> str:
    return (
        f"{folder / PARTS[missing]}:1: locale variant is missing: {folder.name} overrides "
        f"{PARTS[present]} but not {PARTS[missing]}, so its email would mix two languages"
    )
