"""The real Atari env and any ``DreamEnv`` as gymnasium environments (numpy in and out).

* ``RealVectorEnv(config, num_envs)``: the real game (``envs/atari.py``) as a
  ``gymnasium.vector.VectorEnv``.
* ``DreamVectorEnv(dream)``: the ``dream.num_envs`` imagined trajectories of an
  ``envs.dream.DreamEnv`` as a ``gymnasium.vector.VectorEnv`` (tensors are moved to the host, one
  copy per step).
* ``SingleEnv(vector_env)``: one game (``num_envs=1``) of either as a ``gymnasium.Env``; it passes
  ``gymnasium.utils.env_checker.check_env``.

Observations. Frames are uint8 channels-last ``(N, H, W, C)`` (``single_observation_space``
``Box(0, 255, (H, W, C))``), or channels-first ``(N, C, H, W)`` with ``channels_first=True`` (what
SB3's ``CnnPolicy`` and the framework's agents take). A features dream (``dream.observes ==
"features"``) observes float32 ``(N, D)``. Actions are integers in ``[0, num_actions)``
(``single_action_space`` ``Discrete``, ``action_space`` ``MultiDiscrete``). Rewards are float32
(raw game rewards in the real env, the world's predicted rewards in a dream).

Autoreset: ``AutoresetMode.SAME_STEP`` (``metadata["autoreset_mode"]``), because both underlying
envs work that way and the adapters add no step of their own: when an episode ends, ``step``
already returns the next episode's first observation in ``obs`` and the last observation of the
ended one in ``info["final_obs"]``, a dense ``(N, ...)`` array like ``obs`` (equal to ``obs`` on
the rows that did not end), with ``info["_final_obs"]`` the ``(N,)`` bool mask of the rows that
ended. Every step takes its action (no reset step as in ``NEXT_STEP``), so
``gymnasium.wrappers.vector.RecordEpisodeStatistics`` counts each step. Gymnasium's vector
observation wrappers accept only ``NEXT_STEP`` and ``DISABLED`` and so refuse these envs.

The real env's episode. ``mode="train"`` (the default, what training code steps) ends an episode
at each life loss where the protocol says ``life_loss_terminal`` (the game goes on); ``mode="test"``
plays whole games. Each step's ``info`` carries ``life_loss``, ``game_over``, ``lives`` and
``episode_frame`` (as ``AtariVecEnv.step``).

Seeding. ``reset(seed=s)`` seeds the games with ``s + i`` (real env), or reseeds the dream's
context sampler, torch's global RNG and the world's own generators (``DreamEnv.reseed``): equal
seeds and actions then give equal trajectories. ``reset()`` without a seed goes on from the
current random streams.

Rendering. With ``render_mode="rgb_array"``, ``render()`` returns each env's current frame
``(H, W, 3)`` uint8 (a vector env: a tuple of them). The real env shows its observation frames
(``size x size``); a dream its imagined frames, for a features dream the frames the world renders
(``DreamEnv.keep_frames``: one decode per step, eager dreams only).

SB3. ``envs.sb3_vec.DreamVecEnv`` is the SB3 ``VecEnv`` of a dream (it renders too). For the
real env SB3's own ``DummyVecEnv`` of ``SingleEnv`` views does the job, ``VecVideoRecorder``
included: ``DummyVecEnv([lambda: SingleEnv(RealVectorEnv(config, 1, render_mode="rgb_array"))])``.
See docs/gymnasium.md.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldmodels.envs.atari import Mode, make_atari_env
from worldmodels.envs.atari_config import AtariConfig
from worldmodels.envs.dream import DreamEnv
from worldmodels.envs.sb3_vec import observation_space_of, rgb_frames, to_host

RENDER_MODES = (None, "rgb_array")


def _check_render_mode(render_mode: str | None) -> str | None:
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
    return render_mode


def _frames_space(chw: tuple[int, ...], channels_first: bool) -> spaces.Box:
    c, h, w = chw
    return spaces.Box(0, 255, (c, h, w) if channels_first else (h, w, c), np.uint8)


def _actions(actions: Any, num_envs: int, num_actions: int) -> np.ndarray:
    """``(N,)`` int64 actions in ``[0, num_actions)``; a one-line ValueError otherwise."""
    a = np.asarray(actions)
    if a.shape != (num_envs,) or a.dtype.kind not in "iu":
        raise ValueError(
            f"actions must be {num_envs} integers of shape ({num_envs},), "
            f"got dtype {a.dtype} shape {a.shape}"
        )
    if a.min() < 0 or a.max() >= num_actions:
        raise ValueError(f"actions must be in [0, {num_actions}), got {a.tolist()}")
    return a.astype(np.int64, copy=False)


class _Render:
    """``render()`` of a vector env: a tuple of ``(H, W, 3)`` uint8 frames, one per env."""

    render_mode: str | None

    def _frames(self) -> np.ndarray:
        raise NotImplementedError

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode != "rgb_array":
            raise ValueError(
                f"render() needs render_mode='rgb_array' (this env has {self.render_mode!r})"
            )
        return tuple(self._frames())


class RealVectorEnv(_Render, VectorEnv):
    """``num_envs`` real Atari games (``make_atari_env(config, num_envs, mode)``) as a gymnasium
    ``VectorEnv``; see the module docstring for observations, autoreset, seeding and rendering."""

    reset_info_keys = ("lives", "episode_frame")
    """The keys of ``step``'s info that describe the current game (``SingleEnv`` hands them on
    as the next episode's reset info)."""

    def __init__(
        self,
        config: AtariConfig,
        num_envs: int = 1,
        mode: Mode = "train",
        *,
        channels_first: bool = False,
        render_mode: str | None = None,
        num_threads: int = 0,
    ) -> None:
        self.render_mode = _check_render_mode(render_mode)
        self.env = make_atari_env(config, num_envs, mode, num_threads=num_threads)
        self.num_envs = self.env.num_envs
        self.channels_first = channels_first
        self.metadata = {
            "autoreset_mode": AutoresetMode.SAME_STEP,
            "render_modes": ["rgb_array"],
            "render_fps": 60 / config.frame_skip,  # the emulator's 60 Hz, one frame per step
        }
        self.single_observation_space = _frames_space(self.env.obs_shape, channels_first)
        self.num_actions = self.env.num_actions
        self.single_action_space = spaces.Discrete(self.num_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._obs: np.ndarray | None = None  # (N, C, H, W), for render()

    def _observed(self, frames: torch.Tensor) -> np.ndarray:
        x = frames.numpy()
        return x if self.channels_first else np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new game in every env (env ``i`` seeded with ``seed + i``); ``info`` has
        ``lives`` and ``episode_frame``. ``options`` are not used."""
        if isinstance(seed, list):
            raise ValueError("RealVectorEnv seeds its games with seed + i: pass one int seed")
        super().reset(seed=seed)
        obs, info = self.env.reset(seed=seed)
        self._obs = obs.numpy()
        return self._observed(obs), {k: v.numpy() for k, v in info.items()}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("RealVectorEnv.step() called before reset()")
        a = _actions(actions, self.num_envs, self.env.num_actions)
        obs, reward, terminated, truncated, info = self.env.step(a)
        self._obs = obs.numpy()
        out = {k: v.numpy() for k, v in info.items() if k != "final_obs"}
        out["final_obs"] = self._observed(info["final_obs"])
        out["_final_obs"] = (terminated | truncated).numpy()
        return self._observed(obs), reward.numpy(), terminated.numpy(), truncated.numpy(), out

    def _frames(self) -> np.ndarray:
        if self._obs is None:
            raise RuntimeError("render() called before reset()")
        return np.ascontiguousarray(self._obs.transpose(0, 2, 3, 1))

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()

    def __repr__(self) -> str:
        return f"RealVectorEnv({self.env!r})"


class DreamVectorEnv(_Render, VectorEnv):
    """The ``dream.num_envs`` imagined trajectories of a ``DreamEnv`` as a gymnasium
    ``VectorEnv``; see the module docstring. Trajectories last at most ``dream.horizon`` steps
    (then ``truncated``). ``render_mode="rgb_array"`` turns on ``dream.keep_frames``."""

    reset_info_keys: tuple[str, ...] = ()

    def __init__(
        self,
        dream: DreamEnv,
        *,
        channels_first: bool = False,
        render_mode: str | None = None,
        render_fps: float = 15,
    ) -> None:
        self.render_mode = _check_render_mode(render_mode)
        self.dream = dream
        self.num_envs = dream.num_envs
        self.channels_first = channels_first
        self.features = dream.observes == "features"
        if render_mode == "rgb_array":
            dream.keep_frames = True
        self.metadata = {
            "autoreset_mode": AutoresetMode.SAME_STEP,
            "render_modes": ["rgb_array"],
            "render_fps": render_fps,  # Atari's 60 Hz at the protocol's frame skip of 4
        }
        if self.features:
            self.single_observation_space = observation_space_of(dream)
        else:
            self.single_observation_space = _frames_space(dream.obs_shape, channels_first)
        self.num_actions = dream.num_actions
        self.single_action_space = spaces.Discrete(self.num_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._started = False

    def _observed(self, obs: torch.Tensor) -> torch.Tensor:
        """On the device: features as float32, frames channels-last unless ``channels_first``."""
        if self.features:
            return obs.float()
        return obs if self.channels_first else obs.permute(0, 2, 3, 1)

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start every row from fresh real contexts from replay (``DreamEnv.reset``); with
        ``seed``, reseed first (``DreamEnv.reseed``: every row shares the one seed). ``info`` is
        empty (the contexts stay in the dream) and ``options`` are not used."""
        if isinstance(seed, list):
            raise ValueError("the rows of a DreamVectorEnv share one seed: pass one int seed")
        super().reset(seed=seed)
        if seed is not None:
            self.dream.reseed(int(seed))
        obs, _ = self.dream.reset()
        self._started = True
        (host,) = to_host([self._observed(obs)])
        return host, {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("DreamVectorEnv.step() called before reset()")
        a = torch.from_numpy(_actions(actions, self.num_envs, self.dream.num_actions))
        obs, reward, terminated, truncated, info = self.dream.step(a.to(self.dream.device))
        # one device -> host copy (wider dtypes first, see to_host)
        reward_np, obs_np, final_np, term_np, trunc_np = to_host(
            [
                reward.float(),
                self._observed(obs),
                self._observed(info["final_obs"]),
                terminated.bool(),
                truncated.bool(),
            ]
        )
        out = {"final_obs": final_np, "_final_obs": term_np | trunc_np}
        return obs_np, reward_np, term_np, trunc_np, out

    def _frames(self) -> np.ndarray:
        return rgb_frames(self.dream)

    def close_extras(self, **kwargs: Any) -> None:
        """Nothing to release: the dream belongs to the caller."""

    def __repr__(self) -> str:
        return (
            f"DreamVectorEnv({type(self.dream.world).__name__}, num_envs={self.num_envs}, "
            f"horizon={self.dream.horizon}, observes={self.dream.observes!r})"
        )


def _row(value: Any) -> Any:
    """Row 0 of a batched info value: numpy scalars become Python ones, arrays are copied."""
    if isinstance(value, np.ndarray):
        row = value[0]
        return row.item() if isinstance(row, np.generic) else np.array(row)
    return value


class SingleEnv(gym.Env):
    """One game of a ``RealVectorEnv`` or ``DreamVectorEnv`` built with ``num_envs=1``, as a
    ``gymnasium.Env``. ``render_mode`` and ``metadata`` are the vector env's; closing it closes
    the vector env.

    The episode that ended is returned whole: its last step returns ``info["final_obs"]`` as
    ``obs``. The vector env has already started the next episode; ``reset()`` without a seed
    returns that one's first observation (so in the real env's training mode a life loss ends the
    episode and the game goes on, DQN's episodic life), ``reset(seed=...)`` starts afresh.
    """

    def __init__(self, env: RealVectorEnv | DreamVectorEnv) -> None:
        if env.num_envs != 1:
            raise ValueError(f"SingleEnv needs a vector env with num_envs=1, got {env.num_envs}")
        self.env = env
        self.observation_space = env.single_observation_space
        self.action_space = env.single_action_space
        self.metadata = {k: v for k, v in env.metadata.items() if k != "autoreset_mode"}
        self.render_mode = env.render_mode
        self._next: tuple[np.ndarray, dict[str, Any]] | None = None  # the started episode

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None and self._next is not None:
            obs, info = self._next
        else:
            batch, batch_info = self.env.reset(seed=seed, options=options)
            obs, info = batch[0].copy(), {k: _row(v) for k, v in batch_info.items()}
        self._next = None
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(
                f"action must be an integer in [0, {self.env.num_actions}), got {action!r}"
            )
        obs, reward, terminated, truncated, info = self.env.step(np.array([action], np.int64))
        row = {k: _row(v) for k, v in info.items() if k not in ("final_obs", "_final_obs")}
        done = bool(terminated[0] or truncated[0])
        if done:  # obs starts the next episode: keep it for reset()
            self._next = obs[0].copy(), {k: row[k] for k in self.env.reset_info_keys}
            last = info["final_obs"][0].copy()
        else:
            self._next = None
            last = obs[0].copy()
        return last, float(reward[0]), bool(terminated[0]), bool(truncated[0]), row

    def render(self) -> np.ndarray | None:
        frames = self.env.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        self.env.close()

    def __repr__(self) -> str:
        return f"SingleEnv({self.env!r})"
