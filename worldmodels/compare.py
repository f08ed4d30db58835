"""Open-loop comparison of worlds on the same held-out real data.

Every world starts from the same real contexts and is stepped with the same recorded real
actions, open loop (its own frames feed it; the real frames never do after the context). Its
imagined frames are scored against the real ones at each horizon step ``h = 1 .. H`` (PSNR and
SSIM, averaged over contexts), its sampled rewards and ends against the real ones (sign accuracy
and end accuracy), and its imagination is timed (frames/s). Results go to TensorBoard (curves with
the horizon step as x-axis, one video grid per context: ``real | world A | world B | ...``),
``compare.json``, ``curves.csv`` and per-context GIFs.

Segment rows follow the ``Batch`` convention (``worldmodels.interfaces``): row ``t`` holds
``obs[t]``, the action taken there ``act[t]``, the reward it earned ``rew[t]`` and whether that
transition ended the episode ``end[t]``. With ``c`` the longest context of the worlds, a segment
has ``c + H`` rows: a world of context ``c_k`` starts from rows ``[c - c_k, c)`` and its step
``h`` takes ``act[c - 2 + h]`` and is scored against ``obs[c - 1 + h]``, ``rew[c - 2 + h]`` and
``end[c - 2 + h]``. A world keeps stepping after it predicts an end (open loop).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from envs.dream import imagine_step
from worldmodels.errors import UserError
from worldmodels.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from worldmodels.interfaces import Batch
from worldmodels.tb import TBLogger, encode_gif, image_grid
from worldmodels.training import autocast

__all__ = [
    "PSNR_CAP_DB",
    "Comparison",
    "Rollout",
    "WorldScores",
    "compare_worlds",
    "format_comparison",
    "log_comparison",
    "psnr",
    "record_segments",
    "rollout",
    "ssim",
    "write_comparison",
]

PSNR_CAP_DB = 100.0
"""PSNR of identical frames is infinite; it is capped here so that means over frames stay finite
(8-bit frames that differ in a single pixel by one level already score ~89 dB at 64x64)."""


# --------------------------------------------------------------------------------------------
# Image metrics on float images in [0, 1], shape (..., C, H, W)


def psnr(x: Tensor, y: Tensor, *, cap: float = PSNR_CAP_DB) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(1 / MSE)`` in dB per image ``(...)``, for images
    ``(..., C, H, W)`` in ``[0, 1]``; capped at ``cap`` (identical images)."""
    mse = (x.double() - y.double()).pow(2).flatten(-3).mean(-1)
    return (10 * torch.log10(1.0 / mse)).clamp(max=cap)


def _gaussian(size: int, sigma: float) -> Tensor:
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()


def _band(g: Tensor, n: int) -> Tensor:
    """``(n, n - k + 1)``: column ``j`` holds the window ``g (k,)`` at rows ``j .. j + k - 1``."""
    k = g.shape[0]
    m = torch.zeros(n, n - k + 1, dtype=g.dtype, device=g.device)
    for j in range(n - k + 1):
        m[j : j + k, j] = g
    return m


def ssim(
    x: Tensor, y: Tensor, *, window: int = 11, sigma: float = 1.5, k1: float = 0.01,
    k2: float = 0.03, data_range: float = 1.0,
) -> Tensor:  # fmt: skip
    """Structural similarity (Wang et al. 2004) per image ``(...)`` for ``(..., C, H, W)`` images.

    The standard form: a ``window x window`` Gaussian window of std ``sigma`` (11, 1.5), constants
    ``C1 = (k1 L)^2, C2 = (k2 L)^2`` with ``L = data_range``, statistics over the window positions
    that fit in the image ("valid", as in the authors' reference code); the SSIM map is averaged
    over positions and then over channels. Computed in float64.
    """
    if x.shape != y.shape or x.ndim < 3:
        raise ValueError(
            f"ssim needs two (..., C, H, W) images of one shape, got {x.shape}, {y.shape}"
        )
    *lead, c, h, w = x.shape
    if min(h, w) < window:
        raise ValueError(f"images of {h}x{w} are smaller than the {window}x{window} SSIM window")
    g = _gaussian(window, sigma).to(x.device)
    # The separable valid-mode Gaussian blur as two band matrices: blur(z) = Bh^T z Bw, fast and
    # exact in float64 (BLAS), where a float64 conv2d on CPU is slow.
    bh, bw = _band(g, h), _band(g, w)  # (H, H - window + 1), (W, W - window + 1)

    def blur(z: Tensor) -> Tensor:  # (N, H, W) -> (N, H', W'), H' = H - window + 1
        n = z.shape[0]
        z = (z.reshape(n * h, w) @ bw).view(n, h, -1)  # (N, H, W'): one large matmul each way
        z = (z.transpose(1, 2).reshape(-1, h) @ bh).view(n, -1, bh.shape[1])  # (N, W', H')
        return z.transpose(1, 2)

    a = x.double().reshape(-1, h, w)  # (N * C, H, W)
    b = y.double().reshape(-1, h, w)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return smap.flatten(1).mean(-1).view(*lead, c).mean(-1)


# --------------------------------------------------------------------------------------------
# Held-out real segments


def record_segments(
    env: Any, num: int, length: int, *, seed: int, life_loss_ends: bool, max_skip: int | None = None
) -> Batch:
    """``num`` segments of ``length`` rows from fresh real episodes, played with a uniformly random
    policy (seeded), for held-out data that no world trained on.

    ``env`` is a real vector env (``envs.atari.AtariVecEnv``, test mode: whole games). Each game
    skips a random ``[0, max_skip]`` steps (default ``length``) before each segment, so segments
    start at varied points of play. A segment never spans two games; it may end on a game's final
    frame. ``end`` marks game overs and, with ``life_loss_ends`` (the runs' ``life_loss_terminal``,
    what their worlds learnt to predict), life losses. Returns a ``Batch`` of CPU tensors:
    obs ``(N, L, C, H, W)`` uint8, act ``(N, L)`` int64, rew ``(N, L)`` float32, end ``(N, L)``,
    trunc (False) and mask (True).
    """
    if num < 1 or length < 2:
        raise ValueError(f"need num >= 1 and length >= 2, got {num}, {length}")
    n = env.num_envs
    max_skip = length if max_skip is None else max_skip
    rng = np.random.default_rng(seed)
    skip = rng.integers(0, max_skip + 1, size=n)
    bufs: list[list[tuple]] = [[] for _ in range(n)]
    out: list[list[tuple]] = []
    obs, _ = env.reset(seed=seed)
    obs = obs.numpy().copy()
    calls, max_calls = 0, 50 * (length + max_skip) * math.ceil(num / n) + 10_000
    while len(out) < num:
        calls += 1
        if calls > max_calls:
            raise UserError(
                f"found only {len(out)} of {num} real segments of {length} frames in "
                f"{max_calls} steps: the games end sooner; use a shorter --horizon"
            )
        act = rng.integers(0, env.num_actions, size=n)
        next_obs, rew, term, trunc, info = env.step(act)
        final = info["final_obs"].numpy()
        done = (term | trunc).numpy()
        end = term.numpy() | (info["life_loss"].numpy() & life_loss_ends)
        rew = rew.numpy()
        for i in range(n):
            if skip[i] > 0:
                skip[i] -= 1
            else:
                bufs[i].append((obs[i], int(act[i]), float(rew[i]), bool(end[i])))
                if done[i] and len(bufs[i]) == length - 1:  # the game's final frame closes it
                    bufs[i].append((final[i].copy(), 0, 0.0, False))
                if len(bufs[i]) == length:
                    out.append(bufs[i])
                    bufs[i] = []
                    skip[i] = rng.integers(0, max_skip + 1)
            if done[i]:
                bufs[i] = []  # a segment never spans two games
        obs = next_obs.numpy().copy()
    out = out[:num]
    b, t = num, length
    return Batch(
        obs=torch.from_numpy(np.stack([np.stack([r[0] for r in s]) for s in out])),
        act=torch.tensor([[r[1] for r in s] for s in out], dtype=torch.int64),
        rew=torch.tensor([[r[2] for r in s] for s in out], dtype=torch.float32),
        end=torch.tensor([[r[3] for r in s] for s in out], dtype=torch.bool),
        trunc=torch.zeros(b, t, dtype=torch.bool),
        mask=torch.ones(b, t, dtype=torch.bool),
    )


# --------------------------------------------------------------------------------------------
# Open-loop rollouts


@dataclass(frozen=True)
class Rollout:
    """One world's open-loop imagination from ``B`` contexts (CPU tensors)."""

    frames: Tensor  # (B, H + 1, C, H, W) uint8; frame 0 is imagine_start's first observation
    reward: Tensor  # (B, H) float32, sampled
    end: Tensor  # (B, H) bool, sampled
    seconds: float  # wall time of the H imagine_step calls

    @property
    def frames_per_s(self) -> float:
        b, h = self.reward.shape
        return b * h / max(self.seconds, 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def rollout(
    world: Any, obs: Tensor, act: Tensor, mask: Tensor, actions: Tensor, *,
    device: torch.device | str = "cpu", amp: bool = False, seed: int = 0, warmup: bool = True,
) -> Rollout:  # fmt: skip
    """Step ``world`` open loop from the context ``obs (B, T0, C, H, W)`` uint8, ``act (B, T0)``,
    ``mask (B, T0)`` with the recorded ``actions (B, H)`` (``actions[:, 0]`` is taken at the last
    context frame). The world is put in eval mode; its sampling is seeded with ``seed`` on a forked
    RNG (the caller's global RNG state is left as it was). ``warmup`` runs one untimed step first,
    so one-off costs (kernel selection, lazy allocations) stay out of the timing."""
    device = torch.device(device)
    world.eval()
    obs, act, mask, actions = (x.to(device) for x in (obs, act, mask, actions))
    horizon = actions.shape[1]
    rng_devices = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=rng_devices), autocast(device, amp):
        if warmup:
            state, _ = world.imagine_start(obs[:1], act[:1], mask[:1])
            imagine_step(world, state, actions[:1, 0], 0)
        torch.manual_seed(seed)
        state, first = world.imagine_start(obs, act, mask)
        frames, rewards, ends = [first], [], []
        _sync(device)
        start = time.perf_counter()
        for h in range(horizon):
            state, frame, reward, end = imagine_step(world, state, actions[:, h], h)
            frames.append(frame)
            rewards.append(reward)
            ends.append(end)
        _sync(device)
        seconds = time.perf_counter() - start
    return Rollout(
        frames=torch.stack(frames, dim=1).cpu(),  # (B, H + 1, C, H, W)
        reward=torch.stack(rewards, dim=1).float().cpu(),  # (B, H)
        end=torch.stack(ends, dim=1).bool().cpu(),
        seconds=seconds,
    )


@dataclass(frozen=True)
class WorldScores:
    """One world's numbers; per-step lists are indexed by horizon step ``h - 1``."""

    psnr: list[float]  # (H,) dB, mean over contexts (and samples)
    ssim: list[float]  # (H,)
    reward_accuracy: float  # sign of the sampled reward == sign of the real one, over all steps
    reward_accuracy_per_step: list[float]
    reward_accuracy_nonzero: float | None  # the same over the steps whose real reward is not 0
    end_accuracy: float  # sampled end == real end, over all steps
    end_accuracy_per_step: list[float]
    real_nonzero_rewards: int
    real_ends: int
    frames_per_s: float
    seconds: float
    context_len: int

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["psnr_mean"] = float(np.mean(self.psnr))
        d["ssim_mean"] = float(np.mean(self.ssim))
        return d


@dataclass(frozen=True)
class Comparison:
    """Worlds compared on the same real segments."""

    labels: list[str]
    horizon: int
    context: int  # the longest context among the worlds (rows before the first imagined frame)
    samples: int  # rollouts per context (reward / end / frame sampling)
    real: Tensor  # (N, H + 1, C, H, W) uint8: the last context frame, then the H real frames
    rollouts: dict[str, Rollout]  # label -> (N * samples) rows, sample-major per context
    scores: dict[str, WorldScores]


def _unit(x: Tensor) -> Tensor:
    return x.double() / 255.0


def compare_worlds(
    worlds: Mapping[str, Any], segments: Batch, *, horizon: int, samples: int = 1,
    device: torch.device | str = "cpu", amp: bool | Mapping[str, bool] = False, seed: int = 0,
) -> Comparison:  # fmt: skip
    """Roll every world out open loop on the same ``segments`` (``(N, L)`` rows, ``L >= c + H``
    with ``c`` the longest ``context_len``; the layout is in the module docstring) and score it.

    ``samples`` rolls each context out that many times (as extra batch rows), so reward and end
    accuracy average over several samples of the worlds' stochastic predictions. Every world's
    sampling starts from the same ``seed``.
    """
    if not worlds:
        raise ValueError("no worlds to compare")
    if horizon < 1 or samples < 1:
        raise ValueError(f"need horizon >= 1 and samples >= 1, got {horizon}, {samples}")
    c = max(int(w.context_len) for w in worlds.values())
    n, length = segments.obs.shape[:2]
    if length < c + horizon:
        raise ValueError(f"segments have {length} rows, need context {c} + horizon {horizon}")
    if not bool(segments.mask[:, : c + horizon].all()):
        raise ValueError("segments must be real data throughout (mask True): no padding rows")
    rows = slice(c - 1, c - 1 + horizon)  # the transitions imagined at steps 1..H
    real = segments.obs[:, c - 1 : c + horizon]  # (N, H + 1, C, H, W)
    real_rew = segments.rew[:, rows].repeat_interleave(samples, 0)  # (N * S, H)
    real_end = segments.end[:, rows].repeat_interleave(samples, 0)
    targets = _unit(real[:, 1:].repeat_interleave(samples, 0))  # (N * S, H, C, H, W)
    actions = segments.act[:, rows].repeat_interleave(samples, 0)

    rollouts, scores = {}, {}
    for label, world in worlds.items():
        k = int(world.context_len)
        ctx = slice(c - k, c)
        r = rollout(
            world,
            segments.obs[:, ctx].repeat_interleave(samples, 0),
            segments.act[:, ctx].repeat_interleave(samples, 0),
            segments.mask[:, ctx].repeat_interleave(samples, 0),
            actions,
            device=device,
            amp=amp if isinstance(amp, bool) else bool(amp.get(label, False)),
            seed=seed,
        )
        if r.frames.shape[2:] != segments.obs.shape[2:]:
            raise ValueError(
                f"world {label!r} imagines frames of {tuple(r.frames.shape[2:])}, the real ones "
                f"are {tuple(segments.obs.shape[2:])}"
            )
        fake = _unit(r.frames[:, 1:])
        sign_ok = torch.sign(r.reward) == torch.sign(real_rew)  # (N * S, H)
        end_ok = r.end == real_end
        nonzero = real_rew != 0
        rollouts[label] = r
        scores[label] = WorldScores(
            psnr=psnr(fake, targets).mean(0).tolist(),
            ssim=ssim(fake, targets).mean(0).tolist(),
            reward_accuracy=float(sign_ok.double().mean()),
            reward_accuracy_per_step=sign_ok.double().mean(0).tolist(),
            reward_accuracy_nonzero=(
                float(sign_ok[nonzero].double().mean()) if bool(nonzero.any()) else None
            ),
            end_accuracy=float(end_ok.double().mean()),
            end_accuracy_per_step=end_ok.double().mean(0).tolist(),
            real_nonzero_rewards=int(segments.rew[:, rows].ne(0).sum()),
            real_ends=int(segments.end[:, rows].sum()),
            frames_per_s=r.frames_per_s,
            seconds=r.seconds,
            context_len=k,
        )
    return Comparison(
        labels=list(worlds), horizon=horizon, context=c, samples=samples, real=real,
        rollouts=rollouts, scores=scores,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Outputs


def video_columns(comparison: Comparison, i: int) -> Tensor:
    """``(1 + worlds, H + 1, C, H, W)`` uint8 for context ``i``: the real frames, then each world's
    first sample (frame 0 is the last context frame, or the world's view of it)."""
    s = comparison.samples
    cols = [comparison.real[i]] + [comparison.rollouts[k].frames[i * s] for k in comparison.labels]
    return torch.stack(cols)


def log_comparison(comparison: Comparison, logger: TBLogger, fps: float = 8) -> None:
    """TensorBoard: ``compare/<label>/psnr`` and ``/ssim`` against the horizon step; the reward,
    end and speed numbers at step 0; one video grid per context, ``compare/context_<i>``."""
    for label in comparison.labels:
        sc = comparison.scores[label]
        for h, (p, q) in enumerate(zip(sc.psnr, sc.ssim, strict=True), start=1):
            logger.scalar(f"compare/{label}/psnr", p, h)
            logger.scalar(f"compare/{label}/ssim", q, h)
        logger.scalar(f"compare/{label}/reward_accuracy", sc.reward_accuracy, 0)
        logger.scalar(f"compare/{label}/end_accuracy", sc.end_accuracy, 0)
        logger.scalar(f"compare/{label}/frames_per_s", sc.frames_per_s, 0)
    ncol = 1 + len(comparison.labels)
    for i in range(comparison.real.shape[0]):
        logger.video(f"compare/context_{i}", video_columns(comparison, i), 0, fps=fps, nrow=ncol)
    logger.flush()


def write_comparison(
    comparison: Comparison, directory: str | Path, meta: Mapping[str, Any] | None = None,
    fps: float = 8,
) -> None:  # fmt: skip
    """``compare.json`` (every number, plus ``meta``), ``curves.csv`` (horizon step, world, psnr,
    ssim) and ``gifs/context_<i>.gif`` (columns: real, then each world) under ``directory``."""
    directory = Path(directory)
    record = {
        **(meta or {}),
        "labels": comparison.labels,
        "horizon": comparison.horizon,
        "context": comparison.context,
        "contexts": int(comparison.real.shape[0]),
        "samples": comparison.samples,
        "psnr_cap_db": PSNR_CAP_DB,
        "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, on [0, 1] RGB, mean over channels",
        "video_columns": ["real", *comparison.labels],
        "worlds": {k: comparison.scores[k].to_dict() for k in comparison.labels},
    }
    atomic_write_json(directory / "compare.json", record)
    lines = [["horizon_step", "world", "psnr", "ssim"]]
    for label in comparison.labels:
        sc = comparison.scores[label]
        for h, (p, q) in enumerate(zip(sc.psnr, sc.ssim, strict=True), start=1):
            lines.append([str(h), label, f"{p:.4f}", f"{q:.5f}"])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    atomic_write_text(directory / "curves.csv", buf.getvalue())
    gifs = directory / "gifs"
    gifs.mkdir(exist_ok=True)
    ncol = 1 + len(comparison.labels)
    for i in range(comparison.real.shape[0]):
        cols = video_columns(comparison, i).numpy()  # (ncol, T, C, H, W)
        grid = np.stack([image_grid(cols[:, t], nrow=ncol) for t in range(cols.shape[1])])
        atomic_write_bytes(gifs / f"context_{i}.gif", encode_gif(grid, fps))


def format_comparison(comparison: Comparison, every: int | None = None) -> str:
    """The per-step error table (PSNR dB and SSIM per world at ``h = 1``, every ``every`` steps
    and ``H``), then reward / end accuracy and frames/s per world."""
    labels, horizon = comparison.labels, comparison.horizon
    every = every or max(1, horizon // 8)
    steps = sorted({1, horizon, *range(every, horizon + 1, every)})
    width = max(16, *(len(k) + 2 for k in labels))
    n = comparison.real.shape[0]
    lines = [
        f"open loop from {n} real contexts x {comparison.samples} sample(s), "
        f"PSNR (dB, capped at {PSNR_CAP_DB:g}) / SSIM against the real frames",
        f"{'h':<22}" + "".join(f"{k:>{width}}" for k in labels),
        f"{'':<22}" + "".join(f"{'PSNR   SSIM':>{width}}" for _ in labels),
    ]
    for h in steps:
        row = f"{h:<22}"
        for k in labels:
            sc = comparison.scores[k]
            row += f"{sc.psnr[h - 1]:>{width - 7}.2f}  {sc.ssim[h - 1]:.3f}"
        lines.append(row)
    mean = f"{'mean':<22}"
    for k in labels:
        sc = comparison.scores[k]
        mean += f"{np.mean(sc.psnr):>{width - 7}.2f}  {np.mean(sc.ssim):.3f}"
    lines.append(mean)
    for name, fmt in (
        ("reward-sign accuracy", lambda s: f"{s.reward_accuracy:.3f}"),
        ("  on nonzero rewards", lambda s: "-" if s.reward_accuracy_nonzero is None
                                           else f"{s.reward_accuracy_nonzero:.3f}"),
        ("end accuracy", lambda s: f"{s.end_accuracy:.3f}"),
        ("imagined frames/s", lambda s: f"{s.frames_per_s:.1f}"),
    ):  # fmt: skip
        lines.append(
            f"{name:<22}" + "".join(f"{fmt(comparison.scores[k]):>{width}}" for k in labels)
        )
    first = comparison.scores[labels[0]]
    lines.append(
        f"(real data over these steps: {first.real_nonzero_rewards} nonzero rewards, "
        f"{first.real_ends} ends)"
    )
    return "\n".join(lines)
