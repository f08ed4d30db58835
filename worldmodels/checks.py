"""Range checks for config dataclasses: each ``__post_init__`` states its fields' valid ranges.

They raise ``ValueError`` with a message that starts with the field name and names the range;
``worldmodels.config`` turns it into a one-line ``UserError`` with the field's full key path
(``schedule.epochs must be >= 0, got -1``). Finiteness of every float and non-negativity of every
int are checked for all config fields by ``worldmodels.config`` itself.
"""

from __future__ import annotations

import math
import re
from typing import Any

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def at_least(obj: Any, minimum: float, *names: str) -> None:
    """Each field in ``names`` is ``>= minimum``."""
    for name in names:
        value = getattr(obj, name)
        if not value >= minimum:  # also catches NaN
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def in_range(obj: Any, low: float, high: float, *names: str) -> None:
    """Each field in ``names`` is in ``[low, high]``."""
    for name in names:
        value = getattr(obj, name)
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


def positive(obj: Any, *names: str) -> None:
    """Each field in ``names`` is a finite number ``> 0``."""
    for name in names:
        value = getattr(obj, name)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_name(name: str, what: str = "name") -> None:
    """A directory name of one path component: no separator, not hidden, not ``.``/``..``."""
    bad = (
        not name
        or name != name.strip()
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or any(ord(c) < 32 for c in name)
    )
    if bad:
        raise ValueError(
            f"{what} must be a plain directory name (no '/' or '\\', not starting with '.', "
            f"no surrounding spaces), got {name!r}"
        )


def check_module_name(name: str, what: str = "plugin") -> None:
    """A dotted Python module name (``my_pkg.agents``)."""
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
        raise ValueError(
            f"{what} must be a dotted Python module name like my_pkg.agents, got {name!r}"
        )
