"""Keycloak events, as event-listener SPIs publish them, mapped to CloudEvents.

The README's "Auth0 log streams and Keycloak events" says what is kept.

The JSON is Keycloak's `Event`: `id`, `time` (epoch milliseconds), `type`, `realmId`,
`clientId`, `userId`, `sessionId`, `ipAddress`, `error` and `details` (a map of strings:
`username`, `email`, `first_name`, `last_name`, `identity_provider`, …). Keycloak events
carry no user agent and no reset or verification link: `data.link` stays absent.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

import service.formats._common as common
from service.events import MalformedEvent

__all__ = ["EVENT_TYPES", "parse", "to_envelope"]

#: Keycloak event types → CloudEvents types (README, "Events"); other types are skipped.
EVENT_TYPES: dict[str, str] = {
    "REGISTER": "identity.user.registered",
    "UPDATE_PASSWORD": "identity.user.password_changed",
    "LOGIN": "identity.user.logged_in",
    "LOGIN_ERROR": common.LOGIN_FAILED,
    "SEND_RESET_PASSWORD": "identity.user.password_reset_requested",
    "SEND_VERIFY_EMAIL": "identity.user.email_verification_requested",
}


def to_envelope(event: dict[str, Any]) -> dict[str, Any] | None:
    """The CloudEvents envelope for one Keycloak event; None for a type Herald skips."""
    kc_type = str(event.get("type"))
    ce_type = EVENT_TYPES.get(kc_type)
    if ce_type is None:
        return None
    user_id = common.text(event, "userId")
    if user_id is None:  # a LOGIN_ERROR "user_not_found" is skipped
        common.no_user(ce_type, f"Keycloak event {kc_type} has no 'userId'")
        return None
    realm = common.text(event, "realmId")
    return common.envelope(
        event_id=common.text(event, "id") or _derived_id(event),
        source=f"keycloak:{realm}" if realm else "keycloak",
        ce_type=ce_type,
        time=_iso_time(event.get("time")),
        user_id=user_id,
        data=_data(event, user_id),
    )


def _derived_id(event: dict[str, Any]) -> str:
    """Keycloak before 22 sends no `id`: derive one from the content, the same on redelivery."""
    digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"kc-{digest[:32]}"


def _iso_time(millis: Any) -> str | None:
    """Epoch milliseconds → ISO 8601 in UTC (`2026-11-26T10:00:00.000Z`)."""
    if millis is None:
        return None
    if isinstance(millis, bool) or not isinstance(millis, int | float):
        raise MalformedEvent("field 'time' must be epoch milliseconds")
    try:
        when = datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedEvent("field 'time' is out of range") from None
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _data(event: dict[str, Any], user_id: str) -> dict[str, Any]:
    details = common.mapping(event, "details")
    username = common.text(details, "username")
    user = {
        "user_id": user_id,
        "email": common.email_or_none(common.text(details, "email"), username),
        "given_name": common.text(details, "first_name"),
        "family_name": common.text(details, "last_name"),
        "nickname": username if username and not common.email_or_none(username) else None,
    }
    idp = common.text(details, "identity_provider")
    return common.compact(
        {
            "user": common.compact(user),
            "request": common.compact({"ip": common.text(event, "ipAddress")}),
            "client": common.compact({"client_id": common.text(event, "clientId")}),
            "connection": {"name": idp} if idp else None,  # brokered login: the IdP alias
        }
    )


parse = common.provider_parser(to_envelope, "Keycloak")
