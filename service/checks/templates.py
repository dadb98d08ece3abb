"""Template checks: every template file compiles, names templates that exist, and every
template has the files it needs (`subject.txt.j2`, `text.txt.j2`) under their names.

A misspelt file in a locale variant would silently fall back to the default language,
so a `.j2` file that is not one of the parts (nor a shared `_file`) is reported too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from jinja2 import TemplateNotFound, TemplateSyntaxError, nodes

from service.mail.render import PARTS, REQUIRED_PARTS, Renderer, problem_line

__all__ = ["template_problems"]


def template_problems(renderer: Renderer) -> list[str]:
    """Compile every template file; problems as `path:line: message`."""
    if not renderer.templates_dir.is_dir():
        return [f"{renderer.templates_dir}:1: templates directory not found"]
    problems = [problem for name in renderer.names() for problem in _layout(renderer, name)]
    for path in sorted(renderer.templates_dir.rglob("*.j2")):
        problems += _file_problems(renderer, path)
    return problems


def _layout(renderer: Renderer, name: str) -> Iterator[str]:
    base = renderer.templates_dir / name
    for part in REQUIRED_PARTS:
        if not (base / PARTS[part]).is_file():
            yield f"{base / PARTS[part]}:1: required template file is missing"
    # A misspelt file in a variant would silently fall back to the default language.
    for folder in (base, *(base / d for d in renderer.locales(name))):
        for path in sorted(folder.glob("*.j2")):
            if path.name not in PARTS.values() and not path.name.startswith("_"):
                yield f"{path}:1: unknown file, expected {', '.join(PARTS.values())}"


def _file_problems(renderer: Renderer, path: Path) -> list[str]:
    env = renderer.env
    name = path.relative_to(renderer.templates_dir).as_posix()
    try:
        ast = env.parse(path.read_text("utf-8"), name, str(path))
        env.compile(ast, name, str(path))  # also catches unknown filters and tests
    except TemplateSyntaxError as exc:
        return [problem_line(str(path), exc.lineno, exc.message)]
    except (OSError, UnicodeDecodeError) as exc:
        return [problem_line(str(path), 1, f"cannot read: {exc}")]
    problems = []
    for ref, line in _references(ast):
        if not _exists(renderer, ref):
            problems.append(f"{path}:{line}: template {ref!r} not found")
        elif renderer.escaped(name) and not renderer.escaped(ref):
            # A text template's macros and includes are not escaped where HTML uses them.
            problems.append(f"{path}:{line}: HTML template uses non-HTML template {ref!r}")
    return problems


def _exists(renderer: Renderer, name: str) -> bool:
    try:
        renderer.env.loader.get_source(renderer.env, name)  # type: ignore[union-attr]
    except TemplateNotFound:
        return False
    return True


def _references(ast: nodes.Template) -> Iterator[tuple[str, int]]:
    """Templates named literally by extends / include / import, with their line."""
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        target = getattr(node, "template", None)
        if isinstance(target, nodes.Const) and isinstance(target.value, str):
            yield target.value, node.lineno
