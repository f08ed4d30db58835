"""Acting in the real game: collecting experience into replay, and playing test episodes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worldmodels.observe import Observer
from worldmodels.replay import EpisodeBuilder, ReplayStore
from worldmodels.tb import progress


def _epsilon_greedy(
    actions: torch.Tensor, epsilon: float, num_actions: int, generator: torch.Generator
) -> torch.Tensor:
    """Replace each action by a uniform one with probability ``epsilon`` (draws always happen, so
    the generator advances the same way whatever epsilon is)."""
    n = actions.shape[0]
    coin = torch.rand(n, generator=generator) < epsilon
    uniform = torch.randint(num_actions, (n,), generator=generator)
    return torch.where(coin, uniform, actions)


@dataclass
class CollectStats:
    """What one call to ``Collector.collect`` did."""

    steps: int = 0
    episodes: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    game_returns: list[float] = field(default_factory=list)  # whole games, all lives
    nonzero_rewards: int = 0
    seconds: float = 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / max(self.seconds, 1e-9)


class Collector:
    """Runs an agent in a real vector env and stores every finished episode in replay.

    Episodes continue across calls; an episode reaches the store only when it has finished, so a
    crash never leaves half an episode behind. ``steps`` count agent steps summed over the envs.
    """

    def __init__(
        self,
        env: Any,
        store: ReplayStore,
        *,
        epsilon: float,
        seed: int,
        device: torch.device | str = "cpu",
        observer: Observer | None = None,
    ) -> None:
        self.env = env
        self.store = store
        self.observer = observer
        self.epsilon = epsilon
        self.seed = seed
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._obs: torch.Tensor | None = None
        self._builders: list[EpisodeBuilder] = []
        self._agent_state: Any = None
        self._first: torch.Tensor | None = None
        self._game_returns = np.zeros(env.num_envs)

    def _start(self, agent: Any) -> None:
        obs, _ = self.env.reset(seed=self.seed)
        n = self.env.num_envs
        self._obs = obs
        self._builders = [EpisodeBuilder(obs[i].numpy(), info={"env": i}) for i in range(n)]
        self._agent_state = agent.initial_state(n, self.device)
        self._first = torch.ones(n, dtype=torch.bool)
        self._game_returns[:] = 0.0
        if self.observer is None:
            self.observer = Observer(agent, None, self.device)
        self.observer.reset(n)

    def collect(
        self,
        agent: Any,
        steps: int,
        *,
        min_nonzero_rewards: int = 0,
        max_steps: int | None = None,
        show_progress: bool = False,
        desc: str = "collect",
    ) -> CollectStats:
        """Act for ``steps`` agent steps (rounded up to whole vector steps); then, while fewer than
        ``min_nonzero_rewards`` non-zero rewards were seen, keep going up to ``max_steps``."""
        if self._obs is None:
            self._start(agent)
        n = self.env.num_envs
        limit = max(steps, max_steps or 0) if min_nonzero_rewards else steps
        stats = CollectStats()
        t0 = time.perf_counter()
        bar = progress(total=limit, desc=desc, enabled=show_progress, unit="step")
        while stats.steps < steps or (
            stats.nonzero_rewards < min_nonzero_rewards and stats.steps < limit
        ):
            with torch.inference_mode():
                seen = self.observer(self._obs, self._first)
                actions, self._agent_state = agent.act(
                    seen, self._agent_state, self._first.to(self.device)
                )
            actions = _epsilon_greedy(
                actions.to("cpu", torch.int64), self.epsilon, self.env.num_actions, self.generator
            )
            self.observer.record(actions)
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            done = terminated | truncated
            final_obs = info["final_obs"]
            act_np, rew_np = actions.numpy(), reward.numpy()
            for i in range(n):
                self._builders[i].add(
                    int(act_np[i]),
                    float(rew_np[i]),
                    (final_obs[i] if done[i] else next_obs[i]).numpy(),
                )
            self._game_returns += rew_np
            stats.nonzero_rewards += int(np.count_nonzero(rew_np))
            for i in np.flatnonzero(done.numpy()):
                life_loss = bool(info["life_loss"][i])
                episode = self._builders[i].finish(
                    end=bool(terminated[i]),
                    trunc=bool(truncated[i]),
                    info={"env": int(i), "life_loss": life_loss, "mode": "train"},
                )
                self.store.add(episode)
                stats.episodes += 1
                stats.episode_returns.append(episode.ret)
                stats.episode_lengths.append(len(episode))
                if not life_loss:  # the game itself ended (game over or the frame cap)
                    stats.game_returns.append(float(self._game_returns[i]))
                    self._game_returns[i] = 0.0
                self._builders[i] = EpisodeBuilder(next_obs[i].numpy(), info={"env": int(i)})
            self._obs = next_obs
            self._first = done
            stats.steps += n
            bar.update(n)
        bar.close()
        stats.seconds = time.perf_counter() - t0
        return stats

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class TestResult:
    """Returns of finished real test episodes, and one recorded episode."""

    returns: list[float]
    lengths: list[int]
    seconds: float
    steps: int
    video: np.ndarray | None  # (T, C, H, W) uint8 of env 0's first episode, capped

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))


def play_test_episodes(
    agent: Any,
    env: Any,
    episodes: int,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    epsilon: float = 0.0,
    greedy: bool = False,
    video_max_frames: int = 0,
    show_progress: bool = False,
    observer: Observer | None = None,
) -> TestResult:
    """Play ``episodes`` complete test episodes on ``env`` (a test-mode vector env).

    Env ``i`` plays a fixed quota of episodes (``episodes`` split evenly), and episodes beyond its
    quota are discarded: taking the first ``episodes`` to finish would favour short episodes.
    """
    n = env.num_envs
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    quotas = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    done_count = np.zeros(n, dtype=np.int64)
    running_ret = np.zeros(n)
    running_len = np.zeros(n, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)

    obs, _ = env.reset(seed=seed)
    state = agent.initial_state(n, device)
    first = torch.ones(n, dtype=torch.bool)
    observer = observer or Observer(agent, None, device)
    observer.reset(n)
    frames = [obs[0].numpy()] if video_max_frames > 0 else []
    recording = video_max_frames > 0
    steps = 0
    t0 = time.perf_counter()
    bar = progress(total=episodes, desc="test", enabled=show_progress, unit="episode")
    while (done_count < quotas).any():
        with torch.inference_mode():
            seen = observer(obs, first)
            actions, state = agent.act(seen, state, first.to(device), greedy=greedy)
        actions = _epsilon_greedy(
            actions.to("cpu", torch.int64), epsilon, env.num_actions, generator
        )
        observer.record(actions)
        obs, reward, terminated, truncated, info = env.step(actions)
        done = (terminated | truncated).numpy()
        running_ret += reward.numpy()
        running_len += 1
        steps += n
        if recording:
            frames.append((info["final_obs"][0] if done[0] else obs[0]).numpy())
            recording = not done[0] and len(frames) < video_max_frames
        for i in np.flatnonzero(done):
            if done_count[i] < quotas[i]:
                returns.append(float(running_ret[i]))
                lengths.append(int(running_len[i]))
                done_count[i] += 1
                bar.update(1)
            running_ret[i] = 0.0
            running_len[i] = 0
        first = torch.from_numpy(done)
    bar.close()
    video = np.stack(frames) if frames else None
    return TestResult(returns, lengths, time.perf_counter() - t0, steps, video)
