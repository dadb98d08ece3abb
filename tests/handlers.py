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


#: What the plain-def handlers below saw, by event id (tests/test_blocking_handlers.py).
SEEN: dict[str, dict[str, Any]] = {}


def sleeps_two_seconds(event: Any, api: Any) -> None:
    """A plain def that blocks for 2 s (configured with a shorter timeout_s)."""
    import threading
    import time

    seen = SEEN.setdefault(str(event.id), {})
    seen["thread"] = threading.current_thread().name
    seen["started"] = time.monotonic()
    time.sleep(2)
    seen["returned"] = time.monotonic()


def welcomes_from_a_thread(event: Any, api: Any) -> None:
    """A plain def using the api: metadata, then an email whose outcome it waits for."""
    import threading

    seen = SEEN.setdefault(str(event.id), {})
    seen["thread"] = threading.current_thread().name
    api.user.set_app_metadata("x", 1)
    seen["outcome"] = api.email.send("welcome").result(timeout=10)


def acts_after_its_timeout(event: Any, api: Any) -> None:
    """Sleeps 1.5 s (past a timeout_s of 0.5), then tries to send an email and to set
    metadata; records what each call raised."""
    import time

    seen = SEEN.setdefault(str(event.id), {})
    seen["started"] = time.monotonic()
    time.sleep(1.5)
    errors: list[str] = []
    for call in (
        lambda: api.email.send("welcome"),
        lambda: api.user.set_app_metadata("late", True),
        lambda: api.user.set_user_metadata("late", True),
    ):
        try:
            call()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        else:
            errors.append("no exception")
    seen["errors"] = errors
    seen["acted"] = time.monotonic()


async def refused_and_slow(event: Any, api: Any) -> None:
    """Two emails at once: the server refuses one at RCPT and is slow to answer the
    other's data (tests/test_once.py), so the refusal cancels the slow one mid-send."""
    api.email.send("welcome", to="slow@herald.test")
    api.email.send("welcome", to="refused@herald.test")


def never_returns(event: Any, api: Any) -> None:
    """Blocks its thread far past any timeout (SIGTERM must not wait for it)."""
    import time

    time.sleep(120)
