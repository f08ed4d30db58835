"""One generic update for every trainable stage, and the per-stage training settings.

Every stage (a world's denoiser, its reward/end model, a tokenizer, an agent) exposes
``loss(input) -> (loss, logs)``; ``Updater`` owns its optimizer, warm-up schedule, gradient
clipping and mixed precision, and ``StageTrainer`` adds a replay sampler and the epoch counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from worldmodels.checks import at_least, in_range, positive
from worldmodels.errors import UserError
from worldmodels.interfaces import Batch
from worldmodels.replay import ReplayStore, SegmentSampler

DIAMOND_RECENCY = (0.1, 0.1, 0.1, 0.7)  # newest quarter of episodes gets 70% of the draws


@dataclass(frozen=True)
class StageTraining:
    """How one stage trains: when, how much, on what segments, with which optimizer."""

    steps_per_epoch: int = 400
    """Gradient steps per epoch."""
    first_epoch_steps: int = 0
    """Steps of the first epoch it trains in (0 = steps_per_epoch); DIAMOND warms up longer."""
    start_epoch: int = 1
    """First epoch in which the stage trains (IRIS starts its stages late)."""
    batch_size: int = 32
    """Segments per batch."""
    seq_len: int = 1
    """Rows per segment."""
    pad_left: int = 0
    """Up to this many padding rows before an episode's start."""
    pad_right: int = 0
    """Up to this many padding rows after an episode's final observation."""
    recency_weights: tuple[float, ...] | None = DIAMOND_RECENCY
    """Episode draw weights over age buckets, oldest to newest; None = uniform."""
    lr: float = 1e-4
    """AdamW learning rate after warm-up."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0."""
    max_grad_norm: float = field(default=1.0, metadata={"allow_inf": True})
    """Gradient clipping by global norm (``.inf``: no clipping)."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""

    def __post_init__(self) -> None:
        at_least(self, 0, "steps_per_epoch", "first_epoch_steps", "warmup_steps", "weight_decay")
        at_least(self, 1, "start_epoch", "batch_size", "seq_len")
        in_range(self, 0, self.seq_len - 1, "pad_left", "pad_right")
        positive(self, "lr", "adam_eps")
        if not self.max_grad_norm > 0:
            raise ValueError(
                f"max_grad_norm must be > 0 (.inf: no clipping), got {self.max_grad_norm}"
            )
        w = self.recency_weights
        if w is not None and (not w or min(w) < 0 or sum(w) <= 0):
            raise ValueError(
                f"recency_weights must be weights >= 0 that are not all zero (or null), got {w}"
            )

    def steps_in(self, epoch: int) -> int:
        """Gradient steps in ``epoch`` (1-based); 0 before ``start_epoch``."""
        if epoch < self.start_epoch:
            return 0
        if epoch == self.start_epoch and self.first_epoch_steps:
            return self.first_epoch_steps
        return self.steps_per_epoch


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked (CUDA; also a real speed-up on AMX CPUs), else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Updater:
    """Optimizer + warm-up + clipping + autocast for one module: ``update(loss_fn, x) -> logs``."""

    def __init__(
        self, module: nn.Module, cfg: StageTraining, device: torch.device, *, amp: bool = False
    ) -> None:
        self.module = module
        self.cfg = cfg
        self.device = device
        self.amp = amp
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
            fused=device.type == "cuda",
        )  # fmt: skip
        warmup = max(cfg.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.steps = 0
        self.skipped = 0
        """Steps skipped so far because the loss or the gradient norm was not finite."""
        self.skipped_in_a_row = 0
        """Consecutive skipped steps up to the last one (0 after a step that was applied)."""

    def update(self, loss_fn: Callable[[Any], tuple[Tensor, dict]], x: Any) -> dict[str, float]:
        """One step: loss, backward, clipping, optimizer and schedule step. A step whose loss or
        gradient norm is not finite changes no weight and no optimizer state (it is counted in
        ``skipped``, and the logs say ``nonfinite = 1``); the learning-rate schedule still
        advances, so a skipped step costs one step of the schedule, like an applied one."""
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            loss, logs = loss_fn(x)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.skipped_in_a_row = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.skipped_in_a_row += 1
        self.scheduler.step()
        self.steps += 1
        logs = {k: float(v) for k, v in logs.items()}
        logs["grad_norm"] = float(grad_norm)
        logs["lr"] = self.scheduler.get_last_lr()[0]
        logs["nonfinite"] = float(not finite)
        return logs

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
            "skipped": self.skipped,
            "skipped_in_a_row": self.skipped_in_a_row,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
        self.skipped = int(state.get("skipped", 0))
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))


class NonFiniteTraining(UserError):
    """Too many consecutive steps of one stage had a non-finite loss or gradient norm."""


def check_nonfinite(name: str, in_a_row: int, limit: int | None) -> None:
    """``NonFiniteTraining`` once ``in_a_row`` consecutive steps of ``name`` were skipped for a
    non-finite loss or gradient norm and ``limit`` (None: no limit) is reached."""
    if limit is not None and in_a_row >= limit:
        raise NonFiniteTraining(
            f"{name}: {in_a_row} training steps in a row had a non-finite loss or gradient norm "
            "(NaN or inf) and were skipped, so its weights have diverged: lower its learning "
            "rate (or raise schedule.max_nonfinite_in_a_row) and start a new run"
        )


def mean_logs(logs: list[dict[str, float]]) -> dict[str, float]:
    """Average each key over the steps that reported it."""
    out: dict[str, list[float]] = {}
    for entry in logs:
        for key, value in entry.items():
            out.setdefault(key, []).append(float(value))
    return {key: sum(values) / len(values) for key, values in out.items()}


@dataclass
class Stage:
    """A trainable part of a world: its module, its loss on a replay ``Batch``, its settings."""

    name: str
    module: nn.Module
    loss: Callable[[Batch], tuple[Tensor, dict]]
    training: StageTraining
    after_update: Callable[[], None] | None = None  # e.g. bump a version that caches depend on


class StageTrainer:
    """Trains one ``Stage`` on segments sampled from replay."""

    def __init__(
        self, stage: Stage, store: ReplayStore, device: torch.device, *, seed: int,
        amp: bool = False, max_nonfinite_in_a_row: int | None = None,
    ) -> None:  # fmt: skip
        cfg = stage.training
        self.stage = stage
        self.device = device
        self.max_nonfinite_in_a_row = max_nonfinite_in_a_row
        self.updater = Updater(stage.module, cfg, device, amp=amp)
        self.sampler = SegmentSampler(
            store, cfg.seq_len, pad_left=cfg.pad_left, pad_right=cfg.pad_right,
            recency_weights=cfg.recency_weights, seed=seed,
        )  # fmt: skip

    def batches(self, n: int) -> Iterator[Batch]:
        for _ in range(n):
            yield self.sampler.sample(self.stage.training.batch_size).to(
                self.device, non_blocking=True
            )

    def train(self, steps: int) -> dict[str, float]:
        """``steps`` updates; returns the mean of each logged value, and ``skipped_steps``: the
        steps skipped so far for a non-finite loss or gradient norm. Raises
        ``NonFiniteTraining`` after ``max_nonfinite_in_a_row`` skipped steps in a row."""
        logs = []
        for batch in self.batches(steps):
            logs.append(self.updater.update(self.stage.loss, batch))
            if self.stage.after_update is not None:
                self.stage.after_update()
            check_nonfinite(
                self.stage.name, self.updater.skipped_in_a_row, self.max_nonfinite_in_a_row
            )
        out = mean_logs(logs)
        out["skipped_steps"] = float(self.updater.skipped)
        return out

    def state_dict(self) -> dict:
        return {"updater": self.updater.state_dict(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updater.load_state_dict(state["updater"])
        self.sampler.load_state_dict(state["sampler"])
