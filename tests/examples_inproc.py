"""The example plug-ins in examples/, imported in this process without touching the global
registries (other tests list the registered components: an example must not join them)."""

import importlib.util
import sys
from pathlib import Path

from worldmodels import registry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(package: str):
    """``examples/<package>/src/<package>``, imported as a module of its own; its
    ``@WORLDS.register``/``@AGENTS.register`` go to throwaway registries."""
    name = f"_example_{package}"
    if name in sys.modules:
        return sys.modules[name]
    path = EXAMPLES / package / "src" / package / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    saved = registry.WORLDS, registry.AGENTS
    registry.WORLDS = registry.Registry("world", "worldmodels.examples_worlds")
    registry.AGENTS = registry.Registry("agent", "worldmodels.examples_agents")
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        registry.WORLDS, registry.AGENTS = saved
    return module
