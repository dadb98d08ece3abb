"""`Config`, the whole file, and the trigger-level checks of its `flows`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator

import service.config.sections as sections
from service.config.actions import Action, BaseAction
from service.config.base import Model
from service.config.problems import KeyPath, format_path
from service.config.yaml_lines import Origin
from service.locales import LOCALE_PATTERN, MAX_LOCALE_LENGTH
from service.triggers import ACTIONS, TRIGGERS

__all__ = ["FLOWS_CHECKED", "Config", "flow_problems"]

_SECTIONS = ("kafka", "smtp", "retry", "rate_limit", "dedupe", "http", "log")
#: Skips the trigger checks in Config when parse_config already made them with lines.
FLOWS_CHECKED = "flows_checked"


def flow_problems(flows: Mapping[str, Any]) -> list[tuple[KeyPath, str]]:
    """Trigger-level problems in raw `flows` data: unknown triggers, disallowed
    actions, duplicate ids. Malformed entries are left to the model to report."""
    problems: list[tuple[KeyPath, str]] = []
    for trigger, actions in flows.items():
        if trigger not in TRIGGERS:
            known = ", ".join(TRIGGERS)
            problems.append((("flows", trigger), f"unknown trigger '{trigger}' (known: {known})"))
        elif isinstance(actions, list):
            problems += _action_problems(trigger, actions)
    return [(path, f"{format_path(path)}: {message}") for path, message in problems]


def _action_problems(trigger: str, actions: list[Any]) -> list[tuple[KeyPath, str]]:
    problems: list[tuple[KeyPath, str]] = []
    allowed = TRIGGERS[trigger].actions
    seen: dict[str, int] = {}
    for index, item in enumerate(actions):
        if not isinstance(item, Mapping) or item.get("action") not in ACTIONS:
            continue
        path: KeyPath = ("flows", trigger, index)
        name = item["action"]
        if name not in allowed:
            allowed_names = ", ".join(sorted(allowed))
            message = f"action '{name}' is not allowed on trigger '{trigger}'"
            problems.append((path, f"{message} (allowed: {allowed_names})"))
        action_id = item.get("id") or f"{name}-{index + 1}"
        if action_id in seen:
            first = format_path(("flows", trigger, seen[action_id]))
            problems.append(((*path, "id"), f"duplicate action id '{action_id}' (also {first})"))
        seen.setdefault(action_id, index)
    return problems


class Config(Model):
    """The whole of `config/herald.yaml`, the file that documents every key and its default."""

    kafka: sections.KafkaConfig = Field(default_factory=sections.KafkaConfig)
    smtp: sections.SmtpConfig = Field(default_factory=sections.SmtpConfig)
    retry: sections.RetryConfig = Field(default_factory=sections.RetryConfig)
    rate_limit: sections.RateLimitConfig = Field(default_factory=sections.RateLimitConfig)
    dedupe: sections.DedupeConfig = Field(default_factory=sections.DedupeConfig)
    http: sections.HttpConfig = Field(default_factory=sections.HttpConfig)
    log: sections.LogConfig = Field(default_factory=sections.LogConfig)
    templates_dir: Path = Path("templates")
    default_locale: str = Field(default="en", max_length=MAX_LOCALE_LENGTH, pattern=LOCALE_PATTERN)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)
    flows: dict[str, list[Action]] = Field(default_factory=dict)
    _origin: Origin = PrivateAttr(default_factory=Origin)

    def location(self, *path: str | int) -> str:
        """`file:line` of a key, for checks made after loading (`herald check`).

        `config.location("flows", "post-login", 0, "template")` → `config/herald.yaml:31`;
        a key not in the file gives the line of its nearest ancestor that is.
        """
        return f"{self._origin.source}:{self._origin.line_of(path)}"

    @field_validator(*_SECTIONS, "secrets", "flows", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any, info: ValidationInfo) -> Any:
        # A section (or flow) whose entries are all commented out is null in YAML.
        if value is None:
            return {}
        if info.field_name == "flows" and isinstance(value, dict):
            return {trigger: [] if v is None else v for trigger, v in value.items()}
        return value

    @field_validator("flows")
    @classmethod
    def _check_flows(
        cls, flows: dict[str, list[BaseAction]], info: ValidationInfo
    ) -> dict[str, list[BaseAction]]:
        if not (info.context or {}).get(FLOWS_CHECKED):
            raw = {t: [a.model_dump(include={"id", "action"}) for a in v] for t, v in flows.items()}
            if problems := flow_problems(raw):
                raise ValueError("; ".join(message for _, message in problems))
        return {trigger: _with_ids(actions) for trigger, actions in flows.items()}


def _with_ids(actions: list[BaseAction]) -> list[BaseAction]:
    """Fill each empty id with `<action>-<position>` (1-based)."""
    return [
        a if a.id else a.model_copy(update={"id": f"{a.action}-{i}"})
        for i, a in enumerate(actions, start=1)
    ]
