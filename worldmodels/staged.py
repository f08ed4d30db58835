"""The staged schedule (Ha & Schmidhuber 2018): each phase runs to completion before the next;
and ``make_schedule``, which builds a run's parts and the schedule that sequences them.

    collect (random policy) -> train stage 1 -> train stage 2 -> ... -> train the agent in the
    dream -> real test episodes

Every phase is resumable: a checkpoint is written after every ``schedule.staged_chunk`` steps
inside a phase and at every phase boundary, and ``--resume`` continues the phase in progress from
the step it had reached. A world trains this way when its class says ``schedule = "staged"``
(the ``vae`` world) or when ``schedule.kind`` is ``staged``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from worldmodels import contract
from worldmodels.agents.random import RandomAgent
from worldmodels.build import build_parts
from worldmodels.interfaces import EnvInfo
from worldmodels.replay import ReplayStore
from worldmodels.runs import RunDir
from worldmodels.schedule import OnlineSchedule, RunSteps
from worldmodels.seeding import derive_seed
from worldmodels.tb import Rate, TBLogger, progress


class StagedSchedule:
    """Phases in order: ``collect``, each world stage, ``agent``, ``test``; it only sequences
    ``steps`` (a ``RunSteps`` whose collection policy is the random one: ``make_schedule``)."""

    def __init__(self, steps: RunSteps) -> None:
        self.steps = steps
        self.phases = ["collect", *steps.stage_trainers, "agent", "test"]

    def collection_left(self) -> bool:
        return self.steps.counters.phase <= self.phases.index("collect")

    def checkpoint_name(self) -> str:
        c = self.steps.counters
        return f"phase{c.phase:02d}_{c.phase_step:09d}"

    def _checkpoint(self) -> None:
        self.steps.checkpoint(self.checkpoint_name())

    def _chunk(self, total: int, size: int) -> int:
        return min(max(size, 1), total - self.steps.counters.phase_step)

    def restore(self) -> None:
        self.steps.restore(self.collection_left)

    @property
    def env_spec(self) -> dict[str, Any]:
        return self.steps.env_spec

    def close(self) -> None:
        self.steps.close()

    # ---------------------------------------------------------------- phases

    def _run_collect(self) -> None:
        st, c = self.steps, self.steps.counters
        total = st.cfg.schedule.initial_collect_steps
        c.phase_step = min(c.phase_step, total)
        while c.env_steps < total:
            st.collect(min(st.cfg.schedule.staged_chunk, total - c.env_steps))
            c.phase_step = c.env_steps
            self._checkpoint()
        st.ensure_an_episode()
        c.phase_step = c.env_steps

    def _run_stage(self, name: str) -> None:
        st, c = self.steps, self.steps.counters
        trainer = st.stage_trainers[name]
        total = trainer.stage.training.steps_per_epoch
        bar = progress(total=total, desc=name, enabled=st.cfg.run.progress, unit="step")
        bar.update(c.phase_step)
        while c.phase_step < total:
            n = self._chunk(total, st.cfg.schedule.staged_chunk)
            rate = Rate()
            logs = trainer.train(n)
            rate.add(n)
            logs["steps_per_s"] = rate.read()
            logs["update_to_data"] = trainer.updater.steps / max(c.env_steps, 1)
            c.phase_step += n
            c.updates += n
            st.logger.scalars(logs, c.updates, prefix=f"{name}/")
            self._checkpoint()
            bar.update(n)
        bar.close()
        st.log_imagination(step=c.updates)

    def _run_agent(self) -> None:
        st, c = self.steps, self.steps.counters
        if st.dream is None:
            return
        total = contract.agent_training(st.agent).steps_per_epoch
        bar = progress(total=total, desc="agent", enabled=st.cfg.run.progress, unit="update")
        bar.update(c.phase_step)
        while c.phase_step < total:
            n = self._chunk(total, st.cfg.schedule.staged_agent_chunk)
            mean = st.agent_updates(n)
            c.phase_step += n
            c.updates += n
            st.logger.scalars(mean, c.updates, prefix="agent/")
            st.log_imagined_vs_real(mean, step=c.updates)
            self._checkpoint()
            bar.update(n)
        bar.close()
        st.log_imagination(step=c.updates)

    def run(self) -> dict[str, Any]:
        c = self.steps.counters
        for index, phase in enumerate(self.phases):
            if index < c.phase:
                continue
            c.phase = index
            if phase == "test":
                return self.steps.final_test()
            if phase == "collect":
                self._run_collect()
            elif phase == "agent":
                self._run_agent()
            else:
                self._run_stage(phase)
            c.phase, c.phase_step = index + 1, 0
            self._checkpoint()
        raise AssertionError("the staged schedule always ends with its test phase")


Schedule = OnlineSchedule | StagedSchedule


def make_schedule(
    cfg: Any, run: RunDir, *, agent: Any, world: Any, store: ReplayStore,
    make_env: Callable[[str, int], Any], logger: TBLogger, device: torch.device,
    versions: dict[str, Any], amp: bool = False, log: Callable[[str], None] = print,
) -> Schedule:  # fmt: skip
    """The run's schedule, its parts built: ``schedule.kind``, or with ``auto`` the world's own
    (``contract.schedule_kind``). The staged schedule collects with a uniformly random policy of
    its own seed, as Ha & Schmidhuber did; the online one with the agent."""
    kind = cfg.schedule.kind
    if kind == "auto":
        kind = contract.schedule_kind(world)
    collect_agent = None
    if kind == "staged":
        if world is not None:  # its required members say what the game is
            info = EnvInfo(int(world.num_actions), tuple(world.obs_shape))
        else:
            probe = make_env("train", 1)
            info = EnvInfo(probe.num_actions, tuple(probe.obs_shape))
            probe.close()
        seed = derive_seed(cfg.run.seed, "random-rollouts")
        collect_agent = RandomAgent(RandomAgent.Config(), info, seed=seed)
    parts = build_parts(
        cfg, agent=agent, world=world, store=store, make_env=make_env, device=device, amp=amp,
        log=log, collect_agent=collect_agent,
    )  # fmt: skip
    steps = RunSteps(
        cfg, run, parts, agent=agent, world=world, store=store, logger=logger, device=device,
        versions=versions, amp=amp, log=log,
    )  # fmt: skip
    return StagedSchedule(steps) if kind == "staged" else OnlineSchedule(steps)
