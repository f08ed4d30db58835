"""The diffusion world (DIAMOND, Alonso et al. 2024): pixels in, an EDM denoiser as dynamics.

Stage 1 is the identity (the world models pixels directly), stage 2 a U-Net denoiser that draws the
next frame conditioned on the last ``context`` frames and actions, beside a CNN-LSTM model of
reward sign and episode end. Imagination samples each next frame with a few Euler steps, quantises
it to 8 bits and feeds it back as conditioning, exactly as a real frame would be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from worldmodels.checks import at_least, positive
from worldmodels.dynamics.diffusion.edm import EDMConfig
from worldmodels.dynamics.diffusion.sampler import sigma_levels
from worldmodels.dynamics.diffusion.unet import Denoiser, DenoiserNetConfig
from worldmodels.heads.reward_end import RewardEndConfig, RewardEndModel
from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.nn.pixels import to_float, to_uint8
from worldmodels.nn.recurrent import reset_rows
from worldmodels.registry import WORLDS
from worldmodels.training import Stage, StageTraining


def _denoiser_training() -> StageTraining:
    # 6-row segments (4 context + 2 autoregressive targets); context may start before the episode.
    return StageTraining(
        steps_per_epoch=400, first_epoch_steps=10_000, batch_size=32, seq_len=6, pad_left=5,
        lr=1e-4, weight_decay=1e-2, warmup_steps=100, max_grad_norm=1.0,
    )  # fmt: skip


def _reward_end_training() -> StageTraining:
    # 19-row segments that may run past the episode's end (so ends are seen in many positions).
    return StageTraining(
        steps_per_epoch=400, first_epoch_steps=10_000, batch_size=32, seq_len=19, pad_right=18,
        lr=1e-4, weight_decay=1e-2, warmup_steps=100, max_grad_norm=100.0,
    )  # fmt: skip


@WORLDS.register("diffusion")
class DiffusionWorld(nn.Module):
    """Identity encoder + EDM denoiser dynamics + CNN-LSTM reward/end model."""

    @dataclass(frozen=True)
    class Config:
        denoiser: DenoiserNetConfig = field(default_factory=DenoiserNetConfig)
        """The U-Net (DIAMOND: 4.41 M parameters)."""
        edm: EDMConfig = field(default_factory=EDMConfig)
        """Preconditioning and training noise (Karras et al. 2022, with offset noise)."""
        sampler: Literal["euler", "heun"] = "euler"
        """Sampler used in imagination (DIAMOND: Euler)."""
        denoising_steps: int = 3
        """Denoiser calls per imagined frame with Euler (Heun uses about twice as many)."""
        sigma_min: float = 2e-3
        """Lowest noise level of the sampling schedule."""
        sigma_max: float = 5.0
        """Highest noise level of the sampling schedule."""
        rho: float = 7.0
        """Schedule curvature (Karras et al. eq. 5)."""
        init_noise: Literal["unit", "sigma_max"] = "unit"
        """Initial noise: 'unit' as DIAMOND's published code, 'sigma_max' as EDM's algorithm."""
        reward_end: RewardEndConfig = field(default_factory=RewardEndConfig)
        """The reward/end model (DIAMOND: 5.9 M parameters)."""
        denoiser_training: StageTraining = field(default_factory=_denoiser_training)
        """Denoiser optimisation (DIAMOND: AdamW 1e-4, clip 1, 400 steps per epoch)."""
        reward_end_training: StageTraining = field(default_factory=_reward_end_training)
        """Reward/end optimisation (DIAMOND: AdamW 1e-4, clip 100, 400 steps per epoch)."""

        def __post_init__(self) -> None:
            at_least(self, 1, "denoising_steps")
            positive(self, "sigma_min", "rho")
            if not self.sigma_max > self.sigma_min:
                raise ValueError(
                    f"sigma_max must be > sigma_min = {self.sigma_min}, got {self.sigma_max}"
                )

    default_agent: ClassVar[str] = "actor_critic"
    # imagine_step (and imagine_refresh) are static: one compiled graph, one CUDA graph
    graph_capture: ClassVar[bool | str] = True

    def __init__(self, config: Config, env_info: EnvInfo) -> None:
        super().__init__()
        self.config = config
        self.num_actions = env_info.num_actions
        self.obs_shape = env_info.obs_shape
        self.context_len = config.denoiser.context
        self.denoiser = Denoiser(config.denoiser, config.edm, env_info.num_actions)
        self.reward_end = RewardEndModel(config.reward_end, env_info.num_actions)
        # Features for agents that observe them: the reward/end LSTM's summary of the trajectory.
        self.feature_dim = config.reward_end.lstm_dim
        # The sampling schedule as Python floats, once: imagination never syncs or recompiles.
        self.sigmas = sigma_levels(
            config.denoising_steps, config.sigma_min, config.sigma_max, config.rho
        )

    def hot_modules(self) -> list[nn.Module]:
        """Modules whose ``forward`` dominates the run time (``run.compile`` compiles these)."""
        return [self.denoiser.net, self.reward_end]

    # ---------------------------------------------------------------- training

    def denoiser_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.denoiser.loss(to_float(batch.obs, batch.mask), batch.act, batch.mask)

    def stages(self) -> dict[str, Stage]:
        c = self.config
        return {
            "denoiser": Stage("denoiser", self.denoiser, self.denoiser_loss, c.denoiser_training),
            "reward_end": Stage(
                "reward_end", self.reward_end, self.reward_end.loss, c.reward_end_training
            ),
        }

    # ---------------------------------------------------------------- imagination

    def imagine_start(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[dict, Tensor]:
        """Context ``(B, T0, C, H, W)`` uint8 -> state; the reward/end LSTM is warmed up on the
        context's transitions, as DIAMOND does."""
        x = to_float(obs, mask)  # (B, T0, C, H, W), padding = grey
        state = self.reward_end.initial_state(obs.shape[0], obs.device)
        if obs.shape[1] > 1:
            _, _, state = self.reward_end(x[:, :-1], act[:, :-1], x[:, 1:], state)
        h, c = state
        return {"obs": x, "act": act.clone(), "h": h, "c": c}, obs[:, -1]

    def imagine_step(
        self, state: dict, action: Tensor, *, render: bool = True
    ) -> tuple[dict, Tensor, Tensor, Tensor]:
        c = self.config
        act = torch.cat((state["act"][:, :-1], action[:, None]), dim=1)  # (B, T0) ends with a_t
        next_x = self.denoiser.sample(
            state["obs"],
            act,
            steps=c.denoising_steps,
            sampler=c.sampler,
            sigma_min=c.sigma_min,
            sigma_max=c.sigma_max,
            rho=c.rho,
            init=c.init_noise,
            sigmas=self.sigmas,
        )  # fmt: skip  (B, C, H, W), quantised to 8 bits
        reward, end, (h, cc) = self.reward_end.predict(
            state["obs"][:, -1], action, next_x, (state["h"], state["c"])
        )
        new_state = {
            "obs": torch.cat((state["obs"][:, 1:], next_x[:, None]), dim=1),
            "act": torch.cat((act[:, 1:], torch.zeros_like(action)[:, None]), dim=1),
            "h": h,
            "c": cc,
        }
        return new_state, to_uint8(next_x), reward, end

    @torch.no_grad()
    def reward_end_probs(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced on real frames ``obs (B, T, C, H, W)`` uint8, ``act (B, T)``, ``mask
        (B, T)``: the probabilities of the reward sign ``(B, T - 1, 3)`` (-1, 0, +1) and of an end
        ``(B, T - 1)`` of each transition ``t -> t + 1``, from the real frames up to ``t + 1``
        (the reward/end model reads the frame a transition leads to)."""
        x = to_float(obs, mask)
        logits_rew, logits_end, _ = self.reward_end(x[:, :-1], act[:, :-1], x[:, 1:])
        return logits_rew.float().softmax(-1), logits_end.float().softmax(-1)[..., 1]

    # ---------------------------------------------------------------- features

    def features(self, state: dict) -> Tensor:
        """``(B, lstm_dim)``: the reward/end model's LSTM state, a summary of the trajectory so far
        that predicts reward and end (what feature agents such as ``cmaes`` read)."""
        return state["h"]

    def real_features(
        self, state: dict | None, obs: Tensor, prev_action: Tensor, first: Tensor
    ) -> tuple[dict, Tensor]:
        """The same features from real frames: the LSTM consumes ``(previous frame, previous
        action, this frame)``; rows where ``first`` start from the zero state."""
        x = to_float(obs)
        h, c = self.reward_end.initial_state(obs.shape[0], obs.device)
        if state is not None:
            _, _, (h2, c2) = self.reward_end(
                state["prev"][:, None], prev_action[:, None], x[:, None], (state["h"], state["c"])
            )
            h, c = reset_rows(first, (h2, c2), (h, c))
        return {"prev": x, "h": h, "c": c}, h
