"""The IRIS world (Micheli et al. 2023): a VQ-VAE tokenizer and a GPT over frame tokens.

Stage 1 turns each 64x64 frame into 16 tokens of a 512-code vocabulary; stage 2 is a GPT over
blocks of 16 observation tokens + 1 action token that predicts the next frame's tokens, the
reward sign and the episode end. Imagination samples whole frames token by token for all
trajectories at once, keeps rewards and ends on the device, and decodes frames only for agents
that look at pixels. World-model training reads tokens from a cache keyed by replay frame and
tokenizer version (``worldmodels/frame_cache.py``) instead of re-encoding every batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from worldmodels.dynamics.transformer import TransformerDynamics, TransformerDynamicsConfig
from worldmodels.encoders.vqvae import VQVAE, VQVAEConfig
from worldmodels.envs.dream import swap_rows_
from worldmodels.frame_cache import FrameCache
from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.nn.pixels import to_uint8
from worldmodels.registry import WORLDS
from worldmodels.training import Stage, StageTraining

CPU_CHUNK_FRAMES = 16
"""Frames per tokenizer call when encoding or decoding many frames without gradients on CPU:
larger batches' activations overflow the CPU caches (2 threads: reconstructions took ~33 ms per
frame in chunks of 8 to 16 frames, 55 ms in one batch of 320, the size of a burn-in reset)."""


def _chunked(fn, x: Tensor) -> Tensor:
    """``fn(x)`` along dimension 0, in chunks of ``CPU_CHUNK_FRAMES`` on CPU, whole on GPUs."""
    if x.device.type != "cpu" or x.shape[0] <= CPU_CHUNK_FRAMES or torch.is_grad_enabled():
        return fn(x)
    return torch.cat([fn(c) for c in x.split(CPU_CHUNK_FRAMES)])


class TokenSegments(NamedTuple):
    """A replay batch with its frames as tokens: what the transformer's loss reads."""

    tokens: Tensor  # (B, T, K) int64
    act: Tensor  # (B, T) int64
    rew: Tensor  # (B, T) float32
    end: Tensor  # (B, T) bool
    mask: Tensor  # (B, T) bool


def _tokenizer_training() -> StageTraining:
    # Single frames, batch 256, Adam 1e-4, clip 10, from epoch 6 (IRIS).
    return StageTraining(
        steps_per_epoch=200, start_epoch=6, batch_size=256, seq_len=1, recency_weights=None,
        lr=1e-4, weight_decay=0.0, warmup_steps=0, max_grad_norm=10.0,
    )  # fmt: skip


def _transformer_training() -> StageTraining:
    # 64 sequences of 20 frames, AdamW 1e-4 with weight decay 0.01, clip 10, from epoch 26.
    return StageTraining(
        steps_per_epoch=200, start_epoch=26, batch_size=64, seq_len=20, pad_right=19,
        recency_weights=None, lr=1e-4, weight_decay=0.01, warmup_steps=0, max_grad_norm=10.0,
    )  # fmt: skip


@WORLDS.register("iris")
class IrisWorld(nn.Module):
    """VQ-VAE tokenizer + transformer dynamics with reward and end heads."""

    @dataclass(frozen=True)
    class Config:
        tokenizer: VQVAEConfig = field(default_factory=VQVAEConfig)
        """The VQ-VAE (IRIS: 16 tokens per frame, 512 codes, ~4.0 M trainable parameters)."""
        dynamics: TransformerDynamicsConfig = field(default_factory=TransformerDynamicsConfig)
        """The GPT (IRIS: 10 layers, 4 heads, width 256, 20-frame context, 8.4 M); its
        tokens_per_frame, vocab_size and max_tokens follow the tokenizer and context_frames."""
        context_len: int = 20
        """Real frames each imagined trajectory starts from (the agent's 20-frame burn-in)."""
        world_context: int = 1
        """How many of them the transformer starts from (IRIS: the last frame only)."""
        temperature: float = 1.0
        """Sampling temperature of imagined observation tokens."""
        agent_sees_reconstructions: bool = True
        """Pixel agents see the tokenizer's reconstruction of real frames, as in IRIS."""
        tokenizer_training: StageTraining = field(default_factory=_tokenizer_training)
        """Tokenizer optimisation (IRIS: batch 256 frames, from epoch 6)."""
        transformer_training: StageTraining = field(default_factory=_transformer_training)
        """Transformer optimisation (IRIS: 64 x 20 frames, from epoch 26)."""

    default_agent: ClassVar[str] = "actor_critic"
    # imagine_step (and imagine_refresh) are static: one compiled graph, one CUDA graph
    graph_capture: ClassVar[bool | str] = True
    # IRIS's own schedule and actor-critic settings (presets and --set still override them)
    schedule_defaults: ClassVar[dict] = {
        "epochs": 600, "initial_collect_steps": 0, "initial_collect_min_rewards": 0,
        "collect_steps_per_epoch": 200, "collect_epsilon": 0.01,
        # IRIS's imagination restarts nothing (steps after an end are masked out): restarting
        # from the same contexts keeps its start-up cost, each reset encoding num_envs contexts.
        "dream_spares": "shared",
    }  # fmt: skip
    # horizon 19: the published code's 20-step imagination trains on its first 19 transitions
    # (20 frames: it drops the last action and reward and bootstraps from the 20th frame's
    # value); here ``horizon`` counts trained transitions. The trajectory, 1 + 19 frames, then
    # fits the transformer's 20-frame context, as there: no key/value cache refresh.
    agent_defaults: ClassVar[dict] = {
        "actor_critic": {
            "horizon": 19, "num_envs": 64, "gamma": 0.995, "lambda_": 0.95,
            "entropy_weight": 0.001,
            "training": {
                "steps_per_epoch": 200, "first_epoch_steps": 0, "start_epoch": 51, "lr": 1e-4,
                "weight_decay": 0.0, "warmup_steps": 0, "max_grad_norm": 10.0,
                "recency_weights": None,
            },
        }
    }  # fmt: skip

    def __init__(self, config: Config, env_info: EnvInfo) -> None:
        super().__init__()
        self.config = config
        self.num_actions = env_info.num_actions
        self.obs_shape = env_info.obs_shape
        self.context_len = config.context_len
        self.tokenizer = VQVAE(config.tokenizer, env_info)
        k = self.tokenizer.tokens_per_frame
        dyn = dataclasses.replace(
            config.dynamics, tokens_per_frame=k, vocab_size=self.tokenizer.vocab_size
        )
        self.dynamics = TransformerDynamics(dyn, env_info.num_actions)
        self.tokens = FrameCache(k)
        self.tokenizer_version = 0
        self.feature_dim = dyn.gpt.embed_dim

    # ---------------------------------------------------------------- training

    def _bump_tokenizer_version(self) -> None:
        self.tokenizer_version += 1  # every cached token is stale from now on

    def _encode(self, obs: Tensor) -> Tensor:
        was_training = self.tokenizer.training
        self.tokenizer.eval()
        with torch.no_grad():  # tokens are discrete: no gradient reaches the tokenizer anyway
            tokens = _chunked(self.tokenizer.encode, obs)
        self.tokenizer.train(was_training)
        return tokens

    def segment_tokens(self, batch: Batch) -> tuple[TokenSegments, dict[str, float]]:
        """The batch's frames as tokens, from the cache (re-encoded only if stale): the host-side
        part of a transformer step (what is cached decides what is encoded)."""
        assert batch.frame_ids is not None  # replay batches (SegmentSampler) carry them
        before = self.tokens.encoded
        tokens = self.tokens.lookup(
            batch.frame_ids, batch.obs, self._encode, self.tokenizer_version
        )
        x = TokenSegments(tokens, batch.act, batch.rew, batch.end, batch.mask)
        return x, {"frames_encoded": float(self.tokens.encoded - before)}

    def token_loss(self, x: TokenSegments) -> tuple[Tensor, dict[str, Tensor]]:
        """The transformer's loss on token segments (static: a CUDA graph can replay it)."""
        return self.dynamics.loss(x.tokens, x.act, x.rew, x.end, x.mask)

    def stages(self) -> dict[str, Stage]:
        c = self.config
        return {
            "tokenizer": Stage(
                "tokenizer",
                self.tokenizer,
                self.tokenizer.loss,
                c.tokenizer_training,
                self._bump_tokenizer_version,
            ),  # fmt: skip
            "transformer": Stage(
                "transformer",
                self.dynamics,
                self.token_loss,
                c.transformer_training,
                prepare=self.segment_tokens,
            ),  # fmt: skip
        }

    def hot_modules(self) -> list[nn.Module]:
        """Modules whose ``forward`` dominates the run time (``run.compile`` compiles these)."""
        return [self.dynamics.gpt, self.tokenizer.encoder, self.tokenizer.decoder]

    # ---------------------------------------------------------------- frames

    def reconstruct(self, obs: Tensor) -> Tensor:
        """``(N, C, H, W)`` uint8 -> the tokenizer's reconstruction, uint8."""
        return to_uint8(_chunked(self.tokenizer.decode, self._encode(obs)))

    def agent_view(self, obs: Tensor) -> Tensor:
        """What pixel agents see of real frames (IRIS: reconstructions)."""
        return self.reconstruct(obs) if self.config.agent_sees_reconstructions else obs

    # ---------------------------------------------------------------- imagination

    def imagine_start(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[dict, Tensor]:
        n = min(self.config.world_context, obs.shape[1])
        b = obs.shape[0]
        tokens = self._encode(obs[:, -n:].flatten(0, 1)).unflatten(0, (b, n))  # (B, n, K)
        state = self.dynamics.start(tokens, act[:, -n:], mask[:, -n:])
        return state, to_uint8(self.tokenizer.decode(tokens[:, -1]))

    def imagine_step(
        self, state: dict, action: Tensor, *, render: bool = True
    ) -> tuple[dict, Tensor | None, Tensor, Tensor]:
        state, tokens, reward, end = self.dynamics.step(
            state, action, temperature=self.config.temperature
        )
        obs = to_uint8(self.tokenizer.decode(tokens)) if render else None
        return state, obs, reward, end

    def imagine_refresh_due(self, state: dict, steps: int) -> bool:
        """Whether the key/value cache must be rebuilt before the step after ``steps`` steps
        since ``imagine_start`` (host arithmetic only; see ``TransformerDynamics.refresh_due``)."""
        return self.dynamics.refresh_due(state, steps)

    def imagine_refresh(self, state: dict) -> dict:
        """The state with its cache rebuilt from each row's window (static shapes)."""
        return self.dynamics.refresh(state)

    def imagine_swap_rows_(self, mask: Tensor, spare: dict, state: dict) -> dict:
        """Finished rows restarted from their spares, in place (``envs.dream.swap_rows_``), but
        the keys and values only in the cache's first ``spare["start_fill"]`` slots (15 of 340
        from one frame): a spare comes from the same ``start`` call as the running rows (or one
        with fewer frames) and is never stepped, so its tokens all lie there. The running row's
        keys above them stay, finite, and are invalid for the restarted row (``kv_valid`` is
        copied whole): the same trajectories as copying every slot."""
        slots = int(spare["start_fill"])

        def head(s: dict) -> dict:  # views: the swap writes into the state's own buffers
            return {**s, "keys": s["keys"].narrow(3, 0, slots),
                    "values": s["values"].narrow(3, 0, slots)}  # fmt: skip

        swap_rows_(mask, head(spare), head(state))
        return state

    @torch.no_grad()
    def reward_end_probs(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced on real frames ``obs (B, T, C, H, W)`` uint8, ``act (B, T)``, ``mask
        (B, T)``: the probabilities of the reward sign ``(B, T - 1, 3)`` (-1, 0, +1) and of an end
        ``(B, T - 1)`` of each transition ``t -> t + 1``, read at the action ``a_t`` from the real
        frames up to ``t`` (at most the transformer's ``context_frames`` of them: longer segments
        are read in sliding windows, one per transition past the first window)."""
        b, t = obs.shape[:2]
        tokens = self._encode(obs.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, K)
        frames = self.dynamics.cfg.context_frames
        rew, end = [], []
        out = self.dynamics(tokens[:, :frames], act[:, :frames], mask[:, :frames])
        rew.append(out["reward"])
        end.append(out["end"])
        for last in range(frames, t):  # windows ending at each later frame
            lo = last - frames + 1
            out = self.dynamics(
                tokens[:, lo : last + 1], act[:, lo : last + 1], mask[:, lo : last + 1]
            )
            rew.append(out["reward"][:, -1:])
            end.append(out["end"][:, -1:])
        rew_logits = torch.cat(rew, 1)[:, : t - 1].float()  # (B, T - 1, 3)
        end_logits = torch.cat(end, 1)[:, : t - 1].float()
        return rew_logits.softmax(-1), end_logits.softmax(-1)[..., 1]

    # ---------------------------------------------------------------- features

    def _token_features(self, tokens: Tensor) -> Tensor:
        return self.dynamics.obs_embed(tokens).mean(dim=1)  # (B, K, D) -> (B, D)

    def features(self, state: dict) -> Tensor:
        """``(B, D)``: the mean embedding of the current frame's tokens (no decoding needed)."""
        return self._token_features(state["tokens"][:, -1])

    def real_features(
        self, state: dict | None, obs: Tensor, prev_action: Tensor, first: Tensor
    ) -> tuple[dict, Tensor]:
        """The same features from a real frame (its tokens' mean embedding)."""
        return {}, self._token_features(self._encode(obs))
