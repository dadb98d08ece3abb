"""`HERALD_<SECTION>__<KEY>` and `HERALD_<KEY>` environment overrides.

They are resolved against the shape of a pydantic model and written into a Document's
data, each path remembering its variable so that its problems are told by that name.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from service.config.problems import KeyPath, Problem
from service.config.yaml_lines import Document

__all__ = ["apply_env_overrides"]

_log = logging.getLogger(__name__)

_ENV_PREFIX = "HERALD_"
# Environment variables that share the prefix but are not overrides.
_ENV_RESERVED = frozenset({"HERALD_CONFIG"})


def apply_env_overrides(
    doc: Document, model: type[BaseModel], environ: Mapping[str, str]
) -> list[Problem]:
    """Apply `HERALD_<SECTION>__<KEY>` / `HERALD_<KEY>` to doc.data; return bad ones.

    A name with `__` is meant for Herald, so an unknown section or key in it is a
    problem. Without `__`, only a top-level key that is not a section (`HERALD_DEFAULT_LOCALE`)
    is Herald's: other `HERALD_*` names belong to someone else, and are ignored
    (Kubernetes sets `HERALD_PORT=tcp://…`, `HERALD_SERVICE_HOST` for a Service `herald`).
    """
    problems = []
    for name in sorted(environ):
        if not name.upper().startswith(_ENV_PREFIX) or name.upper() in _ENV_RESERVED:
            continue
        parts = name[len(_ENV_PREFIX) :].split("__")
        if len(parts) == 1 and not _is_scalar_key(model, parts[0]):
            _log.debug("ignoring %s: not a HERALD_<SECTION>__<KEY> setting", name)
            continue
        target = _env_target(model, parts, doc.data)
        if isinstance(target, str):
            problems.append(Problem(name, None, target))
            continue
        path, is_list = target
        value: Any = environ[name]
        if is_list:
            value = [part.strip() for part in value.split(",") if part.strip()]
        _set(doc.data, path, value)
        doc.env_sources[path] = name
        doc.problems = {p: m for p, m in doc.problems.items() if p[: len(path)] != path}
    return problems


def _env_target(
    model: type[BaseModel], parts: list[str], data: Mapping[str, Any]
) -> tuple[KeyPath, bool] | str:
    """Where an override goes and whether it is a list, or why it goes nowhere."""
    key = _field_key(model, parts[0])
    if key is None:
        return f"unknown setting '{parts[0].lower()}'"
    annotation = model.model_fields[_field_name(model, key)].annotation
    if len(parts) == 1:  # a top-level key that is not a section (apply_env_overrides)
        return (key,), typing.get_origin(annotation) is list
    if len(parts) == 2 and _is_model(annotation):
        sub = _field_key(annotation, parts[1])
        if sub is None:
            return f"unknown key '{parts[1].lower()}' in section '{key}'"
        sub_annotation = annotation.model_fields[_field_name(annotation, sub)].annotation
        return (key, sub), typing.get_origin(sub_annotation) is list
    if len(parts) == 2 and key == "secrets":
        section = data.get(key)
        existing = list(section) if isinstance(section, dict) else []
        match = next((k for k in existing if k.lower() == parts[1].lower()), parts[1])
        return (key, match), False
    return f"'{key}' cannot be set from the environment this way"


def _is_scalar_key(model: type[BaseModel], name: str) -> bool:
    """Whether `name` is a top-level key of `model` that holds one value, not a section."""
    key = _field_key(model, name)
    if key is None:
        return False
    annotation = model.model_fields[_field_name(model, key)].annotation
    return not (_is_model(annotation) or typing.get_origin(annotation) is dict)


def _field_key(model: type[BaseModel], name: str) -> str | None:
    """The YAML key (alias or field name) of `model` that `name` names, ignoring case."""
    for field_name, info in model.model_fields.items():
        key = info.alias or field_name
        if name.lower() in (key.lower(), field_name.lower()):
            return key
    return None


def _field_name(model: type[BaseModel], key: str) -> str:
    return next(n for n, i in model.model_fields.items() if (i.alias or n) == key)


def _is_model(annotation: Any) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _set(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    """Set data[path] = value, creating (or replacing a null) section on the way.

    A section that is neither a mapping nor null is left alone: the file's own
    problem there is the one to report.
    """
    target: Any = data
    for part in path[:-1]:
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
        if not isinstance(target, dict):
            return
    target[path[-1]] = value
