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

Imagination (``start``/``step``) keeps the last ``context_frames - 1`` frames of every trajectory
and, for each imagined frame, encodes them with the chosen action in one batched call that fills a
key/value cache, then draws the ``K`` new tokens one by one with ``K - 1`` cached single-token
calls. Why the cache is rebuilt every frame instead of carried from frame to frame: positions are
absolute, so once a window is full every new frame shifts the positions of all kept tokens and
their keys must be recomputed anyway (IRIS's window is full from the first imagined frame when the
burn-in is 20 frames); and a carried cache cannot be shared by rows at different fill levels,
which ``DreamEnv`` creates when it restarts finished rows from spares started earlier, without
reading the device to decide which rows must slide.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.heads.reward_end import NUM_END_CLASSES, NUM_REWARD_CLASSES
from worldmodels.nn.transformer import GPT, GPTConfig, init_weights
from worldmodels.registry import DYNAMICS

ImagState = dict[str, Tensor]
"""Imagination state, every entry batch-first and of a fixed shape, so rows can be swapped with
``torch.where`` whatever their history (``W = context_frames - 1``):

* ``tokens (B, W, K) int64``: observation tokens of the last ``W`` frames, oldest first; the last
  one is the current frame;
* ``actions (B, W) int64``: the actions taken in those frames; the last column (the current
  frame's action, not chosen yet) is ignored;
* ``valid (B, W) bool``: False where a row has fewer than ``W`` real frames (left padding).
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

    @property
    def max_tokens(self) -> int:
        return self.context_frames * (self.tokens_per_frame + 1)

    def __post_init__(self) -> None:
        if self.context_frames < 2:
            raise ValueError(f"context_frames must be >= 2, got {self.context_frames}")


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


def sample_categorical(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """One draw per row from ``softmax(logits / temperature)`` (``temperature == 0``: argmax), by
    the Gumbel-max trick: no host synchronisation, global torch RNG. ``(..., C)`` -> ``(...,)``."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, device=logits.device)  # u = 0 gives -inf noise: never drawn
    return (logits.float() / temperature - torch.log(-torch.log(u))).argmax(-1)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, 0).sum() / mask.sum().clamp(min=1)


@DYNAMICS.register("transformer")
class TransformerDynamics(nn.Module):
    """Token world model over ``(B, T, K)`` observation tokens and ``(B, T)`` actions."""

    Config = TransformerDynamicsConfig
    accepts: ClassVar[frozenset[str]] = frozenset({"tokens"})

    def __init__(self, config: TransformerDynamicsConfig, num_actions: int) -> None:
        super().__init__()
        config = dataclasses.replace(
            config, gpt=dataclasses.replace(config.gpt, max_tokens=config.max_tokens)
        )
        self.cfg = config
        self.num_actions = num_actions
        self.K = config.tokens_per_frame
        self.window = config.context_frames - 1  # frames kept by imagination (+ the new one)
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
        first = torch.zeros(t, k, 1, dtype=torch.bool, device=h.device)
        first[0, 0] = True
        obs = obs.masked_fill(first, 0.0)
        at_action = h.view(b, t, k + 1, d)[:, :, k]  # (B, T, D): the features at a_t
        return {"obs": obs, "reward": self.reward_head(at_action), "end": self.end_head(at_action)}

    def loss(
        self, tokens: Tensor, actions: Tensor, rew: Tensor, end: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
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
        first_token = torch.zeros(k, dtype=torch.bool, device=tokens.device)
        first_token[0] = True
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
            ).tolist()  # one read-back for all the logs
        names = ("loss", "loss_obs", "loss_reward", "loss_end", "obs_accuracy", "reward_accuracy",
                 "end_accuracy")  # fmt: skip
        return loss, dict(zip(names, values, strict=True))

    # ---------------------------------------------------------------------------------------
    # Imagination.

    def _cache_dtype(self, device: torch.device) -> torch.dtype:
        # Keys are stored as the attention computes them (bf16 under autocast).
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.pos_embed.weight.dtype

    @torch.no_grad()
    def start(self, tokens: Tensor, actions: Tensor, mask: Tensor | None = None) -> ImagState:
        """Imagination state from real frames: ``tokens (B, T0, K)`` int64, ``actions (B, T0)``
        int64 (the last column is ignored: the agent chooses that action), ``mask (B, T0)`` bool
        (False on padding frames; default all real). The last frame is the current observation
        and must be real. Only the last ``context_frames - 1`` frames are kept: with the next
        imagined frame they fill the context. No network call: ``step`` encodes the window."""
        self._check(tokens, actions, mask)
        w = self.window
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        tokens, actions, mask = tokens[:, -w:], actions[:, -w:], mask[:, -w:]
        pad = w - tokens.shape[1]  # fewer frames than the window: left padding
        return {
            "tokens": F.pad(tokens, (0, 0, pad, 0)),  # (B, W, K)
            "actions": F.pad(actions, (pad, 0)),  # (B, W)
            "valid": F.pad(mask, (pad, 0), value=False),  # (B, W)
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
        IRIS does. Draws use the global torch RNG; nothing is read back to the host, and
        ``state`` is not modified.

        Calls: one batched call over the window's ``(context_frames - 1) * (K + 1)`` tokens
        (IRIS: 19 x 17 = 323; the last one is the action, whose features give the reward, the
        end and the first new token), then ``K - 1`` cached single-token calls, one per further
        token (the last token needs no call: the next step re-encodes the window with it).
        """
        tokens, actions, valid = state["tokens"], state["actions"], state["valid"]
        b, w, k = tokens.shape
        actions = torch.cat([actions[:, :-1], action[:, None]], dim=1)  # (B, W): a_t chosen
        x, pos, key_valid = self._sequence(tokens, actions, valid)  # (B, W * (K + 1), D), ...
        cache = self.gpt.empty_cache(
            b, x.device, self._cache_dtype(x.device), max_tokens=w * (k + 1) + k - 1
        )
        h = self.gpt(x, cache, valid=key_valid)[:, -1]  # (B, D): the features at a_t
        reward_logits, end_logits = self.reward_head(h), self.end_head(h)  # (B, 3), (B, 2)
        first_pos = pos[:, -1] + 1  # (B,): position of the new frame's first token
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
        }
        if not return_logits:
            return new_state, next_tokens, reward, end
        logits = {"obs": torch.stack(obs_logits, dim=1), "reward": reward_logits, "end": end_logits}
        return new_state, next_tokens, reward, end, logits
