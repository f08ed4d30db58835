"""A causal GPT block stack with a key/value cache, shared by every token model of the project.

The stack takes embedded tokens ``(B, T, D)`` and returns features ``(B, T, D)``: embeddings,
positions and output heads belong to the model that uses it. Blocks are pre-norm (GPT-2, as in
nanoGPT and IRIS): ``x + attn(LN(x))`` then ``x + mlp(LN(x))``, with a final layer norm.

The ``KVCache`` keeps every layer's keys and values in two preallocated batch-first tensors
``(B, L, heads, max_tokens, head_dim)``, so calls can append tokens one (or a chunk) at a time.
Its fill ``size`` is either a Python int (calls read only the filled slots; each fill level is a
different computation) or a 0-dim int64 tensor (calls write at slots ``size ..`` with
``index_copy_`` and attend over all slots under a mask: the same shapes and ops at every fill
level, so a step can be compiled once or captured in a CUDA graph).
Sequences of different lengths share a batch through padding tokens that nothing attends to, and
a cache's slots are physical: every call appends at the same slot for all rows, but which slots a
row's tokens attend to is the row's own (``KVCache.valid``), so rows may hold holes (a row whose
tokens were replaced by another sequence's, shorter, as in ``TransformerDynamics``' imagination).
Positions are the caller's, per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels import graphs

CPU_READS_FILLED_SLOTS = True
"""Eager calls on a CPU with a tensor-filled cache read the fill back (free there) to attend over
the filled slots only; switched off, they run exactly the static computation (the tests that
check that imagination reads nothing back). Never inside a captured function (``graphs``): its
CPU stand-in runs what a CUDA graph would."""


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the block stack. Defaults are IRIS's world model (Micheli et al. 2023)."""

    num_layers: int = 10
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads per block (head width = embed_dim / num_heads)."""
    embed_dim: int = 256
    """Width D of the token features."""
    max_tokens: int = 340
    """Longest sequence, and the size of a cache (IRIS: 20 frames x (16 + 1) tokens)."""
    dropout: float = 0.1
    """Dropout on the input, the attention weights and both residual branches (training only)."""

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, for every layer.

    ``k`` and ``v`` are ``(B, L, heads, max_tokens, head_dim)``; the first ``size`` slots of
    dimension 3 hold the tokens fed so far (the rest is scratch: written by the next calls before
    they read it). ``valid (B, max_tokens)`` bool marks which of them later tokens may attend to
    (False: padding, or slots a row does not own; their keys and values are still read, masked
    out, so they must be finite); ``padded`` says whether any slot below ``size`` may be invalid,
    so calls without padding skip the mask. ``size`` is shared by all rows (the next call writes
    at the same slot for every row): a host-side int, or a 0-dim int64 tensor on the cache's
    device (static shapes: see the module docstring); either way no call reads the device. The
    fields may be views of a caller's buffers: calls write them in place.
    """

    k: Tensor
    v: Tensor
    valid: Tensor
    size: int | Tensor = 0
    padded: bool = False

    @classmethod
    def empty(
        cls, num_layers: int, batch: int, heads: int, max_tokens: int, head_dim: int,
        device: torch.device | str, dtype: torch.dtype,
    ) -> KVCache:  # fmt: skip
        shape = (batch, num_layers, heads, max_tokens, head_dim)
        return cls(
            torch.empty(shape, device=device, dtype=dtype),
            torch.empty(shape, device=device, dtype=dtype),
            torch.zeros(batch, max_tokens, device=device, dtype=torch.bool),
        )

    @property
    def max_tokens(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        """Forget every token (the buffers are kept and overwritten by the next calls)."""
        self.size = 0
        self.padded = False

    def clone(self) -> KVCache:
        return KVCache(self.k.clone(), self.v.clone(), self.valid.clone(), self.size, self.padded)

    def index_select(self, rows: Tensor) -> KVCache:
        """A new cache with the given batch rows ``(R,) int64`` (same size)."""
        return KVCache(
            self.k.index_select(0, rows), self.v.index_select(0, rows),
            self.valid.index_select(0, rows), self.size, self.padded,
        )  # fmt: skip

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Views of layer ``i``'s keys and values, ``(B, heads, max_tokens, head_dim)`` each."""
        return self.k[:, i], self.v[:, i]


def attention_mask(
    t: int, start: int, key_valid: Tensor | None, device: torch.device
) -> Tensor | None:
    """Which keys ``T`` new queries (after ``start`` earlier tokens) may attend to: ``None`` when
    no mask is needed (one new token without padding, or causal attention from scratch, which
    ``is_causal`` handles), else ``(T, S + T)`` or, with ``key_valid (B, S + T)``,
    ``(B, 1, T, S + T)`` bool. Query ``i`` sees keys ``0 .. start + i`` that are valid, and always
    itself: a padding query with no visible key gives NaN in some SDPA kernels and versions,
    which would leak into real tokens through 0 * NaN in the next layer."""
    if key_valid is None and (t == 1 or start == 0):
        return None
    if t == 1 and key_valid is not None:  # one new token: its row of the mask (fewer ops)
        visible = key_valid.clone()
        visible[:, start] = True
        return visible[:, None, None]
    causal = torch.ones(t, start + t, dtype=torch.bool, device=device).tril(start)
    if key_valid is None:
        return causal
    keys = torch.arange(start + t, device=device)
    itself = keys[None, :] == (start + torch.arange(t, device=device))[:, None]  # (T, S + T)
    return (causal & (key_valid[:, None, :] | itself))[:, None]  # (B, 1, T, S + T)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, kv: tuple[Tensor, Tensor] | None, start: int | Tensor,
        mask: Tensor | None, last: int | None = None, read: int | None = None,
    ) -> Tensor:  # fmt: skip
        """``x (B, T, D)``; with ``kv`` (a layer of a cache holding ``start`` tokens) the new keys
        and values are written at ``start:start + T`` and the queries see all ``start + T``
        (``start`` a 0-dim tensor: written at those slots by ``index_copy_``, and the queries see
        every slot of the buffers, or the first ``read``, ``mask`` saying which).
        ``last``: only the last ``last`` tokens' outputs are computed, ``(B, last, D)`` (the keys
        and values of all ``T`` still are).
        ``mask`` is ``attention_mask(...)`` (bool) or the same as an additive float mask (0 or
        -inf, in the queries' dtype): None means causal among the new tokens."""
        # (Few, cheap ops: one-token cached calls are dominated by per-op overheads.)
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, T, hs) each
        dropout_p = self.attn_dropout if self.training else 0.0
        if kv is not None:
            k_buf, v_buf = kv  # (B, nh, max_tokens, hs) each
            if isinstance(start, Tensor):  # static shapes: all slots, masked
                slots = start + torch.arange(t, device=x.device)  # (T,)
                k_buf.index_copy_(2, slots, k.to(k_buf.dtype))
                v_buf.index_copy_(2, slots, v.to(v_buf.dtype))
                k, v = k_buf, v_buf  # (B, nh, max_tokens, hs)
                if read is not None:
                    k, v = k.narrow(2, 0, read), v.narrow(2, 0, read)  # (B, nh, read, hs)
            else:
                k_buf.narrow(2, start, t).copy_(k)
                v_buf.narrow(2, start, t).copy_(v)
                k = k_buf.narrow(2, 0, start + t)  # (B, nh, S + T, hs)
                v = v_buf.narrow(2, 0, start + t)
            if k.dtype != q.dtype:
                k, v = k.to(q.dtype), v.to(q.dtype)
        if last is not None and last < t:
            if last == 0:
                return x[:, :0]
            q = q[:, :, t - last :]  # (B, nh, last, hs)
            if mask is None:  # causal from scratch (start == 0), for the last queries
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            mask = mask[..., t - last :, :]
            t = last
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None and t > 1
        )  # (B, nh, T, hs)
        y = self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D): heads side by side
        return self.resid_dropout(y) if self.training else y


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.embed_dim, 4 * cfg.embed_dim)
        self.proj = nn.Linear(4 * cfg.embed_dim, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(F.gelu(self.fc(x)))
        return self.dropout(y) if self.training else y


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = MLP(cfg)

    def forward(
        self, x: Tensor, kv: tuple[Tensor, Tensor] | None, start: int | Tensor,
        mask: Tensor | None, last: int | None = None, read: int | None = None,
    ) -> Tensor:  # fmt: skip
        y = self.attn(self.ln1(x), kv, start, mask, last, read)
        if last is not None:
            x = x[:, x.shape[1] - y.shape[1] :]  # the last tokens only
        x = x + y
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Causal transformer blocks over embedded tokens; see the module docstring."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.embed_dim)
        self.apply(init_weights)

    def empty_cache(
        self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32,
        max_tokens: int | None = None,
    ) -> KVCache:  # fmt: skip
        """A cache for ``batch`` sequences of up to ``max_tokens`` (default: the config's)."""
        cfg = self.cfg
        return KVCache.empty(
            cfg.num_layers, batch, cfg.num_heads, max_tokens or cfg.max_tokens,
            cfg.embed_dim // cfg.num_heads, device, dtype,
        )  # fmt: skip

    def forward(
        self, x: Tensor, cache: KVCache | None = None, valid: Tensor | None = None,
        last: int | None = None,
    ) -> Tensor:  # fmt: skip
        """``x (B, T, D)`` float -> ``(B, T, D)``.

        Without a cache, token ``t`` attends to tokens ``0..t``. With a cache holding ``S``
        tokens, the ``T`` new tokens attend to the ``S`` cached ones and causally to each other,
        their keys and values are appended and ``cache.size`` becomes ``S + T``.

        ``valid (B, T)`` bool marks padding (False): no later token attends to a padding token
        (in this call or, through the cache, in later ones). A padding token still attends to
        itself so its features stay finite; they mean nothing. Positions are the caller's.

        ``last``: return the features of the last ``last`` tokens only, ``(B, last, D)``, and skip
        the rest of the work of the final block (whose other outputs nothing reads): for a cache
        fill whose features are not needed (``last=0``) or only at the end (``last=1``).

        A cache whose ``size`` is a 0-dim tensor is written at slots ``size .. size + T - 1``
        (in place, ``index_copy_``) and attended to through a mask over all its slots: every fill
        level runs the same ops on the same shapes (compiled once, or captured in a CUDA graph).

        Calls with a cache whose ``size`` is a Python int run eagerly even in a compiled GPT
        (``module.compile()``): the fill changes with every call and would recompile each time.
        """
        if cache is not None and not isinstance(cache.size, Tensor):
            return self._forward_cached(x, cache, valid, last)
        return self._forward(x, cache, valid, last)

    @torch.compiler.disable
    def _forward_cached(
        self, x: Tensor, cache: KVCache, valid: Tensor | None, last: int | None
    ) -> Tensor:
        return self._forward(x, cache, valid, last)

    def _forward(
        self, x: Tensor, cache: KVCache | None, valid: Tensor | None, last: int | None
    ) -> Tensor:
        b, t, _ = x.shape
        start: int | Tensor
        read = None  # slots of a tensor-filled cache the attention reads: all of them
        if cache is None:
            if t > self.cfg.max_tokens:
                raise ValueError(f"{t} tokens exceed max_tokens={self.cfg.max_tokens}")
            start, key_valid = 0, valid
            mask = attention_mask(t, start, key_valid, x.device)
        elif isinstance(cache.size, Tensor):
            if cache.k.shape[0] != b:
                raise ValueError(f"cache has {cache.k.shape[0]} rows, the input {b}")
            start = cache.size
            mask = _slot_mask(cache, start, t, valid)
            if (
                CPU_READS_FILLED_SLOTS
                and start.device.type == "cpu"
                and not torch.compiler.is_compiling()
                and not graphs.capturing()
            ):
                # Eager on a CPU, reading the fill is free, and the attention of a few new
                # tokens is bound by the bytes of keys and values it reads: only the filled
                # slots (the masked ones would add exact zeros).
                read = int(start) + t
                mask = mask[..., :read]
        else:
            start = cache.size
            if start + t > cache.max_tokens:
                raise ValueError(
                    f"cache holds {start} tokens: {t} more exceed its {cache.max_tokens}"
                )
            if cache.k.shape[0] != b:
                raise ValueError(f"cache has {cache.k.shape[0]} rows, the input {b}")
            cache.valid[:, start : start + t] = True if valid is None else valid
            cache.padded = cache.padded or valid is not None
            key_valid = cache.valid[:, : start + t] if cache.padded else None  # (B, S + T)
            mask = attention_mask(t, start, key_valid, x.device)
        if mask is not None:  # additive, once for all layers (SDPA would convert it in each)
            dtype = x.dtype
            if torch.is_autocast_enabled(x.device.type):  # the queries' dtype
                dtype = torch.get_autocast_dtype(x.device.type)
            visible = mask
            mask = torch.full(visible.shape, float("-inf"), dtype=dtype, device=x.device)
            mask.masked_fill_(visible, 0.0)
        if self.training:
            x = self.drop(x)
        for i, block in enumerate(self.blocks):
            kv = None if cache is None else cache.layer(i)
            x = block(x, kv, start, mask, last if i == len(self.blocks) - 1 else None, read)
        if cache is not None:
            cache.size = start + t
        return self.ln_f(x)


def _slot_mask(cache: KVCache, start: Tensor, t: int, valid: Tensor | None) -> Tensor:
    """Marks ``T`` new tokens valid (``valid (B, T)``, default all) at slots ``start ..`` of
    ``cache.valid`` (in place) and returns which of all ``M`` slots each may attend to,
    ``(B, 1, T, M)`` bool: the row's valid slots up to its own, and always itself (see
    ``attention_mask``). Static shapes: ``start`` is a 0-dim tensor."""
    slots = start + torch.arange(t, device=start.device)  # (T,)
    if valid is None:
        cache.valid.index_fill_(1, slots, True)
    else:
        cache.valid.index_copy_(1, slots, valid)
    every = torch.arange(cache.max_tokens, device=start.device)  # (M,)
    upto = every[None, :] <= slots[:, None]  # (T, M)
    itself = every[None, :] == slots[:, None]  # (T, M)
    return ((cache.valid[:, None, :] & upto) | itself)[:, None]  # (B, 1, T, M)


def init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation (as in nanoGPT and IRIS): N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
