"""What a config problem is: its key path, where it is, and the error that carries them all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "KeyPath", "Problem", "format_path"]

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """Invalid configuration; `problems` holds one `path:line: message` line each."""

    def __init__(self, problems: Iterable[str] | str) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem; `line` is None for those that come from the environment."""

    where: str
    line: int | None
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.where}: {self.message}"
        return f"{self.where}:{self.line}: {self.message}"


def format_path(path: KeyPath) -> str:
    """`("flows", "post-login", 0, "url")` → `flows.post-login[0].url`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text
