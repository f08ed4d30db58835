"""Pieces shared by ``train.py`` and ``evaluate.py``: flags, process setup, error reporting."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import torch

from worldmodels import config as C
from worldmodels.errors import UserError, one_line
from worldmodels.registry import AGENTS, WORLDS, load_plugins


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage block by default)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def choices_epilog() -> str:
    from worldmodels.envs.atari import ATARI100K_GAMES

    worlds = ", ".join(WORLDS.names()) or "(none registered yet)"
    return "\n".join(
        [
            "valid choices:",
            f"  --env       {', '.join(ATARI100K_GAMES)}",
            "              (the Atari 100k games) or any other ALE game by name, e.g. Tennis, ms_pacman",
            f"  --protocol  {', '.join(C.available('env'))}",
            f"  --world     {worlds}",
            f"  --agent     {', '.join(AGENTS.names())}",
            f"  --preset    {', '.join(C.available('preset'))}",
            "",
            "--set overrides any config key, e.g. --set schedule.epochs=10 --set env.noop_max=0",
            "(the resolved config of a run is in runs/<name>/config.yaml).",
        ]
    )


def add_config_flags(p: argparse.ArgumentParser, *, default_preset: str = "atari100k") -> None:
    p.add_argument("--env", help="Atari game, e.g. Breakout (default: Breakout)")
    p.add_argument("--protocol", default="atari100k", help="env protocol (default: atari100k)")
    p.add_argument("--agent", help="agent (default: the world's default agent, else random)")
    p.add_argument(
        "--preset", default=default_preset, help=f"scale preset (default: {default_preset})"
    )
    p.add_argument("--seed", type=int, help="seed of every RNG (default: 0)")
    p.add_argument("--device", help="auto (cuda if available), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--name", help="run directory name under runs/ (default: derived)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set schedule.epochs=10 (repeatable)",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: it registers agents or worlds (repeatable; recorded in the "
        "run, and needed again to resume or evaluate it)",
    )
    p.add_argument(
        "--trust-plugins",
        action="store_true",
        help="import the plugins a run directory's config.yaml names without listing them with "
        "--plugin (they run code: only for run directories you trust)",
    )


def overrides_from(args: argparse.Namespace) -> list[str]:
    """Turn the shortcut flags into ``--set`` overrides (applied before the explicit ones)."""
    out = []
    if args.seed is not None:
        out.append(f"run.seed={args.seed}")
    if args.device is not None:
        out.append(f"run.device={args.device}")
    if args.name is not None:
        out.append(f"run.name={args.name}")
    return out + list(args.overrides)


def load_run_plugins(config_path, args: argparse.Namespace) -> None:
    """Import the plugins a run's ``config.yaml`` names, but only those the command line names
    too (``--plugin``), or all of them with ``--trust-plugins``: a run directory is data, and
    data someone handed over must not run code of its own."""
    tree = C.load_yaml(config_path)
    try:
        named = C.plugins_named(tree)
    except UserError as exc:
        raise UserError(f"{config_path}: {exc}") from None
    untrusted = [p for p in named if p not in args.plugin]
    if untrusted and not args.trust_plugins:
        flags = " ".join(f"--plugin {p}" for p in untrusted)
        raise UserError(
            f"{config_path} names plugin {', '.join(untrusted)}: plugins run code, so a run's "
            f"plugins are imported only when named on the command line: add {flags} "
            "(or --trust-plugins) if you trust this run directory"
        )
    load_plugins(named)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (valid: auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA device is available (use cpu)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r} (valid: auto, cpu, cuda, cuda:N)")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise UserError(f"device {name!r} asked for, but there are only {count} (cuda:0 ..)")
    return device


def setup_process(run: C.RunConfig) -> torch.device:
    """Process-wide switches, set once here from config: threads, TF32, seeds; under
    ``torchrun``, this rank's place in the process group and its device
    (``worldmodels.distributed``). Every rank seeds alike: they build the same weights."""
    from worldmodels import distributed
    from worldmodels.seeding import seed_everything

    device = distributed.init(resolve_device(run.device))
    ranks_here = distributed.local_world_size()  # the ranks of one machine share its cores
    threads = run.threads or max(1, (os.cpu_count() or 2) // 2 // ranks_here)
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = run.tf32
        torch.backends.cudnn.allow_tf32 = run.tf32
    seed_everything(run.seed)
    return device


_PRECISION: dict[tuple[str, str], tuple[bool, dict]] = {}


def precision_choice(run: C.RunConfig, device: torch.device) -> tuple[bool, dict]:
    """``(bf16 autocast?, record)`` for ``run.precision`` on ``device`` (probed once per process:
    see ``worldmodels.precision``)."""
    key = (run.precision, str(device))
    if key not in _PRECISION:
        from worldmodels import distributed
        from worldmodels.precision import choose_precision

        # Rank 0's choice on every rank of a torchrun (its probe times this machine's CPU)
        _PRECISION[key] = distributed.broadcast(
            choose_precision(run.precision, device) if distributed.is_main() else None
        )
    return _PRECISION[key]


def use_amp(run: C.RunConfig, device: torch.device) -> bool:
    """bf16 autocast? ``auto``: on CUDA, and on CPUs where bf16 is faster (AMX or AVX512-BF16, probed)."""
    return precision_choice(run, device)[0]


def run_main(main: Callable[[Sequence[str] | None], int | None], argv=None) -> int:
    """Call ``main``; a UserError becomes one line on stderr and exit status 2."""
    try:
        return main(argv) or 0
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: the last checkpoint and every finished episode are on disk",
            file=sys.stderr,
        )
        return 130
