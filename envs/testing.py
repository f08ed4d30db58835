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


class LinearFeatureWorld(nn.Module):
    """A feature world with a known linear optimum, for feature agents (``cmaes``).

    Every state is a fresh ``feature_dim`` standard normal vector ``x`` (from the world's own
    seeded generator); the reward is 1 when the action is ``argmax(W* x)`` for a fixed hidden
    ``W* (A, D)``, else 0, so the linear controller ``W*`` is optimal. A trajectory ends with
    probability ``end_prob`` per step and, if ``episode_len > 0``, after ``episode_len`` steps.
    Frames show the features as pixels (``render``), so a vector env built on them
    (``LinearFeatureVecEnv``) can hand its observer frames that ``features_of_frames`` decodes.

    Follows the ``World`` contract plus ``feature_dim`` and ``features(state)``; ``imagine_start``
    ignores the context it gets."""

    registry_name = "linear_features"
    target: Tensor  # buffer (A, D), the hidden optimum W*

    def __init__(
        self,
        num_actions: int = 3,
        feature_dim: int = 6,
        obs_shape: tuple[int, int, int] = (3, 16, 16),
        end_prob: float = 0.0,
        episode_len: int = 0,
        context_len: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if feature_dim > obs_shape[1] * obs_shape[2]:
            raise ValueError(f"{feature_dim} features do not fit in a {obs_shape} frame")
        self.num_actions = num_actions
        self.feature_dim = feature_dim
        self.obs_shape = obs_shape
        self.end_prob = end_prob
        self.episode_len = episode_len
        self.context_len = context_len
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("target", torch.randn(num_actions, feature_dim, generator=g))
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._device_generators: dict[str, torch.Generator] = {}

    def stages(self) -> dict:
        return {}

    def _generator(self, device: torch.device) -> torch.Generator:
        """The CPU generator, or one on ``device`` (drawing there never waits for the host)."""
        if device.type == "cpu":
            return self.generator
        if str(device) not in self._device_generators:
            g = torch.Generator(device).manual_seed(self.seed + 1)
            self._device_generators[str(device)] = g
        return self._device_generators[str(device)]

    def _draw(self, n: int, device: torch.device) -> Tensor:
        g = self._generator(device)
        return torch.randn(n, self.feature_dim, generator=g, device=device)

    def optimal_actions(self, x: Tensor) -> Tensor:
        """The rewarded action ``(B,) int64`` for features ``x (B, D)``."""
        return (x @ self.target.to(x.device).T).argmax(dim=-1)

    def render(self, x: Tensor) -> Tensor:
        """Features ``(B, D)`` -> frames ``(B, C, H, W)`` uint8: the first ``D`` pixels of
        channel 0 hold the features, quantised in steps of 1/32 over ``[-4, 4]``."""
        b = x.shape[0]
        frame = torch.zeros(b, *self.obs_shape, dtype=torch.uint8, device=x.device)
        levels = ((x.clamp(-4, 4) + 4) * 31.875).round().to(torch.uint8)
        frame[:, 0].view(b, -1)[:, : self.feature_dim] = levels
        return frame

    def features_of_frames(self, obs: Tensor) -> Tensor:
        """Frames ``(B, C, H, W)`` uint8 from ``render`` -> features ``(B, D)`` float32."""
        flat = obs[:, 0].reshape(obs.shape[0], -1)[:, : self.feature_dim]
        return flat.float() / 31.875 - 4

    def features(self, state: dict) -> Tensor:
        """The state's features ``(B, D)`` float32."""
        return state["x"]

    def imagine_start(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[dict, Tensor]:
        x = self._draw(obs.shape[0], obs.device)
        t = torch.zeros(obs.shape[0], dtype=torch.long, device=obs.device)
        return {"x": x, "t": t}, self.render(x)

    def imagine_step(
        self, state: dict, action: Tensor, *, render: bool = True
    ) -> tuple[dict, Tensor | None, Tensor, Tensor]:
        x = state["x"]
        reward = (action.to(x.device) == self.optimal_actions(x)).float()
        t = state["t"] + 1
        end = torch.zeros_like(t, dtype=torch.bool)
        if self.end_prob > 0:
            g = self._generator(x.device)
            end |= torch.rand(t.shape[0], generator=g, device=x.device) < self.end_prob
        if self.episode_len > 0:
            end |= t >= self.episode_len
        x = self._draw(x.shape[0], x.device)
        return {"x": x, "t": t}, self.render(x) if render else None, reward, end


class LinearFeatureVecEnv:
    """A real-env-like vector env on a ``LinearFeatureWorld``'s task, with the conventions of
    ``envs/atari.py``: ``reset(seed=) -> (obs, info)``, ``step(actions) -> (obs, reward,
    terminated, truncated, info)`` on the CPU, same-step auto-reset with ``info["final_obs"]``.
    Observations are the world's rendered frames; episodes last ``episode_len`` steps."""

    def __init__(self, world: LinearFeatureWorld, num_envs: int, episode_len: int = 10) -> None:
        self.world = world
        self.num_envs = num_envs
        self.num_actions = world.num_actions
        self.obs_shape = world.obs_shape
        self.episode_len = episode_len
        self.generator = torch.Generator().manual_seed(0)
        self._x = torch.zeros(num_envs, world.feature_dim)
        self._t = torch.zeros(num_envs, dtype=torch.long)

    def _draw(self) -> Tensor:
        return torch.randn(self.num_envs, self.world.feature_dim, generator=self.generator)

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict]:
        if seed is not None:
            self.generator.manual_seed(seed)
        self._x = self._draw()
        self._t.zero_()
        return self.world.render(self._x), {}

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        actions = torch.as_tensor(actions, dtype=torch.long)
        reward = (actions == self.world.optimal_actions(self._x)).float()
        self._t += 1
        terminated = self._t >= self.episode_len
        last = self._draw()
        fresh = self._draw()
        self._x = torch.where(terminated[:, None], fresh, last)
        self._t[terminated] = 0
        info = {"final_obs": self.world.render(last)}
        return self.world.render(self._x), reward, terminated, torch.zeros_like(terminated), info

    def close(self) -> None:
        pass
