"""``python -m worldmodels sweep``: one training run per (game, seed), launched through submitit,
tracked, resumed, and aggregated into the results table.

    python -m worldmodels sweep --envs atari100k --seeds 0-4 --world diffusion   # 26 x 5 runs
    python -m worldmodels sweep --envs Breakout,Pong --seeds 0,1 --world diffusion --preset smoke
    python -m worldmodels sweep ... --executor slurm --slurm partition=gpu --slurm time=4800

The sweep directory (``--dir``, default ``runs/sweep-<world>-<agent>-<preset>``)::

    sweep.json        the sweep's spec: games, seeds, world, agent, preset, protocol, --set, plugins
    progress.json     each run's state (done / running / failed / queued) and durations
    runs/<Game>-s<seed>/   the run directories (train.py's, see worldmodels/runs.py)
    logs/<Game>-s<seed>.log   each run's stdout and stderr, every attempt appended
    submitit/         submitit's job files
    table.json        the results table (evaluate.py --table) once the runs are done
    .lock             held by the sweep process while it works in the directory

Re-running the same command continues the sweep: finished runs (``results.json`` present) are
skipped, interrupted ones continue with ``train.py --resume``, failed ones are tried again. A
different spec in the same directory is refused. See ``docs/sweeps.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldmodels.errors import UserError, one_line
from worldmodels.fileio import atomic_write_json

SPEC_VERSION = 1
RUN_LOCK_GRACE_S = 60.0  # a job waits this long for a run directory another process still holds
POLL_S = 0.5
# run.* keys the sweep sets itself for every run
OWN_KEYS = ("run.seed", "run.name", "run.runs_dir")


# --------------------------------------------------------------------------------------------
# The spec (this module imports neither torch nor the framework at the top: the submitit job
# process that runs ``run_job`` only starts train.py)


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"0,2"`` -> ``[0, 2]``; ``"0-2,7"`` -> ``[0, 1, 2, 7]``."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else ("", "")
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds += range(a, b + 1)
            else:
                seeds.append(int(part))
        except ValueError:
            raise UserError(
                f"--seeds {text!r}: {part!r} is not a seed or a range (e.g. 0-4, 0,2 or 0-2,7)"
            ) from None
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds {text!r}: seeds must be >= 0")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r} names a seed twice")
    return seeds


def parse_envs(text: str) -> list[str]:
    """``"atari100k"`` -> the 26 Atari 100k games; else comma-separated game names (any
    spelling ``train.py --env`` takes), as canonical names."""
    from worldmodels.envs.atari import ATARI100K_GAMES, resolve_game

    if text.strip().lower() == "atari100k":
        return list(ATARI100K_GAMES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--envs {text!r}: give atari100k or game names, e.g. Breakout,Pong")
    games = [resolve_game(n)[0] for n in names]
    twice = sorted({g for g in games if games.count(g) > 1})
    if twice:
        raise UserError(f"--envs {text!r} names {', '.join(twice)} twice")
    return games


def run_name(game: str, seed: int) -> str:
    return f"{game}-s{seed}"


@dataclass(frozen=True)
class Spec:
    """What a sweep trains; recorded in ``sweep.json`` and compared on every re-run."""

    games: list[str]
    seeds: list[int]
    world: str | None
    agent: str | None
    preset: str
    protocol: str
    overrides: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "games": self.games,
            "seeds": self.seeds,
            "world": self.world,
            "agent": self.agent,
            "preset": self.preset,
            "protocol": self.protocol,
            "overrides": self.overrides,
            "plugins": self.plugins,
        }

    def runs(self) -> list[tuple[str, int]]:
        return [(g, s) for g in self.games for s in self.seeds]

    def train_args(self, game: str, seed: int, runs_dir: Path) -> list[str]:
        """``train.py`` arguments of a fresh run of (game, seed)."""
        args = ["--env", game, "--seed", str(seed), "--name", run_name(game, seed)]
        args += ["--preset", self.preset, "--protocol", self.protocol]
        if self.world:
            args += ["--world", self.world]
        if self.agent:
            args += ["--agent", self.agent]
        for o in [*self.overrides, f"run.runs_dir={runs_dir}"]:
            args += ["--set", o]
        for p in self.plugins:
            args += ["--plugin", p]
        return args

    def check(self) -> None:
        """Resolve the config of the first game now (a bad world, agent, preset or --set is one
        line before anything is launched, not one failure per run)."""
        from worldmodels import config as C
        from worldmodels.registry import load_plugins

        for o in self.overrides:
            key = o.partition("=")[0].strip()
            if key in OWN_KEYS:
                raise UserError(
                    f"--set {o}: the sweep sets {key} itself for each run (use --seeds / --dir)"
                )
        load_plugins(self.plugins)
        C.resolve(
            env=self.games[0],
            protocol=self.protocol,
            world=self.world,
            agent=self.agent,
            preset=self.preset,
            overrides=list(self.overrides),
            plugins=self.plugins,
        )


def spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k} ({old.get(k)!r} vs {new.get(k)!r})" for k in new if old.get(k) != new.get(k)]


def record_spec(root: Path, spec: Spec) -> None:
    """Write ``sweep.json``, or check that the one there records the same spec."""
    path = root / "sweep.json"
    new = spec.to_dict()
    if path.exists():
        try:
            old = json.loads(path.read_text()).get("spec", {})
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise UserError(f"{path} is not a readable sweep record ({exc})") from None
        diff = spec_differences(old, new)
        if diff:
            raise UserError(
                f"{root} holds a different sweep: it differs in {'; '.join(diff)} "
                "(re-run its own command to continue it, or pick another --dir)"
            )
        return
    atomic_write_json(path, {"version": SPEC_VERSION, "created": _now(), "spec": new})


# --------------------------------------------------------------------------------------------
# One run: the function submitit executes in the job


def _sweep_alive(lock: Path, token: str) -> bool:
    """Whether the sweep process that launched this job still holds its lock (a local job
    stops with its sweep; a new sweep process, with a new token, relaunches what it needs)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held exclusively: by whom?
            return token in os.pread(fd, 4096, 0).decode(errors="replace")
        return False  # nobody holds it
    finally:
        os.close(fd)


def _run_lock_holder(root: Path) -> str | None:
    """Who holds ``root``'s run lock (``worldmodels.runs.RunLock``: "pid command"), or None."""
    import fcntl

    try:
        fd = os.open(root / ".lock", os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody ever worked here
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        return None
    finally:
        os.close(fd)


def _wait_for_run_lock(root: Path, grace_s: float) -> str | None:
    """Wait until no process holds ``root``'s run lock (at most ``grace_s``); the error line
    naming the holder if one still does."""
    deadline = time.monotonic() + grace_s
    while (holder := _run_lock_holder(root)) is not None:
        if time.monotonic() > deadline:
            return (
                f"error: run directory {root} is in use by process {holder}: another sweep or "
                "train.py works in it"
            )
        time.sleep(POLL_S)
    return None


def train_command(args: list[str], ranks: int = 1) -> list[str]:
    """The command of one run: ``train.py`` (``python -m worldmodels train``), or with
    ``ranks > 1`` (``--gpus-per-run``) ``torchrun`` with one rank per GPU, so that the run trains
    data-parallel across them (``worldmodels.distributed``)."""
    train = ["-m", "worldmodels", "train", *args]
    if ranks > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={ranks}", *train]  # fmt: skip
    return [sys.executable, *train]


def run_job(task: dict[str, Any]) -> dict[str, Any]:
    """Train one (game, seed) to the end: skip it when finished, ``--resume`` it when
    interrupted, start it otherwise. ``train.py`` runs as a child process whose stdout and stderr
    go to the run's log; with ``task["sweep_lock"]`` (the local executor) it is stopped when the
    sweep process that launched it is gone."""
    root = Path(task["run_dir"])
    log = Path(task["log"])
    started = time.time()
    held = _wait_for_run_lock(root, RUN_LOCK_GRACE_S)
    if held is not None:
        with open(log, "a") as f:
            f.write(held + "\n")
        return {"status": "failed", "returncode": None, "seconds": 0.0}
    if (root / "results.json").exists():
        return {"status": "skipped", "returncode": 0, "seconds": 0.0}
    if root.exists() and not (root / "config.yaml").exists():
        shutil.rmtree(root)  # a start killed before it wrote its config: nothing ran in it
    if root.exists():
        args = ["--resume", str(root), *(a for p in task["plugins"] for a in ("--plugin", p))]
    else:
        args = list(task["fresh_args"])
    cmd = train_command(args, int(task.get("ranks", 1)))
    env = dict(os.environ)
    if task.get("cuda_visible_devices") is not None:
        env["CUDA_VISIBLE_DEVICES"] = task["cuda_visible_devices"]
    lock, token = task.get("sweep_lock"), task.get("token", "")
    with open(log, "a") as f:
        f.write(f"== {_now()} {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                if lock is not None and not _sweep_alive(Path(lock), token):
                    proc.terminate()  # the run continues with --resume when the sweep does
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    break
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        rc = proc.wait()
    done = (root / "results.json").exists()
    return {
        "status": "done" if done else "failed",
        "returncode": rc,
        "seconds": time.time() - started,
    }


def last_error_line(log: Path) -> str:
    """The line that says why a run failed: its last ``error:`` line (train.py's one-line
    errors), else the last line of a traceback, else the log's last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    lines = [ln for ln in lines if not ln.startswith("== ")]
    for ln in reversed(lines):
        if ln.startswith("error:") or ln.startswith("interrupted:"):
            return ln
    return lines[-1] if lines else "(empty log)"


# --------------------------------------------------------------------------------------------
# The sweep process


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _n(k: int, what: str) -> str:
    return f"{k} {what}{'' if k == 1 else 's'}"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h}:{m:02d}:{s:02d}"


def _submitit() -> Any:
    import importlib

    try:  # an optional extra (importlib: the type checker needs no submitit either)
        submitit = importlib.import_module("submitit")
    except ImportError:
        raise UserError(
            "sweep needs submitit, which is not installed: pip install 'worldmodels[sweep]' "
            "(or pip install submitit)"
        ) from None
    return submitit


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Slots:
    """Local parallelism: ``n`` slots, slot ``k`` pinned to GPUs ``k*K .. k*K+K-1`` (none on a
    CPU machine)."""

    n: int
    gpus_per_run: int

    def devices(self, k: int) -> list[int]:
        return list(range(k * self.gpus_per_run, (k + 1) * self.gpus_per_run))


def local_slots(max_parallel: int | None, gpus_per_run: int | None, gpus: int) -> Slots:
    if gpus == 0:
        if gpus_per_run:
            raise UserError(f"--gpus-per-run {gpus_per_run}: no CUDA device on this machine")
        return Slots(max_parallel or 1, 0)
    k = 1 if gpus_per_run is None else gpus_per_run
    if k < 1:
        raise UserError(f"--gpus-per-run must be at least 1 on a GPU machine, got {k}")
    if k > gpus:
        raise UserError(f"--gpus-per-run {k}: this machine has {gpus} CUDA devices")
    n = max_parallel or gpus // k
    if n * k > gpus:
        raise UserError(
            f"--max-parallel {n} x --gpus-per-run {k} needs {n * k} GPUs; this machine has {gpus}"
        )
    return Slots(n, k)


@dataclass
class Run:
    game: str
    seed: int
    root: Path
    log: Path
    state: str = "queued"  # queued | running | done | failed
    job: Any = None
    slot: int | None = None
    started: float = 0.0
    seconds: float | None = None
    error: str = ""
    job_id: str | None = None

    @property
    def name(self) -> str:
        return run_name(self.game, self.seed)


class Sweep:
    def __init__(self, args: argparse.Namespace, spec: Spec, root: Path) -> None:
        self.args, self.spec, self.root = args, spec, root
        self.runs_dir = root / "runs"
        self.logs = root / "logs"
        self.token = uuid.uuid4().hex
        self.runs = [
            Run(g, s, self.runs_dir / run_name(g, s), self.logs / f"{run_name(g, s)}.log")
            for g, s in spec.runs()
        ]
        self.durations: dict[str, float] = {}
        self._last_line = ""

    # ------------------------------------------------------------------ bookkeeping

    def load_progress(self) -> dict[str, Any]:
        path = self.root / "progress.json"
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def save_progress(self) -> None:
        atomic_write_json(
            self.root / "progress.json",
            {
                "updated": _now(),
                "runs": {
                    r.name: {"state": r.state, "seconds": self.durations.get(r.name),
                             "error": r.error or None, "job_id": r.job_id}
                    for r in self.runs
                },
            },
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("done", "running", "failed", "queued")}
        for r in self.runs:
            out[r.state] += 1
        return out

    def eta(self, parallel: int) -> str:
        if not self.durations:
            return "ETA after the first run finishes"
        mean = sum(self.durations.values()) / len(self.durations)
        now = time.time()
        left = sum(mean for r in self.runs if r.state == "queued")
        left += sum(max(0.0, mean - (now - r.started)) for r in self.runs if r.state == "running")
        return f"ETA {_hms(left / max(1, parallel))} (a run takes {_hms(mean)} on average)"

    def report(self, parallel: int, force: bool = False) -> None:
        c = self.counts()
        line = (
            f"{c['done']}/{len(self.runs)} done, {c['running']} running, {c['failed']} failed, "
            f"{c['queued']} queued"
        )
        if line != self._last_line or force:
            self._last_line = line
            eta = self.eta(parallel) if c["running"] + c["queued"] else "all ended"
            print(f"[{time.strftime('%H:%M:%S')}] {line}; {eta}", flush=True)
            self.save_progress()

    # ------------------------------------------------------------------ jobs

    def task(self, run: Run, devices: list[int] | None, watch: bool) -> dict[str, Any]:
        return {
            "run_dir": str(run.root),
            "log": str(run.log),
            "fresh_args": self.spec.train_args(run.game, run.seed, self.runs_dir),
            "plugins": list(self.spec.plugins),
            "cuda_visible_devices": None if devices is None else ",".join(map(str, devices)),
            # one rank per GPU of the run (torchrun) where it has more than one
            "ranks": len(devices) if devices is not None else max(1, self.args.gpus_per_run or 1),
            "sweep_lock": str(self.root / ".lock") if watch else None,
            "token": self.token,
        }

    def finish(self, run: Run) -> None:
        """``run``'s job ended: done (results.json) or failed (its last error line)."""
        result: dict[str, Any] = {}
        try:
            result = run.job.result()
        except Exception as exc:  # the job itself died (killed, submitit failure)
            run.error = one_line(
                str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            )
        if (run.root / "results.json").exists():
            run.state = "done"
            if result.get("status") == "done":
                self.durations[run.name] = float(result["seconds"])
        else:
            run.state = "failed"
            if not run.error or run.log.exists():
                run.error = last_error_line(run.log)
        run.job = None

    def run_local(self, executor: Any, slots: Slots, gpus: int) -> None:
        free = list(range(slots.n))
        queue = [r for r in self.runs if r.state == "queued"]
        running: list[Run] = []
        while queue or running:
            while queue and free:
                run, slot = queue.pop(0), free.pop(0)
                devices = slots.devices(slot) if gpus else None
                executor.update_parameters(
                    gpus_per_node=len(devices or []), visible_gpus=devices or ()
                )
                run.job = executor.submit(run_job, self.task(run, devices, watch=True))
                run.job_id, run.slot, run.state, run.started = (
                    str(run.job.job_id), slot, "running", time.time()
                )  # fmt: skip
                running.append(run)
                self.report(slots.n)
            for run in [r for r in running if r.job.done()]:
                running.remove(run)
                assert run.slot is not None
                free.append(run.slot)
                self.finish(run)
                self.report(slots.n)
            time.sleep(POLL_S)
            self.report(slots.n)

    def run_slurm(self, submitit: Any, executor: Any, parallel: int) -> None:
        """Every run not finished goes to SLURM as one job array (at most ``parallel`` at once);
        jobs a previous sweep process submitted that are still queued or running are watched,
        not submitted again. The jobs do not depend on this process: stopping it stops the
        watching only."""
        known = self.load_progress().get("runs", {})
        live = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED"}
        todo = []
        for run in (r for r in self.runs if r.state == "queued"):
            job_id = (known.get(run.name) or {}).get("job_id")
            if job_id:
                job = submitit.SlurmJob(folder=self.root / "submitit", job_id=job_id)
                if job.state in live:
                    run.job, run.job_id, run.state, run.started = (
                        job,
                        job_id,
                        "running",
                        time.time(),
                    )
                    continue
            todo.append(run)
        if todo:
            executor.update_parameters(slurm_array_parallelism=parallel)
            with executor.batch():
                jobs = [executor.submit(run_job, self.task(r, None, watch=False)) for r in todo]
            for run, job in zip(todo, jobs, strict=True):
                run.job, run.job_id, run.state, run.started = (
                    job,
                    str(job.job_id),
                    "running",
                    time.time(),
                )
            print(f"submitted {len(todo)} runs to SLURM (job {jobs[0].job_id.split('_')[0]})")
        self.report(parallel, force=True)
        while any(r.state == "running" for r in self.runs):
            for run in [r for r in self.runs if r.state == "running" and r.job.done()]:
                self.finish(run)
            self.report(parallel)
            time.sleep(30.0)

    # ------------------------------------------------------------------ the table

    def table(self) -> int | None:
        from worldmodels.commands import evaluate

        finished = [str(r.root) for r in self.runs if r.state == "done"]
        if not finished:
            print("no finished run yet: no table", file=sys.stderr)
            return None
        out = self.root / "table.json"
        return evaluate.main(["--table", *finished, "--out", str(out)])


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    from worldmodels.cli import Parser

    p = Parser(
        prog="python -m worldmodels sweep",
        description="Train one run per (game, seed) through submitit, then write the results table.",
        epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--envs", required=True, help="atari100k (the 26 games) or GAME[,GAME...]")
    p.add_argument("--seeds", required=True, help="seeds: a range 0-4, a list 0,2, or both 0-2,7")
    p.add_argument("--world", help="world model (as train.py --world)")
    p.add_argument("--agent", help="agent (default: the world's default agent)")
    p.add_argument("--preset", default="atari100k", help="scale preset (default: atari100k)")
    p.add_argument("--protocol", default="atari100k", help="env protocol (default: atari100k)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a config override for every run (repeatable; part of the sweep's spec)",
    )  # fmt: skip
    p.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import MODULE in every run (repeatable; part of the spec)",
    )  # fmt: skip
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument(
        "--max-parallel", type=int,
        help="runs at once (default: local: GPUs / --gpus-per-run, 1 on a CPU; slurm: 256)",
    )  # fmt: skip
    p.add_argument("--gpus-per-run", type=int, help="GPUs each run gets (default: 1 with GPUs)")
    p.add_argument(
        "--slurm", action="append", default=[], metavar="KEY=VALUE",
        help="a submitit SLURM parameter, e.g. partition=gpu, time=4800 (minutes), "
        "cpus_per_task=8, account=X, qos=Y (repeatable)",
    )  # fmt: skip
    p.add_argument("--dir", help="sweep directory (default: runs/sweep-<world>-<agent>-<preset>)")
    p.add_argument(
        "--no-table", action="store_true", help="do not write the results table at the end"
    )
    return p.parse_args(argv)


def _slurm_params(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm {item!r}: expected KEY=VALUE, e.g. partition=gpu")
        v: Any = value
        with contextlib.suppress(ValueError):
            v = int(value)
        out[f"slurm_{key.strip()}"] = v
    return out


def slurm_executor(submitit: Any, args: argparse.Namespace, root: Path) -> Any:
    """submitit's SLURM executor with one node, one task and ``--gpus-per-run`` GPUs per run."""
    try:
        executor = submitit.AutoExecutor(folder=root / "submitit", cluster="slurm")
        executor.update_parameters(
            gpus_per_node=1 if args.gpus_per_run is None else args.gpus_per_run,
            tasks_per_node=1,
            nodes=1,
            name=f"sweep-{root.name}",
            **_slurm_params(args.slurm),
        )
    except (ValueError, RuntimeError, TypeError, NameError) as exc:
        raise UserError(f"--executor slurm: {one_line(str(exc))}") from None
    return executor


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    if args.gpus_per_run is not None and args.gpus_per_run < 0:
        raise UserError(f"--gpus-per-run must be >= 0, got {args.gpus_per_run}")
    if args.slurm and args.executor != "slurm":
        raise UserError("--slurm parameters need --executor slurm")
    submitit = _submitit()
    spec = Spec(
        games=parse_envs(args.envs),
        seeds=parse_seeds(args.seeds),
        world=args.world,
        agent=args.agent,
        preset=args.preset,
        protocol=args.protocol,
        overrides=list(args.overrides),
        plugins=list(args.plugin),
    )
    spec.check()
    gpus = gpu_count() if args.executor == "local" else 0
    slots = (  # checked before anything is written
        local_slots(args.max_parallel, args.gpus_per_run, gpus)
        if args.executor == "local"
        else None
    )
    root = Path(
        args.dir
        or Path("runs") / f"sweep-{spec.world or 'noworld'}-{spec.agent or 'default'}-{spec.preset}"
    )
    if root.exists() and not root.is_dir():
        raise UserError(f"--dir {root}: a file of that name exists")
    slurm = None if slots is not None else slurm_executor(submitit, args, root)
    try:
        for d in (root / "runs", root / "logs", root / "submitit"):
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the sweep directory {root}: {exc.strerror or exc}"
        ) from None

    from worldmodels.runs import RunLock

    sweep = Sweep(args, spec, root)
    try:  # one sweep process per directory
        lock = RunLock(root / ".lock", f"sweep {sweep.token}")
    except UserError as exc:
        raise UserError(str(exc).replace("run directory", "sweep directory", 1)) from None
    try:
        record_spec(root, spec)
        for r in sweep.runs:
            if (r.root / "results.json").exists():
                r.state = "done"
        before = sweep.counts()["done"]
        known = sweep.load_progress().get("runs", {})
        for r in sweep.runs:
            sec = (known.get(r.name) or {}).get("seconds")
            if r.state == "done" and isinstance(sec, (int, float)):
                sweep.durations[r.name] = float(sec)
        print(
            f"sweep {root}: {_n(len(sweep.runs), 'run')} ({_n(len(spec.games), 'game')} x "
            f"{_n(len(spec.seeds), 'seed')}), {before} finished already, "
            f"{len(sweep.runs) - before} to run "
            f"({args.executor} executor)",
            flush=True,
        )
        folder = root / "submitit"
        if slots is not None:
            executor = submitit.LocalExecutor(folder=folder)
            executor.update_parameters(timeout_min=60 * 24 * 365)  # a run ends on its own
            pins = (
                ", ".join(f"slot {k}: CUDA_VISIBLE_DEVICES={','.join(map(str, slots.devices(k)))}"
                          for k in range(slots.n)) if gpus else "CPU"
            )  # fmt: skip
            print(f"{slots.n} at once ({pins}); logs in {root / 'logs'}", flush=True)
            _stop_on_sigterm()
            sweep.run_local(executor, slots, gpus)
        else:
            sweep.run_slurm(submitit, slurm, args.max_parallel or 256)
        failed = [r for r in sweep.runs if r.state == "failed"]
        for r in failed:
            print(f"failed: {r.name}: {r.error} (log: {r.log})", file=sys.stderr)
        if not args.no_table:
            rc = sweep.table()
            if rc:
                return rc
        if failed:
            print(
                f"{len(failed)} of {len(sweep.runs)} runs failed: fix the cause and re-run the same "
                "command (finished runs are kept, failed ones are tried again)",
                file=sys.stderr,
            )
            return 1
        return 0
    finally:
        lock.release()


def _stop_on_sigterm() -> None:
    """SIGTERM ends the sweep as Ctrl-C does (its local jobs see the lock go and stop)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    from worldmodels.cli import run_main

    sys.exit(run_main(main))
