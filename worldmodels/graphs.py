"""Replaying hot loops as CUDA graphs, and the CPU stand-ins that test them.

Small RL networks on a GPU are bound by kernel launches: an imagined step of the IRIS world is
hundreds of tiny kernels, each launched from Python. ``CapturedCall`` records a function's
kernels once (``torch.cuda.CUDAGraph``) and replays them with one launch. The function must be
*static*: the same shapes, no host synchronisation (no ``.item()``, ``bool(tensor)``, boolean
indexing), no Python control flow on tensor values, and no Python state that changes from call
to call. Its inputs and outputs are pytrees (dicts, tuples, lists) of tensors and plain Python
values; the Python values and the tensors' shapes, dtypes and devices form the graph's key (each
key is captured once).

How a replay sees its inputs: the graph reads fixed *static* input tensors, so each call copies
its tensors into them, except a tensor that already is the static one (a state carried from call
to call in place costs no copy). The static inputs are copies of the capturing call's tensors,
except for the arguments the caller *donates* (``donate``: their positions): those tensors
themselves become the static inputs, to be overwritten by later calls' copies (a state or spares
that only the caller holds, and that change only at a reset, then cost no copy per call). Its outputs are fixed static tensors too, overwritten by the
next replay: a caller that keeps an output across calls clones it. The first ``warmup`` calls of
each key run eagerly (on a side stream, as CUDA graph capture requires), and are real calls.

``mode="simulate"`` (any device, used by the CPU tests) keeps exactly these buffer semantics -
static inputs that receive copies, static outputs overwritten by every call - but runs the
function eagerly each time: code that is wrong under replay (keeping an output that the next call
overwrites, relying on a Python side effect) is wrong there too. ``torch.compile(fullgraph=True,
dynamic=False)`` is the other CPU proxy: it proves there is no graph break and no recompilation.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from worldmodels import contract
from worldmodels.errors import UserError

Mode = Literal["cuda", "simulate"]

_inside = 0  # > 0 while a CapturedCall runs its function: nested ones then call theirs directly


@contextlib.contextmanager
def _running():
    global _inside
    _inside += 1
    try:
        yield
    finally:
        _inside -= 1


def graphs_enabled(setting: str, device: torch.device) -> bool:
    """``run.cuda_graphs`` -> whether to capture: ``auto`` = on CUDA only; ``on`` needs CUDA."""
    if setting not in ("auto", "on", "off"):
        raise UserError(f"run.cuda_graphs must be auto, on or off, got {setting!r}")
    if setting == "on" and device.type != "cuda":
        raise UserError(
            f"run.cuda_graphs=on needs a CUDA device, the run is on {device} (use auto or off)"
        )
    return setting != "off" and device.type == "cuda"


def capture_refusal(world: Any) -> str | None:
    """Why ``world``'s imagination cannot be captured (None if it declares that it can:
    ``graph_capture = True``; a world may set it to a sentence saying why not)."""
    return contract.capture_refusal(world)


def _key(leaves: list[Any], spec: Any) -> tuple:
    sig: list[tuple[Any, ...]] = []
    for leaf in leaves:
        if isinstance(leaf, Tensor):
            sig.append(("T", tuple(leaf.shape), leaf.dtype, leaf.device, leaf.requires_grad))
        else:
            sig.append(("V", leaf))
    return (spec, tuple(sig))


class _Entry:
    def __init__(self) -> None:
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: list[Any] = []
        self.static_out: Any = None
        self.out_leaves: list[Any] = []
        self.out_spec: Any = None


class CapturedCall:
    """``fn(*args)`` replayed from a CUDA graph after ``warmup`` eager calls (see the module
    docstring). ``pool`` shares a memory pool between graphs that are replayed in a fixed order;
    by default each graph has its own."""

    def __init__(
        self, fn: Callable[..., Any], *, mode: Mode = "cuda", warmup: int = 2,
        name: str = "", pool: Any = None, donate: tuple[int, ...] = (),
    ) -> None:  # fmt: skip
        if mode not in ("cuda", "simulate"):
            raise ValueError(f"mode must be 'cuda' or 'simulate', got {mode!r}")
        self.fn = fn
        self.mode = mode
        self.warmup = max(0, warmup)
        self.name = name or getattr(fn, "__qualname__", "fn")
        self.pool = pool
        self.donate = tuple(donate)
        self._entries: dict[tuple, _Entry] = {}
        self.captures = 0  # graphs captured so far (one per key)
        self.replays = 0

    def __deepcopy__(self, memo: dict) -> CapturedCall:
        """A copy of the function, with no graph captured yet (graphs cannot be copied)."""
        return CapturedCall(
            copy.deepcopy(self.fn, memo), mode=self.mode, warmup=self.warmup, name=self.name,
            donate=self.donate,
        )  # fmt: skip

    def __call__(self, *args: Any) -> Any:
        if _inside:  # part of an enclosing captured function (e.g. a step inside an update)
            return self.fn(*args)
        leaves, spec = tree_flatten(args)
        key = _key(leaves, spec)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        if entry.static_out is None and entry.calls < self.warmup:
            entry.calls += 1
            return self._eager(args)
        if entry.static_out is None:
            self._capture(entry, args, leaves, spec)
            if self.mode == "simulate":  # the capture ran fn once: that was this call
                self.replays += 1
                return entry.static_out
        self._copy_inputs(entry, leaves)
        if self.mode == "cuda":
            assert entry.graph is not None
            entry.graph.replay()
        else:  # simulate: the same buffers, computed eagerly
            with _running():
                out = self.fn(*tree_unflatten(entry.static_in, spec))
            out_leaves, _ = tree_flatten(out)
            for dst, src in zip(entry.out_leaves, out_leaves, strict=True):
                if isinstance(dst, Tensor) and dst is not src:
                    dst.copy_(src)
        self.replays += 1
        return entry.static_out

    def _eager(self, args: tuple) -> Any:
        if self.mode != "cuda":
            with _running():
                return self.fn(*args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _running():
            out = self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self, entry: _Entry, args: tuple, leaves: list[Any], spec: Any) -> None:
        donated = {id(x) for i in self.donate if i < len(args) for x in tree_flatten(args[i])[0]}
        entry.static_in = [
            x.detach().clone() if isinstance(x, Tensor) and id(x) not in donated else x
            for x in leaves
        ]
        args = tree_unflatten(entry.static_in, spec)
        if self.mode == "cuda":
            entry.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(entry.graph, pool=self.pool), _running():
                out = self.fn(*args)
        else:
            with _running():
                out = self.fn(*args)
        entry.out_leaves, entry.out_spec = tree_flatten(out)
        for leaf in entry.out_leaves:
            if not isinstance(leaf, (Tensor, type(None), bool, int, float, str)):
                raise TypeError(
                    f"{self.name}: a captured function returns tensors and plain values only, "
                    f"got {type(leaf).__name__}"
                )
        entry.static_out = out
        self.captures += 1

    @staticmethod
    def _copy_inputs(entry: _Entry, leaves: list[Any]) -> None:
        with torch.no_grad():
            for dst, src in zip(entry.static_in, leaves, strict=True):
                if isinstance(src, Tensor) and src is not dst:
                    dst.copy_(src)
