"""The trigger table (README: Flows and actions): flow keys, CloudEvents types, and what
each allows."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACTIONS", "TRIGGERS", "TRIGGERS_BY_TYPE", "Trigger"]


@dataclass(frozen=True, slots=True)
class Trigger:
    """One flow key of README: Flows and actions and the rules that come with it."""

    name: str
    event_type: str
    synchronous: bool
    actions: frozenset[str]


_ALL = frozenset({"send_email", "set_metadata", "python"})

TRIGGERS: dict[str, Trigger] = {
    t.name: t
    for t in (
        Trigger("pre-user-registration", "identity.user.pre_registration", True, _ALL | {"deny"}),
        Trigger("post-user-registration", "identity.user.registered", False, _ALL),
        Trigger("post-change-password", "identity.user.password_changed", False, _ALL),
        Trigger("post-login", "identity.user.logged_in", True, _ALL | {"deny", "redirect"}),
        Trigger("login-failed", "identity.user.login_failed", False, _ALL),
        Trigger("password-reset-requested", "identity.user.password_reset_requested", False, _ALL),
        Trigger(
            "email-verification-requested",
            "identity.user.email_verification_requested",
            False,
            _ALL,
        ),
    )
}

TRIGGERS_BY_TYPE: dict[str, Trigger] = {t.event_type: t for t in TRIGGERS.values()}

#: Every built-in action name (README: Configuration).
ACTIONS: frozenset[str] = frozenset().union(*(t.actions for t in TRIGGERS.values()))
