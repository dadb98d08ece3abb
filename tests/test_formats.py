"""Identity-provider formats: Auth0 log events and Keycloak events → CloudEvents
(README: Events)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from service.events import MAX_EVENT_BYTES, Event, MalformedEvent, parse_cloudevent
from service.formats import FORMATS, auth0, keycloak, parser_for

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(provider: str, name: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / provider / f"{name}.json").read_bytes())  # type: ignore[no-any-return]


def parsed(parse: Any, payload: dict[str, Any]) -> Event:
    event = parse(orjson.dumps(payload), [])
    assert event is not None
    return event  # type: ignore[no-any-return]


def test_parser_for_each_format() -> None:
    assert parser_for("cloudevents") is parse_cloudevent
    assert parser_for("auth0-log-stream") is auth0.parse
    assert parser_for("keycloak") is keycloak.parse
    assert set(FORMATS) == {"cloudevents", "auth0-log-stream", "keycloak"}
    with pytest.raises(ValueError, match=r"unknown kafka\.format 'okta'"):
        parser_for("okta")


# --- Auth0 --------------------------------------------------------------------------


def test_auth0_signup_maps_profile_from_the_signup_body() -> None:
    event = parsed(auth0.parse, fixture("auth0", "ss"))
    env = event.envelope
    assert event.trigger.name == "post-user-registration"
    assert env["specversion"] == "1.0"
    assert env["id"] == "90020261126095812481000000000000001122334455667788"
    assert env["source"] == "auth0:example"
    assert env["time"] == "2026-11-26T09:58:12.481Z"
    assert env["subject"] == "auth0|6761f0c8e0b1c2d3e4f5a6b7"
    assert event.user == {
        "user_id": "auth0|6761f0c8e0b1c2d3e4f5a6b7",
        "email": "grace.hopper@example.com",
        "email_verified": False,
        "name": "Grace Hopper",
        "given_name": "Grace",
        "family_name": "Hopper",
        "locale": "en",
    }
    assert "password" not in orjson.dumps(env).decode()
    assert event.data["request"] == {
        "ip": "203.0.113.21",
        "user_agent": "Firefox 133.0.0 / Mac OS X 14.6.0",
    }
    assert event.data["connection"] == {
        "name": "Username-Password-Authentication",
        "strategy": "auth0",
    }
    assert event.data["client"] == {
        "client_id": "Yx4vM7nQ2pLk9sT3wR6eZ1aB5cD8fG0h",
        "name": "Example App",
    }


def test_auth0_wrapper_of_http_and_eventbridge_streams() -> None:
    wrapped = fixture("auth0", "scp")
    event = parsed(auth0.parse, wrapped)
    assert event.trigger.name == "post-change-password"
    assert event.id == wrapped["log_id"]
    assert event.user["email"] == "emmy.noether@example.com"  # details.email
    eventbridge = {"version": "0", "detail-type": "Auth0 log", "detail": wrapped}
    assert parsed(auth0.parse, eventbridge).id == wrapped["log_id"]
    # The wrapper's log_id is enough when the inner event lacks one.
    del wrapped["data"]["log_id"]
    assert parsed(auth0.parse, wrapped).id == wrapped["log_id"]


def test_auth0_login_takes_address_from_user_name_and_geoip_from_location() -> None:
    event = parsed(auth0.parse, fixture("auth0", "s"))
    assert event.trigger.name == "post-login"
    assert event.user == {
        "user_id": "auth0|6761f0c8e0b1c2d3e4f5a6d9",
        "email": "ada.lovelace@example.com",
    }
    assert event.data["request"]["geoip"] == {"country_code": "GB", "city_name": "London"}


@pytest.mark.parametrize("code", ["f", "fp", "fu"])
def test_auth0_failed_logins(code: str) -> None:
    log = {**fixture("auth0", "fp"), "type": code}
    event = parsed(auth0.parse, log)
    assert event.trigger.name == "login-failed"
    assert event.user["email"] == "alan.turing@example.org"


def test_auth0_failed_login_of_an_unknown_user_is_skipped() -> None:
    assert auth0.parse(orjson.dumps(fixture("auth0", "fu")), []) is None


def test_auth0_user_name_that_is_not_an_address_is_not_used() -> None:
    log = {**fixture("auth0", "s"), "user_name": "+14155554321"}
    assert "email" not in parsed(auth0.parse, log).user


def test_auth0_unmapped_types_are_skipped() -> None:
    assert auth0.parse(orjson.dumps(fixture("auth0", "sapi")), []) is None
    assert auth0.parse(orjson.dumps({"log_id": "x", "type": "seacft"}), []) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b" " * (MAX_EVENT_BYTES + 1), "1 MiB"),
        (orjson.dumps({"type": "scp", "user_id": "auth0|1"}), "no 'log_id'"),
        (orjson.dumps({"type": "scp", "log_id": "1"}), "no 'user_id'"),
    ],
)
def test_auth0_malformed(value: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        auth0.parse(value, [])


def test_auth0_no_value_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="no value"):
        auth0.parse(None, [])


# --- Keycloak -----------------------------------------------------------------------


def test_keycloak_register() -> None:
    event = parsed(keycloak.parse, fixture("keycloak", "register"))
    env = event.envelope
    assert event.trigger.name == "post-user-registration"
    assert env["id"] == "0f6b2c1e-8d4a-4b9e-9c3f-2a7d5e1b6c90"
    assert env["source"] == "keycloak:a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
    assert env["time"] == "2026-11-26T09:58:12.481Z"  # epoch millis → ISO 8601
    assert event.user == {
        "user_id": "5d1e3f7a-9b2c-4d6e-8f0a-1b3c5d7e9f21",
        "email": "grace.hopper@example.com",
        "given_name": "Grace",
        "family_name": "Hopper",
        "nickname": "ghopper",
    }
    assert event.data["request"] == {"ip": "203.0.113.21"}
    assert event.data["client"] == {"client_id": "account-console"}


@pytest.mark.parametrize(
    ("name", "trigger"),
    [
        ("update_password", "post-change-password"),
        ("login", "post-login"),
        ("login_error", "login-failed"),
        ("send_reset_password", "password-reset-requested"),
        ("send_verify_email", "email-verification-requested"),
    ],
)
def test_keycloak_types(name: str, trigger: str) -> None:
    event = parsed(keycloak.parse, fixture("keycloak", name))
    assert event.trigger.name == trigger
    assert "@" in event.user["email"]
    assert "link" not in event.data  # Keycloak events carry no link


def test_keycloak_address_from_username_only_when_it_is_one() -> None:
    assert parsed(keycloak.parse, fixture("keycloak", "update_password")).user["email"] == (
        "emmy.noether@example.com"
    )
    no_email = parsed(keycloak.parse, fixture("keycloak", "update_password_no_email"))
    assert "email" not in no_email.user
    assert no_email.user["nickname"] == "dknuth"


def test_keycloak_brokered_login_names_the_identity_provider() -> None:
    event = parsed(keycloak.parse, fixture("keycloak", "login"))
    assert event.data["connection"] == {"name": "google"}


def test_keycloak_skips_unmapped_types_and_unknown_users() -> None:
    assert keycloak.parse(orjson.dumps(fixture("keycloak", "logout")), []) is None
    unknown = fixture("keycloak", "login_error_unknown_user")
    assert keycloak.parse(orjson.dumps(unknown), []) is None


def test_keycloak_without_id_gets_a_stable_derived_one() -> None:
    event = fixture("keycloak", "register")
    del event["id"]
    first = parsed(keycloak.parse, event).id
    assert first.startswith("kc-")
    assert parsed(keycloak.parse, dict(reversed(event.items()))).id == first
    assert parsed(keycloak.parse, {**event, "time": event["time"] + 1}).id != first


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"userId": None}, "REGISTER has no 'userId'"),
        ({"time": "yesterday"}, "epoch milliseconds"),
        ({"time": 10**18}, "out of range"),
    ],
)
def test_keycloak_malformed(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        keycloak.parse(orjson.dumps({**fixture("keycloak", "register"), **changes}), [])
