"""DIAMOND's actor-critic: size, lambda returns against the recursion, acting, learning a bandit in
imagination, and resuming from a checkpoint with its optimizer state."""

import math

import pytest
import torch

from worldmodels.agents.actor_critic import ActorCritic, lambda_returns
from worldmodels.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.envs.dream import DreamEnv
from worldmodels.envs.testing import BanditWorld, random_store
from worldmodels.interfaces import EnvInfo
from worldmodels.nn.blocks import count_parameters
from worldmodels.registry import AGENTS
from worldmodels.training import StageTraining

SMALL_ENV = EnvInfo(num_actions=4, obs_shape=(3, 16, 16))


def tiny_config(**kw):
    defaults = dict(
        channels=(8, 16), lstm_dim=32, horizon=8, num_envs=16,
        training=StageTraining(lr=1e-3, weight_decay=0.0, warmup_steps=0, max_grad_norm=100.0),
    )  # fmt: skip
    return ActorCritic.Config(**{**defaults, **kw})


def make_dream(cfg, seed=0, end_prob=0.1):
    world = BanditWorld(obs_shape=SMALL_ENV.obs_shape, end_prob=end_prob)
    store = random_store(obs_shape=SMALL_ENV.obs_shape, seed=seed)
    return DreamEnv(
        world, store, num_envs=cfg.num_envs, horizon=cfg.horizon, device="cpu", seed=seed
    )


def test_registered_and_diamonds_parameter_count():
    assert AGENTS.get("actor_critic") is ActorCritic
    n = count_parameters(ActorCritic(ActorCritic.Config(), EnvInfo(4, (3, 64, 64))))
    print(f"actor-critic: {n:,} parameters (DIAMOND: 3.2 M)")
    assert abs(n - 3.2e6) / 3.2e6 < 0.05


def test_fresh_policy_is_uniform_and_value_zero():
    agent = ActorCritic(ActorCritic.Config(), EnvInfo(4, (3, 64, 64)))
    obs = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    logits, value, _ = agent(obs, agent.initial_state(2, "cpu"))
    assert not logits.any() and not value.any()


# ------------------------------------------------------------------------------- lambda returns


def slow_lambda_returns(rew, end, trunc, boot, gamma, lam):
    """The recursion, element by element, in Python floats."""
    b_size, t_size = len(rew), len(rew[0])

    def g(b, t):
        if t == t_size:
            return boot[b][t_size - 1]
        r = math.copysign(1.0, rew[b][t]) if rew[b][t] != 0 else 0.0
        if end[b][t]:
            return r
        if trunc[b][t]:  # the next step starts another trajectory: bootstrap only
            return r + gamma * boot[b][t]
        bracket = (1 - lam) * boot[b][t] + lam * g(b, t + 1)
        return r + gamma * bracket

    return [[g(b, t) for t in range(t_size)] for b in range(b_size)]


def test_lambda_returns_match_the_recursion():
    g = torch.Generator().manual_seed(0)
    b, t = 6, 9
    rew = torch.randn(b, t, generator=g, dtype=torch.float64) * 3
    rew[torch.rand(b, t, generator=g) < 0.4] = 0.0
    end = torch.rand(b, t, generator=g) < 0.2
    trunc = (torch.rand(b, t, generator=g) < 0.2) & ~end
    end[0], trunc[0] = False, False  # a row with neither
    end[1, 2], trunc[1, 5] = True, True  # a row with both
    end[1, [0, 1, 3, 4, 6, 7, 8]] = False
    trunc[1, [0, 1, 2, 3, 4, 6, 7, 8]] = False
    end[2, -1] = True  # ends on the last step: no bootstrap at all
    trunc[3, -1], end[3, -1] = True, False
    boot = torch.randn(b, t, generator=g, dtype=torch.float64)
    for gamma, lam in ((0.985, 0.95), (0.9, 0.0), (0.9, 1.0)):
        fast = lambda_returns(rew, end, trunc, boot, gamma, lam)
        slow = torch.tensor(
            slow_lambda_returns(
                rew.tolist(), end.tolist(), trunc.tolist(), boot.tolist(), gamma, lam
            ),
            dtype=torch.float64,
        )
        torch.testing.assert_close(fast, slow)
    # lambda = 1 without ends: the discounted sum of sign-clipped rewards plus the last bootstrap.
    r = torch.tensor([[2.0, 0.0, -0.5]])
    no = torch.zeros(1, 3, dtype=torch.bool)
    v = torch.tensor([[9.0, 9.0, 4.0]])
    out = lambda_returns(r, no, no, v, 0.5, 1.0)
    torch.testing.assert_close(out[0, 0], torch.tensor(1 + 0.5 * 0 + 0.25 * (-1) + 0.125 * 4))


# ------------------------------------------------------------------------------------- acting


def test_act_shapes_reset_and_greedy():
    agent = ActorCritic(tiny_config(), SMALL_ENV, seed=0)
    with torch.no_grad():
        agent.actor.weight.normal_(0, 1.0)  # a non-uniform policy
    obs = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    state = agent.initial_state(6, "cpu")
    assert state[0].shape == state[1].shape == (6, 32) and not state[0].any()
    first = torch.ones(6, dtype=torch.bool)
    actions, state = agent.act(obs, state, first)
    assert actions.shape == (6,) and actions.dtype == torch.int64
    assert int(actions.min()) >= 0 and int(actions.max()) < 4
    # `first` rows restart from zeros whatever state they carry; the others keep theirs.
    junk = (torch.randn(6, 32), torch.randn(6, 32))
    first = torch.tensor([True, False, True, False, True, False])
    _, s_junk = agent.act(obs, junk, first)
    _, s_zero = agent.act(obs, agent.initial_state(6, "cpu"), torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(s_junk[0][first], s_zero[0][first])
    assert not torch.allclose(s_junk[0][~first], s_zero[0][~first])
    # greedy: the argmax, every time; sampling: varies between calls.
    logits, _, _ = agent(obs, agent.initial_state(6, "cpu"))
    greedy = [
        agent.act(obs, None, torch.ones(6, dtype=torch.bool), greedy=True)[0] for _ in range(3)
    ]
    assert all(torch.equal(a, logits.argmax(-1)) for a in greedy)
    sampled = torch.stack(
        [agent.act(obs, None, torch.ones(6, dtype=torch.bool))[0] for _ in range(20)]
    )
    assert (sampled != sampled[0]).any()


def test_acts_in_the_real_atari_env():
    from worldmodels.envs.atari import make_atari_env
    from worldmodels.envs.atari_config import AtariConfig

    env = make_atari_env(AtariConfig(), 2, "train")
    try:
        agent = ActorCritic(ActorCritic.Config(), EnvInfo(env.num_actions, (3, 64, 64)), seed=1)
        obs, _ = env.reset(seed=0)
        state = agent.initial_state(2, "cpu")
        first = torch.ones(2, dtype=torch.bool)
        for _ in range(5):
            actions, state = agent.act(obs, state, first)
            assert actions.shape == (2,) and actions.dtype == torch.int64
            assert int(actions.min()) >= 0 and int(actions.max()) < env.num_actions
            obs, _, term, trunc, _ = env.step(actions)
            first = term | trunc
    finally:
        env.close()


# ----------------------------------------------------------------------------------- training


def test_learns_the_bandit_in_imagination():
    torch.manual_seed(0)
    # gamma 0.5 keeps the value scale small (about 2), so the critic's fit shows in ~100 updates.
    cfg = tiny_config(gamma=0.5)
    agent = ActorCritic(cfg, SMALL_ENV, seed=0)
    dream = make_dream(cfg)
    logs = [agent.train_in_imagination(dream) for _ in range(120)]
    assert {"loss", "policy_loss", "value_loss", "entropy", "return_mean", "value_mean"} <= set(
        logs[0]
    )
    assert {"reward_mean", "end_rate", "grad_norm", "lr"} <= set(logs[0])
    obs, _ = dream.reset()
    with torch.no_grad():
        logits, value, _ = agent(obs, agent.initial_state(cfg.num_envs, "cpu"))
    p_good = logits.softmax(-1)[:, dream.world.good_action].mean().item()
    v_first = sum(x["value_loss"] for x in logs[:20]) / 20
    v_last = sum(x["value_loss"] for x in logs[-20:]) / 20
    print(f"p(good action) {p_good:.2f}; value loss {v_first:.3f} -> {v_last:.3f}")
    assert p_good > 0.6  # uniform: 0.25
    assert v_last < 0.6 * v_first
    assert logs[-1]["reward_mean"] > 0.6 and value.mean().item() > 0.5


def test_burn_in_only_where_masked():
    agent = ActorCritic(tiny_config(), SMALL_ENV, seed=0)
    obs = torch.randint(0, 256, (3, 4, 3, 16, 16), dtype=torch.uint8)
    mask = torch.tensor([[True] * 4, [False, False, True, True], [False] * 4])
    h, c = agent.burn_in(obs, mask)
    assert not h[2].any() and not c[2].any()  # all padding: still the zero state
    h_short, _ = agent.burn_in(obs[1:2, 2:], mask[1:2, 2:])
    torch.testing.assert_close(h[1:2], h_short)  # padding rows leave the state untouched


def _params(agent):
    return {k: v.clone() for k, v in agent.state_dict().items() if isinstance(v, torch.Tensor)}


def test_checkpoint_resumes_training_identically(tmp_path):
    cfg = tiny_config(
        horizon=4, num_envs=4, training=StageTraining(lr=1e-3, weight_decay=0.0, warmup_steps=10)
    )
    torch.manual_seed(0)
    a = ActorCritic(cfg, SMALL_ENV, seed=0)
    dream = make_dream(cfg)
    for _ in range(3):
        a.train_in_imagination(dream)
    save_checkpoint(tmp_path, "c", modules={"agent": a}, state={}, meta={})

    fresh = ActorCritic(cfg, SMALL_ENV, seed=7)  # no updater yet: set_extra_state creates it
    load_checkpoint(tmp_path / "c", {"agent": fresh})
    busy = ActorCritic(cfg, SMALL_ENV, seed=8)  # an updater with its own history: overwritten
    busy.train_in_imagination(make_dream(cfg, seed=3))
    load_checkpoint(tmp_path / "c", {"agent": busy})
    weights_only = ActorCritic(cfg, SMALL_ENV, seed=9)
    weights_only.load_state_dict(_params(a), strict=False)  # same weights, fresh optimizer

    def next_update(agent):
        torch.manual_seed(123)
        logs = agent.train_in_imagination(make_dream(cfg, seed=5))
        return logs, _params(agent)

    ref_logs, ref_params = next_update(a)
    for other in (fresh, busy):
        logs, params = next_update(other)
        assert logs == ref_logs
        assert all(torch.equal(params[k], ref_params[k]) for k in ref_params)
    # Without the optimizer state the same update lands elsewhere (so the check above can fail).
    logs, params = next_update(weights_only)
    assert logs["loss"] == ref_logs["loss"]  # same weights, same imagined data...
    assert not all(torch.equal(params[k], ref_params[k]) for k in ref_params)  # ...other step


def test_default_config_trains_one_step_at_64x64():
    torch.manual_seed(0)
    cfg = ActorCritic.Config(horizon=3, num_envs=4)
    agent = ActorCritic(cfg, EnvInfo(4, (3, 64, 64)))
    world = BanditWorld(obs_shape=(3, 64, 64))
    dream = DreamEnv(
        world, random_store(obs_shape=(3, 64, 64), num_episodes=3), num_envs=4, horizon=3,
        device="cpu",
    )  # fmt: skip
    logs = agent.train_in_imagination(dream)
    assert math.isfinite(logs["loss"]) and logs["grad_norm"] > 0


@pytest.mark.parametrize("burn_in", [True, False])
def test_imagination_loss_gradients_reach_every_parameter(burn_in):
    cfg = tiny_config(burn_in=burn_in, horizon=3, num_envs=4)
    agent = ActorCritic(cfg, SMALL_ENV, seed=0)
    with torch.no_grad():  # non-zero heads so gradients flow back into the encoder
        agent.actor.weight.normal_(0, 0.1)
        agent.critic.weight.normal_(0, 0.1)
    torch.manual_seed(0)
    loss, logs = agent.imagination_loss(make_dream(cfg))
    loss.backward()
    for name, p in agent.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _reference_loss(agent, dream):
    """The imagination loss the slow way: an extra forward pass after every step for the value
    of what follows it (the final observation where the row finished), nothing reused."""
    from worldmodels.nn.sampling import categorical_log_prob, sample_categorical

    cfg = agent.config
    obs, info = dream.reset()
    b = obs.shape[0]
    both_obs = torch.cat((info["context_obs"], info["next_context_obs"]))[:, :-1]
    both_mask = torch.cat((info["context_mask"], info["next_context_mask"]))[:, :-1]
    h, c = agent.burn_in(both_obs, both_mask)
    state, spare = (h[:b], c[:b]), (h[b:], c[b:])
    logps, values, rews, ends, truncs, boots = [], [], [], [], [], []
    for _ in range(cfg.horizon):
        logits, value, state = agent(obs, state)
        action = sample_categorical(logits.detach())
        next_obs, rew, end, trunc, step_info = dream.step(action)
        done = end | trunc
        with torch.no_grad():
            last = torch.where(done.view(b, 1, 1, 1), step_info["final_obs"], next_obs)
            boots.append(agent(last, state)[1])
        d = done.view(b, 1)
        state = (torch.where(d, spare[0], state[0]), torch.where(d, spare[1], state[1]))
        logps.append(categorical_log_prob(logits, action))
        values.append(value)
        rews.append(rew)
        ends.append(end)
        truncs.append(trunc)
        obs = next_obs
    stack = [torch.stack(x, dim=1) for x in (logps, values, rews, ends, truncs, boots)]
    logp, value, rew, end, trunc, boot = stack
    returns = lambda_returns(rew, end, trunc, boot, cfg.gamma, cfg.lambda_)
    return returns, value


@pytest.mark.parametrize("dream_horizon", [8, 3])
def test_bootstrap_values_reuse_the_next_steps_value(dream_horizon):
    """The lambda returns equal those with a separate value pass after every step (rows that
    end, restart, or are truncated by a dream horizon shorter than the agent's)."""
    cfg = tiny_config(horizon=8, num_envs=6)
    agent = ActorCritic(cfg, SMALL_ENV, seed=1)
    torch.nn.init.normal_(agent.critic.weight, std=0.5)  # a value that depends on the state
    world = BanditWorld(obs_shape=SMALL_ENV.obs_shape, end_prob=0.2)
    store = random_store(obs_shape=SMALL_ENV.obs_shape)
    got = {}
    for name in ("fast", "reference"):
        dream = DreamEnv(world, store, num_envs=6, horizon=dream_horizon, device="cpu", seed=2)
        torch.manual_seed(3)
        with torch.no_grad():
            if name == "fast":
                _, logs = agent.imagination_loss(dream)
                got[name] = logs["return_mean"], logs["value_mean"]
            else:
                returns, value = _reference_loss(agent, dream)
                got[name] = returns.mean(), value.mean()
    assert torch.equal(got["fast"][1], got["reference"][1])  # the same trajectories
    torch.testing.assert_close(got["fast"][0], got["reference"][0], rtol=0, atol=0)
