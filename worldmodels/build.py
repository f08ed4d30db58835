"""Wiring: from a resolved Config to live objects (envs, agents, worlds). Entry points only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from envs.atari import AtariVecEnv, make_atari_env
from envs.atari_config import AtariConfig
from worldmodels import contract
from worldmodels.config import Choice
from worldmodels.interfaces import EnvInfo
from worldmodels.registry import AGENTS, WORLDS
from worldmodels.seeding import derive_seed


def env_factory(config: AtariConfig) -> Callable[[str, int], AtariVecEnv]:
    """``make(mode, num_envs)`` for this protocol."""

    def make(mode: str, num_envs: int) -> AtariVecEnv:
        return make_atari_env(config, num_envs, mode)  # type: ignore[arg-type]

    return make


def env_info_of(env: AtariVecEnv) -> EnvInfo:
    return EnvInfo(
        num_actions=env.num_actions,
        obs_shape=tuple(env.obs_shape),  # type: ignore[arg-type]
        action_meanings=tuple(env.action_meanings),
    )


def build_agent(
    choice: Choice, env_info: EnvInfo, *, seed: int, device: torch.device,
    channels_last: bool = False,
) -> Any:  # fmt: skip
    """The registered agent class, built from its config and moved to ``device``."""
    cls = AGENTS.get(choice.name)
    agent = cls(choice.config, env_info, seed=derive_seed(seed, "agent"))
    return agent.to(device, memory_format=_format(channels_last))


def _format(channels_last: bool) -> torch.memory_format:
    # Only 4-D parameters (conv weights) change layout; activations follow the weights.
    return torch.channels_last if channels_last else torch.preserve_format


def build_world(
    choice: Choice, env_info: EnvInfo, *, device: torch.device, channels_last: bool = False
) -> Any:
    """The registered world class, built from its config and moved to ``device``."""
    world = WORLDS.get(choice.name)(choice.config, env_info)
    return world.to(device, memory_format=_format(channels_last))


def compile_hot_modules(*components: Any) -> int:
    """``torch.compile`` the modules each component lists in ``hot_modules()`` (in place, so
    weights, checkpoints and optimizers are unaffected); returns how many were compiled."""
    n = 0
    for component in components:
        for module in contract.hot_modules(component):
            module.compile()
            n += 1
    return n


def build_world_and_agent(
    world: Choice | None, agent: Choice, env_info: EnvInfo, *, seed: int,
    device: torch.device, channels_last: bool = False,
) -> tuple[Any, Any]:  # fmt: skip
    """The world (or None) and the agent, in that order: an agent that observes the world's
    features learns their size (``EnvInfo.feature_dim``) from it."""
    w = None
    if world is not None:
        w = build_world(world, env_info, device=device, channels_last=channels_last)
        dim = contract.feature_dim(w)
        if dim is not None:
            env_info = dataclasses.replace(env_info, feature_dim=dim)
    a = build_agent(agent, env_info, seed=seed, device=device, channels_last=channels_last)
    return w, a


def build_dream(
    cfg: Any, world: Any, agent: Any, store: Any, *, device: torch.device, amp: bool = False,
    graphs: str | None = None,
) -> Any:  # fmt: skip
    """The ``DreamEnv`` an agent trains in, sized by the agent's config (``num_envs``,
    ``horizon``, ``training.recency_weights``) and the run's (``schedule.dream_spares``, the seed);
    None for an agent that does not train in imagination (no ``config.training``)."""
    from envs.dream import DreamEnv

    training = contract.agent_training(agent)
    if world is None or training is None:
        return None
    return DreamEnv(
        world, store, num_envs=agent.config.num_envs, horizon=agent.config.horizon,
        device=device, seed=derive_seed(cfg.run.seed, "dream"),
        recency_weights=training.recency_weights, amp=amp, observe=agent.observes,
        spares=cfg.schedule.dream_spares, graphs=graphs,
    )  # fmt: skip
