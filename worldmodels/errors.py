"""The exception types a user is meant to see."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix: a bad flag, an unknown name, a missing or corrupt file.

    Entry points print it as a single line (no traceback) and exit with status 2. The message
    says what was wrong and, where there is a closed set of choices, which ones are valid.
    """


class DiskFull(UserError):
    """No space (or quota) left while writing ``path``; nothing already written was damaged."""

    def __init__(self, path: str | Path, advice: str = "free some space and run it again") -> None:
        self.path = Path(path)
        super().__init__(f"no space left on the device while writing {path}: {advice}")


def choices(valid) -> str:
    """Format a set of valid names for an error message: ``'a, b, c'``."""
    names = sorted(valid)
    return ", ".join(names) if names else "(none registered)"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) folded into one space."""
    return " ".join(str(text).split())
