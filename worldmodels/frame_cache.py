"""Per-frame encodings of replay frames (IRIS's tokens, the VAE world's latents), cached so that
a world model over encodings need not re-encode its batch.

IRIS's published training re-encodes every frame of every world-model batch with the (frozen for
that step) tokenizer: about 70% of a world-model step. Here the tokens of each replay frame are
kept, keyed by the frame's global id (``Batch.frame_ids``), together with the *tokenizer version*
that produced them.

Invalidation rule: cached tokens are valid only if they were produced by the current tokenizer
version, and the version increments after every tokenizer update (``Stage.after_update``). A
lookup re-encodes, in one batched call, exactly the frames of the batch whose tokens are missing or
stale, and stores them. So the transformer always trains on the tokens the current tokenizer
gives (as in the published code), and each frame is encoded at most once per tokenizer update in
which it is sampled: with IRIS's schedule (all tokenizer steps of an epoch, then all transformer
steps) that is at most once per epoch instead of once per batch.

The same cache holds any per-frame encoding: the VAE world keeps its latent means in one
(``dtype=torch.float32``), so that "encode the dataset, then train the MDN-RNN" happens lazily,
once per frame, while the VAE is frozen.

The cache lives on the model's device and is not saved in checkpoints: after a resume every frame
is stale and is re-encoded on first use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class FrameCache:
    """``frame id -> (K values, encoder version)`` with lazy re-encoding of stale frames."""

    def __init__(
        self, tokens_per_frame: int, device: torch.device | str = "cpu", dtype=torch.long
    ) -> None:
        self.k = tokens_per_frame
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokens = torch.zeros(0, tokens_per_frame, dtype=dtype, device=self.device)
        self.version = torch.zeros(0, dtype=torch.long, device=self.device)
        self.encoded = 0  # frames encoded so far (for logging the savings)

    def _grow(self, size: int) -> None:
        if size <= self.tokens.shape[0]:
            return
        cap = max(size, 2 * self.tokens.shape[0], 1024)
        tokens = torch.zeros(cap, self.k, dtype=self.dtype, device=self.device)
        version = torch.full((cap,), -1, dtype=torch.long, device=self.device)
        n = self.tokens.shape[0]
        tokens[:n], version[:n] = self.tokens, self.version
        self.tokens, self.version = tokens, version

    def lookup(
        self,
        frame_ids: Tensor,
        obs: Tensor,
        encode: Callable[[Tensor], Tensor],
        version: int,
    ) -> Tensor:
        """Values ``(B, T, K)`` (int64 tokens by default) for the frames ``obs`` ``(B, T, C, H, W)`` uint8 with ids
        ``frame_ids`` ``(B, T)`` (-1 = padding, whose tokens are 0). ``encode`` maps ``(N, C, H,
        W)`` uint8 frames to ``(N, K)`` tokens with the tokenizer at ``version``."""
        if self.tokens.numel() == 0:  # an empty cache follows its first batch to the device
            self.device = frame_ids.device
            self.tokens = self.tokens.to(self.device)
            self.version = self.version.to(self.device)
        ids = frame_ids.to(self.device)
        real = ids >= 0
        self._grow(int(ids.max()) + 1 if real.any() else 0)
        safe = ids.clamp(min=0)
        stale = real & (self.version[safe] != version)
        if stale.any():
            fresh_ids = ids[stale]
            with torch.no_grad():
                fresh = encode(obs.to(self.device)[stale]).to(self.dtype)  # (N, K)
            self.tokens[fresh_ids] = fresh
            self.version[fresh_ids] = version
            self.encoded += int(fresh_ids.numel())
        out = self.tokens[safe]  # (B, T, K)
        return torch.where(real[..., None], out, torch.zeros_like(out))
