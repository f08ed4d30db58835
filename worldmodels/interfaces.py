"""The contracts between stages: what a world (encoder + dynamics + reward/end) and an agent promise.

Shape vocabulary (used in every docstring of the project): ``B`` batch, ``T`` time, ``C, H, W``
image, ``K`` tokens per frame, ``D`` features. Pixels travel as ``uint8`` in ``[0, 255]``,
channel-first ``(C, H, W)``; models convert to float in ``[-1, 1]`` themselves.

Every trainable stage has the same contract, ``loss(batch) -> (loss, logs)``, so one generic update
trains them all (DIAMOND's design). Any agent trains in any world through ``DreamEnv``, which has
the same ``reset/step`` conventions as the real vector env in ``envs/atari.py``.

The ``World`` and ``Agent`` protocols below state the required members with their types; the
optional capabilities, the messages for what is missing and the accessors the framework calls
are in ``worldmodels.contract``, and ``worldmodels.checks.check_world``/``check_agent`` run the
whole contract on an object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor


class Batch(NamedTuple):
    """Segments of real experience, as returned by ``worldmodels.replay.SegmentSampler``.

    Row ``t`` of a segment holds the observation ``obs[t]``, the action taken there ``act[t]``, the
    reward that action earned ``rew[t]``, and whether that transition ended (``end``, the next
    observation is terminal) or was cut (``trunc``) the episode. The final observation of an
    episode is a row of its own with ``act = 0, rew = 0, end = trunc = False``. ``mask[t]`` is
    False on padding rows (before an episode's start or after its final observation), whose
    contents are zeros. A transition ``t -> t + 1`` is real data where ``mask[t + 1]`` is True.
    ``frame_ids`` name each real frame uniquely across the replay store (``ReplayStore.
    frame_offsets``), so per-frame caches (e.g. IRIS's tokens) can be keyed by them.
    """

    obs: Tensor  # (B, T, C, H, W) uint8
    act: Tensor  # (B, T) int64
    rew: Tensor  # (B, T) float32, raw game reward (sign-clip inside the losses, not here)
    end: Tensor  # (B, T) bool
    trunc: Tensor  # (B, T) bool
    mask: Tensor  # (B, T) bool
    frame_ids: Tensor | None = None  # (B, T) int64 global frame id in replay (-1 on padding)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch._make(
            None if x is None else x.to(device, non_blocking=non_blocking) for x in self
        )


@dataclass(frozen=True)
class EnvInfo:
    """What a component may know about the environment it is built for."""

    num_actions: int
    obs_shape: tuple[int, int, int]  # (C, H, W) of the uint8 pixel observations
    action_meanings: tuple[str, ...] = ()
    feature_dim: int | None = None  # size of the world's features, for agents that observe them


@runtime_checkable
class Agent(Protocol):
    """Stage 3: a policy that acts in the real env and trains in a learned one.

    An agent is a ``torch.nn.Module`` (so its weights go into checkpoints) with a registered
    ``Config`` dataclass, built as ``AgentClass(config, env_info, seed=...)``. Recurrent state is
    reset where ``first`` is True, which is how the agent learns that a new episode began.
    """

    registry_name: ClassVar[str]
    observes: ClassVar[Literal["pixels", "features"]]

    def initial_state(self, batch_size: int, device: torch.device | str) -> Any:
        """The recurrent state for ``batch_size`` fresh episodes (``None`` if stateless)."""
        ...

    def act(
        self, obs: Tensor, state: Any, first: Tensor, *, greedy: bool = False
    ) -> tuple[Tensor, Any]:
        """Actions ``(B,) int64`` for observations ``(B, C, H, W) uint8`` (or features ``(B, D)``).

        ``first`` ``(B,) bool`` marks observations that start an episode.
        """
        ...

    def train_in_imagination(self, dream: Any) -> dict[str, float]:
        """One round of updates inside a ``DreamEnv``; returns scalars to log."""
        ...


@runtime_checkable
class World(Protocol):
    """An encoder, a dynamics model and a reward/end model, composed; what ``DreamEnv`` steps.

    A world is a ``torch.nn.Module`` with a registered ``Config``, built as
    ``WorldClass(config, env_info)``. Its trainable parts are ``stages()``, each trained by the
    generic ``worldmodels.training.StageTrainer`` on replay segments. Imagination state is a dict
    of tensors whose first dimension is the batch, so that ``DreamEnv`` can replace the rows of
    finished trajectories with ``torch.where`` and never synchronise with the host.
    """

    registry_name: ClassVar[str]
    context_len: int  # real frames an imagined trajectory starts from (the last is its first obs)
    num_actions: int
    obs_shape: tuple[int, int, int]

    def stages(self) -> dict[str, Any]:
        """``name -> worldmodels.training.Stage``, in training order."""
        ...

    def imagine_start(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[dict, Tensor]:
        """Burn in on real context rows: obs ``(B, T0, C, H, W)`` uint8, act ``(B, T0)`` int64
        (``act[:, -1]`` is ignored: the agent chooses it), mask ``(B, T0)`` bool (False on padding).
        Returns the state and the first observation ``(B, C, H, W)`` uint8 (the last context frame)."""
        ...

    def imagine_step(
        self, state: dict, action: Tensor, *, render: bool = True
    ) -> tuple[dict, Tensor | None, Tensor, Tensor]:
        """``action (B,) int64`` -> ``(state, obs (B, C, H, W) uint8, reward (B,) float32,
        end (B,) bool)``. With ``render=False`` (agents that observe features) a world whose frames
        cost a decoder pass may skip it and return ``None`` for ``obs``."""
        ...
