"""IRIS's world model (Micheli et al. 2023): a GPT over the tokens of frames and actions.

Sequence layout: frame ``t`` is the block ``[o_t^1 .. o_t^K, a_t]`` (``K`` observation tokens from
the tokenizer, then the action taken there), blocks follow each other in time, and every token has
a learned absolute position (``context_frames * (K + 1)`` of them). Observation tokens and actions
have separate embedding tables. Three heads, each ``Linear(D, D), ReLU, Linear(D, out)``, read the
GPT's features:

* next observation token (``vocab_size`` classes) at every position followed by an observation
  token: ``o_t^k -> o_t^{k+1}`` inside a frame and ``a_t -> o_{t+1}^1``;
* reward sign (3 classes: -1, 0, +1) and episode end (2 classes) at the action tokens.

Padding frames (``mask`` False, as in ``Batch``) are left out of the sequence: nothing attends to
them and positions count real frames only, so a segment that starts an episode after padding is
seen exactly like an imagined trajectory started from a short context.

Imagination (``start``/``step``) carries a key/value cache from frame to frame
------------------------------------------------------------------------------

What the model sees. Each row keeps its last ``W = context_frames - 1`` frames (the *window*, the
current frame last). With the default ``rebuild_keep_frames = 0`` imagination is exact: every
imagined frame (its ``K`` tokens, its reward and end) is predicted from the row's last
``min(W, n)`` frames, ``n`` the frames of its history (real context kept by ``start`` plus those
imagined since), the current frame with the chosen action last, at positions ``0 ..``: the same
logits as ``forward`` over those frames (up to float rounding). With ``rebuild_keep_frames = k``
(``1 <= k <= W``) a row sees a suffix of its history of between ``min(k, n)`` and ``min(W, n)``
frames: after each rebuild (below) it restarts from its last ``k`` frames and grows by one frame a
step until the next rebuild (IRIS's published code restarts from the current frame alone, ``k =
1``). ``k = W`` is the exact default.

The cache. The state holds every layer's keys and values in ``M = context_frames * (K + 1)``
*physical* slots (IRIS: 340) shared by all rows: ``fill``, a 0-dim int64 tensor on the device, is
the first free slot, the same for every row, and ``kv_valid (B, M)`` says which slots hold a row's
own tokens. A token is written (``index_copy_``) at slot ``fill`` for every row, at the row's own
*logical* position ``pos[b]`` (the learned position embedding), and attends, through a mask over
all ``M`` slots, to the row's valid slots below it: a row's slots are in temporal order, so the
physical order gives causality. Every step therefore runs the same ops on the same shapes at any
fill level (one compiled graph, one CUDA graph). Rows at different fill levels share the cache this
way: a row that ``DreamEnv`` restarts from a spare (``where_rows``) gets the spare's slots, which all
lie below ``fill`` (spares are started by the same ``start`` call as the running rows and never
stepped), and the slots between the spare's last token and ``fill`` are simply invalid for it.

A step. The current frame's last token ``o_t^K`` is not in the cache yet: the first call appends
it with the chosen action ``a_t`` (2 tokens), whose features give the reward, the end and the new
frame's first token; ``K - 1`` single-token calls then append and draw the others (the last token
drawn waits for the next step). ``K`` calls per imagined frame; IRIS's published code makes
``K + 1``. Every step appends exactly ``K + 1`` tokens.

Refreshes. When the next frame does not fit (``fill + K + 1 > M``; with ``K = 1`` also when
``fill >= M - 2``), ``refresh`` re-encodes all rows from their windows in one batched call (each
row's last ``W``, or ``k``, frames, left-padded, at positions ``0 ..``, but the current frame's last
token and action, which the step appends) into a fresh cache, which then continues as above.
Since every step appends ``K + 1`` tokens and restarted rows do not lower the shared ``fill``, when
a refresh is due depends only on the number of steps since ``start`` and on the start's fill
(``start_fill``, a Python int fixed by the context's shape): ``refresh_due(state, steps)``
answers on the host, reading nothing from the device (``DreamEnv`` counts the steps). This
refreshes every row that must be: a row's window can only have dropped a frame (so that all its
positions shift and its keys must be recomputed) after a step where it had ``W`` frames, which
leaves ``fill >= M - 2``. (The refresh may come before a restarted row needs it, with the same
results.) So from a short context (IRIS: 1 frame) the first ``W`` imagined frames cost ``K``
cached calls each and every later one a refresh (one call over ``W * (K + 1) - 2`` tokens, IRIS:
321) plus ``K`` cached calls; ``rebuild_keep_frames = k`` refreshes only every ``W + 1 - k``
frames, for the approximation above. (IRIS's imagination, 19 steps from 1 frame, as its
published 20-frame trajectories: no refresh; a 20th step would need one first.)

Buffers. ``step`` writes the new tokens' keys, values and ``kv_valid`` in place, at slots
``fill ..`` of every row of the state it is given: slots that are scratch for that state (never
one of its tokens, so the given state still describes its own frames), shared with the returned
state (``refresh`` returns fresh buffers). Hence the rules: step a state at most once (stepping it
again would overwrite its successor's newest tokens; ``where_rows`` copies, so a mix of states is
a new state), and never step a spare before it is swapped in. ``DreamEnv`` slices one ``2B``-row
state into active and spare halves: steps write only the active rows (the spare rows of the shared
buffers are never written). A device-side assertion (no host synchronisation) catches a state whose
rows have tokens at or above ``fill`` (a state stepped twice, or a spare from a later ``start``),
or a step that would overflow the cache (a refresh that was due and not done). Run imagination in
``eval()`` mode: dropout would otherwise perturb keys that are carried for many frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.heads.reward_end import NUM_END_CLASSES, NUM_REWARD_CLASSES
from worldmodels.metrics import event_counts
from worldmodels.nn.sampling import sample_categorical
from worldmodels.nn.transformer import GPT, GPTConfig, KVCache, init_weights

ImagState = dict[str, Any]  # Tensor values, but start_fill (an int): see below
"""Imagination state: batch-first tensors of fixed shapes (rows can be swapped with
``torch.where`` whatever their history), a 0-dim tensor and a Python int shared by all rows. With
``W = context_frames - 1``, ``M = context_frames * (K + 1)``:

* ``tokens (B, W, K) int64``: observation tokens of the row's last ``W`` frames, oldest first; the
  last one is the current frame;
* ``actions (B, W) int64``: the actions taken in those frames; the last column (the current
  frame's action, not chosen yet) is ignored;
* ``valid (B, W) bool``: False where a row has fewer than ``W`` real frames (left padding);
* ``keys``, ``values (B, layers, heads, M, head_dim)``: the cache, in physical slots;
* ``kv_valid (B, M) bool``: the slots that hold the row's own tokens;
* ``pos (B,) int64``: the logical position of the row's next token, the current frame's last
  observation token (not cached yet);
* ``fill () int64``: the first free physical slot, the same for every row (a tensor, so that every
  fill level runs the same computation);
* ``start_fill: int``: the fill of the ``start`` call the state comes from, the most slots a
  spare of it occupies (a refresh never sets ``fill`` below it); fixed by the context's shape,
  so it never changes along a trajectory.
"""


@dataclass(frozen=True)
class TransformerDynamicsConfig:
    """IRIS's world model; defaults are its Atari 100k settings (8.4 M parameters)."""

    tokens_per_frame: int = 16
    """K, observation tokens per frame (IRIS: 4 x 4 tokenizer grid)."""
    vocab_size: int = 512
    """Size of the tokenizer's codebook."""
    context_frames: int = 20
    """Frames the transformer sees at most (context_frames * (K + 1) tokens)."""
    gpt: GPTConfig = field(default_factory=GPTConfig)
    """The block stack (IRIS: 10 layers, 4 heads, width 256, dropout 0.1); its max_tokens is
    derived: context_frames * (tokens_per_frame + 1) (340 for IRIS), whatever is set here."""
    rebuild_keep_frames: int = 0
    """Imagination: frames kept when the carried cache is full and rebuilt (see the module
    docstring). 0 (or context_frames - 1): exact sliding window of context_frames - 1 frames,
    rebuilt every frame once a row's window is full; k: rows see between k and
    context_frames - 1 frames, with a rebuild every context_frames - k frames (IRIS: 1)."""

    @property
    def max_tokens(self) -> int:
        return self.context_frames * (self.tokens_per_frame + 1)

    def __post_init__(self) -> None:
        if self.context_frames < 2:
            raise ValueError(f"context_frames must be >= 2, got {self.context_frames}")
        if not 0 <= self.rebuild_keep_frames <= self.context_frames - 1:
            raise ValueError(
                f"rebuild_keep_frames must be in [0, context_frames - 1 = "
                f"{self.context_frames - 1}], got {self.rebuild_keep_frames}"
            )


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, 0).sum() / mask.sum().clamp(min=1)


class TransformerDynamics(nn.Module):
    """Token world model over ``(B, T, K)`` observation tokens and ``(B, T)`` actions."""

    Config = TransformerDynamicsConfig

    def __init__(self, config: TransformerDynamicsConfig, num_actions: int) -> None:
        super().__init__()
        config = dataclasses.replace(
            config, gpt=dataclasses.replace(config.gpt, max_tokens=config.max_tokens)
        )
        self.cfg = config
        self.num_actions = num_actions
        self.K = config.tokens_per_frame
        self.window = config.context_frames - 1  # frames kept by imagination (+ the new one)
        self.rebuild_frames = config.rebuild_keep_frames or self.window
        dim = config.gpt.embed_dim
        self.obs_embed = nn.Embedding(config.vocab_size, dim)
        self.act_embed = nn.Embedding(num_actions, dim)
        self.pos_embed = nn.Embedding(config.gpt.max_tokens, dim)
        self.gpt = GPT(config.gpt)
        self.obs_head = _head(dim, config.vocab_size)
        self.reward_head = _head(dim, NUM_REWARD_CLASSES)
        self.end_head = _head(dim, NUM_END_CLASSES)
        for module in (self.obs_embed, self.act_embed, self.pos_embed, self.obs_head,
                       self.reward_head, self.end_head):  # fmt: skip
            module.apply(init_weights)

    # ---------------------------------------------------------------------------------------
    # Teacher-forced predictions and the training loss.

    def _check(self, tokens: Tensor, actions: Tensor, mask: Tensor | None) -> None:
        if tokens.ndim != 3 or tokens.shape[2] != self.K:
            raise ValueError(f"tokens must be (B, T, K={self.K}), got {tuple(tokens.shape)}")
        if actions.shape != tokens.shape[:2]:
            raise ValueError(
                f"actions must be (B, T) = {tuple(tokens.shape[:2])}, got {tuple(actions.shape)}"
            )
        if mask is not None and mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"mask must be (B, T) = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}"
            )

    def _sequence(
        self, tokens: Tensor, actions: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Frames -> ``(x (B, N, D), pos (B, N) or (N,), valid (B, N) or None)`` with
        ``N = T * (K + 1)``: the embedded tokens ``o_t^1 .. o_t^K, a_t`` of every frame in turn,
        their positions (real frames before frame ``t``, times ``K + 1``, plus the index in the
        frame) and which of them are real."""
        b, t, k = tokens.shape
        obs = self.obs_embed(tokens)  # (B, T, K, D)
        act = self.act_embed(actions)[:, :, None]  # (B, T, 1, D)
        x = torch.cat([obs, act], dim=2).flatten(1, 2)  # (B, T * (K + 1), D)
        in_frame = torch.arange(k + 1, device=tokens.device)  # (K + 1,)
        if mask is None:
            pos = (torch.arange(t, device=tokens.device)[:, None] * (k + 1) + in_frame).flatten()
            return x + self.pos_embed(pos), pos, None  # pos (N,)
        before = mask.long().cumsum(1) - mask.long()  # (B, T): real frames before frame t
        pos = (before[:, :, None] * (k + 1) + in_frame).flatten(1)  # (B, T * (K + 1))
        valid = mask[:, :, None].expand(b, t, k + 1).flatten(1)  # (B, T * (K + 1))
        return x + self.pos_embed(pos), pos, valid

    def forward(
        self, tokens: Tensor, actions: Tensor, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Logits for every target of the frames ``tokens (B, T, K)`` int64, ``actions (B, T)``
        int64 (``T <= context_frames``), teacher-forced, indexed by the token they predict:

        * ``obs (B, T, K, vocab)``: ``obs[:, t, k]`` predicts ``tokens[:, t, k]`` from everything
          before it (frames ``< t`` with their actions, then ``tokens[:, t, :k]``); it is read at
          the action ``a_{t-1}`` for ``k = 0`` and at ``o_t^{k-1}`` otherwise. ``obs[:, 0, 0]``
          has nothing before it: its logits are 0 (so is ``obs[:, t, 0]`` meaningless when frame
          ``t - 1`` is padding);
        * ``reward (B, T, 3)`` and ``end (B, T, 2)``: read at ``a_t``, they predict the sign of
          ``rew[:, t]`` (classes -1, 0, +1) and ``end[:, t]``: the outcome of action ``a_t``.

        ``mask (B, T)`` bool, False on padding frames: they are left out of the sequence (see the
        module docstring); their own logits mean nothing.
        """
        self._check(tokens, actions, mask)
        b, t, k = tokens.shape
        x, _, valid = self._sequence(tokens, actions, mask)
        h = self.gpt(x, valid=valid)  # (B, T * (K + 1), D)
        d = h.shape[-1]
        # The features just before each token predict it; the first token has none.
        prev = F.pad(h[:, :-1], (0, 0, 1, 0))  # (B, T * (K + 1), D), shifted right by one
        prev = prev.view(b, t, k + 1, d)[:, :, :k]  # (B, T, K, D): the features before o_t^k
        obs = self.obs_head(prev)  # (B, T, K, vocab)
        # (t, k) = (0, 0); not first[0, 0] = True, a copy from the host on CUDA (a captured step)
        first = torch.arange(t * k, device=h.device).view(t, k, 1) == 0
        obs = obs.masked_fill(first, 0.0)
        at_action = h.view(b, t, k + 1, d)[:, :, k]  # (B, T, D): the features at a_t
        return {"obs": obs, "reward": self.reward_head(at_action), "end": self.end_head(at_action)}

    def loss(
        self, tokens: Tensor, actions: Tensor, rew: Tensor, end: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of the next observation tokens + reward sign + end, each averaged over
        its valid targets, on segments in the ``Batch`` convention: ``tokens (B, T, K)`` int64,
        ``actions (B, T)`` int64, ``rew (B, T)`` float (raw; sign-clipped here), ``end (B, T)``
        bool, ``mask (B, T)`` bool (False on padding rows, which are left out of the sequence).

        Valid targets: every token of a real frame (``mask[:, t]``) that follows a real token,
        that is all but the first token of a frame whose previous frame is padding or absent
        (frame 0's other tokens count, as in IRIS: decoding a frame from its first tokens is
        part of the task); the reward and end of row ``t`` where the transition ``t -> t + 1`` is
        real (``mask[:, t] & mask[:, t + 1]``), so never on the last row of a segment.
        """
        out = self(tokens, actions, mask)
        b, t, k = tokens.shape
        prev_real = F.pad(mask[:, :-1], (1, 0), value=False)  # (B, T): frame t - 1 is real
        first_token = torch.arange(k, device=tokens.device) == 0  # (K,): no copy from the host
        obs_valid = mask[:, :, None] & (prev_real[:, :, None] | ~first_token)  # (B, T, K)
        obs_ce = F.cross_entropy(out["obs"].flatten(0, 2), tokens.flatten(), reduction="none")
        obs_ce = obs_ce.view(b, t, k)  # (B, T, K)
        real = mask[:, :-1] & mask[:, 1:]  # (B, T - 1): real transitions t -> t + 1
        rew_target = (torch.sign(rew[:, :-1]) + 1).long()  # (B, T - 1): classes of -1, 0, +1
        end_target = end[:, :-1].long()  # (B, T - 1)
        rew_logits, end_logits = out["reward"][:, :-1], out["end"][:, :-1]  # (B, T - 1, C)
        rew_ce = F.cross_entropy(rew_logits.transpose(1, 2), rew_target, reduction="none")
        end_ce = F.cross_entropy(end_logits.transpose(1, 2), end_target, reduction="none")

        loss_obs = _masked_mean(obs_ce, obs_valid)
        loss_reward = _masked_mean(rew_ce, real)
        loss_end = _masked_mean(end_ce, real)
        loss = loss_obs + loss_reward + loss_end
        with torch.no_grad():
            acc_obs = _masked_mean((out["obs"].argmax(-1) == tokens).float(), obs_valid)
            acc_rew = _masked_mean((rew_logits.argmax(-1) == rew_target).float(), real)
            acc_end = _masked_mean((end_logits.argmax(-1) == end_target).float(), real)
            values = torch.stack(
                [loss, loss_obs, loss_reward, loss_end, acc_obs, acc_rew, acc_end]
            ).unbind()  # tensors: the updater reads all the logs back at once
            events = event_counts(
                real, rew_logits.argmax(-1) - 1, rew_target - 1, end_logits.argmax(-1), end_target
            )  # recall / precision of the rare classes, from counts (worldmodels.metrics)
        names = ("loss", "loss_obs", "loss_reward", "loss_end", "obs_accuracy", "reward_accuracy",
                 "end_accuracy")  # fmt: skip
        return loss, {**dict(zip(names, values, strict=True)), **events}

    # ---------------------------------------------------------------------------------------
    # Imagination.

    def _cache_dtype(self, device: torch.device) -> torch.dtype:
        # Keys are stored as the attention computes them (bf16 under autocast).
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.pos_embed.weight.dtype

    def _encode(
        self, tokens: Tensor, actions: Tensor, valid: Tensor, drop: int, min_fill: int,
        dtype: torch.dtype,
    ) -> tuple[KVCache, Tensor | None, Tensor]:  # fmt: skip
        """A fresh cache of ``M`` slots holding the frames ``tokens (B, n, K)``, ``actions (B, n)``,
        ``valid (B, n)`` but their last ``drop`` tokens, at positions ``0 ..`` (padding frames
        masked out), from slot ``max(0, min_fill - (n * (K + 1) - drop))`` on so that the cache's
        size is at least ``min_fill`` (the slots below are invalid). Returns the cache, the
        features ``(B, D)`` of the last token (None if ``drop > 0``: not computed) and the logical
        positions ``(B, n * (K + 1))`` of all the frames' tokens. The cache's ``size`` is a 0-dim
        tensor (its value, ``max(min_fill, n * (K + 1) - drop)``, is fixed by the shapes)."""
        b, n, k = tokens.shape
        x, pos, key_valid = self._sequence(tokens, actions, valid)
        assert key_valid is not None  # _sequence returns it for a given mask
        length = n * (k + 1) - drop
        offset = max(0, min_fill - length)  # slots [0, offset): invalid
        cache = self.gpt.empty_cache(b, tokens.device, dtype)
        cache.padded = True
        # Every slot is read (masked out where invalid), by these rows and by rows restarted
        # from spares: keep them finite, as 0 * NaN in the attention would not be.
        cache.k.zero_()
        cache.v.zero_()
        cache.size = torch.full((), offset, dtype=torch.long, device=tokens.device)  # no host copy
        h: Tensor | None = None
        if length > 0:  # the features of the last token only, if any
            out = self.gpt(x[:, :length], cache, valid=key_valid[:, :length], last=int(drop == 0))
            h = out[:, -1] if drop == 0 else None
        return cache, h, pos

    @torch.no_grad()
    def start(self, tokens: Tensor, actions: Tensor, mask: Tensor | None = None) -> ImagState:
        """Imagination state from real frames: ``tokens (B, T0, K)`` int64, ``actions (B, T0)``
        int64 (the last column is ignored: the agent chooses that action), ``mask (B, T0)`` bool
        (False on padding frames; default all real). The last frame is the current observation
        and must be real. Only the last ``context_frames - 1`` frames are kept: with the next
        imagined frame they fill the context. One call encodes them (but the current frame's last
        token and action, which ``step`` appends) into the cache; the state's ``fill`` is
        ``min(T0, context_frames - 1) * (K + 1) - 2`` (a 0-dim tensor; ``start_fill``, the same
        as an int).

        Spares that ``DreamEnv`` swaps in for finished rows must come from the same call as the
        rows they replace (or one with as many or fewer frames): see the module docstring."""
        self._check(tokens, actions, mask)
        w = self.window
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        tokens, actions, mask = tokens[:, -w:], actions[:, -w:], mask[:, -w:]
        cache, _, pos = self._encode(
            tokens, actions, mask, drop=2, min_fill=0, dtype=self._cache_dtype(tokens.device)
        )
        pad = w - tokens.shape[1]  # fewer frames than the window: left padding
        return {
            "tokens": F.pad(tokens, (0, 0, pad, 0)),  # (B, W, K)
            "actions": F.pad(actions, (pad, 0)),  # (B, W)
            "valid": F.pad(mask, (pad, 0), value=False),  # (B, W)
            "keys": cache.k,  # (B, L, heads, M, head_dim)
            "values": cache.v,
            "kv_valid": cache.valid,  # (B, M)
            "pos": pos[:, -2].contiguous(),  # (B,): the current frame's last token
            "fill": cache.size,
            "start_fill": max(0, tokens.shape[1] * (self.K + 1) - 2),
        }

    def refresh_due(self, state: ImagState, steps: int) -> bool:
        """Whether the step after ``steps`` steps since ``start`` needs a ``refresh`` first (its
        frame would not fit in the cache). Host-side arithmetic on ``state["start_fill"]`` and the
        config only: nothing is read from the device. Every step appends ``K + 1`` tokens, so
        the first refresh comes when the start's fill has grown to the cache's end, and the later
        ones periodically from the fill a refresh leaves."""
        k, m = self.K, self.cfg.max_tokens
        room = m - max(k + 1, 3)  # a step needs fill <= room

        def steps_until_full(fill: int) -> int:  # the first step whose fill exceeds room
            return max(0, (room - fill) // (k + 1) + 1)

        start_fill = int(state["start_fill"])
        first = steps_until_full(start_fill)
        period = max(1, steps_until_full(max(start_fill, self.rebuild_frames * (k + 1) - 2)))
        return steps >= first and (steps - first) % period == 0

    @torch.no_grad()
    def refresh(self, state: ImagState) -> ImagState:
        """The state with a fresh cache: each row's last ``rebuild_frames`` frames re-encoded
        at positions ``0 ..`` (but the current frame's last token and its action, which the next
        ``step`` appends), from a slot that leaves the fill at least ``start_fill``. Static
        shapes; see the module docstring for when it is due (``refresh_due``)."""
        n = self.rebuild_frames
        tokens, actions, valid = state["tokens"], state["actions"], state["valid"]
        cache, _, pos = self._encode(
            tokens[:, -n:], actions[:, -n:], valid[:, -n:], drop=2,
            min_fill=int(state["start_fill"]), dtype=state["keys"].dtype,
        )  # fmt: skip
        return {
            **state,
            "keys": cache.k,
            "values": cache.v,
            "kv_valid": cache.valid,
            "pos": pos[:, -2].contiguous(),  # (B,): the current frame's last token
            "fill": cache.size,
        }

    @torch.no_grad()
    def step(
        self, state: ImagState, action: Tensor, *, temperature: float = 1.0,
        return_logits: bool = False,
    ) -> tuple:  # fmt: skip
        """Imagine one frame: ``action (B,)`` int64 is taken in the current frame.

        Returns ``(state, next_tokens (B, K) int64, reward (B,) float32 in {-1, 0, 1},
        end (B,) bool)``, plus, with ``return_logits``, a dict of the logits the draws came from
        (``obs (B, K, vocab)``, ``reward (B, 3)``, ``end (B, 2)``). The tokens are drawn one by
        one at ``temperature`` (0 = argmax); the reward sign and end from their plain logits, as
        IRIS does. Draws use the global torch RNG; nothing is read back to the host, and every
        call runs the same ops on the same shapes (the fill is a tensor).

        Calls: one that appends the current frame's last token and ``a_t`` (2 tokens), whose
        features at ``a_t`` give the reward, the end and the first new token, then ``K - 1``
        cached single-token calls. The new keys are written in place at slots ``fill ..`` of
        ``state``'s buffers, which the returned state shares: step a state at most once. When
        the cache is full (``refresh_due``), ``refresh`` the state first.
        """
        tokens, actions, valid = state["tokens"], state["actions"], state["valid"]
        b, w, k = tokens.shape
        fill = state["fill"]
        keys, kv_valid = state["keys"], state["kv_valid"]
        m = keys.shape[3]
        # No row may hold tokens at or above the fill (stepped twice, or a spare from a later
        # start), and the frame must fit (a due refresh was done): checked on the device.
        above = torch.arange(m, device=fill.device) >= fill  # (M,)
        torch._assert_async(~(kv_valid & above).any() & (fill + max(k + 1, 3) <= m))
        actions = torch.cat([actions[:, :-1], action[:, None]], dim=1)  # (B, W): a_t chosen
        # append o_t^K and a_t at slots fill, fill + 1
        cache = KVCache(keys, state["values"], kv_valid, size=fill, padded=True)
        pos = state["pos"]  # (B,): position of o_t^K
        x = torch.stack([self.obs_embed(tokens[:, -1, -1]), self.act_embed(action)], dim=1)
        x = x + self.pos_embed(pos[:, None] + torch.arange(2, device=pos.device))
        h = self.gpt(x, cache)[:, -1]  # (B, D): the features at a_t
        first_pos = pos + 2  # (B,): position of the new frame's first token
        reward_logits, end_logits = self.reward_head(h), self.end_head(h)  # (B, 3), (B, 2)
        new_tokens, obs_logits = [], []
        for i in range(k):
            logits = self.obs_head(h)  # (B, vocab): the new frame's token i
            token = sample_categorical(logits, temperature)  # (B,)
            new_tokens.append(token)
            obs_logits.append(logits)
            if i < k - 1:
                x = self.obs_embed(token) + self.pos_embed(first_pos + i)  # (B, D)
                h = self.gpt(x[:, None], cache)[:, -1]  # (B, D)
        next_tokens = torch.stack(new_tokens, dim=1)  # (B, K)
        reward = (sample_categorical(reward_logits) - 1).float()  # classes 0, 1, 2 -> -1, 0, +1
        end = sample_categorical(end_logits).bool()
        new_state = {  # slide the window by one frame
            "tokens": torch.cat([tokens[:, 1:], next_tokens[:, None]], dim=1),  # (B, W, K)
            "actions": torch.cat([actions[:, 1:], torch.zeros_like(action)[:, None]], dim=1),
            "valid": F.pad(valid[:, 1:], (0, 1), value=True),  # (B, W)
            "keys": cache.k,
            "values": cache.v,
            "kv_valid": cache.valid,
            "pos": first_pos + k - 1,  # (B,): the new frame's last token, drawn, not cached
            "fill": cache.size,
            "start_fill": state["start_fill"],
        }
        if not return_logits:
            return new_state, next_tokens, reward, end
        logits = {"obs": torch.stack(obs_logits, dim=1), "reward": reward_logits, "end": end_logits}
        return new_state, next_tokens, reward, end, logits
