"""Runs you can trust, through the real entry points (in this process, on tiny budgets):
a run directory never runs its own code, non-finite training stops the run without a broken
checkpoint, a second process is refused by the run's lock, a full disk is one line that says how
to continue, and rerunning a finished run keeps its results."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_inproc import ROOT, call
from safetensors.torch import load_file
from tb_read import tags

from worldmodels import fileio
from worldmodels.runs import RunDir

TINY = ["--env", "Breakout", "--preset", "test", "--set", "schedule.epochs=3"]  # fmt: skip

TINY_WORLD = ["--env", "Breakout", "--world", "diffusion", "--preset", "test"]  # fmt: skip


def one_line(rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    return lines[0]


def finite_checkpoints(run: Path) -> list[str]:
    """Names of the checkpoints on disk, after checking every tensor in each is finite."""
    names = []
    for ckpt in sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir()):
        tensors = list(load_file(ckpt / "weights.safetensors").values())
        blob = torch.load(ckpt / "state.pt", weights_only=True)
        stack = [blob]
        while stack:
            x = stack.pop()
            if isinstance(x, torch.Tensor):
                tensors.append(x)
            elif isinstance(x, dict):
                stack.extend(x.values())
            elif isinstance(x, (list, tuple)):
                stack.extend(x)
        for t in tensors:
            if t.is_floating_point():
                assert torch.isfinite(t).all(), ckpt.name
        names.append(ckpt.name)
    return names


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------ 1. no code from a run dir


def test_a_run_directory_never_imports_its_own_plugin(here, monkeypatch, capsys):
    rc, _, err = call("train.py", "--name", "x", *TINY, capsys=capsys)
    assert rc == 0, err
    run = here / "runs" / "x"
    # A crafted run directory: its config names a module shipped inside the directory.
    (run / "payload.py").write_text("open('MARKER', 'w').write('the payload ran')\n")
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["run"]["plugins"] = ["runs.x.payload"]
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    monkeypatch.syspath_prepend(str(here))  # importable, as from a checkout's runs/

    for script, args in (("train.py", ["--resume", run]), ("evaluate.py", [run])):
        line = one_line(*call(script, *args, capsys=capsys)[::2])
        assert "names plugin runs.x.payload: plugins run code" in line
        assert "--plugin runs.x.payload" in line and "--trust-plugins" in line
        assert not (here / "MARKER").exists()

    # Named on the command line, the same module is imported: the refusal above is what kept
    # it from running.
    rc, out, err = call("evaluate.py", run, "--plugin", "runs.x.payload", "--episodes", "1",
                        capsys=capsys)  # fmt: skip
    assert rc == 0, err
    assert (here / "MARKER").read_text() == "the payload ran"


# ------------------------------------------------------------------ 2. non-finite training


def test_diverging_training_stops_in_one_line_and_every_checkpoint_is_finite(here, capsys):
    rc, _, err = call(
        "train.py", "--name", "nan", *TINY_WORLD,
        "--set", "schedule.epochs=20",
        "--set", "schedule.max_nonfinite_in_a_row=5",
        "--set", "world.denoiser_training.lr=1e30",  # finite, so accepted: the weights diverge
        "--set", "world.denoiser_training.warmup_steps=0",
        "--set", "world.denoiser_training.first_epoch_steps=2",
        "--set", "world.denoiser_training.steps_per_epoch=2",
        capsys=capsys,
    )  # fmt: skip
    line = one_line(rc, err)
    assert "denoiser: 5 training steps in a row had a non-finite loss" in line
    run = here / "runs" / "nan"
    names = finite_checkpoints(run)
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert names and latest in names and latest in line
    state = torch.load(run / "checkpoints" / latest / "state.pt", weights_only=True)["state"]
    assert state["stages"]["denoiser"]["updater"]["skipped"] >= 1  # the skipped steps so far
    scalars = tags(run / "tb")["scalars"]
    assert "denoiser/skipped_steps" in scalars and "denoiser/nonfinite" in scalars


POISON = '''
from dataclasses import dataclass
import torch
from torch import nn
from worldmodels.registry import AGENTS


@AGENTS.register("wm_poisoned")
class Poisoned(nn.Module):
    """Acts at random; its weights turn to NaN after 150 actions (not through any Updater)."""

    @dataclass(frozen=True)
    class Config:
        pass

    observes = "pixels"

    def __init__(self, config, env_info, *, seed=0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.calls = 0
        self.num_actions = env_info.num_actions

    def initial_state(self, batch_size, device):
        return None

    def act(self, obs, state, first, *, greedy=False):
        self.calls += obs.shape[0]
        if self.calls > 150:
            self.w.data.fill_(float("nan"))
        return torch.zeros(obs.shape[0], dtype=torch.long, device=obs.device), None

    def train_in_imagination(self, dream):
        return {}
'''


def test_a_checkpoint_with_nan_is_never_written_and_the_last_good_one_stays(
    here, monkeypatch, capsys
):
    (here / "wm_poison_plugin.py").write_text(POISON)
    monkeypatch.syspath_prepend(str(here))
    rc, _, err = call(
        "train.py", "--name", "p", "--plugin", "wm_poison_plugin", "--agent", "wm_poisoned",
        *TINY, "--set", "schedule.epochs=6", "--set", "schedule.keep_checkpoints=1",
        capsys=capsys,
    )  # fmt: skip
    line = one_line(rc, err)
    assert "not writing checkpoint" in line and "agent.w" in line and "is kept" in line
    run = here / "runs" / "p"
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert finite_checkpoints(run) == [latest]  # keep=1 rotated, yet the good one is there
    assert latest in line


# ------------------------------------------------------------------ 4. one process per run


HOLDER = (
    "import sys, time\n"
    "from worldmodels.runs import RunDir\n"
    "lock = RunDir(sys.argv[1]).lock('train.py --resume (the first one)')\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_second_process_is_refused_with_the_holders_pid(here, capsys):
    rc, _, err = call("train.py", "--name", "l", *TINY, capsys=capsys)
    assert rc == 0, err
    run = here / "runs" / "l"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for script, args in (("train.py", ["--resume", run]), ("evaluate.py", [run])):
            line = one_line(*call(script, *args, capsys=capsys)[::2])
            assert f"is in use by process {holder.pid} (train.py --resume (the first one))" in line
    finally:
        holder.kill()
        holder.wait()
    RunDir(run).lock("test").release()  # the OS dropped the killed holder's lock


# ------------------------------------------------------------------ 5. disk full


@pytest.mark.parametrize("victim", [".npz", ".safetensors"])
def test_disk_full_names_the_file_and_resume_continues(here, monkeypatch, capsys, victim):
    real = fileio._write_all

    def full(f, data, path):
        if path.name.endswith(victim):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data, path)

    monkeypatch.setattr(fileio, "_write_all", full)
    rc, _, err = call("train.py", "--name", "d", *TINY, capsys=capsys)
    line = one_line(rc, err)
    run = here / "runs" / "d"
    where = {".npz": "episodes/ep_000000.npz",
             ".safetensors": "checkpoints/epoch_000000/weights.safetensors"}[victim]  # fmt: skip
    assert f"no space left on the device while writing runs/d/{where}" in line
    assert "train.py --resume runs/d" in line
    assert not list(run.rglob("*.tmp")) and not list((run / "checkpoints").glob(".tmp-*"))

    monkeypatch.setattr(fileio, "_write_all", real)  # space was freed
    rc, out, err = call("train.py", "--resume", run, capsys=capsys)
    assert rc == 0, err
    assert (run / "results.json").exists()
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in run.glob("episodes/*.npz")]
    assert digests and len(set(digests)) == len(digests)


# ------------------------------------------------------------------ 6. failed start, no dir


def test_a_start_that_fails_while_building_leaves_no_directory(here, capsys):
    # The world needs an agent that observes features or pixels it has: cmaes observes world
    # features, which no world gives without a world: refused while building.
    rc, _, err = call("train.py", "--name", "f", "--agent", "cmaes", *TINY, capsys=capsys)
    one_line(rc, err)
    assert not (here / "runs" / "f").exists()
    rc, _, err = call("train.py", "--name", "f", *TINY, capsys=capsys)  # the corrected command
    assert rc == 0, err


def test_a_start_that_fails_after_creating_its_directory_removes_it(here, monkeypatch, capsys):
    from worldmodels.errors import UserError
    from worldmodels.schedule import RunSteps

    def refuse(self, *args, **kwargs):
        raise UserError("refused while setting up the schedule")

    monkeypatch.setattr(RunSteps, "__init__", refuse)
    line = one_line(*call("train.py", "--name", "g", *TINY, capsys=capsys)[::2])
    assert "refused while setting up the schedule" in line
    assert not (here / "runs" / "g").exists()


# ------------------------------------------------------------------ 7. results are kept


def test_rerunning_a_finished_run_keeps_every_results_file(here, capsys):
    rc, _, err = call("train.py", "--name", "v", *TINY, capsys=capsys)
    assert rc == 0, err
    run = here / "runs" / "v"
    first = json.loads((run / "results.json").read_text())
    for n in (1, 2):
        rc, out, err = call("train.py", "--resume", run, capsys=capsys)
        assert rc == 0, err
        assert f"the previous results are kept in {run / f'results.{n}.json'}" in out
    assert json.loads((run / "results.1.json").read_text()) == first
    assert sorted(p.name for p in run.glob("results*.json")) == [
        "results.1.json", "results.2.json", "results.json"
    ]  # fmt: skip


def test_a_checkpoint_without_meta_json_is_reported_and_kept(here, capsys):
    rc, _, err = call("train.py", "--name", "m", *TINY, capsys=capsys)
    assert rc == 0, err
    run = here / "runs" / "m"
    newest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    (newest / "meta.json").unlink()
    for script, args in (("train.py", ["--resume", run]), ("evaluate.py", [run])):
        line = one_line(*call(script, *args, capsys=capsys)[::2])
        assert f"checkpoint {newest} has no meta.json" in line and "never deleted" in line
    assert sorted(p.name for p in newest.iterdir()) == ["state.pt", "weights.safetensors"]


def test_copied_run_can_be_moved_and_resumed(here, capsys):
    """A run directory is self-contained: moved elsewhere, it resumes and verifies."""
    rc, _, err = call("train.py", "--name", "c", *TINY, capsys=capsys)
    assert rc == 0, err
    moved = Path(shutil.move(here / "runs" / "c", here / "elsewhere"))
    rc, out, err = call("train.py", "--resume", moved, capsys=capsys)
    assert rc == 0, err


# ------------------------------------------------------------------ 5. a world always has data


@pytest.mark.slow  # a whole smoke run of train.py on Pong
def test_a_world_gets_a_finished_episode_even_when_the_collection_is_too_short(here, capsys):
    # The smoke preset collects 200 steps on 2 envs; no Pong game ends that fast.
    rc, out, err = call("train.py", "--world", "vae", "--preset", "smoke", "--env", "Pong",
                        "--name", "pong", "--set", "run.progress=false", capsys=capsys)  # fmt: skip
    assert rc == 0, err
    assert "no episode of Pong finished in the 200 steps collected so far" in out
    assert json.loads((here / "runs" / "pong" / "results.json").read_text())["game"] == "Pong"


# ------------------------------------------------------------------ 3. resume, in process


def _episode_files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "episodes").glob("ep_*.npz"))}


def _older_checkpoint_only(here, capsys) -> tuple[Path, dict[str, bytes], int]:
    """A finished run whose newest checkpoint was removed: the one before it counted fewer
    episodes than replay holds, as after a kill."""
    args = [*TINY, "--set", "schedule.epochs=6", "--set", "schedule.checkpoint_every=3",
            "--set", "schedule.num_envs=1"]  # fmt: skip
    rc, _, err = call("train.py", "--name", "o", *args, capsys=capsys)
    assert rc == 0, err
    run = here / "runs" / "o"
    files = _episode_files(run)
    shutil.rmtree(run / "checkpoints" / "epoch_000006")
    (run / "results.json").unlink()
    meta = json.loads((run / "checkpoints" / "epoch_000003" / "meta.json").read_text())
    held = len(files) - meta["counters"]["replay_episodes"]
    assert held > 0
    return run, files, held


def test_resume_from_an_older_checkpoint_plays_the_same_episodes_again(here, capsys):
    run, files, held = _older_checkpoint_only(here, capsys)
    rc, out, err = call("train.py", "--resume", run, capsys=capsys)
    assert rc == 0, err
    assert "resuming from epoch_000003" in out and f"({held} written after it" in out
    assert _episode_files(run) == files  # met again one by one: no file added or rewritten


def test_games_that_cannot_be_replayed_continue_on_a_fresh_stream(here, monkeypatch, capsys):
    from worldmodels.collect import Collector

    run, files, held = _older_checkpoint_only(here, capsys)
    monkeypatch.setattr(Collector, "restore", lambda self, state, agent: "a simulated mismatch")
    rc, out, err = call("train.py", "--resume", run, capsys=capsys)
    assert rc == 0, err
    assert "could not be brought back to epoch_000003 (a simulated mismatch)" in out
    now = _episode_files(run)
    assert all(now[name] == data for name, data in files.items())  # every episode kept ...
    digests = [hashlib.sha256(data).hexdigest() for data in now.values()]
    assert len(set(digests)) == len(digests)  # ... and none collected twice
