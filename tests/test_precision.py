"""Precision that fits the device: bf16 on CPUs where it is faster (AMX, AVX512-BF16: probed),
fp32 elsewhere; bf16 training follows the fp32 loss curve."""

import dataclasses

import pytest
import torch

from worldmodels import config as C
from worldmodels import precision as P
from worldmodels.build import build_world
from worldmodels.envs.testing import random_store
from worldmodels.interfaces import EnvInfo
from worldmodels.training import StageTrainer

CPU = torch.device("cpu")


def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path):
    def cpu(flags):
        path = tmp_path / str(len(flags))
        path.write_text(f"processor : 0\nflags : fpu {flags}\nprocessor : 1\nflags : fpu {flags}\n")
        return path

    assert P.cpu_bf16_flags(cpu("avx512f avx512_bf16 amx_bf16 amx_tile")) == [
        "amx_bf16",
        "avx512_bf16",
    ]
    assert P.cpu_bf16_flags(cpu("avx512f avx512_bf16")) == ["avx512_bf16"]
    assert P.cpu_bf16_flags(cpu("avx512f avx2")) == []
    assert P.cpu_bf16_flags(tmp_path / "missing") == []


def test_auto_chooses_bf16_on_a_cpu_only_where_the_probe_finds_it_faster(monkeypatch):
    probes = []

    def probe(speedup):
        def run():
            probes.append(speedup)
            return {"fp32_s": 1.0, "bf16_s": 1.0 / speedup, "bf16_speedup": speedup}

        return run

    monkeypatch.setattr(P, "cpu_bf16_flags", lambda: [])
    monkeypatch.setattr(P, "probe_cpu_bf16", probe(9.0))
    amp, record = P.choose_precision("auto", CPU)
    assert not amp and record["reason"] == "auto on a CPU without bf16 instructions"
    assert probes == []  # no bf16 instructions: nothing to probe
    monkeypatch.setattr(P, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    amp, record = P.choose_precision("auto", CPU)
    assert amp and record["precision"] == "bf16" and record["probe"]["bf16_speedup"] == 9.0
    assert "avx512_bf16" in record["reason"]
    monkeypatch.setattr(P, "probe_cpu_bf16", probe(1.05))
    assert P.choose_precision("auto", CPU)[0] is False  # bf16 instructions, but not faster
    assert P.choose_precision("fp32", CPU)[0] is False and P.choose_precision("bf16", CPU)[0]
    assert P.choose_precision("auto", torch.device("cuda"))[0]


def test_the_probe_times_both_precisions():
    out = P.probe_cpu_bf16(reps=1)
    assert out["fp32_s"] > 0 and out["bf16_s"] > 0
    assert out["bf16_speedup"] == pytest.approx(out["fp32_s"] / out["bf16_s"])


def _loss_curve(amp, steps=20):
    torch.manual_seed(0)
    cfg = C.resolve(env="Breakout", world="diffusion", preset="smoke")
    world = build_world(cfg.world, EnvInfo(4, (3, 64, 64)), device=CPU)
    stage = world.stages()["reward_end"]
    training = dataclasses.replace(stage.training, batch_size=4, warmup_steps=0, lr=1e-3)
    trainer = StageTrainer(dataclasses.replace(stage, training=training), random_store(
        num_episodes=3, length=12, obs_shape=(3, 64, 64)), CPU, seed=0, amp=amp)  # fmt: skip
    batch = next(trainer.batches(1))
    return [trainer.step(batch)["loss"] for _ in range(steps)]


def test_bf16_training_follows_the_fp32_loss_curve():
    """The reward/end model on a fixed batch under bf16 autocast: each loss within 5% of the
    fp32 one at the same step, and both fall by a third (while bf16 does change the numbers)."""
    fp32, bf16 = _loss_curve(False), _loss_curve(True)
    for a, b in zip(fp32, bf16, strict=True):
        assert b == pytest.approx(a, rel=0.05)
    assert fp32 != bf16  # autocast ran in bf16
    assert fp32[-1] < 0.67 * fp32[0] and bf16[-1] < 0.67 * bf16[0]
