"""Contract tests, parametrized over every registered component: registering is being tested.

A third-party agent installed through the ``worldmodels.agents`` entry point shows up here too.
"""

import dataclasses

import pytest
import torch

from worldmodels.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.interfaces import Agent, EnvInfo
from worldmodels.registry import AGENTS, DYNAMICS, ENCODERS, WORLDS

ENV = EnvInfo(
    num_actions=4,
    obs_shape=(3, 64, 64),
    action_meanings=("NOOP", "FIRE", "RIGHT", "LEFT"),
    feature_dim=8,  # for agents that observe a world's features
)


def _agent(name, seed=0):
    cls = AGENTS.get(name)
    return cls(cls.Config(), ENV, seed=seed)


def _obs(agent, n):
    """What the agent observes: uint8 frames, or float features of the world."""
    if agent.observes == "features":
        return torch.randn(n, ENV.feature_dim)
    return torch.randint(0, 256, (n, *ENV.obs_shape), dtype=torch.uint8)


@pytest.mark.parametrize("registry", [AGENTS, WORLDS, ENCODERS, DYNAMICS], ids=lambda r: r.kind)
def test_every_component_has_a_frozen_config_and_a_name(registry):
    for name in registry.names():
        cls = registry.get(name)
        assert dataclasses.is_dataclass(cls.Config)
        assert cls.Config.__dataclass_params__.frozen, f"{name}.Config must be frozen"
        assert cls.registry_name == name


@pytest.mark.parametrize("name", AGENTS.names())
def test_agent_acts_with_valid_actions(name):
    agent = _agent(name)
    assert isinstance(agent, Agent) and isinstance(agent, torch.nn.Module)
    assert agent.observes in ("pixels", "features")
    obs = _obs(agent, 5)
    state = agent.initial_state(5, "cpu")
    first = torch.ones(5, dtype=torch.bool)
    for _ in range(3):
        actions, state = agent.act(obs, state, first)
        assert actions.shape == (5,) and actions.dtype == torch.int64
        assert int(actions.min()) >= 0 and int(actions.max()) < ENV.num_actions
        first = torch.zeros(5, dtype=torch.bool)


@pytest.mark.parametrize("name", AGENTS.names())
def test_agent_is_seeded_and_survives_a_checkpoint(name, tmp_path):
    obs = _obs(_agent(name), 8)
    first = torch.ones(8, dtype=torch.bool)

    def rollout(agent, n):
        state = agent.initial_state(8, "cpu")
        return [agent.act(obs, state, first)[0] for _ in range(n)]

    a, b = _agent(name, seed=3), _agent(name, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(rollout(a, 4), rollout(b, 4), strict=True))

    save_checkpoint(tmp_path, "c", modules={"agent": a}, state={}, meta={})
    expected = rollout(a, 4)
    c = _agent(name, seed=99)
    load_checkpoint(tmp_path / "c", {"agent": c})
    assert all(torch.equal(x, y) for x, y in zip(expected, rollout(c, 4), strict=True))


def _smoke_world(name, channels_last=False):
    from worldmodels import config as C
    from worldmodels.build import build_world

    cfg = C.resolve(env="Breakout", world=name, preset="smoke")
    return build_world(cfg.world, ENV, device=torch.device("cpu"), channels_last=channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", WORLDS.names())
def test_world_stages_train_on_replay_segments(name, channels_last):
    from envs.testing import random_store
    from worldmodels.replay import SegmentSampler
    from worldmodels.training import Stage, Updater

    torch.manual_seed(0)
    world = _smoke_world(name, channels_last)
    store = random_store(num_episodes=4, length=24, obs_shape=ENV.obs_shape, num_actions=4)
    stages = world.stages()
    assert stages, "a world has at least one trainable stage"
    for stage_name, stage in stages.items():
        assert isinstance(stage, Stage) and stage.name == stage_name
        t = stage.training
        sampler = SegmentSampler(store, t.seq_len, pad_left=t.pad_left, pad_right=t.pad_right)
        batch = sampler.sample(2)
        loss, logs = stage.loss_of(batch)
        assert loss.ndim == 0 and torch.isfinite(loss), stage_name
        # scalars: Python floats or 0-dim tensors (the updater reads them back together)
        assert all(
            isinstance(v, float) or (isinstance(v, torch.Tensor) and v.ndim == 0)
            for v in logs.values()
        ), stage_name
        before = [p.detach().clone() for p in stage.module.parameters()]
        logs = Updater(stage.module, t, torch.device("cpu")).update(stage.loss_of, batch)
        assert all(isinstance(v, float) for v in logs.values()), stage_name
        changed = any(
            not torch.equal(a, p) for a, p in zip(before, stage.module.parameters(), strict=True)
        )
        assert changed, f"{stage_name}: an update must change the weights"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", WORLDS.names())
def test_world_imagines_in_a_dream_env(name, channels_last):
    from envs.dream import DreamEnv
    from envs.testing import random_store

    torch.manual_seed(0)
    world = _smoke_world(name, channels_last).eval()
    store = random_store(num_episodes=4, length=24, obs_shape=ENV.obs_shape, num_actions=4)
    dream = DreamEnv(world, store, num_envs=3, horizon=2, device="cpu")
    obs, info = dream.reset()
    assert obs.shape == (3, *ENV.obs_shape) and obs.dtype == torch.uint8
    started = torch.zeros(3, dtype=torch.long)  # step at which each row's trajectory began
    for t in range(4):
        obs, rew, term, trunc, info = dream.step(torch.tensor([0, 1, 3]))
        assert obs.shape == (3, *ENV.obs_shape) and obs.dtype == torch.uint8
        assert rew.shape == (3,) and rew.dtype == torch.float32
        assert term.dtype == torch.bool and trunc.dtype == torch.bool
        assert info["final_obs"].dtype == torch.uint8
        assert not (term & trunc).any()
        assert torch.equal(trunc, ~term & (t + 1 - started == 2))  # the horizon of 2 steps
        started = torch.where(term | trunc, t + 1, started)


@pytest.mark.parametrize("name", WORLDS.names())
def test_skipping_the_row_swap_on_cpu_changes_nothing(name):
    """DreamEnv's CPU shortcut (no row swap in steps where no row finished) leaves every world's
    trajectories bitwise unchanged, also for states that share buffers (the IRIS cache)."""
    from envs.dream import DreamEnv
    from envs.testing import random_store

    world = _smoke_world(name, False).eval()
    store = random_store(num_episodes=4, length=24, obs_shape=ENV.obs_shape, num_actions=4)
    runs = []
    for read in (True, False):
        torch.manual_seed(0)
        dream = DreamEnv(world, store, num_envs=3, horizon=3, device="cpu", seed=0)
        dream.read_done_on_host = read
        out = [dream.reset()[0]]
        for t in range(8):
            obs, rew, term, trunc, info = dream.step(torch.tensor([t % 4, 1, 3]))
            out += [obs, rew, term, trunc, info["final_obs"]]
        runs.append(out)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


# Every agent in every world: "any agent trains in any world" is a test, not a claim.
SMALL_AGENT = {
    "actor_critic": ["agent.num_envs=2", "agent.horizon=2"],
    "cmaes": ["agent.population=2", "agent.rollouts_per_candidate=1", "agent.horizon=2"],
    **{
        name: ["agent.num_envs=2", "agent.horizon=2", "agent.steps_per_update=8", kwargs]
        for name, kwargs in (
            ("sb3_ppo", "agent.kwargs={n_steps: 4, batch_size: 8}"),
            ("sb3_a2c", "agent.kwargs={n_steps: 4}"),
            ("sb3_dqn", "agent.kwargs={learning_starts: 0, buffer_size: 100}"),
        )
    },
}


@pytest.mark.parametrize("world_name", WORLDS.names())
@pytest.mark.parametrize("agent_name", AGENTS.names())
def test_every_agent_trains_in_every_world(agent_name, world_name):
    from envs.dream import DreamEnv
    from envs.testing import random_store
    from worldmodels import config as C
    from worldmodels.build import build_world_and_agent

    torch.manual_seed(0)
    cfg = C.resolve(
        env="Breakout", world=world_name, agent=agent_name, preset="smoke",
        overrides=SMALL_AGENT.get(agent_name, []),
    )  # fmt: skip
    world, agent = build_world_and_agent(
        cfg.world, cfg.agent, ENV, seed=0, device=torch.device("cpu")
    )
    store = random_store(num_episodes=4, length=24, obs_shape=ENV.obs_shape, num_actions=4)
    num_envs = getattr(agent.config, "num_envs", 2)
    horizon = getattr(agent.config, "horizon", 2)
    dream = DreamEnv(world, store, num_envs=num_envs, horizon=horizon, device="cpu",
                     observe=agent.observes)  # fmt: skip
    before = {k: v.clone() for k, v in agent.state_dict().items() if isinstance(v, torch.Tensor)}
    logs = agent.train_in_imagination(dream)
    assert all(isinstance(v, float) for v in logs.values())
    if getattr(agent.config, "training", None) is not None:
        after = agent.state_dict()
        assert any(not torch.equal(v, after[k]) for k, v in before.items()), "no update happened"
    obs, _ = dream.reset()
    actions, _ = agent.act(
        obs, agent.initial_state(num_envs, "cpu"), torch.ones(num_envs, dtype=torch.bool)
    )
    assert actions.shape == (num_envs,) and int(actions.max()) < ENV.num_actions
