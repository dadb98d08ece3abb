"""Auth0 log events, as log streams deliver them, mapped to CloudEvents.

The README's "Auth0 log streams and Keycloak events" says what is kept.

Accepted shapes: the bare log event (`{"log_id", "type", "date", "user_id", …}`), the
`{"log_id", "data": {…}}` wrapper of HTTP and EventBridge streams, and a whole
EventBridge event (`{"detail": {"log_id", "data": {…}}}`).

Where the address comes from: a sign-up carries it in `details.body.email`, a password
change in `details.email`; otherwise `user_name`, which is the email address for
database connections (it may also be a username or a phone number, then unused).
"""

from __future__ import annotations

from typing import Any

from service.events import MalformedEvent
from service.formats._common import (
    LOGIN_FAILED,
    compact,
    email_or_none,
    envelope,
    mapping,
    no_user,
    provider_parser,
    text,
)

__all__ = ["EVENT_TYPES", "parse", "to_envelope"]

#: Auth0 log event type codes → CloudEvents types (README, "Events"); other codes are skipped.
EVENT_TYPES: dict[str, str] = {
    "ss": "identity.user.registered",  # successful signup
    "scp": "identity.user.password_changed",  # successful change password
    "s": "identity.user.logged_in",  # successful login
    "f": LOGIN_FAILED,  # failed login
    "fp": LOGIN_FAILED,  # failed login: incorrect password
    "fu": LOGIN_FAILED,  # failed login: invalid email or username
}


def to_envelope(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The CloudEvents envelope for one Auth0 log event; None for a type Herald skips."""
    log = _unwrap(payload)
    ce_type = EVENT_TYPES.get(str(log.get("type")))
    if ce_type is None:
        return None
    log_id = text(log, "log_id") or text(payload, "log_id") or text(payload.get("detail"), "log_id")
    if log_id is None:
        raise MalformedEvent(f"Auth0 log event {log['type']!r} has no 'log_id'")
    user_id = text(log, "user_id")
    if user_id is None:
        no_user(ce_type, f"Auth0 log event {log['type']!r} has no 'user_id'")
        return None
    return envelope(
        event_id=log_id,
        source=f"auth0:{tenant}" if (tenant := text(log, "tenant_name")) else "auth0",
        ce_type=ce_type,
        time=text(log, "date"),
        user_id=user_id,
        data=_data(log, user_id),
    )


def _unwrap(payload: dict[str, Any]) -> dict[str, Any]:
    """The log event itself, out of the wrappers streams put around it."""
    for _ in range(2):  # EventBridge event → {"log_id", "data"} → log event
        if "type" in payload:
            return payload
        inner = mapping(payload, "detail") or mapping(payload, "data")
        if not inner:
            break
        payload = inner
    return payload


def _data(log: dict[str, Any], user_id: str) -> dict[str, Any]:
    location = mapping(log, "location_info")
    request = {
        "ip": text(log, "ip"),
        "user_agent": text(log, "user_agent"),
        "geoip": compact(
            {
                "country_code": text(location, "country_code"),
                "city_name": text(location, "city_name"),
            }
        ),
    }
    return compact(
        {
            "user": _user(log, user_id),
            "request": compact(request),
            "connection": compact(
                {"name": text(log, "connection"), "strategy": text(log, "strategy")}
            ),
            "client": compact(
                {"client_id": text(log, "client_id"), "name": text(log, "client_name")}
            ),
        }
    )


def _user(log: dict[str, Any], user_id: str) -> dict[str, Any]:
    details = mapping(log, "details")
    body = mapping(details, "body")  # sign-ups: the profile the user signed up with
    verified = body.get("email_verified")
    return compact(
        {
            "user_id": user_id,
            "email": email_or_none(
                text(body, "email"), text(details, "email"), text(log, "user_name")
            ),
            "email_verified": verified if isinstance(verified, bool) else None,
            "name": text(body, "name"),
            "given_name": text(body, "given_name"),
            "family_name": text(body, "family_name"),
            "nickname": text(body, "nickname"),
            "locale": _locale(body),
            "user_metadata": mapping(body, "user_metadata") or None,
        }
    )


def _locale(body: dict[str, Any]) -> str | None:
    """The sign-up transaction's locale, else the first language the browser asked for."""
    transaction = mapping(body, "transaction")
    ui_locales = transaction.get("ui_locales")
    if isinstance(ui_locales, list) and ui_locales and isinstance(ui_locales[0], str):
        first_ui: str | None = ui_locales[0]
    else:
        first_ui = None
    languages = text(body, "request_language")
    first_language = languages.split(",")[0].split(";")[0].strip() if languages else None
    return text(transaction, "locale") or first_ui or first_language or None


parse = provider_parser(to_envelope, "Auth0 log")
