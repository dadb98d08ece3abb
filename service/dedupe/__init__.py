"""Dedupe stores: "this email was sent" records keyed by (event id, action id, recipient).

Claim-then-send, as arq's idempotent `enqueue_job(_job_id=…)`: `claim` reserves a key
and says what it found (`Claim.TAKEN`: ours now; `Claim.SENT`: already sent;
`Claim.HELD`: another sender holds it and has not finished), `record` makes "sent"
durable for `ttl_s` after the SMTP server accepted the message, `release` gives an
unsent key back so a redelivered or replayed event can still be delivered.

`HELD` is not "sent": the holder may still fail and release, or die. The caller waits
for the holder's outcome instead of counting the email as a duplicate.

A claim is a *lease*: if its holder dies between claim and record, the key becomes
claimable again and another task or instance sends the email. In-process leases
(memory, sqlite) last `claim_ttl_s` (default 5 min; a dead process takes its leases with
it). Redis leases are short (`REDIS_CLAIM_TTL_S`, 30 s) and renewed every third of that
while their holder lives, so the partitions of a killed instance are not held back for
long. One module each:

- `protocol` — `DedupeStore`, `Claim`, `dedupe_key` and the in-process `Leases`.
- `memory` — one process, forgets on exit (`herald dev`, tests).
- `sqlite` — one process; "sent" records committed one by one to a WAL file that the
  rate limiter and the delivery records share (`service.shared_sqlite.SqliteFile`).
- `redis` — shared by every instance; its connection helpers (`service.redis_client`)
  are shared with the rate limiter and the delivery records.

`open()` is the startup check (a wrong Redis URL fails there with one line); any later
backend failure raises `DedupeUnavailable`.
"""

from __future__ import annotations

from service.backends import Backends
from service.dedupe.memory import MemoryDedupe
from service.dedupe.protocol import CLAIM_TTL_S, REDIS_CLAIM_TTL_S, Claim, DedupeStore, dedupe_key
from service.dedupe.redis import RedisDedupe
from service.dedupe.sqlite import SqliteDedupe
from service.redis_client import DedupeUnavailable

__all__ = [
    "CLAIM_TTL_S",
    "REDIS_CLAIM_TTL_S",
    "Claim",
    "DedupeStore",
    "DedupeUnavailable",
    "MemoryDedupe",
    "RedisDedupe",
    "SqliteDedupe",
    "dedupe_key",
    "dedupe_store",
]

_STORES: Backends[DedupeStore] = Backends("dedupe", MemoryDedupe, SqliteDedupe, RedisDedupe)


def dedupe_store(backend: str, *, path: str, url: str, ttl_s: float) -> DedupeStore:
    """The store named by `dedupe.backend`, constructed only: call `await store.open()`
    before use (the startup check)."""
    return _STORES.create(backend, path, url, ttl_s)
