"""`${VAR}` and `${VAR:-default}` in config strings (`$${` is a literal `${`)."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["interpolate"]

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def interpolate(value: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Fill `${VAR}` / `${VAR:-default}` in (`$${` is a literal `${`); also return errors."""
    errors: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if match.group(0) == "$${":
            return "${"
        if name is None:
            errors.append("malformed '${' (write ${VAR}, ${VAR:-default}, or $${ for '${')")
            return ""
        if environ.get(name):
            return environ[name]
        if default is not None:
            return default
        if name in environ:  # set but empty, and no default: empty is what was asked for
            return ""
        errors.append(f"environment variable {name} is not set")
        return ""

    return _VAR.sub(fill, value), errors
