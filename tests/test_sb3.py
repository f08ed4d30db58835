"""stable-baselines3 in imagination: ``DreamVecEnv`` against SB3's ``VecEnv`` contract, and the
``sb3_*`` agents (training changes and improves the policy, acting, checkpoints)."""

import copy
import warnings

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import _check_image_input, _check_unsupported_spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv

import worldmodels.agents.sb3  # noqa: F401  (registers sb3_ppo, sb3_a2c, sb3_dqn)
from worldmodels.agents.sb3 import SB3Agent
from worldmodels.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.envs.dream import DreamEnv
from worldmodels.envs.sb3_vec import DreamVecEnv
from worldmodels.envs.testing import BanditWorld, LinearFeatureWorld, random_store
from worldmodels.errors import UserError
from worldmodels.interfaces import Agent, EnvInfo
from worldmodels.registry import AGENTS
from worldmodels.seeding import seed_everything

PIXELS = (3, 36, 36)  # the smallest frames SB3's NatureCNN (CnnPolicy) takes
NAMES = ["sb3_ppo", "sb3_a2c", "sb3_dqn"]
SMALL = {  # SB3 settings sized for a test
    "PPO": {"n_steps": 8, "batch_size": 32, "n_epochs": 2},
    "A2C": {"n_steps": 4},
    "DQN": {"learning_starts": 0, "buffer_size": 1_000, "gradient_steps": 2},
}


class SeededLinearFeatureWorld(LinearFeatureWorld):
    """LinearFeatureWorld draws from its own generator: the optional ``reseed`` hook reaches it."""

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)


def bandit_dream(num_envs=4, horizon=3, end_prob=0.2, seed=0):
    world = BanditWorld(obs_shape=PIXELS, end_prob=end_prob)
    store = random_store(num_episodes=4, length=12, obs_shape=PIXELS, seed=seed)
    return DreamEnv(world, store, num_envs=num_envs, horizon=horizon, device="cpu", seed=seed)


def feature_dream(num_envs=4, horizon=3, seed=0):
    world = SeededLinearFeatureWorld(end_prob=0.2)
    store = random_store(num_episodes=4, length=12, obs_shape=world.obs_shape, seed=seed)
    return DreamEnv(world, store, num_envs=num_envs, horizon=horizon, device="cpu", seed=seed,
                    observes="features")  # fmt: skip


DREAMS = {"pixels": bandit_dream, "features": feature_dream}


# ------------------------------------------------------------------------------- VecEnv checker


def _spy_on(dream):
    """Record what every ``dream.step`` returned: the ground truth the adapter must convey."""
    calls = []
    step = dream.step

    def spy(action):
        out = step(action)
        calls.append(out)
        return out

    dream.step = spy
    return calls


def check_vec_env(venv: DreamVecEnv, steps: int = 24) -> None:
    """SB3's ``check_env`` for a ``VecEnv`` (``check_env`` only takes a single ``gym.Env``):
    spaces, dtypes and shapes, reset and step returns, same-step reset with
    ``terminal_observation`` on exactly the finished rows, ``TimeLimit.truncated``, no NaN/inf."""
    n = venv.num_envs
    assert isinstance(venv, VecEnv)
    obs_space, act_space = venv.observation_space, venv.action_space
    assert isinstance(obs_space, spaces.Box) and isinstance(act_space, spaces.Discrete)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3 reports unsupported spaces as warnings
        assert not _check_unsupported_spaces(venv, obs_space, act_space)
        if is_image_space(obs_space):
            _check_image_input(obs_space)
            # CnnPolicy takes channel-first frames as they are: SB3 adds no VecTransposeImage.
            assert is_image_space_channels_first(obs_space)
            assert PPO._wrap_env(venv) is venv
    # "auto": a pixels dream renders its frames (they are its observations), a features one not
    mode = "rgb_array" if venv.dream.observes == "pixels" else None
    assert venv.render_mode == mode and venv.get_attr("render_mode") == [mode] * n
    assert venv.env_is_wrapped(object) == [False] * n

    def check_obs(obs, what):
        assert isinstance(obs, np.ndarray), what
        assert obs.shape == (n, *obs_space.shape) and obs.dtype == obs_space.dtype, what
        assert all(obs_space.contains(o) for o in obs), what

    truth = _spy_on(venv.dream)
    checked = VecCheckNan(venv, raise_exception=True)  # NaN/inf in actions, obs or rewards
    check_obs(checked.reset(), "reset")
    saw_end = saw_trunc = False
    for _ in range(steps):
        actions = np.array([act_space.sample() for _ in range(n)])
        out = checked.step(actions)
        assert isinstance(out, tuple) and len(out) == 4
        obs, rew, dones, infos = out
        check_obs(obs, "step")
        assert isinstance(rew, np.ndarray) and rew.shape == (n,) and rew.dtype == np.float32
        assert isinstance(dones, np.ndarray) and dones.shape == (n,) and dones.dtype == np.bool_
        assert (
            isinstance(infos, list) and len(infos) == n and all(isinstance(i, dict) for i in infos)
        )
        t_obs, t_rew, t_end, t_trunc, t_info = truth[-1]
        np.testing.assert_array_equal(
            obs, t_obs.float().numpy() if obs.dtype != np.uint8 else t_obs
        )
        np.testing.assert_array_equal(rew, t_rew.numpy())
        np.testing.assert_array_equal(dones, (t_end | t_trunc).numpy())
        for i, info in enumerate(infos):
            # terminal_observation on exactly the finished rows, and it is the true last frame
            assert ("terminal_observation" in info) == bool(dones[i])
            assert info["TimeLimit.truncated"] == bool(t_trunc[i] and not t_end[i])
            if dones[i]:
                final = info["terminal_observation"]
                assert final.shape == obs_space.shape and final.dtype == obs_space.dtype
                np.testing.assert_array_equal(final, t_info["final_obs"][i].float().numpy())
        saw_end |= bool(t_end.any())
        saw_trunc |= bool(t_trunc.any())
    assert saw_end and saw_trunc, "the check should see both endings"


@pytest.mark.parametrize("observe", DREAMS)
def test_dream_vec_env_meets_the_vec_env_contract(observe):
    torch.manual_seed(0)
    venv = DreamVecEnv(DREAMS[observe]())
    if observe == "features":
        assert venv.observation_space == spaces.Box(-np.inf, np.inf, (6,), np.float32)
    else:
        assert venv.observation_space == spaces.Box(0, 255, PIXELS, np.uint8)
    check_vec_env(venv)


@pytest.mark.parametrize("observe", DREAMS)
def test_seeding_makes_resets_and_steps_reproducible(observe):
    venv = DreamVecEnv(DREAMS[observe]())
    actions = np.array([0, 1, 2, 1])

    def run(seed):
        assert venv.seed(seed) == [seed + i for i in range(4)]
        out = [venv.reset()]
        for _ in range(6):
            obs, rew, dones, _ = venv.step(actions)
            out += [obs, rew, dones]
        assert venv._seeds == [None] * 4  # a seed applies to one reset only
        return out

    first, again, other = run(7), run(7), run(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_terminal_observation_is_the_last_frame_of_the_trajectory():
    """BanditWorld brightens every frame by one level per step: the last frame of a trajectory
    is the previous observation + 1, and the row's new observation is a fresh context frame."""
    torch.manual_seed(0)
    venv = DreamVecEnv(bandit_dream(num_envs=6, horizon=4, end_prob=0.3))
    prev = venv.reset()
    done_rows = 0
    for _ in range(12):
        obs, _, dones, infos = venv.step(np.ones(6, dtype=np.int64))
        for i in range(6):
            brighter = np.minimum(prev[i].astype(np.int16) + 1, 255).astype(np.uint8)
            if dones[i]:
                np.testing.assert_array_equal(infos[i]["terminal_observation"], brighter)
                done_rows += 1
            else:
                np.testing.assert_array_equal(obs[i], brighter)
        prev = obs
    assert done_rows > 0


def test_one_device_to_host_copy_per_step(monkeypatch):
    venv = DreamVecEnv(bandit_dream())
    venv.dream.read_done_on_host = False  # as on an accelerator (a CPU reads it for free)
    counts: dict[str, int] = {}
    for name in ("cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    venv.reset()
    assert counts == {"cpu": 1, "numpy": 1}
    for _ in range(5):
        counts.clear()
        venv.step(np.array([0, 1, 2, 3]))
        assert counts == {"cpu": 1, "numpy": 1}, counts


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda_dream(num_envs=4, horizon=3):
    world = BanditWorld(obs_shape=PIXELS, end_prob=0.2)
    store = random_store(num_episodes=4, length=12, obs_shape=PIXELS)
    return DreamEnv(world, store, num_envs=num_envs, horizon=horizon, device="cuda")


@CUDA
def test_one_synchronisation_per_step_on_cuda():
    """CUDA reports every operation that makes the host wait for the GPU: a step makes one."""
    venv = DreamVecEnv(_cuda_dream())
    venv.reset()
    actions = np.array([0, 1, 2, 3])
    venv.step(actions)  # warm-up: one-off allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                venv.step(actions)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 3, [str(w.message) for w in caught]


@CUDA
@pytest.mark.parametrize("name", NAMES)
def test_agent_trains_and_acts_on_cuda(name):
    agent = make_agent(name).to("cuda")
    dream = _cuda_dream(num_envs=4, horizon=4)
    before = _weights(agent)
    agent.train_in_imagination(dream)
    after = agent.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
    obs, _ = dream.reset()
    with torch.inference_mode():
        actions, _ = agent.act(obs, None, torch.ones(4, dtype=torch.bool, device="cuda"))
    assert actions.device.type == "cuda" and actions.shape == (4,)


def test_attributes_are_shared_by_all_rows():
    venv = DreamVecEnv(bandit_dream())
    assert venv.get_attr("horizon") == [3] * 4 and venv.get_attr("num_actions", [1, 2]) == [4, 4]
    venv.set_attr("horizon", 5)
    assert venv.dream.horizon == 5
    assert venv.env_method("contexts", 2)[0].obs.shape[0] == 2
    with pytest.raises(ValueError, match="every row"):
        venv.set_attr("horizon", 2, indices=[0])
    with pytest.raises(AttributeError):
        venv.get_attr("no_such_attribute")


# ------------------------------------------------------------------------------- agents


def make_agent(name, observes="pixels", seed=0, num_envs=4, horizon=4, steps=64, **kwargs):
    cls = AGENTS.get(name)
    algorithm = cls.Config().algorithm
    cfg = cls.Config(
        policy="MlpPolicy" if observes == "features" else "CnnPolicy", observes=observes,
        num_envs=num_envs, horizon=horizon, steps_per_update=steps,
        kwargs={**SMALL[algorithm], **kwargs},
    )  # fmt: skip
    if observes == "features":
        env = EnvInfo(num_actions=3, obs_shape=(3, 16, 16), feature_dim=6)
    else:
        env = EnvInfo(num_actions=4, obs_shape=PIXELS)
    return cls(cfg, env, seed=seed)


def _weights(agent):
    return {k: v.clone() for k, v in agent.state_dict().items() if isinstance(v, torch.Tensor)}


def _check_acts(agent, obs):
    first = torch.ones(obs.shape[0], dtype=torch.bool)
    for greedy in (False, True):
        actions, state = agent.act(obs, agent.initial_state(obs.shape[0], "cpu"), first,
                                   greedy=greedy)  # fmt: skip
        assert state is None
        assert actions.shape == (obs.shape[0],) and actions.dtype == torch.int64
        assert int(actions.min()) >= 0 and int(actions.max()) < agent.num_actions


@pytest.mark.parametrize("observes", DREAMS)
@pytest.mark.parametrize("name", NAMES)
def test_agent_acts_trains_in_imagination_and_changes_its_weights(name, observes):
    torch.manual_seed(0)
    agent = make_agent(name, observes)
    assert isinstance(agent, Agent) and isinstance(agent, SB3Agent)
    assert agent.registry_name == name and agent.observes == observes
    dream = DREAMS[observes]()
    obs, _ = dream.reset()  # real-looking frames (or features) before any training
    with torch.inference_mode():
        _check_acts(agent, obs)
    before = _weights(agent)
    logs = agent.train_in_imagination(dream)
    assert logs and all(isinstance(v, float) for v in logs.values())
    assert logs["num_timesteps"] >= 64 and any(k.startswith("train/") for k in logs)
    after = agent.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items()), "no update happened"
    assert agent.model.env is None  # the agent keeps no reference to the dream
    with torch.inference_mode():
        _check_acts(agent, obs)


def _good_action_prob(agent, dream):
    obs, _ = dream.reset()
    with torch.no_grad():
        probs = agent.policy.get_distribution(obs).distribution.probs  # (B, A)
    return float(probs[:, dream.world.good_action].mean())


def test_ppo_learns_the_rewarded_action():
    seed_everything(0)
    agent = make_agent("sb3_ppo", num_envs=8, horizon=8, steps=128, n_steps=16, batch_size=64,
                       n_epochs=4, learning_rate=1e-3)  # fmt: skip
    dream = bandit_dream(num_envs=8, horizon=8, end_prob=0.1)
    start = _good_action_prob(agent, dream)
    assert abs(start - 0.25) < 0.05  # SB3 initialises the actor head near uniform
    for _ in range(24):  # 3072 imagined steps
        logs = agent.train_in_imagination(dream)
    assert _good_action_prob(agent, dream) > 0.7, logs  # uniform: 0.25
    actions, _ = agent.act(dream.reset()[0], None, torch.ones(8, dtype=torch.bool), greedy=True)
    assert torch.equal(actions, torch.ones(8, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_restores_the_policy_and_training_continues_identically(name, tmp_path):
    seed_everything(0)
    agent = make_agent(name, "features")
    agent.train_in_imagination(feature_dream())
    save_checkpoint(tmp_path, "c", modules={"agent": agent}, state={}, meta={})

    resumed = make_agent(name, "features", seed=99)
    assert any(not torch.equal(v, resumed.state_dict()[k]) for k, v in _weights(agent).items())
    load_checkpoint(tmp_path / "c", {"agent": resumed})
    assert resumed.policy is resumed.model.policy  # SB3 trains the module that was loaded
    for key, value in _weights(agent).items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert resumed.get_extra_state()["counters"] == agent.get_extra_state()["counters"]
    features = torch.randn(5, 6)
    first = torch.ones(5, dtype=torch.bool)
    assert torch.equal(agent.act(features, None, first)[0], resumed.act(features, None, first)[0])

    # One more call from the same global RNG state and the same dream: identical weights. (DQN's
    # replay buffer of imagined transitions is not checkpointed, so only on-policy ones match.)
    results = []
    for a in (agent, resumed):
        seed_everything(1)
        a.train_in_imagination(feature_dream(seed=1))
        results.append(_weights(a))
    if name != "sb3_dqn":
        for key, value in results[0].items():
            assert torch.equal(value, results[1][key]), key


def test_a_deep_copy_trains_without_touching_the_original():
    """The schedule times an update on ``copy.deepcopy((agent, dream))``."""
    agent = make_agent("sb3_a2c", "features")
    dream = feature_dream()
    before = _weights(agent)
    twin, twin_dream = copy.deepcopy((agent, dream))
    twin.train_in_imagination(twin_dream)
    assert all(torch.equal(v, agent.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, twin.state_dict()[k]) for k, v in before.items())


def test_config_mistakes_are_one_line_errors():
    cls = AGENTS.get("sb3_ppo")
    env = EnvInfo(num_actions=4, obs_shape=PIXELS, feature_dim=6)
    with pytest.raises(UserError, match="unknown SB3 algorithm 'SAC'.*A2C, DQN, PPO"):
        cls(cls.Config(algorithm="SAC"), env)
    with pytest.raises(UserError, match="use MlpPolicy"):
        cls(cls.Config(observes="features"), env)
    with pytest.raises(UserError, match="may not set device"):
        cls(cls.Config(kwargs={"device": "cuda"}), env)
    with pytest.raises(UserError, match="cannot build SB3 PPO.*no_such_argument"):
        cls(cls.Config(kwargs={"no_such_argument": 1}), env)
    agent = make_agent("sb3_ppo", num_envs=4)
    with pytest.raises(ValueError, match="num_envs=4"):
        agent.train_in_imagination(bandit_dream(num_envs=3))


def test_the_action_space_draws_repeat_from_the_seed_and_a_checkpoint(tmp_path):
    """SB3 samples the model's action space for its warm-up and exploration steps: seeded from the
    agent's seed (an unseeded gymnasium space seeds itself from the OS) and saved with it."""

    def draws(agent, n=32):
        return [int(agent.model.action_space.sample()) for _ in range(n)]

    a, b, c = (make_agent("sb3_dqn", "features", seed=s) for s in (7, 7, 8))
    first = draws(a)
    assert first == draws(b) and first != draws(c)
    save_checkpoint(tmp_path, "c", modules={"agent": a}, state={}, meta={})
    ahead = draws(a)
    resumed = make_agent("sb3_dqn", "features", seed=99)
    load_checkpoint(tmp_path / "c", {"agent": resumed})
    assert draws(resumed) == ahead
