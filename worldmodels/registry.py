"""Short names -> component classes, for encoders, dynamics models, worlds and agents.

A component is a class with a ``Config`` class attribute (a frozen dataclass). Built-in components
register themselves with a decorator when their package is imported; third-party packages add
theirs through a Python entry point in the group ``worldmodels.<kind>`` (for example
``[project.entry-points."worldmodels.agents"] my_agent = "my_pkg.agent:MyAgent"``), or by calling
``AGENTS.register("my_agent")(MyAgent)`` in code imported before the CLI resolves names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from worldmodels.errors import UserError, choices

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> class map with lazy loading of built-in modules and entry points."""

    def __init__(self, kind: str, group: str, builtin_modules: Iterable[str] = ()) -> None:
        self.kind = kind  # "agent", "world", ...: used in messages
        self.group = group  # the entry-point group third-party packages register into
        self._builtin_modules = tuple(builtin_modules)
        self._classes: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@AGENTS.register("random")``."""

        def deco(cls: type[T]) -> type[T]:
            if not hasattr(cls, "Config"):
                raise TypeError(f"{self.kind} {cls.__name__} needs a `Config` dataclass attribute")
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(
                    f"{self.kind} name {name!r} is already taken by {existing.__module__}."
                    f"{existing.__qualname__}"
                )
            self._classes[name] = cls
            cls.registry_name = name  # a checkpoint is rebuilt from this name, never unpickled
            return cls

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name in self._classes:
                continue
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plug-in must not take the framework down
                raise UserError(
                    f"could not load {self.kind} {ep.name!r} from entry point {ep.value!r}: {exc}"
                ) from exc
            self.register(ep.name)(cls)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        self._load()
        try:
            return self._classes[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r} (valid: {choices(self._classes)})"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._classes


ENCODERS: Registry = Registry("encoder", "worldmodels.encoders", ["worldmodels.encoders"])
DYNAMICS: Registry = Registry("dynamics model", "worldmodels.dynamics", ["worldmodels.dynamics"])
WORLDS: Registry = Registry("world", "worldmodels.worlds", ["worldmodels.worlds"])
AGENTS: Registry = Registry("agent", "worldmodels.agents", ["agents"])


def load_plugins(modules: Iterable[str]) -> None:
    """Import modules that register components (``--plugin my_package.agents``)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"cannot import plugin {name!r}: {exc}") from None
