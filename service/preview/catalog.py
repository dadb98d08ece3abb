"""What `herald preview` shows: every template, locale and sample event, rendered as sent.

Pure logic, no HTTP: the sample events, which of them each template is shown with,
a fingerprint of the files on disk (for live reload), and one rendered email.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

from service.checks.templates import template_problems
from service.config import Config, SendEmailAction
from service.events import Event, MalformedEvent, validate_envelope
from service.flows import event_view
from service.mail.render import Rendered, Renderer, TemplateError, template_context

__all__ = [
    "Catalog",
    "Preview",
    "Sample",
    "fingerprint",
    "load_samples",
]


@dataclass(frozen=True)
class Sample:
    """One sample event file; `name` (the file stem) identifies it in URLs."""

    name: str
    path: Path
    event: Event


@dataclass(frozen=True)
class Preview:
    """One template rendered for one locale and sample: the email, or why it failed."""

    template: str
    locale: str
    sample: Sample
    sender: str
    recipient: str
    email: Rendered | None
    files: dict[str, str]
    error: str | None


def load_samples(events_dir: Path) -> tuple[list[Sample], list[str]]:
    """The valid sample events in `events_dir`, and one `path: message` per bad file."""
    samples: list[Sample] = []
    problems: list[str] = []
    for path in sorted(events_dir.glob("*.json")):
        try:
            event = validate_envelope(json.loads(path.read_text("utf-8")))
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}")
            continue
        except (OSError, UnicodeDecodeError, MalformedEvent) as exc:
            problems.append(f"{path}: {_one_line(exc)}")
            continue
        if event is None:
            problems.append(f"{path}: event type is not one of Herald's triggers")
            continue
        samples.append(Sample(path.stem, path, event))
    if not samples and not problems:
        problems.append(f"{events_dir}: no sample events (*.json) to render templates with")
    return samples, problems


def fingerprint(*dirs: Path) -> str:
    """A short hash of the names, sizes and mtimes of every file under `dirs`."""
    digest = hashlib.sha256()
    for root in dirs:
        for path in sorted(root.rglob("*")) if root.is_dir() else ():
            try:
                stat = path.stat()
            except OSError:  # deleted while we walked: the next poll sees the new state
                continue
            if S_ISREG(stat.st_mode):
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class Catalog:
    """Templates, their locales and sample events, read from disk once per version."""

    def __init__(self, config: Config, renderer: Renderer, events_dir: Path) -> None:
        self.config = config
        self.renderer = renderer
        self.events_dir = events_dir
        self.samples: list[Sample] = []
        self.problems: list[str] = []
        self.version = ""

    def refresh(self) -> bool:
        """Re-read templates and samples if any file changed; True when something did."""
        version = fingerprint(self.renderer.templates_dir, self.events_dir)
        if version == self.version:
            return False
        self.renderer.reload()
        self.samples, sample_problems = load_samples(self.events_dir)
        self.problems = [*template_problems(self.renderer), *sample_problems]
        self.version = version
        return True

    def templates(self) -> list[str]:
        """Every template name in the templates directory."""
        return self.renderer.names()

    def locales(self, template: str) -> list[str]:
        """The default locale first, then each locale variant directory."""
        default = self.renderer.default_locale
        variants = [v for v in self.renderer.locales(template) if v.lower() != default.lower()]
        return [default, *variants]

    def samples_for(self, template: str) -> list[Sample]:
        """The samples whose trigger's flow sends `template`, else every sample.

        A template no flow names (sent from a `python` action, say) still gets a preview,
        with every sample event.
        """
        triggers = set(_triggers_sending(self.config, template))
        chosen = [s for s in self.samples if s.event.trigger.name in triggers]
        return chosen or list(self.samples)

    def sample(self, name: str) -> Sample | None:
        """The sample event named `name` (its file stem), if there is one."""
        return next((s for s in self.samples if s.name == name), None)

    def preview(self, template: str, locale: str, sample: Sample) -> Preview:
        """Render `template` as the `send_email` action would, for a user in `locale`."""
        event = _with_locale(sample.event, locale)
        view = event_view(event, self.config.secrets)
        context = template_context(view, self.config.secrets)
        user = context["user"]
        recipient = _mailbox(user.get("name"), user.get("email"))
        email, files, error = None, {}, None
        try:
            files = self.renderer.resolve(template, locale)[1]
            email = self.renderer.render(template, locale, context)
        except TemplateError as exc:
            error = str(exc)
        sender = self.config.smtp.from_
        return Preview(template, locale, sample, sender, recipient, email, files, error)


def _triggers_sending(config: Config, template: str) -> Iterable[str]:
    for trigger, actions in config.flows.items():
        if any(isinstance(a, SendEmailAction) and a.template == template for a in actions):
            yield trigger


def _with_locale(event: Event, locale: str) -> Event:
    """A copy of `event` whose user has `locale`, so the variant under preview is chosen."""
    envelope: dict[str, Any] = copy.deepcopy(event.envelope)
    envelope["data"]["user"]["locale"] = locale
    return Event(trigger=event.trigger, envelope=envelope)


def _mailbox(name: Any, address: Any) -> str:
    address = str(address or "(no address)")
    return f"{name} <{address}>" if name else address


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, MalformedEvent) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
