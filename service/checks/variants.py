"""Locale variant checks: the locale folders of a template that users would not get in full.

Locale variants (`templates/<name>/<locale>/`) override the base files one by one, and
the base files are the default locale's text, so `default_locale` needs no folder of its
own whatever it is. A variant is reported when:
- it overrides one of the two bodies, text and HTML, but not the other: clients show
  the HTML part, so the email would carry two languages;
- its folder holds no template file, or is not named as a locale (`de`, `pt-BR`): the
  users it was meant for silently get the default locale.
A variant with only `subject.txt.j2` is fine: the body is the same in both. (A base
without `subject.txt.j2` or `text.txt.j2`, which every variant falls back on, and
misspelt file names are template problems: `service.checks.templates`.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from service.mail.render import PARTS, Renderer

__all__ = ["variant_problems"]


def variant_problems(renderer: Renderer, name: str) -> Iterator[str]:
    """The locale folders of template `name` that users would not get in full."""
    base = renderer.templates_dir / name
    locales = set(renderer.locales(name))
    folders = (p for p in base.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for folder in sorted(folders):
        if folder.name not in locales:
            yield f"{folder}:1: not a locale folder (like 'de' or 'pt-BR'): its files are unused"
            continue
        has = {part for part, file in PARTS.items() if (folder / file).is_file()}
        if not any(folder.glob("*.j2")):
            yield f"{folder}:1: locale folder without templates: its users get the default"
        elif "html" in has and "text" not in has:
            yield _mixed(folder, missing="text", present="html")
        elif "text" in has and "html" not in has and (base / PARTS["html"]).is_file():
            yield _mixed(folder, missing="html", present="text")


def _mixed(folder: Path, missing: str, present: str) -> str:
    return (
        f"{folder / PARTS[missing]}:1: locale variant is missing: {folder.name} overrides "
        f"{PARTS[present]} but not {PARTS[missing]}, so its email would mix two languages"
    )
