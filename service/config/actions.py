"""The actions a flow lists, one model per `action:`; `Action` is their union."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from service.config.base import Model, check_address, check_expression

__all__ = [
    "Action",
    "BaseAction",
    "DenyAction",
    "PythonAction",
    "RedirectAction",
    "SendEmailAction",
    "SetMetadataAction",
]

_HANDLER = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$"
_ACTION_ID = r"^[A-Za-z0-9_.:-]+$"


class BaseAction(Model):
    """Keys every action has. An empty `id` is filled in by `Config` from its position."""

    action: str
    id: str = Field(default="", max_length=100, pattern=_ACTION_ID)
    enabled: bool = True
    when: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)

    _when = field_validator("when")(check_expression)


class SendEmailAction(BaseAction):
    """Render `template` and send it to the address `to` evaluates to."""

    action: Literal["send_email"]
    template: str = Field(min_length=1)
    to: str = Field(default="event.user.email", validate_default=True)
    from_: str | None = Field(default=None, alias="from")
    reply_to: str | None = None

    _to = field_validator("to")(check_expression)
    _addresses = field_validator("from_", "reply_to")(check_address)

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
