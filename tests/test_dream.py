"""DreamEnv: shapes, dtypes, horizon truncation and same-step auto-reset, generic over worlds."""

import torch

from worldmodels.envs.dream import DreamEnv, where_rows
from worldmodels.envs.testing import BanditWorld, random_store


def make(num_envs=5, horizon=4, end_prob=0.0):
    world = BanditWorld(end_prob=end_prob)
    return DreamEnv(world, random_store(), num_envs=num_envs, horizon=horizon, device="cpu", seed=0)


def test_reset_and_step_shapes_and_dtypes():
    dream = make()
    obs, info = dream.reset()
    assert obs.shape == (5, 3, 16, 16) and obs.dtype == torch.uint8
    assert info["context_obs"].shape == (5, 3, 3, 16, 16)
    assert info["context_mask"][:, -1].all()  # the first observation is a real frame
    assert torch.equal(info["context_obs"][:, -1], obs)
    obs2, rew, term, trunc, info = dream.step(torch.ones(5, dtype=torch.long))
    assert obs2.shape == obs.shape and obs2.dtype == torch.uint8
    assert rew.shape == (5,) and rew.dtype == torch.float32 and torch.equal(rew, torch.ones(5))
    assert term.dtype == torch.bool and trunc.dtype == torch.bool
    assert info["final_obs"].shape == obs.shape
    assert not obs2.is_inference()  # usable in an agent's autograd graph


def test_horizon_truncates_and_rows_restart_from_their_spares():
    dream = make(horizon=3)
    obs, info = dream.reset()
    for t in range(3):
        prev = obs
        obs, rew, term, trunc, info = dream.step(torch.zeros(5, dtype=torch.long))
        assert not term.any()
        assert trunc.all() == (t == 2) and (trunc.any() == (t == 2))
    # the last frame of each trajectory is in final_obs; obs restarts from the spare context
    assert torch.equal(info["final_obs"], (prev.to(torch.int16) + 1).clamp(max=255).to(torch.uint8))
    spare_first = dream._spare_obs
    assert torch.equal(obs, spare_first)
    obs, *_ = dream.step(torch.zeros(5, dtype=torch.long))  # the restarted rows go on
    assert torch.equal(obs, (spare_first.to(torch.int16) + 1).clamp(max=255).to(torch.uint8))


def test_terminated_rows_restart_immediately_others_continue():
    torch.manual_seed(0)
    dream = make(num_envs=64, horizon=100, end_prob=0.3)
    obs, _ = dream.reset()
    prev = obs
    obs, rew, term, trunc, info = dream.step(torch.zeros(64, dtype=torch.long))
    assert term.any() and not term.all() and not trunc.any()
    stepped = (prev.to(torch.int16) + 1).clamp(max=255).to(torch.uint8)
    assert torch.equal(info["final_obs"], stepped)  # every row's last frame
    assert torch.equal(obs[~term], stepped[~term])  # running rows continue
    assert torch.equal(obs[term], dream._spare_obs[term])  # finished rows restart


def test_reading_done_on_the_host_changes_nothing():
    """The CPU shortcut (no row swap when no row finished) gives the same trajectories."""
    runs = []
    for read in (True, False):
        torch.manual_seed(0)
        dream = make(num_envs=16, horizon=5, end_prob=0.1)
        dream.read_done_on_host = read
        frames = [dream.reset()[0]]
        for t in range(12):
            obs, rew, term, trunc, info = dream.step(torch.full((16,), t % 4, dtype=torch.long))
            frames += [obs, rew, term, trunc, info["final_obs"]]
        runs.append(frames)
    assert any(x.any() for x in runs[0][3::5])  # some rows ended early
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_where_rows_selects_per_row():
    a = {"x": torch.zeros(3, 2), "y": torch.zeros(3, dtype=torch.long)}
    b = {"x": torch.ones(3, 2), "y": torch.ones(3, dtype=torch.long)}
    out = where_rows(torch.tensor([True, False, True]), a, b)
    assert out["x"][:, 0].tolist() == [0, 1, 0] and out["y"].tolist() == [0, 1, 0]


def test_where_rows_keeps_shared_scalars_of_the_running_state():
    a = {"x": torch.zeros(2), "fill": 3}
    b = {"x": torch.ones(2), "fill": 7}
    out = where_rows(torch.tensor([True, False]), a, b)
    assert out["x"].tolist() == [0, 1] and out["fill"] == 7
