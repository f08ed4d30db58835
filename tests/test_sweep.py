"""``python -m worldmodels sweep``: a local sweep of 2 games x 2 seeds at the test preset through
submitit finishes and writes the table, continues after its process is killed mid-way without
rerunning finished runs, lists a failing run with its last error line while the others finish,
and refuses bad specs in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worldmodels.__main__ import cli
from worldmodels.sweep import (
    last_error_line,
    local_slots,
    parse_envs,
    parse_seeds,
    train_command,
)

needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason="the 'sweep' extra (submitit)"
)

REPO = Path(__file__).resolve().parents[1]
SPEC = ["--envs", "Breakout,Pong", "--seeds", "0-1", "--world", "diffusion", "--preset", "test"]
RUNS = ["Breakout-s0", "Breakout-s1", "Pong-s0", "Pong-s1"]


def sweep_cmd(root: Path, *extra: str, spec: list[str] = SPEC) -> list[str]:
    return [sys.executable, "-m", "worldmodels", "sweep", *spec, "--max-parallel", "2",
            "--dir", str(root), *extra]  # fmt: skip


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def run_sweep(
    root: Path, *extra: str, spec: list[str] = SPEC, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_cmd(root, *extra, spec=spec), cwd=root.parent, env=env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def results(root: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in (root / "runs").glob("*/results.json")}


@needs_submitit
@pytest.mark.slow
def test_sweep_killed_midway_continues_and_writes_the_table(tmp_path):
    root = tmp_path / "sw"
    proc = subprocess.Popen(
        sweep_cmd(root, "--no-table"), cwd=tmp_path, env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while True:  # kill once a run has finished while another is still running
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no run finished in time"
            done = results(root)
            # a run that started moments ago (not one about to finish: runs in parallel end
            # together), so that it is still running when the kill lands
            fresh = {
                p.name for p in (root / "runs").glob("*")
                if (p / "config.yaml").exists() and p.name not in done
                and time.time() - (p / "config.yaml").stat().st_mtime < 1.0
            }  # fmt: skip
            if done and fresh:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    interrupted = sorted({p.name for p in (root / "runs").iterdir()} - results(root).keys())
    assert interrupted
    time.sleep(2 * 0.5 + 1)  # the orphaned local jobs see the sweep's lock go and stop
    # a run killed after its config.yaml was written is resumed; one killed while it was being
    # created (its directory, no config yet) is started afresh
    had_config = {n: (root / "runs" / n / "config.yaml").exists() for n in interrupted}
    assert any(had_config.values())  # the loop above stopped while a started run was running
    before = {name: (p.stat().st_mtime_ns, p.read_bytes()) for name, p in results(root).items()}

    out = run_sweep(root)
    assert out.returncode == 0, out.stderr[-2000:]
    after = results(root)
    assert sorted(after) == RUNS
    for name, (mtime, data) in before.items():  # finished runs were not rerun
        assert after[name].stat().st_mtime_ns == mtime
        assert after[name].read_bytes() == data
    for name in interrupted:  # continued (--resume) or, killed before its config, started clean
        log = (root / "logs" / f"{name}.log").read_text()
        assert ("--resume" in log) == had_config[name], (had_config[name], log[-1000:])
        assert not list((root / "runs" / name).glob("results.*.json"))  # one final test only
    table = json.loads((root / "table.json").read_text())
    method = table["methods"]["diffusion/actor_critic"]
    assert sorted(method["games"]) == ["Breakout", "Pong"]
    assert all(g["runs"] == 2 for g in method["games"].values())
    for stat in ("mean", "median", "iqm"):
        lo, hi = method["aggregates"][stat]["ci95"]
        assert lo <= method["aggregates"][stat]["value"] <= hi
    assert set(table["published"]) == {"IRIS", "DIAMOND"}
    assert "IQM" in out.stdout and "DIAMOND" in out.stdout
    spec = json.loads((root / "sweep.json").read_text())["spec"]
    assert spec["games"] == ["Breakout", "Pong"] and spec["seeds"] == [0, 1]

    again = run_sweep(root, "--no-table")  # everything finished: nothing runs again
    assert again.returncode == 0, again.stderr
    assert "4 finished already, 0 to run" in again.stdout
    assert {n: p.stat().st_mtime_ns for n, p in results(root).items()} == {
        n: p.stat().st_mtime_ns for n, p in after.items()
    }

    other = run_sweep(root, "--set", "schedule.epochs=3")
    assert other.returncode == 2
    assert other.stderr.count("\n") == 1 and "holds a different sweep" in other.stderr
    assert "overrides" in other.stderr


@needs_submitit
@pytest.mark.slow
def test_a_failing_run_is_listed_and_the_others_finish(tmp_path):
    root = tmp_path / "sw"
    bad = root / "runs" / "Breakout-s0"  # launched first: the other run starts beside it
    bad.mkdir(parents=True)
    (bad / "config.yaml").write_text("world: [unclosed\n")  # a damaged run directory
    spec = ["--envs", "Breakout", "--seeds", "0-1", "--world", "diffusion", "--preset", "test"]
    out = run_sweep(root, spec=spec)
    assert out.returncode == 1, out.stderr[-2000:]
    assert sorted(results(root)) == ["Breakout-s1"]
    log = root / "logs" / "Breakout-s0.log"
    line = last_error_line(log)
    assert line.startswith("error:") and "config.yaml" in line
    failed = [ln for ln in out.stderr.splitlines() if ln.startswith("failed: ")]
    assert failed == [f"failed: Breakout-s0: {line} (log: {log})"]
    assert "1 of 2 runs failed" in out.stderr
    progress = json.loads((root / "progress.json").read_text())["runs"]
    assert progress["Breakout-s0"] == {**progress["Breakout-s0"], "state": "failed", "error": line}
    assert progress["Breakout-s1"]["state"] == "done"
    table = json.loads((root / "table.json").read_text())  # over the runs that finished
    assert table["methods"]["diffusion/actor_critic"]["games"]["Breakout"]["runs"] == 1


@needs_submitit
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "3-1"], "is not a seed or a range"),
        (["--seeds", "0,0"], "names a seed twice"),
        (["--envs", "Brekout"], "did you mean 'Breakout'"),
        (["--envs", "Pong,pong"], "names Pong twice"),
        (["--set", "run.seed=3"], "the sweep sets run.seed itself"),
        (["--set", "schedule.epochs=-1"], "schedule.epochs"),
        (["--world", "nope"], "unknown world"),
        (["--max-parallel", "0"], "--max-parallel must be at least 1"),
        (["--slurm", "partition=gpu"], "--slurm parameters need --executor slurm"),
    ],
)
def test_bad_specs_are_one_line_errors(tmp_path, monkeypatch, capsys, extra, message):
    """In this process (``python -m worldmodels``'s ``cli``), as the first case shows a real
    process does."""
    root = tmp_path / "sw"
    args = ["sweep", "--envs", "Breakout", "--seeds", "0", "--world", "diffusion", "--preset",
            "test", "--dir", str(root), *extra]  # fmt: skip
    if extra == ["--seeds", "3-1"]:
        cmd = [sys.executable, "-m", "worldmodels", *args]
        out = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        rc, stderr = out.returncode, out.stderr
    else:
        monkeypatch.chdir(tmp_path)
        try:
            rc = cli(args)
        except SystemExit as exc:  # argparse exits by itself on a bad flag
            rc = exc.code
        stderr = capsys.readouterr().err
    assert rc == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert message in stderr
    assert not root.exists()  # refused before anything was written


def test_spec_parsing_and_gpu_slots():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2") == [0, 2]
    assert parse_seeds("0-1,7") == [0, 1, 7]
    assert len(parse_envs("atari100k")) == 26
    assert parse_envs("ms_pacman,Breakout") == ["MsPacman", "Breakout"]
    cpu = local_slots(None, None, gpus=0)
    assert (cpu.n, cpu.devices(0)) == (1, [])
    two = local_slots(None, 2, gpus=8)  # 4 slots of 2 GPUs each, disjoint
    assert two.n == 4 and [two.devices(k) for k in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    from worldmodels.errors import UserError

    with pytest.raises(UserError, match="needs 6 GPUs"):
        local_slots(3, 2, gpus=4)
    with pytest.raises(UserError, match="no CUDA device"):
        local_slots(None, 1, gpus=0)


def test_a_run_of_several_gpus_is_one_torchrun_rank_per_gpu():
    assert train_command(["--env", "Pong"]) == [
        sys.executable,
        "-m",
        "worldmodels",
        "train",
        "--env",
        "Pong",
    ]
    cmd = train_command(["--resume", "r"], ranks=4)
    assert cmd[:5] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
    ]
    assert cmd[5:] == ["-m", "worldmodels", "train", "--resume", "r"]


def test_missing_submitit_is_one_line_naming_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['submitit'] = None\n"
        "from worldmodels.__main__ import cli\n"
        "sys.exit(cli(['sweep', '--envs', 'Breakout', '--seeds', '0', '--dir', 'x']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "worldmodels[sweep]" in out.stderr
    assert not (tmp_path / "x").exists()


@needs_submitit
@pytest.mark.skipif(shutil.which("srun") is not None, reason="a SLURM cluster is at hand")
def test_slurm_without_a_cluster_is_one_line_and_writes_nothing(tmp_path):
    root = tmp_path / "sw"
    cmd = [sys.executable, "-m", "worldmodels", "sweep", "--envs", "Breakout", "--seeds", "0",
           "--preset", "test", "--dir", str(root), "--executor", "slurm"]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: --executor slurm: ")
    assert not root.exists()
