"""Static checks beyond the config schema: templates exist and compile, handlers import."""

from __future__ import annotations

from service.config import Config, PythonAction, SendEmailAction
from service.mail.render import Renderer

__all__ = ["check_config"]


def check_config(config: Config) -> list[str]:
    """Problems as `path:line: message`; empty when config and templates are usable."""
    renderer = Renderer(config.templates_dir, config.default_locale)
    problems = list(renderer.check())
    known = set(renderer.names())
    for trigger, actions in config.flows.items():
        for index, action in enumerate(actions):
            where = f"{config.location('flows', trigger, index)}: flows.{trigger}[{index}]"
            if isinstance(action, SendEmailAction) and action.template not in known:
                problems.append(
                    f"{where}.template: template {action.template!r} not found "
                    f"in {config.templates_dir}"
                )
            if isinstance(action, PythonAction):
                problems.extend(f"{where}.handler: {p}" for p in _import_problems(action.handler))
    return problems


def _import_problems(spec: str) -> list[str]:
    from service.python_actions import load_handler

    try:
        load_handler(spec)
    except ImportError as exc:
        return [str(exc)]
    return []
