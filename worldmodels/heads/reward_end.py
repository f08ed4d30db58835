"""DIAMOND's reward/end model: from a transition ``(obs, act, next_obs)`` to the sign of the reward
(3 classes: -1, 0, +1) and whether the episode ended (2 classes), with an LSTM over time.

Frames are float ``(C, H, W)`` in ``[-1, 1]`` inside the model and uint8 in a ``Batch``. The
recurrent state is ``(h, c)``, each ``(B, lstm_dim)``, batch-first (so that an imagined world can
replace the rows of finished trajectories with ``torch.where``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.interfaces import Batch
from worldmodels.metrics import event_counts
from worldmodels.nn.blocks import Downsample, ResBlocks, check_levels, conv3x3
from worldmodels.nn.pixels import to_float
from worldmodels.nn.sampling import sample_categorical

State = tuple[Tensor, Tensor]  # (h, c), each (B, lstm_dim)

NUM_REWARD_CLASSES = 3  # sign of the reward: -1, 0, +1 -> classes 0, 1, 2
NUM_END_CLASSES = 2


@dataclass(frozen=True)
class RewardEndConfig:
    """Shape of the reward/end model. Defaults are DIAMOND's Atari 100k model (5.9 M parameters
    with 4 actions, 5.2 M of them in the LSTM)."""

    channels: tuple[int, ...] = (32, 32, 32, 32)
    """Width of each encoder level; the resolution halves between levels (64 -> 32 -> 16 -> 8)."""
    depths: tuple[int, ...] = (2, 2, 2, 2)
    """Residual blocks per encoder level."""
    attn_depths: tuple[bool, ...] = (False, False, False, False)
    """Self-attention in the blocks of each level (the 2 middle blocks always have it)."""
    cond_channels: int = 128
    """Width of the action embedding that drives the adaptive group norms."""
    lstm_dim: int = 512
    """Hidden size of the LSTM over time (input: the flattened 32 x 8 x 8 = 2048 features)."""
    img_channels: int = 3
    """Channels of one frame (current and next frame are stacked: 2 * img_channels in)."""
    img_size: int = 64
    """Height and width of the frames."""

    def __post_init__(self) -> None:
        check_levels(self.channels, self.depths, self.attn_depths)
        if self.img_size % 2 ** (len(self.channels) - 1):
            raise ValueError(
                f"img_size ({self.img_size}) must be divisible by 2^(levels - 1) = "
                f"{2 ** (len(self.channels) - 1)}"
            )

    @property
    def feature_dim(self) -> int:
        """Flattened encoder output: ``channels[-1] * (img_size / 2^(levels - 1))^2``."""
        side = self.img_size // 2 ** (len(self.channels) - 1)
        return self.channels[-1] * side * side


class RewardEndEncoder(nn.Module):
    """Stacked ``(obs, next_obs)`` ``(N, 2C, H, W)`` + condition ``(N, cond)`` ->
    ``(N, channels[-1], H / 2^(levels-1), W / 2^(levels-1))``: per level action-conditioned
    ResBlocks (Downsample between levels), then 2 middle ResBlocks with self-attention."""

    def __init__(self, cfg: RewardEndConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = conv3x3(2 * cfg.img_channels, ch[0])
        self.downsamples = nn.ModuleList([nn.Identity(), *(Downsample(c) for c in ch[:-1])])
        self.levels = nn.ModuleList(
            ResBlocks([ch[max(0, i - 1)]] + [ch[i]] * (n - 1), [ch[i]] * n, cfg.cond_channels, attn)
            for i, (n, attn) in enumerate(zip(cfg.depths, cfg.attn_depths, strict=True))
        )
        self.mid = ResBlocks([ch[-1]] * 2, [ch[-1]] * 2, cfg.cond_channels, attn=True)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = self.conv_in(x)
        for down, level in zip(self.downsamples, self.levels, strict=True):
            x, _ = level(down(x), cond)
        x, _ = self.mid(x, cond)
        return x


class RewardEndModel(nn.Module):
    """Predicts the reward sign and the episode end of each transition ``obs -> next_obs`` under
    ``act``, with an LSTM carrying what earlier transitions showed (DIAMOND's ``RewEndModel``)."""

    def __init__(self, cfg: RewardEndConfig, num_actions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_actions = num_actions
        self.act_emb = nn.Embedding(num_actions, cfg.cond_channels)
        self.encoder = RewardEndEncoder(cfg)
        self.lstm = nn.LSTM(cfg.feature_dim, cfg.lstm_dim, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(cfg.lstm_dim, cfg.lstm_dim),
            nn.SiLU(),
            nn.Linear(cfg.lstm_dim, NUM_REWARD_CLASSES + NUM_END_CLASSES, bias=False),
        )

    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        """Zero ``(h, c)``, each ``(B, lstm_dim)`` float32."""
        h = torch.zeros(batch_size, self.cfg.lstm_dim, device=device)
        return h, torch.zeros_like(h)

    def forward(
        self, obs: Tensor, act: Tensor, next_obs: Tensor, state: State | None = None
    ) -> tuple[Tensor, Tensor, State]:
        """``obs``, ``next_obs`` ``(B, T, C, H, W)`` float in ``[-1, 1]``, ``act`` ``(B, T)`` int64,
        ``state`` ``(h, c)`` each ``(B, lstm_dim)`` (None = zeros) -> reward-sign logits
        ``(B, T, 3)``, end logits ``(B, T, 2)``, and the state after the last step."""
        b, t, c, h, w = obs.shape
        assert next_obs.shape == obs.shape, (obs.shape, next_obs.shape)
        assert act.shape == (b, t), (act.shape, obs.shape)
        assert (c, h, w) == (self.cfg.img_channels, self.cfg.img_size, self.cfg.img_size), obs.shape
        x = torch.cat((obs, next_obs), dim=2).flatten(0, 1)  # (B * T, 2C, H, W)
        cond = self.act_emb(act.flatten())  # (B * T, cond_channels)
        x = self.encoder(x, cond).reshape(b, t, -1)  # (B, T, feature_dim)
        hc = None if state is None else (state[0][None].contiguous(), state[1][None].contiguous())
        x, (h_n, c_n) = self.lstm(x, hc)  # x: (B, T, lstm_dim); h_n, c_n: (1, B, lstm_dim)
        logits = self.head(x)  # (B, T, 5)
        return logits[..., :NUM_REWARD_CLASSES], logits[..., NUM_REWARD_CLASSES:], (h_n[0], c_n[0])

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the reward sign and of the end flag over the real transitions
        ``t -> t + 1`` of uint8 segments ``(B, L)`` (those with ``mask[:, t] & mask[:, t + 1]``)."""
        obs = to_float(batch.obs, batch.mask)  # (B, L, C, H, W); padding frames are mid-grey 0
        logits_rew, logits_end, _ = self(obs[:, :-1], batch.act[:, :-1], obs[:, 1:])
        valid = batch.mask[:, :-1] & batch.mask[:, 1:]  # (B, L - 1)
        target_rew = batch.rew[:, :-1].sign().long() + 1  # (B, L - 1) in {0, 1, 2}
        target_end = batch.end[:, :-1].long()  # (B, L - 1) in {0, 1}
        n = valid.sum().clamp(min=1)
        ce_rew = F.cross_entropy(logits_rew.flatten(0, 1), target_rew.flatten(), reduction="none")
        ce_end = F.cross_entropy(logits_end.flatten(0, 1), target_end.flatten(), reduction="none")
        v = valid.flatten()
        loss_rew = torch.where(v, ce_rew, 0.0).sum() / n
        loss_end = torch.where(v, ce_end, 0.0).sum() / n
        loss = loss_rew + loss_end
        with torch.no_grad():
            acc_rew = ((logits_rew.argmax(-1) == target_rew) & valid).sum() / n
            acc_end = ((logits_end.argmax(-1) == target_end) & valid).sum() / n
            events = event_counts(
                valid, logits_rew.argmax(-1) - 1, target_rew - 1, logits_end.argmax(-1), target_end
            )  # recall / precision of the rare classes, from counts (worldmodels.metrics)
        logs = {"loss": loss, "loss_reward": loss_rew, "loss_end": loss_end,
                "reward_accuracy": acc_rew, "end_accuracy": acc_end, **events}  # fmt: skip
        return loss, {k: v.detach() for k, v in logs.items()}  # tensors, read once by the updater

    @torch.no_grad()
    def burn_in(self, obs: Tensor, act: Tensor, mask: Tensor) -> State:
        """The state after the real transitions of a context, as in training: ``obs``
        ``(B, T0, C, H, W)`` uint8, ``act`` ``(B, T0)``, ``mask`` ``(B, T0)`` (padding frames are
        grey, as in ``loss``). Returns ``(h, c)`` ready to predict the step from ``obs[:, -1]``."""
        b = obs.shape[0]
        if obs.shape[1] < 2:
            return self.initial_state(b, obs.device)
        x = to_float(obs, mask)
        return self(x[:, :-1], act[:, :-1], x[:, 1:])[2]

    @torch.no_grad()
    def predict(
        self, obs: Tensor, act: Tensor, next_obs: Tensor, state: State | None
    ) -> tuple[Tensor, Tensor, State]:
        """One imagined step: ``obs``, ``next_obs`` ``(B, C, H, W)`` (float in ``[-1, 1]``, or uint8
        pixels), ``act`` ``(B,)`` -> reward ``(B,)`` float32 in ``{-1, 0, 1}``, end ``(B,)`` bool,
        and the new state. Reward sign and end are *sampled* from the logits (DIAMOND), with the
        global torch RNG."""
        if obs.dtype == torch.uint8:
            obs, next_obs = to_float(obs), to_float(next_obs)
        logits_rew, logits_end, state = self(obs[:, None], act[:, None], next_obs[:, None], state)
        rew = sample_categorical(logits_rew[:, 0])  # (B,) in {0, 1, 2}
        end = sample_categorical(logits_end[:, 0])  # (B,) in {0, 1}
        return (rew - 1).float(), end.bool(), state
