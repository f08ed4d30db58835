"""Acting in the real game: collecting experience into replay, and playing test episodes."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worldmodels.agent_input import AgentInput
from worldmodels.nn.sampling import epsilon_greedy
from worldmodels.replay import EpisodeBuilder, ReplayStore
from worldmodels.tb import progress


@dataclass
class CollectStats:
    """What one call to ``Collector.collect`` did."""

    steps: int = 0
    episodes: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    game_returns: list[float] = field(default_factory=list)  # whole games, all lives
    nonzero_rewards: int = 0
    reward_sum: float = 0.0  # over every env step
    ends: int = 0  # transitions that ended an episode (game over or, in train mode, a lost life)
    seconds: float = 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / max(self.seconds, 1e-9)


def _plain(obj: Any) -> bool:
    """Whether ``obj`` is made of tensors, numbers, strings, None, lists, tuples and str-keyed
    dicts only: what a checkpoint's ``state.pt`` can hold and load with ``weights_only=True``."""
    if obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(_plain(x) for x in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    return False


def _detached(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors are ordinary (not inference-mode) CPU tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    return obj


def _moved(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_moved(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: _moved(v, device) for k, v in obj.items()}
    return obj


def _frame_digest(frame: torch.Tensor | np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(frame)).tobytes()).hexdigest()


class Collector:
    """Runs an agent in a real vector env and stores every finished episode in replay.

    Episodes continue across calls; an episode reaches the store only when it has finished, so a
    crash never leaves half an episode behind. ``steps`` count agent steps summed over the envs.

    ``state_dict`` records where every stream stands (the env's seed and every action each game
    received since, the epsilon generator, the agent's recurrent state); ``restore`` brings the
    real games back to that exact point by replaying those actions from the seed, checking every
    frame against the episodes in replay. A real game's state cannot be saved, but it is a
    deterministic function of its seed and its actions.
    """

    def __init__(
        self,
        env: Any,
        store: ReplayStore,
        *,
        epsilon: float,
        seed: int,
        device: torch.device | str = "cpu",
        observer: AgentInput | None = None,
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
        self._vector_steps = 0  # env.step calls since the seeded reset
        self._first_episode = 0  # store index of this collector's first episode

    def _start(self, agent: Any) -> None:
        obs, _ = self.env.reset(seed=self.seed)
        n = self.env.num_envs
        self._obs = obs
        self._builders = [EpisodeBuilder(obs[i].numpy(), info={"env": i}) for i in range(n)]
        self._agent_state = agent.initial_state(n, self.device)
        self._first = torch.ones(n, dtype=torch.bool)
        self._game_returns[:] = 0.0
        self._vector_steps = 0
        self._first_episode = len(self.store)
        self._ensure_observer(agent)
        assert self.observer is not None  # _ensure_observer made one
        self.observer.reset(n)

    def _ensure_observer(self, agent: Any) -> None:
        if self.observer is None:
            self.observer = AgentInput(agent, None, self.device)

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
        assert self.observer is not None and self._obs is not None and self._first is not None
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
            actions = epsilon_greedy(
                actions.to("cpu", torch.int64), self.epsilon, self.env.num_actions, self.generator
            )
            self.observer.record(actions)
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            self._vector_steps += 1
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
            stats.reward_sum += float(rew_np.sum())
            stats.ends += int(terminated.sum())
            for j in np.flatnonzero(done.numpy()):
                life_loss = bool(info["life_loss"][j])
                episode = self._builders[j].finish(
                    end=bool(terminated[j]),
                    trunc=bool(truncated[j]),
                    info={"env": int(j), "life_loss": life_loss, "mode": "train"},
                )
                self.store.add(episode)
                stats.episodes += 1
                stats.episode_returns.append(episode.ret)
                stats.episode_lengths.append(len(episode))
                if not life_loss:  # the game itself ended (game over or the frame cap)
                    stats.game_returns.append(float(self._game_returns[j]))
                    self._game_returns[j] = 0.0
                self._builders[j] = EpisodeBuilder(next_obs[j].numpy(), info={"env": int(j)})
            self._obs = next_obs
            self._first = done
            stats.steps += n
            bar.update(n)
        bar.close()
        stats.seconds = time.perf_counter() - t0
        return stats

    @property
    def steps_in_progress(self) -> int:
        """Agent steps of the episodes not finished yet (summed over the envs)."""
        return sum(len(b) for b in self._builders) if self._obs is not None else 0

    # ---------------------------------------------------------------- where the streams stand

    def state_dict(self) -> dict:
        """Plain data and tensors: everything ``restore`` needs to continue exactly here."""
        state: dict[str, Any] = {"generator": self.generator.get_state(), "seed": self.seed}
        if self._obs is None:
            return {**state, "started": False}
        assert self._first is not None  # set with _obs
        obs_state, prev_action = self.observer.state() if self.observer else (None, None)
        restorable = _plain(self._agent_state) and _plain(obs_state)
        return {
            **state,
            "started": True,
            "vector_steps": self._vector_steps,
            "first_episode": self._first_episode,
            "actions": [torch.tensor(b.actions, dtype=torch.int64) for b in self._builders],
            "obs_sha256": [_frame_digest(self._obs[i]) for i in range(self.env.num_envs)],
            "first": self._first.clone(),
            "game_returns": [float(r) for r in self._game_returns],
            # Whatever an agent keeps between steps must be plain data to be saved; if it is
            # not, restore() reports that and the run continues on a fresh env stream instead.
            "restorable": restorable,
            "agent_state": _detached(self._agent_state) if restorable else None,
            "observer_state": _detached(obs_state) if restorable else None,
            "observer_prev_action": None if prev_action is None else _detached(prev_action),
        }

    def restore(self, state: dict, agent: Any) -> str | None:
        """Continue exactly where ``state`` was taken: the real games are reset with the same
        seed and replayed through every recorded action, each frame checked against replay.

        Returns None on success, else why the games could not be brought back (the collector is
        then left unstarted, to start afresh). The replay needs the episodes this collector had
        finished by then (``store[first_episode:]``) and nothing after them in the store."""
        self.generator.set_state(state["generator"])
        self.seed = int(state.get("seed", self.seed))
        if "started" not in state:
            return "the checkpoint does not record the games' actions (an older format)"
        if not state["started"]:
            return None  # nothing was played yet: the first collect() starts from the seed
        if not state.get("restorable", False):
            return "the agent's state between steps is not plain data (tensors, lists, dicts)"
        problem = self._replay(state, agent)
        if problem is not None:
            self._obs = None
            self._builders = []
            self.generator.set_state(state["generator"])
            return problem
        self._first = state["first"].clone().to(torch.bool)
        self._game_returns[:] = state["game_returns"]
        self._agent_state = _moved(state["agent_state"], self.device)
        self._ensure_observer(agent)
        assert self.observer is not None  # _ensure_observer made one
        prev = state.get("observer_prev_action")
        self.observer.set_state(
            (
                _moved(state["observer_state"], self.device),
                None if prev is None else prev.to(self.device),
            )
        )
        return None

    def _replay(self, state: dict, agent: Any) -> str | None:
        n = self.env.num_envs
        steps = int(state["vector_steps"])
        first_episode = int(state["first_episode"])
        partial = [a.tolist() for a in state["actions"]]
        if len(partial) != n or first_episode > len(self.store):
            return f"the checkpoint was taken with {len(partial)} envs, this run has {n}"
        mine: list[list[int]] = [[] for _ in range(n)]  # store indices of each env's episodes
        for k in range(first_episode, len(self.store)):
            env_index = self.store[k].info.get("env")
            if not isinstance(env_index, int) or not 0 <= env_index < n:
                return f"replay episode {k} does not say which of the {n} envs played it"
            mine[env_index].append(k)
        for i in range(n):
            played = sum(len(self.store[k]) for k in mine[i]) + len(partial[i])
            if played != steps:
                return f"env {i} has {played} recorded actions, the checkpoint {steps} steps"

        obs, _ = self.env.reset(seed=self.seed)
        current = obs
        cursor = [0] * n  # position in mine[i]; == len(mine[i]) once in the partial episode
        t_in = [0] * n  # step inside the current episode
        builders: list[EpisodeBuilder | None] = [None] * n

        def entered(i: int, frame: torch.Tensor) -> str | None:
            """Env ``i`` starts a new episode at ``frame``."""
            cursor_i, t_in[i] = cursor[i], 0
            if cursor_i < len(mine[i]):
                expected = self.store[mine[i][cursor_i]].obs[0]
                if not np.array_equal(frame.numpy(), expected):
                    return f"the first frame of {self._name(mine[i][cursor_i])} differs"
            else:
                builders[i] = EpisodeBuilder(frame.numpy(), info={"env": i})
            return None

        for i in range(n):
            if (problem := entered(i, obs[i])) is not None:
                return problem
        for _ in range(steps):
            act = [
                self.store[mine[i][cursor[i]]].act[t_in[i]]
                if cursor[i] < len(mine[i])
                else partial[i][t_in[i]]
                for i in range(n)
            ]
            actions = torch.tensor(act, dtype=torch.int64)
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
            current = next_obs
            done = (terminated | truncated).numpy()
            for i in range(n):
                frame = info["final_obs"][i] if done[i] else next_obs[i]
                if cursor[i] < len(mine[i]):
                    k = mine[i][cursor[i]]
                    ep, t = self.store[k], t_in[i]
                    last = t + 1 == len(ep)
                    if (
                        not np.array_equal(frame.numpy(), ep.obs[t + 1])
                        or float(reward[i]) != float(ep.rew[t])
                        or bool(done[i]) != last
                        or (
                            last and (bool(terminated[i]), bool(truncated[i])) != (ep.end, ep.trunc)
                        )
                    ):
                        return f"step {t} of {self._name(k)} came out differently"
                    t_in[i] += 1
                    if last:
                        cursor[i] += 1
                        if (problem := entered(i, next_obs[i])) is not None:
                            return problem
                else:
                    if done[i]:
                        return f"env {i} ended an episode its checkpoint had as unfinished"
                    builder = builders[i]
                    assert builder is not None  # entered() made it for the partial episode
                    builder.add(act[i], float(reward[i]), frame.numpy())
                    t_in[i] += 1
        if any(cursor[i] < len(mine[i]) for i in range(n)):
            return "the replay ended before every recorded episode"
        if [_frame_digest(current[i]) for i in range(n)] != list(state["obs_sha256"]):
            return "the games' current frames differ from the checkpoint's"
        self._obs = current
        self._builders = builders  # type: ignore[assignment]
        self._vector_steps = steps
        self._first_episode = first_episode
        return None

    def _name(self, k: int) -> str:
        path = self.store.path_of(k)
        return f"replay episode {k}" if path is None else path.name


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
    observer: AgentInput | None = None,
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
    observer = observer or AgentInput(agent, None, device)
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
        actions = epsilon_greedy(
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
