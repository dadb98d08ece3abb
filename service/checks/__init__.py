"""Checks beyond the config file itself, run by `herald check`, startup and SIGHUP reload.

`load_config` reports what the file alone gets wrong: unknown keys, wrong types,
unknown triggers, actions not allowed on their trigger, unset `${VAR}`. The checks here
need the file system, one kind per module; each problem is one `path:line: message` line:
- `actions`: every template a `send_email` action names exists, `python` handlers
  import and take `(event, api)`;
- `templates`: every template file compiles and has its required files;
- `variants`: every locale variant gives its users the whole email in their language;
- `secrets`: every secret used is defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from service.checks.actions import Handler, action_problems
from service.checks.secrets import secret_problems
from service.checks.templates import template_problems
from service.checks.variants import variant_problems
from service.config import Config, ConfigError, load_config
from service.config.partial import partial_config
from service.mail.render import Renderer

__all__ = ["check_config", "check_file"]


def check_file(path: Path, environ: Mapping[str, str]) -> Config:
    """Load the config at `path` and run every check; ConfigError holds all problems.

    When the file itself has problems, the checks below still run on what is valid in
    it (`service.config.partial`), so one run reports every problem it can find.
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
            problems += action_problems(config, trigger, index, action, known, handlers)
    if renderer is not None:
        problems += template_problems(renderer)
        problems += [p for name in renderer.names() for p in variant_problems(renderer, name)]
    problems += secret_problems(config, renderer, handlers)
    return problems
