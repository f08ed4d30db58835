"""The MDN-RNN of World Models (Ha & Schmidhuber 2018, section 2.2 and appendix A.2): an LSTM over
``[z_t, one-hot a_t]`` whose hidden state ``h_t`` parameterises a mixture of Gaussians over the next
latent ``z_{t+1}``, plus the sign of the reward and the end of the episode of that transition.

As in the paper's code, each of the ``Z`` latent dimensions has its own 1-D mixture of ``M``
Gaussians (its own weights, means and scales); the dimensions are independent given ``h_t``.
Dreams are sampled with a temperature ``tau``: mixture logits divided by ``tau`` and scales
multiplied by ``sqrt(tau)`` (the paper's Doom dream uses 1.15).

Row convention (``worldmodels.interfaces.Batch``): ``h_t`` after ``(z_t, a_t)`` predicts
``z_{t+1}``, ``rew[t]`` and ``end[t]``. The recurrent state is ``(h, c)``, each ``(B, hidden)``,
batch-first (so that a dream can replace finished rows with ``torch.where``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.metrics import event_counts
from worldmodels.nn.sampling import sample_categorical

State = tuple[Tensor, Tensor]  # (h, c), each (B, hidden)

NUM_REWARD_CLASSES = 3  # sign of the reward: -1, 0, +1 -> classes 0, 1, 2
NUM_END_CLASSES = 2
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class MDNRNNConfig:
    """Shape of the MDN-RNN. Defaults are the paper's CarRacing model (426 K parameters with 4
    actions); Doom uses ``z_dim=64, hidden=512``."""

    z_dim: int = 32
    """Size of the latents it models (the VAE's z_dim)."""
    hidden: int = 256
    """LSTM units (the paper: 256 for CarRacing, 512 for Doom)."""
    mixtures: int = 5
    """Gaussians in the mixture of each latent dimension (the paper: 5)."""
    temperature: float = 1.0
    """Default dream temperature tau (the paper's Doom dream: 1.15); > 0."""
    reward_head: bool = True
    """Predict the sign of each transition's reward (3 classes)."""
    end_head: bool = True
    """Predict whether each transition ends the episode (the paper's Doom 'done')."""

    def __post_init__(self) -> None:
        if min(self.z_dim, self.hidden, self.mixtures) < 1:
            raise ValueError(f"z_dim, hidden and mixtures must be >= 1, got {self}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def mixture_nll(log_pi: Tensor, mu: Tensor, log_sigma: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood (nats) of ``target`` ``(..., Z)`` under diagonal Gaussian mixtures.

    ``mu`` and ``log_sigma`` are ``(..., M, Z)``. With ``log_pi`` ``(..., M, Z)`` each dimension has
    its own 1-D mixture (Ha & Schmidhuber 2018, the MDN-RNN) and the result is the sum over the
    ``Z`` dimensions of ``-log sum_m pi_mz N(x_z; mu_mz, sigma_mz)``; with ``log_pi`` ``(..., M)``
    it is one mixture of ``M`` diagonal Gaussians over the whole vector. ``log_pi`` is normalised
    over ``M`` here (so raw logits work too). Computed in float32 with ``logsumexp``, so extreme
    weights and scales give large but finite values. Returns ``(...)``.
    """
    log_pi, mu, log_sigma, target = (x.float() for x in (log_pi, mu, log_sigma, target))
    x = target.unsqueeze(-2)  # (..., 1, Z)
    # log N(x; mu, sigma) per component and dimension, (..., M, Z).
    log_prob = -0.5 * ((x - mu) * torch.exp(-log_sigma)).square() - log_sigma - _HALF_LOG_2PI
    if log_pi.shape == mu.shape:  # per-dimension mixtures
        log_w = torch.log_softmax(log_pi, dim=-2)  # (..., M, Z)
        return -torch.logsumexp(log_w + log_prob, dim=-2).sum(-1)
    if log_pi.shape != mu.shape[:-1]:
        raise ValueError(
            f"log_pi must be (..., M, Z) or (..., M) for mu {tuple(mu.shape)}, "
            f"got {tuple(log_pi.shape)}"
        )
    log_w = torch.log_softmax(log_pi, dim=-1)  # (..., M) joint mixture over the vector
    return -torch.logsumexp(log_w + log_prob.sum(-1), dim=-1)


def sample_mixture(log_pi: Tensor, mu: Tensor, log_sigma: Tensor, temperature: float) -> Tensor:
    """One draw per dimension from per-dimension mixtures (``log_pi``, ``mu``, ``log_sigma`` each
    ``(..., M, Z)``) at temperature ``tau``: component ``k ~ softmax(log_pi / tau)``, then
    ``mu_k + sqrt(tau) * sigma_k * eps`` (the paper's sampling). Global torch RNG. -> ``(..., Z)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = log_pi.float().transpose(-1, -2) / temperature  # (..., Z, M)
    k = sample_categorical(logits).unsqueeze(-2)  # (..., 1, Z)
    mean = mu.float().gather(-2, k).squeeze(-2)  # (..., Z)
    sigma = log_sigma.float().gather(-2, k).squeeze(-2).exp()  # (..., Z)
    return mean + math.sqrt(temperature) * sigma * torch.randn_like(mean)


class MDNRNN(nn.Module):
    """LSTM + mixture density head over the next latent, with reward-sign and end heads."""

    Config = MDNRNNConfig

    def __init__(self, config: MDNRNNConfig, num_actions: int) -> None:
        super().__init__()
        self.config = config
        self.num_actions = num_actions
        self.lstm = nn.LSTM(config.z_dim + num_actions, config.hidden, batch_first=True)
        self._mdn_size = 3 * config.mixtures * config.z_dim  # log_pi, mu, log_sigma
        n_out = (
            self._mdn_size
            + NUM_REWARD_CLASSES * config.reward_head
            + NUM_END_CLASSES * config.end_head
        )
        self.head = nn.Linear(config.hidden, n_out)  # one linear map from h_t, as in the paper

    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        """Zero ``(h, c)``, each ``(B, hidden)`` float32."""
        h = torch.zeros(batch_size, self.config.hidden, device=device)
        return h, torch.zeros_like(h)

    def forward(
        self, z: Tensor, actions: Tensor, state: State | None = None
    ) -> tuple[dict[str, Tensor], State]:
        """``z`` ``(B, T, Z)`` float, ``actions`` ``(B, T)`` int64, ``state`` ``(h, c)`` each
        ``(B, hidden)`` (None = zeros) -> (outputs for the NEXT latent and this transition, the state
        after the last step). Outputs: ``log_pi`` (normalised over M), ``mu``, ``log_sigma`` each
        ``(B, T, M, Z)``; ``reward_logits`` ``(B, T, 3)`` (sign -1, 0, +1) if ``reward_head``;
        ``end_logits`` ``(B, T, 2)`` if ``end_head``; ``h_seq`` ``(B, T, hidden)``."""
        cfg = self.config
        b, t, zd = z.shape
        assert zd == cfg.z_dim and actions.shape == (b, t), (z.shape, actions.shape)
        a = F.one_hot(actions, self.num_actions).to(z.dtype)  # (B, T, A)
        hc = None if state is None else (state[0][None].contiguous(), state[1][None].contiguous())
        h_seq, (h_n, c_n) = self.lstm(
            torch.cat((z, a), dim=-1), hc
        )  # (B, T, hidden); (1, B, hidden)
        y = self.head(h_seq)  # (B, T, n_out)
        mdn = y[..., : self._mdn_size].reshape(b, t, 3, cfg.mixtures, cfg.z_dim)  # (B, T, 3, M, Z)
        out = {
            "log_pi": torch.log_softmax(mdn[:, :, 0].float(), dim=-2),  # over the M components
            "mu": mdn[:, :, 1],
            "log_sigma": mdn[:, :, 2],
            "h_seq": h_seq,
        }
        rest = y[..., self._mdn_size :]
        if cfg.reward_head:
            out["reward_logits"], rest = (
                rest[..., :NUM_REWARD_CLASSES],
                rest[..., NUM_REWARD_CLASSES:],
            )
        if cfg.end_head:
            out["end_logits"] = rest[..., :NUM_END_CLASSES]
        return out, (h_n[0], c_n[0])

    def loss(
        self, z: Tensor, actions: Tensor, rew: Tensor, end: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Mixture NLL of ``z_{t+1}`` given the prefix (per latent dimension, in nats, averaged as in
        the paper's code) + cross-entropy of the reward sign + of the end flag, each averaged over
        the real transitions ``t -> t + 1`` (``mask[:, t] & mask[:, t + 1]``). ``z`` ``(B, T, Z)``,
        ``actions`` ``(B, T)`` int64, ``rew`` ``(B, T)`` float (raw; its sign is the target),
        ``end`` and ``mask`` ``(B, T)`` bool.

        Segments are first shifted left past their leading padding rows, so the LSTM starts from
        the zero state at the first real row (as a dream does) whatever the padding; padding
        contents never reach the network."""
        b, t, _ = z.shape
        # Left-align: row i of the result is row (i + first real row) of the input, wrapping the
        # leading padding round to the end, where the causal LSTM cannot see it.
        first = mask.to(torch.uint8).argmax(1)  # (B,) index of the first real row (0 if none)
        idx = (torch.arange(t, device=z.device) + first[:, None]) % t  # (B, T)
        mask = mask.gather(1, idx)
        z = torch.where(mask[..., None], z.gather(1, idx[..., None].expand_as(z)), 0.0)
        actions = torch.where(mask, actions.gather(1, idx), 0)
        rew, end = rew.gather(1, idx), end.gather(1, idx)

        out, _ = self(z[:, :-1], actions[:, :-1])
        valid = mask[:, :-1] & mask[:, 1:]  # (B, T - 1)
        n = valid.sum().clamp(min=1)
        nll = mixture_nll(out["log_pi"], out["mu"], out["log_sigma"], z[:, 1:]) / self.config.z_dim
        nll = torch.where(valid, nll, 0.0).sum() / n
        loss = nll
        keys, values = ["nll"], [nll]
        heads = []
        if self.config.reward_head:
            heads.append(("reward", rew[:, :-1].sign().long() + 1))  # (B, T - 1) in {0, 1, 2}
        if self.config.end_head:
            heads.append(("end", end[:, :-1].long()))  # (B, T - 1) in {0, 1}
        predicted = {}
        for name, target in heads:
            logits = out[f"{name}_logits"].float().transpose(1, 2)  # (B, classes, T - 1)
            ce = F.cross_entropy(logits, target, reduction="none")
            head_loss = torch.where(valid, ce, 0.0).sum() / n
            loss = loss + head_loss
            keys.append(f"loss_{name}")
            values.append(head_loss)
            predicted[name] = (logits.detach().argmax(1), target)
        with torch.no_grad():
            logged = torch.stack([loss, *values]).unbind()  # read once, by the updater
            r, e = predicted.get("reward"), predicted.get("end")
            events = (
                {}
                if not predicted
                else event_counts(
                    valid,
                    None if r is None else r[0] - 1,
                    None if r is None else r[1] - 1,
                    None if e is None else e[0],
                    None if e is None else e[1],
                )
            )  # fmt: skip  recall / precision of the rare classes (worldmodels.metrics)
        return loss, {**dict(zip(["loss", *keys], logged, strict=True)), **events}

    def sample_next(self, out: dict[str, Tensor], temperature: float | None = None) -> Tensor:
        """A draw of the next latent ``(B, Z)`` from the outputs of one step (``log_pi``, ``mu``,
        ``log_sigma`` each ``(B, M, Z)``) at temperature ``tau`` (None = the config's)."""
        tau = self.config.temperature if temperature is None else temperature
        return sample_mixture(out["log_pi"], out["mu"], out["log_sigma"], tau)

    @torch.no_grad()
    def step(
        self, z: Tensor, action: Tensor, state: State | None, *, temperature: float | None = None
    ) -> tuple[Tensor, Tensor, Tensor, State, Tensor]:
        """One dream step from latent ``z`` ``(B, Z)`` and ``action`` ``(B,)`` int64 -> ``(z_next
        (B, Z), reward (B,) float32 in {-1, 0, 1}, end (B,) bool, state, h (B, hidden))``. The
        next latent, the reward sign and the end flag are sampled (global torch RNG); without a
        reward (end) head the reward is 0 (end False). ``h`` is the new state's hidden vector,
        which the paper's controller reads together with ``z_next``. The state keeps the dtypes
        it came in (fp32 under bf16 autocast, where the LSTM returns bf16): a captured step
        needs the same dtypes at every call."""
        given = state
        out, state = self(z[:, None], action[:, None], state)
        if given is not None:
            state = (state[0].to(given[0].dtype), state[1].to(given[1].dtype))
        out = {k: v[:, 0] for k, v in out.items()}  # one step: (B, ...)
        z_next = self.sample_next(out, temperature).to(z.dtype)
        b = z.shape[0]
        if "reward_logits" in out:
            reward = (sample_categorical(out["reward_logits"]) - 1).float()
        else:
            reward = torch.zeros(b, device=z.device)
        if "end_logits" in out:
            end = sample_categorical(out["end_logits"]).bool()
        else:
            end = torch.zeros(b, dtype=torch.bool, device=z.device)
        return z_next, reward, end, state, state[0]
