"""Data-parallel training under ``torchrun`` (gloo, 2 processes on the CPU): one step of every
world stage and one actor-critic update on two ranks equal one process with the doubled batch,
and a whole run started under ``torchrun`` completes and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ddp_worker as W
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _torchrun_cmd(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *map(str, args)]  # fmt: skip


def _torchrun(*args: str, cwd: Path, nproc: int = 2, timeout: float = 600):
    proc = subprocess.run(
        _torchrun_cmd(*args, nproc=nproc), cwd=cwd, env=ENV, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(out), cwd=out)
    return out


def _close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], what: str) -> float:
    """The largest difference of any tensor, relative to the largest value of that tensor."""
    assert ours.keys() == ref.keys(), what
    assert any(".grad." in k for k in ref), f"{what}: no gradient at all"
    worst = 0.0
    for k, r in ref.items():
        scale = float(r.abs().max()) or 1.0
        worst = max(worst, float((ours[k] - r).abs().max()) / scale)
    return worst


def _reference_stage_step(trainer, batch, b: int) -> None:
    """One process, the doubled batch: its loss is the mean of its two halves' (each a mean over
    its rows, with the noise its rank drew), one backward pass, one optimizer step."""
    stage = trainer.stage

    def loss_fn(_):
        losses = []
        for r in range(2):
            torch.manual_seed(W.STEP_SEED + r)
            losses.append(stage.loss_of(W.rows(batch, r * b, (r + 1) * b))[0])
        return (losses[0] + losses[1]) / 2, {}

    trainer.updater.update(loss_fn, None)


@pytest.mark.slow  # torchrun with two ranks (the fixture): seconds
@pytest.mark.parametrize("world", W.WORLDS)
def test_each_stage_step_on_two_ranks_equals_one_process_with_the_doubled_batch(two_ranks, world):
    from safetensors.torch import load_file

    replay = W.store()
    _, trainers = W.world_and_trainers(world, replay)
    ref: dict[str, torch.Tensor] = {}
    rank0_alone = 0.0
    for name, trainer in trainers.items():
        batch = W.doubled_batch(trainer, replay, 2)
        b = trainer.stage.training.batch_size
        _reference_stage_step(trainer, batch, b)
        if trainer.stage.after_update is not None:
            trainer.stage.after_update()
        ref.update(W.grads_and_params(trainer.stage.module, name))
    ours = load_file(str(two_ranks / f"{world}.safetensors"))
    assert _close(ours, ref, world) < 1e-5
    # The comparison can fail: rank 0's half alone is far from the doubled batch.
    _, alone = W.world_and_trainers(world, replay)
    half: dict[str, torch.Tensor] = {}
    for name, trainer in alone.items():
        batch = W.doubled_batch(trainer, replay, 2)
        torch.manual_seed(W.STEP_SEED)
        trainer.step(W.rows(batch, 0, trainer.stage.training.batch_size))
        half.update(W.grads_and_params(trainer.stage.module, name))
    rank0_alone = _close(half, ref, world)
    assert rank0_alone > 1e-2


@pytest.mark.slow  # torchrun with two ranks (the fixture)
def test_an_agent_update_on_two_ranks_equals_one_process_with_the_doubled_batch(
    two_ranks, monkeypatch
):
    from safetensors.torch import load_file

    import worldmodels.agents.actor_critic as ac

    monkeypatch.setattr(ac, "sample_categorical", lambda logits, *a, **k: logits.argmax(dim=-1))
    b = W.config(None).agent.config.num_envs
    agent, dream = W.agent_and_dream(0, 2 * b, 2 * b)  # every row, in one process
    agent.train_in_imagination(dream)
    ref = W.grads_and_params(agent, "agent")
    ours = load_file(str(two_ranks / "agent.safetensors"))
    assert _close(ours, ref, "agent") < 1e-5
    drift = (two_ranks / "drift.txt").read_text()
    assert drift.startswith("rank 1 holds other weights of the drifted than rank 0")
    half_agent, half_dream = W.agent_and_dream(0, b, 2 * b)
    half_agent.train_in_imagination(half_dream)
    assert _close(W.grads_and_params(half_agent, "agent"), ref, "agent") > 1e-2


# --------------------------------------------------------------------------- the real CLI

TRAIN = str(ROOT / "train.py")
TINY = [
    "--env", "Breakout", "--world", "diffusion", "--agent", "actor_critic", "--preset", "test",
    "--set", "schedule.epochs=8", "--set", "schedule.checkpoint_every=1",
]  # fmt: skip


def _files(directory: Path) -> dict[str, bytes]:
    """The files of ``directory`` (not the lock file, which names its last holder)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.glob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _assert_same(a, b, where: str = "state") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun starts each rank in a session of its
    own, so a signal to its process group does not reach them)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_a_torchrun_run_completes_and_resumes_like_one_never_stopped(tmp_path):
    ref = _torchrun(TRAIN, "--name", "ref", *TINY, cwd=tmp_path)
    assert "done: " in ref.stdout and ref.stdout.count("run directory:") == 1  # rank 0 speaks
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["ref"]  # one run directory for both ranks
    provenance = json.loads((runs / "ref" / "provenance.json").read_text())
    assert provenance["sessions"][-1]["world_size"] == 2

    killed = subprocess.Popen(
        _torchrun_cmd(TRAIN, "--name", "k", *TINY), cwd=tmp_path, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ckpt = runs / "k" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        if (ckpt / "epoch_000002").is_dir() and (ckpt / "latest").exists():
            break
        time.sleep(0.01)
    for pid in [*_children(killed.pid), killed.pid]:  # both ranks, then torchrun
        os.kill(pid, signal.SIGKILL)
    killed.wait()
    assert not (runs / "k" / "results.json").exists(), "the run finished before it was killed"

    # One process cannot take over the two ranks' checkpoint: one line, nothing written.
    before = _files(runs / "k")
    one = subprocess.run([sys.executable, TRAIN, "--resume", str(runs / "k")], cwd=tmp_path,
                         env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 2 and len(one.stderr.strip().splitlines()) == 1, one.stderr
    assert "torchrun --nproc-per-node 2" in one.stderr
    assert _files(runs / "k") == before

    resumed = _torchrun(TRAIN, "--resume", runs / "k", cwd=tmp_path)
    assert "resuming from epoch_" in resumed.stdout
    assert _files(runs / "k" / "episodes") == _files(runs / "ref" / "episodes")
    last = "checkpoints/epoch_000008"
    assert (
        _files(runs / "k" / last)["weights.safetensors"]
        == _files(runs / "ref" / last)["weights.safetensors"]
    )  # the very weights of the run never stopped
    a, b = (
        torch.load(runs / n / last / "state.pt", weights_only=True)["state"] for n in ("k", "ref")
    )
    assert a["counters"].pop("resumes") == 1 and b["counters"].pop("resumes") == 0
    assert len(a["ranks"]) == 1  # rank 1's samplers and RNGs, beside rank 0's
    _assert_same(a, b)  # optimizers, samplers and every rank's RNGs too
    a, b = (json.loads((runs / n / "results.json").read_text()) for n in ("k", "ref"))
    assert a["returns"] == b["returns"] and a["env_steps"] == b["env_steps"]


@pytest.mark.slow
def test_torchrun_of_one_process_trains_exactly_like_a_plain_run(tmp_path):
    """One rank under torchrun goes through the process group and DDP (NCCL on a GPU, gloo
    here) and ends with the very weights of a run without torchrun."""
    short = [*TINY[:-4], "--set", "schedule.epochs=2"]
    _torchrun(TRAIN, "--name", "one", *short, cwd=tmp_path, nproc=1)
    plain = subprocess.run([sys.executable, TRAIN, "--name", "plain", *short], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    last = "checkpoints/epoch_000002/weights.safetensors"
    runs = tmp_path / "runs"
    assert (runs / "one" / last).read_bytes() == (runs / "plain" / last).read_bytes()
    sessions = [
        json.loads((runs / n / "provenance.json").read_text())["sessions"] for n in ("one", "plain")
    ]
    assert sessions[0][-1]["world_size"] == 1 == sessions[1][-1]["world_size"]


@pytest.mark.slow
def test_the_sweeps_command_of_a_two_gpu_run_trains_on_two_ranks(tmp_path):
    from worldmodels.sweep import train_command

    short = [*TINY[:-4], "--set", "schedule.epochs=1", "--name", "s"]
    proc = subprocess.run(train_command(short, ranks=2), cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "s"
    assert (run / "results.json").exists()
    assert json.loads((run / "provenance.json").read_text())["sessions"][-1]["world_size"] == 2
