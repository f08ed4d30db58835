"""``check_world`` / ``check_agent`` on broken fakes: each mistake is one line naming it.

The fakes start from the example world (which passes, tests/test_examples.py) and break one rule
each; the messages are what a user who wrote them from docs/worlds.md would read."""

import dataclasses
import functools

import pytest
import torch
from examples_inproc import load_example
from torch import nn

from worldmodels import contract
from worldmodels.agents.random import RandomAgent
from worldmodels.checks import check_agent, check_world
from worldmodels.contract import ContractError
from worldmodels.envs.testing import BanditWorld
from worldmodels.interfaces import EnvInfo
from worldmodels.nn.sampling import categorical_log_prob, sample_categorical
from worldmodels.registry import AGENTS
from worldmodels.training import StageTraining

ENV = EnvInfo(num_actions=4, obs_shape=(3, 16, 16))
LatentWorld = load_example("latent_world").LatentWorld
SMALL = LatentWorld.Config(channels=4, latent_dim=6, hidden=16)


def _fails(check, obj, *args, **kwargs):
    with pytest.raises(ContractError) as info:
        check(obj, *args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_the_unbroken_fake_passes():
    check_world(LatentWorld(SMALL, ENV), ENV)


class FloatFrames(LatentWorld):
    def imagine_step(self, state, action, *, render=True):
        state, obs, reward, end = super().imagine_step(state, action, render=render)
        return state, obs.float(), reward, end


class NoRender(LatentWorld):
    def imagine_step(self, state, action):
        return super().imagine_step(state, action)


class Unseeded(LatentWorld):
    """Draws its ends from a generator of its own that nothing reseeds."""

    def __init__(self, config, env_info):
        super().__init__(config, env_info)
        self.generator = torch.Generator().manual_seed(0)

    def imagine_step(self, state, action, *, render=True):
        state, obs, reward, _ = super().imagine_step(state, action, render=render)
        return state, obs, reward, torch.rand(action.shape[0], generator=self.generator) < 0.5


class Forgetful(LatentWorld):
    """Keeps a random offset outside its state_dict: a checkpoint loses it."""

    def __init__(self, config, env_info):
        super().__init__(config, env_info)
        self.register_buffer("offset", torch.randn(config.latent_dim), persistent=False)

    def imagine_step(self, state, action, *, render=True):
        state, obs, reward, end = super().imagine_step(state, action, render=render)
        return {"z": state["z"] + self.offset}, obs, reward, end


class ScalarReward(LatentWorld):
    def imagine_step(self, state, action, *, render=True):
        state, obs, reward, end = super().imagine_step(state, action, render=render)
        return state, obs, reward.sum(), end


class KeepsABuffer(LatentWorld):
    def __init__(self, config, env_info):
        super().__init__(config, env_info)
        self.register_buffer("z", torch.zeros(3, config.latent_dim))

    def imagine_step(self, state, action, *, render=True):
        state, obs, reward, end = super().imagine_step(state, action, render=render)
        self.z.copy_(state["z"])
        return {"z": self.z}, obs, reward, end


class HalfRefresh(LatentWorld):
    def imagine_refresh_due(self, state, steps):
        return steps % 2 == 1


class LazySwap(LatentWorld):
    """Restarts no row: finished rows go on from where they ended."""

    def imagine_swap_rows_(self, mask, spare, state):
        return state


class ReadsItsLoss(LatentWorld):
    """Declares graph_capture but reads its loss on the host (a sync inside a captured step)."""

    def stages(self):
        stage = super().stages()["model"]

        def loss(batch):
            loss, logs = stage.loss(batch)
            return loss, {**logs, "loss_value": loss.item()}

        return {"model": dataclasses.replace(stage, loss=loss)}


class CountsSteps(LatentWorld):
    """Declares graph_capture but scales its reward by a Python counter that a replay would not
    advance."""

    steps = 0

    def imagine_step(self, state, action, *, render=True):
        state, obs, reward, end = super().imagine_step(state, action, render=render)
        self.steps += 1
        return state, obs, reward * (1 + self.steps % 2), end


class DriftsUnderBf16(LatentWorld):
    """Under autocast its step returns the latent in another dtype than it was given."""

    def imagine_step(self, state, action, *, render=True):
        state, obs, reward, end = super().imagine_step(state, action, render=render)
        z = state["z"]
        if torch.is_autocast_enabled("cpu"):
            z = z.bfloat16() if z.dtype == torch.float32 else z.float()
        return {"z": z}, obs, reward, end


class NoStages(LatentWorld):
    def stages(self):
        return {}


@pytest.mark.parametrize(
    "world_cls, expected",
    [
        (FloatFrames, "imagine_step (render=True) returned obs of dtype float32, expected uint8 "
                      "(B, C, H, W)"),
        (NoRender, "imagine_step takes no `render=` keyword"),
        (Unseeded, "imagination is not deterministic under a seed"),
        (Forgetful, "a checkpoint round trip into a new Forgetful changes its imagination"),
        (ScalarReward, "returned a reward of shape (), expected (3,) (B,)"),
        (KeepsABuffer, "state['z'] is a parameter or buffer of the world"),
        (HalfRefresh, "has `imagine_refresh_due` but no `imagine_refresh`"),
        (NoStages, "stages() must return a non-empty dict"),
        (LazySwap, "imagine_swap_rows_ gives other trajectories than swapping every state entry "
                   "row-wise"),
        (ReadsItsLoss, "stage 'model': its training step under graphs='simulate' raised "
                       "NotCapturable: ReadsItsLoss's training step cannot be replayed as a CUDA "
                       "graph: aten::_local_scalar_dense reads a tensor's value on the host"),
        (CountsSteps, "imagination under graphs='simulate' raised NotCapturable: imagine_step "
                      "cannot be replayed as a CUDA graph: kernel"),
        (DriftsUnderBf16, "under bf16 autocast, imagine_step 1 returns state['z'] as "
                          "torch.float32, given torch.bfloat16: return the state in the dtypes it "
                          "came in"),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else "",
)  # fmt: skip
def test_a_broken_world_gets_one_line_naming_the_problem(world_cls, expected):
    message = _fails(check_world, world_cls(SMALL, ENV), ENV)
    assert message.startswith(f"world 'latent' ({world_cls.__name__}): ") or message.startswith(
        f"world 'latent' ({world_cls.__name__}) "
    ), message
    assert expected in message, message


def test_a_world_without_a_required_member_is_named():
    class NoStart(nn.Module):
        num_actions, obs_shape, context_len = 4, (3, 16, 16), 1

        def stages(self):
            return {}

        def imagine_step(self, state, action, *, render=True): ...

    message = _fails(check_world, NoStart(), ENV)
    assert message.startswith("world NoStart has no `imagine_start` (required: imagine_start("), (
        message
    )


def test_a_world_for_another_env_is_named():
    message = _fails(check_world, LatentWorld(SMALL, EnvInfo(3, (3, 16, 16))), ENV)
    assert message.endswith("num_actions is 3, env_info has 4"), message


def test_declared_capabilities_are_checked_for_their_kind():
    world = LatentWorld(SMALL, ENV)
    for attr, value, expected in [
        ("graph_capture", 1, "graph_capture must be True or a sentence saying why not, got 1"),
        ("schedule", "offline", "schedule must be 'online' or 'staged', got 'offline'"),
        ("feature_dim", 0, "feature_dim must be an int >= 1, got 0"),
    ]:
        setattr(world, attr, value)
        assert expected in _fails(check_world, world, ENV)
        delattr(world, attr)
    assert contract.capture_refusal(world) is None  # back to the class's own declaration
    world.graph_capture = "its cache grows"
    assert contract.capture_refusal(world) == "its cache grows"


def test_the_dream_env_names_a_world_without_render():
    from worldmodels.envs.dream import DreamEnv
    from worldmodels.envs.testing import random_store

    with pytest.raises(ContractError, match=r"imagine_step takes no `render=` keyword"):
        DreamEnv(NoRender(SMALL, ENV), random_store(), num_envs=2, horizon=2, device="cpu")


# ---------------------------------------------------------------------------- agents


class IntActions(RandomAgent):
    def act(self, obs, state, first, *, greedy=False):
        actions, state = super().act(obs, state, first, greedy=greedy)
        return actions.int(), state


class OutOfRange(RandomAgent):
    def act(self, obs, state, first, *, greedy=False):
        actions, state = super().act(obs, state, first, greedy=greedy)
        return actions + 4, state


class GlobalRNG(RandomAgent):
    """Draws from torch's global RNG, which its seed does not set."""

    def act(self, obs, state, first, *, greedy=False):
        return torch.randint(self.num_actions, (obs.shape[0],)), state


class ContextOnFeatures(RandomAgent):
    observes = "features"
    uses_context = True


class TrainsWithoutADream(RandomAgent):
    @dataclasses.dataclass(frozen=True)
    class Config:
        training: object = dataclasses.field(default_factory=lambda: RandomAgent.Config())


class LearnsNothing(RandomAgent):
    """Declares training in imagination, and does none."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        num_envs: int = 2
        horizon: int = 2
        training: StageTraining = dataclasses.field(default_factory=StageTraining)


@pytest.mark.parametrize(
    "agent_cls, expected",
    [
        (IntActions, "act returned actions of dtype int32, expected int64 (B,)"),
        (OutOfRange, "act returned actions outside [0, 4)"),
        (GlobalRNG, "two agents built with seed=0 act differently"),
        (ContextOnFeatures, "declares uses_context = True but observes features"),
        (TrainsWithoutADream, "its config has `training` but no `num_envs`"),
        (
            LearnsNothing,
            "has config.training, but 3 calls of train_in_imagination changed no weight",
        ),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else "",
)
def test_a_broken_agent_gets_one_line_naming_the_problem(agent_cls, expected):
    agent = agent_cls(agent_cls.Config(), ENV)
    message = _fails(check_agent, agent, dataclasses.replace(ENV, feature_dim=6))
    assert message.startswith(f"agent 'random' ({agent_cls.__name__})"), message
    assert expected in message, message


def test_an_agent_without_observes_is_named():
    class Mute(nn.Module):
        def initial_state(self, n, device): ...
        def act(self, obs, state, first, *, greedy=False): ...
        def train_in_imagination(self, dream): ...

    assert _fails(check_agent, Mute(), ENV).startswith("agent Mute has no `observes`")


def test_pairs_that_cannot_work_say_why():
    from worldmodels.agents.cmaes import CMAESAgent

    cmaes = CMAESAgent(CMAESAgent.Config(), dataclasses.replace(ENV, feature_dim=6))
    why = contract.incompatibility(cmaes, BanditWorld(obs_shape=ENV.obs_shape))
    assert why == (
        "agent 'cmaes' (CMAESAgent) observes features, which world 'bandit' (BanditWorld) does "
        "not expose (no features or real_features)"
    )
    assert contract.incompatibility(cmaes, LatentWorld(SMALL, ENV)) is None
    assert contract.incompatibility(RandomAgent(RandomAgent.Config(), ENV), None) is None
    message = _fails(check_agent, cmaes, ENV, world=BanditWorld(obs_shape=ENV.obs_shape))
    assert "does not expose" in message


@pytest.mark.parametrize("name", AGENTS.names())
def test_every_agent_in_a_world_without_features_or_skipped_with_the_reason(name):
    """A world without features is no failure of the feature agents: the pair is skipped, and
    ``-rs`` lists the reason."""
    from test_conformance import _resolve

    env = EnvInfo(num_actions=4, obs_shape=(3, 64, 64), feature_dim=8)
    world = BanditWorld(obs_shape=env.obs_shape, end_prob=0.3)
    agent_cls = AGENTS.get(name)
    agent = agent_cls(_resolve(agent=name).agent.config, env, seed=0)
    why = contract.incompatibility(agent, world)
    if why is not None:
        assert contract.observes(agent) == "features"
        pytest.skip(why)
    check_agent(agent, dataclasses.replace(env, feature_dim=None), world=world)


def test_a_config_that_is_not_frozen_is_named():
    class Thawed(LatentWorld):
        @dataclasses.dataclass  # not frozen: a run's config could change under it
        class Config:
            width: int = 1

    message = _fails(check_world, Thawed(SMALL, ENV), ENV)
    assert message == (
        "world 'latent' (Thawed): its Config must be a frozen dataclass (@dataclass(frozen=True))"
    )


def test_the_checks_leave_what_they_check_as_it_was():
    """Training steps run on copies, acting on a copy, and torch's global RNG is restored."""
    from examples_inproc import load_example

    world = LatentWorld(SMALL, ENV)
    agent_cls = load_example("reinforce_agent").ReinforceLinearAgent
    env = dataclasses.replace(ENV, feature_dim=world.feature_dim)
    agent = agent_cls(agent_cls.Config(num_envs=2, horizon=3), env, seed=0)
    before = [_snapshot(world), _snapshot(agent), torch.random.get_rng_state()]
    check_world(world, ENV)
    check_agent(agent, env, world=world)
    after = [_snapshot(world), _snapshot(agent), torch.random.get_rng_state()]
    for a, b in zip(before[:2], after[:2], strict=True):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(before[2], after[2])
    assert world.training  # back in the mode it was in


def _snapshot(module):
    """Every tensor of its state_dict, and its generator's state where it has one."""
    state = module.state_dict()
    extra = state.pop("_extra_state", {}).get("generator")
    return [t.clone() for t in state.values()] + ([extra.clone()] if extra is not None else [])


def test_an_agent_whose_graphed_update_is_not_static_is_named():
    """Where the world's steps replay as CUDA graphs, ``check_agent`` trains once more in a
    simulated-capture dream: an update built with ``graphs=dream.graphs`` whose loss depends on a
    Python number that changes from update to update (which a replay would not see) is named,
    with the line."""
    from worldmodels.training import Updater

    base = load_example("reinforce_agent").ReinforceLinearAgent

    class Annealed(base):
        """Scales its loss by a Python float that shrinks every update."""

        scale = 1.0

        def train_in_imagination(self, dream):
            if self.updater is None:
                self.updater = Updater(self, self.config.training, torch.device("cpu"),
                                       graphs=dream.graphs)  # fmt: skip
            self.scale *= 0.5
            return self.updater.update(functools.partial(self.static_loss, dream), dream.contexts())

        def static_loss(self, dream, ctx):
            obs, _ = dream.reset(ctx)
            logps, rewards = [], []
            for _ in range(self.config.horizon):
                logits = self.policy(obs.float())
                action = sample_categorical(logits)
                obs, reward, _, _, _ = dream.step(action)
                logps.append(categorical_log_prob(logits, action))
                rewards.append(reward)
            returns = torch.stack(rewards, dim=1).flip(1).cumsum(1).flip(1)  # (B, T)
            loss = -(torch.stack(logps, dim=1) * (returns - returns.mean())).mean() * self.scale
            return loss, {"loss": loss.detach()}

    world = LatentWorld(SMALL, ENV)
    env = dataclasses.replace(ENV, feature_dim=world.feature_dim)
    cfg = base.Config(num_envs=4, horizon=5)
    check_agent(base(cfg, env, seed=0), env, world=world)  # the eager example agent passes
    message = _fails(check_agent, Annealed(cfg, env, seed=0), env, world=world)
    assert message.startswith(
        "agent 'reinforce_linear' (Annealed): train_in_imagination in a dream with "
        "graphs='simulate' raised "
        "NotCapturable: Annealed's training step cannot be replayed as a CUDA graph: kernel "
    ), message
    assert "(argument 1: 0.125 at capture, 0.0625 now) at tests/test_checks.py:" in message, message
