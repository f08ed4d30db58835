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

from worldmodels.compare import (
    PSNR_CAP_DB,
    clip_scores,
    compare_worlds,
    format_comparison,
    log_comparison,
    psnr,
    record_segments,
    ssim,
    write_comparison,
)
from worldmodels.envs.testing import random_store
from worldmodels.interfaces import Batch
from worldmodels.tb import TITLE_HEIGHT

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

    log_comparison(cmp, tmp_path / "tb", text="about these runs")
    write_comparison(cmp, tmp_path, meta={"game": "fake"})
    ev = read_events(tmp_path / "tb")
    tags = ev.Tags()
    assert [f"compare/context_{i}" in tags["images"] for i in range(5)] == [True] * 5
    assert "compare/about/text_summary" in tags["tensors"]
    img = ev.Images("compare/context_0")[0]
    # real + 3 worlds in one row, under a strip that titles the columns
    assert img.width == 4 * (16 + 2) + 2 and img.height == 16 + 4 + TITLE_HEIGHT
    # one TensorBoard run per world and baseline, the same tags in each: their curves overlay
    runs = sorted(p.name for p in (tmp_path / "tb").iterdir() if p.is_dir())
    assert runs == sorted(["copy-last", "mean-frame", *worlds])
    psnr_curve = read_events(tmp_path / "tb" / "perfect_short").Scalars("compare/psnr")
    assert [e.step for e in psnr_curve] == list(range(1, horizon + 1))
    noise_ev = read_events(tmp_path / "tb" / "noise")
    assert [e.value for e in noise_ev.Scalars("compare/ssim")] == pytest.approx(noise.ssim)
    for name in ("reward_accuracy", "end_accuracy", "frames_per_s", "moving_psnr"):
        assert f"compare/{name}" in noise_ev.Tags()["scalars"]
    assert (
        "compare/frames_per_s" not in read_events(tmp_path / "tb" / "copy-last").Tags()["scalars"]
    )

    record = json.loads((tmp_path / "compare.json").read_text())
    assert record["game"] == "fake" and record["video_columns"][0] == "real"
    assert record["worlds"]["perfect_long"]["psnr_mean"] == PSNR_CAP_DB
    assert set(record["baseline_scores"]) == {"copy-last", "mean-frame"}
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert len(rows) == 5 * horizon  # 2 baselines + 3 worlds
    assert [r["world"] for r in rows[::horizon]] == ["copy-last", "mean-frame", *worlds]
    perfect = rows[2 * horizon]
    assert perfect["psnr"] == "100.0000" and perfect["ssim"] == "1.00000"
    assert len(list((tmp_path / "gifs").glob("context_*.gif"))) == 5
    table = format_comparison(cmp, every=2)
    lines = table.splitlines()
    assert lines[1].split() == ["h", "moving", "copy-last", "mean-frame", *worlds]
    assert len([ln for ln in lines if ln.split() and ln.split()[0] in {"1", "2", "4", "6"}]) == 4
    assert "base rate" in table and "reward open R/P/F1" in table and "end t-f R/P/F1" in table
    for s in ("perfect_long", "perfect_short"):  # a perfect world finds every event, no other
        for kind in ("reward", "end"):
            ol = cmp.scores[s].open_loop[kind]
            assert ol["recall"] == ol["precision"] == ol["f1"] == 1.0, (s, kind)


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
    "--preset", "test",
    "--set", "schedule.initial_collect_steps=80",
    "--set", "schedule.initial_collect_max_steps=80",
    "--set", "schedule.epochs=1",
]  # fmt: skip
WORLDS = {"diff": ["--world", "diffusion"], "iris": ["--world", "iris"]}


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
    assert lines[1].split() == ["h", "moving", "copy-last", "mean-frame", "diff", "iris"]
    assert [ln.split()[0] for ln in lines[3:10]] == ["1", "2", "3", "4", "5", "6", "mean"]
    assert all(len(ln.split()) == 2 + 3 * 4 for ln in lines[3:10])  # h, moving, then 3 per column
    assert "base rate" in res.stdout and "end t-f R/P/F1" in res.stdout
    out = runs / "cmp"
    ev = read_events(out / "tb")
    tags = ev.Tags()
    for label in ("diff", "iris"):  # one run per world: curves overlay under the same tags
        per_run = read_events(out / "tb" / label)
        names = ("psnr", "ssim", "reward_accuracy", "end_accuracy", "frames_per_s")
        for name in names:
            assert f"compare/{name}" in per_run.Tags()["scalars"], (label, name)
        assert len(per_run.Scalars("compare/psnr")) == 6
    assert {"compare/context_0", "compare/context_1"} <= set(tags["images"])
    assert ev.Images("compare/context_0")[0].width == 3 * (64 + 2) + 2
    assert "compare/about/text_summary" in tags["tensors"]
    record = json.loads((out / "compare.json").read_text())
    assert [r["world"] for r in record["runs"]] == ["diffusion", "iris"]
    assert record["contexts"] == 2 and record["horizon"] == 6 and record["context"] == 4
    assert all(0 < v["psnr_mean"] < PSNR_CAP_DB for v in record["worlds"].values())
    assert (out / "curves.csv").exists() and (out / "gifs" / "context_1.gif").exists()

    for w in ("diff", "iris"):  # teacher-forced reward / end scores for every world
        assert set(record["worlds"][w]["teacher_forced"]) == {
            "reward",
            "reward+1",
            "reward-1",
            "end",
        }
    assert set(record["baseline_scores"]) == {"copy-last", "mean-frame"}

    # a learning curve: every checkpoint a run kept, one column each
    res = run("evaluate.py", "--compare", runs / "diff", "--checkpoints", "all", "--horizon", "2",
              "--contexts", "1", "--name", "curve", cwd=tmp_path)  # fmt: skip
    kept = sorted(p.name for p in (runs / "diff" / "checkpoints").iterdir() if p.is_dir())
    assert len(kept) == 2
    assert res.stdout.splitlines()[1].split()[4:] == [f"diff@{k}" for k in kept]

    # a protocol difference that cannot change the comparison is named and allowed ...
    other = runs / "other-cap"
    shutil.copytree(runs / "iris", other)
    cfg = other / "config.yaml"
    text = cfg.read_text()
    old = next(ln for ln in text.splitlines() if ln.startswith("  max_episode_frames:"))
    cfg.write_text(text.replace(old, "  max_episode_frames: 108000", 1))
    res = run("evaluate.py", "--compare", runs / "diff", other, "--horizon", "2", "--contexts", "1",
              "--name", "capped", cwd=tmp_path)  # fmt: skip
    assert "note: " in res.stdout and "max_episode_frames (4000 vs 108000): allowed" in res.stdout
    # ... one that changes what a world predicts, or another game, is refused in one line
    for key, value, needle in (("sticky_action_prob", 0.25, "sticky_action_prob (0.0 vs 0.25)"),
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


# ---------------------------------------------------------------------------- baselines


def _moving_square_segments(n=3, length=8, static=False):
    """``n`` segments of random backgrounds where a 4x4 square (all channels) takes the value
    ``10 t`` at row ``t`` (unless ``static``); rewards +1 / -1 / 0 and ends at known rows."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 200, (n, 1, 3, 16, 16), generator=g, dtype=torch.uint8)
    obs = base.expand(n, length, 3, 16, 16).clone()
    if not static:
        for t in range(length):
            obs[:, t, :, 4:8, 4:8] = 10 * t
    rew = torch.zeros(n, length)
    rew[0, 3], rew[1, 4], rew[2, 5] = 1.0, -1.0, 1.0
    end = torch.zeros(n, length, dtype=torch.bool)
    end[1, 4] = True
    return Batch(
        obs=obs, act=torch.zeros(n, length, dtype=torch.int64), rew=rew, end=end,
        trunc=torch.zeros(n, length, dtype=torch.bool), mask=torch.ones(n, length, dtype=torch.bool),
    )  # fmt: skip


class ProbWorld(torch.nn.Module):
    """Imagines grey frames; teacher-forced it predicts constant probabilities (or the truth)."""

    context_len = 2

    def __init__(self, reward_probs=None, end_prob=None, segments=None):
        super().__init__()
        self.p_rew, self.p_end, self.seg = reward_probs, end_prob, segments

    def imagine_start(self, obs, act, mask):
        return {}, obs[:, -1]

    def imagine_step(self, state, action, *, render=True):
        b = action.shape[0]
        return (
            state,
            torch.full((b, 3, 16, 16), 128, dtype=torch.uint8),
            torch.zeros(b),
            (torch.zeros(b, dtype=torch.bool)),
        )

    def reward_end_probs(self, obs, act, mask):
        b, t = obs.shape[:2]
        if self.seg is not None:  # the truth, one-hot
            rew = torch.nn.functional.one_hot(self.seg.rew[:, : t - 1].sign().long() + 1, 3)
            return rew.float(), self.seg.end[:, : t - 1].float()
        return (
            torch.tensor(self.p_rew).expand(b, t - 1, 3),
            torch.full((b, t - 1), self.p_end),
        )


def test_baselines_match_their_closed_forms():
    horizon, c = 5, 2
    seg = _moving_square_segments()
    cmp = compare_worlds({"w": ProbWorld([0.1, 0.8, 0.1], 0.25)}, seg, horizon=horizon)
    assert cmp.baselines == ["copy-last", "mean-frame"] and cmp.columns[-1] == "w"
    assert cmp.moving_fraction == pytest.approx([16 / 256] * horizon)  # the square moves
    last = seg.obs[:, c - 1].double() / 255
    copy = cmp.scores["copy-last"]
    for h in range(1, horizon + 1):
        d = 10 * h / 255  # the square is 10 h levels off the last context frame, elsewhere exact
        assert copy.psnr[h - 1] == pytest.approx(10 * math.log10(1 / (d * d * 16 / 256)))
        assert copy.moving_psnr[h - 1] == pytest.approx(10 * math.log10(1 / (d * d)))
        target = seg.obs[:, c - 1 + h].double() / 255
        assert copy.ssim[h - 1] == pytest.approx(float(ssim(last, target).mean()))
    mean = seg.obs.double().mean(dim=(0, 1)).round() / 255  # the held-out mean frame, 8 bits
    mf = cmp.scores["mean-frame"]
    for h in range(1, horizon + 1):
        target = seg.obs[:, c - 1 + h].double() / 255
        assert mf.psnr[h - 1] == pytest.approx(float(psnr(mean.expand_as(target), target).mean()))
    # rewards 0, no ends: nothing found, no precision (nothing predicted), base rates of the data
    real = seg.rew[:, c - 1 : c - 1 + horizon]
    for b in ("copy-last", "mean-frame"):
        ol = cmp.scores[b].open_loop
        assert ol["reward"]["recall"] == 0.0 and ol["reward"]["precision"] is None
        assert ol["reward"]["base_rate"] == pytest.approx(float((real != 0).double().mean()))
        assert ol["reward+1"]["real"] == 2 and ol["reward-1"]["real"] == 1
        assert ol["end"]["recall"] == 0.0 and ol["end"]["base_rate"] == pytest.approx(1 / 15)
        assert cmp.scores[b].teacher_forced is None and cmp.scores[b].frames_per_s is None
        assert cmp.scores[b].reward_accuracy == pytest.approx(12 / 15)

    static = _moving_square_segments(static=True)
    cmp = compare_worlds({"w": ProbWorld([0.1, 0.8, 0.1], 0.25)}, static, horizon=horizon)
    copy = cmp.scores["copy-last"]
    assert copy.psnr == [PSNR_CAP_DB] * horizon  # a static clip: copy-last is exact (capped)
    assert copy.ssim == pytest.approx([1.0] * horizon)
    assert copy.moving_psnr == [None] * horizon and cmp.moving_fraction == [0.0] * horizon
    assert "mPSNR" in format_comparison(cmp) and "-" in format_comparison(cmp).splitlines()[3]


def test_teacher_forced_scores_are_expectations_over_the_sampling():
    horizon = 5
    seg = _moving_square_segments()
    cmp = compare_worlds(
        {"const": ProbWorld([0.1, 0.8, 0.1], 0.25), "truth": ProbWorld(segments=seg)},
        seg, horizon=horizon,
    )  # fmt: skip
    tf = cmp.scores["const"].teacher_forced
    base_rew, base_end = 3 / 15, 1 / 15
    # constant probabilities: recall = the probability of the right class, precision = the
    # base rate times the share of predicted events with the right sign (chance level)
    assert tf["reward"]["recall"] == pytest.approx(0.1)
    assert tf["reward"]["precision"] == pytest.approx(base_rew / 2)
    assert tf["reward+1"]["recall"] == pytest.approx(0.1)
    assert tf["reward+1"]["precision"] == pytest.approx(2 / 15)
    assert tf["end"]["recall"] == pytest.approx(0.25)
    assert tf["end"]["precision"] == pytest.approx(base_end)
    assert tf["end"]["predicted_rate"] == pytest.approx(0.25)
    truth = cmp.scores["truth"].teacher_forced
    for kind in ("reward", "reward+1", "reward-1", "end"):
        assert truth[kind]["recall"] == truth[kind]["precision"] == 1.0, kind
    # open loop the same worlds predict no event at all
    assert cmp.scores["const"].open_loop["end"]["predicted"] == 0


def test_compare_refuses_a_world_named_like_a_baseline():
    seg = _moving_square_segments()
    with pytest.raises(ValueError, match="names of baselines"):
        compare_worlds({"copy-last": ProbWorld([0.1, 0.8, 0.1], 0.2)}, seg, horizon=3)


def test_training_clip_scores_match_the_closed_forms():
    seg = _moving_square_segments(n=3, length=6)
    real = seg.obs[:, 1:]  # frame 0: the "last context frame"
    valid = torch.ones(3, 5, dtype=torch.bool)
    perfect = clip_scores(real, real, valid)
    assert perfect["psnr"] == PSNR_CAP_DB and perfect["moving_psnr"] == PSNR_CAP_DB
    # copy-last: the square is 10 h levels off at step h; moving pixels: the square, every step
    d2 = [(10 * h / 255) ** 2 for h in range(1, 5)]
    want = float(np.mean([10 * math.log10(1 / (x * 16 / 256)) for x in d2]))
    assert perfect["psnr_copy_last"] == pytest.approx(want)
    assert perfect["moving_psnr_copy_last"] == pytest.approx(10 * math.log10(1 / np.mean(d2)))
    cut = valid.clone()
    cut[:, 3:] = False  # the episodes ended after step 2: steps 3, 4 are not scored
    two = clip_scores(real, real, cut)
    want = float(np.mean([10 * math.log10(1 / (x * 16 / 256)) for x in d2[:2]]))
    assert two["psnr_copy_last"] == pytest.approx(want)
