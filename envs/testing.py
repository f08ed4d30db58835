"""Tiny fakes for tests: a replay store of random episodes and a world with a known best action."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from worldmodels.replay import Episode, ReplayStore


def random_store(
    num_episodes: int = 6,
    length: int = 30,
    obs_shape: tuple[int, int, int] = (3, 16, 16),
    num_actions: int = 4,
    seed: int = 0,
    reward_prob: float = 0.2,
) -> ReplayStore:
    """An in-memory store of random episodes (lengths vary around ``length``; every other one
    ends in a terminal state, the others are truncated)."""
    rng = np.random.default_rng(seed)
    store = ReplayStore(None)
    for e in range(num_episodes):
        t = int(rng.integers(max(1, length // 2), length + 1))
        obs = rng.integers(0, 256, size=(t + 1, *obs_shape), dtype=np.uint8)
        act = rng.integers(0, num_actions, size=t).astype(np.int64)
        rew = (rng.random(t) < reward_prob).astype(np.float32) * rng.choice([-1.0, 1.0], size=t)
        store.add(Episode(obs, act, rew.astype(np.float32), e % 2 == 0, e % 2 == 1))
    return store


class BanditWorld(nn.Module):
    """A world with a known answer: reward 1 for ``good_action``, 0 otherwise; each step ends the
    trajectory with probability ``end_prob``; frames brighten by one level per step.

    Follows the ``World`` contract (state = dict of batch-first tensors) without any training."""

    registry_name = "bandit"

    def __init__(
        self,
        num_actions: int = 4,
        obs_shape: tuple[int, int, int] = (3, 16, 16),
        good_action: int = 1,
        end_prob: float = 0.1,
        context_len: int = 3,
    ) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.obs_shape = obs_shape
        self.good_action = good_action
        self.end_prob = end_prob
        self.context_len = context_len

    def stages(self) -> dict:
        return {}

    def imagine_start(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[dict, Tensor]:
        frame = obs[:, -1].clone()
        return {"frame": frame, "t": torch.zeros(obs.shape[0], dtype=torch.long,
                                                 device=obs.device)}, frame  # fmt: skip

    def imagine_step(
        self, state: dict, action: Tensor, *, render: bool = True
    ) -> tuple[dict, Tensor, Tensor, Tensor]:
        frame = (state["frame"].to(torch.int16) + 1).clamp(max=255).to(torch.uint8)
        reward = (action == self.good_action).float()
        end = torch.rand(action.shape[0], device=action.device) < self.end_prob
        return {"frame": frame, "t": state["t"] + 1}, frame, reward, end
