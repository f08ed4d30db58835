"""``DreamEnv``: a learned world stepped like the real vector env, for any agent and any world.

It starts ``num_envs`` imagined trajectories from real contexts sampled from replay and steps
them all with one world call per step. Conventions match ``envs/atari.py``: batched tensors
``(obs, reward, terminated, truncated, info)``, same-step auto-reset with the last observation of
a finished trajectory in ``info["final_obs"]``. Everything stays on the world's device and no
step reads anything back to the host: finished rows are replaced with ``torch.where`` by spare
trajectories that ``reset()`` started alongside the active ones. (A row that finishes twice before
the next ``reset()`` restarts from its spare context again.)

Agents that observe features (``observe="features"``) get ``world.features(state)`` ``(B, D)``
instead of frames, in ``obs`` and in ``final_obs``. Pixel agents see context frames through
``world.agent_view`` when the world defines one (IRIS: tokenizer reconstructions).

For agents that burn in a recurrent state on the real frames before the first imagined one,
``reset()`` returns the contexts in ``info``: ``context_obs (B, T0, C, H, W)`` uint8,
``context_act (B, T0)``, ``context_mask (B, T0)`` for the active rows and ``next_context_*`` for
the spares that replace finished rows (the last context frame is the first observation itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from worldmodels.interfaces import Batch
from worldmodels.replay import ReplayStore, SegmentSampler
from worldmodels.training import autocast


def where_rows(mask: Tensor, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Row-wise select between two states: ``a`` where ``mask``, else ``b``. Tensor entries are
    batch-first; other entries (Python numbers such as a shared cache fill level) are the same
    for every row and come from ``b``, the running state."""
    out = {}
    for key, va in a.items():
        if not isinstance(va, Tensor):
            out[key] = b[key]
            continue
        m = mask.view(-1, *([1] * (va.ndim - 1)))
        out[key] = torch.where(m, va, b[key])
    return out


def _rows(state: dict[str, Any], sl: slice) -> dict[str, Any]:
    return {key: value[sl] if isinstance(value, Tensor) else value for key, value in state.items()}


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
        observe: str = "pixels",
    ) -> None:
        if num_envs < 1 or horizon < 1:
            raise ValueError(f"num_envs and horizon must be >= 1, got {num_envs}, {horizon}")
        self.world = world
        self.num_envs = num_envs
        self.horizon = horizon
        self.device = torch.device(device)
        self.read_done_on_host = self.device.type == "cpu"
        """Check on the host whether any row finished and skip the row swap if none did: free
        on a CPU (and the swap copies whole states); elsewhere it would be a synchronisation."""
        self.num_actions = world.num_actions
        self.obs_shape = tuple(world.obs_shape)
        self.context_len = world.context_len
        self.amp = amp  # bf16 autocast around the world's calls
        if observe not in ("pixels", "features"):
            raise ValueError(f"observe must be 'pixels' or 'features', got {observe!r}")
        if observe == "features" and not hasattr(world, "features"):
            raise ValueError(f"{type(world).__name__} exposes no features to observe")
        self.observe = observe
        self.view = getattr(world, "agent_view", None)  # what pixel agents see of real frames
        self.sampler = SegmentSampler(
            store, world.context_len, pad_left=world.context_len - 1, end_before_final=True,
            recency_weights=recency_weights, seed=seed,
        )  # fmt: skip
        self._state: dict[str, Tensor] | None = None
        self._spare: dict[str, Tensor] = {}
        self._spare_obs: Tensor | None = None
        self._t: Tensor | None = None

    def contexts(self, n: int) -> Batch:
        """``n`` real contexts of ``world.context_len`` rows, on the device."""
        return self.sampler.sample(n).to(self.device, non_blocking=True)

    def reset(self) -> tuple[Tensor, dict[str, Tensor]]:
        """Start every trajectory (and its spare) from a fresh real context."""
        b = self.num_envs
        ctx = self.contexts(2 * b)
        with torch.inference_mode(), autocast(self.device, self.amp):
            state, obs = self.world.imagine_start(ctx.obs, ctx.act, ctx.mask)
            obs = self._observed(state, obs)
            ctx_obs = ctx.obs
            if self.view is not None and self.observe == "pixels":
                n, t = ctx_obs.shape[:2]
                ctx_obs = self.view(ctx_obs.flatten(0, 1)).unflatten(0, (n, t))
        self._state, self._spare = _rows(state, slice(0, b)), _rows(state, slice(b, 2 * b))
        self._spare_obs = obs[b:]
        self._t = torch.zeros(b, dtype=torch.long, device=self.device)
        info = {
            "context_obs": ctx_obs[:b], "context_act": ctx.act[:b], "context_mask": ctx.mask[:b],
            "next_context_obs": ctx_obs[b:], "next_context_act": ctx.act[b:],
            "next_context_mask": ctx.mask[b:],
        }  # fmt: skip
        return obs[:b].clone(), info

    def _observed(self, state: dict[str, Tensor], obs: Tensor) -> Tensor:
        """The agent's view of a state: the frame, or the world's features ``(B, D)``."""
        return self.world.features(state) if self.observe == "features" else obs

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``action (B,)`` -> ``obs (B, C, H, W) uint8, reward (B,) float32, terminated (B,) bool,
        truncated (B,) bool, info`` with ``info["final_obs"]``; finished rows restart at once."""
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = action.to(self.device, torch.long)
        with torch.inference_mode():
            with autocast(self.device, self.amp):
                state, obs, reward, end = self.world.imagine_step(
                    self._state, action, render=self.observe == "pixels"
                )
                obs = self._observed(state, obs)
            t = self._t + 1
            trunc = (t >= self.horizon) & ~end
            done = end | trunc
            if self.read_done_on_host and not bool(done.any()):
                # skips copying every row of a state that may be large (the IRIS key/value
                # cache: ~56 MB at batch 8)
                self._state, next_obs = state, obs
            else:  # no host sync on accelerators
                self._state = where_rows(done, self._spare, state)
                rows = done.view(-1, *([1] * (obs.ndim - 1)))
                next_obs = torch.where(rows, self._spare_obs, obs)
            self._t = torch.where(done, torch.zeros_like(t), t)
        # Clones leave inference mode, so an agent may feed these into its autograd graph.
        info = {"final_obs": obs.clone()}
        return next_obs.clone(), reward.float().clone(), end.clone(), trunc.clone(), info
