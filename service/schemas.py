"""Message schemas of Herald's topics (README: Events, Outputs), as pydantic models.

Documentation only: Herald validates input in `service.events` (one place decides
"malformed → dead letter"). These models give the AsyncAPI document its JSON Schemas.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.triggers import TRIGGERS

__all__ = [
    "Auth0LogEvent",
    "CloudEvent",
    "DeadLetterHeaders",
    "Decision",
    "KeycloakEvent",
    "MetadataUpdate",
]

_TYPES = ", ".join(t.event_type for t in TRIGGERS.values())


class _Open(BaseModel):
    """Other fields are allowed and passed on to flows and templates."""

    model_config = ConfigDict(extra="allow")


class GeoIp(_Open):
    country_code: str | None = None
    city_name: str | None = None


class Request(_Open):
    ip: str | None = None
    user_agent: str | None = None
    geoip: GeoIp | None = None


class User(_Open):
    user_id: str = Field(min_length=1)
    email: str | None = None
    email_verified: bool | None = None
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    nickname: str | None = None
    locale: str | None = Field(default=None, examples=["de-AT"])
    user_metadata: dict[str, Any] | None = None
    app_metadata: dict[str, Any] | None = None
    created_at: str | None = None
    last_login: str | None = None


class Connection(_Open):
    name: str | None = None
    strategy: str | None = None


class Client(_Open):
    client_id: str | None = None
    name: str | None = None


class EventData(_Open):
    user: User
    request: Request | None = None
    connection: Connection | None = None
    client: Client | None = None
    link: str | None = Field(default=None, description="reset or verification URL")
    expires_at: str | None = None
    attempts: int | None = None


class CloudEvent(_Open):
    """An identity event: CloudEvents 1.0, structured mode (binary mode: `ce_*` headers)."""

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=256, description="the idempotency key")
    source: str = Field(min_length=1)
    type: str = Field(description=f"one of {_TYPES}; other types are skipped")
    time: str | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    data: EventData


class Auth0LogEvent(_Open):
    """An Auth0 log event (`kafka.format: auth0-log-stream`); also accepted wrapped as
    `{"log_id", "data": {…}}`. Types ss, scp, s, f, fp, fu run flows; others are skipped."""

    log_id: str
    type: str = Field(examples=["ss", "scp", "s", "f", "fp", "fu"])
    date: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    connection: str | None = None
    strategy: str | None = None
    client_id: str | None = None
    client_name: str | None = None
    details: dict[str, Any] | None = None


class KeycloakEvent(_Open):
    """A Keycloak event (`kafka.format: keycloak`). Types REGISTER, UPDATE_PASSWORD, LOGIN,
    LOGIN_ERROR, SEND_RESET_PASSWORD, SEND_VERIFY_EMAIL run flows; others are skipped."""

    id: str | None = None
    time: int | None = Field(default=None, description="epoch milliseconds")
    type: str
    realmId: str | None = None  # Keycloak's own field names
    clientId: str | None = None
    userId: str | None = None
    ipAddress: str | None = None
    error: str | None = None
    details: dict[str, str] | None = None


class MetadataChanges(BaseModel):
    user_id: str
    user_metadata: dict[str, Any] = Field(description="keys to set; a null value deletes")
    app_metadata: dict[str, Any] = Field(description="keys to set; a null value deletes")


class MetadataUpdate(BaseModel):
    """A metadata command, keyed by user id; `id` is derived from the source event's id."""

    specversion: Literal["1.0"]
    id: str
    source: str
    type: Literal["identity.user.metadata_update"]
    time: str | None = None
    subject: str | None = None
    datacontenttype: Literal["application/json"] | None = None
    data: MetadataChanges


class Redirect(BaseModel):
    url: str
    query: dict[str, str] = Field(default_factory=dict)


class Decision(BaseModel):
    """The answer to a synchronous trigger (pre-user-registration, post-login)."""

    event_id: str
    trigger: Literal["pre-user-registration", "post-login"]
    decision: Literal["allow", "deny", "redirect"]
    reason: str | None = None
    user_message: str | None = None
    user_metadata: dict[str, Any] = Field(default_factory=dict)
    app_metadata: dict[str, Any] = Field(default_factory=dict)
    redirect: Redirect | None = None


class EmailStatusData(BaseModel):
    """One delivery record as it changed (`herald messages --json` shows the same)."""

    event_id: str
    action_id: str
    template: str
    to: str = Field(description="masked (a***@example.com) unless log.show_addresses")
    user_id: str
    status: Literal["sent", "deferred", "uncertain", "failed", "skipped"]
    reason: str | None = Field(
        default=None, description="failed: the error; skipped: rate_limited | expired"
    )
    attempts: int
    smtp_reply: str | None = None
    message_id: str | None = None
    created_at: str
    updated_at: str
    next_attempt_at: str | None = Field(default=None, description="deferred: when, ISO 8601")
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    resend: bool = False


class EmailStatus(BaseModel):
    """CloudEvent `herald.email.status`: a delivery record's change, keyed by user id.
    The id is the same for every delivery of one transition."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: Literal["herald"] = "herald"
    type: Literal["herald.email.status"] = "herald.email.status"
    subject: str
    time: str
    datacontenttype: Literal["application/json"] = "application/json"
    data: EmailStatusData


class DeadLetterHeaders(BaseModel):
    """Headers Herald adds to a dead letter, next to the record's original headers."""

    model_config = ConfigDict(populate_by_name=True)

    error: str = Field(alias="x-herald-error", examples=["SmtpPermanentError"])
    reason: str = Field(alias="x-herald-reason")
    original_topic: str = Field(alias="x-herald-original-topic")
    original_partition: str = Field(alias="x-herald-original-partition")
    original_offset: str = Field(alias="x-herald-original-offset")
    failed_at: str = Field(alias="x-herald-failed-at", description="ISO 8601")
