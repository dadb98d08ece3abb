"""The `dedupe.backend` setting: which class each backend name stands for, for every
store the backend holds (the dedupe store, the rate limiter, the delivery records)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["Backends"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Backends(Generic[_T]):
    """One store's class in each backend. They take the same arguments, the sqlite one
    after the file's path and the redis one after the server's URL."""

    #: The store, as the error for an unknown backend names it.
    what: str
    memory: Callable[..., _T]
    sqlite: Callable[..., _T]
    redis: Callable[..., _T]

    def create(self, backend: str, path: str, url: str, *args: Any) -> _T:
        """The store of `backend`, constructed only (`path`: sqlite's, `url`: redis')."""
        if backend == "memory":
            return self.memory(*args)
        if backend == "sqlite":
            return self.sqlite(Path(path), *args)
        if backend == "redis":
            return self.redis(url, *args)
        raise ValueError(f"{self.what} backend {backend!r} is not available")
