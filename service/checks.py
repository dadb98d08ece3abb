"""Static checks beyond the config schema: templates exist, compile and have their parts."""

from __future__ import annotations

from service.config import Config, SendEmailAction
from service.mail.render import Renderer

__all__ = ["check_config"]


def check_config(config: Config) -> list[str]:
    """Problems as `path:line: message`; empty when config and templates are usable."""
    renderer = Renderer(config.templates_dir, config.default_locale)
    problems = list(renderer.check())
    known = set(renderer.names())
    for trigger, actions in config.flows.items():
        for action in actions:
            if isinstance(action, SendEmailAction) and action.template not in known:
                problems.append(
                    f"flows.{trigger}.{action.id}: template {action.template!r} not found "
                    f"in {config.templates_dir}"
                )
    return problems
