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
    num_actions=4, obs_shape=(3, 64, 64), action_meanings=("NOOP", "FIRE", "RIGHT", "LEFT")
)


def _agent(name, seed=0):
    cls = AGENTS.get(name)
    return cls(cls.Config(), ENV, seed=seed)


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
    obs = torch.randint(0, 256, (5, *ENV.obs_shape), dtype=torch.uint8)
    state = agent.initial_state(5, "cpu")
    first = torch.ones(5, dtype=torch.bool)
    for _ in range(3):
        actions, state = agent.act(obs, state, first)
        assert actions.shape == (5,) and actions.dtype == torch.int64
        assert int(actions.min()) >= 0 and int(actions.max()) < ENV.num_actions
        first = torch.zeros(5, dtype=torch.bool)


@pytest.mark.parametrize("name", AGENTS.names())
def test_agent_is_seeded_and_survives_a_checkpoint(name, tmp_path):
    obs = torch.randint(0, 256, (8, *ENV.obs_shape), dtype=torch.uint8)
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
