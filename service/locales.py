"""The one rule for a locale tag, for `default_locale`, event locales and template folders.

A tag is a language of 2-8 letters, then subtags of 1-8 letters or digits, joined by `-`
or `_` (`de`, `pt_BR`, `zh-Hant-TW`, `en-US-u-ca-gregory`), 35 characters at most.
Nothing else is a tag, so a tag is always safe as a folder name.
"""

from __future__ import annotations

import re

__all__ = ["LOCALE_PATTERN", "MAX_LOCALE_LENGTH", "is_locale"]

#: Anchored, for pydantic's `pattern=` as well as `re`.
LOCALE_PATTERN = r"^[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*$"
MAX_LOCALE_LENGTH = 35
_LOCALE = re.compile(LOCALE_PATTERN)


def is_locale(value: str) -> bool:
    """Whether `value` (already stripped) is a locale tag by the rule above."""
    return len(value) <= MAX_LOCALE_LENGTH and _LOCALE.fullmatch(value) is not None
