"""The seed use cases as Herald Python actions: `async def handler(event, api)`.

Each mirrors an Auth0 Action: `api.access.deny`, `api.user.set_user_metadata`,
`api.user.set_app_metadata`, `api.redirect.send_user_to` and `api.email.send` behave
like their Auth0 counterparts; `event.secrets.NAME` reads the `secrets:` section.
"""

from __future__ import annotations

from typing import Any


async def on_password_changed(event: Any, api: Any) -> None:
    """Email the user after a password change (post-change-password)."""
    await api.email.send("password_changed")


async def on_pre_user_registration(event: Any, api: Any) -> None:
    """Refuse sign-ups while SIGNUPS_CLOSED is true; otherwise initialize metadata."""
    if str(event.secrets.SIGNUPS_CLOSED).lower() == "true":
        api.access.deny("too_many_signups", "We're not accepting sign-ups at the moment.")
        return
    api.user.set_user_metadata("ui_color", "default")
    api.user.set_user_metadata("use_verbose_messages", False)
    api.user.set_app_metadata("is_new_user", True)
    api.user.set_app_metadata("reward_status", 0)


async def on_post_login(event: Any, api: Any) -> None:
    """Send everyone but the operators to the downtime page (post-login)."""
    if (event.user.app_metadata or {}).get("role") == "operator":
        return
    api.redirect.send_user_to(event.secrets.DOWNTIME_URL, query={"reason": "maintenance"})
