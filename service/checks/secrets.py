"""Secret checks: secrets that are used but not defined under `secrets:`.

An undefined secret is "" in a template and None in a handler, so a typo silently
drops a link or an API key; these checks find it before it ships. Looked at:
`secrets.NAME` / `event.secrets.NAME` (also `["NAME"]` and `.get("NAME")`) in every
action's `when` and `to`, in the `python` handlers the flows call, and in the templates
the flows can send: those named by `send_email` actions or by `api.email.send("name")`
in a handler (every template when a handler computes the name), with the shared files
outside template folders (`_layout/`). A template no flow sends is not held to the
config's secrets: another config may send it.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.parser import Parser

from service.config import Config, SendEmailAction
from service.mail.render import Renderer
from service.sandbox import sandbox

__all__ = ["secret_problems"]

#: Mapping methods rather than secret names: `secrets.get("X")` reads X.
_METHODS = frozenset({"get", "items", "keys", "values"})
#: (name, line) of each secret a piece of source reads.
Refs = Iterable[tuple[str, int]]


def secret_problems(
    config: Config, renderer: Renderer | None, handlers: Mapping[str, Callable[..., Any]]
) -> list[str]:
    """`path:line: secret 'X' is used but not defined ...`, one per file and name."""
    defined = set(config.secrets)
    problems = list(_expression_problems(config, defined))
    sent: set[str] | None = {
        action.template
        for actions in config.flows.values()
        for action in actions
        if isinstance(action, SendEmailAction)
    }
    for handler in handlers.values():
        source = _handler_source(handler)
        if source is None:
            continue
        path, first_line, tree = source
        refs = ((name, first_line + line - 1) for name, line in _python_refs(tree))
        problems += _undefined(path, refs, defined)
        templates = _templates_sent(tree)
        sent = None if sent is None or templates is None else sent | templates
    if renderer is not None:
        for file in _template_files(renderer, sent):
            problems += _undefined(str(file), _template_refs(renderer, file), defined)
    return problems


def _undefined(path: str, refs: Refs, defined: set[str]) -> list[str]:
    first: dict[str, int] = {}
    for name, line in sorted(refs, key=lambda ref: ref[1]):
        if name not in defined:
            first.setdefault(name, line)
    known = ", ".join(sorted(defined)) or "none"
    return [
        f"{path}:{line}: secret {name!r} is used but not defined in secrets: (defined: {known})"
        for name, line in first.items()
    ]


# --- `when` and `to` expressions ----------------------------------------------------


def _expression_problems(config: Config, defined: set[str]) -> Iterator[str]:
    env = sandbox()
    for trigger, actions in config.flows.items():
        for index, action in enumerate(actions):
            for key in ("when", "to"):
                source = getattr(action, key, None)
                if not source:
                    continue
                try:
                    tree = Parser(env, source, state="variable").parse_expression()
                except TemplateSyntaxError:  # already reported by load_config
                    continue
                where = config.location("flows", trigger, index, key)
                path, _, line = where.rpartition(":")
                refs = [(name, int(line)) for name, _ in _jinja_refs(tree)]
                yield from _undefined(path, refs, defined)


# --- templates ------------------------------------------------------------------------


def _template_files(renderer: Renderer, sent: set[str] | None) -> list[Path]:
    """Files of the templates in `sent` (None: all), then the shared ones, if any."""
    root, names = renderer.templates_dir, renderer.names()
    used = [name for name in names if sent is None or name in sent]
    if not used:
        return []
    files = [path for name in used for path in sorted((root / name).rglob("*.j2"))]
    shared = (p for p in sorted(root.rglob("*.j2")) if p.relative_to(root).parts[0] not in names)
    return files + list(shared)


def _template_refs(renderer: Renderer, path: Path) -> Refs:
    try:
        tree = renderer.env.parse(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, TemplateSyntaxError):
        return []  # template_problems reports it
    return list(_jinja_refs(tree))


def _jinja_refs(tree: nodes.Node) -> Iterator[tuple[str, int]]:
    # find_all leaves out the node it starts from, which an expression may well be.
    for node in (tree, *tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Call))):
        if (name := _jinja_ref(node)) is not None:
            yield name, node.lineno


def _jinja_ref(node: nodes.Node) -> str | None:
    """The secret `S.NAME`, `S["NAME"]` or `S.get("NAME")` reads, S being `secrets` or
    `event.secrets`."""
    if isinstance(node, nodes.Getattr) and _jinja_secrets(node.node):
        return None if node.attr in _METHODS else node.attr
    if isinstance(node, nodes.Getitem) and _jinja_secrets(node.node):
        return _jinja_str(node.arg)
    if isinstance(node, nodes.Call) and node.args and _jinja_get(node.node):
        return _jinja_str(node.args[0])
    return None


def _jinja_get(node: nodes.Node) -> bool:
    """`secrets.get` or `event.secrets.get`."""
    return isinstance(node, nodes.Getattr) and node.attr == "get" and _jinja_secrets(node.node)


def _jinja_secrets(node: nodes.Node) -> bool:
    """`secrets` or `event.secrets`."""
    if isinstance(node, nodes.Getattr) and node.attr == "secrets":
        node = node.node
        return isinstance(node, nodes.Name) and node.name == "event"
    return isinstance(node, nodes.Name) and node.name == "secrets"


def _jinja_str(node: nodes.Node) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


# --- python handlers ------------------------------------------------------------------


def _handler_source(handler: Callable[..., Any]) -> tuple[str, int, ast.AST] | None:
    """The handler's file (relative when under the working directory), first line, AST."""
    function = inspect.unwrap(handler)
    try:
        path = inspect.getsourcefile(function)
        lines, first_line = inspect.getsourcelines(function)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):  # no source to read: nothing to check
        return None
    if path is None:
        return None
    relative = os.path.relpath(path)
    return (path if relative.startswith("..") else relative), max(first_line, 1), tree


def _python_refs(tree: ast.AST) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if (name := _python_ref(node)) is not None:
            yield name, getattr(node, "lineno", 1)


def _python_ref(node: ast.AST) -> str | None:
    """The secret `x.secrets.NAME`, `x.secrets["NAME"]` or `x.secrets.get("NAME")` reads."""
    if isinstance(node, ast.Attribute) and _python_secrets(node.value):
        return None if node.attr in _METHODS else node.attr
    if isinstance(node, ast.Subscript) and _python_secrets(node.value):
        return _python_str(node.slice)
    if isinstance(node, ast.Call) and _is_method(node, "get", _python_secrets):
        return _python_str(_first_arg(node, "key"))
    return None


def _templates_sent(tree: ast.AST) -> set[str] | None:
    """Names in `api.email.send("name", ...)`; None when one is not a literal."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_method(node, "send", _is_email):
            name = _python_str(_first_arg(node, "template"))
            if name is None:
                return None
            names.add(name)
    return names


def _is_method(call: ast.Call, name: str, owner: Callable[[ast.AST], bool]) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == name and owner(func.value)


def _python_secrets(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "secrets"


def _is_email(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "email"


def _first_arg(call: ast.Call, keyword: str) -> ast.expr | None:
    if call.args:
        return call.args[0]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _python_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
