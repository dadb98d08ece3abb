"""Email templates: sandboxed Jinja2, locale variants overriding file by file (README: Templates).

Per-render costs are kept to the templates themselves: which files render a (template,
locale) pair is worked out once and remembered until `reload()` (no filesystem checks
per email), compiled templates are cached by Jinja until then, template globals are a
plain dict fixed when the environment is built (Jinja's default `ChainMap` is walked in
Python on every render and every `{% from … import … %}`), and the `datetime` filter
remembers the timestamps it formatted (text and HTML parts format the same one).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import TemplateSyntaxError

from service.locales import is_locale
from service.sandbox import sandbox

__all__ = [
    "PARTS",
    "REQUIRED_PARTS",
    "Rendered",
    "Renderer",
    "TemplateError",
    "candidate_locales",
    "problem_line",
    "template_context",
]

#: The files of one template, by part. Subject and text are required, HTML is optional.
PARTS: dict[str, str] = {"subject": "subject.txt.j2", "text": "text.txt.j2", "html": "html.html.j2"}
REQUIRED_PARTS = ("subject", "text")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
#: Remembered (template, locale) resolutions; past this many the memo starts over, so
#: events with ever new locale strings cannot grow it.
_RESOLVED_MAX = 1024


class TemplateError(Exception):
    """A template is missing, does not compile, or fails to render; the message is one line."""


@dataclass(frozen=True)
class Rendered:
    """One rendered email. `locale` is the variant used (`"de"`), or the default locale."""

    subject: str
    text: str
    html: str | None
    locale: str


def normalize_locale(locale: str | None) -> str | None:
    """Canonical BCP 47 casing (`de_at` → `de-AT`), or None when `locale` is not a tag."""
    locale = locale.strip() if isinstance(locale, str) else ""
    if not is_locale(locale):
        return None
    first, *rest = locale.replace("_", "-").split("-")
    return "-".join([first.lower(), *map(_case_subtag, rest)])


def _case_subtag(tag: str) -> str:
    if len(tag) == 2 and tag.isalpha():
        return tag.upper()  # region: AT
    if len(tag) == 4 and tag.isalpha():
        return tag.title()  # script: Hant
    return tag.lower()


def candidate_locales(locale: str | None, default: str) -> list[str]:
    """Locales to try, most specific first: `de-AT` → `[de-AT, de, default]`."""
    tag = normalize_locale(locale)
    subtags = tag.split("-") if tag else []
    chain = ["-".join(subtags[:i]) for i in range(len(subtags), 0, -1)]
    return list(dict.fromkeys([*chain, normalize_locale(default) or default]))


def template_context(
    view: Mapping[str, Any], secrets: Mapping[str, str], data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a template sees: `event` (the Auth0-shaped view), `user`, `secrets`, `data`."""
    return {
        "event": view,
        "user": view.get("user") or {},
        "secrets": secrets,
        "data": dict(data or {}),
    }


_DEFAULT_FORMAT = "%Y-%m-%d %H:%M UTC"


def format_datetime(value: Any, fmt: str = _DEFAULT_FORMAT) -> str:
    """Jinja filter: an ISO 8601 timestamp in UTC; anything unparseable passes through."""
    if not value:
        return ""
    if isinstance(value, str) and isinstance(fmt, str):
        return _format_timestamp(value, fmt)
    return _format(value, fmt)


@lru_cache(maxsize=1024)
def _format_timestamp(value: str, fmt: str) -> str:
    # Each part of an email formats the same `event.time`: parse it once.
    return _format(value, fmt)


def _format(value: Any, fmt: Any) -> str:
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    # CloudEvents times carry an offset; a naive one is taken as UTC rather than local time.
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if fmt == _DEFAULT_FORMAT:  # what strftime gives, without its ~2 µs
        return f"{when.year}-{when.month:02d}-{when.day:02d} {when.hour:02d}:{when.minute:02d} UTC"
    return when.strftime(fmt)


def http_url(value: Any) -> str:
    """Jinja filter: `value` if it is an http(s) URL, else "" (no `javascript:` links)."""
    url = str(value or "").strip()
    return url if url.lower().startswith(("https://", "http://")) else ""


class Renderer:
    """Renders `templates_dir/<name>/` in the locale closest to the user's."""

    def __init__(
        self, templates_dir: Path, default_locale: str = "en", *, auto_reload: bool = False
    ) -> None:
        self.templates_dir = Path(templates_dir)
        self.default_locale = normalize_locale(default_locale) or default_locale
        #: Whether a loader path is HTML, so autoescaped (`html.j2` files).
        self.escaped = jinja2.select_autoescape(("html.j2", "html"), default_for_string=False)
        # Immutable sandbox: templates may read event data but never call into or mutate it.
        self.env = sandbox(
            immutable=True,
            flat_globals=True,
            filters={"datetime": format_datetime, "http_url": http_url},
            loader=jinja2.FileSystemLoader(self.templates_dir),
            autoescape=self.escaped,
            undefined=jinja2.ChainableUndefined,  # a missing optional field renders as ""
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            cache_size=-1,  # unbounded: every file compiles once, until reload()
            auto_reload=auto_reload,
        )
        self._variants: dict[str, dict[str, str]] = {}
        self._files: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
        self._resolved: dict[tuple[str, str | None], tuple[str, dict[str, str]]] = {}

    def reload(self) -> None:
        """Forget compiled templates and directory listings (SIGHUP)."""
        self.env.cache.clear()  # type: ignore[union-attr]
        self._variants.clear()
        self._files.clear()
        self._resolved.clear()

    def names(self) -> list[str]:
        """Template names: the directories of templates_dir, except `_layout` and the like."""
        if not self.templates_dir.is_dir():
            return []
        dirs = (p for p in self.templates_dir.iterdir() if p.is_dir())
        return sorted(p.name for p in dirs if _NAME.fullmatch(p.name))

    def locales(self, name: str) -> list[str]:
        """The locale variant directories of template `name`, as spelled on disk."""
        base = self._base(name)
        dirs = (p for p in base.iterdir() if p.is_dir()) if base.is_dir() else ()
        return sorted(p.name for p in dirs if normalize_locale(p.name))

    def resolve(self, name: str, locale: str | None) -> tuple[str, dict[str, str]]:
        """The locale used and, per part, the loader path of the file that renders it.

        Remembered until `reload()` (unless `auto_reload`): no filesystem check per email.
        """
        # Anything but a string is no locale tag: the same resolution as None.
        memo = (name, locale if isinstance(locale, str) else None)
        found = self._resolved.get(memo)
        if found is None or self.env.auto_reload:
            found = self._resolve(name, locale)
            if len(self._resolved) >= _RESOLVED_MAX:
                self._resolved.clear()
            self._resolved[memo] = found
        return found

    def _resolve(self, name: str, locale: str | None) -> tuple[str, dict[str, str]]:
        variants = self._variant_dirs(name)
        candidates = candidate_locales(locale, self.default_locale)
        found = [(c, variants[c.lower()]) for c in candidates if c.lower() in variants]
        # Keyed by directories that exist, not by the locale string: events cannot grow it.
        key = (name, tuple(d for _, d in found))
        if key not in self._files or self.env.auto_reload:
            self._files[key] = self._pick_files(name, key[1])
        return (found[0][0] if found else self.default_locale), self._files[key]

    def render(self, name: str, locale: str | None, context: Mapping[str, Any]) -> Rendered:
        """Render template `name` for `locale`; the subject always comes out as one line."""
        used, files = self.resolve(name, locale)
        subject = " ".join(_CONTROL.sub(" ", self._render_file(files["subject"], context)).split())
        text = self._render_file(files["text"], context)
        html = self._render_file(files["html"], context) if "html" in files else None
        return Rendered(subject=subject, text=text, html=html, locale=used)

    def _base(self, name: str) -> Path:
        # Names come from config; only a plain directory name keeps the lookup inside
        # templates_dir. Locales are safe by construction (see candidate_locales).
        if not _NAME.fullmatch(name):
            raise TemplateError(f"invalid template name {name!r}")
        return self.templates_dir / name

    def _variant_dirs(self, name: str) -> dict[str, str]:
        if not self._base(name).is_dir():
            raise TemplateError(f"{self._base(name)}: unknown template {name!r}")
        if name not in self._variants or self.env.auto_reload:
            self._variants[name] = {d.replace("_", "-").lower(): d for d in self.locales(name)}
        return self._variants[name]

    def _pick_files(self, name: str, dirs: tuple[str, ...]) -> dict[str, str]:
        files: dict[str, str] = {}
        for part, filename in PARTS.items():
            paths = [*(f"{name}/{d}/{filename}" for d in dirs), f"{name}/{filename}"]
            chosen = next((p for p in paths if (self.templates_dir / p).is_file()), None)
            if chosen:
                files[part] = chosen
        for part in REQUIRED_PARTS:
            if part not in files:
                raise TemplateError(f"{self._base(name) / PARTS[part]}: template file is missing")
        return files

    def _render_file(self, path: str, context: Mapping[str, Any]) -> str:
        try:
            return self.env.get_template(path).render(context)
        except TemplateSyntaxError as exc:
            where = exc.filename or path
            raise TemplateError(problem_line(where, exc.lineno, exc.message)) from exc
        except Exception as exc:
            # Jinja rewrites tracebacks so that template frames carry the file and line.
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if f.filename.startswith(str(self.templates_dir))]
            file, line = (ours[-1].filename, ours[-1].lineno) if ours else (path, None)
            raise TemplateError(problem_line(file, line, f"{type(exc).__name__}: {exc}")) from exc


def problem_line(path: str, line: int | None, message: str | None) -> str:
    """A template problem as one `path:line: message` line."""
    where = f"{path}:{line}" if line else path
    return f"{where}: {' '.join(str(message or 'error').split())}"
