"""A small latent world: a conv autoencoder, and an MLP that steps its latent with reward and end.

Everything a world needs, in one file (``docs/worlds.md`` walks through it): a frozen ``Config``,
one trainable stage, ``imagine_start``/``imagine_step`` for ``DreamEnv``, and three optional
capabilities: ``graph_capture`` (its step is static), features (``features``/``feature_dim``/
``observe``: the latent, so that feature agents train here too) and ``reconstruct`` (the
reconstruction videos). The framework finds it through the entry point in pyproject.toml (once
installed), or when the module is imported (``--plugin latent_world``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.nn.pixels import to_float, to_uint8
from worldmodels.registry import WORLDS
from worldmodels.training import Stage, StageTraining


def _training() -> StageTraining:
    # Segments of 4 rows: 3 transitions each (a segment may end early, padded, at an episode end).
    return StageTraining(steps_per_epoch=50, batch_size=16, seq_len=4, pad_right=3, lr=1e-3)


@WORLDS.register("latent")  # importing the module registers it (the --plugin route)
class LatentWorld(nn.Module):
    """Frames ``(C, H, W)`` -> latent ``z (D,)`` -> frames; ``z' = z + f(z, a)``, reward and end
    predicted from ``(z, a)``."""

    @dataclass(frozen=True)
    class Config:
        channels: int = 16
        """Channels of the two stride-2 convolutions (frame sides must be multiples of 4)."""
        latent_dim: int = 32
        """Size of the latent ``z``: also the features feature agents see."""
        hidden: int = 128
        """Width of the dynamics MLP."""
        context_len: int = 1
        """Real frames an imagined trajectory starts from (the latent of the last one)."""
        training: StageTraining = field(default_factory=_training)
        """When and how the one stage trains (the framework's generic settings)."""

        def __post_init__(self) -> None:
            if self.latent_dim < 1 or self.channels < 1 or self.context_len < 1:
                raise ValueError("latent_dim, channels and context_len must be >= 1")

    default_agent: ClassVar[str] = "actor_critic"  # trained when --agent is not given
    graph_capture: ClassVar[bool | str] = True  # imagine_step and the loss are static

    def __init__(self, config: Config, env_info: EnvInfo) -> None:
        super().__init__()
        c, h, w = env_info.obs_shape
        if h % 4 or w % 4:
            raise ValueError(f"latent world: frame sides must be multiples of 4, got {h}x{w}")
        self.config = config
        self.num_actions = env_info.num_actions
        self.obs_shape = env_info.obs_shape
        self.context_len = config.context_len
        self.feature_dim = config.latent_dim  # the size of features(state)
        ch, d, grid = config.channels, config.latent_dim, (config.channels, h // 4, w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, ch, 4, 2, 1), nn.SiLU(), nn.Conv2d(ch, ch, 4, 2, 1), nn.SiLU(),
            nn.Flatten(), nn.Linear(ch * (h // 4) * (w // 4), d),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Linear(d, ch * (h // 4) * (w // 4)), nn.Unflatten(1, grid), nn.SiLU(),
            nn.ConvTranspose2d(ch, ch, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(ch, c, 4, 2, 1),
        )  # fmt: skip
        self.dynamics = nn.Sequential(
            nn.Linear(d + self.num_actions, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, d + 2),  # latent change, reward, end logit
        )  # fmt: skip

    # ---------------------------------------------------------------- the model

    def encode(self, obs: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> ``(N, D)``."""
        return self.encoder(to_float(obs))

    def predict(self, z: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z (N, D)``, ``action (N,)`` -> next ``z (N, D)``, reward ``(N,)``, end logit ``(N,)``."""
        a = F.one_hot(action, self.num_actions).to(z.dtype)
        out = self.dynamics(torch.cat((z, a), dim=-1))
        return z + out[:, :-2], out[:, -2], out[:, -1]

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction of every real frame, and the prediction of each real transition's next
        latent, reward (sign-clipped) and end. Static: masks weigh, nothing reads the device."""
        b, t = batch.mask.shape
        frames = batch.obs.flatten(0, 1)  # (B*T, C, H, W)
        z = self.encode(frames)  # (B*T, D)
        real = batch.mask.flatten().float()
        recon = (self.decoder(z) - to_float(frames)).pow(2).mean(dim=(1, 2, 3))
        recon = (recon * real).sum() / real.sum().clamp(min=1)
        z = z.unflatten(0, (b, t))
        nxt, reward, end = self.predict(z[:, :-1].flatten(0, 1), batch.act[:, :-1].flatten())
        step = batch.mask[:, 1:].flatten().float()  # transition t -> t+1 is real where mask[t+1]
        dyn = (nxt - z[:, 1:].flatten(0, 1).detach()).pow(2).mean(dim=-1)
        rew = (reward - batch.rew[:, :-1].flatten().sign()).pow(2)
        ends = F.binary_cross_entropy_with_logits(
            end, batch.end[:, :-1].flatten().float(), reduction="none"
        )
        n = step.sum().clamp(min=1)
        dyn, rew, ends = (dyn * step).sum() / n, (rew * step).sum() / n, (ends * step).sum() / n
        total = recon + dyn + rew + ends
        return total, {"recon": recon.detach(), "dynamics": dyn.detach(), "reward": rew.detach(),
                       "end": ends.detach()}  # fmt: skip

    def stages(self) -> dict[str, Stage]:
        return {"model": Stage("model", self, self.loss, self.config.training)}

    # ---------------------------------------------------------------- imagination

    def imagine_start(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[dict, Tensor]:
        """Start from the last context frame ``obs[:, -1]`` (``(B, T0, C, H, W)`` uint8)."""
        first = obs[:, -1]
        return {"z": self.encode(first)}, first.clone()

    def imagine_step(
        self, state: dict, action: Tensor, *, render: bool = True
    ) -> tuple[dict, Tensor | None, Tensor, Tensor]:
        z, reward, end_logit = self.predict(state["z"], action)
        end = torch.rand_like(end_logit) < torch.sigmoid(end_logit)  # torch's global RNG
        obs = to_uint8(self.decoder(z)) if render else None  # feature agents skip the decoder
        return {"z": z}, obs, reward.float(), end

    # ---------------------------------------------------------------- optional capabilities

    def features(self, state: dict) -> Tensor:
        """What feature agents see in imagination: ``z (B, D)``."""
        return state["z"].float()

    def real_features(
        self, state: dict | None, obs: Tensor, prev_action: Tensor, first: Tensor
    ) -> tuple[dict, Tensor]:
        """The same features of real frames ``(B, C, H, W)`` uint8 (no memory to carry)."""
        z = self.encode(obs)
        return {"z": z}, z.float()

    def reconstruct(self, obs: Tensor) -> Tensor:
        """``(N, C, H, W)`` uint8 through the autoencoder, uint8 (the reconstruction videos)."""
        return to_uint8(self.decoder(self.encode(obs)))
