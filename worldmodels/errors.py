"""The one exception type a user is meant to see."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a bad flag, an unknown name, a missing or corrupt file.

    Entry points print it as a single line (no traceback) and exit with status 2. The message
    says what was wrong and, where there is a closed set of choices, which ones are valid.
    """


def choices(valid) -> str:
    """Format a set of valid names for an error message: ``'a, b, c'``."""
    names = sorted(valid)
    return ", ".join(names) if names else "(none registered)"
