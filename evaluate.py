"""Play real test-mode Atari episodes with an agent and write results.json.

    python evaluate.py runs/<name>                              # a trained run, its last checkpoint
    python evaluate.py --agent random --env Breakout --episodes 30

Results go to ``<run>/results.json`` (a previous one is kept under a timestamped name) and the
returns plus one episode video to the run's TensorBoard.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from worldmodels import config as C
from worldmodels.cli import (
    Parser,
    add_config_flags,
    choices_epilog,
    overrides_from,
    run_main,
    setup_process,
)
from worldmodels.errors import UserError


def parse(argv):
    p = Parser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog=choices_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", nargs="?", metavar="RUN_DIR", help="a run directory made by train.py")
    add_config_flags(p)
    p.add_argument("--episodes", type=int, help="test episodes (default: eval.episodes)")
    p.add_argument("--num-envs", type=int, help="games played in parallel (default: eval.num_envs)")
    p.add_argument("--checkpoint", help="checkpoint directory (default: the run's latest)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from worldmodels.build import build_world_and_agent, env_factory, env_info_of
    from worldmodels.checkpoint import latest_checkpoint, load_checkpoint
    from worldmodels.collect import play_test_episodes
    from worldmodels.observe import Observer
    from worldmodels.results import results_record, summary_line, write_results
    from worldmodels.runs import RunDir, versions
    from worldmodels.seeding import derive_seed
    from worldmodels.tb import TBLogger

    if args.episodes is not None and args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.run:
        if args.env or args.agent or args.overrides:
            raise UserError(
                "a run directory brings its own env and agent: drop --env/--agent/--set"
            )
        run = RunDir.open(args.run)
        cfg = C.load_run_config(run.config)
        tree = C.to_dict(cfg)
        for key, value in (("seed", args.seed), ("device", args.device)):
            if value is not None:
                tree["run"][key] = value
        cfg = C.build(tree)
        ckpt = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(run.checkpoints)
        if ckpt is None:
            raise UserError(f"{run.root} has no checkpoint yet (nothing to evaluate)")
    else:
        if not args.agent:
            raise UserError(
                "give a run directory, or --agent NAME --env GAME (e.g. --agent random)"
            )
        cfg = C.resolve(
            env=args.env,
            protocol=args.protocol,
            agent=args.agent,
            preset=args.preset,
            overrides=overrides_from(args),
        )
        name = cfg.run.name or (
            f"eval-{cfg.env.game}-{cfg.agent.name}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        run = RunDir.create(Path(cfg.run.runs_dir) / name)
        tree = C.to_dict(cfg)
        tree["run"]["name"] = name
        cfg = C.build(tree)
        run.write_config(C.dump(cfg))
        ckpt = None

    device = setup_process(cfg.run)
    episodes = args.episodes or cfg.eval.episodes
    num_envs = max(1, min(args.num_envs or cfg.eval.num_envs, episodes))
    env = env_factory(cfg.env)("test", num_envs)
    logger = TBLogger(str(run.tb))
    try:
        world, agent = build_world_and_agent(
            cfg.world, cfg.agent, env_info_of(env), seed=cfg.run.seed, device=device,
            channels_last=cfg.run.channels_last,
        )  # fmt: skip
        modules = {"agent": agent}
        if world is not None:  # features or the world's view of frames may feed the agent
            modules["world"] = world.eval()
        step = 0
        if ckpt is not None:
            _, meta = load_checkpoint(ckpt, modules, map_location=device)
            step = int(meta.get("counters", {}).get("env_steps", 0))
        agent.eval()
        spec = env.spec()
        ver = versions()
        run.record_session(
            {
                "argv": sys.argv,
                "device": str(device),
                "env_spec": spec,
                "versions": ver,
                "command": "evaluate",
            }
        )
        result = play_test_episodes(
            agent,
            env,
            episodes,
            seed=derive_seed(cfg.run.seed, "evaluate"),
            device=device,
            observer=Observer(agent, world, device),
            epsilon=cfg.eval.epsilon,
            greedy=cfg.eval.greedy,
            video_max_frames=cfg.eval.video_max_frames if cfg.eval.video else 0,
            show_progress=cfg.run.progress,
        )
        record = results_record(
            result,
            game=cfg.env.game,
            seed=cfg.run.seed,
            agent=cfg.agent.name,
            world=None if cfg.world is None else cfg.world.name,
            env_spec=spec,
            protocol=cfg.env.protocol_values(),
            versions=ver,
            config=C.to_dict(cfg),
            checkpoint=None if ckpt is None else str(ckpt),
            env_steps=step or None,
        )
        logger.scalar("evaluate/return_mean", record["mean"], step)
        if record["hns"] is not None:
            logger.scalar("evaluate/hns", record["hns"], step)
        for i, ret in enumerate(result.returns):
            logger.scalar("evaluate/episode_return", ret, i)
        if result.video is not None:
            logger.video("evaluate/episode", result.video, step)
        if run.results.exists():
            run.results.rename(run.root / f"results.{time.strftime('%Y%m%d-%H%M%S')}.json")
        write_results(run.results, record)
    finally:
        env.close()
        logger.close()
    print(summary_line(record))
    print(f"wrote {run.results}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
