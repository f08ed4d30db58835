"""Play real test-mode Atari episodes with an agent and write results.json.

    python evaluate.py runs/<name>                              # a trained run, its last checkpoint
    python evaluate.py --agent random --env Breakout --episodes 30
    python evaluate.py --compare runs/<a> runs/<b>       # worlds open loop on the same real data
    python evaluate.py --table runs/*                     # results aggregated beside IRIS, DIAMOND

Results go to ``<run>/results.json`` (a previous one is kept as ``results.N.json``) and the
returns plus one episode video to the run's TensorBoard. A run directory's recorded plugins are
imported only when named again with ``--plugin`` (or with ``--trust-plugins``).

``--compare`` plays fresh real test-mode episodes with a random policy, starts every run's world
from the same real contexts, steps it open loop with the same recorded actions and writes PSNR /
SSIM per horizon step, reward / end accuracy, frames/s and side-by-side videos to a new
``runs/compare-...`` directory (TensorBoard, compare.json, curves.csv, GIFs); see
``worldmodels/compare.py``. ``--table`` aggregates results.json files over games and seeds (mean,
median, IQM of the HNS with stratified bootstrap CIs, games >= human) beside the published IRIS
and DIAMOND scores on the same games and writes table.json; see ``worldmodels/aggregate.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from worldmodels import config as C
from worldmodels.cli import (
    Parser,
    add_config_flags,
    choices_epilog,
    load_run_plugins,
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
    g = p.add_argument_group("comparing worlds (--compare)")
    g.add_argument(
        "--compare", nargs="+", metavar="RUN_DIR",
        help="compare the worlds of these runs open loop on the same fresh real data",
    )  # fmt: skip
    g.add_argument(
        "--horizon", type=int, default=32, help="imagined steps per context (default: 32)"
    )
    g.add_argument("--contexts", type=int, default=8, help="real contexts (default: 8)")
    g.add_argument(
        "--samples", type=int, default=1,
        help="rollouts per context, for reward / end accuracy over samples (default: 1)",
    )  # fmt: skip
    g.add_argument(
        "--checkpoints", choices=("latest", "all"), default="latest",
        help="each run's latest checkpoint, or every checkpoint it kept (a learning curve of world "
        "quality; schedule.keep_checkpoints sets how many a run keeps) (default: latest)",
    )  # fmt: skip
    g = p.add_argument_group("the results table (--table)")
    g.add_argument(
        "--table", nargs="+", metavar="RESULTS",
        help="aggregate these run directories or results.json files (e.g. runs/*)",
    )  # fmt: skip
    g.add_argument("--out", help="where to write table.json (default: runs/table-<time>.json)")
    g.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap resamples (default: 2000)"
    )
    return p.parse_args(argv)


def _refuse_flags(args, mode: str, names: tuple[str, ...]) -> None:
    dest = {"--set": "overrides"}
    given = [n for n in names if getattr(args, dest.get(n, n[2:].replace("-", "_")), None)]
    if getattr(args, "run", None):
        given.insert(0, "RUN_DIR")
    if given:
        raise UserError(f"--{mode} does not take {', '.join(given)}")


def compare_main(args) -> int:
    """Wiring of ``--compare``: runs -> worlds with their weights -> ``worldmodels.compare``."""
    from worldmodels.aggregate import protocol_differences
    from worldmodels.build import build_world, env_factory, env_info_of
    from worldmodels.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint
    from worldmodels.cli import use_amp
    from worldmodels.compare import (
        BASELINES,
        compare_worlds,
        format_comparison,
        log_comparison,
        record_segments,
        write_comparison,
    )
    from worldmodels.envs.atari_config import AtariConfig
    from worldmodels.runs import RunDir, check_name, versions
    from worldmodels.seeding import derive_seed

    _refuse_flags(
        args, "compare",
        ("--env", "--agent", "--set", "--episodes", "--num-envs", "--checkpoint", "--table"),
    )  # fmt: skip
    for flag, value in (("--horizon", args.horizon), ("--contexts", args.contexts),
                        ("--samples", args.samples)):  # fmt: skip
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.name is not None:
        check_name(args.name)
    run_cfg = C.from_dict(
        C.RunConfig,
        {"seed": 0 if args.seed is None else args.seed, "device": args.device or "auto"},
        "run",
    )
    runs = [RunDir.open(p) for p in args.compare]
    for r in runs:
        load_run_plugins(r.config, args)
    cfgs = [C.load_run_config(r.config) for r in runs]
    for run, cfg in zip(runs, cfgs, strict=True):
        if cfg.world is None:
            raise UserError(
                f"{run.root} has no world to compare (it trained {cfg.agent.name} alone)"
            )
    first, base = runs[0], cfgs[0]
    notes: list[str] = []
    for run, cfg in zip(runs[1:], cfgs[1:], strict=True):
        if cfg.env.game != base.env.game:
            raise UserError(
                f"{first.root} plays {base.env.game} and {run.root} plays {cfg.env.game}: "
                "compare worlds of one game"
            )
        bad, allowed = protocol_differences(
            base.env.protocol_values(), cfg.env.protocol_values(), AtariConfig.DYNAMICS_KEYS
        )
        if bad:
            raise UserError(
                f"{first.root} and {run.root} have env protocols that change what a world "
                f"predicts: {', '.join(bad)}"
            )
        for x in allowed:
            notes.append(
                f"{first.root} and {run.root} differ in {x}: allowed (does not change the "
                f"comparison; the real data follows {first.root}'s protocol)"
            )
    # (run, checkpoint, label): each run's latest checkpoint, or with --checkpoints all every one
    # it kept (a learning curve of world quality); labels are run directory names, made unique
    entries: list[tuple[Any, Any, Path, str]] = []
    labels: list[str] = []
    for run, cfg in zip(runs, cfgs, strict=True):
        ckpts = (
            complete_checkpoints(run.checkpoints)
            if args.checkpoints == "all"
            else [c for c in [latest_checkpoint(run.checkpoints)] if c is not None]
        )
        if not ckpts:
            raise UserError(f"{run.root} has no checkpoint yet (nothing to compare)")
        for ckpt in ckpts:
            stem = run.root.resolve().name
            if args.checkpoints == "all":
                stem = f"{stem}@{ckpt.name}"
            label, i = stem, 2
            while label in labels or label in BASELINES:
                label, i = f"{stem}-{i}", i + 1
            labels.append(label)
            entries.append((run, cfg, ckpt, label))

    name = args.name or "compare-{}-{}".format(
        "-".join(label[:40] for label in labels), time.strftime("%Y%m%d-%H%M%S")
    )
    out_root = Path(base.run.runs_dir) / name
    RunDir.check_creatable(out_root)  # refuse before the work, not after

    seed = run_cfg.seed
    device = setup_process(run_cfg)
    env = env_factory(base.env)("test", min(args.contexts, 8))
    try:
        info = env_info_of(env)
        worlds, amp, inputs = {}, {}, []
        for run, cfg, ckpt, label in entries:
            world = build_world(cfg.world, info, device=device, channels_last=cfg.run.channels_last)
            _, meta = load_checkpoint(ckpt, {"world": world}, map_location=device)
            worlds[label] = world.eval()
            amp[label] = use_amp(cfg.run, device)
            inputs.append({
                "label": label, "run": str(run.root), "checkpoint": str(ckpt),
                "world": cfg.world.name, "context_len": int(world.context_len),
                "env_steps": meta.get("counters", {}).get("env_steps"),
            })  # fmt: skip
        context = max(w.context_len for w in worlds.values())
        segments = record_segments(
            env, args.contexts, context + args.horizon,
            seed=derive_seed(seed, "compare", "segments"),
            life_loss_ends=base.env.life_loss_terminal,
        )  # fmt: skip
        spec = env.spec()
    finally:
        env.close()
    comparison = compare_worlds(
        worlds, segments, horizon=args.horizon, samples=args.samples, device=device, amp=amp,
        seed=derive_seed(seed, "compare", "imagine"),
    )  # fmt: skip

    out = RunDir.create(out_root)
    ver = versions()
    out.record_session(
        {"argv": sys.argv, "device": str(device), "env_spec": spec, "versions": ver,
         "command": "compare"}
    )  # fmt: skip
    about = "\n".join(
        [f"**{base.env.game}**, protocol `{base.env.protocol}`, {args.contexts} held-out contexts "
         f"x {args.horizon} steps, seed {seed}", "", "| column | run | checkpoint | env steps |",
         "|---|---|---|---|"]
        + [f"| {i['label']} | {i['run']} | {Path(i['checkpoint']).name} | {i['env_steps']} |"
           for i in inputs]
        + ["", "| protocol value | |", "|---|---|"]
        + [f"| {k} | {v} |" for k, v in base.env.protocol_values().items()]
    )  # fmt: skip
    log_comparison(comparison, out.tb, text=about)
    write_comparison(
        comparison, out.root,
        meta={
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "game": base.env.game,
            "protocol": base.env.protocol_values(), "runs": inputs, "seed": seed,
            "device": str(device),
            "data": "fresh real test-mode episodes, uniformly random policy, seeded",
            "end_label": "game over" + (" or life loss (life_loss_terminal)"
                                        if base.env.life_loss_terminal else ""),
            "env_spec": spec, "versions": ver, "protocol_notes": notes,
        },
    )  # fmt: skip
    for note in notes:
        print(f"note: {note}")
    print(format_comparison(comparison))
    print(f"wrote {out.root} (TensorBoard: tensorboard --logdir {out.tb})")
    return 0


def table_main(args) -> int:
    """``--table``: results.json files -> ``worldmodels.aggregate`` -> printed table + JSON."""
    from worldmodels.aggregate import build_table, format_table, group_by_protocol, load_results
    from worldmodels.fileio import atomic_write_json

    _refuse_flags(
        args, "table",
        ("--env", "--agent", "--set", "--episodes", "--num-envs", "--checkpoint", "--device",
         "--name"),
    )  # fmt: skip
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    records, warnings = load_results(args.table)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not records:
        raise UserError("no results to aggregate: give run directories or results.json files")
    groups = group_by_protocol(records)
    if len(groups) > 1:  # e.g. smoke runs beside full ones: never mixed, each tabled apart
        print(
            f"note: these results follow {len(groups)} env protocols that cannot be aggregated "
            "together (values that change a game's return differ): one table each"
        )
    seed = 0 if args.seed is None else args.seed
    tables = []
    for group in groups:
        table = build_table(group, reps=args.bootstrap, seed=seed)
        for note in table["protocol_notes"]:
            print(f"note: {note}")
        for w in table["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        table["inputs"] = [r["_path"] for r in group]
        table["skipped"] = warnings
        tables.append(table)
    out = Path(args.out or Path("runs") / f"table-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, tables[0] if len(tables) == 1 else {"tables": tables})
    for i, table in enumerate(tables):
        if len(tables) > 1:
            diffs = {k: v for k, v in table["protocol"].items() if k in ("max_episode_frames",
                     "sticky_action_prob", "frame_skip", "full_action_space", "noop_max")}  # fmt: skip
            print(f"\n== table {i + 1} of {len(tables)}: {len(table['inputs'])} results, {diffs}")
        print(format_table(table))
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    from worldmodels.registry import load_plugins

    load_plugins(args.plugin)  # before any name is resolved
    if args.compare:
        return compare_main(args)
    if args.table:
        return table_main(args)
    with contextlib.ExitStack() as stack:  # holds the run's lock until the end
        return evaluate_main(args, stack)


def evaluate_main(args, stack: contextlib.ExitStack) -> int:
    """Real test episodes of a run's checkpoint, or of a named agent, -> results.json."""
    from worldmodels.agent_input import AgentInput
    from worldmodels.build import build_world_and_agent, env_factory, env_info_of
    from worldmodels.checkpoint import latest_checkpoint, load_checkpoint
    from worldmodels.collect import play_test_episodes
    from worldmodels.results import keep_previous, results_record, summary_line, write_results
    from worldmodels.runs import RunDir, versions
    from worldmodels.seeding import derive_seed
    from worldmodels.tb import TBLogger

    if args.episodes is not None and args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.num_envs is not None and args.num_envs < 1:
        raise UserError(f"--num-envs must be at least 1, got {args.num_envs}")
    if args.run:
        if args.env or args.agent or args.overrides:
            raise UserError(
                "a run directory brings its own env and agent: drop --env/--agent/--set"
            )
        run = RunDir.open(args.run)
        stack.callback(run.lock(f"evaluate.py {run.root}").release)  # it writes results.json
        load_run_plugins(run.config, args)
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
        if args.checkpoint:
            raise UserError(
                "--checkpoint needs a run directory (evaluate.py RUN_DIR --checkpoint ..)"
            )
        cfg = C.resolve(
            env=args.env,
            protocol=args.protocol,
            agent=args.agent,
            preset=args.preset,
            overrides=overrides_from(args),
            plugins=args.plugin,
        )
        name = cfg.run.name or (
            f"eval-{cfg.env.game}-{cfg.agent.name}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        tree = C.to_dict(cfg)
        tree["run"]["name"] = name
        cfg = C.build(tree)
        run = RunDir(Path(cfg.run.runs_dir) / name)
        RunDir.check_creatable(run.root)
        ckpt = None

    # Settings and names are checked, the env and the agent built, before a new run directory
    # is made: a failed start leaves nothing behind.
    device = setup_process(cfg.run)
    episodes = args.episodes or cfg.eval.episodes
    num_envs = max(1, min(args.num_envs or cfg.eval.num_envs, episodes))
    env = env_factory(cfg.env)("test", num_envs)
    logger = None
    try:
        try:
            world, agent = build_world_and_agent(
                cfg.world, cfg.agent, env_info_of(env), seed=cfg.run.seed, device=device,
                channels_last=cfg.run.channels_last,
            )  # fmt: skip
        except ValueError as exc:  # a component refusing its settings or its env
            raise UserError(f"cannot build the world and agent: {exc}") from None
        modules = {"agent": agent}
        if world is not None:  # features or the world's view of frames may feed the agent
            modules["world"] = world.eval()
        step = 0
        if ckpt is not None:
            _, meta = load_checkpoint(ckpt, modules, map_location=device)
            step = int(meta.get("counters", {}).get("env_steps", 0))
        if not args.run:
            run = RunDir.create(run.root)
            stack.callback(run.lock("evaluate.py").release)
            run.write_config(C.dump(cfg))
        logger = TBLogger(str(run.tb))
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
            observer=AgentInput(agent, world, device),
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
        kept = keep_previous(run.results)
        if kept is not None:
            print(f"the previous results are kept in {kept}")
        write_results(run.results, record)
    finally:
        env.close()
        if logger is not None:
            logger.close()
    print(summary_line(record))
    print(f"wrote {run.results}")
    return 0


def cli() -> int:
    """The console script (``worldmodels-evaluate``): errors as one line, exit status 2."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(cli())
