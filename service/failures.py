"""Herald's failure model: every failure of processing has one of three fates.

    Exception
     ├── Outage                  a dependency is down altogether (not this record's fault)
     │    ├── SmtpUnavailable       the SMTP server cannot be reached at all
     │    └── StoreUnavailable      the dedupe store cannot be reached
     │                           → rewind the batch, pause, probe that dependency, resume;
     │                             nothing is dead-lettered, no retry attempt is spent
     ├── EmailDeferred           this email's attempt failed transiently (4xx, a timeout,
     │                           a dropped connection)
     │                           → the email goes to the retry topic; the batch commits
     ├── Permanent               this record (or email) will never succeed as it is
     │    ├── EmailFailed           no usable address, a template that fails, a 5xx reply
     │    │    └── PermanentlyRejected   the server refused it (5xx)
     │    ├── ActionFailed          an action raised, ran past its timeout, or its `when`
     │    │                         could not be evaluated
     │    ├── OutputFailed          an output cannot be published: a value JSON cannot
     │    │                         encode or too large for Kafka, a `reply_to` topic
     │    │                         Kafka does not know or refuses (after retries)
     │    └── MalformedEvent (events.py)  not JSON, a required field missing, too large
     │                           → dead letter with `error` (x-herald-error) and `reason`
     └── DeliveryUncertain (mail/transport.py)  the message went out but its reply never
                                 came (a timeout after the final ".", a lost connection;
                                 or this task was cancelled meanwhile): the server may
                                 have it, and sending again could deliver it twice
                                 → `Mailer` records it as sent and returns the outcome
                                   `uncertain` (counted, logged); never re-sent, never
                                   dead-lettered (RFC 1047)

Where each is decided, once per dependency:
- SMTP: `service.mail.smtp_errors.classify` maps aiosmtplib's errors into
  `DeliveryError` (transient / permanent / server unavailable / uncertain); `Mailer`
  turns those into the fates above (an uncertain one never leaves it as an exception).
- The dedupe store: `service.redis_client.redis_call` raises `DedupeUnavailable`; `Mailer`
  turns it into `StoreUnavailable`.
- Kafka: `service.kafka.diagnose` maps client errors into `KafkaUnavailable`, for the
  connection loop of `herald run` and for the CLI. Producing, `service.kafka.outputs` raises
  `OutputFailed` for a fault of the one record; any other Kafka error (a dead letter
  that cannot be written among them) propagates and the batch is rewound.
- Input: `service.events` is the one place that decides "malformed".

Everything else catches only at the edge: `Processor.process` (one record → its fate),
`BatchRunner.handle` (one batch → commit, or rewind for an outage), `Retrier.attempt`.
"""

from __future__ import annotations

__all__ = [
    "ActionFailed",
    "EmailDeferred",
    "EmailFailed",
    "Outage",
    "OutputFailed",
    "Permanent",
    "PermanentlyRejected",
    "SmtpUnavailable",
    "StoreUnavailable",
]


class Outage(Exception):
    """A dependency is down altogether: not a failure of the event. Consumption pauses
    and the event is processed again later."""


class SmtpUnavailable(Outage):
    """The SMTP server cannot be reached at all: pause, don't fail the email."""


class StoreUnavailable(Outage):
    """The dedupe store cannot be reached: pause rather than risk sending twice."""


class EmailDeferred(Exception):
    """This attempt failed transiently (`reason`: the server's reply or the error); the
    email is neither sent nor claimed, and may be tried again later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Permanent(Exception):
    """Will not succeed as it is: `error` names the class of failure for the dead letter
    (`x-herald-error`), `reason` says why in one line (`x-herald-reason`)."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


class EmailFailed(Permanent):
    """The email will not be sent."""


class PermanentlyRejected(EmailFailed):
    """The server refused the email for good (5xx): it was handed over and counts."""


class ActionFailed(Permanent):
    """An action could not complete."""


class OutputFailed(Permanent):
    """One event's output (a dead letter, command or decision) cannot be published, now
    or later."""

    def __init__(self, reason: str) -> None:
        super().__init__("OutputFailed", reason)


class KafkaUnavailable(ConnectionError):
    """Kafka cannot be used now: `str()` is one line for the operator (never a secret),
    `kind` a stable tag (`authentication_failed`, `tls_untrusted`, `tls_failed`,
    `sasl_mechanism`, `unreachable`, `kafka_error`, `ssl_cafile`)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind
