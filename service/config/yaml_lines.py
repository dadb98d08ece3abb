"""YAML read into plain data while every key and list item records its line.

Nothing here knows Herald's keys. The YAML is composed into nodes and walked into
plain data, strings interpolated on the way, so that a problem found later (by
pydantic or by the flow checks) can still be reported as `path:line:`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from service.config.interpolation import interpolate
from service.config.problems import ConfigError, KeyPath, Problem, format_path

__all__ = ["Document", "Origin", "compose_document"]

_STR_TAG = "tag:yaml.org,2002:str"


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
