"""The real Atari env (``envs/atari.py``): protocol behaviour of both backends, on CPU, in seconds.

Breakout has lives (5) and ends a random game in a few hundred steps; Pong has no lives.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from worldmodels.envs.atari import (
    ATARI100K_GAMES,
    AtariVecEnv,
    all_games,
    make_atari_env,
    resolve_game,
)
from worldmodels.envs.atari_config import AtariConfig
from worldmodels.errors import UserError

MACHADO = AtariConfig(
    protocol="machado", sticky_action_prob=0.25, full_action_space=True, noop_max=0,
    life_loss_terminal=False,
)  # fmt: skip


def play(env: AtariVecEnv, steps: int, seed: int = 0, actions: np.ndarray | None = None) -> dict:
    """Reset with ``seed`` and play ``steps`` steps of ``actions`` (T, N) (random if None);
    return every output stacked over time (index 0 of the step outputs is step 1)."""
    if actions is None:
        actions = np.random.default_rng(seed).integers(0, env.num_actions, (steps, env.num_envs))
    obs, info = env.reset(seed=seed)
    out = {"obs0": obs, "lives0": info["lives"], "frame0": info["episode_frame"]}
    rows = []
    for t in range(steps):
        obs, rew, term, trunc, info = env.step(actions[t])
        rows.append({"obs": obs, "rew": rew, "term": term, "trunc": trunc, **info})
    for key in rows[0]:
        out[key] = torch.stack([r[key] for r in rows])
    return out


def make(num_envs: int = 2, mode: str = "train", **overrides) -> AtariVecEnv:
    return make_atari_env(dataclasses.replace(AtariConfig(), **overrides), num_envs, mode)


# ----------------------------------------------------------------------------------- game names


@pytest.mark.parametrize(
    "spelling, expected",
    [
        ("Breakout", ("Breakout", "breakout")),
        ("breakout", ("Breakout", "breakout")),
        ("MsPacman", ("MsPacman", "ms_pacman")),
        ("ms_pacman", ("MsPacman", "ms_pacman")),
        ("Jamesbond", ("Jamesbond", "jamesbond")),
        ("JamesBond", ("Jamesbond", "jamesbond")),
        ("up_n_down", ("UpNDown", "up_n_down")),
        ("UpNDown", ("UpNDown", "up_n_down")),
        ("ALE/Breakout-v5", ("Breakout", "breakout")),
        ("BreakoutNoFrameskip-v4", ("Breakout", "breakout")),
        ("MontezumaRevengeNoFrameskip-v4", ("MontezumaRevenge", "montezuma_revenge")),
        ("space invaders", ("SpaceInvaders", "space_invaders")),
    ],
)
def test_resolve_game_spellings(spelling, expected):
    assert resolve_game(spelling) == expected


def test_game_lists():
    assert len(ATARI100K_GAMES) == 26 and "UpNDown" in ATARI100K_GAMES
    games = all_games()
    assert len(games) == 108 and len(set(games)) == 108
    assert set(ATARI100K_GAMES) <= set(games)
    for game in games:  # every listed name resolves to itself
        assert resolve_game(game)[0] == game


@pytest.mark.parametrize("name", ["Foo", "Breakout-ram-v5", "", "ALE/"])
def test_resolve_game_rejects_unknown(name):
    with pytest.raises(UserError) as err:
        resolve_game(name)
    message = str(err.value)
    assert f"unknown Atari game {name!r}" in message
    assert "\n" not in message and len(message) < 400
    assert "Breakout" in message and "UpNDown" in message and "any ALE ROM" in message
    with pytest.raises(UserError):
        make(1, game=name)


# ------------------------------------------------------------------ one recorded Breakout game


@pytest.fixture(scope="module")
def breakout():
    """Breakout, Atari-100k protocol, 2 envs, the same seed and actions in train and test mode."""
    runs = {}
    for mode in ("train", "test"):
        with make(2, mode) as env:
            runs[mode] = play(env, 650, seed=0)
    return runs


def test_shapes_and_dtypes(breakout):
    run = breakout["train"]
    assert run["obs0"].shape == (2, 3, 64, 64) and run["obs0"].dtype == torch.uint8
    assert run["obs"].shape == (650, 2, 3, 64, 64) and run["obs"].dtype == torch.uint8
    assert run["final_obs"].shape == run["obs"].shape and run["final_obs"].dtype == torch.uint8
    assert run["rew"].dtype == torch.float32
    for key in ("term", "trunc", "life_loss", "game_over"):
        assert run[key].dtype == torch.bool
    assert run["lives"].dtype == torch.int32 and run["episode_frame"].dtype == torch.int64
    assert run["obs"].float().std() > 10  # real frames, not blank


def test_frames_advance_frame_skip_and_no_reset_step(breakout):
    """Every step plays exactly frame_skip frames of the action: an episode that ends is replaced
    by the next one's first obs in the same step, so no later step is a reset step."""
    run = breakout["train"]
    frames = torch.cat([run["frame0"][None], run["episode_frame"]])  # (T + 1, N)
    new_game = run["game_over"] | run["trunc"]
    advanced = frames[1:] - frames[:-1]
    assert (advanced[~new_game] == 4).all()
    assert (frames[1:][new_game] <= 30).all()  # only the next game's no-op start
    assert new_game.any()


def test_life_loss_ends_train_episode_but_game_goes_on(breakout):
    run = breakout["train"]
    lives = torch.cat([run["lives0"][None], run["lives"]])
    frames = torch.cat([run["frame0"][None], run["episode_frame"]])
    loss = run["life_loss"]
    assert loss.sum() >= 4
    assert torch.equal(run["term"], run["game_over"] | loss)
    assert not (loss & run["game_over"]).any() and not (loss & run["trunc"]).any()
    t, i = torch.nonzero(loss, as_tuple=True)
    assert (lives[t + 1, i] == lives[t, i] - 1).all()  # lives go down across these episodes
    assert (frames[t + 1, i] == frames[t, i] + 4).all()  # no reset, no no-ops
    assert torch.equal(run["final_obs"][t, i], run["obs"][t, i])
    # a real game over: the next game starts with 5 lives
    t, i = torch.nonzero(run["game_over"], as_tuple=True)
    assert len(t) >= 2 and (run["lives"][t, i] == 5).all() and run["term"][t, i].all()


def test_game_over_same_step_reset(breakout):
    run = breakout["test"]
    t, i = torch.nonzero(run["game_over"], as_tuple=True)
    assert len(t) >= 2
    for step, env in zip(t.tolist(), i.tolist(), strict=True):
        final, first = run["final_obs"][step, env], run["obs"][step, env]
        assert not torch.equal(final, first)
        assert run["lives"][step, env] == 5 and not run["trunc"][step, env]
    done = run["term"] | run["trunc"]
    assert torch.equal(run["final_obs"][~done], run["obs"][~done])


def test_test_mode_plays_through_life_losses(breakout):
    train, test = breakout["train"], breakout["test"]
    # the mode changes the episode boundaries, not the game
    assert torch.equal(train["obs"], test["obs"]) and torch.equal(train["rew"], test["rew"])
    assert torch.equal(train["life_loss"], test["life_loss"])
    assert test["life_loss"].any() and not (test["term"] & test["life_loss"]).any()
    assert torch.equal(test["term"], test["game_over"])


def test_noop_starts_vary_in_raw_frames():
    with make(8, noop_max=30) as env:
        # an unseeded reset continues each env's seeded stream (and skips the ROM reload)
        a, b, c, d = (env.reset(seed=s)[1]["episode_frame"] for s in (0, None, 0, None))
    assert torch.equal(a, c) and torch.equal(b, d)  # seeded
    starts = torch.cat([a, b])
    assert ((starts >= 0) & (starts <= 30)).all()
    assert len(starts.unique()) >= 6  # varies across envs and resets
    assert (starts % 4 != 0).any()  # counted in raw frames, not agent steps of 4
    with make(4, noop_max=2) as env:  # the range is [0, noop_max], both ends included
        env.reset(seed=0)
        draws = torch.cat([env.reset()[1]["episode_frame"] for _ in range(6)])
    assert set(draws.tolist()) == {0, 1, 2}


def test_noop_starts_at_each_game_reset(breakout):
    run = breakout["test"]
    starts = run["episode_frame"][run["game_over"]]
    assert len(starts) >= 2 and ((starts >= 0) & (starts <= 30)).all()
    assert len(starts.unique()) > 1


@pytest.mark.parametrize("backend", ["vector", "python"])
@pytest.mark.parametrize("frame_skip, cap, step", [(4, 100, 25), (5, 100, 20)])
def test_truncation_at_frame_cap(backend, frame_skip, cap, step):
    with make(
        1, "test", backend=backend, frame_skip=frame_skip, max_episode_frames=cap, noop_max=0
    ) as env:
        run = play(env, 2 * step, actions=np.zeros((2 * step, 1), np.int64))
    trunc = run["trunc"][:, 0]
    assert torch.nonzero(trunc).flatten().tolist() == [step - 1, 2 * step - 1]
    assert not run["term"].any() and not run["game_over"].any()
    assert run["episode_frame"][step - 2, 0] == cap - frame_skip
    assert run["episode_frame"][step - 1, 0] == 0  # a new game (no no-ops)


def test_action_sets():
    with make(1, full_action_space=True) as env:
        assert env.num_actions == 18 and len(env.action_meanings) == 18
    with make(1, backend="python") as env:
        assert env.action_meanings == ("NOOP", "FIRE", "RIGHT", "LEFT")
        assert env.num_actions == 4
    with make(1, game="Pong", full_action_space=True, backend="python") as env:
        assert env.num_actions == 18 and env.action_meanings[0] == "NOOP"


def test_no_sticky_actions_under_atari100k():
    """Two envs with different seeds and the same actions see the same game, unless sticky."""
    actions = np.random.default_rng(1).integers(0, 4, 200).repeat(2).reshape(200, 2)
    with make(2, noop_max=0) as env:
        run = play(env, 200, seed=5, actions=actions)
    assert torch.equal(run["obs"][:, 0], run["obs"][:, 1])
    with make(2, noop_max=0, sticky_action_prob=0.25) as env:
        run = play(env, 200, seed=5, actions=actions)
    assert not torch.equal(run["obs"][:, 0], run["obs"][:, 1])


@pytest.mark.parametrize("backend", ["vector", "python"])
def test_seeded_determinism(backend):
    config = dataclasses.replace(MACHADO, noop_max=30, backend=backend)  # sticky + no-ops
    with make_atari_env(config, 2, "train") as env:
        a, b = play(env, 150, seed=3), play(env, 150, seed=3)
        c = play(env, 150, seed=4)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["obs"], c["obs"])


@pytest.mark.parametrize(
    "config",
    # Breakout: life losses and game overs; Pong (always moving) cut by a cap on the 3rd frame of
    # a step, where the last frame is not read: final_obs must match there too.
    [AtariConfig(), dataclasses.replace(MACHADO, game="Pong", max_episode_frames=231)],
    ids=["atari100k", "machado-capped"],
)
def test_backends_agree(config):
    """Measured: the Python loop reproduces the C++ env exactly (frames, final frames, rewards,
    flags), no-op starts and sticky actions included, given the same seed and actions."""
    runs = {}
    for backend in ("vector", "python"):
        with make_atari_env(dataclasses.replace(config, backend=backend), 2, "train") as env:
            assert env.backend == backend
            runs[backend] = play(env, 300, seed=11)
    assert (runs["vector"]["term"] | runs["vector"]["trunc"]).any()
    for key in runs["vector"]:
        assert torch.equal(runs["vector"][key], runs["python"][key]), key


def test_resize_then_max_needs_python():
    with pytest.raises(UserError, match="resize_then_max"):
        make(1, backend="vector", pool_order="resize_then_max")
    iris = make(2, pool_order="resize_then_max")
    diamond = make(2, backend="python")
    assert iris.backend == "python"
    with make(2, max_pool=False) as no_pool:
        assert no_pool.backend == "vector"
    with make(1) as single:
        assert single.backend == "python"  # one game: the Python loop is faster
    with iris, diamond:
        a, b = play(iris, 100, seed=2), play(diamond, 100, seed=2)
    assert torch.equal(a["rew"], b["rew"])  # the same game
    diff = (a["obs"].float() - b["obs"].float()).abs()
    assert diff.max() > 0 and diff.mean() < 2.0  # pooled in another order, nearly the same


def test_rewards_are_raw():
    with make(1, game="MsPacman", noop_max=0) as env:  # pellets are worth 10 points
        run = play(env, 120, seed=0)
    assert run["rew"].max() >= 10


def test_pong_has_no_lives():
    with make(1, game="Pong") as env:
        run = play(env, 100, seed=0)
    assert (run["lives"] == 0).all() and not run["life_loss"].any() and not run["term"].any()


def test_spec_records_the_protocol():
    config = AtariConfig(game="ms_pacman")
    with make_atari_env(config, 1, "test") as env:
        spec = env.spec()
        assert env.game == "MsPacman"
    json.dumps(spec)
    for field in dataclasses.fields(AtariConfig):
        assert field.name in spec
    assert spec["game"] == "MsPacman" and spec["rom"] == "ms_pacman" and spec["mode"] == "test"
    assert spec["backend"] == "python" and spec["backend_requested"] == "auto"  # one game
    assert (
        spec["versions"]["ale_py"] and spec["versions"]["gymnasium"] and spec["versions"]["opencv"]
    )
    assert spec["life_loss_terminal_effective"] is False and spec["autoreset"] == "same-step"
    assert spec["num_actions"] == len(spec["action_meanings"]) == 9
    with make(1, backend="python") as env:
        assert env.spec()["life_loss_terminal_effective"] is True


def test_bad_inputs():
    with make(2, backend="python") as env:
        with pytest.raises(RuntimeError, match="before reset"):
            env.step(np.zeros(2, np.int64))
        env.reset(seed=0)
        env.step(torch.tensor([0, 1]))
        env.step(np.array([3, 2], np.int32))
        with pytest.raises(ValueError):
            env.step(np.zeros(3, np.int64))
        with pytest.raises(ValueError):
            env.step(np.array([0, 4]))
        with pytest.raises(ValueError):
            env.step(np.array([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()
    with pytest.raises(UserError, match="mode"):
        make(1, "eval")
    with pytest.raises(ValueError, match="frame_skip must be >= 1"):  # AtariConfig checks itself
        make(1, frame_skip=0)
