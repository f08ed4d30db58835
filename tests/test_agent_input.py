"""What agents see of the real game: an agent that ignores its observations runs no world."""

import torch

from worldmodels.agent_input import AgentInput
from worldmodels.agents.actor_critic import ActorCritic
from worldmodels.agents.random import RandomAgent
from worldmodels.envs.testing import BanditWorld
from worldmodels.interfaces import EnvInfo

ENV = EnvInfo(num_actions=4, obs_shape=(3, 16, 16))


class ViewedWorld(BanditWorld):
    """A world whose agent view counts its calls (IRIS's is a tokenizer round trip)."""

    def __init__(self):
        super().__init__(obs_shape=ENV.obs_shape)
        self.views = 0

    def agent_view(self, obs):
        self.views += 1
        return 255 - obs


def test_an_agent_that_ignores_its_input_costs_no_world_pass():
    world = ViewedWorld()
    obs = torch.randint(0, 256, (2, *ENV.obs_shape), dtype=torch.uint8)
    first = torch.ones(2, dtype=torch.bool)
    observer = AgentInput(RandomAgent(RandomAgent.Config(), ENV), world, "cpu")
    observer.reset(2)
    assert torch.equal(observer(obs, first), obs) and world.views == 0
    agent = ActorCritic(ActorCritic.Config(channels=(4,), lstm_dim=8), ENV)
    observer = AgentInput(agent, world, "cpu")
    observer.reset(2)
    assert torch.equal(observer(obs, first), 255 - obs) and world.views == 1
