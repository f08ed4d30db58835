"""The staged schedule (Ha & Schmidhuber 2018): each phase runs to completion before the next.

    collect (random policy) -> train stage 1 -> train stage 2 -> ... -> train the agent in the
    dream -> real test episodes

Every phase is resumable: a checkpoint is written after every ``schedule.staged_chunk`` steps
inside a phase and at every phase boundary, and ``--resume`` continues the phase in progress from
the step it had reached. A world trains this way when its class says ``schedule = "staged"``
(the ``vae`` world) or when ``schedule.kind`` is ``staged``.
"""

from __future__ import annotations

from typing import Any

import torch

from agents.random import RandomAgent
from worldmodels import contract
from worldmodels.interfaces import EnvInfo
from worldmodels.schedule import OnlineSchedule
from worldmodels.seeding import derive_seed
from worldmodels.tb import Rate, progress


class StagedSchedule(OnlineSchedule):
    """Phases in order: ``collect``, each world stage, ``agent``, ``test``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._random: RandomAgent | None = None
        super().__init__(*args, **kwargs)
        self.phases = ["collect", *self.stage_trainers, "agent", "test"]

    def collect_agent(self) -> torch.nn.Module:
        """Rollouts of a uniformly random policy, as in the paper."""
        if self._random is None:
            info = EnvInfo(self.train_env.num_actions, tuple(self.train_env.obs_shape))
            seed = derive_seed(self.cfg.run.seed, "random-rollouts")
            self._random = RandomAgent(RandomAgent.Config(), info, seed=seed)
        return self._random

    def collection_left(self) -> bool:
        return self.counters.phase <= self.phases.index("collect")

    def checkpoint_name(self) -> str:
        return f"phase{self.counters.phase:02d}_{self.counters.phase_step:09d}"

    def _chunk(self, total: int, size: int) -> int:
        return min(max(size, 1), total - self.counters.phase_step)

    # ---------------------------------------------------------------- phases

    def _run_collect(self) -> None:
        total = self.cfg.schedule.initial_collect_steps
        self.counters.phase_step = min(self.counters.phase_step, total)
        while self.counters.env_steps < total:
            steps = min(self.cfg.schedule.staged_chunk, total - self.counters.env_steps)
            self.collect(steps)
            self.counters.phase_step = self.counters.env_steps
            self.checkpoint()
        self.ensure_an_episode()
        self.counters.phase_step = self.counters.env_steps

    def _run_stage(self, name: str) -> None:
        trainer = self.stage_trainers[name]
        total = trainer.stage.training.steps_per_epoch
        bar = progress(total=total, desc=name, enabled=self.cfg.run.progress, unit="step")
        bar.update(self.counters.phase_step)
        while self.counters.phase_step < total:
            n = self._chunk(total, self.cfg.schedule.staged_chunk)
            rate = Rate()
            logs = trainer.train(n)
            rate.add(n)
            logs["steps_per_s"] = rate.read()
            logs["update_to_data"] = trainer.updater.steps / max(self.counters.env_steps, 1)
            self.counters.phase_step += n
            self.counters.updates += n
            self.logger.scalars(logs, self.counters.updates, prefix=f"{name}/")
            self.checkpoint()
            bar.update(n)
        bar.close()
        self.log_imagination(step=self.counters.updates)

    def _run_agent(self) -> None:
        if self.dream is None:
            return
        total = self.agent.config.training.steps_per_epoch
        bar = progress(total=total, desc="agent", enabled=self.cfg.run.progress, unit="update")
        bar.update(self.counters.phase_step)
        while self.counters.phase_step < total:
            n = self._chunk(total, self.cfg.schedule.staged_agent_chunk)
            mean = self.agent_updates(n)
            self.counters.phase_step += n
            self.counters.updates += n
            self.logger.scalars(mean, self.counters.updates, prefix="agent/")
            self.log_imagined_vs_real(mean, step=self.counters.updates)
            self.checkpoint()
            bar.update(n)
        bar.close()
        self.log_imagination(step=self.counters.updates)

    def run(self) -> dict[str, Any]:
        for index, phase in enumerate(self.phases):
            if index < self.counters.phase:
                continue
            self.counters.phase = index
            if phase == "test":
                return self.final_test()
            if phase == "collect":
                self._run_collect()
            elif phase == "agent":
                self._run_agent()
            else:
                self._run_stage(phase)
            self.counters.phase, self.counters.phase_step = index + 1, 0
            self.checkpoint()
        raise AssertionError("the staged schedule always ends with its test phase")


def schedule_class(cfg: Any, world: Any) -> type[OnlineSchedule]:
    """The schedule a run uses: ``schedule.kind``, or with ``auto`` the world's own."""
    kind = cfg.schedule.kind
    if kind == "auto":
        kind = contract.schedule_kind(world)
    return StagedSchedule if kind == "staged" else OnlineSchedule
