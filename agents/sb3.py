"""stable-baselines3 algorithms as agents: ``sb3_ppo``, ``sb3_a2c``, ``sb3_dqn``.

One adapter, ``SB3Agent``, trains any SB3 algorithm for discrete actions inside a ``DreamEnv``
(wrapped as an SB3 ``VecEnv`` by ``envs.sb3_vec.DreamVecEnv``) and acts with the SB3 policy in
the real game. The registered names are thin subclasses that only choose the algorithm.

* The SB3 model (policy, optimizer, rollout or replay buffer) is built at construction from the
  spaces of ``EnvInfo`` (uint8 ``Box(0, 255, (C, H, W))`` frames, or float32 ``(D,)`` features;
  ``Discrete(num_actions)``) the way SB3's own ``load()`` builds one without an env, so ``act()``
  works before any training. Each ``train_in_imagination(dream)`` call attaches the dream (reset
  to fresh real contexts), runs ``model.learn(steps_per_update, reset_num_timesteps=False)`` and
  detaches it again: the agent holds no reference to the dream or its replay store between calls.
* Checkpoints: the SB3 policy is the submodule ``policy``, so its weights (DQN's target network
  included) go through ``state_dict()`` into safetensors; the SB3 optimizer state, SB3's counters
  and the ``act()`` generator go through ``get_extra_state()`` (plain data and tensors). A DQN
  replay buffer of imagined transitions is not saved (a resumed run refills it).
* ``act()`` runs the policy's torch modules directly on the batch (no numpy round trip, no host
  synchronisation): actor-critic policies (PPO, A2C) sample their categorical distribution with
  the agent's own seeded generator (Gumbel-max) or take its mode when ``greedy``; value-based
  policies (DQN) take the greedy action, and when not ``greedy`` a uniform one with the current
  exploration rate (epsilon) in each row.
* Randomness during ``learn()`` is SB3's: torch's and NumPy's global RNGs, which the entry point
  seeds and every checkpoint saves, and the action space's own (warm-up and exploration actions),
  seeded from the agent's seed and saved in its extra state. SB3's schedules (learning rate,
  clip range, DQN's epsilon) follow SB3's progress over cumulative timesteps with
  ``reset_num_timesteps=False``: a linear decay completes during the first call. Recurrent SB3
  policies are not supported.

Adding another SB3 algorithm (it must support ``Discrete`` actions: SAC and TD3 are continuous-
only, so not for Atari), e.g. QR-DQN from sb3-contrib::

    from dataclasses import dataclass
    from sb3_contrib import QRDQN

    from worldmodels.agents.sb3 import SB3Agent, register_algorithm
    from worldmodels.registry import AGENTS

    register_algorithm("QRDQN", QRDQN, {"buffer_size": 10_000, "learning_starts": 256})

    @AGENTS.register("sb3_qrdqn")
    class SB3QRDQN(SB3Agent):
        @dataclass(frozen=True)
        class Config(SB3Agent.Config):
            algorithm: str = "QRDQN"

(without the registration, ``--set agent.algorithm=QRDQN`` on ``sb3_dqn`` works too once
``register_algorithm`` ran). Declare the module as a ``worldmodels.agents`` entry point
(docs/agents.md) so the CLI finds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import VecMonitor
from torch import Tensor, nn

from worldmodels.envs.sb3_vec import DreamVecEnv
from worldmodels.errors import UserError, choices
from worldmodels.interfaces import EnvInfo
from worldmodels.nn.sampling import epsilon_greedy, sample_categorical
from worldmodels.registry import AGENTS
from worldmodels.seeding import derive_seed
from worldmodels.training import StageTraining, mean_logs

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"PPO": PPO, "A2C": A2C, "DQN": DQN}
"""SB3 algorithm classes by the name ``Config.algorithm`` uses."""

DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    # One rollout of n_steps = horizon per call: every row imagines one whole trajectory from a
    # fresh context (a DreamEnv row that ends twice restarts from the same spare context).
    "PPO": {
        "n_steps": 16, "batch_size": 128, "n_epochs": 4, "learning_rate": 2.5e-4,
        "clip_range": 0.1, "ent_coef": 0.01, "gamma": 0.985, "gae_lambda": 0.95,
    },
    "A2C": {"n_steps": 8, "learning_rate": 7e-4, "ent_coef": 0.01, "gamma": 0.985},
    # A small buffer of recent imagined transitions (the world changes every epoch; a default
    # 1M-frame buffer would reserve 25 GB); learning starts within the first call.
    "DQN": {
        "buffer_size": 10_000, "learning_starts": 256, "batch_size": 32, "train_freq": 1,
        "gradient_steps": 8, "target_update_interval": 2_000, "gamma": 0.985,
        "exploration_fraction": 0.1, "exploration_final_eps": 0.05,
    },
}  # fmt: skip
"""The adapter's defaults per algorithm, tuned for short imagined rollouts; ``Config.kwargs``
overrides them key by key (``--set agent.kwargs.learning_rate=1e-4``)."""

RESERVED_KWARGS = frozenset({"env", "device", "seed", "tensorboard_log", "_init_setup_model"})
"""Constructor arguments the adapter owns: the dream is the env, ``agent.to()`` sets the device,
the entry point seeds, the framework logs."""

# SB3's counters restored on resume (each algorithm has a subset of them).
_COUNTERS = (
    "num_timesteps", "_n_updates", "_episode_num", "_n_calls", "_current_progress_remaining",
    "_total_timesteps", "exploration_rate",
)  # fmt: skip


def register_algorithm(
    name: str, cls: type[BaseAlgorithm], default_kwargs: dict[str, Any] | None = None
) -> None:
    """Make an SB3 (or sb3-contrib) algorithm class available as ``Config.algorithm = name``."""
    ALGORITHMS[name] = cls
    DEFAULT_KWARGS[name] = dict(default_kwargs or {})


class _Capture(KVWriter):
    """An SB3 logger output that keeps what SB3 dumps, so ``train_in_imagination`` can return it."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def write(self, key_values: dict[str, Any], key_excluded: Any, step: int = 0) -> None:
        numbers = {
            k: float(v)
            for k, v in key_values.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
        }
        self.records.append(numbers)

    def close(self) -> None:
        pass


class SB3Agent(nn.Module):
    """Any stable-baselines3 algorithm with discrete actions, trained in imagination."""

    @dataclass(frozen=True)
    class Config:
        """A stable-baselines3 algorithm trained in a ``DreamEnv``."""

        algorithm: str = "PPO"
        """SB3 algorithm class, by name in ``agents.sb3.ALGORITHMS`` (PPO, A2C, DQN, ...)."""
        policy: str = "CnnPolicy"
        """SB3 policy alias: CnnPolicy (NatureCNN, frames of at least 36x36) or MlpPolicy
        (needed for features)."""
        kwargs: dict[str, Any] = field(default_factory=dict)
        """Constructor arguments (n_steps, batch_size, learning_rate, policy_kwargs, ...) on top
        of ``agents.sb3.DEFAULT_KWARGS[algorithm]``."""
        observes: Literal["pixels", "features"] = "pixels"
        """What the policy sees: frames, or the world's features (use MlpPolicy)."""
        num_envs: int = 32
        """Imagined trajectories stepped together (the SB3 VecEnv size)."""
        horizon: int = 16
        """Imagined steps before a trajectory is truncated (SB3 bootstraps from its value)."""
        steps_per_update: int = 512
        """Imagined timesteps (summed over trajectories) per ``train_in_imagination`` call; PPO
        and A2C round up to whole rollouts of ``n_steps * num_envs``."""
        training: StageTraining = StageTraining(steps_per_epoch=100)
        """Calls per epoch (steps_per_epoch, first_epoch_steps, start_epoch) and the contexts'
        recency_weights; the optimizer is SB3's, set through ``kwargs`` (learning_rate, ...)."""

    observes: Literal["pixels", "features"] = "pixels"  # each instance: its Config.observes

    def __init__(self, config: Config, env_info: EnvInfo, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.observes = config.observes
        self.num_actions = env_info.num_actions
        if config.algorithm not in ALGORITHMS:
            raise UserError(
                f"unknown SB3 algorithm {config.algorithm!r} (valid: {choices(ALGORITHMS)}; "
                "add others with agents.sb3.register_algorithm)"
            )
        reserved = sorted(RESERVED_KWARGS & set(config.kwargs))
        if reserved:
            raise UserError(f"agent.kwargs may not set {', '.join(reserved)}: the adapter does")
        if config.observes == "features":
            if config.policy == "CnnPolicy":
                raise UserError("agent.policy=CnnPolicy needs frames: use MlpPolicy for features")
            if env_info.feature_dim is None:
                raise UserError("agent.observes=features needs a world that exposes features")
            obs_space: spaces.Box = spaces.Box(-np.inf, np.inf, (env_info.feature_dim,), np.float32)
        else:
            obs_space = spaces.Box(0, 255, tuple(env_info.obs_shape), np.uint8)
        kwargs = {**DEFAULT_KWARGS.get(config.algorithm, {}), **config.kwargs}
        try:
            # SB3's load() path: no env, spaces set by hand, then _setup_model(). seed=None keeps
            # SB3 from seeding the global RNGs; the weights come from the agent's own seed.
            model = ALGORITHMS[config.algorithm](  # type: ignore[call-arg]  # SB3 algorithms take _init_setup_model; BaseAlgorithm lacks it
                config.policy, None, device="cpu", seed=None, verbose=0,
                _init_setup_model=False, **kwargs,
            )  # fmt: skip
            model.observation_space = obs_space
            # seeded: SB3 samples it for warm-up and exploration steps (unseeded, a gymnasium
            # space seeds itself from the OS at its first draw, and no run would repeat)
            model.action_space = spaces.Discrete(
                env_info.num_actions, seed=derive_seed(seed, "sb3_action_space")
            )
            model.n_envs = config.num_envs
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model._setup_model()
        except (TypeError, ValueError, AssertionError, KeyError) as exc:
            msg = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(
                f"cannot build SB3 {config.algorithm} from agent config: {msg}"
            ) from None
        self._log = _Capture()
        model.set_logger(Logger(None, [self._log]))
        self.model = model
        self.policy = model.policy  # a submodule: its weights are the agent's state_dict
        self.generator = torch.Generator().manual_seed(seed)  # act()'s draws

    # ----------------------------------------------------------------------------- acting

    def initial_state(self, batch_size: int, device: torch.device | str) -> None:
        return None  # SB3's feed-forward policies keep no state

    @torch.no_grad()
    def act(
        self, obs: Tensor, state: Any, first: Tensor, *, greedy: bool = False
    ) -> tuple[Tensor, None]:
        """uint8 ``(B, C, H, W)`` frames (or float ``(B, D)`` features) -> actions ``(B,) int64``
        on ``obs.device``, from the policy's torch forward on the whole batch."""
        policy: Any = self.policy  # an SB3 policy: which kind decides the calls below
        x = obs.to(policy.device)
        if self.observes == "features":
            x = x.float()
        policy.set_training_mode(False)
        if hasattr(policy, "get_distribution"):  # actor-critic: PPO, A2C
            logits = policy.get_distribution(x).distribution.logits  # (B, A)
            actions = (
                logits.argmax(-1)
                if greedy
                else sample_categorical(logits, generator=self.generator)
            )
        else:  # value-based: DQN and its kin
            actions = policy._predict(x, deterministic=True).reshape(-1)
            if not greedy:
                actions = self._epsilon_greedy(actions)
        return actions.long().to(obs.device), None

    def _epsilon_greedy(self, actions: Tensor) -> Tensor:
        """Each row uniform with the model's current exploration rate (1.0 before training)."""
        model = self.model
        schedule = getattr(model, "exploration_schedule", None)
        eps = schedule(model._current_progress_remaining) if schedule is not None else 0.0
        return epsilon_greedy(actions, eps, self.num_actions, self.generator)

    # ----------------------------------------------------------------------------- training

    def train_in_imagination(self, dream: Any) -> dict[str, float]:
        """``config.steps_per_update`` imagined timesteps of SB3 ``learn()`` in ``dream`` (a
        ``DreamEnv`` with ``num_envs=config.num_envs``), from fresh contexts; returns the
        numbers SB3 logged (``train/...``, ``rollout/...``) averaged over the call."""
        model, cfg = self.model, self.config
        if dream.num_envs != model.n_envs:
            raise ValueError(
                f"the dream has {dream.num_envs} rows but the SB3 model was built for "
                f"num_envs={model.n_envs}"
            )
        if dream.observes != self.observes:
            raise ValueError(f"the dream observes {dream.observes}, the agent {self.observes}")
        self._follow_policy_device()
        # VecMonitor adds info["episode"] on done rows: SB3's rollout/ep_rew_mean, ep_len_mean.
        model.set_env(VecMonitor(DreamVecEnv(dream)), force_reset=True)  # reset: fresh contexts
        self._log.records.clear()
        try:
            model.learn(cfg.steps_per_update, reset_num_timesteps=False, progress_bar=False)
            model.logger.dump(model.num_timesteps)  # what the last update logged
        finally:
            model.env = None  # no reference to the dream between calls (deep copies, pickles)
        logs = mean_logs(self._log.records)
        logs = {k: v for k, v in logs.items() if not k.startswith("time/")}
        logs["num_timesteps"] = float(model.num_timesteps)
        return logs

    def _follow_policy_device(self) -> None:
        """SB3 keeps its device in the model and its buffers; ``agent.to()`` moved the policy."""
        device = self.policy.device
        self.model.device = device
        for name in ("rollout_buffer", "replay_buffer"):
            buffer = getattr(self.model, name, None)
            if buffer is not None:
                buffer.device = device

    # ----------------------------------------------------------------------------- checkpoints

    def get_extra_state(self) -> dict:
        """SB3's optimizer state and counters, the act() generator and the action space's RNG
        (SB3's warm-up and exploration draws), as plain data and tensors."""
        counters = {}
        for name in _COUNTERS:
            value = getattr(self.model, name, None)
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                counters[name] = value.item() if isinstance(value, np.number) else value
        return {
            "generator": self.generator.get_state(),
            "action_space": self.model.action_space.np_random.bit_generator.state,
            "optimizer": self.policy.optimizer.state_dict(),
            "counters": counters,
        }

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())  # a map_location may have moved it
        if "action_space" in state:  # checkpoints before it was saved: its seeded start
            self.model.action_space.np_random.bit_generator.state = state["action_space"]
        self.policy.optimizer.load_state_dict(state["optimizer"])
        for name, value in state["counters"].items():
            setattr(self.model, name, value)


@AGENTS.register("sb3_ppo")
class SB3PPO(SB3Agent):
    """PPO (Schulman et al. 2017) from stable-baselines3."""

    @dataclass(frozen=True)
    class Config(SB3Agent.Config):
        algorithm: str = "PPO"
        """SB3 algorithm class, by name in ``agents.sb3.ALGORITHMS``."""


@AGENTS.register("sb3_a2c")
class SB3A2C(SB3Agent):
    """A2C (Mnih et al. 2016) from stable-baselines3."""

    @dataclass(frozen=True)
    class Config(SB3Agent.Config):
        algorithm: str = "A2C"
        """SB3 algorithm class, by name in ``agents.sb3.ALGORITHMS``."""


@AGENTS.register("sb3_dqn")
class SB3DQN(SB3Agent):
    """DQN (Mnih et al. 2015) from stable-baselines3, epsilon-greedy in the real game too."""

    @dataclass(frozen=True)
    class Config(SB3Agent.Config):
        algorithm: str = "DQN"
        """SB3 algorithm class, by name in ``agents.sb3.ALGORITHMS``."""
