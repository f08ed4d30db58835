"""A linear softmax policy on world features, trained by REINFORCE in imagination.

Everything an agent needs, in one file: a frozen ``Config``, ``act`` for the real game, and
``train_in_imagination`` for the dream. The framework finds it through the entry point in
pyproject.toml (once installed), or when the module is imported (``--plugin reinforce_agent``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from worldmodels.interfaces import EnvInfo
from worldmodels.registry import AGENTS
from worldmodels.training import StageTraining, Updater


def _training() -> StageTraining:
    return StageTraining(steps_per_epoch=20, lr=1e-2, weight_decay=0.0, warmup_steps=0)


@AGENTS.register("reinforce_linear")  # importing the module registers it (the --plugin route)
class ReinforceLinearAgent(nn.Module):
    """``pi(a | x) = softmax(W x + b)`` on the world's features ``x``."""

    @dataclass(frozen=True)
    class Config:
        gamma: float = 0.99
        """Discount of the imagined returns."""
        horizon: int = 20
        """Imagined steps per update."""
        num_envs: int = 64
        """Imagined trajectories per update."""
        training: StageTraining = field(default_factory=_training)
        """Updates per epoch, learning rate, clipping (the framework's generic settings)."""

    observes: ClassVar[Literal["pixels", "features"]] = "features"
    data_parallel: ClassVar[bool] = True  # updates through Updater: torchrun averages them

    def __init__(self, config: Config, env_info: EnvInfo, *, seed: int = 0) -> None:
        super().__init__()
        if env_info.feature_dim is None:
            raise ValueError(
                "reinforce_linear observes features: train it in a world with features"
            )
        self.config = config
        self.policy = nn.Linear(env_info.feature_dim, env_info.num_actions)
        nn.init.zeros_(self.policy.weight)  # a uniform policy to start with
        nn.init.zeros_(self.policy.bias)
        self.generator = torch.Generator().manual_seed(seed)
        self.updater: Updater | None = None

    def initial_state(self, batch_size: int, device: Any) -> None:
        return None  # no memory: the features already summarise the past

    @torch.no_grad()
    def act(self, obs: Tensor, state: Any, first: Tensor, *, greedy: bool = False):
        logits = self.policy(obs.float())  # (B, A)
        if greedy:
            return logits.argmax(-1), None
        probs = logits.softmax(-1).cpu()
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0].to(obs.device), None

    def loss(self, dream: Any) -> tuple[Tensor, dict[str, float]]:
        """REINFORCE with the batch-mean return as baseline, over ``horizon`` imagined steps."""
        obs, _ = dream.reset()  # (B, D) features
        logps, rewards, alive = [], [], []
        running = torch.ones(obs.shape[0], device=obs.device)
        for _ in range(self.config.horizon):
            dist = torch.distributions.Categorical(logits=self.policy(obs.float()))
            action = dist.sample()
            obs, reward, terminated, truncated, _ = dream.step(action)
            logps.append(dist.log_prob(action))
            rewards.append(reward * running)  # rewards after a trajectory's end do not count
            alive.append(running)
            running = running * (~(terminated | truncated)).float()
        ret, returns = torch.zeros_like(running), []
        for r in reversed(rewards):
            ret = r + self.config.gamma * ret
            returns.append(ret)
        returns = torch.stack(returns[::-1], dim=1)  # (B, T)
        logp, mask = torch.stack(logps, dim=1), torch.stack(alive, dim=1)
        advantage = returns - returns[:, 0].mean()
        loss = -(logp * advantage * mask).sum() / mask.sum()
        return loss, {"loss": float(loss.detach()), "return": float(returns[:, 0].mean())}

    def train_in_imagination(self, dream: Any) -> dict[str, float]:
        if self.updater is None:
            device = self.policy.weight.device
            self.updater = Updater(self, self.config.training, device)
        return self.updater.update(self.loss, dream)

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
