"""Where the retry scheduler stands on each retry-topic partition: which items are read
and not finished, which finished above the commit position, and what to commit.

Items finish out of order (each is due at its own time), so a partition's offset is
committed only up to its oldest unfinished item, with the items finished above it in the
commit's metadata (service/retry/offsets.py): an item survives SIGKILL, and one finished is not
attempted again by whoever reads the partition next. Plain bookkeeping: the partitions
are whatever keys the consumer uses (aiokafka's TopicPartition).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping

from service.retry.offsets import decode_done, encode_done

__all__ = ["Commit", "Progress"]

#: An offset to commit and its metadata (the finished offsets above it).
Commit = tuple[int, str]


class Progress:
    """The retry group's position on each partition it was assigned."""

    def __init__(self) -> None:
        self._pending: dict[Hashable, set[int]] = {}
        #: When each pending item was written to the retry topic (its record timestamp).
        self._written_at: dict[Hashable, dict[int, float]] = {}
        self._next: dict[Hashable, int] = {}  # offset after the last one read
        self._committed: dict[Hashable, Commit] = {}
        #: Finished at or above the commit position (items finish out of order), and
        #: the same as read back from the committed metadata: not attempted again.
        self._done: dict[Hashable, set[int]] = {}
        self._skip: dict[Hashable, set[int]] = {}

    def assign(self, tp: Hashable, metadata: str | None) -> None:
        """`tp` is ours, with `metadata` as committed (the items finished above it)."""
        self._pending.setdefault(tp, set())
        self._done.setdefault(tp, set())
        self._skip[tp] = decode_done(metadata)

    def revoke(self, tps: Iterable[Hashable]) -> None:
        for tp in tps:
            for state in (
                self._pending,
                self._written_at,
                self._next,
                self._committed,
                self._done,
                self._skip,
            ):
                state.pop(tp, None)

    def owns(self, tp: Hashable) -> bool:
        """Whether `tp` is still assigned (its items may be finished or tried again)."""
        return tp in self._pending

    def read(self, tp: Hashable, offset: int) -> bool:
        """Note the record at `offset` read; False when it finished before the last
        rebalance (it is done, not attempted again)."""
        self._next[tp] = offset + 1
        if offset in self._skip.get(tp, ()):
            self._done.setdefault(tp, set()).add(offset)
            return False
        return True

    def skip(self, tp: Hashable, offset: int) -> None:
        """The record at `offset` is not an item: done without an attempt."""
        self._done.setdefault(tp, set()).add(offset)

    def add(self, tp: Hashable, offset: int, timestamp_ms: int | None) -> None:
        """The item at `offset`, written at `timestamp_ms`, is waiting for its attempt."""
        self._pending.setdefault(tp, set()).add(offset)
        written = timestamp_ms / 1000 if timestamp_ms and timestamp_ms > 0 else None
        self._written_at.setdefault(tp, {})[offset] = written or time.time()

    def finish(self, tp: Hashable, offset: int) -> None:
        """The item at `offset` met its fate (unless its partition was revoked meanwhile)."""
        if tp in self._pending:
            self._pending[tp].discard(offset)
            self._done[tp].add(offset)
            self._written_at.get(tp, {}).pop(offset, None)

    def due_commits(self, written: Callable[[Hashable], bool]) -> dict[Hashable, Commit]:
        """Each partition's oldest unfinished item with those finished above it, where
        that changed since the last commit or `written(tp)` (its open transaction holds
        outputs): an idle scheduler commits nothing."""
        offsets: dict[Hashable, Commit] = {}
        for tp, upto in self._next.items():
            pending = self._pending.get(tp)
            offset = min(pending) if pending else upto
            done = self._done[tp] = {o for o in self._done.get(tp, ()) if o >= offset}
            commit = (offset, encode_done(done))
            if self._committed.get(tp) != commit or written(tp):
                offsets[tp] = commit
        return offsets

    def committed(self, offsets: Mapping[Hashable, Commit]) -> None:
        self._committed.update(offsets)

    def read_again(self, tp: Hashable) -> None:
        """Forget what was read of `tp` since its last commit: it is read again from there."""
        self._pending[tp] = set()
        self._written_at[tp] = {}
        self._next.pop(tp, None)
        self._done[tp] = set()
        self._skip[tp] = decode_done(self._committed.get(tp, (0, ""))[1])

    def pending(self) -> int:
        """How many items are read and not finished."""
        return sum(len(p) for p in self._pending.values())

    def oldest_s(self) -> float:
        """How long ago the oldest unfinished item was written to the retry topic."""
        written = [t for items in self._written_at.values() for t in items.values()]
        return max(time.time() - min(written), 0.0) if written else 0.0
