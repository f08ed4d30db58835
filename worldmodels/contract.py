"""The plug-in contract: what a world and an agent must have, what they may have, and the one
place where the framework asks.

A **world** (``docs/worlds.md``) must have the members in ``WORLD_REQUIRED``; an **agent**
(``docs/agents.md``) those in ``AGENT_REQUIRED``; a registered class of either kind also has a
frozen ``Config`` dataclass. Everything else is an optional, named *capability*, and the framework
asks for it through the accessor below that bears its name, never by probing the object itself:

============================  ==========================================================
world capability              accessor (what the framework does with it)
============================  ==========================================================
``features``, ``feature_dim``  ``feature_dim(world)``: feature agents in imagination
``observe``                   ``real_features_fn(world)``: feature agents in the real game
``agent_view``                ``agent_view(world)``: what pixel agents see of real frames
``reconstruct``               ``reconstruct(world)``: the reconstruction videos
``hot_modules``               ``hot_modules(component)``: ``run.compile`` (agents too)
``reseed``                    ``reseed(world)``: seeding through the SB3 ``VecEnv``
``reward_end_probs``          ``reward_end_probs(world)``: teacher-forced reward/end scores
``imagine_refresh_due`` and   ``refresh(world)``: a state of bounded capacity (IRIS's
``imagine_refresh``           key/value cache)
``imagine_swap_rows_``        ``swap_rows(world)``: how ``DreamEnv`` restarts finished rows
                              from their spares (default: every entry row-wise)
``graph_capture``             ``capture_refusal(world)``: CUDA graphs / static steps
``schedule``                  ``schedule_kind(world)``: "online" (default) or "staged"
``schedule_defaults``         ``schedule_defaults(world_cls)``: under the presets
``agent_defaults``            ``agent_defaults(world_cls, agent)``: under the presets
``default_agent``             ``default_agent(world_cls)``: trained when --agent is not given
============================  ==========================================================

============================  ==========================================================
agent capability              accessor
============================  ==========================================================
``observes``                  ``observes(agent)``: "pixels" (frames) or "features" (required)
``uses_observations``         ``uses_observations(agent)``: False: collecting runs no world
``uses_context``              ``uses_context(agent)``: reads the real context frames of
                              ``DreamEnv.reset()``'s info for a burn-in
``config.training``           ``agent_training(agent)``: trains in imagination (then the
                              config also has ``num_envs`` and ``horizon``)
``hot_modules``               ``hot_modules(component)``
``data_parallel``             ``data_parallel(agent)``: its updates average their gradients
                              over the ranks of a ``torchrun`` (they go through
                              ``worldmodels.training.Updater``)
============================  ==========================================================

Which agent can run in which world is ``incompatibility(agent, world)`` (None, or why not). A
missing required member, or a capability declared half-way or with a value of the wrong kind, is
a ``ContractError``: one line that names the member and the class. ``worldmodels.checks.
check_world`` and ``check_agent`` run the whole contract (shapes, dtypes, devices, determinism,
checkpoints, ``DreamEnv``, graph capture) on an object.

The dream an agent trains in (``envs.dream.DreamEnv``, or a proxy of it) has the members in
``DREAM_MEMBERS``; agents read them directly.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from worldmodels.errors import UserError

WORLD_REQUIRED: dict[str, str] = {
    "num_actions": "the size of the discrete action set (int)",
    "obs_shape": "(C, H, W) of its uint8 frames",
    "context_len": "real frames an imagined trajectory starts from (int >= 1)",
    "stages": "stages() -> {name: worldmodels.training.Stage}",
    "imagine_start": "imagine_start(obs, act, mask) -> (state, first obs)",
    "imagine_step": "imagine_step(state, action, *, render=True) -> (state, obs, reward, end)",
}
AGENT_REQUIRED: dict[str, str] = {
    "observes": '"pixels" or "features"',
    "initial_state": "initial_state(batch_size, device) -> state",
    "act": "act(obs, state, first, *, greedy=False) -> (actions, state)",
    "train_in_imagination": "train_in_imagination(dream) -> {name: float}",
}
DREAM_MEMBERS: tuple[str, ...] = (
    "num_envs", "horizon", "device", "amp", "graphs", "observes", "num_actions", "obs_shape",
    "context_len", "reset", "step", "contexts",
)  # fmt: skip
OBSERVES = ("pixels", "features")
SCHEDULES = ("online", "staged")

_MISSING = object()


class ContractError(UserError, TypeError):
    """A world or an agent that breaks the plug-in contract: one line naming the member (or the
    check) and the class. A ``UserError`` (entry points print it as one line) and a
    ``TypeError``."""


def _cls(obj: Any) -> type:
    return obj if isinstance(obj, type) else type(obj)


def name_of(component: Any) -> str:
    """The registered name of a component (or class), else its class name."""
    cls = _cls(component)
    return str(getattr(cls, "registry_name", None) or cls.__name__)


def describe(kind: str, component: Any) -> str:
    """``world 'iris' (IrisWorld)``: how messages name a component."""
    cls = _cls(component)
    name = getattr(cls, "registry_name", None)
    return f"{kind} {name!r} ({cls.__name__})" if name else f"{kind} {cls.__name__}"


def _get(obj: Any, name: str) -> Any:
    return getattr(obj, name, _MISSING)


def _missing(kind: str, obj: Any, required: Mapping[str, str]) -> None:
    for member, what in required.items():
        if _get(obj, member) is _MISSING:
            raise ContractError(f"{describe(kind, obj)} has no `{member}` (required: {what})")


def _takes_keyword(obj: Any, method: str, keyword: str) -> None:
    """``obj.method`` accepts ``keyword=`` (as a keyword, or through ``**kwargs``)."""
    try:
        params = inspect.signature(getattr(obj, method)).parameters
    except (TypeError, ValueError):  # a builtin or C function: nothing to inspect
        return
    if keyword in params and params[keyword].kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    raise ContractError(
        f"{describe('world', obj)}: {method} takes no `{keyword}=` keyword (DreamEnv passes "
        f"{keyword}=False to feature agents; declare `*, {keyword}: bool = True`)"
    )


def require_config(cls: type, kind: str) -> None:
    """A registered component class has a ``Config`` dataclass."""
    config = _get(cls, "Config")
    if config is _MISSING:
        raise ContractError(f"{kind} {cls.__name__} needs a `Config` dataclass attribute")
    if not dataclasses.is_dataclass(config):
        raise ContractError(f"{kind} {cls.__name__}: `Config` must be a dataclass")


def config_class(component: Any) -> type | None:
    """The component's ``Config`` class (None for an unregistered object without one)."""
    config = _get(_cls(component), "Config")
    return config if isinstance(config, type) else None


def config_of(component: Any) -> Any:
    """The config a component was built from (``self.config``), or None."""
    config = _get(component, "config")
    return None if config is _MISSING else config


def require_world(world: Any) -> None:
    """Every member in ``WORLD_REQUIRED``, and the optional ones declared consistently."""
    _missing("world", world, WORLD_REQUIRED)
    _takes_keyword(world, "imagine_step", "render")
    if real_features_fn(world) is not None and feature_dim(world) is None:
        raise ContractError(
            f"{describe('world', world)} has `real_features` but no `features(state)` and "
            "`feature_dim`: feature agents need all three"
        )
    refresh(world)
    capture_refusal(world)
    schedule_kind(world)


def require_agent(agent: Any) -> None:
    """Every member in ``AGENT_REQUIRED``, and the optional ones declared consistently."""
    _missing("agent", agent, AGENT_REQUIRED)
    observes(agent)
    uses_observations(agent)
    if uses_context(agent) and observes(agent) == "features":
        raise ContractError(
            f"{describe('agent', agent)} declares uses_context = True but observes features: "
            "the context frames it would burn in on are pixels"
        )
    agent_training(agent)


# ---------------------------------------------------------------------- world capabilities


def _method(world: Any, name: str, kind: str = "world") -> Callable[..., Any] | None:
    fn = _get(world, name)
    if fn is _MISSING or fn is None:
        return None
    if not callable(fn):
        raise ContractError(f"{describe(kind, world)}: `{name}` must be a method")
    return fn


RESERVED_STAGE_NAMES = (
    "agent", "collect", "compare", "config", "final", "imagination", "imagined_vs_real",
    "learning", "progress", "replay", "test",
)  # fmt: skip
"""Names a world's stage may not take: the schedules' phases (``collect``, ``agent``, ``test``)
and the run's own TensorBoard sections, which a stage's logs would be mixed into."""


def check_stage_names(world: Any, stages: Mapping[str, Any]) -> None:
    """A ``ContractError`` unless every key of ``stages()`` is a Python identifier, not one of
    ``RESERVED_STAGE_NAMES``, and the name its ``Stage`` carries."""
    for key, stage in stages.items():
        if not (isinstance(key, str) and key.isidentifier()):
            raise ContractError(
                f"{describe('world', world)}: stage name {key!r} is not an identifier"
            )
        if key in RESERVED_STAGE_NAMES:
            raise ContractError(
                f"{describe('world', world)}: stage name {key!r} is reserved (the schedule's "
                f"phases and TensorBoard sections: {', '.join(RESERVED_STAGE_NAMES)}); rename it"
            )
        name = getattr(stage, "name", key)
        if name != key:
            raise ContractError(
                f"{describe('world', world)}: stages()[{key!r}] is a Stage named {name!r}"
            )


def feature_dim(world: Any) -> int | None:
    """``D`` of ``world.features(state) -> (B, D)`` if the world exposes features, else None.
    ``features`` and ``feature_dim`` come together."""
    fn, dim = _method(world, "features"), _get(world, "feature_dim")
    if fn is None and dim is _MISSING:
        return None
    if fn is None:
        raise ContractError(
            f"{describe('world', world)} has `feature_dim` but no `features(state) -> (B, D)`"
        )
    if isinstance(world, type):
        return None  # the size is an instance's (it follows the config)
    if dim is _MISSING:
        raise ContractError(
            f"{describe('world', world)} has `features` but no `feature_dim` (the D of (B, D))"
        )
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ContractError(
            f"{describe('world', world)}: feature_dim must be an int >= 1, got {dim!r}"
        )
    return dim


def exposes_features(world: Any) -> bool:
    """Whether ``world.features`` exists (what ``DreamEnv(observes="features")`` needs)."""
    if isinstance(world, type):
        return _method(world, "features") is not None
    return feature_dim(world) is not None


def features_fn(world: Any) -> Callable[[dict], Any]:
    """``world.features``; a ``ContractError`` if the world has none."""
    if not exposes_features(world):
        raise ContractError(f"{describe('world', world)} exposes no `features` to observe")
    return world.features


def real_features_fn(world: Any) -> Callable[..., Any] | None:
    """``world.real_features(state, obs, prev_action, first) -> (state, features (B, D))``: features of
    real frames, for feature agents in the real game (None if the world has none)."""
    return _method(world, "real_features")


def agent_view(world: Any) -> Callable[[Any], Any] | None:
    """``world.agent_view(frames) -> frames``: what pixel agents see of real frames (None: the
    frames themselves)."""
    return None if world is None else _method(world, "agent_view")


def reconstruct(world: Any) -> Callable[[Any], Any] | None:
    """``world.reconstruct(frames) -> frames``: frames through the world's encoder and decoder."""
    return _method(world, "reconstruct")


def hot_modules(component: Any) -> list[Any]:
    """``component.hot_modules()``: the modules ``run.compile`` compiles (default none)."""
    fn = _method(component, "hot_modules", "component")
    if fn is None:
        return []
    modules = list(fn())
    import torch.nn as nn  # lazy: this module stays importable without torch's start-up

    for m in modules:
        if not isinstance(m, nn.Module):
            raise ContractError(
                f"{describe('component', component)}: hot_modules() must return nn.Modules, "
                f"got {type(m).__name__}"
            )
    return modules


def reward_end_probs(world: Any) -> Callable[..., Any] | None:
    """``world.reward_end_probs(obs, act, mask) -> (reward-sign probs (B, T-1, 3) or None, end
    probs (B, T-1) or None)``, teacher-forced on real rows: what ``evaluate.py --compare`` scores
    open loop against (None if the world has none)."""
    return _method(world, "reward_end_probs")


def reseed(world: Any) -> Callable[[int], None] | None:
    """``world.reseed(seed)``: reseed the world's own generators (None if it has none)."""
    return _method(world, "reseed")


def refresh(world: Any) -> tuple[Callable[[dict, int], bool], Callable[[dict], dict]] | None:
    """``(imagine_refresh_due, imagine_refresh)`` for a state of bounded capacity, or None.
    The two come together."""
    due, fn = _method(world, "imagine_refresh_due"), _method(world, "imagine_refresh")
    if due is None and fn is None:
        return None
    if due is None or fn is None:
        has, lacks = (
            ("imagine_refresh", "imagine_refresh_due") if due is None
            else ("imagine_refresh_due", "imagine_refresh")
        )  # fmt: skip
        raise ContractError(f"{describe('world', world)} has `{has}` but no `{lacks}`")
    return due, fn


def swap_rows(world: Any) -> Callable[[Any, dict, dict], dict] | None:
    """``world.imagine_swap_rows_(mask, spare, state)``: the rows ``mask`` of the running
    ``state`` restarted from ``spare``'s, in place, where the world knows a cheaper way than
    copying every entry row-wise (``envs.dream.swap_rows_``; None: that one). It must give the
    same trajectories."""
    return _method(world, "imagine_swap_rows_")


def capture_refusal(world: Any) -> str | None:
    """Why ``world``'s imagination cannot be captured as a graph (None if it declares that it
    can: ``graph_capture = True``; a world may set it to a sentence saying why not)."""
    why = _get(world, "graph_capture")
    if why is _MISSING:
        return "it does not declare graph_capture = True"
    if why is True:
        return None
    if why is False:
        return "it declares graph_capture = False"
    if not isinstance(why, str) or not why.strip():
        raise ContractError(
            f"{describe('world', world)}: graph_capture must be True or a sentence saying why "
            f"not, got {why!r}"
        )
    return why


def schedule_kind(world: Any) -> str:
    """The world's own schedule: ``schedule`` ("online", the default, or "staged")."""
    kind = _get(world, "schedule")
    if kind is _MISSING:
        return "online"
    if kind not in SCHEDULES:
        raise ContractError(
            f"{describe('world', world)}: schedule must be 'online' or 'staged', got {kind!r}"
        )
    return kind


def _mapping(world_cls: Any, name: str) -> dict:
    value = _get(world_cls, name)
    if value is _MISSING or value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ContractError(
            f"{describe('world', world_cls)}: {name} must be a dict, got {type(value).__name__}"
        )
    return dict(value)


def schedule_defaults(world_cls: Any) -> dict:
    """``schedule_defaults``: the world's own schedule settings, merged under the presets."""
    return _mapping(world_cls, "schedule_defaults")


def agent_defaults(world_cls: Any, agent: str) -> dict:
    """``agent_defaults[agent]``: the world's own settings for that agent, under the presets."""
    own = _mapping(world_cls, "agent_defaults").get(agent, {})
    if not isinstance(own, Mapping):
        raise ContractError(
            f"{describe('world', world_cls)}: agent_defaults[{agent!r}] must be a dict, "
            f"got {type(own).__name__}"
        )
    return dict(own)


def default_agent(world_cls: Any) -> str | None:
    """``default_agent``: the agent the world trains when --agent is not given (or None)."""
    name = _get(world_cls, "default_agent")
    if name is _MISSING or name is None:
        return None
    if not isinstance(name, str):
        raise ContractError(f"{describe('world', world_cls)}: default_agent must be an agent name")
    return name


# ---------------------------------------------------------------------- agent capabilities


def observes(agent: Any) -> str:
    """``agent.observes``: "pixels" (uint8 frames) or "features" (the world's ``(B, D)``)."""
    value = _get(agent, "observes")
    if value is _MISSING:
        raise ContractError(
            f"{describe('agent', agent)} has no `observes` (required: {AGENT_REQUIRED['observes']})"
        )
    if value not in OBSERVES:
        raise ContractError(
            f"{describe('agent', agent)}: observes must be 'pixels' or 'features', got {value!r}"
        )
    return value


def _flag(agent: Any, name: str, default: bool) -> bool:
    value = _get(agent, name)
    if value is _MISSING:
        return default
    if not isinstance(value, bool):
        raise ContractError(
            f"{describe('agent', agent)}: {name} must be True or False, got {value!r}"
        )
    return value


def uses_observations(agent: Any) -> bool:
    """``uses_observations`` (default True); False: ``act`` never reads the observation, and
    collecting with the agent runs no world (the random agent)."""
    return _flag(agent, "uses_observations", True)


def uses_context(agent: Any) -> bool:
    """``uses_context`` (default False): the agent reads the real context frames of
    ``DreamEnv.reset()``'s info (``context_obs``, ``next_context_obs``) for a burn-in. They are
    frames, so only a pixel agent may."""
    return _flag(agent, "uses_context", False)


def data_parallel(agent: Any) -> bool:
    """``data_parallel`` (default False): the agent's updates in imagination train
    data-parallel under ``torchrun``, every rank on its own imagined trajectories, their
    gradients averaged so that every rank takes the same step (an agent whose updates go through
    ``worldmodels.training.Updater`` gets that from it). An agent that trains in imagination
    without it is refused under ``torchrun``: its ranks would drift apart."""
    return _flag(agent, "data_parallel", False)


def agent_training(agent: Any) -> Any:
    """``agent.config.training`` (a ``StageTraining``) if the agent trains in imagination, else
    None. An agent that trains has ``config.num_envs`` and ``config.horizon`` too (the
    ``DreamEnv`` the schedule builds for it)."""
    config = _get(agent, "config")
    if config is _MISSING:
        return None
    training = _get(config, "training")
    if training is _MISSING or training is None:
        return None
    for field in ("num_envs", "horizon"):
        value = _get(config, field)
        if value is _MISSING:
            raise ContractError(
                f"{describe('agent', agent)}: its config has `training` but no `{field}` (the "
                "DreamEnv it trains in)"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ContractError(f"{describe('agent', agent)}: config.{field} must be an int >= 1")
    return training


def dream_size(agent: Any) -> tuple[int, int]:
    """``(num_envs, horizon)`` of the ``DreamEnv`` a training agent gets."""
    if agent_training(agent) is None:
        raise ContractError(f"{describe('agent', agent)} does not train in imagination")
    return agent.config.num_envs, agent.config.horizon


# ---------------------------------------------------------------------- pairs


def incompatibility(agent: Any, world: Any) -> str | None:
    """Why ``agent`` cannot act and train with ``world`` (``None``: it can). ``world`` may be
    None (no world: the agent acts on real frames only)."""
    if observes(agent) != "features":
        return None
    who = describe("agent", agent)
    if world is None:
        return f"{who} observes world features: it needs a world"
    lacks = [
        what
        for what, has in (
            ("features", exposes_features(world)),
            ("real_features", real_features_fn(world)),
        )
        if not has
    ]
    if lacks:
        return f"{who} observes features, which {describe('world', world)} does not expose (no {' or '.join(lacks)})"
    return None
