"""Train an agent in a learned world model of an Atari game.

    python train.py --env Breakout --world diffusion              # the published scale (CUDA)
    python train.py --env Breakout --agent random --preset smoke  # a few minutes on a CPU
    python train.py --resume runs/<name>                          # continue after a crash

``--help`` lists the valid games, worlds, agents, presets and protocols.
"""

from __future__ import annotations

import sys
from pathlib import Path

from worldmodels import config as C
from worldmodels.cli import (
    Parser,
    add_config_flags,
    choices_epilog,
    overrides_from,
    run_main,
    setup_process,
    use_amp,
)
from worldmodels.errors import UserError


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


def main(argv=None) -> int:
    args = parse(argv)
    from worldmodels.registry import load_plugins

    load_plugins(args.plugin)  # before any name is resolved
    import shutil

    from worldmodels.build import (
        build_world_and_agent,
        compile_hot_modules,
        env_factory,
        env_info_of,
    )
    from worldmodels.checkpoint import latest_checkpoint
    from worldmodels.cli import load_run_plugins
    from worldmodels.errors import DiskFull
    from worldmodels.replay import ReplayStore
    from worldmodels.runs import RunDir, default_run_name, versions
    from worldmodels.staged import schedule_class
    from worldmodels.tb import TBLogger
    from worldmodels.training import NonFiniteTraining

    lock = None
    if args.resume:
        given = [f for f in ("env", "world", "agent", "seed", "name") if getattr(args, f)]
        if given or args.overrides or args.preset != "atari100k" or args.protocol != "atari100k":
            raise UserError(
                "--resume continues a run with its own config.yaml; drop "
                + ", ".join(f"--{f}" for f in given or ["--set/--preset/--protocol"])
                + " (only --device may change)"
            )
        run = RunDir.open(args.resume)
        lock = run.lock(f"train.py --resume {run.root}")  # a second process stops here
        load_run_plugins(run.config, args)
        cfg = C.load_run_config(run.config)
        if args.device:
            tree = C.to_dict(cfg)
            tree["run"]["device"] = args.device
            cfg = C.build(tree)
    else:
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
        RunDir.check_creatable(run.root)  # now, not after minutes of building

    # Everything that can fail on a bad setting happens before a new run directory exists, so
    # a failed start never leaves one behind that blocks the corrected command.
    device = setup_process(cfg.run)
    make_env = env_factory(cfg.env)
    probe = make_env("train", 1)
    info = env_info_of(probe)
    probe.close()
    world, agent = build_world_and_agent(
        cfg.world, cfg.agent, info, seed=cfg.run.seed, device=device,
        channels_last=cfg.run.channels_last,
    )  # fmt: skip
    if cfg.run.compile:
        print(f"torch.compile: {compile_hot_modules(world, agent)} modules")

    created = started = False  # created: the new run directory is ours to remove on failure
    logger = schedule = None
    try:
        if not args.resume:
            run = RunDir.create(run.root)
            lock = run.lock("train.py")
            created = True
            run.write_config(C.dump(cfg))
        store = ReplayStore(run.episodes)
        logger = TBLogger(str(run.tb))
        ver = versions()
        schedule = schedule_class(cfg, world)(
            cfg,
            run,
            agent=agent,
            world=world,
            store=store,
            make_env=make_env,
            logger=logger,
            device=device,
            versions=ver,
            amp=use_amp(cfg.run, device),
        )
        run.record_session(
            {
                "argv": sys.argv,
                "device": str(device),
                "env_spec": schedule.env_spec,
                "versions": ver,
            }
        )
        if args.resume:
            schedule.restore()
        else:
            logger.text("config", "```\n" + C.dump(cfg) + "\n```")
            print(f"run directory: {run.root}")
        started = True
        schedule.run()
    except DiskFull as exc:
        raise DiskFull(
            exc.path, f"free some space, then continue the run with: train.py --resume {run.root}"
        ) from None
    except NonFiniteTraining as exc:
        last = latest_checkpoint(run.checkpoints)
        raise UserError(f"{exc} (the last good checkpoint, kept: {last or 'none'})") from None
    finally:
        if schedule is not None:
            schedule.close()
        elif logger is not None:
            logger.close()
        if created and not started:
            shutil.rmtree(run.root, ignore_errors=True)  # ours, made moments ago: nothing ran
        if lock is not None:
            lock.release()
    print(f"done: {run.root} (tensorboard --logdir {run.tb.parent} --host 127.0.0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
