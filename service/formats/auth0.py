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

import service.formats._common as common
from service.events import MalformedEvent

__all__ = ["EVENT_TYPES", "parse", "to_envelope"]

#: Auth0 log event type codes → CloudEvents types (README, "Events"); other codes are skipped.
EVENT_TYPES: dict[str, str] = {
    "ss": "identity.user.registered",  # successful signup
    "scp": "identity.user.password_changed",  # successful change password
    "s": "identity.user.logged_in",  # successful login
    "f": common.LOGIN_FAILED,  # failed login
    "fp": common.LOGIN_FAILED,  # failed login: incorrect password
    "fu": common.LOGIN_FAILED,  # failed login: invalid email or username
}


def to_envelope(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The CloudEvents envelope for one Auth0 log event; None for a type Herald skips."""
    log = _unwrap(payload)
    ce_type = EVENT_TYPES.get(str(log.get("type")))
    if ce_type is None:
        return None
    log_id = (
        common.text(log, "log_id")
        or common.text(payload, "log_id")
        or common.text(payload.get("detail"), "log_id")
    )
    if log_id is None:
        raise MalformedEvent(f"Auth0 log event {log['type']!r} has no 'log_id'")
    user_id = common.text(log, "user_id")
    if user_id is None:
        common.no_user(ce_type, f"Auth0 log event {log['type']!r} has no 'user_id'")
        return None
    return common.envelope(
        event_id=log_id,
        source=f"auth0:{tenant}" if (tenant := common.text(log, "tenant_name")) else "auth0",
        ce_type=ce_type,
        time=common.text(log, "date"),
        user_id=user_id,
        data=_data(log, user_id),
    )


def _unwrap(payload: dict[str, Any]) -> dict[str, Any]:
    """The log event itself, out of the wrappers streams put around it."""
    for _ in range(2):  # EventBridge event → {"log_id", "data"} → log event
        if "type" in payload:
            return payload
        inner = common.mapping(payload, "detail") or common.mapping(payload, "data")
        if not inner:
            break
        payload = inner
    return payload


def _data(log: dict[str, Any], user_id: str) -> dict[str, Any]:
    location = common.mapping(log, "location_info")
    request = {
        "ip": common.text(log, "ip"),
        "user_agent": common.text(log, "user_agent"),
        "geoip": common.compact(
            {
                "country_code": common.text(location, "country_code"),
                "city_name": common.text(location, "city_name"),
            }
        ),
    }
    return common.compact(
        {
            "user": _user(log, user_id),
            "request": common.compact(request),
            "connection": common.compact(
                {"name": common.text(log, "connection"), "strategy": common.text(log, "strategy")}
            ),
            "client": common.compact(
                {
                    "client_id": common.text(log, "client_id"),
                    "name": common.text(log, "client_name"),
                }
            ),
        }
    )


def _user(log: dict[str, Any], user_id: str) -> dict[str, Any]:
    details = common.mapping(log, "details")
    body = common.mapping(details, "body")  # sign-ups: the profile the user signed up with
    verified = body.get("email_verified")
    return common.compact(
        {
            "user_id": user_id,
            "email": common.email_or_none(
                common.text(body, "email"),
                common.text(details, "email"),
                common.text(log, "user_name"),
            ),
            "email_verified": verified if isinstance(verified, bool) else None,
            "name": common.text(body, "name"),
            "given_name": common.text(body, "given_name"),
            "family_name": common.text(body, "family_name"),
            "nickname": common.text(body, "nickname"),
            "locale": _locale(body),
            "user_metadata": common.mapping(body, "user_metadata") or None,
        }
    )


def _locale(body: dict[str, Any]) -> str | None:
    """The sign-up transaction's locale, else the first language the browser asked for."""
    transaction = common.mapping(body, "transaction")
    ui_locales = transaction.get("ui_locales")
    if isinstance(ui_locales, list) and ui_locales and isinstance(ui_locales[0], str):
        first_ui: str | None = ui_locales[0]
    else:
        first_ui = None
    languages = common.text(body, "request_language")
    first_language = languages.split(",")[0].split(";")[0].strip() if languages else None
    return common.text(transaction, "locale") or first_ui or first_language or None


parse = common.provider_parser(to_envelope, "Auth0 log")
