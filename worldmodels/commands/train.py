"""Train an agent in a learned world model of an Atari game.

    python train.py --env Breakout --world diffusion              # the published scale (CUDA)
    python train.py --env Breakout --agent random --preset smoke  # a few minutes on a CPU
    python train.py --resume runs/<name>                          # continue after a crash
    torchrun --nproc-per-node 2 train.py --env Breakout --world diffusion  # data-parallel

``--help`` lists the valid games, worlds, agents, presets and protocols.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from worldmodels import config as C
from worldmodels import distributed
from worldmodels.cli import (
    Parser,
    add_config_flags,
    choices_epilog,
    overrides_from,
    precision_choice,
    run_main,
    setup_process,
    use_amp,
)
from worldmodels.errors import UserError
from worldmodels.graphs import eager_on_failure, graphs_enabled


def parse(argv):
    p = Parser(
        prog="train.py",
        description=__doc__.split("\n\n")[0],
        epilog=choices_epilog(),
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--world", help="world model (default: none: collect real experience and test)")
    add_config_flags(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    return p.parse_args(argv)


def resumed_config(args, stack: contextlib.ExitStack):
    """``--resume``: the run's own config, its lock held (released by ``stack``)."""
    from worldmodels.cli import load_run_plugins
    from worldmodels.runs import RunDir

    given = [f for f in ("env", "world", "agent", "seed", "name") if getattr(args, f)]
    if given or args.overrides or args.preset != "atari100k" or args.protocol != "atari100k":
        raise UserError(
            "--resume continues a run with its own config.yaml; drop "
            + ", ".join(f"--{f}" for f in given or ["--set/--preset/--protocol"])
            + " (only --device may change)"
        )
    run = RunDir.open(args.resume)
    if distributed.launched_rank() == 0:  # under torchrun, rank 0 holds the lock for them all
        stack.callback(run.lock(f"train.py --resume {run.root}").release)  # a second one stops
    load_run_plugins(run.config, args)
    cfg = C.load_run_config(run.config)
    if args.device:
        tree = C.to_dict(cfg)
        tree["run"]["device"] = args.device
        cfg = C.build(tree)
    return cfg, run


def fresh_config(args):
    """A new run: the config from the layers and flags, and its (not yet created) directory."""
    from worldmodels.runs import RunDir, default_run_name

    cfg = C.resolve(
        env=args.env,
        protocol=args.protocol,
        world=args.world,
        agent=args.agent,
        preset=args.preset,
        overrides=overrides_from(args),
        plugins=args.plugin,
    )
    name = cfg.run.name or default_run_name(
        cfg.env.game,
        None if cfg.world is None else cfg.world.name,
        cfg.agent.name,
        cfg.preset,
        cfg.run.seed,
    )
    tree = C.to_dict(cfg)
    tree["run"]["name"] = name
    cfg = C.build(tree)
    run = RunDir(Path(cfg.run.runs_dir) / name)
    if distributed.launched_rank() == 0:  # under torchrun, rank 0 makes the directory
        RunDir.check_creatable(run.root)  # now, not after minutes of building
    return cfg, run


def same_name_on_every_rank(cfg, run):
    """Under ``torchrun``: rank 0's run name (a default one holds the time it started)."""
    from worldmodels.runs import RunDir

    name = distributed.broadcast(cfg.run.name)
    if name == cfg.run.name:
        return cfg, run
    tree = C.to_dict(cfg)
    tree["run"]["name"] = name
    cfg = C.build(tree)
    return cfg, RunDir(Path(cfg.run.runs_dir) / name)


def run_summary(cfg) -> str:
    """The TensorBoard text panel of a run: what it trains, at which scale, under which protocol."""
    s = cfg.schedule
    world = "none" if cfg.world is None else cfg.world.name
    lines = [
        f"**{cfg.env.game}**: world `{world}`, agent `{cfg.agent.name}`, preset `{cfg.preset}`, "
        f"seed {cfg.run.seed}",
        "",
        f"{s.epochs} epochs, {s.env_steps_budget:,} real steps at most "
        f"({s.initial_collect_steps:,} collected first), {cfg.eval.episodes} final test episodes",
        "",
        f"| protocol `{cfg.env.protocol}` | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in cfg.env.protocol_values().items()),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    from worldmodels.registry import load_plugins

    load_plugins(args.plugin)  # before any name is resolved
    from worldmodels.build import (
        build_world_and_agent,
        compile_hot_modules,
        env_factory,
        env_info_of,
    )
    from worldmodels.checkpoint import latest_checkpoint
    from worldmodels.errors import DiskFull
    from worldmodels.replay import ReplayStore
    from worldmodels.runs import RunDir, versions
    from worldmodels.seeding import seed_everything
    from worldmodels.staged import make_schedule
    from worldmodels.tb import NullLogger, TBLogger
    from worldmodels.training import NonFiniteTraining

    with contextlib.ExitStack() as stack:
        cfg, run = resumed_config(args, stack) if args.resume else fresh_config(args)
        # Whatever a bad setting can break fails here, before a new run directory exists: a
        # failed start never leaves one behind that blocks the corrected command.
        device = setup_process(cfg.run)  # under torchrun: this rank's, in the process group
        stack.push(lambda kind, *_: distributed.close(together=kind is None))
        main = distributed.is_main()
        log = print if main else (lambda line: None)  # rank 0 speaks for the run
        if distributed.active() and not args.resume:
            cfg, run = same_name_on_every_rank(cfg, run)
        graphs_enabled(cfg.run.cuda_graphs, device)  # run.cuda_graphs=on on a CPU: refused now
        if cfg.run.cuda_graphs == "auto":  # graphs where they work: a failed capture runs eagerly
            stack.enter_context(eager_on_failure(log))
        make_env = env_factory(cfg.env)
        probe = make_env("train", 1)
        info = env_info_of(probe)
        probe.close()
        try:
            world, agent = build_world_and_agent(
                cfg.world, cfg.agent, info, seed=cfg.run.seed, device=device,
                channels_last=cfg.run.channels_last,
            )  # fmt: skip
        except ValueError as exc:  # a component refusing its settings or its env
            raise UserError(f"cannot build the world and agent: {exc}") from None
        if distributed.active():  # the same weights everywhere; each rank then draws its own
            for module in (world, agent):
                if module is not None:
                    distributed.broadcast_module(module)
            if not main:
                seed_everything(distributed.rank_seed(cfg.run.seed, "global"))
        if cfg.run.compile:
            log(f"torch.compile: {compile_hot_modules(world, agent)} modules")

        started = False
        if not args.resume and main:
            run = RunDir.create(run.root)
            stack.callback(run.lock("train.py").release)

            @stack.callback
            def _remove_if_not_started() -> None:  # ours, made moments ago, nothing ran
                if not started:
                    shutil.rmtree(run.root, ignore_errors=True)

            run.write_config(C.dump(cfg))
        distributed.barrier()  # the others open the run directory rank 0 made
        logger = stack.enter_context(
            contextlib.closing(TBLogger(str(run.tb)) if main else NullLogger())
        )
        ver = versions()
        schedule = make_schedule(
            cfg,
            run,
            agent=agent,
            world=world,
            store=ReplayStore(run.episodes) if main else ReplayStore.follower(run.episodes),
            make_env=make_env,
            logger=logger,
            device=device,
            versions=ver,
            amp=use_amp(cfg.run, device),
            log=log,
        )
        stack.callback(schedule.close)
        if args.resume:
            schedule.restore()  # refuses a damaged checkpoint or replay before writing anything
        precision = precision_choice(cfg.run, device)[1]
        if main:
            run.record_session(
                {"argv": sys.argv, "device": str(device), "env_spec": schedule.env_spec,
                 "precision": precision, "versions": ver, "world_size": distributed.world_size()}
            )  # fmt: skip
        if not args.resume and main:
            logger.text("run", run_summary(cfg))
            logger.text("config", "```\n" + C.dump(cfg) + "\n```")
            print(f"run directory: {run.root}")
        started = True
        try:
            schedule.run()
        except DiskFull as exc:
            advice = f"free some space, then continue the run with: train.py --resume {run.root}"
            raise DiskFull(exc.path, advice) from None
        except NonFiniteTraining as exc:
            last = latest_checkpoint(run.checkpoints)
            raise UserError(
                f"{exc} (every checkpoint on disk holds finite values only; the newest: {last})"
            ) from None
    log(f"done: {run.root} (tensorboard --logdir {run.tb.parent} --host 127.0.0.1)")
    return 0


def cli() -> int:
    """The console script (``worldmodels-train``): errors as one line, exit status 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(cli())
