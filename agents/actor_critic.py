"""DIAMOND's actor-critic: a conv + LSTM policy and value trained in imagination by REINFORCE with
a lambda-return baseline (Alonso et al. 2024, section 2.3 / appendix; the critic is regressed on
the same lambda returns).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.interfaces import EnvInfo
from worldmodels.nn.blocks import SmallResBlock, conv3x3
from worldmodels.nn.pixels import to_float
from worldmodels.nn.recurrent import reset_rows
from worldmodels.nn.sampling import categorical_entropy, categorical_log_prob, sample_categorical
from worldmodels.registry import AGENTS
from worldmodels.training import StageTraining, Updater

State = tuple[Tensor, Tensor]  # (h, c), each (B, lstm_dim)


def lambda_returns(
    rew: Tensor, end: Tensor, trunc: Tensor, bootstrap: Tensor, gamma: float, lambda_: float
) -> Tensor:
    """TD(lambda) returns of imagined trajectories laid end to end in each row.

    ``rew``, ``end``, ``trunc``, ``bootstrap`` are ``(B, T)``; ``bootstrap[:, t]`` is the value
    ``V(s_{t+1})`` of the observation that follows step ``t`` *in the trajectory step t belongs to*
    (the final observation where that trajectory finished). With ``r_t = sign(rew_t)``::

        G_t = r_t + gamma * (1 - end_t) * [(1 - lambda) * V_{t+1} + lambda * G_{t+1}]

    where the bracket is just ``V_{t+1}`` after a truncation at ``t`` (the row's next step starts a
    new trajectory), and ``G_T = V_T = bootstrap[:, T - 1]`` past the last step. Returns ``(B, T)``
    in ``bootstrap``'s dtype; vectorised over ``B``, backward loop over ``T``.
    """
    assert rew.ndim == 2 and rew.shape == end.shape == trunc.shape == bootstrap.shape
    rew = rew.sign().to(bootstrap.dtype)
    not_end = (~end.bool()).to(bootstrap.dtype)
    trunc = trunc.bool()
    out = torch.empty_like(bootstrap)
    nxt = bootstrap[:, -1]  # G_T
    for t in reversed(range(rew.shape[1])):
        v = bootstrap[:, t]
        mix = torch.where(trunc[:, t], v, (1 - lambda_) * v + lambda_ * nxt)
        nxt = rew[:, t] + gamma * not_end[:, t] * mix
        out[:, t] = nxt
    return out


@AGENTS.register("actor_critic")
class ActorCritic(nn.Module):
    """Conv encoder -> LSTM cell -> linear actor (logits) and critic (value) heads, both zero-
    initialised so the first policy is uniform and the first value 0 (DIAMOND, 3.2 M parameters)."""

    @dataclass(frozen=True)
    class Config:
        """DIAMOND's actor-critic; defaults are its Atari 100k settings."""

        channels: tuple[int, ...] = (32, 32, 64, 64)
        """Widths of the SmallResBlocks after a 3x3 conv to channels[0]; each block is followed
        by a 2x2 max-pool (64 x 64 -> 4 x 4)."""
        lstm_dim: int = 512
        """Hidden size of the LSTM cell (input: 64 x 4 x 4 = 1024 features at 64 x 64)."""
        gamma: float = 0.985
        """Discount factor."""
        lambda_: float = 0.95
        """Lambda of the lambda returns (bias/variance trade-off of the baseline targets)."""
        entropy_weight: float = 0.001
        """Weight of the policy entropy bonus."""
        value_weight: float = 1.0
        """Weight of the critic's MSE loss."""
        horizon: int = 15
        """Imagined steps per update."""
        num_envs: int = 32
        """Imagined trajectories per update."""
        burn_in: bool = True
        """Run the LSTM over the real context frames (no gradient) before imagining."""
        training: StageTraining = StageTraining(
            steps_per_epoch=400, first_epoch_steps=5000, lr=1e-4, weight_decay=0.0,
            warmup_steps=100, max_grad_norm=100.0,
        )  # fmt: skip
        """Optimizer and schedule (DIAMOND: AdamW 1e-4, no weight decay, clip 100)."""

    observes: ClassVar[Literal["pixels", "features"]] = "pixels"

    def __init__(self, config: Config, env_info: EnvInfo, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.num_actions = env_info.num_actions
        c, h, w = env_info.obs_shape
        n = len(config.channels)
        if h >> n < 1 or w >> n < 1:
            raise ValueError(
                f"observations of {h}x{w} are too small for {n} 2x2 max-pools "
                f"(channels={config.channels})"
            )
        # Weights drawn from the agent's own seed, leaving the global RNG as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ch = config.channels
            layers: list[nn.Module] = [conv3x3(c, ch[0])]
            for i, c_out in enumerate(ch):
                layers += [SmallResBlock(ch[max(0, i - 1)], c_out), nn.MaxPool2d(2)]
            self.encoder = nn.Sequential(*layers)
            self.lstm = nn.LSTMCell(ch[-1] * (h >> n) * (w >> n), config.lstm_dim)
            self.actor = nn.Linear(config.lstm_dim, self.num_actions)
            self.critic = nn.Linear(config.lstm_dim, 1)
        for layer in (self.actor, self.critic):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.generator = torch.Generator().manual_seed(seed)  # act()'s draws: a seeded agent
        self._updater: Updater | None = None  # built on the first update, on the params' device
        self._graph_loss: functools.partial | None = None  # the captured update's loss

    # ----------------------------------------------------------------------------- network

    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        """Zero ``(h, c)``, each ``(B, lstm_dim)`` float32."""
        h = torch.zeros(batch_size, self.config.lstm_dim, device=device)
        return h, torch.zeros_like(h)

    def _core(self, obs: Tensor, state: State) -> State:
        """uint8 ``(B, C, H, W)`` + state -> next ``(h, c)``."""
        x = self.encoder(to_float(obs)).flatten(1)  # (B, D)
        return self.lstm(x, state)

    data_parallel = True  # its updates go through worldmodels.training.Updater (torchrun)

    @property
    def uses_context(self) -> bool:
        """Whether it burns in on the real context frames of ``DreamEnv.reset()``'s info."""
        return self.config.burn_in

    def hot_modules(self) -> list[nn.Module]:
        """Modules whose ``forward`` dominates the run time (``run.compile`` compiles these)."""
        return [self]

    def forward(self, obs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """uint8 ``(B, C, H, W)``, ``(h, c)`` -> logits ``(B, A)``, value ``(B,)``, ``(h, c)``."""
        h, c = self._core(obs, state)
        # float32 heads: sampling and lambda returns stay exact under bf16 autocast
        return self.actor(h).float(), self.critic(h)[:, 0].float(), (h, c)

    @torch.no_grad()
    def burn_in(self, obs: Tensor, mask: Tensor) -> State:
        """Run the LSTM over real frames ``(B, T, C, H, W)`` uint8 from a zero state, updating the
        state only where ``mask`` ``(B, T)`` is True (padding leaves it untouched)."""
        b, t = mask.shape
        h, c = self.initial_state(b, obs.device)
        if t == 0:
            return h, c
        x = self.encoder(to_float(obs.flatten(0, 1))).reshape(b, t, -1)  # (B, T, D)
        for i in range(t):
            h2, c2 = self.lstm(x[:, i], (h, c))
            h, c = reset_rows(~mask[:, i], (h2, c2), (h, c))  # padding: the state stays
        return h, c

    # ----------------------------------------------------------------------------- acting

    @torch.no_grad()
    def act(
        self, obs: Tensor, state: State | None, first: Tensor, *, greedy: bool = False
    ) -> tuple[Tensor, State]:
        """uint8 ``(B, C, H, W)`` observations -> actions ``(B,) int64`` and the new state.

        Rows where ``first`` ``(B,) bool`` is True start from a zero state. Actions are sampled
        from the policy with the agent's own seeded generator (saved in checkpoints), or the most
        likely action with ``greedy``."""
        b = obs.shape[0]
        zero = self.initial_state(b, obs.device)
        if state is None:
            state = zero
        state = reset_rows(first, state, zero)
        logits, _, state = self(obs, state)
        actions = (
            logits.argmax(dim=-1)
            if greedy
            else sample_categorical(logits, generator=self.generator)
        )
        return actions.long(), state

    # ----------------------------------------------------------------------------- training

    def train_in_imagination(self, dream: Any) -> dict[str, float]:
        """One gradient update on ``config.horizon`` imagined steps of ``dream`` (a ``DreamEnv``
        with ``num_envs=config.num_envs, horizon=config.horizon``); returns scalars to log.

        Where the dream captures CUDA graphs (``dream.graphs``), the whole update - the
        imagined rollout from the sampled contexts, the loss, the backward pass and the optimizer
        step - is one graph, replayed on freshly sampled contexts each time."""
        graphs = dream.graphs
        if self._updater is None or self._updater.graphs != graphs:
            device = next(self.parameters()).device
            old, self._updater = (
                self._updater,
                Updater(self, self.config.training, device, graphs=graphs or False),
            )
            if old is not None:  # e.g. restored from a checkpoint: carry its state over
                self._updater.load_state_dict(old.state_dict())
        self._updater.amp = dream.amp  # the run's precision travels with it
        if not graphs:
            return self._updater.update(self.imagination_loss, dream)
        if self._graph_loss is None or self._graph_loss.args[0] is not dream:
            self._graph_loss = functools.partial(self.imagination_loss, dream)
        return self._updater.update(self._graph_loss, dream.contexts())

    def imagination_loss(self, dream: Any, ctx: Any = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Imagine ``horizon`` steps from ``dream.reset(ctx)`` (``ctx``: real contexts from
        ``dream.contexts()``, default sampled by the reset) and return the REINFORCE loss with a
        lambda-return baseline, the critic's loss and the entropy bonus, averaged over ``(B, T)``.
        With ``ctx`` given it is static (no host sync): a CUDA graph can replay it."""
        cfg = self.config
        obs, info = dream.reset(ctx)  # (B, C, H, W) uint8
        b = obs.shape[0]
        if cfg.burn_in:
            # The frames before the first observation, for the active rows and their spares
            # (the same rows when the dream restarts finished rows from their own contexts).
            if info["next_context_mask"] is info["context_mask"]:
                state = spare = self.burn_in(
                    info["context_obs"][:, :-1], info["context_mask"][:, :-1]
                )
            else:
                ctx_obs = torch.cat((info["context_obs"], info["next_context_obs"]))[:, :-1]
                mask = torch.cat((info["context_mask"], info["next_context_mask"]))[:, :-1]
                h, c = self.burn_in(ctx_obs, mask)  # (2B, lstm_dim) each
                state, spare = (h[:b], c[:b]), (h[b:], c[b:])
        else:
            state = spare = self.initial_state(b, obs.device)

        # V of what follows step t in its trajectory, from its continuing state: for a row that
        # goes on, the value the next step computes anyway; after an end, nothing (it is
        # discounted to 0); after a truncation, the value of the final observation, which needs
        # its own forward pass. Trajectories of the dream's horizon, started together by the
        # reset, are truncated at the last step only (restarted ones start counting at 0).
        truncated_early = dream.horizon < cfg.horizon
        logps, values, entropies, rews, ends, truncs = [], [], [], [], [], []
        boots: list[Any] = []  # Tensor, None (the next value) or (where, Tensor)
        for t in range(cfg.horizon):
            logits, value, state = self(obs, state)  # (B, A), (B,)
            action = sample_categorical(logits.detach())  # global torch RNG, no host sync
            next_obs, rew, end, trunc, step_info = dream.step(action)
            done = end | trunc
            boot = None  # the next step's value
            if truncated_early or t == cfg.horizon - 1:
                with torch.no_grad():
                    last = torch.where(done.view(b, 1, 1, 1), step_info["final_obs"], next_obs)
                    _, boot, _ = self(last, (state[0].detach(), state[1].detach()))
                if t < cfg.horizon - 1:
                    boot = (trunc, boot)  # only where truncated; the next value elsewhere
            state = reset_rows(done, state, spare)  # restarted rows: the burnt-in state
            logps.append(categorical_log_prob(logits, action))
            entropies.append(categorical_entropy(logits))
            values.append(value)
            rews.append(rew)
            ends.append(end)
            truncs.append(trunc)
            boots.append(boot)
            obs = next_obs

        for t, boot in enumerate(boots[:-1]):
            nxt = values[t + 1].detach()
            boots[t] = nxt if boot is None else torch.where(boot[0], boot[1], nxt)
        logp, value, entropy = (torch.stack(x, dim=1) for x in (logps, values, entropies))
        rew, end, trunc, boot = (torch.stack(x, dim=1) for x in (rews, ends, truncs, boots))
        with torch.no_grad():
            returns = lambda_returns(rew, end, trunc, boot, cfg.gamma, cfg.lambda_)  # (B, T)
        policy_loss = -(logp * (returns - value).detach()).mean()
        value_loss = cfg.value_weight * F.mse_loss(value, returns)
        entropy = entropy.mean()
        loss = policy_loss + value_loss - cfg.entropy_weight * entropy
        logs = {
            "loss": loss, "policy_loss": policy_loss, "value_loss": value_loss,
            "entropy": entropy, "return_mean": returns.mean(), "value_mean": value.mean(),
            "reward_mean": rew.float().mean(), "end_rate": end.float().mean(),
        }  # fmt: skip
        return loss, {k: v.detach() for k, v in logs.items()}  # read back once, by the updater

    # ----------------------------------------------------------------------------- checkpoints

    def get_extra_state(self) -> dict:
        """The act() generator and the optimizer/schedule state (None before the first update)."""
        updater = None if self._updater is None else self._updater.state_dict()
        return {"generator": self.generator.get_state(), "updater": updater}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())  # a map_location may have moved it
        if state.get("updater") is not None:
            if self._updater is None:
                self._updater = Updater(self, self.config.training, next(self.parameters()).device)
            self._updater.load_state_dict(state["updater"])
