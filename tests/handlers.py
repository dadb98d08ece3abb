"""Python action handlers used by the integration tests."""

from __future__ import annotations

import asyncio
from typing import Any


async def welcome_with_secret(event: Any, api: Any) -> None:
    """Sets metadata, reads a secret, sends an email with action data."""
    api.user.set_app_metadata("plan", event.secrets.PLAN)
    api.user.set_user_metadata("obsolete", None)
    await api.email.send("welcome", data={"plan": event.secrets.PLAN})


async def leaks_a_secret(event: Any, api: Any) -> None:
    raise RuntimeError(f"cannot reach billing with key {event.secrets.API_KEY}")


async def too_slow(event: Any, api: Any) -> None:
    await asyncio.sleep(30)


async def redirects_on_signup(event: Any, api: Any) -> None:
    api.redirect.send_user_to("https://example.com/elsewhere")


async def sets_a_set(event: Any, api: Any) -> None:
    """Metadata JSON cannot encode: a set."""
    api.user.set_app_metadata("roles", {"admin", "staff"})


async def sets_a_huge_int(event: Any, api: Any) -> None:
    """Metadata JSON (orjson) cannot encode: an int over 64 bits."""
    api.user.set_user_metadata("counter", 2**70)
