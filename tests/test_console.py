"""`herald dev`'s console formatter: Herald's structured log records as one line each."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from service.devtools.console import (
    ConsoleFormatter,
    ConsoleHandler,
    command_line,
    decision_line,
)
from service.logs import JsonFormatter, setup_logging


def record(
    msg: str,
    level: int = logging.INFO,
    name: str = "herald.events",
    exc: BaseException | None = None,
    **extra: Any,
) -> logging.LogRecord:
    """A record as `logging.getLogger(name).log(level, msg, extra=extra)` makes it."""
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.getLogger(name).makeRecord(
        name, level, __file__, 1, msg, (), exc_info, extra=extra
    )


def line(rec: logging.LogRecord, mask: bool = True) -> str:
    return ConsoleFormatter(mask=mask).format(rec)


def processed(trigger: str, actions: list[dict[str, str]], **extra: Any) -> logging.LogRecord:
    fields = {
        "event_id": "evt-1",
        "trigger": trigger,
        "outcome": "ok",
        "decision": "allow",
        "user": "a***@example.com",
        "actions": actions,
        "duration_ms": 1.5,
    }
    return record("event processed", **{**fields, **extra})


def test_an_event_nothing_else_tells_is_one_short_line() -> None:
    rec = processed("post-login", [{"id": "downtime", "outcome": "disabled"}])
    assert line(rec) == "·  post-login a***@example.com: allow (downtime disabled)"
    rec = processed("login-failed", [{"id": "alert", "outcome": "duplicate"}])
    assert line(rec) == "·  login-failed a***@example.com: allow (alert already sent)"
    rec = processed("post-login", [], decision="redirect")
    assert line(rec) == "·  post-login a***@example.com: redirect (no actions)"


def test_an_event_another_line_tells_says_nothing() -> None:
    sent = [{"id": "welcome", "outcome": "sent"}, {"id": "other", "outcome": "skipped"}]
    assert line(processed("post-user-registration", sent)) == ""  # the ✉ line
    assert line(processed("login-failed", [{"id": "alert", "outcome": "deferred"}])) == ""
    metadata = [{"id": "downtime", "outcome": "disabled"}, {"id": "m", "outcome": "applied"}]
    assert line(processed("post-login", metadata)) == ""  # the ⚙ line
    # The decision of a pre-registration is always published: its ⚖ line.
    assert line(processed("pre-user-registration", metadata)) == ""
    # Failed closed: the `action failed` line said so.
    failed = [{"id": "x", "outcome": "failed"}]
    assert line(processed("post-login", failed, outcome="failed_closed", decision="deny")) == ""


def test_retry_scheduled_says_when_and_why() -> None:
    rec = record(
        "email retry scheduled",
        name="herald.retries",
        event_id="evt-5",
        action="alert-login-failed",
        attempt=2,
        due_in_s=10.4,
        reason="451 4.3.0 try again later",
        retry_topic="identity.events.retry",
    )
    at = datetime.fromtimestamp(rec.created + 10.4).strftime("%H:%M:%S")
    assert line(rec) == (
        f"↻  deferred  alert-login-failed (evt-5): attempt 2 at {at} (in 10 s), "
        "because 451 4.3.0 try again later"
    )


def test_failures_say_why_and_which_dead_letter_topic() -> None:
    rec = record(
        "event dead-lettered",
        logging.WARNING,
        topic="identity.events",
        partition=0,
        offset=7,
        event_id="evt-5",
        trigger="login-failed",
        outcome="dead_lettered",
        error="SmtpPermanentError",
        reason="550 5.1.1 <alan.turing@example.org>: no such user",
        dlq_topic="identity.events.dlq",
        actions=[{"id": "alert", "outcome": "failed"}],
        duration_ms=3.2,
    )
    assert line(rec) == (
        "✗  failed    login-failed evt-5: SmtpPermanentError: 550 5.1.1 <a***@example.org>: "
        "no such user  -> dead-lettered to identity.events.dlq"
    )
    rec = record(
        "email retry dead-lettered",
        logging.WARNING,
        name="herald.retries",
        action="alert",
        attempt=8,
        error="SmtpRetriesExhausted",
        reason="gave up after 8 attempts: 451 busy",
        dlq_topic="identity.events.dlq",
    )
    assert line(rec) == (
        "✗  failed    alert after attempt 8: SmtpRetriesExhausted: gave up after 8 attempts: "
        "451 busy  -> dead-lettered to identity.events.dlq"
    )


def test_an_action_failure_is_told_once() -> None:
    fields = {"event_id": "evt-1", "action": "a", "error": "WhenError", "reason": "bad"}
    # Asynchronous: its dead-letter line tells it.
    rec = record(
        "action failed", logging.WARNING, "service.flows", trigger="login-failed", **fields
    )
    assert line(rec) == ""
    rec = record("action failed", logging.WARNING, "service.flows", trigger="post-login", **fields)
    assert line(rec) == (
        "✗  failed    post-login evt-1: action a: WhenError: bad; failing closed (deny)"
    )


def test_skipped_and_uncertain_emails() -> None:
    common = {"event_id": "evt-2", "action": "welcome", "template": "welcome"}
    rec = record(
        "email skipped: recipient over its rate limit",
        name="service.mail.mailer",
        recipient="l***@example.org",
        outcome="rate_limited",
        **common,
    )
    assert line(rec) == "–  skipped   welcome to l***@example.org (evt-2): rate-limited"
    rec = record(
        "email skipped: its link expired",
        name="service.mail.mailer",
        event_id="evt-2",
        action="welcome",
        outcome="expired",
    )
    assert line(rec) == (
        "–  skipped   welcome (evt-2): expired (its link expired before it was sent)"
    )
    rec = record(
        "email uncertain: sent, but the server's reply never came; not sent again",
        logging.WARNING,
        "service.mail.mailer",
        recipient="l***@example.org",
        outcome="uncertain",
        reason="connection lost after the message",
        **common,
    )
    assert line(rec) == (
        "?  uncertain welcome to l***@example.org (evt-2): connection lost after the message; "
        "not sent again"
    )


def test_warnings_and_errors_are_one_line_without_traceback() -> None:
    rec = record(
        "smtp server unreachable, consumption paused",
        logging.ERROR,
        "herald",
        reason="Connection refused by 127.0.0.1:1025",
    )
    assert line(rec) == (
        "!  smtp server unreachable, consumption paused (reason: Connection refused by "
        "127.0.0.1:1025)"
    )
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as exc:
        rec = record("flow crashed", logging.ERROR, exc=exc, event_id="evt-9")
    text = line(rec)
    assert text == "!  flow crashed (event_id: evt-9): ValueError: boom second line"
    assert "Traceback" not in text and "\n" not in text
    # Someone else's logger is named; list fields read as lists.
    rec = record("Heartbeat failed", logging.WARNING, "aiokafka.consumer")
    assert line(rec) == "!  aiokafka.consumer: Heartbeat failed"
    rec = record("batch stuck", logging.WARNING, "herald", partitions=["t/0", "t/1"])
    assert line(rec) == "!  batch stuck (partitions: t/0, t/1)"


def test_addresses_are_masked_unless_shown() -> None:
    rec = record(
        "recipient refused", logging.WARNING, "herald", reason="550 <ada.lovelace@example.com>"
    )
    assert line(rec) == "!  recipient refused (reason: 550 <a***@example.com>)"
    assert line(rec, mask=False) == "!  recipient refused (reason: 550 <ada.lovelace@example.com>)"


def test_startup_chatter_is_left_to_the_banner() -> None:
    assert line(record("herald started", name="herald", topics=["t"], http="x")) == ""
    assert line(record("http listening", name="herald", http="x")) == ""
    assert line(record("kafka connected", name="herald", after_attempts=3)) == (
        "·  kafka connected (after_attempts: 3)"
    )


def test_decision_and_command_lines() -> None:
    allow = {
        "event_id": "evt-1",
        "trigger": "pre-user-registration",
        "decision": "allow",
        "reason": None,
        "user_message": None,
        "user_metadata": {"ui_color": "default"},
        "app_metadata": {"is_new_user": True, "old": None},
        "redirect": None,
    }
    assert decision_line(allow, "user-1", "identity.decisions") == (
        "⚖  decision  pre-user-registration user-1: allow; sets user_metadata ui_color; "
        "app_metadata is_new_user, -old  -> identity.decisions"
    )
    deny = {**allow, "decision": "deny", "reason": "signups_closed", "app_metadata": {}}
    deny["user_metadata"] = {}
    assert decision_line(deny, "user-7", "identity.decisions") == (
        "⚖  decision  pre-user-registration user-7: deny (signups_closed)  -> identity.decisions"
    )
    redirect = {
        **deny,
        "trigger": "post-login",
        "decision": "redirect",
        "reason": None,
        "redirect": {"url": "https://status.example.com/", "query": {}},
    }
    assert decision_line(redirect, "user-4", "replies") == (
        "⚖  decision  post-login user-4: redirect to https://status.example.com/  -> replies"
    )
    command = {
        "type": "identity.user.metadata_update",
        "subject": "user-4",
        "data": {"user_id": "user-4", "user_metadata": {"city": "London"}, "app_metadata": {}},
    }
    assert command_line(command, "user-4", "identity.commands") == (
        "⚙  metadata  user-4: user_metadata city  -> identity.commands"
    )
    assert command_line({}, "user-4", "identity.commands") == (
        "⚙  metadata  user-4: no keys  -> identity.commands"
    )


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_handler_writes_whole_lines_and_skips_empty_ones(
    root_logging: logging.Logger,
) -> None:
    out = io.StringIO()
    handler = ConsoleHandler(out, mask=True)
    setup_logging("INFO", handler=handler)
    assert root_logging.handlers == [handler]
    log = logging.getLogger("herald")
    log.info("herald started", extra={"topics": ["t"]})
    log.error("smtp server unreachable, consumption paused", extra={"reason": "refused"})
    handler.say("✉  to=grace.hopper@example.com\nsubject")
    assert out.getvalue() == (
        "!  smtp server unreachable, consumption paused (reason: refused)\n"
        "✉  to=g***@example.com subject\n"
    )


def test_herald_run_keeps_its_json_lines(root_logging: logging.Logger) -> None:
    setup_logging("INFO")
    (handler,) = root_logging.handlers
    assert isinstance(handler.formatter, JsonFormatter)
