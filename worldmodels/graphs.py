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
overwrites) is wrong there too. It also *audits* the capturing call and every simulated replay,
kernel by kernel (a ``TorchDispatchMode``), for what CUDA capture refuses or a replay would not
repeat, and raises ``NotCapturable`` naming the operation and the line that ran it:

* a host synchronisation: a tensor's value read on the host (``.item()``, ``bool()``,
  ``float()``, ``.tolist()``, ``.numpy()``, ``.cpu()``), an operation whose output shape depends
  on values (boolean-mask indexing, ``nonzero``, ``unique``, ``masked_select``...);
* a tensor made from host data and read by a kernel (``torch.tensor(...)``, ``x[i] = value``
  into one element: on CUDA a copy from the host, which waits for it), a tensor made by a
  factory without ``device=`` (``torch.zeros(n)``: a CPU tensor even on a GPU run, and a graph
  replays no CPU kernel), or a draw from a ``torch.Generator`` of the function's own;
* a replay that would not do what the capture did: another sequence of kernels (Python control
  flow that changed), another Python value in one (a Python number that changes from call to
  call), or a tensor from outside the call that is not the one the capture read (an attribute
  reassigned between calls rather than written in place).

A call may come from inside an autocast region of the caller's (an eager bf16 update whose loss
steps a captured dream). Autocast keeps the low-precision copies of the weights it casts until
its outermost region ends, and does not notice a weight changing in between: a graph captured
from that cache would read copies made outside it, freed when the region ends, and never cast
the weights again. So the cache is emptied before and after every capture and warm-up (and every
simulated replay): the graph casts the weights it reads itself, at each replay.

``torch.compile(fullgraph=True, dynamic=False)`` is the other CPU proxy: it proves there is no
graph break and no recompilation.

A capture that fails on CUDA raises, except inside ``eager_on_failure`` (``run.cuda_graphs:
auto``): that function then says so in one line and runs eagerly from then on.
"""

from __future__ import annotations

import contextlib
import copy
import os
import traceback
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from worldmodels import contract
from worldmodels.errors import UserError, one_line

Mode = Literal["cuda", "simulate"]

_inside = 0  # > 0 while a CapturedCall runs its function: nested ones then call theirs directly
_fallback: Callable[[str], None] | None = None  # set by eager_on_failure: where to say so


@contextlib.contextmanager
def _running():
    global _inside
    _inside += 1
    try:
        yield
    finally:
        _inside -= 1


@contextlib.contextmanager
def _own_casts():
    """Within: no low-precision weight copies from a caller's autocast region, and none left to
    it (see the module docstring)."""
    torch.clear_autocast_cache()
    try:
        yield
    finally:
        torch.clear_autocast_cache()


@contextlib.contextmanager
def eager_on_failure(log: Callable[[str], None]):
    """Within: a ``CapturedCall`` whose capture fails says so in one line to ``log`` and runs its
    function eagerly from then on (``run.cuda_graphs: auto``: graphs where they work); outside,
    the failure is raised (``on``). The audit's ``NotCapturable`` (``mode="simulate"``, the CPU
    tests) is always raised."""
    global _fallback
    before, _fallback = _fallback, log
    try:
        yield
    finally:
        _fallback = before


def capturing() -> bool:
    """Whether a ``CapturedCall`` is running its function (a warm-up, the capture, a replay's
    simulation): code with a CPU-only shortcut that reads the host takes its static path then,
    so that the CPU stand-in runs what a CUDA graph replays."""
    return _inside > 0


class NotCapturable(ValueError):
    """A function run through ``CapturedCall(mode="simulate")`` does what CUDA graph capture
    refuses, or what a replay would not repeat (see the module docstring)."""


_aten = torch.ops.aten
# Operations that read a tensor's value on the host or size their output by it: on CUDA each one
# waits for the device, which stream capture refuses.
_HOST_READS = {
    _aten._local_scalar_dense.default: "reads a tensor's value on the host (.item(), bool(), "
    "float(), int(), or Python control flow on a tensor)",
    _aten.is_nonzero.default: "reads a tensor's value on the host (bool())",
    _aten.equal.default: "compares whole tensors on the host (torch.equal)",
}
_VALUE_SHAPED = (
    "nonzero", "argwhere", "masked_select", "_unique", "_unique2", "unique_dim",
    "unique_consecutive", "unique_dim_consecutive", "bincount",
)  # fmt: skip
_MASK_INDEXED = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
                 _aten._index_put_impl_.default}  # fmt: skip
# torch.tensor(data) (and x[i] = value) lift host data into a tensor; filling a tensor with one
# reads its value as a kernel argument (x[i:j] = value on CUDA), any other use copies it over.
_LIFTS = {_aten.lift_fresh.default, _aten.lift_fresh_copy.default}
_FILLS = {_aten.fill_.Tensor, _aten.fill.Tensor}
_PLAIN = (bool, int, float, complex, str, torch.dtype, torch.device, torch.layout,
          torch.memory_format)  # fmt: skip
_TORCH_DIR = os.path.dirname(torch.__file__)


def _ptr(x: Tensor) -> int:
    """Where a tensor's memory starts (0 for a tensor without memory)."""
    return x.untyped_storage().data_ptr() if x.device.type != "meta" else 0


def _where() -> str:
    """The innermost line of the stack outside torch and this module: what ran the operation."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(_TORCH_DIR) and frame.filename != __file__:
            return f"{os.path.relpath(frame.filename)}:{frame.lineno}"
    return "?"


def _sig(x: Any, internal: set[int]) -> Any:
    """What of one argument a replay must see again: a tensor's shape and dtype (and, for a tensor
    from outside the call, its memory), or a plain value itself."""
    if isinstance(x, Tensor):
        ptr = _ptr(x)
        return ("T", tuple(x.shape), x.dtype, None if ptr in internal else ptr)
    if isinstance(x, (list, tuple)):
        return tuple(_sig(v, internal) for v in x)
    if x is None or isinstance(x, _PLAIN):
        return x
    return ("obj", type(x).__name__)  # e.g. a profiler record: not compared


class _Audit(TorchDispatchMode):
    """Watches one simulated call kernel by kernel: records its trace (the capture) or compares
    it with the capture's (a replay), and keeps the first problem found (raised by ``check``)."""

    def __init__(self, name: str, reference: list | None = None) -> None:
        super().__init__()
        self.name = name
        self.reference = reference
        self.trace: list = []
        self.index = 0
        self.internal: set[int] = set()  # the memory of tensors this call made
        self.lifted: set[int] = set()  # ... of those made from host data (torch.tensor)
        self.problem: str | None = None
        self.deaf = 0  # > 0 inside a function whose host reads are a CPU's own

    def _fail(self, what: str) -> None:
        self.problem = (
            f"{self.name} cannot be replayed as a CUDA graph: {what} at {_where()} "
            "(a captured function is static: see worldmodels.graphs)"
        )

    def _inspect(self, func: Any, args: tuple, kwargs: dict) -> None:
        name = func.overloadpacket.__name__
        if func in _HOST_READS:
            if self.deaf:  # a CPU's own check (see _cpu_only_check): no kernel on CUDA
                return None
            return self._fail(f"{func.name()} {_HOST_READS[func]}")
        if name in _VALUE_SHAPED:
            return self._fail(f"{func.name()} sizes its output by the values (a host read)")
        if func in _MASK_INDEXED:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                return self._fail(
                    f"{func.name()} indexes with a boolean mask (its size is a host read; use "
                    "torch.where)"
                )
        if self.lifted and func not in _FILLS:
            for leaf in tree_flatten((args, kwargs))[0]:
                if isinstance(leaf, Tensor) and _ptr(leaf) in self.lifted:
                    return self._fail(
                        f"{func.name()} reads a tensor made from host data (torch.tensor(...), "
                        "or x[i] = value into one element), on CUDA a copy from the host"
                    )
        if kwargs.get("generator") is not None:
            return self._fail(f"{func.name()} draws from a torch.Generator of its own")
        if func in _LIFTS:  # host data, new memory each call: its value is what a replay sees
            data = args[0]
            entry = (func, ("data", tuple(data.shape), data.dtype,
                            data.tolist() if data.numel() <= 64 else None), ())  # fmt: skip
        else:
            entry = (func, _sig(args, self.internal),
                     _sig(tuple(sorted(kwargs.items())), self.internal))  # fmt: skip
        if self.reference is None:
            self.trace.append(entry)
        elif self.index >= len(self.reference):
            self._fail(f"it ran more kernels than the capture ({func.name()} is kernel "
                       f"{self.index + 1}, the capture ran {len(self.reference)})")  # fmt: skip
        elif entry != self.reference[self.index]:
            was = self.reference[self.index]
            if was[0] != func:
                why = f"runs {func.name()} where the capture ran {was[0].name()}"
            else:
                diff = _diff(was[1], entry[1]) or _diff(was[2], entry[2], "keyword")
                why = f"gives {func.name()} other arguments than the capture ({diff})"
            self._fail(f"kernel {self.index + 1} {why}")
        self.index += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.problem is None and func.namespace != "profiler":  # profiler marks: no kernel
            self._inspect(func, args, kwargs)
        out = func(*args, **kwargs)
        lift = func in _LIFTS
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, Tensor):  # memory freed and taken again is no longer lifted
                ptr = _ptr(leaf)
                self.internal.add(ptr)
                if lift:
                    self.lifted.add(ptr)
                else:
                    self.lifted.discard(ptr)
        return out

    def check(self) -> None:
        if self.problem is None and self.reference is not None and self.index < len(self.reference):
            self.problem = (
                f"{self.name} cannot be replayed as a CUDA graph: it ran {self.index} kernels, "
                f"the capture ran {len(self.reference)} (Python control flow that changed from "
                "call to call; a captured function is static: see worldmodels.graphs)"
            )
        if self.problem is not None:
            raise NotCapturable(self.problem)


def _diff(was: Any, now: Any, where: str = "argument") -> str | None:
    """The first thing that differs between two signatures (``_sig``), in words."""
    tensors = [isinstance(x, tuple) and x[:1] == ("T",) for x in (was, now)]
    if all(tensors):
        if was[1:3] != now[1:3]:
            return f"{where}: {was[2]} {list(was[1])} at capture, {now[2]} {list(now[1])} now"
        if was[3] != now[3]:
            return (
                f"{where}: a tensor from outside the call that is not the one the capture read "
                "(reassigned between calls? write it in place)"
            )
        return None
    if isinstance(was, tuple) and isinstance(now, tuple) and len(was) == len(now):
        for i, (a, b) in enumerate(zip(was, now, strict=True)):
            why = _diff(a, b, f"{where} {i}" if where != "argument" else f"argument {i}")
            if why is not None:
                return why
        return None
    return None if was == now else f"{where}: {was!r} at capture, {now!r} now"


def _cpu_only_check(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether ``func(*args, **kwargs)`` reads the host on a CPU only: ``one_hot`` with a given
    ``num_classes`` checks the class values there, not on CUDA."""
    if func is torch.nn.functional.one_hot:
        n = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
        return n >= 0
    return False


class _HostCopies(TorchFunctionMode):
    """What no kernel shows, reported to ``audit``: the host reads that read memory directly
    (``tolist``, ``numpy``, ``cpu``) and tensors made without a device (on the CPU, whatever the
    run's device); and the functions whose host reads are a CPU's own, which it runs with
    ``audit`` deaf to them."""

    _READS = {Tensor.tolist: ".tolist()", Tensor.numpy: ".numpy()", Tensor.cpu: ".cpu()"}
    # Factories that make a tensor on the default device (the CPU) unless told where: inside a
    # captured CUDA function its kernels would run once, at capture, and never again.
    _FACTORIES = {
        torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace,
        torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
        torch.empty_strided, torch.scalar_tensor,
    }  # fmt: skip

    def __init__(self, audit: _Audit) -> None:
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = self._READS.get(func)
        if what is not None and self.audit.problem is None:
            self.audit._fail(f"{what} copies a tensor to the host")
        if func in self._FACTORIES and kwargs.get("device") is None and self.audit.problem is None:
            self.audit._fail(
                f"torch.{func.__name__}(...) has no device= (on a GPU, a CPU tensor: a graph "
                "replays no CPU kernel)"
            )
        if _cpu_only_check(func, args, kwargs):
            self.audit.deaf += 1
            try:
                return func(*args, **kwargs)
            finally:
                self.audit.deaf -= 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def _audited(name: str, reference: list | None = None):
    """Run the body under an ``_Audit`` (yielded); raises its problem, if any, at the end."""
    audit = _Audit(name, reference)
    with _HostCopies(audit), audit:
        yield audit
    audit.check()


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
        self.trace: list = []  # simulate: the capturing call's kernels, which replays repeat


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
        self.failed: str | None = None
        """Why a capture failed under ``eager_on_failure`` (the function then runs eagerly)."""

    def __deepcopy__(self, memo: dict) -> CapturedCall:
        """A copy of the function, with no graph captured yet (graphs cannot be copied)."""
        return CapturedCall(
            copy.deepcopy(self.fn, memo), mode=self.mode, warmup=self.warmup, name=self.name,
            donate=self.donate,
        )  # fmt: skip

    def __call__(self, *args: Any) -> Any:
        if _inside:  # part of an enclosing captured function (e.g. a step inside an update)
            return self.fn(*args)
        if self.failed is not None:  # its capture failed: eager from then on
            with _running():
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
            try:
                self._capture(entry, args, leaves, spec)
            except NotCapturable:
                raise
            except Exception as exc:  # nothing ran (a capture records kernels): run it eagerly
                if _fallback is None or not self._recovered():
                    raise
                self._give_up(exc, _fallback)
                with _running():
                    return self.fn(*args)
            if self.mode == "simulate":  # the capture ran fn once: that was this call
                self.replays += 1
                return entry.static_out
        self._copy_inputs(entry, leaves)
        if self.mode == "cuda":
            assert entry.graph is not None
            entry.graph.replay()
        else:  # simulate: the same buffers, computed eagerly, audited against the capture
            with _running(), _own_casts(), _audited(self.name, entry.trace):
                out = self.fn(*tree_unflatten(entry.static_in, spec))
            out_leaves, _ = tree_flatten(out)
            for dst, src in zip(entry.out_leaves, out_leaves, strict=True):
                if isinstance(dst, Tensor) and dst is not src:
                    dst.copy_(src)
        self.replays += 1
        return entry.static_out

    def _recovered(self) -> bool:
        """After a failed capture: whether the device still runs eager work, one random draw
        and a synchronisation (a capture that ended in a CUDA error can leave the generators in
        their capture state, and a fresh state would make the draws of graphs captured before
        overlap with the eager ones). If not, the capture's own error is raised
        (``run.cuda_graphs=off`` then avoids it)."""
        if self.mode != "cuda":
            return True
        try:
            torch.rand(1, device="cuda")
            torch.cuda.synchronize()
        except Exception:  # the device is not usable as it is: the capture's error says why
            return False
        return True

    def _give_up(self, exc: Exception, log: Callable[[str], None]) -> None:
        self.failed = f"{type(exc).__name__}: {one_line(str(exc))[:300]}"
        self._entries.clear()  # their graphs and buffers are not replayed any more
        log(f"CUDA graphs off for {self.name}: its capture failed ({self.failed}); it runs "
            "eagerly from now on (run.cuda_graphs=on would stop here)")  # fmt: skip

    def _eager(self, args: tuple) -> Any:
        if self.mode != "cuda":
            with _running(), _own_casts():
                return self.fn(*args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _running(), _own_casts():
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
            with _own_casts(), torch.cuda.graph(entry.graph, pool=self.pool), _running():
                out = self.fn(*args)
        else:
            with _running(), _own_casts(), _audited(self.name) as audit:
                out = self.fn(*args)
            entry.trace = audit.trace
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
