"""Short names -> component classes, for encoders, dynamics models, worlds and agents.

A component is a class with a ``Config`` class attribute (a frozen dataclass). Built-in components
register themselves with a decorator (``@WORLDS.register("iris")``) in a module of their package
(``worldmodels/worlds/``, ``agents/``, ``worldmodels/encoders/``, ``worldmodels/dynamics/``):
every module of that package is imported when a name is first looked up, so a new file there is
all it takes (no list to add it to). Third-party packages add theirs through a Python entry point
in the group ``worldmodels.<kind>`` (for example ``[project.entry-points."worldmodels.agents"]
my_agent = "my_pkg.agent:MyAgent"``), or by calling ``AGENTS.register("my_agent")(MyAgent)`` in
code imported before the CLI resolves names (``--plugin my_pkg.agent``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, cast

from worldmodels.checks import check_module_name
from worldmodels.contract import require_config
from worldmodels.errors import UserError, choices, one_line

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> class map with lazy loading of built-in modules and entry points."""

    def __init__(self, kind: str, group: str, builtin_packages: Iterable[str] = ()) -> None:
        self.kind = kind  # "agent", "world", ...: used in messages
        self.group = group  # the entry-point group third-party packages register into
        self._builtin_packages = tuple(builtin_packages)  # each of their modules is imported
        self._classes: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@AGENTS.register("random")``."""

        def deco(cls: type[T]) -> type[T]:
            require_config(cls, self.kind)
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(
                    f"{self.kind} name {name!r} is already taken by {existing.__module__}."
                    f"{existing.__qualname__}"
                )
            self._classes[name] = cls
            cast(
                Any, cls
            ).registry_name = name  # a checkpoint is rebuilt from this name, never unpickled
            return cls

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for package in self._builtin_packages:
            pkg = importlib.import_module(package)
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{package}.{info.name}")
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name in self._classes:
                continue
            what = f"{self.kind} {ep.name!r} from entry point {ep.value!r}"
            with _plugin_errors(f"could not load {what}"):
                self.register(ep.name)(ep.load())

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


WORLDS: Registry = Registry("world", "worldmodels.worlds", ["worldmodels.worlds"])
AGENTS: Registry = Registry("agent", "worldmodels.agents", ["worldmodels.agents"])


_LOADED: list[str] = []


@contextlib.contextmanager
def _plugin_errors(what: str) -> Iterator[None]:
    """Whatever a plug-in's import does wrong (raises, has a syntax error, registers a taken
    name, calls ``sys.exit``) becomes one ``UserError`` line that starts with ``what``."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "its source"
        raise UserError(f"{what}: syntax error in {where}: {exc.msg}") from None
    except SystemExit as exc:
        raise UserError(f"{what}: it called sys.exit({exc.code!r}) while being imported") from None
    except Exception as exc:  # a broken plug-in must not take the framework down
        raise UserError(f"{what}: {type(exc).__name__}: {one_line(str(exc))}") from None


def load_plugins(modules: Iterable[str]) -> None:
    """Import modules that register components (``--plugin my_package.agents``)."""
    for name in modules:
        if name in _LOADED:
            continue
        try:
            check_module_name(name, "--plugin")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        missing: ModuleNotFoundError | None = None
        with _plugin_errors(f"plugin {name!r} failed"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if not (exc.name and (name == exc.name or name.startswith(exc.name + "."))):
                    raise  # the plugin exists but imports something that does not
                missing = exc
        if missing is not None:
            raise UserError(f"cannot import plugin {name!r}: {missing}")
        _LOADED.append(name)


def loaded_plugins() -> tuple[str, ...]:
    """The plugin modules ``load_plugins`` imported in this process, in order."""
    return tuple(_LOADED)
