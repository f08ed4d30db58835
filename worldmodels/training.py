"""One generic update for every trainable stage, and the per-stage training settings.

Every stage (a world's denoiser, its reward/end model, a tokenizer, an agent) exposes
``loss(input) -> (loss, logs)``; ``Updater`` owns its optimizer, warm-up schedule, gradient
clipping and mixed precision, and ``StageTrainer`` adds a replay sampler and the epoch counts.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from worldmodels import distributed
from worldmodels.checks import at_least, in_range, positive
from worldmodels.errors import UserError
from worldmodels.graphs import CapturedCall
from worldmodels.interfaces import Batch
from worldmodels.metrics import add_event_rates
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
    """bf16 autocast where asked (CUDA; also a real speed-up on CPUs with AMX or AVX512-BF16), else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def logs_to_floats(logs: dict[str, Any], *, mean_over_ranks: bool = False) -> dict[str, float]:
    """Scalars to log: tensors (0-dim) are read back together, in one host synchronisation
    (with ``mean_over_ranks``, averaged over the ranks of a ``torchrun`` first: one all-reduce)."""
    keys = [k for k, v in logs.items() if isinstance(v, Tensor)]
    out = {k: float(v) for k, v in logs.items() if not isinstance(v, Tensor)}
    if keys:
        stacked = torch.stack([logs[k].detach().float().reshape(()) for k in keys])
        if mean_over_ranks:
            distributed.mean_(stacked)
        values = stacked.tolist()
        out.update(zip(keys, values, strict=True))
    return {k: out[k] for k in logs}


class Updater:
    """Optimizer + warm-up + clipping + autocast for one module: ``update(loss_fn, x) -> logs``.

    ``loss_fn(x) -> (loss, logs)``; the logs may be 0-dim tensors (read back once per step, all
    together). With ``graphs`` (CUDA), the whole step - loss, backward, clipping and the
    optimizer's step - is captured in a CUDA graph after two eager steps and replayed, with the
    learning rate and the non-finite check on the device (fused AdamW skips the step where the
    loss or the gradient norm is not finite, as in the eager path). ``x`` is then a pytree of
    tensors of the same shapes at every step (a ``Batch``), copied into the graph's inputs, and
    ``loss_fn`` must be static (no host synchronisation, no Python state that changes per call):
    see ``worldmodels.graphs``. ``graphs="simulate"`` runs the same code path eagerly with the same
    buffers, on any device (the CPU tests).

    Under ``torchrun`` (``worldmodels.distributed``) the eager step runs the loss through
    ``DistributedDataParallel``: every rank's backward pass ends with the gradients averaged over
    the ranks, a step is skipped on every rank where it is not finite on one, and the logs are
    the ranks' mean. CUDA graphs are not combined with it (the run turns them off)."""

    def __init__(
        self, module: nn.Module, cfg: StageTraining, device: torch.device, *, amp: bool = False,
        graphs: bool | str = False,
    ) -> None:  # fmt: skip
        self.module = module
        self.cfg = cfg
        self.device = device
        self.amp = amp
        self.graphs: str | None = (
            ("cuda" if graphs is True else graphs) if graphs else None
        )  # None, "cuda" or "simulate"
        if self.graphs == "cuda" and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        if self.graphs and distributed.active():
            raise ValueError(
                "a graphed Updater does not train data-parallel: graphs off under torchrun"
            )
        params = [p for p in module.parameters() if p.requires_grad]
        if self.graphs:
            # Static on the device: the learning rate (a tensor the schedule fills in place) and
            # the step counters (capturable), so that replays see the schedule.
            self._lr = torch.tensor(cfg.lr, device=device)
            self.optimizer = torch.optim.AdamW(
                params, lr=self._lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
                fused=True, capturable=True,
            )  # fmt: skip
        else:
            self.optimizer = torch.optim.AdamW(
                params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
                fused=device.type == "cuda",
            )  # fmt: skip
        warmup = max(cfg.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.scheduler.base_lrs = [cfg.lr]  # a float either way
        if self.graphs:  # the first step's rate
            self._set_lr(cfg.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch))
        self.steps = 0
        self.skipped = 0
        """Steps skipped so far because the loss or the gradient norm was not finite."""
        self.skipped_in_a_row = 0
        """Consecutive skipped steps up to the last one (0 after a step that was applied)."""
        self._captured: CapturedCall | None = None
        self._captured_loss: Callable | None = None
        self._ddp: distributed.DataParallelLoss | None = None  # built by the first step

    def update(self, loss_fn: Callable[[Any], tuple[Tensor, dict]], x: Any) -> dict[str, float]:
        """One step: loss, backward, clipping, optimizer and schedule step. A step whose loss or
        gradient norm is not finite changes no weight and no optimizer state (it is counted in
        ``skipped``, and the logs say ``nonfinite = 1``); the learning-rate schedule still
        advances, so a skipped step costs one step of the schedule, like an applied one."""
        self.module.train()
        if self.graphs:
            logs = self._captured_step(loss_fn, x)
            finite = logs["nonfinite"] == 0.0
        else:
            logs, finite = self._eager_step(loss_fn, x)
        if finite:
            self.skipped_in_a_row = 0
        else:
            self.skipped += 1
            self.skipped_in_a_row += 1
        self.scheduler.step()
        self.steps += 1
        lr = self.cfg.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        if self.graphs:
            self._set_lr(lr)
        logs["lr"] = lr
        return logs

    def _set_lr(self, lr: float) -> None:
        """The captured optimizer step reads one learning-rate tensor: fill it in place, and
        make it every group's, whatever the scheduler did with the entry (torch versions
        differ there)."""
        self._lr.fill_(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr

    def _eager_step(self, loss_fn: Callable, x: Any) -> tuple[dict[str, float], bool]:
        self.optimizer.zero_grad(set_to_none=True)
        parallel = distributed.active()
        if parallel and self._ddp is None:
            self._ddp = distributed.DataParallelLoss(self.module)  # all ranks, same step
        with autocast(self.device, self.amp):
            loss, logs = loss_fn(x) if self._ddp is None else self._ddp(loss_fn, x)
        loss.backward()  # under DDP: the gradients are the ranks' mean when it returns
        grad_norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
        finite = distributed.all_true(finite, self.device)  # every rank skips, or none
        if finite:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        logs = logs_to_floats({**logs, "grad_norm": grad_norm}, mean_over_ranks=parallel)
        logs["nonfinite"] = float(not finite)
        return logs, finite

    def _static_step(self, x: Any) -> dict[str, Tensor]:
        """The whole step as tensors only (captured): skips the update where non-finite."""
        assert self._captured_loss is not None
        self.optimizer.zero_grad(set_to_none=True)  # backward assigns: graph-owned gradients
        with autocast(self.device, self.amp):
            loss, logs = self._captured_loss(x)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
        found_inf = (~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))).float()
        # fused AdamW: no step where 1 (0-dim)
        self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]  # step() getattr()s it
        self.optimizer.step()
        del self.optimizer.found_inf  # type: ignore[attr-defined]  # not in torch's Optimizer type
        out = {k: v.detach() for k, v in logs.items() if isinstance(v, Tensor)}
        out["grad_norm"] = grad_norm.detach()
        out["nonfinite"] = found_inf
        return out

    def _captured_step(self, loss_fn: Callable, x: Any) -> dict[str, float]:
        if self._captured is None:
            self._captured_loss = loss_fn
            mode: Literal["cuda", "simulate"] = "cuda" if self.graphs == "cuda" else "simulate"
            name = f"{type(self.module).__name__}'s training step"
            self._captured = CapturedCall(self._static_step, mode=mode, name=name)
        elif not _same_function(loss_fn, self._captured_loss):
            raise ValueError("a graphed Updater trains one loss function; build another for this")
        return logs_to_floats(self._captured(x))

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
            "skipped": self.skipped,
            "skipped_in_a_row": self.skipped_in_a_row,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a state saved by any Updater, graphed or not (a run resumed with or without
        CUDA graphs): the optimizer keeps this one's settings."""
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            lr = float(group["lr"])
            if self.graphs:
                group.update(capturable=True, fused=True, foreach=None)
                self._set_lr(lr)
                for p in group["params"]:
                    st = self.optimizer.state.get(p, {})
                    if "step" in st:
                        st["step"] = st["step"].to(self.device, torch.float32)
            else:
                group.update(capturable=False, fused=self.device.type == "cuda")  # as built
                group["lr"] = lr
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = [float(x) for x in self.scheduler.base_lrs]
        self.steps = int(state["steps"])
        self.skipped = int(state.get("skipped", 0))
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))


def _same_function(a: Callable, b: Callable | None) -> bool:
    """``a`` and ``b`` are one function: equal (a bound method of the same object), or
    ``functools.partial`` of it over the very same arguments (a new partial each update)."""
    if a == b:
        return True
    if not (isinstance(a, functools.partial) and isinstance(b, functools.partial)):
        return False
    return (
        a.func == b.func
        and len(a.args) == len(b.args)
        and all(x is y for x, y in zip(a.args, b.args, strict=True))
        and a.keywords.keys() == b.keywords.keys()
        and all(a.keywords[k] is b.keywords[k] for k in a.keywords)
    )


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
    """A trainable part of a world: its module, its loss on a replay ``Batch``, its settings.

    ``prepare(batch) -> (x, logs)``, where given, runs on the host before each step (e.g. a
    look-up in a token cache, which depends on what is cached) and ``loss`` takes its ``x``: the
    loss then is a static function that a CUDA graph can replay."""

    name: str
    module: nn.Module
    loss: Callable[[Any], tuple[Tensor, dict]]
    training: StageTraining
    after_update: Callable[[], None] | None = None  # e.g. bump a version that caches depend on
    prepare: Callable[[Batch], tuple[Any, dict[str, float]]] | None = None

    def loss_of(self, batch: Batch) -> tuple[Tensor, dict]:
        """``loss`` on a replay batch (through ``prepare`` where there is one)."""
        if self.prepare is None:
            return self.loss(batch)
        x, extra = self.prepare(batch)
        loss, logs = self.loss(x)
        return loss, {**logs, **extra}


class StageTrainer:
    """Trains one ``Stage`` on segments sampled from replay."""

    def __init__(
        self, stage: Stage, store: ReplayStore, device: torch.device, *, seed: int,
        amp: bool = False, graphs: bool | str = False, max_nonfinite_in_a_row: int | None = None,
    ) -> None:  # fmt: skip
        cfg = stage.training
        self.stage = stage
        self.device = device
        self.max_nonfinite_in_a_row = max_nonfinite_in_a_row
        self.updater = Updater(stage.module, cfg, device, amp=amp, graphs=graphs)
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
        """``steps`` updates; returns the mean of each logged value (reward / end event counts
        turned into ``<event>_recall``, ``_precision`` and ``_base_rate`` over the ``steps``
        batches: ``worldmodels.metrics``), and ``skipped_steps``: the
        steps skipped so far for a non-finite loss or gradient norm. Raises
        ``NonFiniteTraining`` after ``max_nonfinite_in_a_row`` skipped steps in a row."""
        logs = []
        for batch in self.batches(steps):
            logs.append(self.step(batch))
        out = add_event_rates(mean_logs(logs))  # reward / end counts -> recall, precision
        out["skipped_steps"] = float(self.updater.skipped)
        return out

    def step(self, batch: Batch) -> dict[str, float]:
        """One update on ``batch``; returns its logs."""
        x, extra = (batch, {}) if self.stage.prepare is None else self.stage.prepare(batch)
        logs = self.updater.update(self.stage.loss, x)
        if self.stage.after_update is not None:
            self.stage.after_update()
        check_nonfinite(self.stage.name, self.updater.skipped_in_a_row, self.max_nonfinite_in_a_row)
        return {**logs, **extra}

    def state_dict(self) -> dict:
        return {"updater": self.updater.state_dict(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updater.load_state_dict(state["updater"])
        self.sampler.load_state_dict(state["sampler"])
