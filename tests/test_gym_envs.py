"""gymnasium adapters (``worldmodels/gym_envs.py``) and rendering for SB3's ``VecVideoRecorder``:
``check_env`` on the single-env views of the real env and of a dream of every world, seeding,
same-step autoreset, gymnasium's ``RecordEpisodeStatistics``, videos of real and imagined games."""

import dataclasses
import sys
import types
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import RecordEpisodeStatistics
from gymnasium.wrappers.vector import RecordEpisodeStatistics as VectorRecordEpisodeStatistics
from stable_baselines3.common.vec_env import DummyVecEnv, VecVideoRecorder

from worldmodels import config as C
from worldmodels.envs.dream import DreamEnv
from worldmodels.envs.sb3_vec import DreamVecEnv
from worldmodels.envs.testing import BanditWorld, LinearFeatureWorld, random_store
from worldmodels.gym_envs import DreamVectorEnv, RealVectorEnv, SingleEnv
from worldmodels.interfaces import EnvInfo

SIZE = 64
ENV = EnvInfo(num_actions=4, obs_shape=(3, SIZE, SIZE), action_meanings=("NOOP", "FIRE", "RIGHT", "LEFT"))  # fmt: skip
WORLD_NAMES = ["diffusion", "iris", "vae"]
# What check_env may say about these envs: they have no registered spec (so it cannot remake them
# in other render modes), and a features dream's Box is unbounded (features are).
KNOWN_WARNINGS = ("not having a spec", "minimum value is -infinity", "maximum value is infinity")


def real_config(**overrides):
    """The test preset's protocol values for Breakout."""
    return dataclasses.replace(C.resolve(env="Breakout", preset="test").env, **overrides)


def world_dream(name, observes, *, num_envs=1, horizon=5):
    """A DreamEnv of the registered world ``name`` at the test preset's size, on random replay."""
    from worldmodels.build import build_world

    torch.manual_seed(0)
    choice = C.resolve(env="Breakout", world=name, preset="test").world
    world = build_world(choice, ENV, device=torch.device("cpu")).eval()
    store = random_store(num_episodes=3, length=12, obs_shape=ENV.obs_shape)
    return DreamEnv(world, store, num_envs=num_envs, horizon=horizon, device="cpu",
                    observes=observes)  # fmt: skip


def checked(env):
    """``check_env``, failing on any warning but the known ones."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    unexpected = [str(w.message) for w in caught if not any(k in str(w.message) for k in KNOWN_WARNINGS)]  # fmt: skip
    assert not unexpected, unexpected


def rollout(env, seed, steps=6):
    """Observations and rewards of ``steps`` fixed actions after ``reset(seed=seed)``."""
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for t in range(steps):
        obs, reward, terminated, truncated, _ = env.step(t % env.action_space.n)
        out += [obs, reward]
        if terminated or truncated:
            out.append(env.reset()[0])
    return out


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------ check_env


def test_real_single_env_passes_check_env_and_seeds():
    env = SingleEnv(RealVectorEnv(real_config(), 1, render_mode="rgb_array"))
    assert env.observation_space == gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(4)
    checked(env)
    assert same(rollout(env, 7), rollout(env, 7))
    # Breakout's first frames do not show the no-op start; its length does, and follows the seed
    starts = [env.reset(seed=s)[1]["episode_frame"] for s in (1, 2, 3, 4, 1, 2, 3, 4)]
    assert starts[:4] == starts[4:] and len(set(starts)) > 1
    assert env.render().shape == (SIZE, SIZE, 3)
    env.close()


@pytest.mark.parametrize("observes", ["pixels", "features"])
@pytest.mark.parametrize("name", WORLD_NAMES)
def test_dream_single_env_of_every_world_passes_check_env_and_seeds(name, observes):
    dream = world_dream(name, observes)
    env = SingleEnv(DreamVectorEnv(dream, render_mode="rgb_array"))
    if observes == "features":
        assert env.observation_space.shape == (dream.world.feature_dim,)
        assert env.observation_space.dtype == np.float32
    else:
        assert env.observation_space == gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
    checked(env)
    assert same(rollout(env, 3), rollout(env, 3))
    assert not same(rollout(env, 3, steps=0), rollout(env, 4, steps=0))  # other contexts
    frame = env.render()
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8


# ---------------------------------------------------------------------------- vector semantics


@pytest.mark.parametrize("channels_first", [False, True])
def test_real_vector_env_autoresets_in_the_same_step(channels_first):
    # a 40-frame cap: every episode is truncated after 10 steps (unless a life is lost first)
    env = RealVectorEnv(real_config(max_episode_frames=40), 2, channels_first=channels_first)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    shape = (3, SIZE, SIZE) if channels_first else (SIZE, SIZE, 3)
    assert env.single_observation_space.shape == shape
    assert env.observation_space.shape == (2, *shape)
    obs, info = env.reset(seed=1)
    assert obs.shape == (2, *shape) and obs.dtype == np.uint8
    assert info["lives"].tolist() == [5, 5]
    ended = 0
    for _ in range(12):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space and reward.dtype == np.float32
        done = terminated | truncated
        assert info["_final_obs"].tolist() == done.tolist()
        assert np.array_equal(info["final_obs"][~done], obs[~done])
        ended += int(done.sum())
    assert ended >= 2
    env.close()
    assert env.closed


def test_single_env_goes_on_with_the_game_after_a_life_loss():
    env = SingleEnv(RealVectorEnv(real_config(), 1, mode="train"))
    env.reset(seed=0)
    for _ in range(2000):
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert terminated and info["life_loss"] and not info["game_over"]
    obs2, info2 = env.reset()  # the next episode is the same game, one life down
    assert info2["lives"] == info["lives"] == 4 and info2["episode_frame"] > 0
    assert obs2 in env.observation_space
    env.close()


def test_dream_vector_env_autoresets_in_the_same_step():
    world = BanditWorld(obs_shape=(3, 8, 8), end_prob=0.3)
    dream = DreamEnv(world, random_store(obs_shape=(3, 8, 8)), num_envs=8, horizon=4, device="cpu")
    env = DreamVectorEnv(dream, channels_first=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (8, 3, 8, 8) and info == {}
    saw = 0
    for _ in range(6):
        prev = obs
        obs, reward, terminated, truncated, info = env.step(np.full(8, 1))
        assert np.array_equal(reward, np.ones(8, np.float32))  # BanditWorld rewards action 1
        done = terminated | truncated
        stepped = np.minimum(prev.astype(np.int16) + 1, 255).astype(np.uint8)
        assert np.array_equal(info["final_obs"], stepped)  # frames brighten by one per step
        assert np.array_equal(obs[~done], stepped[~done]) and info["_final_obs"].tolist() == done.tolist()  # fmt: skip
        saw += int(done.sum())
    assert saw > 0


def test_features_dream_renders_the_frames_of_its_current_states():
    world = LinearFeatureWorld(end_prob=0.3)
    dream = DreamEnv(world, random_store(obs_shape=world.obs_shape), num_envs=6, horizon=3,
                     device="cpu", observes="features")  # fmt: skip
    env = DreamVectorEnv(dream, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        expected = world.render(torch.from_numpy(obs)).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(np.stack(env.render()), expected)  # also rows that restarted
        obs, *_ = env.step(np.zeros(6, np.int64))


def test_bad_actions_and_render_modes_are_one_line_errors():
    dream = DreamEnv(BanditWorld(), random_store(), num_envs=2, horizon=3, device="cpu")
    env = DreamVectorEnv(dream)
    env.reset(seed=0)
    for bad in (np.array([0, 4]), np.array([0.5, 1.0]), np.array([1])):
        with pytest.raises(ValueError, match="actions must be"):
            env.step(bad)
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        env.render()
    with pytest.raises(ValueError, match="render_mode must be"):
        DreamVectorEnv(dream, render_mode="human")
    with pytest.raises(ValueError, match="num_envs=1"):
        SingleEnv(env)


# -------------------------------------------------------------------------------------- wrappers


def test_record_episode_statistics_on_the_single_and_vector_envs():
    # the real game: 40-frame cap, so each episode is at most 10 steps
    single = RecordEpisodeStatistics(SingleEnv(RealVectorEnv(real_config(max_episode_frames=40))))
    single.reset(seed=0)
    total, episodes = 0.0, []
    for _ in range(25):
        _, reward, terminated, truncated, info = single.step(single.action_space.sample())
        total += reward
        if terminated or truncated:
            episodes.append((info["episode"]["r"], info["episode"]["l"], total))
            total = 0.0
            single.reset()
    assert len(episodes) >= 2 and all(r == ret and 1 <= n <= 10 for r, n, ret in episodes)
    assert list(single.return_queue) == [r for r, _, _ in episodes]

    # a dream: every step of action 1 is rewarded, so an episode's return is its length
    dream = DreamEnv(BanditWorld(end_prob=0.2), random_store(), num_envs=4, horizon=5,
                     device="cpu")  # fmt: skip
    vec = VectorRecordEpisodeStatistics(DreamVectorEnv(dream))
    vec.reset(seed=0)
    for _ in range(12):
        *_, info = vec.step(np.ones(4, np.int64))
    assert len(vec.return_queue) > 4
    assert list(vec.return_queue) == list(map(float, vec.length_queue))
    assert all(1 <= n <= 5 for n in vec.length_queue)


def _moviepy(monkeypatch, written):
    """moviepy, or where it is not installed (SB3's recorder imports it to write the file), a
    stand-in ``ImageSequenceClip`` that saves the frames it is given as ``.npz`` at the video's
    path: the recorder's own logic (when to record, which frames) runs unchanged either way."""
    try:
        import moviepy  # noqa: F401

        return True
    except ImportError:
        pass

    class ImageSequenceClip:
        def __init__(self, frames, fps):
            self.frames, self.fps = np.stack(frames), fps

        def write_videofile(self, path):
            with open(path, "wb") as f:
                np.savez(f, frames=self.frames, fps=self.fps)
            written.append(path)

    root = types.ModuleType("moviepy")
    clip = types.ModuleType("moviepy.video.io.ImageSequenceClip")
    clip.ImageSequenceClip = ImageSequenceClip  # type: ignore[attr-defined]
    for name, module in {
        "moviepy": root,
        "moviepy.video": types.ModuleType("moviepy.video"),
        "moviepy.video.io": types.ModuleType("moviepy.video.io"),
        "moviepy.video.io.ImageSequenceClip": clip,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return False


@pytest.mark.parametrize("which", ["dream_pixels", "dream_features", "real"])
def test_vec_video_recorder_records_real_and_imagined_games(which, tmp_path, monkeypatch):
    written: list[str] = []
    real_moviepy = _moviepy(monkeypatch, written)
    if which == "real":
        config = real_config()
        venv = DummyVecEnv([lambda: SingleEnv(RealVectorEnv(config, render_mode="rgb_array"))])
        frame_shape, fps = (SIZE, SIZE, 3), 15
    else:
        observes = which.removeprefix("dream_")
        world = BanditWorld() if observes == "pixels" else LinearFeatureWorld()
        dream = DreamEnv(world, random_store(obs_shape=world.obs_shape), num_envs=2, horizon=3,
                         device="cpu", observes=observes)  # fmt: skip
        # a features dream renders only when asked (one decode per step)
        mode = "auto" if observes == "pixels" else "rgb_array"
        venv = DreamVecEnv(dream, render_mode=mode)
        assert venv.render_mode == "rgb_array"
        frame_shape, fps = (32, 16, 3), 15  # SB3 tiles the two 16 x 16 frames in a column
        venv.reset()
        images = venv.get_images()
        assert len(images) == 2 and all(i.shape == (16, 16, 3) for i in images)
    recorder = VecVideoRecorder(venv, str(tmp_path), lambda step: step == 0, video_length=5)
    recorder.reset()
    for _ in range(5):
        recorder.step(np.zeros(venv.num_envs, np.int64))
    recorder.close()
    video = tmp_path / "rl-video-step-0-to-step-5.mp4"
    assert video.is_file() and video.stat().st_size > 0
    if not real_moviepy:
        saved = np.load(video)
        assert saved["frames"].shape == (6, *frame_shape) and saved["frames"].dtype == np.uint8
        assert saved["fps"] == fps
        assert np.array_equal(saved["frames"][-1], venv.render())  # the frames SB3 renders
        assert written == [str(video)]


def test_features_dream_vec_env_does_not_render_unless_asked():
    world = LinearFeatureWorld()
    dream = DreamEnv(world, random_store(obs_shape=world.obs_shape), num_envs=2, horizon=3,
                     device="cpu", observes="features")  # fmt: skip
    venv = DreamVecEnv(dream)
    assert venv.render_mode is None and not dream.keep_frames
    venv.reset()
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        venv.get_images()
