"""Checks a user runs on their own code: ``check_world`` and ``check_agent`` (the plug-in contract,
``docs/worlds.md`` and ``docs/agents.md``), and the range checks of config dataclasses.

``check_world(world, env_info)`` and ``check_agent(agent, env_info)`` run on a live object what
``tests/test_conformance.py`` runs on every registered world and agent, and raise a
``worldmodels.contract.ContractError`` with a one-line message naming the problem::

    from worldmodels.checks import check_world
    check_world(MyWorld(MyWorld.Config(), env_info), env_info)

Range checks: each config ``__post_init__`` states its fields' valid ranges.

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


def check_world(
    world: Any, env_info: Any, *, seed: int = 0, steps: int = 4, train: bool = True,
    compile: bool = False, store: Any = None,
) -> None:  # fmt: skip
    """The world contract on ``world``: see ``worldmodels.conformance.check_world``."""
    from worldmodels.conformance import check_world as run  # heavy imports, only when used

    run(world, env_info, seed=seed, steps=steps, train=train, compile=compile, store=store)


def check_agent(
    agent: Any, env_info: Any, *, world: Any = None, seed: int = 0, steps: int = 3,
    train: bool = True, capture: bool = True,
) -> None:  # fmt: skip
    """The agent contract on ``agent``: see ``worldmodels.conformance.check_agent``."""
    from worldmodels.conformance import check_agent as run  # heavy imports, only when used

    run(agent, env_info, world=world, seed=seed, steps=steps, train=train, capture=capture)


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
