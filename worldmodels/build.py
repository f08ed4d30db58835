"""Wiring: from a resolved Config to live objects (envs, agents, worlds). Entry points only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from worldmodels import contract, distributed
from worldmodels.config import Choice
from worldmodels.envs.atari import AtariVecEnv, make_atari_env
from worldmodels.envs.atari_config import AtariConfig
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
    from worldmodels.envs.dream import DreamEnv

    training = contract.agent_training(agent)
    if world is None or training is None:
        return None
    return DreamEnv(
        world, store, num_envs=agent.config.num_envs, horizon=agent.config.horizon,
        device=device, seed=distributed.rank_seed(cfg.run.seed, "dream"),
        recency_weights=training.recency_weights, amp=amp, observes=agent.observes,
        spares=cfg.schedule.dream_spares, graphs=graphs,
    )  # fmt: skip


def graphs_mode(
    cfg: Any, world: Any, device: torch.device, log: Callable[[str], None]
) -> str | None:
    """``run.cuda_graphs`` for this world on ``device``: "cuda" or None (with a line saying why
    not; a one-line ``UserError`` when ``on`` was asked of a world that cannot be captured)."""
    from worldmodels.errors import UserError
    from worldmodels.graphs import capture_refusal, graphs_enabled

    if not graphs_enabled(cfg.run.cuda_graphs, device) or world is None:
        return None
    if distributed.active():  # DDP's all-reduce is not inside the captured steps
        if cfg.run.cuda_graphs == "on":
            raise UserError(
                "run.cuda_graphs=on: CUDA graphs and torchrun's data-parallel training are not "
                "combined; use run.cuda_graphs=auto (off under torchrun) or one process"
            )
        log("CUDA graphs off: this run trains data-parallel under torchrun")
        return None
    why = capture_refusal(world)
    if why is None:
        return "cuda"
    name = contract.name_of(world)
    if cfg.run.cuda_graphs == "on":
        raise UserError(f"run.cuda_graphs=on: world {name!r} cannot be captured ({why})")
    log(f"CUDA graphs off: world {name!r} cannot be captured ({why})")
    return None


@dataclasses.dataclass
class RunParts:
    """What a training run is made of, built from its config by ``build_parts``: a schedule's
    steps (``worldmodels.schedule.RunSteps``) use them and build nothing."""

    make_env: Callable[[str, int], Any]  # (mode, num_envs) -> a real vector env
    train_env: Any  # the real games experience is collected from (None off rank 0: torchrun)
    collect_agent: Any  # the policy that collects (the agent, or the staged schedule's random one)
    new_collector: Callable[[int], Any]  # env seed -> a Collector on train_env (resumes use it)
    collector: Any  # None off rank 0
    stage_trainers: dict[str, Any]  # stage name -> StageTrainer
    dream: Any  # DreamEnv, or None (no world, or an agent that does not train in imagination)
    video_sampler: Any  # SegmentSampler of the imagination videos, or None
    graphs: str | None  # "cuda" where the hot loops replay CUDA graphs


def build_parts(
    cfg: Any, *, agent: Any, world: Any, store: Any, make_env: Callable[[str, int], Any],
    device: torch.device, amp: bool = False, log: Callable[[str], None] = print,
    collect_agent: Any = None,
) -> RunParts:  # fmt: skip
    """The parts of a run: the real training env and its collector (acting with
    ``collect_agent``, default the agent), one ``StageTrainer`` per world stage, the
    ``DreamEnv``, the video sampler, the CUDA-graph mode. A world whose stage names collide with
    the schedule's phases or TensorBoard sections is refused in one line
    (``contract.check_stage_names``).

    Under ``torchrun`` each rank's stage samplers and dream draw from seeds of its own (rank 0's
    are those of one process), only rank 0 has the real env and collector, and an agent that
    trains in imagination without ``data_parallel`` is refused in one line."""
    from worldmodels.agent_input import AgentInput
    from worldmodels.collect import Collector
    from worldmodels.errors import UserError
    from worldmodels.replay import SegmentSampler
    from worldmodels.training import StageTrainer

    s, seed = cfg.schedule, cfg.run.seed
    graphs = graphs_mode(cfg, world, device, log)
    stage_trainers: dict[str, Any] = {}
    video_sampler = dream = None
    if world is not None:
        stages = world.stages()
        contract.check_stage_names(world, stages)
        for name, stage in stages.items():
            stage_trainers[name] = StageTrainer(
                stage, store, device, seed=distributed.rank_seed(seed, "stage", name), amp=amp,
                graphs=graphs or False, max_nonfinite_in_a_row=s.max_nonfinite_in_a_row,
            )  # fmt: skip
        video_sampler = SegmentSampler(
            store, world.context_len + s.video_horizon, seed=derive_seed(seed, "video")
        )
        dream = build_dream(cfg, world, agent, store, device=device, amp=amp, graphs=graphs)
        if dream is not None and distributed.active() and not contract.data_parallel(agent):
            raise UserError(
                f"agent {contract.name_of(agent)!r} does not train data-parallel (it declares no "
                "data_parallel = True), so it cannot run under torchrun: run it in one process"
            )
    collect_agent = agent if collect_agent is None else collect_agent
    train_env = make_env("train", s.num_envs) if distributed.is_main() else None

    def new_collector(env_seed: int) -> Collector:
        return Collector(
            train_env, store, epsilon=s.collect_epsilon, seed=env_seed, device=device,
            observer=AgentInput(collect_agent, world, device),
        )  # fmt: skip

    return RunParts(
        make_env=make_env, train_env=train_env, collect_agent=collect_agent,
        new_collector=new_collector,
        collector=new_collector(derive_seed(seed, "collect", 0)) if train_env is not None else None,
        stage_trainers=stage_trainers, dream=dream, video_sampler=video_sampler, graphs=graphs,
    )  # fmt: skip
