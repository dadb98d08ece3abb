"""Finished offsets above a commit position, carried in the commit's metadata string.

A retry topic's items finish out of order (each is due at its own time), but Kafka keeps
one committed offset per partition: the oldest unfinished item. What finished after it
is written next to that offset, as ranges (`done:3-7,9`), so that whoever reads the
partition again skips those items instead of attempting them (and writing their dead
letters or next items) a second time.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_METADATA", "decode_done", "encode_done"]

#: Kafka's default `offset.metadata.max.bytes` is 4096; stay well below it.
MAX_METADATA = 3000
_PREFIX = "done:"


def encode_done(done: Iterable[int], limit: int = MAX_METADATA) -> str:
    """The offsets as ranges, lowest first; those that do not fit in `limit` are left out
    (they are attempted again: an email is still not sent twice, the dedupe store)."""
    ranges: list[str] = []
    size = len(_PREFIX)
    start = end = None
    for offset in [*sorted(set(done)), None]:
        if start is not None and end is not None and offset == end + 1:
            end = offset
            continue
        if start is not None and end is not None:
            text = str(start) if start == end else f"{start}-{end}"
            if size + len(text) + 1 > limit:
                break
            ranges.append(text)
            size += len(text) + 1
        start = end = offset
    return _PREFIX + ",".join(ranges) if ranges else ""


def decode_done(metadata: str | None) -> set[int]:
    """The offsets `encode_done` wrote; nothing for any other metadata."""
    if not metadata or not metadata.startswith(_PREFIX):
        return set()
    done: set[int] = set()
    try:
        for part in metadata[len(_PREFIX) :].split(","):
            low, _, high = part.partition("-")
            done.update(range(int(low), int(high or low) + 1))
    except ValueError:
        return set()
    return done
