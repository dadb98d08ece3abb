"""`herald dev`'s console: Herald's log records and outputs as one short line each.

`herald run` logs JSON for machines; `herald dev` is read by a person, so each outcome
is one line with a mark in front:

    ✉  an email the capture server took (service/devtools/smtp.py `summary_line`)
    ⚖  a decision read back from the decisions topic (or an event's `reply_to` topic)
    ⚙  a metadata command read back from the commands topic
    ↻  an email retry scheduled: when and why
    ✗  an email or event that failed for good: why, and which dead-letter topic
    –  an email skipped (rate-limited, its link expired)
    ?  an email whose delivery is uncertain
    ·  an event whose outcome no other line tells, and other notes
    !  a warning or an error (never a traceback)

Addresses are masked as in the JSON log unless `log.show_addresses`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TextIO

from service.logs import mask_addresses
from service.triggers import TRIGGERS

__all__ = ["ConsoleFormatter", "ConsoleHandler", "command_line", "decision_line"]

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}
#: Said by the banner or by nothing a person needs.
_QUIET_INFO = frozenset(
    {"http listening", "partitions assigned", "herald started", "herald stopped"}
)
#: Action outcomes that are not worth a word in an event's line.
_NOTHING_DONE = frozenset({"disabled", "skipped"})
#: Action outcomes another line tells (✉, ↻, –, ?, ⚙): the event's own line is dropped.
_TOLD_ELSEWHERE = frozenset({"sent", "deferred", "rate_limited", "expired", "uncertain", "applied"})
_OUTCOME_WORDS = {"duplicate": "already sent", "applied": "metadata set", "skipped": "skipped"}
#: Fields left out of the generic `! message (field: value, …)` line.
_NOISE = frozenset({"duration_ms", "taskName"})
_OWN_LOGGERS = frozenset({"herald", "service"})
#: The trigger whose decision is always published (so a ⚖ line tells its outcome).
_DECIDED = "pre-user-registration"


class ConsoleFormatter(logging.Formatter):
    """Herald's structured log records (their `extra=` fields) as short human lines;
    "" for a record that tells a person nothing new (another line already says it)."""

    def __init__(self, mask: bool = True) -> None:
        super().__init__()
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        try:
            text = _line(record)
        except Exception:  # a record of an unexpected shape: still one line
            text = _generic(record)
        return self.tidy(text) if text else ""

    def tidy(self, text: str) -> str:
        """One line, addresses masked unless `log.show_addresses`."""
        text = " ".join(text.splitlines())
        return mask_addresses(text) if self.mask else text


class ConsoleHandler(logging.StreamHandler[TextIO]):
    """Writes :class:`ConsoleFormatter` lines (skipping empty ones) and `say` lines to one
    stream, one whole line at a time, from any thread."""

    def __init__(self, stream: TextIO, mask: bool = True) -> None:
        super().__init__(stream)
        self.console = ConsoleFormatter(mask)
        self.setFormatter(self.console)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if line:
            self.say(line, tidy=False)

    def say(self, line: str, *, tidy: bool = True) -> None:
        """Print one line of `herald dev`'s own (✉, ⚖, ⚙, the tally)."""
        if tidy:
            line = self.console.tidy(line)
        with self.lock or contextlib.nullcontext():
            self.stream.write(line + self.terminator)
            self.flush()


def _ours(record: logging.LogRecord) -> bool:
    """A record of Herald's own (its loggers are `herald…` and `service.…`)."""
    return record.name.split(".")[0] in _OWN_LOGGERS


def _line(record: logging.LogRecord) -> str | None:
    if _ours(record):
        msg = record.getMessage()
        if record.levelno <= logging.INFO and msg in _QUIET_INFO:
            return None
        special = _SPECIAL.get(msg)
        if special is not None:
            return special(record.__dict__, record)
    return _generic(record)


def decision_line(body: Mapping[str, Any], user_id: str, topic: str) -> str:
    """A decision as read back from Kafka, e.g.
    ``⚖  decision  pre-user-registration user-1: deny (signups_closed)  -> identity.decisions``."""
    decision = str(body.get("decision") or "?")
    line = f"⚖  decision  {body.get('trigger') or '?'} {user_id or '?'}: {decision}"
    if body.get("reason"):
        line += f" ({body['reason']})"
    redirect = body.get("redirect")
    if decision == "redirect" and isinstance(redirect, Mapping) and redirect.get("url"):
        line += f" to {redirect['url']}"
    changes = _metadata(body.get("user_metadata"), body.get("app_metadata"))
    if changes:
        line += f"; sets {changes}"
    return f"{line}  -> {topic}"


def command_line(command: Mapping[str, Any], user_id: str, topic: str) -> str:
    """A metadata command as read back from Kafka, e.g.
    ``⚙  metadata  user-1: user_metadata ui_color; app_metadata -plan  -> identity.commands``."""
    data = command.get("data")
    data = data if isinstance(data, Mapping) else {}
    user = data.get("user_id") or user_id or "?"
    changes = _metadata(data.get("user_metadata"), data.get("app_metadata")) or "no keys"
    return f"⚙  metadata  {user}: {changes}  -> {topic}"


def _metadata(user: Any, app: Any) -> str:
    """`user_metadata a, b; app_metadata c` (a key set to null, i.e. deleted: `-key`)."""
    parts = []
    for name, values in (("user_metadata", user), ("app_metadata", app)):
        if isinstance(values, Mapping) and values:
            keys = ", ".join(f"-{k}" if v is None else str(k) for k, v in values.items())
            parts.append(f"{name} {keys}")
    return "; ".join(parts)


# --- Herald's per-outcome records, by message -------------------------------------------


def _event_processed(f: Mapping[str, Any], record: logging.LogRecord) -> str | None:
    trigger = f.get("trigger") or "?"
    decision = f.get("decision") or "allow"
    actions = [a for a in f.get("actions") or [] if isinstance(a, Mapping)]
    if trigger == _DECIDED:
        return None  # its ⚖ line follows, read back from the decisions topic
    if f.get("outcome") == "failed_closed":
        return None  # its "action failed" line said so, and that it fails closed
    done = [a for a in actions if a.get("outcome") not in _NOTHING_DONE]
    if decision == "allow" and done and all(a.get("outcome") in _TOLD_ELSEWHERE for a in done):
        return None  # each action has its own ✉ / ↻ / – / ? / ⚙ line
    who = f.get("user") or f.get("event_id") or "?"
    line = f"·  {trigger} {who}: {decision}"
    if actions:
        said = ", ".join(
            f"{a.get('id')} {_OUTCOME_WORDS.get(str(a.get('outcome')), a.get('outcome'))}"
            for a in actions
        )
        return f"{line} ({said})"
    return f"{line} (no actions)"


def _event_dead_lettered(f: Mapping[str, Any], record: logging.LogRecord) -> str:
    what = f.get("trigger") or "event"
    where = f.get("event_id") or f"{f.get('topic')}/{f.get('partition')}@{f.get('offset')}"
    return (
        f"✗  failed    {what} {where}: {_why(f)}  -> dead-lettered to {f.get('dlq_topic') or '?'}"
    )


def _action_failed(f: Mapping[str, Any], record: logging.LogRecord) -> str | None:
    trigger = TRIGGERS.get(str(f.get("trigger")))
    if trigger is None or not trigger.synchronous:
        return None  # an asynchronous event's failure is dead-lettered: that line tells it
    return (
        f"✗  failed    {f.get('trigger')} {f.get('event_id') or '?'}: action "
        f"{f.get('action') or '?'}: {_why(f)}; failing closed (deny)"
    )


def _retry_scheduled(f: Mapping[str, Any], record: logging.LogRecord) -> str:
    due_in = f.get("due_in_s")
    when = ""
    if isinstance(due_in, int | float):
        at = datetime.fromtimestamp(record.created + due_in).strftime("%H:%M:%S")
        when = f" at {at} (in {_duration(due_in)})"
    return (
        f"↻  deferred  {_email(f)}: attempt {f.get('attempt') or '?'}{when}, "
        f"because {f.get('reason') or '?'}"
    )


def _retry_dead_lettered(f: Mapping[str, Any], record: logging.LogRecord) -> str:
    return (
        f"✗  failed    {f.get('action') or '?'} after attempt {f.get('attempt') or '?'}: "
        f"{_why(f)}  -> dead-lettered to {f.get('dlq_topic') or '?'}"
    )


def _rate_limited(f: Mapping[str, Any], record: logging.LogRecord) -> str:
    return f"–  skipped   {_email(f)}: rate-limited"


def _expired(f: Mapping[str, Any], record: logging.LogRecord) -> str:
    return f"–  skipped   {_email(f)}: expired (its link expired before it was sent)"


def _uncertain(f: Mapping[str, Any], record: logging.LogRecord) -> str:
    return f"?  uncertain {_email(f)}: {f.get('reason') or '?'}; not sent again"


def _email(f: Mapping[str, Any]) -> str:
    """`action to a***@x.org (event id)`: which email."""
    text = str(f.get("action") or "email")
    if f.get("recipient"):
        text += f" to {f['recipient']}"
    if f.get("event_id"):
        text += f" ({f['event_id']})"
    return text


def _why(f: Mapping[str, Any]) -> str:
    error, reason = f.get("error"), f.get("reason")
    return ": ".join(str(x) for x in (error, reason) if x) or "?"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _generic(record: logging.LogRecord) -> str:
    """`!  message (field: value, …): Error: text` for warnings and errors, `·` below."""
    mark = "!" if record.levelno >= logging.WARNING else "·"
    line = f"{mark}  {record.getMessage()}"
    if not _ours(record):
        line = f"{mark}  {record.name}: {record.getMessage()}"
    fields = [
        f"{key}: {_value(value)}"
        for key, value in record.__dict__.items()
        if key not in _RESERVED and key not in _NOISE and not key.startswith("_")
    ]
    if fields:
        line += f" ({', '.join(fields)})"
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        line += f": {type(exc).__name__}: {exc}" if str(exc) else f": {type(exc).__name__}"
    return line


def _value(value: Any) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(_value(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items()) or "none"
    return str(value)


_SPECIAL: dict[str, Callable[[Mapping[str, Any], logging.LogRecord], str | None]] = {
    "event processed": _event_processed,
    "email retry scheduled": _retry_scheduled,
    "event dead-lettered": _event_dead_lettered,
    "action failed": _action_failed,
    "email retry dead-lettered": _retry_dead_lettered,
    "email skipped: recipient over its rate limit": _rate_limited,
    "email skipped: its link expired": _expired,
    "email uncertain: sent, but the server's reply never came; not sent again": _uncertain,
}
