"""Open-loop comparison of worlds: PSNR / SSIM against closed forms and a slow reference, real
segments recorded with the Batch row convention, fake worlds with known answers (a perfect one and
a noisy one) logged and written, and ``evaluate.py --compare`` on two real tiny runs."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from tb_read import read_events
from test_cli import ROOT, run

from envs.testing import random_store
from worldmodels.compare import (
    PSNR_CAP_DB,
    compare_worlds,
    format_comparison,
    log_comparison,
    psnr,
    record_segments,
    ssim,
    write_comparison,
)
from worldmodels.interfaces import Batch
from worldmodels.tb import TBLogger

# ---------------------------------------------------------------------------- metrics


def slow_ssim(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """SSIM of one (C, H, W) pair in [0, 1], window by window (Wang et al. 2004)."""
    k = np.arange(win) - (win - 1) / 2
    g = np.exp(-(k**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for a, b in zip(x, y, strict=True):
        vals = []
        for i in range(a.shape[0] - win + 1):
            for j in range(a.shape[1] - win + 1):
                pa, pb = a[i : i + win, j : j + win], b[i : i + win, j : j + win]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va = (w * (pa - ma) ** 2).sum()
                vb = (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                vals.append(
                    ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
                )
        per_channel.append(np.mean(vals))
    return float(np.mean(per_channel))


def test_ssim_of_identical_images_is_one():
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(ssim(x, x), torch.ones(4, dtype=torch.float64))
    assert float(ssim(x, 1 - x).max()) < 0.5


def test_ssim_matches_a_slow_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 14, 13, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    fast = ssim(x, y)
    assert fast.shape == (2,)
    for i in range(2):
        assert float(fast[i]) == pytest.approx(slow_ssim(x[i].numpy(), y[i].numpy()), abs=1e-10)
    # leading dims are kept: (N, T, C, H, W) -> (N, T)
    assert ssim(x[None].expand(3, -1, -1, -1, -1), y[None].expand(3, -1, -1, -1, -1)).shape == (
        3,
        2,
    )


def test_psnr_closed_form_and_cap():
    x = torch.zeros(2, 3, 8, 8)
    y = x + 0.1  # MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 20.0, dtype=torch.float64))
    z = x.clone()
    z[1, 0, 0, 0] = 1.0  # one pixel of 192 off by 1: MSE 1/192
    assert float(psnr(x, z)[1]) == pytest.approx(10 * math.log10(192))
    assert float(psnr(x, z)[0]) == PSNR_CAP_DB  # identical: capped, not inf


# ---------------------------------------------------------------------------- real segments


class CounterEnv:
    """A vector env whose frames encode (game, step): pixel [0, 0, 0] the game's serial number,
    [1, 0, 0] the step within the game. Reward = the action; a life is lost every 5 steps; game
    ``k`` ends after ``9 + 3 * (k % 4)`` steps."""

    num_actions = 4

    def __init__(self, num_envs):
        self.num_envs = num_envs
        self.serial = 0

    def _new_game(self):
        self.serial += 1
        return self.serial

    def _frames(self):
        f = np.zeros((self.num_envs, 3, 4, 4), dtype=np.uint8)
        f[:, 0, 0, 0] = self.game
        f[:, 1, 0, 0] = self.t
        return f

    def reset(self, seed=None):
        self.game = np.array([self._new_game() for _ in range(self.num_envs)])
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        return torch.from_numpy(self._frames()), {}

    def step(self, actions):
        self.t += 1
        final = self._frames()
        over = self.t >= 9 + 3 * (self.game % 4)
        life_loss = (self.t % 5 == 0) & ~over
        for i in np.flatnonzero(over):
            self.game[i], self.t[i] = self._new_game(), 0
        info = {
            "final_obs": torch.from_numpy(final),
            "life_loss": torch.from_numpy(life_loss),
        }
        rew = torch.as_tensor(np.asarray(actions), dtype=torch.float32)
        return (
            torch.from_numpy(self._frames()),
            rew,
            torch.from_numpy(over),
            torch.zeros(self.num_envs, dtype=torch.bool),
            info,
        )


@pytest.mark.parametrize("life_loss_ends", [True, False])
def test_recorded_segments_follow_the_row_convention(life_loss_ends):
    seg = record_segments(CounterEnv(3), 20, 6, seed=0, life_loss_ends=life_loss_ends, max_skip=3)
    assert seg.obs.shape == (20, 6, 3, 4, 4) and seg.act.shape == seg.rew.shape == (20, 6)
    assert bool(seg.mask.all()) and not bool(seg.trunc.any())
    game, t = seg.obs[:, :, 0, 0, 0].long(), seg.obs[:, :, 1, 0, 0].long()
    assert bool((game == game[:, :1]).all())  # never two games in one segment
    assert bool((t[:, 1:] == t[:, :-1] + 1).all())  # consecutive frames
    assert torch.equal(seg.rew[:, :-1], seg.act[:, :-1].float())  # act[t] earned rew[t]
    over = t[:, 1:] == 9 + 3 * (game[:, 1:] % 4)  # the transition t -> t + 1 ended the game
    life = (t[:, 1:] % 5 == 0) & ~over
    assert torch.equal(seg.end[:, :-1], over | (life & life_loss_ends))
    assert bool(over[:, -1].any())  # some segments close on a game's final frame
    assert len({tuple(s) for s in torch.stack((game[:, 0], t[:, 0]), 1).tolist()}) == 20


# ---------------------------------------------------------------------------- fake worlds


class PerfectWorld(torch.nn.Module):
    """Knows the real data: finds its context in the segments and replays what followed."""

    def __init__(self, segments, context_len):
        super().__init__()
        self.seg = segments
        self.context_len = context_len
        self.where = {}
        n, length = segments.obs.shape[:2]
        for b in range(n):
            for t in range(length):
                self.where[segments.obs[b, t].numpy().tobytes()] = (b, t)

    def imagine_start(self, obs, act, mask):
        assert obs.shape[1] == self.context_len
        pos = [self.where[o.numpy().tobytes()] for o in obs[:, -1]]
        for i, (b, t) in enumerate(pos):  # the whole context is the real one
            assert torch.equal(obs[i], self.seg.obs[b, t - self.context_len + 1 : t + 1])
        b, t = (torch.tensor(v) for v in zip(*pos, strict=True))
        return {"b": b, "t": t}, obs[:, -1]

    def imagine_step(self, state, action, *, render=True):
        b, t = state["b"], state["t"]
        assert torch.equal(action, self.seg.act[b, t])  # the recorded action
        nxt = {"b": b, "t": t + 1}
        return nxt, self.seg.obs[b, t + 1], self.seg.rew[b, t], self.seg.end[b, t]


class NoiseWorld(torch.nn.Module):
    def __init__(self, context_len):
        super().__init__()
        self.context_len = context_len

    def imagine_start(self, obs, act, mask):
        return {}, obs[:, -1]

    def imagine_step(self, state, action, *, render=True):
        b = action.shape[0]
        frame = torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8)
        return state, frame, torch.randint(-1, 2, (b,)).float(), torch.rand(b) < 0.5


def _segments(horizon, context, n=5):
    """The first ``context + horizon`` rows of ``n`` random episodes (distinct: the perfect world
    finds its place by frame), with random ends."""
    store = random_store(num_episodes=n, length=60, obs_shape=(3, 16, 16), reward_prob=0.4)
    length = context + horizon
    assert min(store.lengths()) >= length
    eps = [store[e] for e in range(n)]
    end = torch.from_numpy(np.random.default_rng(1).random((n, length)) < 0.2)
    return Batch(
        obs=torch.from_numpy(np.stack([e.obs[:length] for e in eps])),
        act=torch.from_numpy(np.stack([e.act[:length] for e in eps])),
        rew=torch.from_numpy(np.stack([e.rew[:length] for e in eps])),
        end=end,
        trunc=torch.zeros(n, length, dtype=torch.bool),
        mask=torch.ones(n, length, dtype=torch.bool),
    )


def test_compare_fake_worlds_scores_logs_and_files(tmp_path):
    horizon = 6
    seg = _segments(horizon, context=4)
    worlds = {
        "perfect_long": PerfectWorld(seg, 4),  # the longest context sets where imagination starts
        "noise": NoiseWorld(2),
        "perfect_short": PerfectWorld(seg, 1),
    }
    rng_before = torch.get_rng_state()
    cmp = compare_worlds(worlds, seg, horizon=horizon, samples=2, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # sampling ran on a forked RNG
    assert cmp.context == 4 and cmp.real.shape == (5, horizon + 1, 3, 16, 16)
    for label in ("perfect_long", "perfect_short"):
        sc = cmp.scores[label]
        assert sc.psnr == [PSNR_CAP_DB] * horizon
        assert sc.ssim == pytest.approx([1.0] * horizon)
        assert sc.reward_accuracy == 1.0 and sc.end_accuracy == 1.0
        assert cmp.rollouts[label].frames.shape == (10, horizon + 1, 3, 16, 16)  # 5 x 2 samples
        assert sc.frames_per_s > 0
    noise = cmp.scores["noise"]
    assert max(noise.psnr) < 10 and max(noise.ssim) < 0.1  # uniform noise: ~7.8 dB
    assert noise.reward_accuracy < 0.8
    again = compare_worlds(
        {"noise": NoiseWorld(2), "p": PerfectWorld(seg, 4)}, seg, horizon=horizon, samples=2, seed=3
    )
    assert again.scores["noise"].psnr == noise.psnr  # seeded

    logger = TBLogger(str(tmp_path / "tb"))
    log_comparison(cmp, logger)
    logger.close()
    write_comparison(cmp, tmp_path, meta={"game": "fake"})
    ev = read_events(tmp_path / "tb")
    tags = ev.Tags()
    assert [f"compare/context_{i}" in tags["images"] for i in range(5)] == [True] * 5
    img = ev.Images("compare/context_0")[0]
    assert img.width == 4 * (16 + 2) + 2 and img.height == 16 + 4  # real + 3 worlds in one row
    psnr_curve = ev.Scalars("compare/perfect_short/psnr")
    assert [e.step for e in psnr_curve] == list(range(1, horizon + 1))
    assert [e.value for e in ev.Scalars("compare/noise/ssim")] == pytest.approx(noise.ssim)
    for name in ("reward_accuracy", "end_accuracy", "frames_per_s"):
        assert f"compare/noise/{name}" in tags["scalars"]

    record = json.loads((tmp_path / "compare.json").read_text())
    assert record["game"] == "fake" and record["video_columns"][0] == "real"
    assert record["worlds"]["perfect_long"]["psnr_mean"] == PSNR_CAP_DB
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert len(rows) == 3 * horizon and rows[0] == {
        "horizon_step": "1", "world": "perfect_long", "psnr": "100.0000", "ssim": "1.00000"
    }  # fmt: skip
    assert len(list((tmp_path / "gifs").glob("context_*.gif"))) == 5
    table = format_comparison(cmp, every=2)
    assert "perfect_short" in table and "reward-sign accuracy" in table
    assert len([ln for ln in table.splitlines() if ln.split()[0] in {"1", "2", "4", "6"}]) == 4


def test_compare_refuses_short_or_padded_segments():
    seg = _segments(horizon=3, context=2)
    with pytest.raises(ValueError, match="need context 2 \\+ horizon 4"):
        compare_worlds({"n": NoiseWorld(2)}, seg, horizon=4)
    padded = seg._replace(mask=seg.mask.clone())
    padded.mask[0, 0] = False
    with pytest.raises(ValueError, match="padding"):
        compare_worlds({"n": NoiseWorld(2)}, padded, horizon=3)


# ---------------------------------------------------------------------------- end to end

TINY = [
    "--preset", "smoke",
    "--set", "schedule.initial_collect_steps=80",
    "--set", "schedule.initial_collect_max_steps=80",
    "--set", "schedule.collect_steps_per_epoch=20",
    "--set", "schedule.epochs=1",
    "--set", "schedule.test_every=0",
    "--set", "schedule.video_every=0",
    "--set", "eval.episodes=1",
    "--set", "eval.video=false",
    "--set", "agent.training.first_epoch_steps=1",
    "--set", "agent.training.steps_per_epoch=1",
    "--set", "agent.num_envs=2",
    "--set", "agent.horizon=3",
    "--set", "run.progress=false",
]  # fmt: skip
WORLDS = {
    "diff": ["--world", "diffusion",
             "--set", "world.denoiser_training.first_epoch_steps=2",
             "--set", "world.denoiser_training.batch_size=2",
             "--set", "world.reward_end_training.first_epoch_steps=2",
             "--set", "world.reward_end_training.batch_size=2"],
    "iris": ["--world", "iris",
             "--set", "world.tokenizer_training.steps_per_epoch=2",
             "--set", "world.tokenizer_training.batch_size=4",
             "--set", "world.transformer_training.steps_per_epoch=2",
             "--set", "world.transformer_training.batch_size=2"],
}  # fmt: skip


@pytest.mark.slow
def test_evaluate_compare_two_real_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [  # the two tiny trainings in parallel
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "--env",
                "Breakout",
                "--name",
                name,
                *TINY,
                *args,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for name, args in WORLDS.items()
    ]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
    runs = tmp_path / "runs"
    res = run("evaluate.py", "--compare", runs / "diff", runs / "iris", "--horizon", "6",
              "--contexts", "2", "--name", "cmp", cwd=tmp_path)  # fmt: skip
    lines = res.stdout.splitlines()
    assert lines[1].split() == ["h", "diff", "iris"]
    assert [ln.split()[0] for ln in lines[3:10]] == ["1", "2", "3", "4", "5", "6", "mean"]
    assert all(len(ln.split()) == 5 for ln in lines[3:10])  # h, then PSNR and SSIM per world
    out = runs / "cmp"
    ev = read_events(out / "tb")
    tags = ev.Tags()
    for label in ("diff", "iris"):
        for name in ("psnr", "ssim", "reward_accuracy", "end_accuracy", "frames_per_s"):
            assert f"compare/{label}/{name}" in tags["scalars"], (label, name)
        assert len(ev.Scalars(f"compare/{label}/psnr")) == 6
    assert {"compare/context_0", "compare/context_1"} <= set(tags["images"])
    assert ev.Images("compare/context_0")[0].width == 3 * (64 + 2) + 2
    record = json.loads((out / "compare.json").read_text())
    assert [r["world"] for r in record["runs"]] == ["diffusion", "iris"]
    assert record["contexts"] == 2 and record["horizon"] == 6 and record["context"] == 4
    assert all(0 < v["psnr_mean"] < PSNR_CAP_DB for v in record["worlds"].values())
    assert (out / "curves.csv").exists() and (out / "gifs" / "context_1.gif").exists()

    # runs of another protocol or game are refused in one line, before any work
    for key, value, needle in (("max_episode_frames", 108000, "max_episode_frames (4000 vs 108000)"),
                               ("game", "Pong", "plays Breakout and")):  # fmt: skip
        other = runs / f"other-{key}"
        shutil.copytree(runs / "iris", other)
        cfg = other / "config.yaml"
        text = cfg.read_text()
        old = next(ln for ln in text.splitlines() if ln.startswith(f"  {key}:"))
        cfg.write_text(text.replace(old, f"  {key}: {value}", 1))
        res = run("evaluate.py", "--compare", runs / "diff", other, cwd=tmp_path, check=False)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(err) == 1 and needle in err[0], res.stderr
