"""Line-aware plumbing behind `service.config`: YAML with marks, `${VAR}`, `HERALD_*`.

Nothing here knows Herald's keys. The YAML is composed into nodes and walked into
plain data while every key and list item records its line, so that a problem found
later (by pydantic or by the flow checks) can still be reported as `path:line:`.
Environment overrides are resolved against the shape of a pydantic model.
"""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

__all__ = [
    "ConfigError",
    "Document",
    "KeyPath",
    "Origin",
    "Problem",
    "apply_env_overrides",
    "compose_document",
    "error_paths",
    "format_path",
    "interpolate",
    "validation_problems",
]

KeyPath = tuple[str | int, ...]

_log = logging.getLogger(__name__)

_STR_TAG = "tag:yaml.org,2002:str"
_ENV_PREFIX = "HERALD_"
# Environment variables that share the prefix but are not overrides.
_ENV_RESERVED = frozenset({"HERALD_CONFIG"})
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


class ConfigError(Exception):
    """Invalid configuration; `problems` holds one `path:line: message` line each."""

    def __init__(self, problems: Iterable[str] | str) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem; `line` is None for those that come from the environment."""

    where: str
    line: int | None
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.where}: {self.message}"
        return f"{self.where}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True, eq=False)
class Origin:
    """Where a config came from: its file and the line of each key and list item.

    Not part of the config's value: two configs that differ only in layout are equal.
    """

    source: str = "<config>"
    lines: Mapping[KeyPath, int] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Origin)

    def __hash__(self) -> int:
        return 0

    def line_of(self, path: KeyPath) -> int:
        """The line of `path`, or of its nearest ancestor that is in the file; else 1."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


@dataclass(slots=True)
class Document:
    """Plain data from one YAML file, with the line of every key and list item."""

    source: str
    data: dict[str, Any] = field(default_factory=dict)
    lines: dict[KeyPath, int] = field(default_factory=dict)
    #: Problems found while reading, keyed by the path they concern.
    problems: dict[KeyPath, str] = field(default_factory=dict)
    #: Paths whose value came from a `HERALD_*` variable, and that variable's name.
    env_sources: dict[KeyPath, str] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int:
        """The line of `path`, or of its nearest ancestor that is in the file."""
        return Origin(self.source, self.lines).line_of(path)

    def problem(self, path: KeyPath, message: str) -> Problem:
        """A problem at `path`, told by env variable name if that is where it came from."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.env_sources:
                # The variable's name already says which key; keep only deeper detail.
                message = message.removeprefix(f"{format_path(path[:end])}: ")
                return Problem(self.env_sources[path[:end]], None, message)
        return Problem(self.source, self.line_of(path), message)


def format_path(path: KeyPath) -> str:
    """`("flows", "post-login", 0, "url")` → `flows.post-login[0].url`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def interpolate(value: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Fill `${VAR}` / `${VAR:-default}` in (`$${` is a literal `${`); also return errors."""
    errors: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if match.group(0) == "$${":
            return "${"
        if name is None:
            errors.append("malformed '${' (write ${VAR}, ${VAR:-default}, or $${ for '${')")
            return ""
        if environ.get(name):
            return environ[name]
        if default is not None:
            return default
        if name in environ:  # set but empty, and no default: empty is what was asked for
            return ""
        errors.append(f"environment variable {name} is not set")
        return ""

    return _VAR.sub(fill, value), errors


def compose_document(text: str, source: str, environ: Mapping[str, str]) -> Document:
    """Parse YAML text into a Document; a syntax error raises ConfigError with its line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        doc = Document(source)
        if node is not None:
            _Walker(loader, doc, environ).root(node)
        return doc
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(source, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    finally:
        loader.dispose()


def _yaml_problem(source: str, exc: yaml.MarkedYAMLError) -> str:
    # Only the problem and context descriptions: the snippet of the offending line
    # that str(exc) would add may hold a password.
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    what = " ".join(part for part in (exc.context, exc.problem) if part)
    return f"{source}:{line}: invalid YAML: {what or 'syntax error'}"


class _Walker:
    """Turns composed YAML nodes into plain data, recording lines as it goes."""

    def __init__(self, loader: yaml.SafeLoader, doc: Document, environ: Mapping[str, str]):
        self.loader, self.doc, self.environ = loader, doc, environ

    def root(self, node: yaml.Node) -> None:
        value = self.value(node, ())
        if isinstance(value, dict):
            self.doc.data = value
        else:
            self.doc.problems[()] = "the top level must be a mapping of sections"

    def value(self, node: yaml.Node, path: KeyPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return self.sequence(node, path)
        if node.tag == _STR_TAG:
            return self.string(node.value, path)
        return self.loader.construct_object(node, deep=True)  # type: ignore[no-untyped-call]

    def string(self, raw: str, path: KeyPath) -> str:
        value, errors = interpolate(raw, self.environ)
        if errors:
            self.doc.problems[path] = f"{format_path(path)}: {errors[0]}"
        return value

    def sequence(self, node: yaml.SequenceNode, path: KeyPath) -> list[Any]:
        items = []
        for index, item in enumerate(node.value):
            self.doc.lines[(*path, index)] = item.start_mark.line + 1
            items.append(self.value(item, (*path, index)))
        return items

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                where = (*path, f"<key@{line}>")
                where_text = format_path(path) or "top level"
                self.doc.problems[where] = f"{where_text}: keys must be scalars"
                self.doc.lines[where] = line
                continue
            key = str(key_node.value)
            if key in result:
                self.doc.problems[(*path, key, "<dup>")] = (
                    f"{format_path((*path, key))}: duplicate key"
                )
                self.doc.lines[(*path, key, "<dup>")] = line
            self.doc.lines[(*path, key)] = line
            result[key] = self.value(value_node, (*path, key))
        return result


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
