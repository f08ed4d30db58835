"""One run across processes (``torchrun``): data-parallel world stages and agent updates.

``torchrun --nproc-per-node N train.py ...`` starts N processes (ranks). Each builds the same
world and agent from the run's seed, then trains data-parallel: every gradient step of a world
stage, and every agent update in imagination, runs on each rank with its own batch (its own
replay samples, its own imagined trajectories) and PyTorch's ``DistributedDataParallel``
averages the gradients, so the ranks take the same optimizer step and stay identical. One step
of N ranks is one step of a single process at N times the batch (``docs/distributed.md``).

Rank 0 owns everything else: the run directory and its lock, real-env collection (its episode
files are the replay; the other ranks read the new ones after each collection), tests, videos,
TensorBoard and checkpoints (which hold each rank's samplers and RNGs, gathered). A process
started without ``torchrun`` is rank 0 of a world of 1, and every function here is then a no-op;
``torchrun --nproc-per-node 1`` makes a process group of one (DDP, NCCL) with the same results.

Backends: NCCL on CUDA (one GPU per rank: ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import datetime
import gc
import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from worldmodels.errors import UserError
from worldmodels.seeding import derive_seed


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets what
    ``init_process_group`` reads: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``), even as the one
    rank of a world of one (which then trains through DDP and NCCL like any rank)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 without one); readable before ``init``."""
    return int(os.environ.get("RANK", "0"))


def local_world_size() -> int:
    """How many ranks the launcher started on this machine (1 without one)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def active() -> bool:
    """Whether this process is a rank of an initialised process group (``init``)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the rank that collects, tests, logs and writes checkpoints."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` set up (no-op without one) and return this rank's
    device: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank), with NCCL; CPU uses gloo."""
    if not launched() or active():
        return device
    if not dist.is_available():
        raise UserError("torchrun started this process, but this torch has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is not None:
        raise UserError(
            f"--device {device}: under torchrun each rank takes cuda:LOCAL_RANK; use --device "
            "cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(
                f"torchrun started local rank {local}, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s): use --nproc-per-node <= that"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    # A rank that dies makes torchrun stop the others, so the timeout only bounds a real hang; it
    # is long because the other ranks wait while rank 0 plays its real test episodes.
    # NCCL is told its GPU (device_id) so that its barriers need not guess it.
    dist.init_process_group(
        backend,
        timeout=datetime.timedelta(hours=6),
        device_id=device if backend == "nccl" else None,
    )
    return device


def close(*, together: bool = True) -> None:
    """Leave the process group: DDP's wrappers first (a reducer destroyed after its process
    group can abort the process as it exits), then all ranks at once (``together``; a rank that
    stops on an error leaves alone, and torchrun stops the others)."""
    if dist.is_available() and dist.is_initialized():
        for loss in list(_LIVE):
            loss.release()
        gc.collect()
        if together:
            dist.barrier()
        dist.destroy_process_group()


def rank_seed(seed: int, *names: str | int) -> int:
    """``derive_seed(seed, *names)`` on rank 0 (so that one process is rank 0 of a world of
    one), a seed of this rank's own on the others: each rank samples its own batches."""
    r = rank()
    return derive_seed(seed, *names) if r == 0 else derive_seed(seed, *names, "rank", r)


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (plain Python data between this run's own ranks)."""
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (in place)."""
    if not active():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def check_same(modules: dict[str, nn.Module], what: str = "") -> None:
    """A one-line ``UserError`` where a rank's parameters of one of ``modules`` differ from
    rank 0's (two checksums per module, one gather): its training did not average over the
    ranks. The tolerance (relative 1e-5) lets through what kernels on different GPUs may round
    differently, not ranks that train apart."""
    if not active():
        return
    sums = {}
    for name, module in modules.items():
        with torch.no_grad():
            flat = [p.detach().double().reshape(-1) for p in module.parameters()]
            if flat:
                x = torch.cat(flat)
                sums[name] = (float(x.sum()), float(x.square().sum()))
    everyone = gather(sums)
    for r, theirs in enumerate(everyone[1:], start=1):
        for name, (s0, q0) in everyone[0].items():
            s1, q1 = theirs[name]
            if (
                abs(q1 - q0) > 1e-5 * max(abs(q0), 1e-12)
                or abs(s1 - s0) > 1e-5 * max(q0, 1e-12) ** 0.5
            ):
                raise UserError(
                    f"rank {r} holds other weights of the {name} than rank 0{what}: its training "
                    "did not average over the ranks (a component that declares data_parallel "
                    "must train through worldmodels.training.Updater)"
                )


def mean_(values: Tensor) -> Tensor:
    """The mean over ranks of ``values`` (in place; one all-reduce)."""
    if active():
        dist.all_reduce(values)
        values /= world_size()
    return values


def all_true(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (one all-reduce of one number)."""
    if not active():
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() == 0)


class _LossModule(nn.Module):
    """What ``DistributedDataParallel`` wraps: the stage's module, and a forward that is its
    loss function (a stage's loss calls its module's methods, not its ``forward``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module
        self.loss_fn: Callable[[Any], Any] | None = None

    def forward(self, x: Any) -> Any:
        assert self.loss_fn is not None
        return self.loss_fn(x)


_LIVE: weakref.WeakSet[DataParallelLoss] = weakref.WeakSet()


class DataParallelLoss:
    """``loss_fn(x)`` of one module under DDP: calling it runs the loss through
    ``DistributedDataParallel``, so that the backward pass averages the gradients over the
    ranks. Rank 0's weights are broadcast to the others when it is built."""

    def __init__(self, module: nn.Module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.wrapper = _LossModule(module)
        # static_graph: the loss is the same function at every step, so the parameters it uses
        # are the same too; DDP finds them in the first step, and a stage whose loss leaves some
        # of its module's parameters out (a head used only when imagining) needs nothing more.
        self.ddp = DistributedDataParallel(
            self.wrapper,
            device_ids=None,  # the inputs are on the module's device already: leave them be
            static_graph=True,
        )
        _LIVE.add(self)

    def release(self) -> None:
        """Drop the DDP wrapper (``close`` does, before the process group goes)."""
        self.ddp = None  # type: ignore[assignment]

    def __call__(self, loss_fn: Callable[[Any], Any], x: Any) -> Any:
        self.wrapper.loss_fn = loss_fn
        try:
            return self.ddp(x)
        finally:
            self.wrapper.loss_fn = None
