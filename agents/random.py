"""The uniformly random agent: the reference floor of every Atari score, and the initial collector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from worldmodels.interfaces import EnvInfo
from worldmodels.registry import AGENTS


@AGENTS.register("random")
class RandomAgent(nn.Module):
    """Uniform actions from its own seeded generator (so a resumed run draws the same actions)."""

    @dataclass(frozen=True)
    class Config:
        """The random agent has no settings."""

    observes: ClassVar[Literal["pixels", "features"]] = "pixels"
    uses_observations: ClassVar[bool] = False  # act() reads only the batch size and device

    def __init__(self, config: Config, env_info: EnvInfo, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.num_actions = env_info.num_actions
        self.generator = torch.Generator().manual_seed(seed)

    def initial_state(self, batch_size: int, device: torch.device | str) -> None:
        return None

    def act(
        self, obs: Tensor, state: Any, first: Tensor, *, greedy: bool = False
    ) -> tuple[Tensor, None]:
        """``(B, ...)`` observations -> ``(B,) int64`` uniform actions on ``obs.device``."""
        actions = torch.randint(self.num_actions, (obs.shape[0],), generator=self.generator)
        return actions.to(obs.device), None

    def train_in_imagination(self, dream: Any) -> dict[str, float]:
        return {}  # a random policy has nothing to learn

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
