"""The usable part of an invalid config, so that `herald check` reports everything at once.

`load_config` refuses a file with any problem. `herald check` still wants the template,
handler and secret problems of the actions that are themselves valid: this rebuilds the
config with every invalid part set aside, for those checks only (never to run with):

- a key with a problem in a section is dropped, so its default stands in;
- an action with a problem becomes an inert, disabled `set_metadata`, which keeps the
  positions (lines, `[index]`) of the others; a flow that is not a list is dropped;
- a secret with a problem stays defined, as "", so its uses are not reported twice.

When `templates_dir` or the whole `secrets` section is what is wrong, the other checks
would only report what follows from it, so there is no partial config.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.config.env_overrides import apply_env_overrides
from service.config.model import FLOWS_CHECKED, Config
from service.config.problems import ConfigError, KeyPath
from service.config.pydantic_errors import error_paths
from service.config.yaml_lines import Origin, compose_document

__all__ = ["partial_config"]

_INERT_ACTION = {"action": "set_metadata", "enabled": False}
_WITHOUT_PARTIAL: frozenset[KeyPath] = frozenset({(), ("secrets",)})
_ATTEMPTS = 5  # each round sets aside what pydantic found; a few settle any file


def partial_config(path: Path, environ: Mapping[str, str]) -> Config | None:
    """The config at `path` with its invalid parts set aside; None if that is not possible."""
    try:
        doc = compose_document(path.read_text(encoding="utf-8"), str(path), environ)
    except (OSError, UnicodeDecodeError, ConfigError):
        return None
    apply_env_overrides(doc, Config, environ)
    data = copy.deepcopy(doc.data)
    bad: Iterable[KeyPath] = doc.problems
    for _ in range(_ATTEMPTS):
        if not all(_set_aside(data, where) for where in bad):
            return None
        try:
            config = Config.model_validate(data, context={FLOWS_CHECKED: True})
        except ValidationError as exc:
            bad = error_paths(data, exc, "action")
            continue
        config._origin = Origin(doc.source, doc.lines)
        return config
    return None


def _set_aside(data: dict[str, Any], where: KeyPath) -> bool:
    """Replace the part of `data` at `where` with its stand-in; False if there is none."""
    if where in _WITHOUT_PARTIAL or where[:1] == ("templates_dir",):
        return False
    section, rest = str(where[0]), where[1:]
    value = data.get(section)
    if not rest or not isinstance(value, dict):
        data.pop(section, None)
    elif section == "secrets":
        value[rest[0]] = ""
    elif section == "flows":
        _set_aside_action(value, rest)
    else:
        value.pop(rest[0], None)
    return True


def _set_aside_action(flows: dict[str, Any], where: KeyPath) -> None:
    trigger = str(where[0])
    actions = flows.get(trigger)
    if len(where) > 1 and isinstance(actions, list) and isinstance(where[1], int):
        actions[where[1]] = dict(_INERT_ACTION)
    else:
        flows.pop(trigger, None)
