"""``DreamVecEnv``: a ``DreamEnv`` behind stable-baselines3's ``VecEnv`` interface.

SB3 algorithms step numpy ``VecEnv`` s. This adapter turns the dream's batched torch tensors into
what SB3 expects of a custom vector env (see docs/agents.md, "stable-baselines3 algorithms"):

* numpy observations (uint8 ``(N, C, H, W)`` frames, channel-first, which SB3's ``CnnPolicy``
  takes as is; or float32 ``(N, D)`` features when the dream observes features), float32 rewards,
  bool dones, one info dict per row;
* same-step reset: a finished row already holds the next trajectory's first observation and its
  info carries ``terminal_observation`` (the true last frame, the dream's ``final_obs``);
  ``TimeLimit.truncated`` is set on every row, True where the horizon cut the trajectory (as
  SB3's ``DummyVecEnv`` does), so SB3 bootstraps from the terminal observation's value there;
* seeding through ``VecEnv.seed`` / ``self._seeds``, honoured at the next ``reset()``;
* ``rgb_array`` rendering (``get_images()``, ``render()``), so SB3's ``VecVideoRecorder`` records
  the imagined trajectories: see ``DreamVecEnv``'s ``render_mode``.

Device -> host traffic: ONE copy per ``step`` (and per ``reset``). The step's results (reward,
observation, final observation, terminated, truncated) are flattened to bytes, concatenated on
the dream's device and copied to the host together; the numpy arrays handed to SB3 are views into
that one buffer. Nothing else reads back from the device (no ``.item()``, no masking by ``done``
on the host side before the copy), so on CUDA a step costs one synchronisation. The final frames
of every row travel (not only the finished ones): selecting the finished rows on the device would
need their count on the host first, a second synchronisation. The actions go the other way, one
host -> device copy, from pinned memory on CUDA so that it
does not synchronise either.

The ``N`` rows of a ``DreamVecEnv`` are not separate environments but rows of one batched
``DreamEnv``: attributes and methods reached through ``get_attr`` / ``set_attr`` /
``env_method`` are the adapter's own or the dream's, shared by every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)
from torch import Tensor

from worldmodels import contract
from worldmodels.envs.dream import DreamEnv

_NUMPY_DTYPES = {torch.uint8: np.uint8, torch.bool: np.bool_, torch.float32: np.float32}


def to_host(tensors: Sequence[Tensor]) -> list[np.ndarray]:
    """Copy several tensors to the host in one transfer; numpy arrays of the same shapes and dtypes.

    Each tensor is flattened and viewed as bytes, the bytes are concatenated on the tensors'
    device and copied once (``.cpu()``); the results are views into that host buffer. Pass wider
    dtypes first so every view stays aligned (float32 before uint8 and bool).
    """
    flat = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    host = torch.cat(flat).cpu().numpy()  # the only device -> host copy
    out: list[np.ndarray] = []
    offset = 0
    for t, f in zip(tensors, flat, strict=True):
        n = f.numel()
        out.append(host[offset : offset + n].view(_NUMPY_DTYPES[t.dtype]).reshape(t.shape))
        offset += n
    return out


RENDER_MODES = ("auto", "rgb_array", None)


def render_mode_of(dream: DreamEnv, render_mode: str | None) -> str | None:
    """``"rgb_array"`` or None; ``"auto"``: ``"rgb_array"`` for a pixels dream (free: its frames
    are its observations), None for a features dream (rendering decodes a frame every step).
    ``"rgb_array"`` turns on ``dream.keep_frames``."""
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be 'auto', 'rgb_array' or None, got {render_mode!r}")
    if render_mode == "auto":
        render_mode = "rgb_array" if dream.observes == "pixels" else None
    if render_mode == "rgb_array":
        dream.keep_frames = True
    return render_mode


def rgb_frames(dream: DreamEnv) -> np.ndarray:
    """The dream's current frames as ``(N, H, W, 3)`` uint8 numpy (grey frames repeated to RGB)."""
    if dream.frames is None:
        raise RuntimeError(
            "no frames to render: call reset() first (with keep_frames on: render_mode='rgb_array')"
        )
    frames = dream.frames.permute(0, 2, 3, 1)
    if frames.shape[-1] == 1:
        frames = frames.expand(-1, -1, -1, 3)
    return frames.contiguous().cpu().numpy()


def observation_space_of(dream: DreamEnv) -> spaces.Box:
    """uint8 ``Box(0, 255, (C, H, W))`` frames, or float32 ``Box(-inf, inf, (D,))`` features."""
    if dream.observes == "features":
        dim = contract.feature_dim(dream.world)
        if dim is None:
            raise ValueError(
                f"{type(dream.world).__name__} observes features but has no feature_dim"
            )
        return spaces.Box(-np.inf, np.inf, (int(dim),), np.float32)
    return spaces.Box(0, 255, tuple(dream.obs_shape), np.uint8)


class DreamVecEnv(VecEnv):
    """The ``dream.num_envs`` imagined trajectories of a ``DreamEnv`` as an SB3 ``VecEnv``.

    ``reset() -> obs``; ``step(actions (N,) int) -> (obs, rewards (N,) float32, dones (N,) bool,
    infos)``. Observations follow ``observation_space`` (see ``observation_space_of``).

    ``render_mode``: ``"auto"`` (default: ``"rgb_array"`` for a pixels dream, None for a features
    dream), ``"rgb_array"`` (a features dream then renders the world's imagined frames, one decode
    per step) or None. With ``"rgb_array"``, ``get_images()`` gives each row's current frame
    ``(H, W, 3)`` uint8 and ``render()`` tiles them; ``metadata["render_fps"]`` is ``render_fps``
    (15: Atari's 60 Hz at the protocol's frame skip of 4), the rate ``VecVideoRecorder`` writes at.
    """

    def __init__(
        self, dream: DreamEnv, *, render_mode: str | None = "auto", render_fps: float = 15
    ) -> None:
        self.dream = dream
        # Read by VecEnv.__init__ through get_attr.
        self.render_mode: str | None = render_mode_of(dream, render_mode)
        super().__init__(
            dream.num_envs, observation_space_of(dream), spaces.Discrete(dream.num_actions)
        )
        self.metadata: dict[str, Any] = {**self.metadata, "render_fps": render_fps}
        self._actions: Tensor | None = None

    # ------------------------------------------------------------------------------ stepping

    def reset(self) -> VecEnvObs:
        """Start every row from a fresh real context; applies the seed set by ``seed()``, if any.

        Seeding (``DreamEnv.reseed``) reseeds the dream's context sampler, torch's global RNG
        (which worlds sample from; SB3's own ``set_random_seed`` seeds it too) and, if the world
        defines ``reseed(seed)``, the world's own generators. The ``N`` rows share one seed,
        ``_seeds[0]``."""
        seed = self._seeds[0]
        if seed is not None:
            self.dream.reseed(int(seed))
        obs, _ = self.dream.reset()
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        (obs_np,) = to_host([self._as_observed(obs)])
        return obs_np

    def step_async(self, actions: np.ndarray) -> None:
        host = torch.from_numpy(np.asarray(actions, dtype=np.int64).reshape(self.num_envs))  # (N,)
        if self.dream.device.type == "cuda":
            host = host.pin_memory()  # an asynchronous copy: the host does not wait for the GPU
        self._actions = host.to(self.dream.device, non_blocking=True)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        obs_t, reward_t, terminated_t, truncated_t, info = self.dream.step(self._actions)
        self._actions = None
        # One device -> host copy for everything SB3 needs (module docstring).
        reward, obs, final, terminated, truncated = to_host(
            [
                reward_t.float(),
                self._as_observed(obs_t),
                self._as_observed(info["final_obs"]),
                terminated_t.bool(),
                truncated_t.bool(),
            ]
        )
        dones = terminated | truncated
        timeouts = truncated & ~terminated
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": bool(t)} for t in timeouts.tolist()]
        for i in np.flatnonzero(dones).tolist():
            infos[i]["terminal_observation"] = final[i]
        return obs, reward, dones, infos

    def _as_observed(self, obs: Tensor) -> Tensor:
        """Frames stay uint8; features become float32 (a bf16 world under autocast)."""
        return obs.float() if self.dream.observes == "features" else obs

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each row's current imagined frame ``(H, W, 3)`` uint8 (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            raise ValueError(
                f"get_images() needs render_mode='rgb_array' (this DreamVecEnv has {self.render_mode!r})"
            )
        return list(rgb_frames(self.dream))

    def close(self) -> None:
        """Nothing to release: the dream belongs to the caller."""

    # ------------------------------------------------------------------------------ attributes

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def _all_rows(self, indices: VecEnvIndices, what: str) -> list[int]:
        rows = self._indices(indices)
        if sorted(rows) != list(range(self.num_envs)):
            raise ValueError(
                f"{what} applies to every row of a DreamVecEnv (its rows share one DreamEnv); "
                f"got indices {rows}"
            )
        return rows

    def _owner(self, name: str) -> Any:
        """The adapter if it has the attribute, else the dream (which raises if it has none)."""
        return self if hasattr(self, name) else self.dream

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The adapter's or the dream's attribute, once per requested row."""
        value = getattr(self._owner(attr_name), attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the adapter (if it has it) or of the dream, for every row."""
        self._all_rows(indices, "set_attr")
        own = hasattr(self, attr_name) or not hasattr(self.dream, attr_name)
        setattr(self if own else self.dream, attr_name, value)

    def env_method(
        self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        """Call a method of the adapter or the dream once; its result is repeated for each row."""
        rows = self._all_rows(indices, "env_method")
        result = getattr(self._owner(method_name), method_name)(*method_args, **method_kwargs)
        return [result for _ in rows]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """A dream is no ``gym.Env``, so it is wrapped in nothing (SB3 asks about ``Monitor``)."""
        return [False for _ in self._indices(indices)]
