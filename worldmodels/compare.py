"""Open-loop comparison of worlds on the same held-out real data, beside trivial baselines.

Every world starts from the same real contexts and is stepped with the same recorded real
actions, open loop (its own frames feed it; the real frames never do after the context). Beside
the worlds two baselines are scored on the same contexts (``BASELINES``: ``copy-last`` repeats
the last context frame, ``mean-frame`` predicts the held-out mean frame; both predict reward 0 and
no end). At each horizon step ``h = 1 .. H`` every column gets the PSNR and SSIM of the whole
frame and the PSNR on the pixels that move between consecutive real frames (on Atari 99% of the
pixels never move, so copy-last scores ~40 dB on the whole frame; the moving pixels are where a
world shows what it learnt). Rewards and ends are rare events: beside their base rates each column
gets recall, precision and F1 of non-zero rewards (matched by sign, and per sign) and of ends, for
the sampled open-loop rollout and, where a world has ``reward_end_probs``, teacher-forced on the
real frames (in expectation over its sampling). Imagination is timed (frames/s). Results go to
TensorBoard (curves with the horizon step as x-axis, one video grid per context: ``real | world A
| world B | ...``), ``compare.json``, ``curves.csv`` and per-context GIFs.

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

from worldmodels import contract
from worldmodels.envs.dream import imagine_step
from worldmodels.errors import UserError
from worldmodels.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from worldmodels.interfaces import Batch
from worldmodels.metrics import binary_counts, detection_scores, event_counts, expected_event_counts
from worldmodels.tb import TBLogger, encode_gif, image_grid
from worldmodels.training import autocast

__all__ = [
    "BASELINES",
    "EVENT_KINDS",
    "PSNR_CAP_DB",
    "Comparison",
    "Rollout",
    "WorldScores",
    "clip_scores",
    "compare_worlds",
    "format_comparison",
    "log_comparison",
    "moving_psnr",
    "psnr",
    "record_segments",
    "rollout",
    "ssim",
    "teacher_forced",
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


BASELINES = ("copy-last", "mean-frame")
"""Trivial predictors scored beside every world, on the same contexts and actions: ``copy-last``
repeats the last context frame and predicts reward 0 and no end; ``mean-frame`` predicts the mean
of the held-out real frames (rounded to 8 bits; it has seen the targets, which only flatters it),
reward 0 and no end. A world that does not beat them on the moving pixels has not learnt the
dynamics, whatever its whole-frame PSNR."""

EVENT_KINDS = ("reward", "reward+1", "reward-1", "end")
"""Rare events scored by precision / recall / F1: any non-zero reward (matched by sign), positive
rewards, negative rewards, episode ends."""


@dataclass(frozen=True)
class WorldScores:
    """One world's (or baseline's) numbers; per-step lists are indexed by horizon step ``h - 1``.

    ``moving_psnr[h - 1]`` is the PSNR over the pixels that change between real frames ``h - 1``
    and ``h`` (any channel), pooled over contexts: where the dynamics live (None at a step where
    no pixel moves). ``open_loop`` holds ``worldmodels.metrics.detection_scores`` per event kind
    (``EVENT_KINDS``) for the sampled rewards and ends of the open-loop rollout; ``teacher_forced``
    the same for the world's predictions from real frames (its ``reward_end_probs``, in
    expectation over its sampling), or None where the world (or baseline) has none."""

    psnr: list[float]  # (H,) dB, mean over contexts (and samples)
    ssim: list[float]  # (H,)
    moving_psnr: list[float | None]  # (H,) dB over the moving pixels
    reward_accuracy: float  # sign of the sampled reward == sign of the real one, over all steps
    reward_accuracy_per_step: list[float]
    end_accuracy: float  # sampled end == real end, over all steps
    end_accuracy_per_step: list[float]
    open_loop: dict[str, dict[str, Any]]
    teacher_forced: dict[str, dict[str, Any]] | None
    real_nonzero_rewards: int
    real_ends: int
    transitions: int  # real transitions scored (contexts x H, without the samples)
    frames_per_s: float | None  # None for the baselines
    seconds: float
    context_len: int | None
    baseline: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["psnr_mean"] = float(np.mean(self.psnr))
        d["ssim_mean"] = float(np.mean(self.ssim))
        moving = [x for x in self.moving_psnr if x is not None]
        d["moving_psnr_mean"] = float(np.mean(moving)) if moving else None
        return d


@dataclass(frozen=True)
class Comparison:
    """Worlds compared on the same real segments, with the baselines beside them."""

    labels: list[str]  # the worlds
    baselines: list[str]  # BASELINES, scored on the same data
    horizon: int
    context: int  # the longest context among the worlds (rows before the first imagined frame)
    samples: int  # rollouts per context (reward / end / frame sampling)
    real: Tensor  # (N, H + 1, C, H, W) uint8: the last context frame, then the H real frames
    rollouts: dict[str, Rollout]  # label -> (N * samples) rows, sample-major per context
    scores: dict[str, WorldScores]  # worlds and baselines
    moving_fraction: list[float]  # (H,) share of pixels that change between real frames

    @property
    def columns(self) -> list[str]:
        """Every scored label: the baselines first, then the worlds."""
        return [*self.baselines, *self.labels]


def _unit(x: Tensor) -> Tensor:
    return x.double() / 255.0


def moving_mask(real: Tensor) -> Tensor:
    """``(N, H, 1, h, w)`` bool for real frames ``(N, H + 1, C, h, w)``: pixel changed (any
    channel) between frame ``i`` and ``i + 1``."""
    return (real[:, 1:] != real[:, :-1]).any(dim=2, keepdim=True)


def moving_psnr(fake: Tensor, target: Tensor, moving: Tensor, *, cap: float = PSNR_CAP_DB) -> list:
    """PSNR per horizon step over the moving pixels, pooled over rows: ``fake``, ``target``
    ``(N, H, C, h, w)`` in ``[0, 1]``, ``moving (N, H, 1, h, w)`` bool; None where none moves."""
    err = (fake - target).pow(2) * moving  # (N, H, C, h, w)
    count = moving.expand_as(err).sum(dim=(0, 2, 3, 4)).double()  # (H,)
    mse = err.sum(dim=(0, 2, 3, 4)) / count.clamp(min=1)
    out = (10 * torch.log10(1.0 / mse)).clamp(max=cap)
    return [None if n == 0 else float(v) for v, n in zip(out.tolist(), count.tolist(), strict=True)]


def clip_scores(real: Tensor, fake: Tensor, valid: Tensor) -> dict[str, float]:
    """Whole-frame PSNR and moving-pixel PSNR of imagined frames beside copy-last's, for the
    clips training logs: ``real``, ``fake`` ``(N, H + 1, C, h, w)`` uint8 (frame 0: the last
    context frame), ``valid (N, H + 1)`` bool (False after an episode's end). PSNR is the mean
    over the valid imagined frames; moving-pixel PSNR pools the pixels that move between valid
    consecutive real frames; a key is left out where there is nothing to score."""
    real, fake = real.cpu(), fake.cpu()
    ok = (valid[:, 1:] & valid[:, :-1]).cpu()  # (N, H): frame h and h - 1 are real
    target = _unit(real[:, 1:])
    copy = _unit(real[:, :1]).expand_as(target)
    moving = moving_mask(real) & ok[:, :, None, None, None]
    out: dict[str, float] = {}
    for name, x in (("", _unit(fake[:, 1:])), ("_copy_last", copy)):
        if bool(ok.any()):
            out[f"psnr{name}"] = float(psnr(x, target)[ok].mean())
        n = float(moving.sum()) * x.shape[2]
        if n > 0:
            mse = float(((x - target).pow(2) * moving).sum()) / n
            out[f"moving_psnr{name}"] = min(PSNR_CAP_DB, 10 * math.log10(1.0 / max(mse, 1e-30)))
    return out


def _events(
    reward_pred: Tensor, end_pred: Tensor, reward_real: Tensor, end_real: Tensor
) -> dict[str, dict[str, Any]]:
    """Detection scores of sampled (or baseline) predictions, per ``EVENT_KINDS``."""
    valid = torch.ones_like(end_real, dtype=torch.bool)
    p, r = torch.sign(reward_pred), torch.sign(reward_real)
    total = float(valid.sum())
    c = event_counts(valid, p, r, end_pred, end_real)
    out = {
        "reward": (c["reward_hits"], c["reward_predicted"], c["reward_real"]),
        "reward+1": binary_counts(p > 0, r > 0, valid),
        "reward-1": binary_counts(p < 0, r < 0, valid),
        "end": (c["end_hits"], c["end_predicted"], c["end_real"]),
    }
    return {
        k: detection_scores(float(hits), float(predicted), float(real), total)
        for k, (hits, predicted, real) in out.items()
    }


def _expected_events(
    reward_probs: Tensor | None, end_probs: Tensor | None, reward_real: Tensor, end_real: Tensor
) -> dict[str, dict[str, Any]]:
    """Detection scores in expectation over a world's sampling, from its probabilities."""
    valid = torch.ones_like(end_real, dtype=torch.bool)
    total = float(valid.sum())
    c = expected_event_counts(valid, reward_probs, reward_real, end_probs, end_real)
    out: dict[str, dict[str, Any]] = {}
    if reward_probs is not None:
        out["reward"] = detection_scores(
            float(c["reward_hits"]), float(c["reward_predicted"]), float(c["reward_real"]), total
        )
        for name, cls, sign in (("reward+1", 2, 1.0), ("reward-1", 0, -1.0)):
            p = reward_probs[..., cls].double()
            real = (torch.sign(reward_real) == sign).double()
            out[name] = detection_scores(
                float((p * real).sum()), float(p.sum()), float(real.sum()), total
            )
    if end_probs is not None:
        out["end"] = detection_scores(
            float(c["end_hits"]), float(c["end_predicted"]), float(c["end_real"]), total
        )
    return out


@torch.inference_mode()
def teacher_forced(
    world: Any, segments: Batch, c: int, horizon: int, *, device: torch.device | str = "cpu",
    amp: bool = False,
) -> tuple[Tensor | None, Tensor | None] | None:  # fmt: skip
    """The world's reward-sign and end probabilities ``(N, H, 3)``, ``(N, H)`` for the ``H``
    scored transitions, from real frames (``world.reward_end_probs`` on the segments' rows up to
    the last scored transition's next frame); None if the world has no ``reward_end_probs``."""
    fn = contract.reward_end_probs(world)
    if fn is None:
        return None
    device = torch.device(device)
    rows = slice(0, c + horizon)  # transitions 0 .. c + H - 2; the scored ones start at c - 1
    with autocast(device, amp):
        rew, end = fn(*(x[:, rows].to(device) for x in (segments.obs, segments.act, segments.mask)))
    keep = slice(c - 1, c - 1 + horizon)
    return (
        None if rew is None else rew[:, keep].float().cpu(),
        None if end is None else end[:, keep].float().cpu(),
    )


def baseline_rollouts(real: Tensor, segments: Batch, samples: int) -> dict[str, Rollout]:
    """``copy-last`` and ``mean-frame`` (``BASELINES``) as rollouts of ``N * samples`` rows."""
    n, t1 = real.shape[:2]
    horizon = t1 - 1
    last = real[:, :1].repeat_interleave(samples, 0)  # (N * S, 1, C, H, W)
    mean = segments.obs.double().mean(dim=(0, 1)).round().to(torch.uint8)  # (C, H, W)
    zeros = torch.zeros(n * samples, horizon)
    nope = torch.zeros(n * samples, horizon, dtype=torch.bool)
    return {
        "copy-last": Rollout(last.expand(-1, t1, -1, -1, -1).clone(), zeros, nope, 0.0),
        "mean-frame": Rollout(
            torch.cat((last, mean.expand(n * samples, horizon, *mean.shape)), dim=1),
            zeros,
            nope,
            0.0,
        ),  # fmt: skip
    }


def _score(
    r: Rollout, targets: Tensor, moving: Tensor, real_rew: Tensor, real_end: Tensor,
    tf: tuple[Tensor | None, Tensor | None] | None, tf_rew: Tensor, tf_end: Tensor, transitions: int, context_len: int | None,
    baseline: bool,
) -> WorldScores:  # fmt: skip
    fake = _unit(r.frames[:, 1:])
    sign_ok = torch.sign(r.reward) == torch.sign(real_rew)  # (N * S, H)
    end_ok = r.end == real_end
    return WorldScores(
        psnr=psnr(fake, targets).mean(0).tolist(),
        ssim=ssim(fake, targets).mean(0).tolist(),
        moving_psnr=moving_psnr(fake, targets, moving),
        reward_accuracy=float(sign_ok.double().mean()),
        reward_accuracy_per_step=sign_ok.double().mean(0).tolist(),
        end_accuracy=float(end_ok.double().mean()),
        end_accuracy_per_step=end_ok.double().mean(0).tolist(),
        open_loop=_events(r.reward, r.end, real_rew, real_end),
        teacher_forced=None if tf is None else _expected_events(*tf, tf_rew, tf_end),
        real_nonzero_rewards=int(tf_rew.ne(0).sum()),
        real_ends=int(tf_end.sum()),
        transitions=transitions,
        frames_per_s=None if baseline else r.frames_per_s,
        seconds=r.seconds,
        context_len=context_len,
        baseline=baseline,
    )


def compare_worlds(
    worlds: Mapping[str, Any], segments: Batch, *, horizon: int, samples: int = 1,
    device: torch.device | str = "cpu", amp: bool | Mapping[str, bool] = False, seed: int = 0,
) -> Comparison:  # fmt: skip
    """Roll every world out open loop on the same ``segments`` (``(N, L)`` rows, ``L >= c + H``
    with ``c`` the longest ``context_len``; the layout is in the module docstring) and score it,
    beside the ``BASELINES`` on the same contexts and actions.

    ``samples`` rolls each context out that many times (as extra batch rows), so the open-loop
    reward and end scores average over several samples of the worlds' stochastic predictions.
    Every world's sampling starts from the same ``seed``.
    """
    if not worlds:
        raise ValueError("no worlds to compare")
    clash = sorted(set(worlds) & set(BASELINES))
    if clash:
        raise ValueError(f"world labels {clash} are the names of baselines; rename them")
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
    tf_rew, tf_end = segments.rew[:, rows], segments.end[:, rows]  # (N, H): one per context
    real_rew = tf_rew.repeat_interleave(samples, 0)  # (N * S, H)
    real_end = tf_end.repeat_interleave(samples, 0)
    targets = _unit(real[:, 1:].repeat_interleave(samples, 0))  # (N * S, H, C, H, W)
    moving = moving_mask(real).repeat_interleave(samples, 0)
    actions = segments.act[:, rows].repeat_interleave(samples, 0)
    common: dict[str, Any] = dict(
        targets=targets, moving=moving, real_rew=real_rew, real_end=real_end, tf_rew=tf_rew,
        tf_end=tf_end, transitions=n * horizon,
    )  # fmt: skip

    rollouts, scores = {}, {}
    for label, r in baseline_rollouts(real, segments, samples).items():
        rollouts[label] = r
        scores[label] = _score(r, tf=None, context_len=None, baseline=True, **common)
    for label, world in worlds.items():
        k = int(world.context_len)
        ctx = slice(c - k, c)
        world_amp = amp if isinstance(amp, bool) else bool(amp.get(label, False))
        r = rollout(
            world,
            segments.obs[:, ctx].repeat_interleave(samples, 0),
            segments.act[:, ctx].repeat_interleave(samples, 0),
            segments.mask[:, ctx].repeat_interleave(samples, 0),
            actions,
            device=device,
            amp=world_amp,
            seed=seed,
        )
        if r.frames.shape[2:] != segments.obs.shape[2:]:
            raise ValueError(
                f"world {label!r} imagines frames of {tuple(r.frames.shape[2:])}, the real ones "
                f"are {tuple(segments.obs.shape[2:])}"
            )
        tf = teacher_forced(world, segments, c, horizon, device=device, amp=world_amp)
        rollouts[label] = r
        scores[label] = _score(r, tf=tf, context_len=k, baseline=False, **common)
    moving_fraction = moving_mask(real).double().mean(dim=(0, 2, 3, 4)).tolist()
    return Comparison(
        labels=list(worlds), baselines=list(BASELINES), horizon=horizon, context=c,
        samples=samples, real=real, rollouts=rollouts, scores=scores,
        moving_fraction=moving_fraction,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Outputs


def video_columns(comparison: Comparison, i: int) -> Tensor:
    """``(1 + worlds, H + 1, C, H, W)`` uint8 for context ``i``: the real frames, then each world's
    first sample (frame 0 is the last context frame, or the world's view of it)."""
    s = comparison.samples
    cols = [comparison.real[i]] + [comparison.rollouts[k].frames[i * s] for k in comparison.labels]
    return torch.stack(cols)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def log_comparison(
    comparison: Comparison, tb_dir: str | Path, fps: float = 8, text: str | None = None
) -> None:
    """TensorBoard under ``tb_dir``: one *run* per world and baseline (``tb_dir/<label>``), so that
    their curves overlay on one chart per tag: ``compare/psnr``, ``compare/ssim`` and
    ``compare/moving_psnr`` against the horizon step; reward / end accuracy, recall, precision
    and F1 (open loop and teacher-forced) and frames/s at step 0. In ``tb_dir`` itself: one video
    grid per context, ``compare/context_<i>``, its columns titled (``real``, then each world), and
    ``text`` (e.g. the protocol and the runs compared) as a text panel."""
    tb_dir = Path(tb_dir)
    for label in comparison.columns:
        sc = comparison.scores[label]
        logger = TBLogger(str(tb_dir / label))
        try:
            for h, (p, q, m) in enumerate(
                zip(sc.psnr, sc.ssim, sc.moving_psnr, strict=True), start=1
            ):
                logger.scalar("compare/psnr", p, h)
                logger.scalar("compare/ssim", q, h)
                if m is not None:
                    logger.scalar("compare/moving_psnr", m, h)
            logger.scalar("compare/reward_accuracy", sc.reward_accuracy, 0)
            logger.scalar("compare/end_accuracy", sc.end_accuracy, 0)
            for mode, events in (
                ("open_loop", sc.open_loop),
                ("teacher_forced", sc.teacher_forced),
            ):
                for kind in ("reward", "end"):
                    s = (events or {}).get(kind)
                    for name in ("recall", "precision", "f1"):
                        if s is not None and _finite(s[name]):
                            logger.scalar(f"compare/{kind}_{name}_{mode}", s[name], 0)
            if sc.frames_per_s is not None:
                logger.scalar("compare/frames_per_s", sc.frames_per_s, 0)
        finally:
            logger.close()
    logger = TBLogger(str(tb_dir))
    try:
        ncol = 1 + len(comparison.labels)
        titles = ["real", *comparison.labels]
        for i in range(comparison.real.shape[0]):
            logger.video(
                f"compare/context_{i}", video_columns(comparison, i), 0, fps=fps, nrow=ncol,
                titles=titles,
            )  # fmt: skip
        if text:
            logger.text("compare/about", text)
    finally:
        logger.close()


def write_comparison(
    comparison: Comparison, directory: str | Path, meta: Mapping[str, Any] | None = None,
    fps: float = 8,
) -> None:  # fmt: skip
    """``compare.json`` (every number, plus ``meta``), ``curves.csv`` (horizon step, world or
    baseline, psnr, ssim, moving_psnr) and ``gifs/context_<i>.gif`` (columns: real, then each
    world) under ``directory``."""
    directory = Path(directory)
    first = comparison.scores[comparison.columns[0]]
    record = {
        **(meta or {}),
        "labels": comparison.labels,
        "baselines": comparison.baselines,
        "horizon": comparison.horizon,
        "context": comparison.context,
        "contexts": int(comparison.real.shape[0]),
        "samples": comparison.samples,
        "psnr_cap_db": PSNR_CAP_DB,
        "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, on [0, 1] RGB, mean over channels",
        "moving_pixels": "pixels that change (any channel) between consecutive real frames; "
        "moving_psnr pools their squared error over contexts",
        "moving_fraction": comparison.moving_fraction,
        "real_events": {
            "transitions": first.transitions,
            "nonzero_rewards": first.real_nonzero_rewards,
            "ends": first.real_ends,
        },  # fmt: skip
        "events": "open_loop: the sampled rewards / ends of the rollouts, per step, against the "
        "real ones; teacher_forced: the world's predictions from real frames, in expectation over "
        "its sampling; reward events are non-zero rewards matched by sign",
        "video_columns": ["real", *comparison.labels],
        "worlds": {k: comparison.scores[k].to_dict() for k in comparison.labels},
        "baseline_scores": {k: comparison.scores[k].to_dict() for k in comparison.baselines},
    }
    atomic_write_json(directory / "compare.json", record)
    lines = [["horizon_step", "world", "psnr", "ssim", "moving_psnr"]]
    for label in comparison.columns:
        sc = comparison.scores[label]
        for h, (p, q, m) in enumerate(zip(sc.psnr, sc.ssim, sc.moving_psnr, strict=True), start=1):
            lines.append([str(h), label, f"{p:.4f}", f"{q:.5f}", "" if m is None else f"{m:.4f}"])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    atomic_write_text(directory / "curves.csv", buf.getvalue())
    gifs = directory / "gifs"
    gifs.mkdir(exist_ok=True)
    ncol = 1 + len(comparison.labels)
    for i in range(comparison.real.shape[0]):
        cols = video_columns(comparison, i).numpy()  # (ncol, T, C, H, W)
        titles = ["real", *comparison.labels]
        grid = np.stack(
            [image_grid(cols[:, t], nrow=ncol, titles=titles) for t in range(cols.shape[1])]
        )
        atomic_write_bytes(gifs / f"context_{i}.gif", encode_gif(grid, fps))


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_comparison(comparison: Comparison, every: int | None = None) -> str:
    """The per-step error table (whole-frame PSNR dB and SSIM, moving-pixel PSNR, per baseline and
    world at ``h = 1``, every ``every`` steps and ``H``), then the reward / end table: base rates,
    accuracy, and recall / precision / F1 open loop and teacher-forced; frames/s per world."""
    cols, horizon = comparison.columns, comparison.horizon
    every = every or max(1, horizon // 8)
    steps = sorted({1, horizon, *range(every, horizon + 1, every)})
    width = max(21, *(len(k) + 2 for k in cols))
    n = comparison.real.shape[0]
    lines = [
        f"open loop from {n} real contexts x {comparison.samples} sample(s); PSNR (dB, capped at "
        f"{PSNR_CAP_DB:g}) and SSIM of the whole frame, mPSNR on the pixels that move",
        f"{'h':<6}{'moving':>8}" + "".join(f"{k:>{width}}" for k in cols),
        f"{'':<14}" + "".join(f"{'PSNR   SSIM  mPSNR':>{width}}" for _ in cols),
    ]

    def cell(p: float, q: float, m: float | None) -> str:
        return f"{p:>{width - 14}.2f} {q:6.3f}  {_num(m, 1):>5}"

    for h in steps:
        row = f"{h:<6}{comparison.moving_fraction[h - 1]:>8.4f}"
        for k in cols:
            sc = comparison.scores[k]
            row += cell(sc.psnr[h - 1], sc.ssim[h - 1], sc.moving_psnr[h - 1])
        lines.append(row)
    mean = f"{'mean':<6}{float(np.mean(comparison.moving_fraction)):>8.4f}"
    for k in cols:
        sc = comparison.scores[k]
        moving = [x for x in sc.moving_psnr if x is not None]
        mean += cell(
            float(np.mean(sc.psnr)), float(np.mean(sc.ssim)),
            float(np.mean(moving)) if moving else None,
        )  # fmt: skip
    lines.append(mean)

    first = comparison.scores[cols[0]]
    ol = first.open_loop
    lines.append("")
    lines.append(
        f"reward / end over {first.transitions} real transitions: "
        f"{first.real_nonzero_rewards} non-zero rewards (base rate "
        f"{_num(ol['reward']['base_rate'], 4)}), {first.real_ends} ends (base rate "
        f"{_num(ol['end']['base_rate'], 4)}); chance precision = base rate"
    )
    lines.append(f"{'':<20}" + "".join(f"{k:>{width}}" for k in cols))
    rows: list[tuple[str, Any]] = [
        ("reward acc", lambda s: _num(s.reward_accuracy)),
        ("end acc", lambda s: _num(s.end_accuracy)),
    ]
    for kind in ("reward", "end"):
        for mode, short in (("open_loop", "open"), ("teacher_forced", "t-f")):
            rows.append(
                (
                    f"{kind} {short} R/P/F1",
                    lambda s, kind=kind, mode=mode: "/".join(
                        _num(((getattr(s, mode) or {}).get(kind) or {}).get(x), 2)
                        for x in ("recall", "precision", "f1")
                    ),
                )
            )
    rows.append(("frames/s", lambda s: _num(s.frames_per_s, 1)))
    for name, fmt in rows:
        lines.append(f"{name:<20}" + "".join(f"{fmt(comparison.scores[k]):>{width}}" for k in cols))
    lines.append(
        "R/P/F1: recall / precision / F1 of non-zero rewards (by sign) and of ends; open: the "
        "sampled open-loop rollout; t-f: teacher-forced on real frames; '-': nothing to divide by"
    )
    return "\n".join(lines)
