"""The sections of the config file: `kafka`, `smtp`, `retry`, `rate_limit`, `dedupe`,
`http` and `log`."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from service.config.base import Model, check_address, none_if_empty

__all__ = [
    "DedupeConfig",
    "HttpConfig",
    "KafkaConfig",
    "LogConfig",
    "RateLimitConfig",
    "RetryConfig",
    "SmtpConfig",
    "is_loopback",
]


class KafkaConfig(Model):
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
    #: Outputs and consumed offsets commit in one Kafka transaction
    #: (service/kafka/transactions.py).
    exactly_once: bool = False
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validate_default=True
    )
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: str | None = None

    _empty_is_none = field_validator("sasl_mechanism", "ssl_cafile", "status_topic", mode="before")(
        none_if_empty
    )

    @field_validator("sasl_mechanism")
    @classmethod
    def _sasl_needs_mechanism(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol", "")
        if value is None and protocol.startswith("SASL_"):
            raise ValueError(f"required when security_protocol is {protocol}")
        return value


class SmtpConfig(Model):
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

    _address = field_validator("from_")(check_address)


class RetryConfig(Model):
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


class RateLimitConfig(Model):
    """`rate_limit:` — emails per recipient address per window; 0 = unlimited."""

    per_recipient: int = Field(default=20, ge=0)
    window_s: int = Field(default=3600, gt=0)


class DedupeConfig(Model):
    """`dedupe:` — the store that makes email effectively-once."""

    backend: Literal["sqlite", "redis", "memory"] = "sqlite"
    path: str = Field(default="var/herald.db", min_length=1)
    url: str = "redis://localhost:6379/0"
    ttl_s: int = Field(default=604800, gt=0)


class HttpConfig(Model):
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


class LogConfig(Model):
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
