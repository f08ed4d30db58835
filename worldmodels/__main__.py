"""``python -m worldmodels <command> [args]``: ``train``, ``evaluate``, ``export``, ``play`` or
``sweep``, each with the arguments of its own ``--help``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "train": ("worldmodels.commands.train", "train an agent (and a world) on an Atari game"),
    "evaluate": (
        "worldmodels.commands.evaluate",
        "score a run, compare worlds (--compare), aggregate results (--table)",
    ),
    "export": ("worldmodels.hub", "write a trained run as a self-contained shareable folder"),
    "play": (
        "worldmodels.commands.play",
        "play inside a learned world by keyboard (--side-by-side, --compare, --record)",
    ),
    "sweep": (
        "worldmodels.sweep",
        "train games x seeds through submitit (local or SLURM), then the results table",
    ),
}


def _usage() -> str:
    lines = ["usage: python -m worldmodels <command> [args]  (<command> --help for its own)", ""]
    lines += [f"  {name:<9} {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def cli(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r} (valid: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    from worldmodels.cli import run_main

    main = module.export_main if name == "export" else module.main
    return run_main(main, rest)


if __name__ == "__main__":
    sys.exit(cli())
