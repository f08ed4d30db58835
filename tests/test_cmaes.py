"""The CMA-ES controller agent: learning on a world with a known linear optimum, one batched dream
per generation, first-episode fitness, checkpoint continuation, shapes, the real-env path."""

import numpy as np
import pytest
import torch

from worldmodels.agents.cmaes import CMAESAgent, controller_scores, num_params
from worldmodels.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.envs.dream import DreamEnv
from worldmodels.envs.testing import LinearFeatureVecEnv, LinearFeatureWorld, random_store
from worldmodels.interfaces import EnvInfo

torch.set_num_threads(1)
A, D = 3, 6


def _agent(seed=0, **kw):
    world = LinearFeatureWorld(num_actions=A, feature_dim=D)
    cfg = CMAESAgent.Config(**{"population": 16, "rollouts_per_candidate": 2, "horizon": 10, **kw})
    info = EnvInfo(A, world.obs_shape, feature_dim=D)
    return CMAESAgent(cfg, info, seed=seed), world


def _dream(agent, world, horizon=None):
    store = random_store(num_episodes=4, length=12, obs_shape=world.obs_shape, num_actions=A)
    return DreamEnv(
        world, store, num_envs=agent.config.num_envs, horizon=horizon or agent.config.horizon,
        device="cpu", observes="features",
    )  # fmt: skip


def _optimal(world):
    """The linear controller W* (zero bias): always picks the rewarded action."""
    return torch.cat((world.target.flatten(), torch.zeros(A)))[None]  # (1, P)


class Recorder:
    """A dream proxy that counts calls and keeps what each step saw and returned."""

    def __init__(self, dream):
        self.dream, self.num_envs, self.horizon = dream, dream.num_envs, dream.horizon
        self.device = dream.device  # what an agent may read of a dream (contract.DREAM_MEMBERS)
        self.resets, self.steps = 0, []

    def reset(self):
        self.resets += 1
        self.obs, info = self.dream.reset()
        return self.obs, info

    def step(self, action):
        out = self.dream.step(action)
        self.steps.append((self.obs, action, *out[1:4]))
        self.obs = out[0]
        return out


def test_cmaes_learns_the_optimal_linear_policy():
    agent, world = _agent()
    dream = _dream(agent, world)
    logs = [agent.train_in_imagination(dream) for _ in range(20)]
    fit = [entry["fitness_mean"] for entry in logs]
    assert np.mean(fit[-4:]) > np.mean(fit[:3]) + 2.0, fit  # out of 10 per episode
    assert logs[-1]["generation"] == 20 and logs[-1]["sigma"] > 0
    x = torch.randn(4000, D)
    actions, _ = agent.act(x, None, torch.ones(4000, dtype=torch.bool), greedy=True)
    accuracy = (actions == world.optimal_actions(x)).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance is 1/3


def test_a_generation_is_one_batched_dream_rollout():
    agent, world = _agent(rollouts_per_candidate=3, horizon=7)
    rec = Recorder(_dream(agent, world))
    assert rec.num_envs == 16 * 3
    agent.train_in_imagination(rec)
    assert rec.resets == 1 and len(rec.steps) == 7
    # Row r plays candidate r // R: candidate n only has a bias towards action n % A.
    n = 16
    cands = torch.zeros(n, agent.num_params)
    cands[torch.arange(n), A * D + torch.arange(n) % A] = 1.0
    rec = Recorder(_dream(agent, world))
    agent.dream_returns(cands, rec)
    expected = (torch.arange(n) % A).repeat_interleave(3)
    assert all(torch.equal(action, expected) for _, action, *_ in rec.steps)


def test_fitness_counts_only_each_rows_first_episode():
    agent, world = _agent(horizon=10)
    world.episode_len = 3  # every trajectory ends after 3 steps; the dream restarts it
    best = _optimal(world).expand(16, -1)
    returns = agent.dream_returns(best, _dream(agent, world))
    assert torch.equal(returns, torch.full((32,), 3.0))  # not 10: later episodes are ignored

    world.episode_len, world.end_prob = 0, 0.3
    rec = Recorder(_dream(agent, world))
    cands = torch.randn(16, agent.num_params)
    returns = agent.dream_returns(cands, rec)
    expected = torch.zeros(32)
    for row in range(32):
        for _, _, rew, end, trunc in rec.steps:
            expected[row] += rew[row]
            if end[row] or trunc[row]:
                break
    assert torch.equal(returns, expected)
    everything = torch.stack([rew for _, _, rew, _, _ in rec.steps]).sum(0)
    assert (everything > expected).sum() > 10  # the case is real: later rewards must not count


def test_checkpoint_round_trip_continues_identically(tmp_path):
    target = torch.randn(num_params(D, A, 4)).double()

    def fitness(c):  # deterministic, so only the ES state can make two runs differ
        return -((c.double() - target) ** 2).sum(1)

    a, _ = _agent(seed=1, hidden=4)
    for _ in range(12):
        a.generation(fitness)
    save_checkpoint(tmp_path, "c", modules={"agent": a}, state={}, meta={})
    b, _ = _agent(seed=2, hidden=4)  # another seed: everything must come from the checkpoint
    load_checkpoint(tmp_path / "c", {"agent": b})
    assert torch.equal(a.params, b.params)

    def recording(store):
        def fn(c):
            store.append(c.clone())
            return fitness(c)

        return fn

    seen_a, seen_b = [], []
    for _ in range(5):
        assert a.generation(recording(seen_a)) == b.generation(recording(seen_b))
    assert all(torch.equal(x, y) for x, y in zip(seen_a, seen_b, strict=True))
    assert torch.equal(a.params, b.params)
    c, _ = _agent(seed=1, hidden=4)  # a fresh ES draws other candidates: the check can fail
    c.generation(recording(seen := []))
    assert not torch.equal(seen[0], seen_a[0])


@pytest.mark.parametrize("hidden", [0, 5])
def test_act_shapes_and_controller_maths(hidden):
    agent, world = _agent(hidden=hidden)
    assert agent.observes == "features" and agent.config.num_envs == 32
    assert agent.num_params == (A * (D + 1) if hidden == 0 else 5 * (D + 1) + A * (5 + 1))
    agent.params.normal_()
    x = torch.randn(7, D)
    actions, state = agent.act(x, agent.initial_state(7, "cpu"), torch.ones(7, dtype=torch.bool))
    assert actions.shape == (7,) and actions.dtype == torch.int64 and state is None
    assert int(actions.min()) >= 0 and int(actions.max()) < A
    # The batched controller against a per-row reference.
    params = torch.randn(4, agent.num_params)
    xs = torch.randn(4, 5, D)
    got = controller_scores(xs, params, A, hidden)
    for n in range(4):
        p = params[n]
        if hidden == 0:
            ref = xs[n] @ p[: A * D].view(A, D).T + p[A * D :]
        else:
            h = hidden
            w1, b1 = p[: h * D].view(h, D), p[h * D : h * (D + 1)]
            w2, b2 = p[h * (D + 1) : h * (D + 1) + A * h].view(A, h), p[h * (D + 1) + A * h :]
            ref = torch.tanh(xs[n] @ w1.T + b1) @ w2.T + b2
        torch.testing.assert_close(got[n], ref)
    assert torch.equal(agent.act(x, None, torch.ones(7, dtype=torch.bool))[0], actions)
    agent.train_in_imagination(_dream(agent, world))  # a generation runs with this controller
    with pytest.raises(ValueError, match="features"):
        agent.act(torch.zeros(7, 3, 16, 16, dtype=torch.uint8), None, torch.ones(7).bool())
    with pytest.raises(ValueError, match="feature_dim"):
        CMAESAgent(CMAESAgent.Config(), EnvInfo(A, world.obs_shape))


def test_weight_decay_ranks_candidates_by_their_penalty():
    agent, _ = _agent(weight_decay=1.0)
    seen = []
    agent.generation(lambda c: seen.append(c.double()) or torch.zeros(len(c)))
    cands = seen[0].numpy()
    order = np.argsort((cands**2).mean(1))  # equal fitness: the smallest penalties win
    w = agent.es.sp.weights.positive_weights
    np.testing.assert_allclose(agent.params.numpy(), w @ cands[order[: len(w)]], atol=1e-6)


def test_fitness_in_a_real_vector_env():
    agent, world = _agent()
    env = LinearFeatureVecEnv(world, num_envs=5, episode_len=8)  # 5 rows for 3 x 4 episodes

    class Observe:  # the worldmodels.agent_input.AgentInput interface
        def __init__(self):
            self.resets, self.recorded = [], 0

        def reset(self, n):
            self.resets.append(n)

        def __call__(self, obs, first):
            return world.features_of_frames(obs)

        def record(self, actions):
            self.recorded += len(actions)

    constant = torch.zeros(1, agent.num_params)  # always action 0
    cands = torch.cat((_optimal(world), constant, torch.randn(1, agent.num_params)))
    observe = Observe()
    fit = agent.fitness_real(cands, env, observe, episodes_per_candidate=4, seed=0)
    assert fit.shape == (3,) and observe.resets == [5] and observe.recorded > 0
    assert fit[0] >= 7.5  # optimal up to the frames' quantisation of the features
    assert fit[1] < 5.0 and fit[0] > fit[2]
    every = agent.fitness_real(_optimal(world).expand(3, -1), env, observe, 4, seed=1)
    assert (every >= 7.5).all(), every  # all 12 episodes were played and counted
    mean_fit = agent.fitness_real(None, env, observe, 2, seed=0)  # the current mean (zeros)
    assert mean_fit.shape == (1,) and mean_fit[0] < 5.0
    logs = agent.generation(lambda c: agent.fitness_real(c, env, observe, 1, seed=1))
    assert logs["generation"] == 1 and logs["fitness_best"] <= 8
