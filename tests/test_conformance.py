"""Contract tests, parametrized over every registered component: registering is being tested.

Each registered world goes through ``worldmodels.checks.check_world`` and each agent through
``check_agent`` (what a user runs on their own: the checks live there, not here); every agent
then trains in every world it is compatible with (``worldmodels.contract.incompatibility``), and
the pairs that are not are skipped with the reason (``pytest -rs`` lists them). A third-party
agent or world installed through an entry point shows up here too.
"""

import dataclasses

import pytest
import torch

from worldmodels import contract
from worldmodels.checks import check_agent, check_world
from worldmodels.interfaces import EnvInfo
from worldmodels.registry import AGENTS, WORLDS

ENV = EnvInfo(
    num_actions=4,
    obs_shape=(3, 64, 64),
    action_meanings=("NOOP", "FIRE", "RIGHT", "LEFT"),
    feature_dim=8,  # for agents that observe a world's features
)


# Sizes below the smoke preset's for agents whose smoke size is slow here (optional: an agent
# not listed runs at its smoke-preset size, or at its Config defaults).
@pytest.mark.parametrize("registry", [AGENTS, WORLDS], ids=lambda r: r.kind)
def test_every_component_has_a_frozen_config_and_a_name(registry):
    for name in registry.names():
        cls = registry.get(name)
        assert dataclasses.is_dataclass(cls.Config)
        assert cls.Config.__dataclass_params__.frozen, f"{name}.Config must be frozen"
        assert cls.registry_name == name


def _resolve(world=None, agent=None):
    from worldmodels import config as C

    # the test preset sizes every registered world and agent for the suite
    return C.resolve(env="Breakout", world=world, agent=agent, preset="test")


@pytest.mark.parametrize("name", AGENTS.names())
def test_every_agent_passes_check_agent(name):
    cfg = _resolve(agent=name)
    agent = AGENTS.get(name)(cfg.agent.config, ENV, seed=0)
    check_agent(agent, ENV)  # acts, seeds, checkpoints; trains in a small test world


def _smoke_world(name, channels_last=False):
    from worldmodels.build import build_world

    cfg = _resolve(world=name)
    return build_world(cfg.world, ENV, device=torch.device("cpu"), channels_last=channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", WORLDS.names())
def test_every_world_passes_check_world(name, channels_last):
    torch.manual_seed(0)
    check_world(_smoke_world(name, channels_last), ENV)


# Every agent in every world it can run in: "any agent trains in any world" is a test, not a claim.
@pytest.mark.parametrize("world_name", WORLDS.names())
@pytest.mark.parametrize("agent_name", AGENTS.names())
def test_every_agent_trains_in_every_compatible_world(agent_name, world_name):
    from worldmodels.build import build_world_and_agent

    torch.manual_seed(0)
    cfg = _resolve(world=world_name, agent=agent_name)
    world, agent = build_world_and_agent(
        cfg.world, cfg.agent, ENV, seed=0, device=torch.device("cpu")
    )
    why = contract.incompatibility(agent, world)
    if why is not None:
        pytest.skip(why)
    env_info = dataclasses.replace(ENV, feature_dim=contract.feature_dim(world))
    # training in a simulated-capture dream once per agent (the dream's steps are audited for
    # every world in test_graphs.py)
    check_agent(agent, env_info, world=world.eval(), capture=world_name == "diffusion")
