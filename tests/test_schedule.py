"""The schedules in process, with fake steps: what the online and staged loops call, in which
order, with which checkpoint names, and where a resumed loop picks up. Stage names that would
collide with the schedules' phases are refused."""

from types import SimpleNamespace

import pytest
import torch

from worldmodels import config as C
from worldmodels import contract
from worldmodels.schedule import Counters, OnlineSchedule
from worldmodels.staged import StagedSchedule


def _cfg(**schedule):
    sets = [f"schedule.{k}={v}" for k, v in schedule.items()] + ["run.progress=false"]
    return C.resolve(env="Breakout", world="diffusion", preset="smoke", overrides=sets)


class FakeLogger:
    def __init__(self):
        self.scalars_logged = []

    def scalar(self, tag, value, step):
        self.scalars_logged.append((tag, step))

    def scalars(self, values, step, prefix=""):
        self.scalars_logged += [(prefix + k, step) for k in values]


class FakeSteps:
    """Records every step a schedule asks for; counts env steps and agent updates as the real
    ``RunSteps`` does."""

    def __init__(self, cfg, stages=("denoiser", "reward_end"), dream=True):
        self.cfg = cfg
        self.counters = Counters()
        self.device = torch.device("cpu")
        self.world = object()
        self.logger = FakeLogger()
        self.calls = []
        self.dream = object() if dream else None
        self.agent = SimpleNamespace(
            config=SimpleNamespace(
                training=SimpleNamespace(steps_per_epoch=5), num_envs=2, horizon=3
            )
        )
        self.stage_trainers = {
            name: SimpleNamespace(
                stage=SimpleNamespace(training=SimpleNamespace(steps_per_epoch=7)),
                updater=SimpleNamespace(steps=0),
                train=self._trainer(name),
            )
            for name in stages
        }
        self.env_spec = {"fake": True}

    def _trainer(self, name):
        def train(n):
            self.calls.append(("train", name, n))
            self.stage_trainers[name].updater.steps += n
            return {"loss": 1.0}

        return train

    def collect(self, steps, *, initial=False):
        self.calls.append(("collect", steps, initial))
        self.counters.env_steps += steps

    def ensure_an_episode(self):
        self.calls.append(("ensure_an_episode",))

    def project_duration(self):
        self.calls.append(("project_duration",))

    def train_world(self):
        self.calls.append(("train_world", self.counters.epoch + 1))

    def train_agent(self):
        self.calls.append(("train_agent", self.counters.epoch + 1))

    def agent_updates(self, n):
        self.calls.append(("agent_updates", n))
        return {"loss": 0.5}

    def log_imagination(self, step=None):
        self.calls.append(("video", self.counters.epoch if step is None else step))

    def log_imagined_vs_real(self, logs, step=None):
        self.calls.append(("imagined_vs_real", step))

    def test(self, episodes, *, video=False, tag="test"):
        self.calls.append(("test", self.counters.epoch, episodes, video))

    def checkpoint(self, name):
        self.calls.append(("checkpoint", name))

    def restore(self, collection_left):
        self.calls.append(("restore", collection_left()))

    def final_test(self):
        self.calls.append(("final_test",))
        return {"mean": 0.0}

    def close(self):
        self.calls.append(("close",))


def _names(calls, kind):
    return [c[1:] for c in calls if c[0] == kind]


def test_online_loop_sequences_the_steps():
    cfg = _cfg(epochs=3, initial_collect_steps=200, env_steps_budget=350,
               collect_steps_per_epoch=100, test_every=2, video_every=3, checkpoint_every=2,
               test_episodes=4)  # fmt: skip
    steps = FakeSteps(cfg)
    schedule = OnlineSchedule(steps)
    assert schedule.collection_left()
    assert schedule.run() == {"mean": 0.0}
    calls = steps.calls
    assert calls[:4] == [("collect", 200, True), ("ensure_an_episode",),
                         ("checkpoint", "epoch_000000"), ("project_duration",)]  # fmt: skip
    # epoch 1: collect, world, agent; epoch 2: the budget's last 50 steps, a test; epoch 3: none
    assert _names(calls, "collect") == [(200, True), (100, False), (50, False)]
    assert _names(calls, "train_world") == [(1,), (2,), (3,)]
    assert [c[0] for c in calls[4:8]] == ["collect", "train_world", "train_agent", "collect"]
    assert _names(calls, "test") == [(2, 4, False)]  # not at the last epoch: the final test is
    assert _names(calls, "video") == [(3,)]
    assert _names(calls, "checkpoint") == [("epoch_000000",), ("epoch_000002",), ("epoch_000003",)]
    assert calls[-1] == ("final_test",) and steps.counters.epoch == 3
    assert not schedule.collection_left()  # the budget is spent
    assert ("progress/epoch", 350) in steps.logger.scalars_logged


def test_online_loop_resumes_where_the_counters_stand():
    cfg = _cfg(epochs=3, initial_collect_steps=200, env_steps_budget=1000,
               collect_steps_per_epoch=100, test_every=0, video_every=0)  # fmt: skip
    steps = FakeSteps(cfg)
    steps.counters = Counters(epoch=2, env_steps=400, initial_collect_done=True)
    schedule = OnlineSchedule(steps)
    schedule.restore()
    assert steps.calls == [("restore", True)]  # epoch 3 still collects
    schedule.run()
    assert _names(steps.calls, "collect") == [(100, False)]
    assert _names(steps.calls, "train_world") == [(3,)]
    assert _names(steps.calls, "checkpoint") == [("epoch_000003",)]


def test_staged_loop_runs_each_phase_to_completion_in_chunks():
    cfg = _cfg(kind="staged", initial_collect_steps=250, staged_chunk=100, staged_agent_chunk=2)
    steps = FakeSteps(cfg)
    schedule = StagedSchedule(steps)
    assert schedule.phases == ["collect", "denoiser", "reward_end", "agent", "test"]
    schedule.run()
    calls = steps.calls
    assert _names(calls, "collect") == [(100, False), (100, False), (50, False)]
    assert _names(calls, "train") == [("denoiser", 7), ("reward_end", 7)]  # 7 < one chunk
    assert _names(calls, "agent_updates") == [(2,), (2,), (1,)]
    ckpts = [c[0] for c in _names(calls, "checkpoint")]
    assert ckpts[:4] == ["phase00_000000100", "phase00_000000200", "phase00_000000250",
                         "phase01_000000000"]  # fmt: skip
    assert ckpts[-1] == "phase04_000000000" and calls[-1] == ("final_test",)
    assert ("denoiser/update_to_data", 7) in steps.logger.scalars_logged


def test_staged_loop_resumes_inside_a_phase():
    cfg = _cfg(kind="staged", initial_collect_steps=250, staged_chunk=4, staged_agent_chunk=2)
    steps = FakeSteps(cfg)
    steps.counters = Counters(phase=2, phase_step=4, env_steps=250)  # reward_end, 4 of 7 done
    schedule = StagedSchedule(steps)
    schedule.restore()
    assert steps.calls == [("restore", False)]  # collection is over
    schedule.run()
    assert _names(steps.calls, "collect") == []
    assert _names(steps.calls, "train") == [("reward_end", 3)]  # the rest of the phase only


@pytest.mark.parametrize("name", ["agent", "collect", "test", "imagination", "not an id"])
def test_stage_names_that_collide_with_the_schedule_are_refused(name):
    stages = {"ok": SimpleNamespace(name="ok"), name: SimpleNamespace(name=name)}
    with pytest.raises(contract.ContractError, match="stage name") as info:
        contract.check_stage_names(object(), stages)
    assert "\n" not in str(info.value)
    contract.check_stage_names(object(), {"denoiser": SimpleNamespace(name="denoiser")})
