"""Pydantic's validation errors as problems in the operator's words, at their lines.

Messages never carry the offending value, so a secret in the wrong place cannot leak.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from service.config.problems import KeyPath, Problem, format_path
from service.config.yaml_lines import Document

__all__ = ["error_paths", "validation_problems"]


def validation_problems(
    doc: Document, exc: ValidationError, skip: Iterable[KeyPath] = (), discriminator: str = ""
) -> list[Problem]:
    """One Problem per pydantic error, located by its path in the data.

    Errors under a path in `skip` (already reported, e.g. as an unset ${VAR}) are dropped.
    `discriminator` names the key of discriminated unions, whose tag pydantic puts in `loc`.
    """
    skip = list(skip)
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        path, shown = _data_path(doc.data, error["loc"], discriminator)
        if any(path[: len(s)] == s for s in skip):
            continue
        prefix = f"{format_path(shown)}: " if shown else ""
        problems.append(doc.problem(path, prefix + _message(error)))
    return problems


def error_paths(data: Any, exc: ValidationError, discriminator: str = "") -> list[KeyPath]:
    """For each pydantic error, the deepest part of its path that exists in `data`."""
    errors = exc.errors(include_url=False, include_input=False)
    return [_data_path(data, error["loc"], discriminator)[0] for error in errors]


def _data_path(
    data: Any, loc: tuple[int | str, ...], discriminator: str
) -> tuple[KeyPath, KeyPath]:
    """Split a pydantic loc into the part that exists in the data and the part to show.

    A discriminated union puts its tag (e.g. `redirect`) in the loc; it is dropped.
    """
    found: list[int | str] = []
    shown: list[int | str] = []
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping) and part not in node and part == node.get(discriminator):
            continue
        shown.append(part)
        if _has(node, part):
            found.append(part)
            node = node[part]
        else:
            node = None
    return tuple(found), tuple(shown)


def _has(node: Any, part: int | str) -> bool:
    if isinstance(node, Mapping):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _message(error: ErrorDetails) -> str:
    """The operator's wording for a pydantic error (never its input value)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return f"{ctx['discriminator']} is required"
    if kind == "union_tag_invalid":
        key = str(ctx["discriminator"]).strip("'")
        return f"unknown {key} '{ctx['tag']}' (known: {ctx['expected_tags']})"
    return re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
