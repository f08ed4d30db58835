"""``DreamEnv``: a learned world stepped like the real vector env, for any agent and any world.

It starts ``num_envs`` imagined trajectories from real contexts sampled from replay and steps
them all with one world call per step. Conventions match ``envs/atari.py``: batched tensors
``(obs, reward, terminated, truncated, info)``, same-step auto-reset with the last observation of
a finished trajectory in ``info["final_obs"]``. Everything stays on the world's device and no
step reads anything back to the host: finished rows are replaced with ``torch.where`` by spare
trajectories that ``reset()`` started alongside the active ones. (A row that finishes twice before
the next ``reset()`` restarts from its spare context again.) ``spares="fresh"`` starts the spares
from their own real contexts (twice the start-up work); ``spares="shared"`` restarts a finished row
from the context its trajectory started from (a new imagined trajectory from the same real frames:
no extra work).

Static steps. A step is one call of a static function (``world.imagine_step`` and this class's
bookkeeping: horizon, auto-reset from spares, outputs) with the same shapes every time, no host
synchronisation and no Python state that changes from step to step, so it can be compiled once
(``torch.compile(fullgraph=True, dynamic=False)``) or replayed as a CUDA graph: pass ``capture``,
a function that wraps a static function (``worldmodels.graphs.CapturedCall``, or a compiler). A
world whose state has a bounded capacity (IRIS's key/value cache) declares
``imagine_refresh_due(state, steps)``, answered on the host from the number of steps since
``reset`` alone, and ``imagine_refresh(state)``, another static function, called before the steps
it names. ``graphs="cuda"`` captures both as CUDA graphs (``"simulate"``: the same buffer
semantics, eagerly, for CPU tests). The state is carried from step to step *in place* (finished
rows are overwritten with their spares' rows: ``swap_rows_``, or the world's own
``imagine_swap_rows_`` where it knows a cheaper way, as IRIS copies only the few cache slots a
spare holds), so the entries of the state a world returns must be its own tensors. (On CPU,
without ``capture``, the row swap is skipped when no row finished: reading that on the host is
free there.)

Agents that observe features (``observes="features"``) get ``world.features(state)`` ``(B, D)``
instead of frames, in ``obs`` and in ``final_obs``. Pixel agents see context frames through
``world.agent_view`` when the world defines one (IRIS: tokenizer reconstructions).

For agents that burn in a recurrent state on the real frames before the first imagined one,
``reset()`` returns the contexts in ``info``: ``context_obs (B, T0, C, H, W)`` uint8,
``context_act (B, T0)``, ``context_mask (B, T0)`` for the active rows and ``next_context_*`` for
the spares that replace finished rows (the last context frame is the first observation itself;
with ``spares="shared"`` they are the very same tensors as ``context_*``). The agent's view of the
context frames is computed only if an agent reads ``context_obs`` or ``next_context_obs``.

Frames for videos. With ``keep_frames = True`` (set it before ``reset()``) ``frames`` holds the
rows' current imagined frames ``(B, C, H, W)`` uint8 after every ``reset`` and ``step``: for a
pixels dream, the observations themselves (no extra work); for a features dream, the frames the
world renders (``imagine_step(render=True)``: one decode per step, and only without
``capture``). ``reseed(seed)`` makes the next ``reset()`` and the steps after it repeat
(``envs/sb3_vec.py`` and ``worldmodels/gym_envs.py`` seed through it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldmodels import contract
from worldmodels.graphs import CapturedCall, capture_refusal
from worldmodels.interfaces import Batch
from worldmodels.replay import ReplayStore, SegmentSampler
from worldmodels.training import autocast

SPARES = ("fresh", "shared")


def _shared(value: Any) -> bool:
    """State entries shared by all rows: Python values and 0-dim tensors (e.g. a cache fill)."""
    return not isinstance(value, Tensor) or value.ndim == 0


def where_rows(mask: Tensor, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Row-wise select between two states: ``a`` where ``mask``, else ``b`` (a new state). Tensor
    entries are batch-first; entries shared by every row (Python values, 0-dim tensors such as a
    cache fill level) come from ``b``, the running state."""
    out = {}
    for key, va in a.items():
        if _shared(va):
            out[key] = b[key]
            continue
        m = mask.view(-1, *([1] * (va.ndim - 1)))
        out[key] = torch.where(m, va, b[key])
    return out


def swap_rows_(mask: Tensor, spare: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """``where_rows(mask, spare, state)`` written into ``state``'s own tensors (no new buffers:
    a state carried in place through a CUDA graph is never copied); returns ``state``. The
    running state keeps its dtypes (under autocast a step may return bf16 where the start gave
    fp32). Entries may be views into larger buffers (a world's ``imagine_swap_rows_`` narrows
    them to the part a spare holds); those are written through a copy."""
    for key, value in state.items():
        if _shared(value):
            continue
        m = mask.view(-1, *([1] * (value.ndim - 1)))
        src = spare[key].to(value.dtype)
        if value.is_contiguous():
            torch.where(m, src, value, out=value)
        else:  # a strided view: out= would not compile (dynamo), copy_ does
            value.copy_(torch.where(m, src, value))
    return state


def imagine_step(
    world: Any, state: dict[str, Any], action: Tensor, steps: int, *, render: bool = True
) -> tuple[dict[str, Any], Tensor | None, Tensor, Tensor]:
    """``world.imagine_step`` after ``steps`` steps since ``imagine_start``, refreshing the state
    first where the world's schedule says so (``imagine_refresh_due``): how to step a world
    by hand, outside ``DreamEnv``."""
    hooks = contract.refresh(world)
    if hooks is not None and hooks[0](state, steps):
        state = hooks[1](state)
    return world.imagine_step(state, action, render=render)


def _rows(state: dict[str, Any], sl: slice) -> dict[str, Any]:
    return {key: value if _shared(value) else value[sl] for key, value in state.items()}


def _clone(state: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.clone() if isinstance(value, Tensor) else value for key, value in state.items()
    }


class _ContextInfo(dict):
    """``reset()``'s info: the agent's view of the context frames is computed on first access
    (the last frame's is the first observation, which the world returned already)."""

    def __init__(
        self, view: Callable[[Tensor], Tensor], raw: dict[str, tuple[Tensor, Tensor]], **items
    ) -> None:
        super().__init__(**items)
        self._view, self._raw = view, raw  # name -> (context frames, first observation)

    def _fill(self, key: str) -> None:
        if key in self._raw and not dict.__contains__(self, key):
            obs, first = self._raw[key]
            n, t = obs.shape[:2]
            before = self._view(obs[:, :-1].flatten(0, 1)).unflatten(0, (n, t - 1))
            seen = torch.cat((before, first[:, None]), dim=1)  # (N, T, C, H, W)
            for k, (v, _) in self._raw.items():  # the same tensor under both names (shared)
                if v is obs:
                    dict.__setitem__(self, k, seen)

    def __getitem__(self, key: str) -> Any:
        self._fill(key)
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        self._fill(key)
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self._raw

    def keys(self):
        return list(dict.keys(self)) + [k for k in self._raw if not dict.__contains__(self, k)]


class DreamEnv:
    """``num_envs`` imagined trajectories of at most ``horizon`` steps in ``world``."""

    def __init__(
        self,
        world: Any,
        store: ReplayStore,
        *,
        num_envs: int,
        horizon: int,
        device: torch.device | str,
        seed: int = 0,
        recency_weights: tuple[float, ...] | None = None,
        amp: bool = False,
        observes: str = "pixels",
        spares: str = "fresh",
        graphs: str | None = None,
        capture: Callable[[Callable[..., Any], str], Callable[..., Any]] | None = None,
    ) -> None:
        if num_envs < 1 or horizon < 1:
            raise ValueError(f"num_envs and horizon must be >= 1, got {num_envs}, {horizon}")
        if spares not in SPARES:
            raise ValueError(f"spares must be one of {', '.join(SPARES)}, got {spares!r}")
        self.world = world
        self.num_envs = num_envs
        self.horizon = horizon
        self.device = torch.device(device)
        self.spares = spares
        if graphs not in (None, "cuda", "simulate"):
            raise ValueError(f"graphs must be None, 'cuda' or 'simulate', got {graphs!r}")
        self.graphs = graphs
        """The run's CUDA-graph mode, for the agents that train here (their updates capture
        with it too): None, "cuda", or "simulate" (the same buffers, eager; CPU tests)."""
        if graphs and capture is None:
            mode = graphs

            def capture(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
                # the state, the spares and the step counts are this env's own: donated
                return CapturedCall(fn, mode=mode, name=name, donate=(0, 1, 2, 3))  # type: ignore[arg-type]

        self.read_done_on_host = self.device.type == "cpu" and capture is None
        """Check on the host whether any row finished and skip the row swap if none did: free
        on a CPU (and the swap touches whole states); elsewhere it would be a synchronisation,
        and a captured step has no host side."""
        self.num_actions = world.num_actions
        self.obs_shape = tuple(world.obs_shape)
        self.context_len = world.context_len
        self.amp = amp  # bf16 autocast around the world's calls
        if observes not in ("pixels", "features"):
            raise ValueError(f"observes must be 'pixels' or 'features', got {observes!r}")
        contract.require_world(world)
        self._features = contract.features_fn(world) if observes == "features" else None
        self.observes = observes
        self.view = contract.agent_view(world)  # what pixel agents see of real frames
        self.sampler = SegmentSampler(
            store, world.context_len, pad_left=world.context_len - 1, end_before_final=True,
            recency_weights=recency_weights, seed=seed,
        )  # fmt: skip
        self._swap_rows = contract.swap_rows(world) or swap_rows_
        hooks = contract.refresh(world)
        self._refresh_due = None if hooks is None else hooks[0]
        self._refresh_world = None if hooks is None else hooks[1]
        why = capture_refusal(world) if graphs or capture is not None else None
        if why is not None:
            raise ValueError(f"{type(world).__name__}'s imagination cannot be captured: {why}")
        self._captured = capture is not None
        wrap = capture or (lambda fn, name: fn)
        self._step_fn = wrap(self._static_step, "imagine_step")
        self._refresh_fn = wrap(self._static_refresh, "imagine_refresh")
        self._state: dict[str, Any] | None = None
        self._spare: dict[str, Any] = {}
        self._spare_obs: Tensor | None = None
        self._t: Tensor | None = None
        self._steps = 0  # since reset(): when a refresh is due (host arithmetic, no read-back)
        # Imagined reward and end sums (on the device: no read-back per step) and the row-steps
        # they cover, for the run's "imagined beside real" curves (take_imagined_stats).
        self._imagined_sums = torch.zeros(2, device=self.device)
        self._imagined_steps = 0
        self.keep_frames = False
        """Keep the rows' current frames in ``frames`` (module docstring, "Frames for videos")."""
        self.frames: Tensor | None = None
        self._spare_frames: Tensor | None = None
        self._rendered: Tensor | None = None  # the last imagine_step's frames, with keep_frames

    def reseed(self, seed: int) -> None:
        """Make what follows repeat: reseeds the context sampler, torch's global RNG (which the
        worlds sample from) and, if the world defines ``reseed(seed)``, its own generators."""
        self.sampler.load_state_dict({"rng": np.random.PCG64(seed).state})
        torch.manual_seed(seed)
        world_seed = contract.reseed(self.world)
        if world_seed is not None:
            world_seed(seed)

    @property
    def starts_per_reset(self) -> int:
        """Real contexts each ``reset()`` starts: active rows, plus their spares if fresh."""
        return self.num_envs * (2 if self.spares == "fresh" else 1)

    def contexts(self, n: int | None = None) -> Batch:
        """``n`` (default ``starts_per_reset``) real contexts of ``world.context_len`` rows, on
        the device: what ``reset`` starts from."""
        n = self.starts_per_reset if n is None else n
        return self.sampler.sample(n).to(self.device, non_blocking=True)

    def reset(self, ctx: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Start every trajectory (and its spare) from fresh real contexts: ``ctx`` (from
        ``contexts()``) or new ones sampled here. With ``ctx`` given, nothing here reads the host
        or the replay store: a captured update can call it."""
        b = self.num_envs
        ctx = self.contexts() if ctx is None else ctx
        if ctx.obs.shape[0] != self.starts_per_reset:
            raise ValueError(
                f"reset needs {self.starts_per_reset} contexts, got {ctx.obs.shape[0]}"
            )
        with torch.no_grad(), autocast(self.device, self.amp):
            state, frames = self.world.imagine_start(ctx.obs, ctx.act, ctx.mask)
            obs = self._observed(state, frames)
        if self.keep_frames:
            self.frames = frames[:b].clone()
            if self._features is not None:
                self._check_keep_frames()
                fresh = self.spares == "fresh"
                self._spare_frames = frames[b : 2 * b] if fresh else frames[:b].clone()
        self._state = _rows(state, slice(0, b))
        first = _rows(ctx._asdict(), slice(0, b))
        if self.spares == "fresh":
            self._spare, self._spare_obs = _rows(state, slice(b, 2 * b)), obs[b:]
            spare_ctx = _rows(ctx._asdict(), slice(b, 2 * b))
        else:  # restart from the same contexts: a copy, as the running state changes in place
            self._spare, self._spare_obs = _clone(self._state), obs[:b].clone()
            spare_ctx = first
        self._t = torch.zeros(b, dtype=torch.long, device=self.device)
        self._steps = 0
        info = {
            "context_act": first["act"],
            "context_mask": first["mask"],
            "next_context_act": spare_ctx["act"],
            "next_context_mask": spare_ctx["mask"],
        }
        raw = {"context_obs": first["obs"], "next_context_obs": spare_ctx["obs"]}
        if self.view is not None and self.observes == "pixels":
            firsts = {"context_obs": obs[:b], "next_context_obs": self._spare_obs}
            views = {k: (v, firsts[k]) for k, v in raw.items()}
            return obs[:b].clone(), _ContextInfo(self._view, views, **info)
        return obs[:b].clone(), {**info, **raw}

    def _view(self, frames: Tensor) -> Tensor:
        assert self.view is not None
        with torch.no_grad(), autocast(self.device, self.amp):
            return self.view(frames)

    def _observed(self, state: dict[str, Tensor], obs: Tensor) -> Tensor:
        """The agent's view of a state: the frame, or the world's features ``(B, D)``."""
        return obs if self._features is None else self._features(state)

    # ------------------------------------------------------------------ the static functions

    def _imagine(self, state: dict[str, Any], t: Tensor, action: Tensor) -> tuple:
        with torch.no_grad():
            with autocast(self.device, self.amp):
                keep = self.keep_frames and self._features is not None  # eager only
                state, obs, reward, end = self.world.imagine_step(
                    state, action, render=self.observes == "pixels" or keep
                )
                if keep:  # a copy: the state may hold this tensor
                    self._rendered = None if obs is None else obs.clone()
                obs = self._observed(state, obs)
            t = t + 1
            trunc = (t >= self.horizon) & ~end
            # the state may hold this very tensor, and is about to be overwritten in place
            final_obs = obs.clone()
        return state, final_obs, reward.float(), end, trunc, t

    def _swap(self, state, spare, spare_obs, final_obs, end, trunc, t) -> tuple:
        with torch.no_grad():
            done = end | trunc
            rows = done.view(-1, *([1] * (final_obs.ndim - 1)))
            next_obs = torch.where(rows, spare_obs, final_obs)
            self._swap_rows(done, spare, state)
            t = torch.where(done, torch.zeros_like(t), t)
        return state, next_obs, t

    def _static_step(self, state, spare, spare_obs, t, action) -> tuple:
        """One imagined step of every row with its bookkeeping: static shapes, no host sync."""
        state, final_obs, reward, end, trunc, t = self._imagine(state, t, action)
        state, next_obs, t = self._swap(state, spare, spare_obs, final_obs, end, trunc, t)
        return state, next_obs, final_obs, reward, end, trunc, t

    def _static_refresh(self, state: dict[str, Any]) -> dict[str, Any]:
        with torch.no_grad(), autocast(self.device, self.amp):
            assert self._refresh_world is not None
            return self._refresh_world(state)

    def _check_keep_frames(self) -> None:
        if self._captured:
            raise ValueError(
                "keep_frames in a features dream needs an eager DreamEnv (no capture or graphs)"
            )

    def _keep_frames(self, done: Tensor, next_obs: Tensor) -> None:
        """``frames`` after a step: the observations (pixels), or the rendered frames with the
        spares' first frames where done (features)."""
        if self._features is None:
            self.frames = next_obs
            return
        self._check_keep_frames()
        if self._spare_frames is None:
            raise RuntimeError("set keep_frames before reset(), not between steps")
        if self._rendered is None:
            raise ValueError(
                f"{type(self.world).__name__} renders no frames (imagine_step(render=True) "
                "returned None): nothing to show"
            )
        rows = done.view(-1, *([1] * (self._rendered.ndim - 1)))
        self.frames = torch.where(rows, self._spare_frames, self._rendered)
        self._rendered = None

    def take_imagined_stats(self) -> dict[str, float] | None:
        """``reward_per_step`` and ``end_rate`` over the row-steps taken by ``step`` since the last
        call (one read-back), then zeroed; None if there were none. Updates that roll the dream
        out inside one captured function (the actor-critic's) do not pass through ``step``, and
        report the same numbers in their own logs."""
        if self._imagined_steps == 0:
            return None
        reward, ends = (self._imagined_sums / self._imagined_steps).tolist()
        self._imagined_sums.zero_()
        self._imagined_steps = 0
        return {"reward_per_step": reward, "end_rate": ends}

    # ------------------------------------------------------------------ stepping

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``action (B,)`` -> ``obs (B, C, H, W) uint8, reward (B,) float32, terminated (B,) bool,
        truncated (B,) bool, info`` with ``info["final_obs"]``; finished rows restart at once."""
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        assert self._t is not None  # reset() sets it with the state
        action = action.to(self.device, torch.long)
        state = self._state
        if self._refresh_due is not None and self._refresh_due(state, self._steps):
            state = self._refresh_fn(state)
        if self.read_done_on_host:
            state, final_obs, reward, end, trunc, t = self._imagine(state, self._t, action)
            if bool((end | trunc).any()):
                state, next_obs, t = self._swap(
                    state, self._spare, self._spare_obs, final_obs, end, trunc, t
                )
            else:  # no row finished: skip touching every row of a possibly large state
                next_obs = final_obs
        else:
            state, next_obs, final_obs, reward, end, trunc, t = self._step_fn(
                state, self._spare, self._spare_obs, self._t, action
            )
        self._state, self._t = state, t
        self._steps += 1
        if self.keep_frames:
            self._keep_frames(end | trunc, next_obs)
        self._imagined_sums += torch.stack((reward.float().sum(), end.float().sum()))
        self._imagined_steps += self.num_envs
        # Copies: a captured step overwrites its outputs at the next call, and an agent may
        # keep these (or feed them into its autograd graph).
        info = {"final_obs": final_obs.clone()}
        return next_obs.clone(), reward.clone(), end.clone(), trunc.clone(), info
