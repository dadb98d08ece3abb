"""Herald's configuration (SPEC §4): YAML + `${VAR}` + `HERALD_*` overrides, validated.

`load_config` is what `herald check`, startup and SIGHUP reload all call. It either
returns a `Config` or raises `ConfigError` with every problem it found, one
`path:line: message` line each (`HERALD_SMTP__PORT: message` for overrides). Messages
never carry the offending value, so a secret in the wrong place cannot leak.

`Config.location(...)` gives the `file:line` of any key, for checks made after
loading (missing templates, handlers that do not import). Relative paths in it (`templates_dir`,
`dedupe.path`) are relative to the working directory, as in `compose.yaml`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from jinja2 import TemplateSyntaxError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from service.addresses import InvalidAddress, parse_mailbox
from service.config_yaml import (
    ConfigError,
    KeyPath,
    Origin,
    apply_env_overrides,
    compose_document,
    format_path,
    validation_problems,
)
from service.sandbox import sandbox
from service.triggers import ACTIONS, TRIGGERS

__all__ = [
    "Action",
    "BaseAction",
    "Config",
    "ConfigError",
    "DedupeConfig",
    "DenyAction",
    "HttpConfig",
    "KafkaConfig",
    "LogConfig",
    "PythonAction",
    "RateLimitConfig",
    "RedirectAction",
    "RetryConfig",
    "SendEmailAction",
    "SetMetadataAction",
    "SmtpConfig",
    "flow_problems",
    "is_loopback",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

DEFAULT_CONFIG_PATH = Path("config/herald.yaml")
_HANDLER = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$"
_ACTION_ID = r"^[A-Za-z0-9_.:-]+$"
_LOCALE = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"
_SECTIONS = ("kafka", "smtp", "retry", "rate_limit", "dedupe", "http", "log")
# Skips the trigger checks in Config when parse_config already made them with lines.
_FLOWS_CHECKED = "flows_checked"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- validators shared by several fields --------------------------------------------


def _check_address(value: str | None) -> str | None:
    """`Name <a@b>` or `a@b`, valid by the rule of `service.addresses`."""
    if value is None:
        return None
    try:
        parse_mailbox(value)  # the mailer's own rule: check refuses what it would refuse
    except InvalidAddress:
        raise ValueError(
            f"{value!r} is not one valid email address (like 'Name <a@example.com>')"
        ) from None
    return value


def _check_expression(value: str | None) -> str | None:
    """A Jinja2 expression that compiles in the sandbox the flows run in."""
    if value is None:
        return None
    try:
        sandbox().compile_expression(value)
    except TemplateSyntaxError as exc:
        raise ValueError(f"invalid Jinja2 expression: {exc.message}") from None
    return value


def _none_if_empty(value: Any) -> Any:
    # `${VAR:-}` and `HERALD_X=` yield "", which means "not set" for optional keys.
    return None if value == "" else value


# --- sections -----------------------------------------------------------------------


class KafkaConfig(_Model):
    """`kafka:` — where events come from and where commands and decisions go."""

    bootstrap_servers: str = Field(default="localhost:9092", min_length=1)
    group_id: str = Field(default="herald", min_length=1)
    topics: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["identity.events"], min_length=1
    )
    auto_offset_reset: Literal["latest", "earliest"] = "latest"
    format: Literal["cloudevents", "auth0-log-stream", "keycloak"] = "cloudevents"
    commands_topic: str = Field(default="identity.commands", min_length=1)
    decisions_topic: str = Field(default="identity.decisions", min_length=1)
    dlq_suffix: str = Field(default=".dlq", min_length=1)
    retry_suffix: str = Field(default=".retry", min_length=1)
    status_topic: str | None = Field(default="identity.notifications", min_length=1)  # None: off
    #: Outputs and consumed offsets commit in one Kafka transaction (service/transactions.py).
    exactly_once: bool = False
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validate_default=True
    )
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: str | None = None

    _empty_is_none = field_validator("sasl_mechanism", "ssl_cafile", "status_topic", mode="before")(
        _none_if_empty
    )

    @field_validator("sasl_mechanism")
    @classmethod
    def _sasl_needs_mechanism(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol", "")
        if value is None and protocol.startswith("SASL_"):
            raise ValueError(f"required when security_protocol is {protocol}")
        return value


class SmtpConfig(_Model):
    """`smtp:` — the server mail is handed to."""

    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=1025, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str = ""
    password: SecretStr = SecretStr("")
    from_: str = Field(default="Example <no-reply@example.com>", alias="from")
    timeout_s: float = Field(default=10, gt=0)  # connect and every command
    # The reply to the final "." only: RFC 5321 §4.5.3.2.6 gives it 10 minutes, and
    # giving up sooner leaves an email that may have been accepted (`uncertain`).
    data_timeout_s: float = Field(default=600, gt=0)
    pool_size: int = Field(default=4, ge=1, le=64)

    _address = field_validator("from_")(_check_address)


class RetryConfig(_Model):
    """`retry:` — per email, for transient SMTP failures; scheduled on the retry topic."""

    attempts: int = Field(default=8, ge=1)
    initial_backoff_s: float = Field(default=10, ge=0)
    max_backoff_s: float = Field(default=900, ge=0)

    @field_validator("max_backoff_s")
    @classmethod
    def _not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial_backoff_s", 0)
        if value < initial:
            raise ValueError(f"must be >= initial_backoff_s ({initial})")
        return value


class RateLimitConfig(_Model):
    """`rate_limit:` — emails per recipient address per window; 0 = unlimited."""

    per_recipient: int = Field(default=20, ge=0)
    window_s: int = Field(default=3600, gt=0)


class DedupeConfig(_Model):
    """`dedupe:` — the store that makes email effectively-once."""

    backend: Literal["sqlite", "redis", "memory"] = "sqlite"
    path: str = Field(default="var/herald.db", min_length=1)
    url: str = "redis://localhost:6379/0"
    ttl_s: int = Field(default=604800, gt=0)


class HttpConfig(_Model):
    """`http:` — health, readiness, metrics and the decisions webhook; port 0 = any.

    `token` is the bearer token every `/v1/*` request must carry; without one the webhook
    is open to whoever can reach it, so it is only allowed on a loopback `host`.
    """

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    token: SecretStr = Field(default=SecretStr(""), validate_default=True)

    @field_validator("token")
    @classmethod
    def _required_off_loopback(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        host = info.data.get("host")
        if not value.get_secret_value() and host is not None and not is_loopback(host):
            raise ValueError("required when http.host is not a loopback address")
        return value


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1: reachable only from this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LogConfig(_Model):
    """`log:` — level and whether email addresses are shown unmasked."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    show_addresses: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            return "WARNING" if value == "WARN" else value
        return value


# --- actions ------------------------------------------------------------------------


class BaseAction(_Model):
    """Keys every action has. An empty `id` is filled in by `Config` from its position."""

    action: str
    id: str = Field(default="", max_length=100, pattern=_ACTION_ID)
    enabled: bool = True
    when: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)

    _when = field_validator("when")(_check_expression)


class SendEmailAction(BaseAction):
    """Render `template` and send it to the address `to` evaluates to."""

    action: Literal["send_email"]
    template: str = Field(min_length=1)
    to: str = Field(default="event.user.email", validate_default=True)
    from_: str | None = Field(default=None, alias="from")
    reply_to: str | None = None

    _to = field_validator("to")(_check_expression)
    _addresses = field_validator("from_", "reply_to")(_check_address)

    @field_validator("template")
    @classmethod
    def _template_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError("a template name, not a path (like 'password_changed')")
        return value


class SetMetadataAction(BaseAction):
    """Merge keys into the user's metadata; a null value deletes the key."""

    action: Literal["set_metadata"]
    user_metadata: dict[str, Any] = Field(default_factory=dict)
    app_metadata: dict[str, Any] = Field(default_factory=dict)


class DenyAction(BaseAction):
    """Deny the sign-up or login; stops the flow."""

    action: Literal["deny"]
    reason: str = "denied"
    user_message: str = ""


class RedirectAction(BaseAction):
    """Send the user to `url` (with `query`) before the login completes."""

    action: Literal["redirect"]
    url: str
    query: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _absolute_http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value


class PythonAction(BaseAction):
    """Call `async def handler(event, api)` found at `package.module:function`."""

    action: Literal["python"]
    handler: str = Field(pattern=_HANDLER)


Action = Annotated[
    SendEmailAction | SetMetadataAction | DenyAction | RedirectAction | PythonAction,
    Field(discriminator="action"),
]


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


class Config(_Model):
    """The whole of `config/herald.yaml`; every key has SPEC §4's default."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    templates_dir: Path = Path("templates")
    default_locale: str = Field(default="en", pattern=_LOCALE)
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
        if not (info.context or {}).get(_FLOWS_CHECKED):
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


# --- loading ------------------------------------------------------------------------


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """`--config PATH`, else `HERALD_CONFIG`, else `config/herald.yaml` (SPEC §3)."""
    return Path(cli_value or environ.get("HERALD_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate, override and validate the config file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    return parse_config(text, str(path), os.environ if environ is None else environ)


def parse_config(text: str, source: str, environ: Mapping[str, str] | None = None) -> Config:
    """Validate YAML `text`; `source` names it in messages (`source:line: ...`)."""
    env = os.environ if environ is None else environ
    doc = compose_document(text, source, env)
    env_problems = apply_env_overrides(doc, Config, env)
    found = [doc.problem(path, message) for path, message in doc.problems.items()]
    flows = doc.data.get("flows")
    if isinstance(flows, Mapping):
        found += [doc.problem(path, message) for path, message in flow_problems(flows)]
    try:
        config = Config.model_validate(doc.data, context={_FLOWS_CHECKED: True})
    except ValidationError as exc:
        found += validation_problems(doc, exc, doc.problems.keys(), "action")
    found.sort(key=lambda p: (p.line is None, p.line or 0))
    if found or env_problems:
        raise ConfigError(str(p) for p in found + env_problems)
    config._origin = Origin(source, doc.lines)
    return config
