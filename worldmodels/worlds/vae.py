"""The original World Models (Ha & Schmidhuber 2018): a ConvVAE, an MDN-RNN, a controller on [z, h].

Stage 1 compresses each frame to a latent ``z`` (the VAE), stage 2 predicts the distribution of
the next ``z`` (a mixture of Gaussians sampled at temperature ``tau``) with reward and end heads,
and the controller (``cmaes`` by default) reads the features ``[z_t, h_t]``. The world trains with
the *staged* schedule: rollouts, then the VAE, then the MDN-RNN on encoded sequences, then the
controller entirely inside the dream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from worldmodels.dynamics.mdn_rnn import MDNRNN, MDNRNNConfig
from worldmodels.encoders.vae import ConvVAE, ConvVAEConfig
from worldmodels.frame_cache import FrameCache
from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.nn.pixels import to_uint8
from worldmodels.nn.recurrent import reset_rows
from worldmodels.registry import WORLDS
from worldmodels.training import Stage, StageTraining


def _vae_training() -> StageTraining:
    # Single frames, uniformly from the whole dataset (the paper trains on shuffled frames).
    return StageTraining(
        steps_per_epoch=2000, batch_size=100, seq_len=1, recency_weights=None, lr=1e-4,
        weight_decay=0.0, warmup_steps=0, max_grad_norm=float("inf"),  # the paper does not clip
    )  # fmt: skip


def _mdn_training() -> StageTraining:
    # Sequences of encoded frames, starting at episode starts or anywhere inside.
    return StageTraining(
        steps_per_epoch=2000, batch_size=100, seq_len=32, pad_right=31, recency_weights=None,
        lr=1e-3, weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0,
    )  # fmt: skip


@WORLDS.register("vae")
class VAEWorld(nn.Module):
    """ConvVAE encoder + MDN-RNN dynamics with reward and end heads; features ``[z, h]``."""

    @dataclass(frozen=True)
    class Config:
        vae: ConvVAEConfig = field(default_factory=ConvVAEConfig)
        """The ConvVAE (64x64x3 -> z of 32, four stride-2 convs)."""
        mdn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
        """The MDN-RNN (LSTM 256, 5 Gaussians per latent dimension); its temperature is tau; its
        z_dim always follows the VAE's."""
        context_len: int = 1
        """Real frames an imagined trajectory starts from (the LSTM is warmed up on them)."""
        vae_training: StageTraining = field(default_factory=_vae_training)
        """VAE optimisation; in the staged schedule ``steps_per_epoch`` is its total steps."""
        mdn_training: StageTraining = field(default_factory=_mdn_training)
        """MDN-RNN optimisation; in the staged schedule ``steps_per_epoch`` is its total steps."""

    default_agent: ClassVar[str] = "cmaes"
    # imagine_step (and imagine_refresh) are static: one compiled graph, one CUDA graph
    graph_capture: ClassVar[bool | str] = True
    schedule: ClassVar[str] = "staged"  # stages train one after another (Ha & Schmidhuber)

    def __init__(self, config: Config, env_info: EnvInfo) -> None:
        super().__init__()
        self.config = config
        self.num_actions = env_info.num_actions
        self.obs_shape = env_info.obs_shape
        self.context_len = config.context_len
        self.vae = ConvVAE(config.vae, env_info)
        # The MDN-RNN models the VAE's latents: its z_dim is the VAE's, whatever its config says.
        self.mdn = MDNRNN(
            dataclasses.replace(config.mdn, z_dim=config.vae.z_dim), env_info.num_actions
        )
        self.z_dim = config.vae.z_dim
        self.feature_dim = config.vae.z_dim + config.mdn.hidden
        # Latent means of replay frames, valid while the VAE is unchanged ("encode the dataset").
        self.latents = FrameCache(self.z_dim, dtype=torch.float32)
        self.vae_version = 0

    def _bump_vae_version(self) -> None:
        self.vae_version += 1

    def _encode_mean(self, obs: Tensor) -> Tensor:
        return self.vae.encode(obs)

    def segment_latents(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        """The batch with its frames as VAE latent means ``(B, T, Z)`` in place of ``obs``, from
        the cache (encoded once per VAE version): the host-side part of an MDN-RNN step."""
        if batch.frame_ids is None:
            with torch.no_grad():
                b, t = batch.obs.shape[:2]
                z = self._encode_mean(batch.obs.flatten(0, 1)).unflatten(0, (b, t))
        else:
            z = self.latents.lookup(batch.frame_ids, batch.obs, self._encode_mean, self.vae_version)
        return batch._replace(obs=z, frame_ids=None), {}

    def latent_loss(self, x: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The MDN-RNN's loss on latent segments (``obs`` holds the latents; static)."""
        return self.mdn.loss(x.obs, x.act, x.rew, x.end, x.mask)

    def stages(self) -> dict[str, Stage]:
        c = self.config
        return {
            "vae": Stage("vae", self.vae, self.vae.loss, c.vae_training, self._bump_vae_version),
            "mdn_rnn": Stage(
                "mdn_rnn",
                self.mdn,
                self.latent_loss,
                c.mdn_training,
                prepare=self.segment_latents,
            ),  # fmt: skip
        }

    def reconstruct(self, obs: Tensor) -> Tensor:
        """``(N, C, H, W)`` uint8 frames through the VAE (means) and back, uint8."""
        return to_uint8(self.vae.decode(self.vae.encode(obs)))

    # ---------------------------------------------------------------- imagination

    def features(self, state: dict) -> Tensor:
        """``[z_t, h_t]`` ``(B, Z + hidden)``: the controller's input."""
        return torch.cat((state["z"], state["h"]), dim=-1)

    def imagine_start(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[dict, Tensor]:
        """Encode the context frames and warm the LSTM up on their transitions."""
        b, t = obs.shape[:2]
        z = self.vae.encode(obs.flatten(0, 1)).unflatten(0, (b, t))  # (B, T0, Z) means
        h, c = self.mdn.initial_state(b, obs.device)
        for i in range(t - 1):
            _, (h2, c2) = self.mdn(z[:, i : i + 1], act[:, i : i + 1], (h, c))
            # padding before the episode leaves the state at zero
            h, c = reset_rows(~mask[:, i], (h2, c2), (h, c))
        return {"z": z[:, -1], "h": h, "c": c}, obs[:, -1]

    def imagine_step(
        self, state: dict, action: Tensor, *, render: bool = True
    ) -> tuple[dict, Tensor | None, Tensor, Tensor]:
        z, reward, end, (h, c), _ = self.mdn.step(state["z"], action, (state["h"], state["c"]))
        obs = to_uint8(self.vae.decode(z)) if render else None
        return {"z": z, "h": h, "c": c}, obs, reward, end

    @torch.no_grad()
    def reward_end_probs(
        self, obs: Tensor, act: Tensor, mask: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """Teacher-forced on real frames ``obs (B, T, C, H, W)`` uint8, ``act (B, T)``, ``mask
        (B, T)`` (real throughout: the LSTM starts at row 0): the probabilities of the reward sign
        ``(B, T - 1, 3)`` (-1, 0, +1) and of an end ``(B, T - 1)`` of each transition
        ``t -> t + 1``, from the real frames up to ``t``; None for a head the MDN-RNN lacks."""
        b, t = obs.shape[:2]
        z = self.vae.encode(obs.flatten(0, 1)).unflatten(0, (b, t))
        out, _ = self.mdn(z[:, :-1], act[:, :-1])
        rew = out.get("reward_logits")
        end = out.get("end_logits")
        return (
            None if rew is None else rew.float().softmax(-1),
            None if end is None else end.float().softmax(-1)[..., 1],
        )

    # ---------------------------------------------------------------- the real env

    def real_features(
        self, state: dict | None, obs: Tensor, prev_action: Tensor, first: Tensor
    ) -> tuple[dict, Tensor]:
        """Features of real frames, the same as in a dream: ``h_t`` is the LSTM state after
        ``(z_{t-1}, a_{t-1})``, reset where ``first``; ``z_t`` encodes ``obs`` ``(B, C, H, W)``."""
        b = obs.shape[0]
        zero_h, zero_c = self.mdn.initial_state(b, obs.device)
        if state is None:
            h, c = zero_h, zero_c
        else:
            _, (h, c) = self.mdn(
                state["z"][:, None], prev_action[:, None], (state["h"], state["c"])
            )
            h, c = reset_rows(first, (h, c), (zero_h, zero_c))
        new = {"z": self.vae.encode(obs), "h": h, "c": c}
        return new, self.features(new)
