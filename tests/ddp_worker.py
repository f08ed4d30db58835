"""One data-parallel step of every stage of each world, and one actor-critic update, on this
rank's share of fixed doubled batches. ``tests/test_distributed.py`` runs it under ``torchrun``
(2 ranks, gloo) and computes the one-process reference with the functions here.

    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py OUT_DIR

Rank ``r`` of ``n`` takes rows ``[r * B, (r + 1) * B)`` of every doubled batch (``B`` the
stage's batch size), and its global torch RNG is seeded ``STEP_SEED + r`` before the step (the
stages' losses draw noise from it). Rank 0 writes each module's gradients (the ranks' mean, as
the optimizer used them) and its parameters after the step to ``OUT_DIR/<world>.safetensors``,
after checking that every rank holds the same parameters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from worldmodels import config as C
from worldmodels import distributed
from worldmodels.build import build_agent, build_world
from worldmodels.errors import UserError
from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.replay import Episode, ReplayStore, SegmentSampler
from worldmodels.training import StageTrainer

INFO = EnvInfo(num_actions=4, obs_shape=(3, 64, 64))
WORLDS = ("diffusion", "iris", "vae")
STEP_SEED = 1000
CPU = torch.device("cpu")


def config(world: str | None) -> C.Config:
    return C.resolve(env="Breakout", world=world, agent="actor_critic", preset="test")


def store() -> ReplayStore:
    """Six synthetic episodes (smooth random frames, a few rewards and ends)."""
    rng = np.random.default_rng(0)
    s = ReplayStore(None)
    for i in range(6):
        t = 20 + 3 * i
        base = rng.integers(0, 256, size=(1, 3, 64, 64))
        drift = rng.integers(-3, 4, size=(t + 1, 1, 1, 1)).cumsum(0)
        obs = np.clip(base + drift, 0, 255).astype(np.uint8)
        rew = np.zeros(t, np.float32)
        rew[rng.integers(0, t, size=2)] = 1.0
        s.add(Episode(obs, rng.integers(0, 4, size=t), rew, end=bool(i % 2), trunc=False))
    return s


def rows(batch: Batch, lo: int, hi: int) -> Batch:
    return Batch._make(None if x is None else x[lo:hi] for x in batch)


def doubled_batch(trainer: StageTrainer, replay: ReplayStore, n: int) -> Batch:
    """``n`` times the stage's batch, the same on every rank (a sampler of a fixed seed)."""
    t = trainer.stage.training
    sampler = SegmentSampler(
        replay, t.seq_len, pad_left=t.pad_left, pad_right=t.pad_right, seed=5
    )  # fmt: skip
    return sampler.sample(n * t.batch_size)


def world_and_trainers(name: str, replay: ReplayStore) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)  # the same weights on every rank (DDP also broadcasts rank 0's)
    world = build_world(config(name).world, INFO, device=CPU)
    trainers = {
        stage_name: StageTrainer(stage, replay, CPU, seed=0)
        for stage_name, stage in world.stages().items()
    }
    return world, trainers


class ScriptedDream:
    """A deterministic stand-in for ``DreamEnv``, ``n * B`` rows of which this one plays rows
    ``[lo, hi)``: fixed first frames and contexts; the next frame, reward and end are functions of
    the frame, the action, the row and the step. The agent's update is then a function of its
    weights and the rows alone, so a doubled batch in one process can be compared to its halves
    on two ranks."""

    graphs = None
    amp = False

    def __init__(self, lo: int, hi: int, total: int, horizon: int, context: int = 3) -> None:
        g = torch.Generator().manual_seed(7)
        self.first = torch.randint(0, 256, (total, 3, 64, 64), generator=g, dtype=torch.uint8)[
            lo:hi
        ]
        ctx = torch.randint(0, 256, (total, context, 3, 64, 64), generator=g, dtype=torch.uint8)
        self.context = torch.cat((ctx[lo:hi, :-1], self.first[:, None]), dim=1)
        self.context_mask = torch.ones(hi - lo, context, dtype=torch.bool)
        self.row = torch.arange(lo, hi)
        self.horizon = horizon
        self.num_envs = hi - lo
        self.t = 0
        self.obs = self.first

    def reset(self, ctx=None):
        self.t, self.obs = 0, self.first.clone()
        info = {"context_obs": self.context, "context_mask": self.context_mask}
        info["next_context_obs"], info["next_context_mask"] = (
            info["context_obs"],
            info["context_mask"],
        )
        return self.obs, info

    def step(self, action):
        self.t += 1
        shift = (37 * (action + 1) + 11 * self.row + 5 * self.t).view(-1, 1, 1, 1)
        next_obs = ((self.obs.long() + shift) % 256).to(torch.uint8)
        rew = ((action + self.row + self.t) % 3 == 0).float()
        end = (self.row + self.t) % 4 == 0
        trunc = torch.full_like(end, self.t % self.horizon == 0) & ~end
        self.obs = next_obs
        return next_obs, rew, end, trunc, {"final_obs": next_obs}


def greedy_sampling() -> None:
    """The update's action sampling made deterministic (the most likely action), so that the
    doubled batch and its halves take the same actions."""
    import worldmodels.agents.actor_critic as ac

    ac.sample_categorical = lambda logits, *a, **k: logits.argmax(dim=-1)


def agent_and_dream(lo: int, hi: int, total: int) -> tuple[torch.nn.Module, ScriptedDream]:
    cfg = config(None)
    torch.manual_seed(0)
    agent = build_agent(cfg.agent, INFO, seed=0, device=CPU)
    return agent, ScriptedDream(lo, hi, total, agent.config.horizon)


def grads_and_params(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            out[f"{prefix}.param.{name}"] = p.detach().clone()
            if p.grad is not None:
                out[f"{prefix}.grad.{name}"] = p.grad.detach().clone()
    return out


def main(out_dir: str) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    distributed.init(CPU)
    r, n = distributed.rank(), distributed.world_size()
    replay = store()
    for name in WORLDS:
        world, trainers = world_and_trainers(name, replay)
        tensors: dict[str, torch.Tensor] = {}
        for stage_name, trainer in trainers.items():
            batch = doubled_batch(trainer, replay, n)
            b = trainer.stage.training.batch_size
            torch.manual_seed(STEP_SEED + r)
            trainer.step(rows(batch, r * b, (r + 1) * b))
            tensors.update(grads_and_params(trainer.stage.module, stage_name))
        check_same_on_every_rank(world)
        if r == 0:
            save_file(tensors, str(Path(out_dir) / f"{name}.safetensors"))
    greedy_sampling()
    b = config(None).agent.config.num_envs
    agent, dream = agent_and_dream(r * b, (r + 1) * b, n * b)
    agent.train_in_imagination(dream)
    check_same_on_every_rank(agent)
    distributed.check_same({"agent": agent})  # within its tolerance too
    if r == 0:
        save_file(grads_and_params(agent, "agent"), str(Path(out_dir) / "agent.safetensors"))
    # A module trained apart on each rank (not through DDP) is caught by check_same.
    torch.manual_seed(r)
    try:
        distributed.check_same({"agent": agent, "drifted": torch.nn.Linear(3, 3)})
    except UserError as exc:
        if r == 0:
            (Path(out_dir) / "drift.txt").write_text(str(exc))
    distributed.close()


def check_same_on_every_rank(module: torch.nn.Module) -> None:
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    sums = distributed.gather(float(flat.double().sum()))
    if len(set(sums)) != 1:
        raise SystemExit(f"ranks hold different parameters after the step: {sums}")


if __name__ == "__main__":
    main(sys.argv[1])
